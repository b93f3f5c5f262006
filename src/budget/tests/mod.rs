//! The store conformance suites, one per store trait: every backend passes
//! each ([`budgets_conform`], [`escalations_conform`], [`ledger_conforms`],
//! [`learning_conforms`]), and the tests below run them on SQLite and on a
//! real `redis-server`. Then tests of what is not a trait's contract: budget
//! periods, rollover, the embedded store's WAL and state folder.

use std::sync::Arc;

use super::*;
use crate::rules::RuleTable;
use crate::store::tests::conformance::{redis_config, redis_server, reservation};
use crate::store::*;

use crate::store::tests::DOLLAR;

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

const BUDGETED: &str = include_str!("../../../tests/fixtures/unit/budgeted.toml");

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

#[test]
fn a_pacing_mode_is_read_and_an_unknown_one_is_located() {
    let paced = BUDGETED.replace("period = \"day\"", "period = \"day\"\npacing = \"traffic\"");
    let t = RuleTable::from_str("b.toml", &paced).expect("rules");
    let b = t.workflow("w").and_then(|w| w.budget.as_ref()).expect("budget");
    assert_eq!(b.pacing, Some(crate::budget::pacing::Pacing::Traffic));
    let bad = BUDGETED.replace("period = \"day\"", "period = \"day\"\npacing = \"smooth\"");
    let s = RuleTable::from_str("b.toml", &bad).expect_err("invalid").to_string();
    assert!(
        s.contains("b.toml:17:1: `workflows[0].budget.pacing`: unknown pacing `smooth`"),
        "{s}"
    );
}

/// The test rules with the weekly budget paced by traffic.
fn traffic_paced() -> RuleTable {
    let paced = BUDGETED.replace(
        "limit_usd = 5\nperiod = \"week\"",
        "limit_usd = 5\nperiod = \"week\"\npacing = \"traffic\"",
    );
    RuleTable::from_str("b.toml", &paced).expect("rules")
}

/// A sidecar learns its traffic by hour of the week from the calls it
/// admits, and then aims a `traffic` budget at the share of the week's
/// traffic that has come: a working week's Monday morning is a tenth of
/// it, where `even` would say 13 hours of 168.
#[test]
fn traffic_pacing_aims_at_the_share_of_the_weeks_calls_that_have_come() {
    let t = traffic_paced();
    let b = t.workflow("weekly").and_then(|w| w.budget.as_ref()).expect("budget");
    let at = |s: &str| s.parse::<Timestamp>().expect("timestamp");
    let mut pacer = Pacer::default();
    // Last week (from Monday 2026-11-30): ten calls an hour, weekdays 09-17.
    for day in 0..5i64 {
        for hour in 9..17i64 {
            for k in 0..10i64 {
                let t = at("2026-11-30T00:00:00Z").as_second() + day * 86_400 + hour * 3600 + k * 60;
                pacer.count(b, Timestamp::from_second(t).expect("t"));
            }
        }
    }
    // This Monday, 09:00-13:00: the same.
    for hour in 9..13i64 {
        for k in 0..10i64 {
            let t = at("2026-12-07T00:00:00Z").as_second() + hour * 3600 + k * 60;
            pacer.count(b, Timestamp::from_second(t).expect("t"));
        }
    }
    let now = at("2026-12-07T13:00:00Z");
    let state = ScopeState {
        limit_nanos: b.limit_nanos,
        ..Default::default()
    };
    let pace = pace_of(b, &state, &mut pacer, now).expect("paced");
    let due = pace.target_nanos as f64 / (pacing::AIM * b.limit_nanos as f64);
    // 40 calls have come; the rest of the week is expected to bring about
    // 350 in working hours and 30 in the others (a tenth of the mean hour,
    // the floor for hours never seen): about 0.095 is due.
    assert!((0.085..0.105).contains(&due), "{due}");
    let even = pacing::due_share(
        at("2026-12-07T00:00:00Z"),
        at("2026-12-14T00:00:00Z"),
        now,
        &b.timezone,
        None,
        40,
    );
    assert!((even - 13.0 / 168.0).abs() < 1e-9 && even < due, "{even} {due}");
}

/// A sidecar counts the calls of each period it saw from its start: weeks
/// alike make a steady volume, and the week it started in mid-way is not one
/// of them.
#[test]
fn a_pacer_keeps_the_calls_of_each_whole_period() {
    let t = traffic_paced();
    let b = t.workflow("weekly").and_then(|w| w.budget.as_ref()).expect("budget");
    let monday = "2026-11-09T00:00:00Z".parse::<Timestamp>().expect("t").as_second();
    let mut pacer = Pacer::default();
    // From Wednesday of the first week, then three whole weeks of 100 calls.
    for week in 0..4i64 {
        let calls = if week == 0 { 40 } else { 100 };
        for k in 0..calls {
            let day = if week == 0 { 2 + k % 5 } else { k % 7 };
            let t = monday + week * 7 * 86_400 + day * 86_400 + 3600 + k * 60;
            pacer.count(b, Timestamp::from_second(t).expect("t"));
        }
    }
    assert_eq!(
        pacer.periods,
        vec![(100, 168), (100, 168)],
        "the partial first week is left out"
    );
    assert_eq!(pacer.period_calls, 100);
    let now = Timestamp::from_second(monday + 4 * 7 * 86_400 + 3600).expect("t");
    let shape = pacer.shape_for(pacing::Pacing::Traffic, now).expect("shape");
    assert_eq!(shape.volume, Some(100.0 / 168.0));
    assert!(pacer.shape_for(pacing::Pacing::Even, now).is_none());
}

