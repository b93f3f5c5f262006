//! The use cases in process, on a clock the test moves: reservation expiry
//! and late usage, the soft threshold's 250 ms view, and a period that rolls
//! over at midnight, without sleeping.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::ManualClock;
use crate::route::{RawRoute, RouteStatus};
use crate::store::sqlite::SqliteStore;
use crate::testing::{model, RulesBuilder};

fn rules() -> String {
    RulesBuilder::new()
        .model(model("small", 1.0, 4.0, 3))
        .model(model("large", 10.0, 40.0, 4))
        .budgeted(
            "w",
            "learning = { enabled = false }",
            "limit_usd = 1.0\nperiod = \"day\"\nsoft_threshold_pct = 50\non_limit = \"deny\"",
        )
        .raw("[[rules]]\nname = \"large\"\ntier = 4")
        .build()
}

struct Fixture {
    sidecar: Sidecar,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn fixture(at: &str) -> Fixture {
    fixture_with(at, &rules())
}

fn fixture_with(at: &str, rules: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, rules).expect("rules");
    let rules = Arc::new(Rules::load(&path).expect("valid rules"));
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).expect("store"));
    let budgets = Arc::new(Budgets::new(store.clone(), 60_000));
    let learning = Arc::new(Online::new(Arc::new(crate::learn::Learner::new()), store.clone()));
    let audit = Arc::new(Audit::open(dir.path(), Default::default()).expect("audit"));
    let metrics = Arc::new(Metrics::default());
    let clock = Arc::new(ManualClock::at(at.parse().expect("time")));
    let sidecar = Sidecar {
        router: Router {
            rules: rules.clone(),
            cache: None,
            budgets: budgets.clone(),
            learning: learning.clone(),
            effects: None,
            trace: false,
            large_requests: None,
            sketches: None,
            observe_scores: false,
        },
        rules,
        store,
        budgets,
        learning,
        access: Access { audit },
        metrics,
        clock: clock.clone(),
    };
    Fixture {
        sidecar,
        clock,
        _dir: dir,
    }
}

fn call() -> RouteCall {
    RouteCall::new(RawRoute {
        workflow: "w".into(),
        outcome_id: "o-1".into(),
        task_kind: String::new(),
        messages: std::iter::once(("user".to_string(), "Summarise the incident.".to_string())),
        attempt: 1,
        max_output_tokens: 1000,
        deferrable: false,
        capabilities: std::iter::empty(),
        labels: std::iter::empty(),
    })
    .expect("valid call")
}

