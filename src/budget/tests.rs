//! The budget store conformance suite: every `BudgetStore` must pass it.
//! `sqlite_store_conforms` runs it on the embedded store.

use super::*;
use crate::rules::RuleTable;

const DOLLAR: i64 = 1_000_000_000;

fn reservation(id: &str, amount: i64, scopes: &[(&str, i64)], now_ms: i64) -> NewReservation {
    NewReservation {
        decision_id: id.to_string(),
        // Scope keys start with their workflow's name, as `scopes_for` makes them.
        workflow: scopes
            .first()
            .map_or("w", |(k, _)| k.split('|').next().unwrap_or("w"))
            .into(),
        outcome_id: "o".into(),
        model: "m".into(),
        deferrable: false,
        amount_nanos: amount,
        scopes: scopes
            .iter()
            .map(|(k, l)| ScopeCharge {
                key: k.to_string(),
                limit_nanos: *l,
            })
            .collect(),
        now_ms,
        expires_ms: now_ms + 600_000,
        downgraded: false,
        labels: String::new(),
    }
}

/// Runs every conformance check against `store`. Scope keys are prefixed with
/// `ns` so the suite can share a store with others.
pub async fn conformance(store: SharedStore, ns: &str) {
    reserve_is_all_or_nothing(&store, ns).await;
    settle_is_idempotent_and_releases(&store, ns).await;
    expiry_releases_and_late_usage_still_counts(&store, ns).await;
    concurrent_clients_never_overspend(&store, ns).await;
    escalations_approve_and_deny(&store, ns).await;
    detached_records_are_ordered_before_later_calls(&store, ns).await;
    labelled_calls_are_kept_in_order_within_the_window(&store, ns).await;
}

async fn labelled_calls_are_kept_in_order_within_the_window(store: &SharedStore, ns: &str) {
    use crate::learn::{Features, LearnEvent};
    let wf = format!("{ns}learn");
    let event = |i: usize| LearnEvent {
        workflow: wf.clone(),
        tier: (i % 3) as u8 + 1,
        retry: i.is_multiple_of(2),
        label: (i % 4) as f32 / 4.0,
        features: Features::extract(
            std::iter::once(format!("call number {i}").as_str()),
            "k",
            &Default::default(),
        ),
    };
    let all: Vec<LearnEvent> = (0..250).map(event).collect();
    for chunk in all.chunks(50) {
        let refs: Vec<&LearnEvent> = chunk.iter().collect();
        store.append_learning(&wf, 1000, &refs).await.expect("append");
    }
    // Read back in pages, in order, each cursor after the last.
    let mut cursor = String::new();
    let mut read = Vec::new();
    loop {
        let page = store.learning_since(&wf, &cursor, 64).await.expect("read");
        if page.is_empty() {
            break;
        }
        for (at, e) in page {
            read.push(e.expect("intact"));
            cursor = at;
        }
    }
    assert_eq!(read, all, "every labelled call, in append order");
    assert!(store.learning_since(&wf, &cursor, 64).await.expect("read").is_empty());
    // Another workflow's calls are its own.
    assert!(store
        .learning_since(&format!("{ns}other"), "", 64)
        .await
        .expect("read")
        .is_empty());
    // A window keeps (about) the newest: Redis trims whole nodes (MAXLEN ~).
    let more: Vec<LearnEvent> = (250..400).map(event).collect();
    let refs: Vec<&LearnEvent> = more.iter().collect();
    store.append_learning(&wf, 100, &refs).await.expect("append");
    let kept = store.learning_since(&wf, "", 1000).await.expect("read");
    assert!((100..=300).contains(&kept.len()), "kept {}", kept.len());
    assert_eq!(
        kept.last().and_then(|(_, e)| e.clone()),
        more.last().cloned(),
        "the newest is kept"
    );
}

async fn detached_records_are_ordered_before_later_calls(store: &SharedStore, ns: &str) {
    for i in 0..50 {
        let id = format!("{ns}-detached-{i}");
        store.record_detached(reservation(&id, 100, &[], 0));
        // No await in between: the settle must still find the decision.
        assert_eq!(
            store.settle(&id, 90, &Usage::default(), 1).await.expect("settle"),
            Settled::Charged { cost_nanos: 90 }
        );
    }
}

