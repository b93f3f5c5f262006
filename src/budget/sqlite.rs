//! The embedded budget store: SQLite in WAL mode in `--state-dir`.
//!
//! One connection, owned by one thread, serves the sidecar. Operations run one
//! after another, each in its own savepoint, so a reservation's check and
//! increments are atomic with respect to every other operation. Operations
//! queued together are committed together (group commit) and answered only
//! after the COMMIT. With WAL and `synchronous = NORMAL`, a
//! committed transaction is in the WAL file before the call returns, so a
//! `kill -9` of the process loses nothing acknowledged (a power cut may lose
//! the last transactions; `synchronous = FULL` closes that at the cost of an
//! fsync per commit).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::learn::LearnEvent;
use crate::ledger::{CallRecord, FeedbackEvent, Ledger, OutcomeEvent, OutcomeStatus};

use super::{
    BudgetStore, Escalation, NewReservation, ReservationRecord, Reserved, ScopeState, Settled, StoreError, Usage,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS scopes (
    key TEXT PRIMARY KEY,
    limit_nanos INTEGER NOT NULL,
    extra_nanos INTEGER NOT NULL DEFAULT 0,
    spent_nanos INTEGER NOT NULL DEFAULT 0,
    reserved_nanos INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS reservations (
    decision_id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    outcome_id TEXT NOT NULL,
    model TEXT NOT NULL,
    is_deferrable INTEGER NOT NULL,
    amount_nanos INTEGER NOT NULL,
    scopes TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    actual_nanos INTEGER,
    input_tokens INTEGER,
    cached_input_tokens INTEGER,
    output_tokens INTEGER,
    failed INTEGER,
    settled_ms INTEGER
);
CREATE INDEX IF NOT EXISTS reservations_held ON reservations (expires_ms) WHERE state = 'reserved' AND scopes != '';
CREATE TABLE IF NOT EXISTS escalations (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    scope TEXT NOT NULL,
    outcome_id TEXT NOT NULL,
    caller TEXT NOT NULL,
    amount_nanos INTEGER NOT NULL,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    resolved_by TEXT NOT NULL DEFAULT '',
    resolved_ms INTEGER NOT NULL DEFAULT 0,
    added_nanos INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS escalations_scope ON escalations (scope, created_ms);
CREATE TABLE IF NOT EXISTS outcome_events (
    id INTEGER PRIMARY KEY,
    workflow TEXT NOT NULL,
    outcome_id TEXT NOT NULL,
    status TEXT NOT NULL,
    value_usd REAL,
    human_minutes REAL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outcome_events_at ON outcome_events (at_ms);
CREATE TABLE IF NOT EXISTS feedback_events (
    id INTEGER PRIMARY KEY,
    workflow TEXT NOT NULL,
    decision_id TEXT NOT NULL,
    model TEXT NOT NULL,
    accepted INTEGER NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_events_at ON feedback_events (at_ms);
CREATE TABLE IF NOT EXISTS learn_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS learn_events_workflow ON learn_events (workflow, seq);
";

/// Columns added to `reservations` after its first release, with their
/// definitions: added in place to a store an older build created.
const ADDED_COLUMNS: [(&str, &str); 2] = [
    ("downgraded", "INTEGER NOT NULL DEFAULT 0"),
    ("labels", "TEXT NOT NULL DEFAULT ''"),
];

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    // An index an earlier build made: every Route paid for it; the ledger
    // reads by the time-ordered primary key instead.
    conn.execute_batch("DROP INDEX IF EXISTS reservations_created")
        .map_err(unavailable)?;
    // Indexed every decision, though only those holding a reservation on a
    // budget ever expire; `reservations_held` indexes just those.
    conn.execute_batch("DROP INDEX IF EXISTS reservations_open")
        .map_err(unavailable)?;
    let have: Vec<String> = {
        let mut st = conn
            .prepare("SELECT name FROM pragma_table_info('reservations')")
            .map_err(unavailable)?;
        let rows = st.query_map([], |r| r.get(0)).map_err(unavailable)?;
        rows.collect::<Result<_, _>>().map_err(unavailable)?
    };
    for (name, def) in ADDED_COLUMNS {
        if !have.iter().any(|h| h == name) {
            conn.execute_batch(&format!("ALTER TABLE reservations ADD COLUMN {name} {def}"))
                .map_err(unavailable)?;
        }
    }
    Ok(())
}

/// Scope keys are joined with a byte that cannot appear in a key we build.
const SCOPE_SEP: char = '\u{1f}';

/// Sends a job's answer once its batch is committed (`None`) or failed.
type Reply = Box<dyn FnOnce(Option<String>) + Send>;
/// A unit of work for the store thread: runs inside the batch's transaction,
/// in its own savepoint, and returns how to answer.
/// It is handed the connection, or why the batch could not start (then it
/// must not touch the store, and answers with that error).
type Job = Box<dyn FnOnce(Result<&mut Connection, String>) -> Reply + Send>;

/// What the store thread is sent.
enum Msg {
    /// Work to run and answer.
    Job(Job),
    /// Decision records were queued in [`SqliteStore::records`] while it was
    /// empty: commit them soon.
    Records,
}

/// The most jobs committed together.
const MAX_BATCH: usize = 128;

/// How long the store thread waits for more decision records before it
/// commits the ones queued. A commit writes whole WAL pages and costs a
/// BEGIN and a COMMIT whether it holds one record or fifty, so at thousands
/// of Routes a second waiting a moment turns fifty commits into one. A crash
/// (not a shutdown) loses at most this long's records. A job that needs an answer ends the
/// wait at once, and so does shutdown ([`BudgetStore::sync`]).
const RECORD_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// How often the WAL is checkpointed into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

pub struct SqliteStore {
    /// Tells the checkpoint thread to stop when the store is dropped.
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Jobs for the one thread that owns the connection. One owner, no lock:
    /// operations run back to back, without the thread hops and lock convoys
    /// of a shared connection on a thread pool.
    jobs: std::sync::mpsc::Sender<Msg>,
    /// Decision records without a budget, waiting for the store thread: it
    /// inserts them at the start of its next transaction, before any job
    /// queued after them, so a ReportUsage always finds its decision.
    records: Records,
}

type Records = std::sync::Arc<std::sync::Mutex<Vec<NewReservation>>>;

/// Takes the queued decision records into `taken`, which is empty, and
/// leaves its allocation for the queue (a poisoned lock still holds them).
/// The two vectors trade places on every commit and keep their capacity:
/// a fresh queue grew from nothing on each Route burst, a few per cent of
/// the server's time on repeated contexts.
fn take_records(records: &Records, taken: &mut Vec<NewReservation>) {
    debug_assert!(taken.is_empty());
    std::mem::swap(
        &mut *records.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        taken,
    );
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

impl SqliteStore {
    /// Opens (creating if needed) `budget.sqlite3` in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<SqliteStore, StoreError> {
        let path = state_dir.join("budget.sqlite3");
        let mut conn = Connection::open(&path).map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;
             PRAGMA wal_autocheckpoint = 0;",
        )
        .map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        migrate(&conn)?;
        // Checkpoints (and their fsync) run on their own connection and
        // thread, never inside a commit that a Route is waiting for. PASSIVE
        // never blocks the writer; the WAL is reset once readers allow.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let checkpointer = Connection::open(&path).map_err(unavailable)?;
        checkpointer
            .busy_timeout(std::time::Duration::from_millis(100))
            .map_err(unavailable)?;
        {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("switchyard-checkpoint".into())
                .spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::sleep(CHECKPOINT_EVERY);
                        if let Err(e) = checkpointer.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
                            tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
                        }
                    }
                })
                .map_err(|e| unavailable(format!("cannot start the checkpoint thread: {e}")))?;
        }
        conn.set_prepared_statement_cache_capacity(64);
        let (jobs, rx) = std::sync::mpsc::channel::<Msg>();
        let records = Records::default();
        let queued = records.clone();
        std::thread::Builder::new()
            .name("switchyard-sqlite".into())
            .spawn(move || {
                // Group commit: the decision records queued so far, then every
                // job queued while the last batch was committing, go into the
                // next transaction, each job in its own savepoint, and none is
                // answered before the COMMIT. Ends when every sender (every
                // SqliteStore handle) is dropped, after a last commit.
                let mut taken = Vec::new();
                while let Ok(first) = rx.recv() {
                    let mut batch = Vec::new();
                    match first {
                        Msg::Job(job) => batch.push(job),
                        Msg::Records => {
                            let until = std::time::Instant::now() + RECORD_LINGER;
                            while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
                                match rx.recv_timeout(left) {
                                    Ok(Msg::Records) => {}
                                    Ok(Msg::Job(job)) => {
                                        batch.push(job);
                                        break;
                                    }
                                    Err(_) => break,
                                }
                            }
                        }
                    }
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(Msg::Job(job)) => batch.push(job),
                            Ok(Msg::Records) => {}
                            Err(_) => break,
                        }
                    }
                    take_records(&queued, &mut taken);
                    commit_batch(&mut conn, &taken, batch);
                    taken.clear();
                }
                take_records(&queued, &mut taken);
                commit_batch(&mut conn, &taken, Vec::new());
            })
            .map_err(|e| unavailable(format!("cannot start the store thread: {e}")))?;
        Ok(SqliteStore { stop, jobs, records })
    }

    /// Runs `f` on the store thread and waits for its answer.
    ///
    /// (The store thread itself ends when this handle is dropped.)
    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.enqueue(f)?
            .await
            .map_err(|_| unavailable("the store thread dropped a request"))?
    }

    /// Queues `f` on the store thread now, in order, and returns where its
    /// answer will arrive once its batch is committed.
    fn enqueue<T, F>(&self, f: F) -> Result<tokio::sync::oneshot::Receiver<Result<T, StoreError>>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Msg::Job(Box::new(move |conn: Result<&mut Connection, String>| {
                let result = match conn {
                    Ok(conn) => f(conn),
                    Err(e) => Err(unavailable(format!("cannot begin a transaction: {e}"))),
                };
                Box::new(move |failed: Option<String>| {
                    let _ = tx.send(match failed {
                        None => result,
                        Some(e) => Err(unavailable(format!("commit failed: {e}"))),
                    });
                })
            })))
            .map_err(|_| unavailable("the store thread has stopped"))?;
        Ok(rx)
    }
}

