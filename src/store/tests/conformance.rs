//! The conformance suites, one per store trait, and the tests that run
//! each on SQLite and on a real `redis-server`.

use std::sync::Arc;

use super::super::*;
use super::DOLLAR;
use crate::ledger::{FeedbackEvent, OutcomeEvent, OutcomeStatus};

pub(crate) fn reservation(id: &str, amount: i64, scopes: &[(&str, i64)], now_ms: i64) -> NewReservation {
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
        snapshot: Vec::new(),
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
    decision_snapshots_are_kept_for_their_retention(&store, ns).await;
}

/// A decision's snapshot reaches the ledger with its call, and the sweep
/// removes it once it is older than the retention.
async fn decision_snapshots_are_kept_for_their_retention(store: &Arc<dyn Store>, ns: &str) {
    let wf = format!("{ns}retained");
    let now = || jiff::Timestamp::now().as_millisecond();
    let usage = Usage {
        input_tokens: 10,
        cached_input_tokens: 0,
        cache_write_input_tokens: 0,
        output_tokens: 5,
        failed: false,
    };
    store.set_decision_retention(std::time::Duration::from_millis(1000));
    let mut ids = Vec::new();
    for (i, snap) in [b"older".as_slice(), b"newer".as_slice()].into_iter().enumerate() {
        if i == 1 {
            tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
        }
        let mut r = reservation(&crate::store::new_decision_id(), 0, &[], now());
        r.workflow = wf.clone();
        r.snapshot = snap.to_vec();
        ids.push(r.decision_id.clone());
        store.record_detached(r);
        store.sync().await.expect("sync");
        store.settle(&ids[i], 7, &usage, now()).await.expect("settle");
    }
    let snapshot_of = |l: &crate::ledger::Ledger, id: &str| {
        l.calls
            .iter()
            .find(|c| c.decision_id == id)
            .map(|c| c.snapshot.clone())
            .expect("the call is in the ledger")
    };
    // Found without naming the workflow: a workflow without a budget, whose
    // calls had no feedback or outcome, is still one the store lists.
    let before = store.ledger(None, 0).await.expect("ledger");
    assert_eq!(snapshot_of(&before, &ids[1]), b"newer");
    store.expire(now()).await.expect("sweep");
    let after = store.ledger(Some(&wf), 0).await.expect("ledger");
    assert_eq!(after.calls.len(), 2, "the calls stay in the ledger");
    assert!(
        snapshot_of(&after, &ids[0]).is_empty(),
        "the older snapshot is past its retention"
    );
    assert_eq!(snapshot_of(&after, &ids[1]), b"newer", "the newer one is kept");
    store.set_decision_retention(std::time::Duration::from_millis(DEFAULT_DECISION_RETENTION_MS as u64));
}

/// What every [`LearningStore`] must do.
pub async fn learning_conforms(store: Arc<dyn LearningStore>, ns: &str) {
    labelled_calls_are_kept_in_order_within_the_window(&store, ns).await;
    rejections_keep_the_highest_tier_per_outcome(&store, ns).await;
    score_histograms_add_up_per_workflow_and_model(&store, ns).await;
}