async fn reserve_is_all_or_nothing(store: &SharedStore, ns: &str) {
    let (a, b) = (format!("{ns}|a"), format!("{ns}|b"));
    let ok = store
        .reserve(&reservation(&format!("{ns}-1"), 60, &[(&a, 100), (&b, 1000)], 0))
        .await
        .expect("reserve");
    assert_eq!(ok, Reserved::Ok);
    // 60 + 60 > 100 on `a`: refused, and `b` must not be touched either.
    let over = store
        .reserve(&reservation(&format!("{ns}-2"), 60, &[(&b, 1000), (&a, 100)], 0))
        .await
        .expect("reserve");
    assert!(
        matches!(over, Reserved::OverLimit { ref scope, .. } if *scope == a),
        "{over:?}"
    );
    assert_eq!(
        store.scope(&b).await.expect("scope"),
        ScopeState {
            limit_nanos: 1000,
            spent_nanos: 0,
            reserved_nanos: 60
        }
    );
    assert_eq!(store.scope(&a).await.expect("scope").reserved_nanos, 60);
    assert!(
        store.reservation(&format!("{ns}-2")).await.expect("read").is_none(),
        "no record of a refused reservation"
    );
}

async fn settle_is_idempotent_and_releases(store: &SharedStore, ns: &str) {
    let s = format!("{ns}|settle");
    let id = format!("{ns}-settle");
    store
        .reserve(&reservation(&id, 500, &[(&s, 10_000)], 0))
        .await
        .expect("reserve");
    let usage = Usage {
        input_tokens: 10,
        cached_input_tokens: 0,
        output_tokens: 5,
        failed: false,
    };
    assert_eq!(
        store.settle(&id, 420, &usage, 1).await.expect("settle"),
        Settled::Charged { cost_nanos: 420 }
    );
    assert_eq!(
        store.settle(&id, 999, &usage, 2).await.expect("settle"),
        Settled::AlreadySettled { cost_nanos: 420 }
    );
    assert_eq!(
        store.scope(&s).await.expect("scope"),
        ScopeState {
            limit_nanos: 10_000,
            spent_nanos: 420,
            reserved_nanos: 0
        }
    );
    assert!(matches!(
        store.settle("nope", 1, &usage, 3).await,
        Err(StoreError::UnknownDecision(_))
    ));
    // An overrun (actual above the estimate) is recorded in full.
    let id2 = format!("{ns}-overrun");
    store
        .reserve(&reservation(&id2, 100, &[(&s, 10_000)], 0))
        .await
        .expect("reserve");
    store.settle(&id2, 300, &usage, 4).await.expect("settle");
    assert_eq!(store.scope(&s).await.expect("scope").spent_nanos, 720);
}

async fn expiry_releases_and_late_usage_still_counts(store: &SharedStore, ns: &str) {
    let s = format!("{ns}|expiry");
    let id = format!("{ns}-expiry");
    let mut r = reservation(&id, 700, &[(&s, 1000)], 0);
    r.expires_ms = 10;
    store.reserve(&r).await.expect("reserve");
    assert!(matches!(
        store
            .reserve(&reservation(&format!("{id}b"), 700, &[(&s, 1000)], 0))
            .await,
        Ok(Reserved::OverLimit { .. })
    ));
    assert!(store.expire(10).await.expect("expire") >= 1);
    assert_eq!(
        store.scope(&s).await.expect("scope").reserved_nanos,
        0,
        "the leak is gone"
    );
    assert_eq!(
        store.reservation(&id).await.expect("read").map(|r| r.state),
        Some("expired".to_string())
    );
    // Usage that arrives after expiry is still charged, once.
    store
        .settle(&id, 650, &Usage::default(), 20)
        .await
        .expect("late settle");
    store.settle(&id, 650, &Usage::default(), 21).await.expect("repeat");
    assert_eq!(
        store.scope(&s).await.expect("scope"),
        ScopeState {
            limit_nanos: 1000,
            spent_nanos: 650,
            reserved_nanos: 0
        }
    );
}