/// A call of `w` with no outcome or labels, costing `cost_nanos`.
fn plain_call<'a>(
    id: &'a str,
    w: &'a crate::rules::Workflow,
    caller: &'a std::sync::Arc<str>,
    cost_nanos: i64,
) -> Call<'a> {
    Call {
        decision_id: id,
        workflow: w,
        outcome_id: "",
        labels: vec![],
        model: "m",
        deferrable: false,
        cost_nanos,
        caller,
        downgraded: false,
        prices: Default::default(),
        tier: 0,
        snapshot: &[],
    }
}

/// The pacing state survives a restart through its file, and a damaged
/// file is refused by name, with nothing of it used.
#[tokio::test]
async fn pacing_state_is_kept_across_a_restart_and_a_damaged_file_refused() {
    let t = traffic_paced();
    let w = t.workflow("weekly").expect("w");
    let dir = tempfile::tempdir().expect("tmp");
    let store: SharedStore = Arc::new(sqlite::SqliteStore::open(dir.path()).expect("open"));
    let budgets = Budgets::new(store.clone(), 600_000);
    let now: Timestamp = "2026-12-07T10:30:00Z".parse().expect("ts");
    let caller = std::sync::Arc::from("test");
    for i in 0..5 {
        let id = format!("p-{i}");
        let call = plain_call(&id, w, &caller, 1000);
        assert_eq!(budgets.admit(&call, now).await.expect("admit"), Admission::Routed);
    }
    let steer = budgets.steer(w, now).await.expect("steer");
    assert!(steer.pace.is_some() && !steer.downgrade);
    let file = dir.path().join("pacing.json");
    budgets.save_pacers(&file).expect("save");
    let again = Budgets::new(store.clone(), 600_000);
    assert_eq!(again.load_pacers(&file), Ok(1));
    again.steer(w, now).await.expect("steer");
    let hour = pacing::hour_of_week(&jiff::tz::TimeZone::UTC, now);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    assert_eq!(saved["workflows"]["weekly"]["traffic"][hour], 5, "{saved}");
    // The period's calls so far are kept too: a restart mid-period does not
    // start the period's traffic share from nothing.
    assert_eq!(saved["workflows"]["weekly"]["period_calls"], 5, "{saved}");
    let resaved = dir.path().join("again.json");
    again.save_pacers(&resaved).expect("save");
    let resaved: serde_json::Value = serde_json::from_slice(&std::fs::read(&resaved).expect("read")).expect("json");
    assert_eq!(resaved["workflows"]["weekly"]["period_calls"], 5, "{resaved}");
    assert_eq!(
        resaved["workflows"]["weekly"]["period_start_ms"],
        saved["workflows"]["weekly"]["period_start_ms"]
    );
    // A file written before the period counts were kept still loads.
    let old = dir.path().join("old.json");
    let zeros = serde_json::to_string(&vec![0u64; pacing::HOURS_OF_WEEK]).expect("json");
    std::fs::write(
        &old,
        format!("{{\"version\": 1, \"workflows\": {{\"weekly\": {{\"integral\": 0.5, \"traffic\": {zeros}, \"since_ms\": null}}}}}}"),
    )
    .expect("write");
    assert_eq!(Budgets::new(store.clone(), 600_000).load_pacers(&old), Ok(1));
    // A fresh start where there is no file.
    assert_eq!(again.load_pacers(&dir.path().join("none.json")), Ok(0));
    std::fs::write(
        &file,
        b"{\"version\": 1, \"workflows\": {\"weekly\": {\"integral\": 1.0, \"traffic\": [1, 2]}}}",
    )
    .expect("damage");
    let e = again.load_pacers(&file).expect_err("damaged");
    assert!(e.contains("pacing.json") && e.contains("delete the file"), "{e}");
    std::fs::write(&file, b"not json").expect("damage");
    let e = again.load_pacers(&file).expect_err("damaged");
    assert!(
        e.contains("pacing.json:1:") && e.contains("not a pacing state file"),
        "{e}"
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
            let caller = std::sync::Arc::from("test");
            let call = plain_call(&id, w, &caller, DOLLAR / 10);
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
    // In the order made, even within one millisecond.
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for id in &ids {
        let u = uuid::Uuid::parse_str(id).expect("a UUID");
        assert_eq!(u.get_version_num(), 7, "{id}");
        assert!(*id >= before, "{id} sorts after the floor of the time it was made");
    }
}