fn usage(decision_id: &str, output_tokens: u64) -> UsageReport {
    UsageReport {
        decision_id: decision_id.into(),
        output_tokens,
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn an_unreported_reservation_expires_and_late_usage_still_counts() {
    let f = fixture("2026-12-01T12:00:00Z");
    let who = Identity::local();
    let r = f.sidecar.route(&who, call()).await.expect("route");
    let estimate = r.planned.decision.cost_nanos;
    let (_, st) = f.sidecar.budget(&who, "w").await.expect("budget");
    assert_eq!((st.reserved_nanos, st.spent_nanos), (estimate, 0));
    // The reservation lives 60 s: the sweep one minute on releases it.
    assert_eq!(
        f.sidecar.store.expire(f.clock.now_ms()).await.expect("sweep"),
        0,
        "not yet"
    );
    f.clock.advance(Duration::from_secs(61));
    assert_eq!(f.sidecar.store.expire(f.clock.now_ms()).await.expect("sweep"), 1);
    let (_, st) = f.sidecar.budget(&who, "w").await.expect("budget");
    assert_eq!(st.reserved_nanos, 0, "released");
    // Usage that arrives after expiry is charged, once.
    let settled = f
        .sidecar
        .report_usage(&who, usage(&r.decision_id, 500))
        .await
        .expect("late");
    let again = f
        .sidecar
        .report_usage(&who, usage(&r.decision_id, 500))
        .await
        .expect("repeat");
    assert_eq!(settled.cost_nanos, again.cost_nanos);
    let (_, st) = f.sidecar.budget(&who, "w").await.expect("budget");
    assert_eq!((st.reserved_nanos, st.spent_nanos), (0, settled.cost_nanos));
}

#[tokio::test(start_paused = true)]
async fn the_soft_threshold_sees_spend_once_its_view_is_older_than_250_ms() {
    let f = fixture("2026-12-01T12:00:00Z");
    let who = Identity::local();
    let r = f.sidecar.route(&who, call()).await.expect("route");
    assert_eq!((r.status, r.model().name.as_str()), (RouteStatus::Routed, "large"));
    // $0.60 spent: past the 50% threshold, but the view read 0 just now.
    f.sidecar
        .report_usage(&who, usage(&r.decision_id, 15_000))
        .await
        .expect("report");
    let r = f.sidecar.route(&who, call()).await.expect("route");
    assert_eq!(r.status, RouteStatus::Routed, "within the view's 250 ms");
    tokio::time::advance(Duration::from_millis(251)).await;
    let r = f.sidecar.route(&who, call()).await.expect("route");
    assert_eq!(
        (r.status, r.model().name.as_str()),
        (RouteStatus::Downgraded, "small"),
        "{}",
        r.reason
    );
}

#[tokio::test(start_paused = true)]
async fn a_period_rolls_over_at_midnight_as_a_new_counter() {
    let f = fixture("2026-12-01T23:59:58Z");
    let who = Identity::local();
    let r = f.sidecar.route(&who, call()).await.expect("route");
    f.sidecar
        .report_usage(&who, usage(&r.decision_id, 1000))
        .await
        .expect("report");
    let (scope, before) = (
        period_scope(
            f.sidecar.rules.current().workflow("w").expect("w"),
            f.sidecar
                .rules
                .current()
                .workflow("w")
                .and_then(|w| w.budget.as_ref())
                .expect("budget"),
            f.clock.now(),
        ),
        f.sidecar.budget(&who, "w").await.expect("budget").1,
    );
    assert!(before.spent_nanos > 0 && scope.contains("2026-12-01"), "{scope}");
    f.clock.advance(Duration::from_secs(3));
    let (_, after) = f.sidecar.budget(&who, "w").await.expect("budget");
    assert_eq!(
        (after.spent_nanos, after.reserved_nanos),
        (0, 0),
        "a new day, a new counter"
    );
    // The old day's spend is untouched.
    assert_eq!(
        f.sidecar.store.scope(&scope).await.expect("old day").spent_nanos,
        before.spent_nanos
    );
}

fn paced_call(i: usize) -> RouteCall {
    // Every fourth request is hard: pacing should spend on those first.
    let text = if i.is_multiple_of(4) {
        "Design a lock-free multi-producer queue in Rust, prove it linearizable, and analyse its memory ordering."
    } else {
        "What is the capital of France?"
    };
    RouteCall::new(RawRoute {
        workflow: "w".into(),
        outcome_id: format!("o-{i}"),
        task_kind: String::new(),
        messages: std::iter::once(("user".to_string(), text.to_string())),
        attempt: 1,
        max_output_tokens: 1000,
        deferrable: false,
        capabilities: std::iter::empty(),
        labels: std::iter::empty(),
    })
    .expect("valid call")
}

/// `secs` later on both clocks, routes call `i` and reports the tokens it
/// was priced for, so that its spend settles.
async fn paced_step(f: &Fixture, who: &Identity, i: usize, secs: u64) -> Routed {
    f.clock.advance(Duration::from_secs(secs));
    tokio::time::advance(Duration::from_secs(secs)).await;
    let r = f
        .sidecar
        .route(who, paced_call(i))
        .await
        .expect("a paced call is never refused");
    f.sidecar
        .report_usage(who, usage(&r.decision_id, 1000))
        .await
        .expect("usage settles");
    assert_eq!(r.status, RouteStatus::Routed, "{}", r.reason);
    r
}

/// A $1 day paced by `pacing`, whose rule asks for the large model, priced
/// at `large` (input and output USD per million tokens).
fn paced_rules(pacing: &str, large: (f64, f64)) -> String {
    RulesBuilder::new()
        .model(model("small", 0.1, 0.4, 3))
        .model(model("large", large.0, large.1, 4))
        .budgeted(
            "w",
            "learning = { enabled = false }",
            &format!("limit_usd = 1.0\nperiod = \"day\"\npacing = \"{pacing}\"\non_limit = \"deny\""),
        )
        .raw("[[rules]]\nname = \"large\"\ntier = 4")
        .build()
}

/// A paced day: half its traffic comes in a burst in the first hour. The
/// burst does not spend the day's budget, no call reaches the hard limit,
/// and the day ends just under its budget.
#[tokio::test(start_paused = true)]
async fn a_paced_budget_rides_out_a_burst_and_ends_the_day_on_budget() {
    let rules = paced_rules("even", (10.0, 40.0));
    let f = fixture_with("2026-12-01T00:00:00Z", &rules);
    let who = Identity::local();
    let limit: i64 = 1_000_000_000;
    let (mut paced, mut large) = (0, 0);
    // The burst: 240 calls in the first hour, where unpaced, the rule's
    // large model would spend $1 in the first 25.
    for i in 0..240 {
        let r = paced_step(&f, &who, i, 15).await;
        paced += usize::from(r.reason.starts_with("paced"));
    }
    let (_, st) = f.sidecar.budget(&who, "w").await.expect("budget");
    let after_burst = st.spent_nanos + st.reserved_nanos;
    assert!(
        after_burst < limit / 4,
        "the burst spent {after_burst} of {limit} in the first hour"
    );
    assert_eq!(paced, 240, "every decision says it was paced");
    // The rest of the day: 240 calls, one every 5 minutes 44 seconds, the last just before midnight.
    for i in 240..480 {
        let r = paced_step(&f, &who, i, 344).await;
        large += usize::from(r.planned.decision.model == 1);
    }
    let (_, st) = f.sidecar.budget(&who, "w").await.expect("budget");
    let spent = st.spent_nanos + st.reserved_nanos;
    assert!(
        spent <= limit && spent as f64 >= 0.9 * limit as f64,
        "the day ended at {spent} of {limit}"
    );
    assert!(large > 0, "underspend after the burst buys the large model again");
}

#[tokio::test(start_paused = true)]
async fn cache_writes_are_charged_and_more_cache_than_input_is_refused() {
    let f = fixture("2026-12-01T12:00:00Z");
    let who = Identity::local();
    let r = f.sidecar.route(&who, call()).await.expect("route");
    let too_much = UsageReport {
        input_tokens: 1000,
        cached_input_tokens: 600,
        cache_write_input_tokens: 500,
        ..usage(&r.decision_id, 10)
    };
    let e = f
        .sidecar
        .report_usage(&who, too_much)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("cache_write_input_tokens (500)") && e.contains("input_tokens (1000)"),
        "{e}"
    );
    // A count that would overflow the sum is refused the same way, not wrapped.
    let huge = UsageReport {
        input_tokens: 1000,
        cached_input_tokens: 600,
        cache_write_input_tokens: u64::MAX,
        ..usage(&r.decision_id, 10)
    };
    let e = f
        .sidecar
        .report_usage(&who, huge)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("is more than input_tokens (1000)"), "{e}");
    // Refused, not settled: the same decision still takes a good report.
    let written = UsageReport {
        input_tokens: 1000,
        cached_input_tokens: 600,
        cache_write_input_tokens: 400,
        ..usage(&r.decision_id, 10)
    };
    let settled = f.sidecar.report_usage(&who, written).await.expect("settled");
    let p = r.model().prices();
    assert_eq!(settled.cost_nanos, p.cost_with_writes(1000, 600, 400, 10, false));
    assert_eq!(settled.usage.cache_write_input_tokens, 400);
}