async fn concurrent_clients_never_overspend(store: &SharedStore, ns: &str) {
    // 32 clients race for a $1 budget with calls estimated at $0.03 that
    // actually cost $0.025..$0.03: spend must never pass $1.
    let s = format!("{ns}|race");
    let tasks: Vec<_> = (0..32)
        .map(|c| {
            let (store, s) = (store.clone(), s.clone());
            let ns = ns.to_string();
            tokio::spawn(async move {
                let mut granted = 0;
                for i in 0..20 {
                    let id = format!("{ns}-race-{c}-{i}");
                    match store
                        .reserve(&reservation(&id, 30_000_000, &[(&s, DOLLAR)], 0))
                        .await
                        .expect("reserve")
                    {
                        Reserved::Ok => {
                            granted += 1;
                            let actual = 25_000_000 + (c * 20 + i) as i64 % 5_000_001;
                            store.settle(&id, actual, &Usage::default(), 1).await.expect("settle");
                        }
                        Reserved::OverLimit { .. } => {}
                    }
                }
                granted
            })
        })
        .collect();
    let mut granted = 0;
    for t in tasks {
        granted += t.await.expect("client");
    }
    let st = store.scope(&s).await.expect("scope");
    assert!(st.spent_nanos <= DOLLAR, "overspent: {st:?}");
    assert_eq!(st.reserved_nanos, 0);
    assert!(
        granted >= 33,
        "the budget was used, not refused wholesale: {granted} calls"
    );
}

