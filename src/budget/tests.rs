//! The store conformance suites, one per store trait: every backend passes
//! each ([`budgets_conform`], [`escalations_conform`], [`ledger_conforms`],
//! [`learning_conforms`]), and the tests below run them on SQLite and on a
//! real `redis-server`. Then tests of what is not a trait's contract: budget
//! periods, rollover, the embedded store's WAL and state folder.

use std::sync::Arc;

use super::*;
use crate::outcome::ledger::{FeedbackEvent, OutcomeEvent, OutcomeStatus};
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
        caller: "local".into(),
        prices: Default::default(),
        tier: 0,
    }
}

/// What every [`BudgetStore`] must do. Scope keys are prefixed with `ns` so
/// the suites can share a store.
pub async fn budgets_conform(store: Arc<dyn BudgetStore>, ns: &str) {
    reserve_is_all_or_nothing(&store, ns).await;
    settle_is_idempotent_and_releases(&store, ns).await;
    expiry_releases_and_late_usage_still_counts(&store, ns).await;
    concurrent_clients_never_overspend(&store, ns).await;
    spend_saturates_instead_of_overflowing(&store, ns).await;
    reservations_keep_their_caller_and_prices(&store, ns).await;
    detached_records_are_ordered_before_later_calls(&store, ns).await;
}

/// What every [`EscalationStore`] must do, with the budget counters its
/// approvals raise.
pub async fn escalations_conform(store: Arc<dyn Store>, ns: &str) {
    escalations_approve_and_deny(&store, ns).await;
    concurrent_crossings_share_one_escalation(&store, ns).await;
    approvals_past_the_cap_are_refused(&store, ns).await;
}

/// What every [`LedgerStore`] must do, with the settlements it reads.
pub async fn ledger_conforms(store: Arc<dyn Store>, ns: &str) {
    the_ledger_holds_settled_calls_outcomes_and_feedback(&store, ns).await;
}

/// What every [`LearningStore`] must do.
pub async fn learning_conforms(store: Arc<dyn LearningStore>, ns: &str) {
    labelled_calls_are_kept_in_order_within_the_window(&store, ns).await;
    rejections_keep_the_highest_tier_per_outcome(&store, ns).await;
}

async fn rejections_keep_the_highest_tier_per_outcome(store: &Arc<dyn LearningStore>, ns: &str) {
    let wf = format!("{ns}rej");
    assert_eq!(store.rejected_tier(&wf, "o-1").await.expect("read"), None);
    for tier in [2, 4, 3] {
        store.note_rejection(&wf, "o-1", tier, 1_000).await.expect("note");
    }
    assert_eq!(
        store.rejected_tier(&wf, "o-1").await.expect("read"),
        Some(4),
        "the highest is kept"
    );
    assert_eq!(
        store.rejected_tier(&wf, "o-2").await.expect("read"),
        None,
        "per outcome"
    );
    assert_eq!(
        store.rejected_tier(&format!("{ns}other"), "o-1").await.expect("read"),
        None,
        "per workflow"
    );
}