/// One transaction: the queued decision records, then each job in its own
/// savepoint; the jobs are answered after the COMMIT.
fn commit_batch(conn: &mut Connection, records: &[NewReservation], batch: Vec<Job>) {
    if records.is_empty() && batch.is_empty() {
        return;
    }
    let lost = |e: &dyn std::fmt::Display| {
        if !records.is_empty() {
            tracing::warn!(error = %e, lost = records.len(), "recording decisions without a budget failed");
        }
    };
    if let Err(e) = run_cached(conn, "BEGIN IMMEDIATE") {
        lost(&e);
        for job in batch {
            job(Err(e.to_string()))(None);
        }
        return;
    }
    if !records.is_empty() {
        // No limit applies: one INSERT each, atomic on its own, needs no
        // savepoint (this is every Route of a workflow without a budget).
        // One statement serves the batch: fetching it from the statement
        // cache hashes its SQL text, once per record before.
        match conn.prepare_cached(INSERT_RESERVATION) {
            Ok(mut insert) => {
                for r in records {
                    if let Err(e) = bind_reservation(&mut insert, r, "") {
                        tracing::warn!(error = %e, decision = %r.decision_id, "recording a decision without a budget failed");
                    }
                }
            }
            Err(e) => lost(&e),
        }
    }
    let replies: Vec<Reply> = batch.into_iter().map(|job| job(Ok(&mut *conn))).collect();
    let failed = run_cached(conn, "COMMIT").err().map(|e| e.to_string());
    if let Some(e) = &failed {
        let _ = conn.execute_batch("ROLLBACK");
        lost(e);
    }
    for reply in replies {
        reply(failed.clone());
    }
}