async fn escalations_approve_and_deny(store: &SharedStore, ns: &str) {
    let s = format!("{ns}|esc");
    store
        .reserve(&reservation(&format!("{ns}-esc0"), 100, &[(&s, 100)], 0))
        .await
        .expect("fill");
    let e = Escalation {
        id: format!("{ns}-e1"),
        workflow: ns.into(),
        scope: s.clone(),
        outcome_id: "o".into(),
        caller: "local".into(),
        amount_nanos: 50,
        model: "m".into(),
        state: "pending".into(),
        created_ms: 5,
        resolved_by: String::new(),
        resolved_ms: 0,
        added_nanos: 0,
        reason: String::new(),
    };
    store.create_escalation(&e).await.expect("create");
    assert_eq!(
        store.open_escalation(&s).await.expect("open").map(|e| e.id),
        Some(e.id.clone())
    );
    let approved = store
        .resolve_escalation(&e.id, true, 200, "finance", "quarter end", 6)
        .await
        .expect("approve");
    assert_eq!(
        (
            approved.state.as_str(),
            approved.added_nanos,
            approved.resolved_by.as_str()
        ),
        ("approved", 200, "finance")
    );
    assert!(
        store.open_escalation(&s).await.expect("open").is_none(),
        "approved escalations no longer block"
    );
    assert_eq!(store.scope(&s).await.expect("scope").limit_nanos, 300);
    assert_eq!(
        store
            .reserve(&reservation(&format!("{ns}-esc1"), 150, &[(&s, 100)], 7))
            .await
            .expect("resume"),
        Reserved::Ok
    );
    assert!(matches!(
        store.resolve_escalation(&e.id, false, 0, "x", "", 8).await,
        Err(StoreError::AlreadyResolved(_, _))
    ));
    let e2 = Escalation {
        id: format!("{ns}-e2"),
        created_ms: 9,
        ..e
    };
    store.create_escalation(&e2).await.expect("create");
    store
        .resolve_escalation(&e2.id, false, 0, "finance", "no", 10)
        .await
        .expect("deny");
    assert_eq!(
        store.open_escalation(&s).await.expect("open").map(|e| e.state),
        Some("denied".to_string())
    );
    let listed = store.list_escalations(Some(ns)).await.expect("list");
    assert!(listed.iter().any(|x| x.id == e2.id && x.state == "denied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().expect("tmp");
    let store: SharedStore = Arc::new(sqlite::SqliteStore::open(dir.path()).expect("open"));
    conformance(store, "t").await;
}

#[path = "../../tests/common/redis.rs"]
mod redis_server;

pub fn redis_config(url: String, dir: &std::path::Path, fail_open_nanos: Option<i64>) -> redis::RedisConfig {
    redis::RedisConfig {
        url,
        prefix: "sy".into(),
        // Generous: a loaded CI machine can be slow to answer the first call.
        timeout: std::time::Duration::from_secs(5),
        reservation_ttl_ms: 600_000,
        fail_open_cap_nanos: fail_open_nanos,
        journal: dir.join("redis-journal.jsonl"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_store_conforms() {
    let server = redis_server::RedisServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let store = redis::RedisStore::connect(redis_config(server.url(), dir.path(), None))
        .await
        .expect("connect");
    store.ping().await.expect("ping");
    conformance(Arc::new(store), "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_closed_journals_reports_and_replays_them_once() {
    let mut server = redis_server::RedisServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = redis_config(server.url(), dir.path(), None);
    let store = redis::RedisStore::connect(cfg.clone()).await.expect("connect");
    let day = [("w|day", DOLLAR)];
    assert_eq!(
        store.reserve(&reservation("d1", 100, &day, 0)).await.expect("reserve"),
        Reserved::Ok
    );

    server.kill9();
    let refused = store.reserve(&reservation("d2", 100, &day, 0)).await;
    assert!(
        matches!(&refused, Err(StoreError::Unavailable(m)) if m.contains("fails closed")),
        "{refused:?}"
    );
    // The usage of a call made before the outage is acknowledged (journaled),
    // and so is a retry of it.
    for _ in 0..2 {
        assert_eq!(
            store.settle("d1", 90, &Usage::default(), 1).await.expect("journaled"),
            Settled::Charged { cost_nanos: 90 }
        );
    }
    assert_eq!(store.pending_settlements().await, 2);
    assert!(store.expire(2).await.is_err(), "maintenance fails while Redis is down");
    // A restart of the sidecar keeps the journal.
    drop(store);
    let store = redis::RedisStore::connect(cfg).await.expect("reconnect");
    assert_eq!(store.pending_settlements().await, 2);

    server.restart();
    store.expire(3).await.expect("replay");
    assert_eq!(store.pending_settlements().await, 0);
    assert_eq!(
        store.scope("w|day").await.expect("scope"),
        ScopeState {
            limit_nanos: DOLLAR,
            spent_nanos: 90,
            reserved_nanos: 0
        },
        "charged once, reservation released"
    );
    assert_eq!(
        store.settle("d1", 90, &Usage::default(), 4).await.expect("settle"),
        Settled::AlreadySettled { cost_nanos: 90 }
    );
    assert!(!dir.path().join("redis-journal.jsonl").exists(), "journal emptied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_open_up_to_the_local_cap() {
    let mut server = redis_server::RedisServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let store = redis::RedisStore::connect(redis_config(server.url(), dir.path(), Some(1000)))
        .await
        .expect("connect");
    let day = [("w|day", DOLLAR)];
    store.reserve(&reservation("warm", 0, &day, 0)).await.expect("reserve");
    server.kill9();
    assert_eq!(
        store
            .reserve(&reservation("o1", 600, &day, 0))
            .await
            .expect("fail open"),
        Reserved::Ok
    );
    let capped = store.reserve(&reservation("o2", 600, &day, 0)).await;
    assert!(
        matches!(&capped, Err(StoreError::Unavailable(m)) if m.contains("fail-open cap")),
        "{capped:?}"
    );
    // Priced from this sidecar's own record while Redis is down.
    let rec = store.reservation("o1").await.expect("local record").expect("known");
    assert_eq!((rec.model.as_str(), rec.amount_nanos), ("m", 600));
    store.settle("o1", 500, &Usage::default(), 1).await.expect("journaled");

    server.restart();
    store.expire(2).await.expect("replay");
    let st = store.scope("w|day").await.expect("scope");
    assert_eq!((st.spent_nanos, st.reserved_nanos), (500, 0), "{st:?}");
    assert_eq!(
        store.settle("o1", 500, &Usage::default(), 3).await.expect("settle"),
        Settled::AlreadySettled { cost_nanos: 500 }
    );
    // Back to normal: the cap is for outages only.
    assert_eq!(
        store.reserve(&reservation("o3", 5000, &day, 0)).await.expect("reserve"),
        Reserved::Ok
    );
}

#[tokio::test]
async fn sqlite_state_survives_reopening() {
    let dir = tempfile::tempdir().expect("tmp");
    {
        let store = sqlite::SqliteStore::open(dir.path()).expect("open");
        store
            .reserve(&reservation("d1", 500, &[("w|day", 1000)], 0))
            .await
            .expect("reserve");
        store.settle("d1", 450, &Usage::default(), 1).await.expect("settle");
    }
    let store = sqlite::SqliteStore::open(dir.path()).expect("reopen");
    assert_eq!(store.scope("w|day").await.expect("scope").spent_nanos, 450);
    assert!(matches!(
        store.settle("d1", 450, &Usage::default(), 2).await,
        Ok(Settled::AlreadySettled { .. })
    ));
}

#[tokio::test]
async fn sqlite_decision_records_are_durable_after_sync_and_expire_only_with_a_budget() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = sqlite::SqliteStore::open(dir.path()).expect("open");
    for i in 0..300 {
        let mut r = reservation(&format!("rec-{i}"), 10, &[], 0);
        r.expires_ms = 5;
        store.record_detached(r);
    }
    store.sync().await.expect("sync");
    // Another connection, as `switchyard report` would open it, sees all of them.
    let other = rusqlite::Connection::open(dir.path().join("budget.sqlite3")).expect("open again");
    let n: i64 = other
        .query_row(
            "SELECT COUNT(*) FROM reservations WHERE decision_id LIKE 'rec-%'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(n, 300);
    // Nothing is held for them, so the sweep has nothing to release.
    assert_eq!(store.expire(1_000).await.expect("expire"), 0);
    let plan: String = other
        .query_row(
            "EXPLAIN QUERY PLAN SELECT decision_id FROM reservations WHERE state = 'reserved' AND scopes != '' AND expires_ms <= 1",
            [],
            |r| r.get(3),
        )
        .expect("plan");
    assert!(
        plan.contains("reservations_held"),
        "the sweep uses the partial index: {plan}"
    );
}

const BUDGETED: &str = r#"
[[models]]
name = "m"
provider = "p"
input_per_mtok = 1.0
cached_input_per_mtok = 0.1
output_per_mtok = 2.0
context_window = 1000
max_output_tokens = 100
tiers = { general = 3 }

[[workflows]]
name = "w"
[workflows.budget]
limit_usd = 1.0
period = "day"
timezone = "Europe/Berlin"
per_outcome_usd = 0.10
soft_threshold_pct = 80
on_limit = "escalate"
labels = [{ label = "team", value = "search", limit_usd = 0.5 }]

[[workflows]]
name = "weekly"
[workflows.budget]
limit_usd = 5
period = "week"

[[workflows]]
name = "monthly"
[workflows.budget]
limit_usd = 5
period = "month"
"#;

#[test]
fn periods_align_to_the_calendar_in_the_time_zone() {
    let t = RuleTable::from_str("b.toml", BUDGETED).expect("rules");
    let at = |s: &str| s.parse::<Timestamp>().expect("timestamp");
    let w = t.workflow("w").expect("w");
    let b = w.budget.as_ref().expect("budget");
    assert_eq!(
        (b.limit_nanos, b.per_outcome_nanos, b.soft_threshold_bp),
        (DOLLAR, Some(DOLLAR / 10), Some(8000))
    );
    // 22:59 UTC on the 24th is 23:59 in Berlin (CET): still the 24th there.
    assert_eq!(
        period_scope(w, b, at("2026-11-24T22:59:00Z")),
        "w|day|2026-11-24@Europe/Berlin"
    );
    // A minute later it is midnight in Berlin: a new period, a new counter.
    assert_eq!(
        period_scope(w, b, at("2026-11-24T23:00:00Z")),
        "w|day|2026-11-25@Europe/Berlin"
    );
    let wk = t.workflow("weekly").expect("weekly");
    let wb = wk.budget.as_ref().expect("budget");
    // Wednesday 2026-11-25 falls in the ISO week starting Monday 2026-11-23.
    assert_eq!(
        period_scope(wk, wb, at("2026-11-25T12:00:00Z")),
        "weekly|week|2026-11-23@UTC"
    );
    assert_eq!(
        period_scope(wk, wb, at("2026-11-30T00:00:00Z")),
        "weekly|week|2026-11-30@UTC"
    );
    let m = t.workflow("monthly").expect("monthly");
    let mb = m.budget.as_ref().expect("budget");
    assert_eq!(
        period_scope(m, mb, at("2026-12-31T23:59:59Z")),
        "monthly|month|2026-12-01@UTC"
    );
    assert_eq!(
        period_scope(m, mb, at("2027-01-01T00:00:00Z")),
        "monthly|month|2027-01-01@UTC"
    );

    let scopes = scopes_for(
        w,
        "ticket-1",
        [("team", "search")].into_iter(),
        at("2026-11-25T12:00:00Z"),
    );
    let keys: Vec<&str> = scopes.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "w|day|2026-11-25@Europe/Berlin",
            "w|outcome|ticket-1",
            "w|label|team=search|day|2026-11-25@Europe/Berlin"
        ]
    );
    assert!(scopes_for(w, "", [("team", "ads")].into_iter(), at("2026-11-25T12:00:00Z")).len() == 1);
}

#[test]
fn bad_budgets_are_located() {
    let text = BUDGETED
        .replace("period = \"day\"", "period = \"fortnight\"")
        .replace("Europe/Berlin", "Mars/Olympus");
    let e = RuleTable::from_str("b.toml", &text).expect_err("invalid");
    let s = e.to_string();
    assert!(
        s.contains("`workflows[0].budget.period`: unknown period `fortnight`"),
        "{s}"
    );
    assert!(
        s.contains("`workflows[0].budget.timezone`: unknown time zone `Mars/Olympus`"),
        "{s}"
    );
}

/// A day's budget used up at 23:59 in Berlin is a fresh budget a minute
/// later; the old day's spend stays as it was (a rollover is a new counter,
/// never a reset), even with calls on both sides of midnight racing.
async fn rollover_starts_a_new_counter(store: SharedStore) {
    let t = RuleTable::from_str("b.toml", BUDGETED).expect("rules");
    let w = t.workflow("w").expect("w");
    let budgets = Arc::new(Budgets::new(store.clone(), 600_000));
    let before: Timestamp = "2026-11-24T22:59:00Z".parse().expect("ts");
    let after: Timestamp = "2026-11-24T23:00:30Z".parse().expect("ts");
    let admit = |id: String, at: Timestamp| {
        let (budgets, t) = (budgets.clone(), t.clone());
        async move {
            let w = t.workflow("w").expect("w");
            let call = Call {
                decision_id: &id,
                workflow: w,
                outcome_id: "",
                labels: vec![],
                model: "m",
                deferrable: false,
                cost_nanos: DOLLAR / 10,
                caller: "test",
                downgraded: false,
            };
            budgets.admit(&call, at).await.expect("admit")
        }
    };
    // 16 racing calls on each side of midnight: ten fit in each day.
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let at = if i % 2 == 0 { before } else { after };
            tokio::spawn(admit(format!("roll-{i}"), at))
        })
        .collect();
    let mut routed = [0, 0];
    for (i, task) in tasks.into_iter().enumerate() {
        if task.await.expect("task") == Admission::Routed {
            routed[i % 2] += 1;
        }
    }
    assert_eq!(routed, [10, 10], "each day admits its own dollar");
    let old = store
        .scope(&period_scope(w, w.budget.as_ref().expect("b"), before))
        .await
        .expect("scope");
    let new = store
        .scope(&period_scope(w, w.budget.as_ref().expect("b"), after))
        .await
        .expect("scope");
    assert_eq!((old.reserved_nanos, new.reserved_nanos), (DOLLAR, DOLLAR));
    assert!(matches!(admit("late".into(), before).await, Admission::Escalate(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollover_on_sqlite() {
    let dir = tempfile::tempdir().expect("tmp");
    rollover_starts_a_new_counter(Arc::new(sqlite::SqliteStore::open(dir.path()).expect("open"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollover_on_redis() {
    let server = redis_server::RedisServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let store = redis::RedisStore::connect(redis_config(server.url(), dir.path(), None))
        .await
        .expect("connect");
    rollover_starts_a_new_counter(Arc::new(store)).await;
}

#[test]
fn the_ledger_reads_calls_by_the_time_ordered_primary_key() {
    let dir = tempfile::tempdir().expect("tmp");
    drop(sqlite::SqliteStore::open(dir.path()).expect("open"));
    let conn = rusqlite::Connection::open(dir.path().join("budget.sqlite3")).expect("conn");
    let plan: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", sqlite::LEDGER_CALLS))
        .expect("plan")
        .query_map(rusqlite::params![0, None::<String>, "0"], |r| r.get::<_, String>(3))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("plan rows");
    assert!(plan.iter().any(|p| p.contains("decision_id>?")), "{plan:?}");
    // A v7 ID made at a time sorts at or after the floor for that time.
    let t = 1_764_000_000_123;
    let id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        (t / 1000) as u64,
        ((t % 1000) * 1_000_000) as u32,
    ))
    .to_string();
    assert!(id >= sqlite::uuid_v7_floor(t), "{id}");
    assert!(id < sqlite::uuid_v7_floor(t + 1), "{id}");
}

#[test]
fn decision_ids_are_version_7_unique_and_time_ordered() {
    let before = sqlite::uuid_v7_floor(now_ms());
    let ids: Vec<String> = (0..1000).map(|_| new_decision_id()).collect();
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len());
    for id in &ids {
        let u = uuid::Uuid::parse_str(id).expect("a UUID");
        assert_eq!(u.get_version_num(), 7, "{id}");
        assert!(*id >= before, "{id} sorts after the floor of the time it was made");
    }
}