async fn the_ledger_holds_settled_calls_outcomes_and_feedback(store: &Arc<dyn Store>, ns: &str) {
    let wf = format!("{ns}led");
    let s = format!("{wf}|day");
    for i in 0..3 {
        let id = format!("{ns}-led-{i}");
        let mut r = reservation(&id, 100, &[(&s, DOLLAR)], 1_000 + i);
        r.labels = "team=search".into();
        store.reserve(&r).await.expect("reserve");
        if i < 2 {
            let usage = Usage {
                input_tokens: 10 + i as u64,
                cached_input_tokens: 1,
                output_tokens: 5,
                failed: i == 1,
            };
            store.settle(&id, 90 + i, &usage, 2_000 + i).await.expect("settle");
        }
    }
    store
        .record_outcome(&OutcomeEvent {
            workflow: wf.clone(),
            outcome_id: "o".into(),
            status: OutcomeStatus::Accepted,
            value_usd: Some(12.5),
            human_minutes: None,
            at_ms: 3_000,
        })
        .await
        .expect("outcome");
    store
        .record_feedback(&FeedbackEvent {
            workflow: wf.clone(),
            decision_id: format!("{ns}-led-0"),
            model: "m".into(),
            accepted: false,
            at_ms: 3_001,
        })
        .await
        .expect("feedback");
    let l = store.ledger(Some(&wf), 0).await.expect("ledger");
    let calls: Vec<(&str, i64, bool)> = l
        .calls
        .iter()
        .map(|c| (c.decision_id.as_str(), c.cost_nanos, c.failed))
        .collect();
    let (a, b) = (format!("{ns}-led-0"), format!("{ns}-led-1"));
    assert_eq!(
        calls,
        [(a.as_str(), 90, false), (b.as_str(), 91, true)],
        "settled calls only, in order"
    );
    assert_eq!(
        (
            l.calls[0].input_tokens,
            l.calls[0].cached_input_tokens,
            l.calls[0].output_tokens
        ),
        (10, 1, 5)
    );
    assert!(l.calls[0].has_label("team=search"));
    assert_eq!(l.outcomes.len(), 1);
    assert_eq!(
        (l.outcomes[0].status, l.outcomes[0].value_usd),
        (OutcomeStatus::Accepted, Some(12.5))
    );
    assert_eq!(l.feedback.len(), 1);
    assert!(!l.feedback[0].accepted);
    // Another workflow's ledger is its own; a later window leaves these out.
    assert!(store
        .ledger(Some(&format!("{ns}none")), 0)
        .await
        .expect("ledger")
        .calls
        .is_empty());
    let later = store.ledger(Some(&wf), now_ms() + 3_600_000).await.expect("ledger");
    assert!(later.calls.is_empty() && later.outcomes.is_empty() && later.feedback.is_empty());
}

async fn labelled_calls_are_kept_in_order_within_the_window(store: &Arc<dyn LearningStore>, ns: &str) {
    use crate::outcome::learn::{Features, LearnEvent};
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

async fn detached_records_are_ordered_before_later_calls(store: &Arc<dyn BudgetStore>, ns: &str) {
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

async fn reserve_is_all_or_nothing(store: &Arc<dyn BudgetStore>, ns: &str) {
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
            reserved_nanos: 60,
            extra_nanos: 0
        }
    );
    assert_eq!(store.scope(&a).await.expect("scope").reserved_nanos, 60);
    assert!(
        store.reservation(&format!("{ns}-2")).await.expect("read").is_none(),
        "no record of a refused reservation"
    );
}

async fn settle_is_idempotent_and_releases(store: &Arc<dyn BudgetStore>, ns: &str) {
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
            reserved_nanos: 0,
            extra_nanos: 0
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

async fn expiry_releases_and_late_usage_still_counts(store: &Arc<dyn BudgetStore>, ns: &str) {
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
        Some(ReservationState::Expired)
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
            reserved_nanos: 0,
            extra_nanos: 0
        }
    );
}