/// Runs a statement without parameters through the statement cache (BEGIN and
/// COMMIT run hundreds of times a second; parsing them each time showed up).
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Executes one statement through the connection's statement cache.
fn exec(tx: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<usize, StoreError> {
    tx.prepare_cached(sql)
        .and_then(|mut st| st.execute(params))
        .map_err(unavailable)
}

/// The reservation as a job for the store thread.
fn reserve_job(r: NewReservation) -> impl FnOnce(&mut Connection) -> Result<Reserved, StoreError> + Send + 'static {
    move |conn: &mut Connection| {
        if r.scopes.is_empty() {
            // No limit applies: one INSERT, atomic on its own, needs no
            // savepoint (this is every Route of a workflow without a budget).
            insert_reservation(conn, &r, "")?;
            return Ok(Reserved::Ok);
        }
        let tx = conn.savepoint().map_err(unavailable)?;
        for s in &r.scopes {
            exec(
                &tx,
                "INSERT INTO scopes (key, limit_nanos) VALUES (?1, ?2)
                     ON CONFLICT(key) DO UPDATE SET limit_nanos = excluded.limit_nanos",
                params![s.key, s.limit_nanos],
            )?;
            let state = scope_state(&tx, &s.key)?;
            if state.spent_nanos + state.reserved_nanos + r.amount_nanos > state.limit_nanos {
                // Dropping the savepoint rolls back the limit upserts too.
                return Ok(Reserved::OverLimit {
                    scope: s.key.clone(),
                    state,
                });
            }
        }
        for s in &r.scopes {
            exec(
                &tx,
                "UPDATE scopes SET reserved_nanos = reserved_nanos + ?1 WHERE key = ?2",
                params![r.amount_nanos, s.key],
            )?;
        }
        let keys: Vec<&str> = r.scopes.iter().map(|s| s.key.as_str()).collect();
        insert_reservation(&tx, &r, &keys.join(&SCOPE_SEP.to_string()))?;
        tx.commit().map_err(unavailable)?;
        Ok(Reserved::Ok)
    }
}