/// A day paced by traffic after eight days alike (96 calls each, one every
/// quarter hour): half the day's calls come in its first hour, and only the
/// other half in the 23 hours after. Past days agree on the day's volume,
/// so the burst brings the target forward with it rather than the day
/// being expected to bring as many calls again, and the day still ends on
/// budget.
#[tokio::test(start_paused = true)]
async fn a_traffic_paced_day_of_steady_volume_ends_on_budget_after_an_early_burst() {
    let rules = paced_rules("traffic", (2.5, 10.0));
    // The first call is at 00:10 on Monday 2026-11-23, the last of each day
    // at 23:55.
    let f = fixture_with("2026-11-22T23:55:00Z", &rules);
    let who = Identity::local();
    let limit: i64 = 1_000_000_000;
    let mut i = 0;
    for _ in 0..8 * 96 {
        paced_step(&f, &who, i, 900).await;
        i += 1;
    }
    // Day nine: 48 calls a minute apart from 00:01, then 48 more spread
    // over the rest of the day.
    for k in 0..96 {
        let secs = match k {
            0 => 360,
            1..48 => 60,
            _ => 1738,
        };
        paced_step(&f, &who, i, secs).await;
        i += 1;
        if k == 47 {
            let (_, st) = f.sidecar.budget(&who, "w").await.expect("budget");
            let spent = st.spent_nanos + st.reserved_nanos;
            assert!(
                spent <= limit * 55 / 100,
                "half the day's calls spent {spent} of {limit}"
            );
        }
    }
    let (_, st) = f.sidecar.budget(&who, "w").await.expect("budget");
    let spent = st.spent_nanos + st.reserved_nanos;
    // Expecting the usual day's calls again after the burst, the day ended
    // at 92%.
    assert!(
        spent <= limit && spent as f64 >= 0.95 * limit as f64,
        "day nine ended at {spent} of {limit}"
    );
}