async fn concurrent_clients_never_overspend(store: &Arc<dyn BudgetStore>, ns: &str) {
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

fn escalation(ns: &str, id: &str, scope: &str, created_ms: i64) -> Escalation {
    Escalation {
        id: format!("{ns}-{id}"),
        workflow: ns.into(),
        scope: scope.to_string(),
        outcome_id: "o".into(),
        caller: "local".into(),
        amount_nanos: 50,
        model: "m".into(),
        state: EscalationState::Pending,
        created_ms,
        resolved_by: String::new(),
        resolved_ms: 0,
        added_nanos: 0,
        reason: String::new(),
    }
}

async fn escalations_approve_and_deny(store: &Arc<dyn Store>, ns: &str) {
    let s = format!("{ns}|esc");
    store
        .reserve(&reservation(&format!("{ns}-esc0"), 100, &[(&s, 100)], 0))
        .await
        .expect("fill");
    let e = escalation(ns, "e1", &s, 5);
    assert_eq!(store.escalate(&e).await.expect("create").id, e.id, "created");
    // A second call over the limit gets the same pending escalation.
    let again = escalation(ns, "e1b", &s, 6);
    assert_eq!(store.escalate(&again).await.expect("open").id, e.id);
    let approved = store
        .resolve_escalation(&e.id, true, 200, "finance", "quarter end", 6)
        .await
        .expect("approve");
    assert_eq!(
        (approved.state, approved.added_nanos, approved.resolved_by.as_str()),
        (EscalationState::Approved, 200, "finance")
    );
    let st = store.scope(&s).await.expect("scope");
    assert_eq!((st.limit_nanos, st.extra_nanos), (300, 200));
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
    // After an approval, the next crossing is a new escalation; a deny of it
    // holds, and later crossings see the denial rather than a new request.
    let e2 = escalation(ns, "e2", &s, 9);
    assert_eq!(
        store.escalate(&e2).await.expect("create").id,
        e2.id,
        "approved ones no longer apply"
    );
    store
        .resolve_escalation(&e2.id, false, 0, "finance", "no", 10)
        .await
        .expect("deny");
    let e3 = escalation(ns, "e3", &s, 11);
    let seen = store.escalate(&e3).await.expect("denied");
    assert_eq!(
        (seen.id.as_str(), seen.state),
        (e2.id.as_str(), EscalationState::Denied)
    );
    let listed = store.list_escalations(Some(ns)).await.expect("list");
    assert!(listed
        .iter()
        .any(|x| x.id == e2.id && x.state == EscalationState::Denied));
    assert!(
        !listed.iter().any(|x| x.id == e3.id),
        "no escalation is created past a denial"
    );
}

/// 32 calls crossing one scope's limit at once make one pending escalation,
/// which all of them get; one approval raises the limit once.
async fn concurrent_crossings_share_one_escalation(store: &Arc<dyn Store>, ns: &str) {
    let s = format!("{ns}|esc-race");
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let (store, e) = (store.clone(), escalation(ns, &format!("race-{i}"), &s, 100 + i));
            tokio::spawn(async move { store.escalate(&e).await.expect("escalate").id })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(t.await.expect("task"));
    }
    assert_eq!(ids.len(), 1, "one pending escalation per scope: {ids:?}");
    let pending: Vec<Escalation> = store
        .list_escalations(Some(ns))
        .await
        .expect("list")
        .into_iter()
        .filter(|e| e.scope == s && e.state == EscalationState::Pending)
        .collect();
    assert_eq!(pending.len(), 1, "{pending:?}");
    let id = ids.into_iter().next().unwrap_or_default();
    // The period's first call was over the limit: no scope row existed yet,
    // and the approval must still take effect.
    store
        .resolve_escalation(&id, true, 500, "finance", "", 200)
        .await
        .expect("approve");
    let st = store.scope(&s).await.expect("scope");
    assert_eq!(st.extra_nanos, 500);
    assert_eq!(
        store
            .reserve(&reservation(&format!("{ns}-after-approval"), 450, &[(&s, 100)], 201))
            .await
            .expect("reserve"),
        Reserved::Ok,
        "the approved amount is there for the next call"
    );
}

/// An approval past the cap is refused with a reason, the escalation stays
/// pending, and the store still reads: no amount one request can send makes
/// it unreadable.
async fn approvals_past_the_cap_are_refused(store: &Arc<dyn Store>, ns: &str) {
    let s = format!("{ns}|huge");
    let e = escalation(ns, "huge", &s, 300);
    store.escalate(&e).await.expect("create");
    let refused = store
        .resolve_escalation(&e.id, true, i64::MAX, "mallory", "", 301)
        .await
        .expect_err("over the cap");
    assert!(
        matches!(&refused, StoreError::InvalidAmount(m) if m.contains("past $1000000000")),
        "{refused}"
    );
    assert!(matches!(
        store.resolve_escalation(&e.id, true, -5, "mallory", "", 301).await,
        Err(StoreError::InvalidAmount(_))
    ));
    // The escalation is still pending and can be approved within the cap.
    let ok = store
        .resolve_escalation(&e.id, true, crate::money::MAX_APPROVAL_NANOS, "finance", "", 302)
        .await
        .expect("approve");
    assert_eq!(ok.state, EscalationState::Approved);
    let st = store.scope(&s).await.expect("still readable");
    assert_eq!(st.extra_nanos, crate::money::MAX_APPROVAL_NANOS);
    assert!(store.list_escalations(Some(ns)).await.is_ok());
}

