//! The embedded store beyond its traits: its WAL, and what its state
//! folder must hold.

use std::sync::Arc;

use super::super::*;
use super::conformance::reservation;

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
    // than the limit, more when other tests starve the checkpoint thread of
    // the machine's two cores (5.3 MB seen beside the Redis Cluster tests);
    // unbounded, 3 s of this load writes tens of MB.
    assert!(
        peak < 8 * limit,
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

/// A reservation opened by the build that kept its terms in separate
/// columns is settled at its routed prices, by its caller, after an upgrade.
#[tokio::test]
async fn open_reservations_keep_their_terms_across_the_terms_column_upgrade() {
    let dir = tempfile::tempdir().expect("tmp");
    drop(sqlite::SqliteStore::open(dir.path()).expect("create"));
    {
        let conn = rusqlite::Connection::open(dir.path().join(sqlite::FILE)).expect("conn");
        conn.execute_batch(
            "ALTER TABLE reservations DROP COLUMN terms;
             ALTER TABLE reservations ADD COLUMN caller TEXT NOT NULL DEFAULT '';
             ALTER TABLE reservations ADD COLUMN price_input INTEGER;
             ALTER TABLE reservations ADD COLUMN price_cached INTEGER;
             ALTER TABLE reservations ADD COLUMN price_output INTEGER;
             ALTER TABLE reservations ADD COLUMN batch_bp INTEGER;
             ALTER TABLE reservations ADD COLUMN tier INTEGER;
             INSERT INTO reservations (decision_id, workflow, outcome_id, model, is_deferrable, amount_nanos, scopes,
                                       created_ms, expires_ms, state, caller, price_input, price_cached, price_output,
                                       batch_bp, tier)
                 VALUES ('open', 'w', '', 'm', 0, 7, '', 1, 2, 'reserved', 'alice', 3000, 300, 15000, 5000, 4),
                        ('done', 'w', '', 'm', 0, 7, '', 1, 2, 'settled', 'bob', 1, 1, 1, 0, 1);",
        )
        .expect("the older layout");
    }
    let store: SharedStore = Arc::new(sqlite::SqliteStore::open(dir.path()).expect("reopen"));
    let open = store.reservation("open").await.expect("read").expect("kept");
    assert_eq!(open.caller, "alice");
    assert_eq!(open.tier, Some(4));
    assert_eq!(
        open.prices,
        Some(crate::rules::Prices {
            input_nanos_per_mtok: 3000,
            cached_input_nanos_per_mtok: 300,
            // Stored before the cache-write price: read as the input price.
            cache_write_input_nanos_per_mtok: 3000,
            output_nanos_per_mtok: 15000,
            batch_discount_bp: 5000,
        })
    );
    let done = store.reservation("done").await.expect("read").expect("kept");
    assert_eq!(
        done.state,
        ReservationState::Settled,
        "settled rows are left as they are"
    );
    assert_eq!(done.prices, None);
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

/// A store with more snapshots past their retention than one sweep clears
/// is cleared a batch a sweep, the calls staying in the ledger.
#[tokio::test]
async fn snapshots_past_retention_are_cleared_a_batch_a_sweep() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(sqlite::SqliteStore::open(dir.path()).expect("open"));
    let now = || jiff::Timestamp::now().as_millisecond();
    for _ in 0..22_000 {
        let mut r = reservation(&new_decision_id(), 0, &[], now());
        r.workflow = "kept".into();
        r.snapshot = b"snapshot".to_vec();
        store.record_detached(r);
    }
    store.sync().await.expect("sync");
    LedgerStore::set_decision_retention(store.as_ref(), std::time::Duration::from_millis(1));
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let count = || {
        let conn = rusqlite::Connection::open(dir.path().join(sqlite::FILE)).expect("read");
        conn.query_row(
            "SELECT count(*) FROM reservations WHERE snapshot IS NOT NULL",
            [],
            |r| r.get::<_, i64>(0),
        )
        .expect("count")
    };
    assert_eq!(count(), 22_000);
    store.expire(now()).await.expect("sweep");
    assert_eq!(count(), 12_000, "one batch a sweep");
    store.expire(now()).await.expect("sweep");
    store.expire(now()).await.expect("sweep");
    assert_eq!(count(), 0);
    let total: i64 = rusqlite::Connection::open(dir.path().join(sqlite::FILE))
        .expect("read")
        .query_row("SELECT count(*) FROM reservations", [], |r| r.get(0))
        .expect("count");
    assert_eq!(total, 22_000, "the decisions stay");
}