/// Counts add into one histogram per workflow and model, whoever adds them;
/// an empty merge only reads; another workflow or model is apart.
async fn score_histograms_add_up_per_workflow_and_model(store: &Arc<dyn LearningStore>, ns: &str) {
    use crate::understand::SCORE_BINS;
    let wf = format!("{ns}scores");
    let empty = store.merge_score_counts(&wf, "m1", &[]).await.expect("read");
    assert_eq!(empty, vec![0; SCORE_BINS]);
    let mut counts = vec![0u32; SCORE_BINS];
    counts[3] = 2;
    counts[SCORE_BINS - 1] = 5;
    let once = store.merge_score_counts(&wf, "m1", &counts).await.expect("merge");
    assert_eq!((once[3], once[SCORE_BINS - 1], once.iter().sum::<u64>()), (2, 5, 7));
    // Two sidecars adding at once: nothing is lost.
    let (a, b) = tokio::join!(
        store.merge_score_counts(&wf, "m1", &counts),
        store.merge_score_counts(&wf, "m1", &counts)
    );
    a.expect("a");
    b.expect("b");
    let now = store.merge_score_counts(&wf, "m1", &[]).await.expect("read");
    assert_eq!((now[3], now[SCORE_BINS - 1]), (6, 15));
    assert_eq!(
        store.merge_score_counts(&wf, "m2", &[]).await.expect("read"),
        vec![0; SCORE_BINS],
        "another model's scores are not comparable"
    );
    assert_eq!(
        store
            .merge_score_counts(&format!("{wf}-other"), "m1", &[])
            .await
            .expect("read"),
        vec![0; SCORE_BINS]
    );
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
        r.caller = "agent-a".into();
        store.reserve(&r).await.expect("reserve");
        if i < 2 {
            let usage = Usage {
                input_tokens: 10 + i as u64,
                cached_input_tokens: 1,
                cache_write_input_tokens: 0,
                output_tokens: 5,
                failed: i == 1,
            };
            store.settle(&id, 90 + i, &usage, 2_000 + i).await.expect("settle");
        }
    }
    // Who routed under the outcome: its callers, and no one else.
    assert!(store.outcome_routed_by(&wf, "o", "agent-a").await.expect("read"));
    assert!(!store.outcome_routed_by(&wf, "o", "intruder").await.expect("read"));
    assert!(!store.outcome_routed_by(&wf, "other", "agent-a").await.expect("read"));
    assert!(!store
        .outcome_routed_by(&format!("{ns}none"), "o", "agent-a")
        .await
        .expect("read"));
    let mut ended = OutcomeEvent {
        workflow: wf.clone(),
        outcome_id: "o".into(),
        status: OutcomeStatus::Rejected,
        value_usd: None,
        human_minutes: None,
        at_ms: 2_900,
    };
    assert_eq!(
        store.record_outcome(&ended, "grader").await.expect("outcome"),
        None,
        "the first record"
    );
    ended.status = OutcomeStatus::Accepted;
    ended.value_usd = Some(12.5);
    ended.at_ms = 3_000;
    assert_eq!(
        store.record_outcome(&ended, "local").await.expect("outcome"),
        Some(crate::store::PriorOutcome {
            status: "rejected".into(),
            recorded_by: "grader".into()
        }),
        "a record again says what it replaced, and who recorded that"
    );
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
    assert_eq!(
        l.outcomes.len(),
        2,
        "both records; the later replaces the earlier in reports"
    );
    assert_eq!(
        (l.outcomes[1].status, l.outcomes[1].value_usd),
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
    use crate::learn::{Features, LearnEvent, Request};
    let wf = format!("{ns}learn");
    let event = |i: usize| LearnEvent {
        workflow: wf.clone(),
        tier: (i % 3) as u8 + 1,
        retry: i.is_multiple_of(2),
        label: (i % 4) as f32 / 4.0,
        features: Features::extract(
            std::iter::once(format!("call number {i}").as_str()),
            &Request::new("k", &Default::default()),
        ),
    };
    let all: Vec<LearnEvent> = (0..250).map(event).collect();
    for chunk in all.chunks(50) {
        let bodies: Vec<Vec<u8>> = chunk.iter().map(LearnEvent::encode_body).collect();
        store.append_learning(&wf, 1000, &bodies).await.expect("append");
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
            read.push(LearnEvent::decode_body(&wf, &e.expect("a body")).expect("intact"));
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
    let bodies: Vec<Vec<u8>> = more.iter().map(LearnEvent::encode_body).collect();
    store.append_learning(&wf, 100, &bodies).await.expect("append");
    let kept = store.learning_since(&wf, "", 1000).await.expect("read");
    assert!((100..=300).contains(&kept.len()), "kept {}", kept.len());
    assert_eq!(
        kept.last()
            .and_then(|(_, e)| e.as_deref().and_then(|b| LearnEvent::decode_body(&wf, b))),
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
        cache_write_input_tokens: 0,
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

pub(super) fn escalation(ns: &str, id: &str, scope: &str, created_ms: i64) -> Escalation {
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
        cache_write_input_nanos_per_mtok: 1_562_500_000,
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

#[path = "../../../tests/common/redis.rs"]
pub(crate) mod redis_server;

pub fn redis_config(url: String, dir: &std::path::Path, fail_open_nanos: Option<i64>) -> redis::RedisConfig {
    redis::RedisConfig {
        url,
        prefix: "sy".into(),
        // Generous: a loaded CI machine can be slow to answer the first call.
        timeout: std::time::Duration::from_secs(5),
        reservation_ttl_ms: 600_000,
        fail_open_cap_nanos: fail_open_nanos,
        journal: dir.join("redis-journal.jsonl"),
        accept_fresh: true,
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

/// Every suite again on a real three-primary Redis Cluster: each workflow's
/// keys share one hash slot, so the scripts stay atomic across the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_conforms() {
    let cluster = redis_server::RedisCluster::start();
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(
        redis::RedisStore::connect(redis_config(cluster.url(), dir.path(), None))
            .await
            .expect("connect"),
    );
    store.ping().await.expect("ping");
    budgets_conform(store.clone(), "c").await;
    escalations_conform(store.clone(), "c").await;
    ledger_conforms(store.clone(), "c").await;
    leases_conform(store.as_ref(), "c").await;
    learning_conforms(store, "c").await;
}

/// What every [`LeaseStore`] must do: `lease.lua` and [`MemLeaseStore`]
/// (the simulation's) give the same answers, the numbers
/// [`lease::renewal_arithmetic`] gives.
pub async fn leases_conform(store: &dyn lease::LeaseStore, ns: &str) {
    use lease::*;
    let scope = ScopeCharge {
        key: format!("{ns}lw|day"),
        limit_nanos: 1_000_000,
    };
    let renewal =
        |holder: &str, keep: i64, want: i64, settled: Vec<LeasedSettlement>, routed: Vec<Arc<NewReservation>>| {
            LeaseRenewal {
                workflow: format!("{ns}lw"),
                scope: scope.clone(),
                holder: holder.into(),
                keep_nanos: keep,
                want_nanos: want,
                max_share_bp: 1_000,
                settled,
                routed,
                now_ms: 1_000,
                expires_ms: 31_000,
            }
        };
    // A slice is capped at a tenth of what remains.
    let a = store
        .renew_lease(&renewal("a", 0, 500_000, vec![], vec![]))
        .await
        .expect("renew");
    assert_eq!((a.fresh_nanos, a.stopped), (100_000, false));
    assert_eq!((a.state.spent_nanos, a.state.reserved_nanos), (0, 100_000));
    // Below the cap, the slice is what was asked.
    let b = store
        .renew_lease(&renewal("b", 0, 50_000, vec![], vec![]))
        .await
        .expect("renew");
    assert_eq!((b.fresh_nanos, b.state.reserved_nanos), (50_000, 150_000));
    // `a` settles two calls (one of them twice), keeps 30,000 for calls in
    // flight and asks for 20,000 more: spend is charged once, the hold
    // becomes keep + fresh.
    let call = |id: &str, cost: i64| {
        let mut r = reservation(id, 40_000, &[(&scope.key, scope.limit_nanos)], 1_000);
        r.workflow = format!("{ns}lw");
        LeasedSettlement {
            record: Arc::new(r),
            cost_nanos: cost,
            usage: Usage::default(),
            now_ms: 1_000,
        }
    };
    let settled = vec![
        call(&format!("{ns}l1"), 35_000),
        call(&format!("{ns}l2"), 45_000),
        call(&format!("{ns}l1"), 35_000),
    ];
    let routed = vec![call(&format!("{ns}l3"), 0).record];
    let a2 = store
        .renew_lease(&renewal("a", 30_000, 20_000, settled.clone(), routed))
        .await
        .expect("renew");
    assert_eq!(a2.fresh_nanos, 20_000);
    assert_eq!((a2.state.spent_nanos, a2.state.reserved_nanos), (80_000, 100_000));
    // The same renewal again (a lost reply) changes nothing more.
    let again = store
        .renew_lease(&renewal("a", 30_000, 20_000, settled, vec![]))
        .await
        .expect("renew");
    assert_eq!((again.state.spent_nanos, again.state.reserved_nanos), (80_000, 100_000));
    // Returning gives the hold back.
    let back = store
        .renew_lease(&renewal("a", 0, 0, vec![], vec![]))
        .await
        .expect("renew");
    assert_eq!((back.fresh_nanos, back.state.reserved_nanos), (0, 50_000));
    // When what is free no longer covers what the slices hold, leasing
    // stops: nothing is added, and what is kept stays held.
    let huge = store
        .renew_lease(&renewal("c", 0, 1_000_000, vec![], vec![]))
        .await
        .expect("renew");
    assert_eq!(huge.fresh_nanos, (1_000_000 - 80_000 - 50_000) / 10);
    let mut big = vec![];
    for i in 0..20 {
        big.push(call(&format!("{ns}big{i}"), 40_000));
    }
    let stop = store
        .renew_lease(&renewal("b", 10_000, 50_000, big, vec![]))
        .await
        .expect("renew");
    // spent 880,000, reserved 10,000 (b) + 87,000 (c): free 23,000 < leased 97,000.
    assert!(stop.stopped, "{stop:?}");
    assert_eq!(stop.fresh_nanos, 0);
    assert_eq!((stop.state.spent_nanos, stop.state.reserved_nanos), (880_000, 97_000));
}

#[tokio::test]
async fn mem_leases_conform() {
    leases_conform(&lease::MemLeaseStore::default(), "").await;
}

#[tokio::test]
async fn redis_leases_conform() {
    let (_server, _dir, store) = redis_store().await;
    leases_conform(store.as_ref(), "").await;
    // A slice its sidecar stopped renewing is released by the sweep once
    // it expires (31,000 ms here); the spend stays.
    let key = "lw|day";
    let before = store.scope(key).await.expect("scope");
    assert_eq!(before.reserved_nanos, 97_000);
    store.expire(30_999).await.expect("sweep");
    assert_eq!(store.scope(key).await.expect("scope").reserved_nanos, 97_000);
    store.expire(31_000).await.expect("sweep");
    let after = store.scope(key).await.expect("scope");
    assert_eq!((after.spent_nanos, after.reserved_nanos), (880_000, 0));
    // The calls settled under a slice are in the ledger, once each.
    let ledger = store.ledger(Some("lw"), 0).await.expect("ledger");
    assert_eq!(ledger.calls.len(), 22);
    assert_eq!(ledger.calls.iter().map(|c| c.cost_nanos).sum::<i64>(), 880_000);
    // A call routed under a slice, then settled after a restart, is charged
    // straight to spend (its slice no longer holds it).
    let r = store.reservation("l3").await.expect("read").expect("kept");
    assert_eq!(r.state, ReservationState::Reserved);
    assert_eq!(
        store.settle("l3", 7, &Usage::default(), 2_000).await.expect("settle"),
        Settled::Charged { cost_nanos: 7 }
    );
    assert_eq!(store.scope(key).await.expect("scope").spent_nanos, 880_007);
}