/// Spend near the top of i64 saturates instead of overflowing, and the
/// scope still reads.
async fn spend_saturates_instead_of_overflowing(store: &Arc<dyn BudgetStore>, ns: &str) {
    let s = format!("{ns}|huge");
    let id = format!("{ns}-huge-spend");
    store
        .reserve(&reservation(&id, 1, &[(&s, 1000)], 303))
        .await
        .expect("reserve");
    store
        .settle(&id, i64::MAX - 10, &Usage::default(), 304)
        .await
        .expect("settle");
    let id2 = format!("{ns}-huge-spend-2");
    // Over the limit now: refused, not wrapped into a negative.
    assert!(matches!(
        store
            .reserve(&reservation(&id2, 1, &[(&s, 1000)], 305))
            .await
            .expect("reserve"),
        Reserved::OverLimit { .. }
    ));
    let st = store.scope(&s).await.expect("still readable");
    assert_eq!(st.spent_nanos, i64::MAX - 10);
    // Late settles of expired reservations push spend past i64: it
    // saturates, and the scope still reads.
    let s2 = format!("{ns}|huge2");
    let late: Vec<String> = (0..2).map(|i| format!("{ns}-huge-late-{i}")).collect();
    for id in &late {
        let mut r = reservation(id, 0, &[(&s2, 1000)], 306);
        r.expires_ms = 307;
        store.reserve(&r).await.expect("reserve");
    }
    store.expire(400).await.expect("expire");
    store
        .settle(&late[0], i64::MAX - 10, &Usage::default(), 401)
        .await
        .expect("settle");
    store
        .settle(&late[1], 100, &Usage::default(), 401)
        .await
        .expect("settle");
    store
        .settle(&id, 5, &Usage::default(), 402)
        .await
        .expect("repeat is a no-op");
    let st = store.scope(&s2).await.expect("readable");
    assert_eq!(st.spent_nanos, i64::MAX);
}

/// A reservation keeps who routed it, and the prices and tier it was routed at.
async fn reservations_keep_their_caller_and_prices(store: &Arc<dyn BudgetStore>, ns: &str) {
    let s = format!("{ns}|kept");
    let prices = crate::rules::Prices {
        input_nanos_per_mtok: 1_250_000_000,
        cached_input_nanos_per_mtok: 125_000_000,
        output_nanos_per_mtok: 10_000_000_000,
        batch_discount_bp: 5000,
    };
    for (id, scopes) in [
        (format!("{ns}-kept"), vec![(s.as_str(), 1000)]),
        (format!("{ns}-kept-free"), vec![]),
    ] {
        let mut r = reservation(&id, 10, &scopes, 0);
        r.caller = "agent-a".into();
        r.prices = prices;
        r.tier = 3;
        if scopes.is_empty() {
            store.record_detached(r);
        } else {
            store.reserve(&r).await.expect("reserve");
        }
        let got = store.reservation(&id).await.expect("read").expect("found");
        assert_eq!(
            (got.caller.as_str(), got.prices, got.tier),
            ("agent-a", Some(prices), Some(3)),
            "{id}"
        );
    }
}