/// The reservation's row, `scopes` joined by [`SCOPE_SEP`].
const INSERT_RESERVATION: &str =
    "INSERT INTO reservations (decision_id, workflow, outcome_id, model, is_deferrable, amount_nanos, scopes,
                               created_ms, expires_ms, state, downgraded, labels)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'reserved', ?10, ?11)";

fn insert_reservation(conn: &Connection, r: &NewReservation, scopes: &str) -> Result<(), StoreError> {
    let mut insert = conn.prepare_cached(INSERT_RESERVATION).map_err(unavailable)?;
    bind_reservation(&mut insert, r, scopes)
}

fn bind_reservation(insert: &mut rusqlite::Statement<'_>, r: &NewReservation, scopes: &str) -> Result<(), StoreError> {
    insert
        .execute(params![
            r.decision_id,
            r.workflow,
            r.outcome_id,
            r.model,
            r.deferrable,
            r.amount_nanos,
            scopes,
            r.now_ms,
            r.expires_ms,
            r.downgraded,
            r.labels
        ])
        .map(drop)
        .map_err(unavailable)
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn scope_state(tx: &Connection, key: &str) -> Result<ScopeState, StoreError> {
    let mut st = tx
        .prepare_cached("SELECT limit_nanos + extra_nanos, spent_nanos, reserved_nanos FROM scopes WHERE key = ?1")
        .map_err(unavailable)?;
    st.query_row([key], |r| {
        Ok(ScopeState {
            limit_nanos: r.get(0)?,
            spent_nanos: r.get(1)?,
            reserved_nanos: r.get(2)?,
        })
    })
    .optional()
    .map_err(unavailable)
    .map(Option::unwrap_or_default)
}

fn escalation_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Escalation> {
    Ok(Escalation {
        id: r.get(0)?,
        workflow: r.get(1)?,
        scope: r.get(2)?,
        outcome_id: r.get(3)?,
        caller: r.get(4)?,
        amount_nanos: r.get(5)?,
        model: r.get(6)?,
        state: r.get(7)?,
        created_ms: r.get(8)?,
        resolved_by: r.get(9)?,
        resolved_ms: r.get(10)?,
        added_nanos: r.get(11)?,
        reason: r.get(12)?,
    })
}

const ESCALATION_COLUMNS: &str =
    "id, workflow, scope, outcome_id, caller, amount_nanos, model, state, created_ms, resolved_by, resolved_ms, added_nanos, reason";

#[async_trait::async_trait]
impl BudgetStore for SqliteStore {
    async fn reserve(&self, r: &NewReservation) -> Result<Reserved, StoreError> {
        self.with(reserve_job(r.clone())).await
    }

    fn record_detached(&self, r: NewReservation) {
        debug_assert!(
            r.scopes.is_empty(),
            "a decision with a budget is reserved, not recorded"
        );
        // Queued now, before any later job; nobody awaits the answer, so the
        // store thread logs a failure. Only the first record into an empty
        // queue wakes it: the rest ride along without a syscall.
        let first = {
            let mut records = self.records.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            records.push(r);
            records.len() == 1
        };
        if first && self.jobs.send(Msg::Records).is_err() {
            tracing::warn!("recording a decision without a budget failed: the store thread has stopped");
        }
    }

    async fn sync(&self) -> Result<(), StoreError> {
        self.with(|_| Ok(())).await
    }

    async fn settle(&self, decision_id: &str, cost: i64, usage: &Usage, now_ms: i64) -> Result<Settled, StoreError> {
        let (id, usage) = (decision_id.to_string(), *usage);
        self.with(move |conn| {
            let tx = conn.savepoint().map_err(unavailable)?;
            let row: Option<(String, i64, String, Option<i64>)> = tx
                .query_row(
                    "SELECT state, amount_nanos, scopes, actual_nanos FROM reservations WHERE decision_id = ?1",
                    [&id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()
                .map_err(unavailable)?;
            let Some((state, amount, scopes, actual)) = row else {
                return Err(StoreError::UnknownDecision(id));
            };
            if state == "settled" {
                return Ok(Settled::AlreadySettled { cost_nanos: actual.unwrap_or(0) });
            }
            // An expired reservation was already released: charge only the cost.
            let release = if state == "reserved" { amount } else { 0 };
            for key in scopes.split(SCOPE_SEP).filter(|k| !k.is_empty()) {
                exec(&tx, "UPDATE scopes SET reserved_nanos = reserved_nanos - ?1, spent_nanos = spent_nanos + ?2 WHERE key = ?3", params![release, cost, key],
                )?;
            }
            exec(&tx, "UPDATE reservations SET state = 'settled', actual_nanos = ?1, input_tokens = ?2, cached_input_tokens = ?3,
                        output_tokens = ?4, failed = ?5, settled_ms = ?6 WHERE decision_id = ?7", params![
                    cost,
                    usage.input_tokens as i64,
                    usage.cached_input_tokens as i64,
                    usage.output_tokens as i64,
                    usage.failed,
                    now_ms,
                    id
                ],
            )?;
            tx.commit().map_err(unavailable)?;
            Ok(Settled::Charged { cost_nanos: cost })
        })
        .await
    }

    async fn expire(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.with(move |conn| {
            let tx = conn.savepoint().map_err(unavailable)?;
            let expired: Vec<(String, i64, String)> = {
                let mut stmt = tx
                    .prepare(
                        "SELECT decision_id, amount_nanos, scopes FROM reservations
                         WHERE state = 'reserved' AND scopes != '' AND expires_ms <= ?1",
                    )
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .map_err(unavailable)?;
                rows.collect::<Result<_, _>>().map_err(unavailable)?
            };
            for (id, amount, scopes) in &expired {
                for key in scopes.split(SCOPE_SEP).filter(|k| !k.is_empty()) {
                    exec(
                        &tx,
                        "UPDATE scopes SET reserved_nanos = reserved_nanos - ?1 WHERE key = ?2",
                        params![amount, key],
                    )?;
                }
                exec(
                    &tx,
                    "UPDATE reservations SET state = 'expired' WHERE decision_id = ?1",
                    [id],
                )?;
            }
            tx.commit().map_err(unavailable)?;
            Ok(expired.len() as u64)
        })
        .await
    }

    async fn scope(&self, key: &str) -> Result<ScopeState, StoreError> {
        let key = key.to_string();
        self.with(move |conn| {
            let tx = conn.savepoint().map_err(unavailable)?;
            scope_state(&tx, &key)
        })
        .await
    }

    async fn reservation(&self, decision_id: &str) -> Result<Option<ReservationRecord>, StoreError> {
        let id = decision_id.to_string();
        self.with(move |conn| {
            conn.query_row(
                "SELECT decision_id, workflow, outcome_id, model, is_deferrable, amount_nanos, state, actual_nanos
                 FROM reservations WHERE decision_id = ?1",
                [&id],
                |r| {
                    Ok(ReservationRecord {
                        decision_id: r.get(0)?,
                        workflow: r.get(1)?,
                        outcome_id: r.get(2)?,
                        model: r.get(3)?,
                        deferrable: r.get(4)?,
                        amount_nanos: r.get(5)?,
                        state: r.get(6)?,
                        actual_nanos: r.get(7)?,
                    })
                },
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn open_escalation(&self, scope: &str) -> Result<Option<Escalation>, StoreError> {
        let scope = scope.to_string();
        self.with(move |conn| {
            conn.query_row(
                &format!(
                    "SELECT {ESCALATION_COLUMNS} FROM escalations WHERE scope = ?1 ORDER BY created_ms DESC, rowid DESC LIMIT 1"
                ),
                [&scope],
                escalation_row,
            )
            .optional()
            .map_err(unavailable)
            .map(|e| e.filter(|e| e.state != "approved"))
        })
        .await
    }

    async fn create_escalation(&self, e: &Escalation) -> Result<(), StoreError> {
        let e = e.clone();
        self.with(move |conn| {
            conn.execute(
                &format!("INSERT INTO escalations ({ESCALATION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
                params![
                    e.id, e.workflow, e.scope, e.outcome_id, e.caller, e.amount_nanos, e.model, e.state, e.created_ms,
                    e.resolved_by, e.resolved_ms, e.added_nanos, e.reason
                ],
            )
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn record_outcome(&self, o: &OutcomeEvent) -> Result<(), StoreError> {
        let o = o.clone();
        self.with(move |conn| {
            exec(
                conn,
                "INSERT INTO outcome_events (workflow, outcome_id, status, value_usd, human_minutes, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    o.workflow,
                    o.outcome_id,
                    o.status.name(),
                    o.value_usd,
                    o.human_minutes,
                    o.at_ms
                ],
            )
            .map(drop)
        })
        .await
    }

    async fn record_feedback(&self, f: &FeedbackEvent) -> Result<(), StoreError> {
        let f = f.clone();
        self.with(move |conn| {
            exec(
                conn,
                "INSERT INTO feedback_events (workflow, decision_id, model, accepted, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![f.workflow, f.decision_id, f.model, f.accepted, f.at_ms],
            )
            .map(drop)
        })
        .await
    }

    async fn append_learning(&self, workflow: &str, window: u64, events: &[&LearnEvent]) -> Result<(), StoreError> {
        let workflow = workflow.to_string();
        let bodies: Vec<Vec<u8>> = events.iter().map(|e| e.encode_body()).collect();
        self.with(move |conn| {
            for b in &bodies {
                exec(
                    conn,
                    "INSERT INTO learn_events (workflow, body) VALUES (?1, ?2)",
                    params![workflow, b],
                )?;
            }
            // Keep the newest `window`: the model is the fold of these.
            exec(
                conn,
                "DELETE FROM learn_events WHERE workflow = ?1 AND seq <= (
                     SELECT seq FROM learn_events WHERE workflow = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
                params![workflow, window as i64],
            )
            .map(drop)
        })
        .await
    }

    async fn learning_since(
        &self,
        workflow: &str,
        cursor: &str,
        max: usize,
    ) -> Result<Vec<(String, Option<LearnEvent>)>, StoreError> {
        let after: i64 = if cursor.is_empty() {
            0
        } else {
            cursor
                .parse()
                .map_err(|_| unavailable(format!("bad learning cursor `{cursor}`")))?
        };
        let workflow = workflow.to_string();
        self.with(move |conn| {
            let mut st = conn
                .prepare_cached(
                    "SELECT seq, body FROM learn_events WHERE workflow = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )
                .map_err(unavailable)?;
            let rows = st
                .query_map(params![workflow, after, max as i64], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .map_err(unavailable)?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, body) = row.map_err(unavailable)?;
                out.push((seq.to_string(), LearnEvent::decode_body(&workflow, &body)));
            }
            Ok(out)
        })
        .await
    }

    async fn ledger(&self, workflow: Option<&str>, since_ms: i64) -> Result<Ledger, StoreError> {
        let workflow = workflow.map(str::to_string);
        self.with(move |conn| ledger_of(conn, workflow.as_deref(), since_ms).map_err(unavailable))
            .await
    }

    async fn list_escalations(&self, workflow: Option<&str>) -> Result<Vec<Escalation>, StoreError> {
        let workflow = workflow.map(str::to_string);
        self.with(move |conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {ESCALATION_COLUMNS} FROM escalations WHERE ?1 IS NULL OR workflow = ?1 ORDER BY created_ms, rowid"
                ))
                .map_err(unavailable)?;
            let rows = stmt.query_map([workflow], escalation_row).map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
        .await
    }

    async fn resolve_escalation(
        &self,
        id: &str,
        approve: bool,
        add_nanos: i64,
        by: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Escalation, StoreError> {
        let (id, by, reason) = (id.to_string(), by.to_string(), reason.to_string());
        self.with(move |conn| {
            let tx = conn.savepoint().map_err(unavailable)?;
            let e = tx
                .query_row(&format!("SELECT {ESCALATION_COLUMNS} FROM escalations WHERE id = ?1"), [&id], escalation_row)
                .optional()
                .map_err(unavailable)?
                .ok_or_else(|| StoreError::UnknownEscalation(id.clone()))?;
            if e.state != "pending" {
                return Err(StoreError::AlreadyResolved(id, e.state));
            }
            let (state, added) = if approve { ("approved", add_nanos) } else { ("denied", 0) };
            if approve {
                exec(&tx, "UPDATE scopes SET extra_nanos = extra_nanos + ?1 WHERE key = ?2", params![added, e.scope])?;
            }
            exec(&tx, "UPDATE escalations SET state = ?1, resolved_by = ?2, resolved_ms = ?3, added_nanos = ?4, reason = ?5 WHERE id = ?6", params![state, by, now_ms, added, reason, id],
            )?;
            tx.commit().map_err(unavailable)?;
            Ok(Escalation {
                state: state.to_string(),
                resolved_by: by,
                resolved_ms: now_ms,
                added_nanos: added,
                reason,
                ..e
            })
        })
        .await
    }
}

/// The ledger's calls: ?1 since (ms), ?2 the workflow or NULL, ?3 the
/// UUIDv7 floor of ?1 (see `uuid_v7_floor`). `+state` keeps the planner on
/// the primary key.
pub const LEDGER_CALLS: &str =
    "SELECT decision_id, workflow, outcome_id, model, created_ms, settled_ms, actual_nanos, input_tokens,
            cached_input_tokens, output_tokens, failed, downgraded, labels
     FROM reservations
     WHERE decision_id >= ?3 AND +state = 'settled' AND created_ms >= ?1 AND (?2 IS NULL OR workflow = ?2)
     ORDER BY created_ms, decision_id";

fn ledger_of(conn: &Connection, workflow: Option<&str>, since_ms: i64) -> rusqlite::Result<Ledger> {
    let mut calls = Vec::new();
    let mut st = conn.prepare_cached(LEDGER_CALLS)?;
    for row in st.query_map(params![since_ms, workflow, uuid_v7_floor(since_ms)], |r| {
        Ok(CallRecord {
            decision_id: r.get(0)?,
            workflow: r.get(1)?,
            outcome_id: r.get(2)?,
            model: r.get(3)?,
            created_ms: r.get(4)?,
            settled_ms: r.get::<_, Option<i64>>(5)?.unwrap_or_default(),
            cost_nanos: r.get::<_, Option<i64>>(6)?.unwrap_or_default(),
            input_tokens: r.get::<_, Option<i64>>(7)?.unwrap_or_default() as u64,
            cached_input_tokens: r.get::<_, Option<i64>>(8)?.unwrap_or_default() as u64,
            output_tokens: r.get::<_, Option<i64>>(9)?.unwrap_or_default() as u64,
            failed: r.get::<_, Option<bool>>(10)?.unwrap_or_default(),
            downgraded: r.get(11)?,
            labels: r.get(12)?,
        })
    })? {
        calls.push(row?);
    }
    let mut outcomes = Vec::new();
    let mut st = conn.prepare_cached(
        "SELECT workflow, outcome_id, status, value_usd, human_minutes, at_ms FROM outcome_events
         WHERE at_ms >= ?1 AND (?2 IS NULL OR workflow = ?2) ORDER BY id",
    )?;
    for row in st.query_map(params![since_ms, workflow], |r| {
        let status: String = r.get(2)?;
        Ok(OutcomeEvent {
            workflow: r.get(0)?,
            outcome_id: r.get(1)?,
            status: OutcomeStatus::parse(&status).unwrap_or(OutcomeStatus::Abandoned),
            value_usd: r.get(3)?,
            human_minutes: r.get(4)?,
            at_ms: r.get(5)?,
        })
    })? {
        outcomes.push(row?);
    }
    let mut feedback = Vec::new();
    let mut st = conn.prepare_cached(
        "SELECT workflow, decision_id, model, accepted, at_ms FROM feedback_events
         WHERE at_ms >= ?1 AND (?2 IS NULL OR workflow = ?2) ORDER BY id",
    )?;
    for row in st.query_map(params![since_ms, workflow], |r| {
        Ok(FeedbackEvent {
            workflow: r.get(0)?,
            decision_id: r.get(1)?,
            model: r.get(2)?,
            accepted: r.get(3)?,
            at_ms: r.get(4)?,
        })
    })? {
        feedback.push(row?);
    }
    Ok(Ledger {
        calls,
        outcomes,
        feedback,
    })
}

/// The smallest UUIDv7 string made at or after `ms`. Decision IDs are
/// UUIDv7, whose text sorts by creation time, so the primary key serves the
/// ledger's time range and Route pays for no extra index.
pub fn uuid_v7_floor(ms: i64) -> String {
    let ms = ms.clamp(0, (1 << 48) - 1) as u64;
    format!("{:08x}-{:04x}", ms >> 16, ms & 0xffff)
}

/// Reads the ledger from the store in `state_dir` without opening it for
/// writing (for `report`, beside a running server). `None` when there is no
/// store there yet.
pub fn read_ledger(state_dir: &Path, workflow: Option<&str>, since_ms: i64) -> Result<Option<Ledger>, StoreError> {
    let Some(conn) = open_read_only(state_dir)? else {
        return Ok(None);
    };
    ledger_of(&conn, workflow, since_ms).map(Some).map_err(unavailable)
}

fn open_read_only(state_dir: &Path) -> Result<Option<Connection>, StoreError> {
    let path = state_dir.join("budget.sqlite3");
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(2))
        .map_err(unavailable)?;
    Ok(Some(conn))
}

/// Reads one scope from the store in `state_dir` without opening it for
/// writing (for `explain`, beside a running server). `None` when there is no
/// store there yet.
pub fn read_scope(state_dir: &Path, key: &str) -> Result<Option<ScopeState>, StoreError> {
    let Some(conn) = open_read_only(state_dir)? else {
        return Ok(None);
    };
    scope_state(&conn, key).map(Some)
}