fn sqlite_store() -> (tempfile::TempDir, Arc<sqlite::SqliteStore>) {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(sqlite::SqliteStore::open(dir.path()).expect("open"));
    (dir, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_budgets_conform() {
    let (_dir, store) = sqlite_store();
    budgets_conform(store, "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_escalations_conform() {
    let (_dir, store) = sqlite_store();
    escalations_conform(store, "t").await;
}

#[tokio::test]
async fn sqlite_ledger_conforms() {
    let (_dir, store) = sqlite_store();
    ledger_conforms(store, "t").await;
}

#[tokio::test]
async fn sqlite_learning_conforms() {
    let (_dir, store) = sqlite_store();
    learning_conforms(store, "t").await;
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

/// A real `redis-server` on a free port, and a store on it.
async fn redis_store() -> (redis_server::RedisServer, tempfile::TempDir, Arc<redis::RedisStore>) {
    let server = redis_server::RedisServer::start();
    let dir = tempfile::tempdir().expect("tmp");
    let store = redis::RedisStore::connect(redis_config(server.url(), dir.path(), None))
        .await
        .expect("connect");
    store.ping().await.expect("ping");
    (server, dir, Arc::new(store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_budgets_conform() {
    let (_server, _dir, store) = redis_store().await;
    budgets_conform(store, "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_escalations_conform() {
    let (_server, _dir, store) = redis_store().await;
    escalations_conform(store, "t").await;
}

#[tokio::test]
async fn redis_ledger_conforms() {
    let (_server, _dir, store) = redis_store().await;
    ledger_conforms(store, "t").await;
}

#[tokio::test]
async fn redis_learning_conforms() {
    let (_server, _dir, store) = redis_store().await;
    learning_conforms(store, "t").await;
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
            reserved_nanos: 0,
            extra_nanos: 0
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
                prices: Default::default(),
                tier: 0,
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

/// Reserve + settle pairs from `clients` tasks on one scope for `run`,
/// sampling the WAL's size every 10 ms; returns (pairs, peak WAL bytes).
async fn drive_sqlite(store: Arc<sqlite::SqliteStore>, clients: usize, run: std::time::Duration) -> (u64, u64) {
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while started.elapsed() < run {
                    let id = format!("wal-{c}-{n}");
                    let mut r = reservation(&id, 1_000, &[("wal|day", i64::MAX / 4)], 0);
                    r.labels = "team=search\u{1e}tier=gold".into();
                    assert_eq!(store.reserve(&r).await.expect("reserve"), Reserved::Ok);
                    store.settle(&id, 900, &Usage::default(), 1).await.expect("settle");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut peak = 0;
    while started.elapsed() < run {
        peak = peak.max(store.wal_bytes());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut pairs = 0;
    for t in tasks {
        pairs += t.await.expect("client");
    }
    (pairs, peak.max(store.wal_bytes()))
}

/// Under continuous writes the WAL stays bounded; idle, it shrinks to
/// nothing; at shutdown it is emptied. (It grew without end before: the
/// background PASSIVE checkpoints never caught the writer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_load_and_empties_when_idle_and_at_shutdown() {
    let dir = tempfile::tempdir().expect("tmp");
    let limit = 1024 * 1024;
    let store =
        Arc::new(sqlite::SqliteStore::open_with(dir.path(), sqlite::Options { wal_limit_bytes: limit }).expect("open"));
    let (pairs, peak) = drive_sqlite(store.clone(), 8, std::time::Duration::from_secs(3)).await;
    assert!(pairs > 1000, "the load ran: {pairs} pairs");
    // Between two checks (100 ms) the store writes at most a few MB more
    // than the limit; unbounded, 3 s of this load writes tens of MB.
    assert!(
        peak < 4 * limit,
        "the WAL peaked at {peak} bytes against a {limit}-byte limit after {pairs} pairs"
    );
    // Idle: the checkpoint thread sees the WAL stop growing and truncates it.
    let idle = common_eventually(std::time::Duration::from_secs(5), || store.wal_bytes() == 0).await;
    assert!(
        idle,
        "an idle store's WAL is truncated (still {} bytes)",
        store.wal_bytes()
    );
    // A burst, then shutdown's sync empties it at once.
    for i in 0..50 {
        let id = format!("wal-last-{i}");
        store
            .reserve(&reservation(&id, 1, &[("wal|day", i64::MAX / 4)], 0))
            .await
            .expect("reserve");
    }
    assert!(store.wal_bytes() > 0);
    store.sync().await.expect("sync");
    assert_eq!(store.wal_bytes(), 0, "sync at shutdown leaves an empty WAL");
    // Nothing was lost on the way: every pair is in the scope.
    let st = store.scope("wal|day").await.expect("scope");
    assert_eq!((st.spent_nanos, st.reserved_nanos), (900 * pairs as i64, 50));
}

async fn common_eventually(within: std::time::Duration, f: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    f()
}

/// A store an older build damaged (an approval whose sum overflowed into a
/// REAL, duplicate pending escalations) opens readable and consistent.
#[tokio::test]
async fn a_store_damaged_by_an_older_build_is_repaired_on_open() {
    let dir = tempfile::tempdir().expect("tmp");
    drop(sqlite::SqliteStore::open(dir.path()).expect("create"));
    {
        let conn = rusqlite::Connection::open(dir.path().join(sqlite::FILE)).expect("conn");
        conn.execute_batch(
            "DROP INDEX escalations_one_pending;
             INSERT INTO scopes (key, limit_nanos, extra_nanos, spent_nanos, reserved_nanos)
                 VALUES ('w|day|2026-12-01@UTC', 1000000000, 9.3e18, 5, 0);
             INSERT INTO escalations (id, workflow, scope, outcome_id, caller, amount_nanos, model, state, created_ms)
                 VALUES ('esc-old', 'w', 'w|day|2026-12-01@UTC', '', 'a', 1, 'm', 'pending', 1),
                        ('esc-new', 'w', 'w|day|2026-12-01@UTC', '', 'a', 1, 'm', 'pending', 2);",
        )
        .expect("damage");
        let kind: String = conn
            .query_row("SELECT typeof(extra_nanos) FROM scopes", [], |r| r.get(0))
            .expect("typeof");
        assert_eq!(kind, "real", "the damage an overflowing approval left");
    }
    let store: SharedStore = Arc::new(sqlite::SqliteStore::open(dir.path()).expect("reopen"));
    let st = store.scope("w|day|2026-12-01@UTC").await.expect("readable again");
    assert_eq!(st.extra_nanos, crate::money::MAX_SCOPE_EXTRA_NANOS);
    assert_eq!(st.spent_nanos, 5);
    let pending: Vec<String> = store
        .list_escalations(Some("w"))
        .await
        .expect("list")
        .into_iter()
        .filter(|e| e.state == EscalationState::Pending)
        .map(|e| e.id)
        .collect();
    assert_eq!(pending, ["esc-new"], "the newest pending escalation is kept");
}

/// The state folder remembers its store: a store that is missing or empty
/// beside that record is refused, unless a fresh start is accepted.
#[test]
fn a_missing_or_empty_store_beside_existing_state_is_refused() {
    use sqlite::{prepare_state_dir, StateStart};
    let dir = tempfile::tempdir().expect("tmp");
    assert_eq!(prepare_state_dir(dir.path(), false), Ok(StateStart::New));
    drop(sqlite::SqliteStore::open(dir.path()).expect("create"));
    assert!(dir.path().join(sqlite::MARKER).exists(), "the store is recorded");
    assert_eq!(prepare_state_dir(dir.path(), false), Ok(StateStart::Existing));
    let db = dir.path().join(sqlite::FILE);
    std::fs::write(&db, b"").expect("truncate");
    let e = prepare_state_dir(dir.path(), false).expect_err("empty store");
    assert!(
        e.contains("is empty (0 bytes)") && e.contains("--accept-fresh-store"),
        "{e}"
    );
    std::fs::remove_file(&db).expect("delete");
    let e = prepare_state_dir(dir.path(), false).expect_err("missing store");
    assert!(e.contains("is missing") && e.contains("Restore budget.sqlite3"), "{e}");
    match prepare_state_dir(dir.path(), true) {
        Ok(StateStart::FreshAccepted(what)) => assert!(what.contains("is missing"), "{what}"),
        other => panic!("{other:?}"),
    }
    // A damaged file is named as damaged, not as an unwritable folder.
    std::fs::write(&db, b"this is not a database, it is a note").expect("write");
    let e = match sqlite::SqliteStore::open(dir.path()) {
        Ok(_) => panic!("opened a file that is not a database"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("not a SQLite database or it is damaged"), "{e}");
    assert!(!e.contains("writable"), "{e}");
}
