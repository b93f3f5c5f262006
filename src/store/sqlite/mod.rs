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
//!
//! The files: `schema.sql` and `migrate.rs` (the tables, and what older
//! stores are brought up to), `wal.rs` (keeping the write-ahead log
//! bounded), `state.rs` (what the state folder must hold before opening),
//! then one file per store trait: `budgets.rs`, `escalations.rs`,
//! `ledger.rs`, `learning.rs`.

mod budgets;
mod escalations;
mod learning;
mod ledger;
mod migrate;
mod reader;
mod state;
mod wal;

use std::path::Path;

use rusqlite::Connection;

use super::{NewReservation, StoreError};

use budgets::{bind_reservation, INSERT_RESERVATION};
pub use ledger::{read_ledger, uuid_v7_floor, LEDGER_CALLS};
use migrate::migrate;
pub use reader::Reader;
use state::open_error;
pub use state::{prepare_state_dir, StateStart};
use wal::{file_len, note_wal_frames, truncate_wal, Checkpointer, WalTender, CHECKPOINT_EVERY};

/// The tables, created if missing on every open.
const SCHEMA: &str = include_str!("schema.sql");

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
    /// Commit what is queued, then empty the WAL into the database and
    /// truncate it; answers whether the reset went through (`Ok(false)`: a
    /// reader was in the way).
    Checkpoint(tokio::sync::oneshot::Sender<Result<bool, String>>),
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

/// How long the store waits for a lock held by another connection (a
/// checkpoint, or a reader such as `switchyard report`).
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The WAL size past which the store thread resets it, by default.
pub const WAL_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

/// The file the store lives in, inside the state folder.
pub const FILE: &str = "budget.sqlite3";

/// The state folder's record that it holds a store (see [`prepare_state_dir`]).
pub const MARKER: &str = "store.json";

/// How the embedded store is run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The WAL is reset (checkpointed and truncated) once it grows past this.
    pub wal_limit_bytes: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            wal_limit_bytes: WAL_LIMIT_BYTES,
        }
    }
}

pub struct SqliteStore {
    /// Tells the checkpoint thread to stop when the store is dropped.
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Jobs for the one thread that owns the connection. One owner, no lock:
    /// operations run back to back, without the thread hops and lock convoys
    /// of a shared connection on a thread pool.
    /// (`None` once the store is dropped, which ends the store thread.)
    jobs: Option<std::sync::mpsc::Sender<Msg>>,
    /// The store thread and the checkpoint thread, joined on drop, so that
    /// nothing touches the files once the store is gone.
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Decision records without a budget, waiting for the store thread: it
    /// inserts them at the start of its next transaction, before any job
    /// queued after them, so a ReportUsage always finds its decision.
    records: Records,
    /// Whether the store can write, for readiness and /metrics.
    health: std::sync::Arc<Health>,
    /// The WAL file, for [`SqliteStore::wal_bytes`].
    wal: std::path::PathBuf,
    /// How long decision snapshots are kept for `whatif`.
    decision_retention_ms: std::sync::atomic::AtomicI64,
    /// Snapshots of decisions before this decision ID are gone.
    snapshots_trimmed_to: std::sync::Arc<std::sync::Mutex<String>>,
}

type Records = std::sync::Arc<std::sync::Mutex<Vec<NewReservation>>>;

/// Whether the store can serve: a failed write sets it failing, the next
/// write that commits clears it. Reads never clear it: a full disk still
/// serves reads.
#[derive(Default)]
struct Health {
    unavailable_total: std::sync::atomic::AtomicU64,
    /// Commits that changed something: the checkpoint thread tells an idle
    /// store by this standing still.
    writes: std::sync::atomic::AtomicU64,
    failing: std::sync::Mutex<Option<String>>,
}

impl Health {
    fn failing(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.failing.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn failed(&self, why: &str) {
        let mut f = self.failing();
        if f.is_none() {
            tracing::error!(error = %why, "the budget store cannot write; budgeted calls fail closed (UNAVAILABLE) and /readyz answers 503 until it can");
        }
        *f = Some(why.to_string());
    }

    fn wrote(&self) {
        self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(why) = self.failing().take() {
            tracing::info!(was = %why, "the budget store writes again");
        }
    }
}

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

/// A state column's text as its enum; a value no build writes is a
/// conversion error for that column.
fn known<T>(column: usize, parse: fn(&str) -> Option<T>, text: String) -> rusqlite::Result<T> {
    parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Text,
            format!("unknown state `{text}`").into(),
        )
    })
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

impl SqliteStore {
    /// Opens (creating if needed) `budget.sqlite3` in `state_dir`, with the
    /// default options.
    pub fn open(state_dir: &Path) -> Result<SqliteStore, StoreError> {
        Self::open_with(state_dir, Options::default())
    }

    /// Opens (creating if needed) `budget.sqlite3` in `state_dir`, and
    /// records in the state folder that it holds a store.
    pub fn open_with(state_dir: &Path, options: Options) -> Result<SqliteStore, StoreError> {
        let path = state_dir.join(FILE);
        let mut conn = Connection::open(&path).map_err(|e| open_error(&path, &e))?;
        // A bounded WAL: `journal_size_limit` trims the file whenever SQLite
        // rewinds it, and the store thread resets it past the limit
        // ([`WalTender`]). Automatic checkpoints stay off: their fsync would
        // run inside a commit that a Route waits for.
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
             PRAGMA wal_autocheckpoint = 0; PRAGMA journal_size_limit = {};",
            options.wal_limit_bytes
        ))
        .map_err(|e| open_error(&path, &e))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(|e| open_error(&path, &e))?;
        migrate(&conn)?;
        let marker = state_dir.join(MARKER);
        if !marker.exists() {
            let body = serde_json::json!({
                "backend": "sqlite",
                "file": FILE,
                "created": jiff::Timestamp::now().to_string(),
                "note": "This folder holds Switchyard's budget store. serve refuses to start if the store goes missing beside this file.",
            });
            std::fs::write(&marker, format!("{body:#}\n"))
                .map_err(|e| unavailable(format!("cannot write {}: {e}", marker.display())))?;
        }
        let wal = state_dir.join(format!("{FILE}-wal"));
        // Checkpoints (and their fsync) run on their own connection and
        // thread, never inside a commit that a Route is waiting for.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let checkpointer = Connection::open(&path).map_err(unavailable)?;
        checkpointer.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
        let health = std::sync::Arc::new(Health::default());
        let mut keeper = Checkpointer {
            conn: checkpointer,
            wal: wal.clone(),
            limit: options.wal_limit_bytes,
            health: health.clone(),
            last_writes: 0,
            failing: false,
        };
        let checkpoint_thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("switchyard-checkpoint".into())
                .spawn(move || {
                    // Parked rather than asleep, so that dropping the store
                    // wakes it at once.
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::park_timeout(CHECKPOINT_EVERY);
                        if !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            keeper.tick();
                        }
                    }
                })
                .map_err(|e| unavailable(format!("cannot start the checkpoint thread: {e}")))?
        };
        let page: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(unavailable)?;
        // After `wal_autocheckpoint = 0`, which clears any WAL hook.
        conn.wal_hook(Some(note_wal_frames));
        let mut tender = WalTender::new(options.wal_limit_bytes, page);
        conn.set_prepared_statement_cache_capacity(64);
        let (jobs, rx) = std::sync::mpsc::channel::<Msg>();
        let records = Records::default();
        let queued = records.clone();
        let thread_health = health.clone();

        let store_thread = std::thread::Builder::new()
            .name("switchyard-sqlite".into())
            .spawn(move || {
                // Group commit: the decision records queued so far, then every
                // job queued while the last batch was committing, go into the
                // next transaction, each job in its own savepoint, and none is
                // answered before the COMMIT. Ends when every sender (every
                // SqliteStore handle) is dropped, after a last commit.
                let health = &*thread_health;
                let mut taken = Vec::new();
                while let Ok(first) = rx.recv() {
                    let mut batch = Vec::new();
                    let mut checkpoints = Vec::new();
                    match first {
                        Msg::Job(job) => batch.push(job),
                        Msg::Checkpoint(reply) => checkpoints.push(reply),
                        Msg::Records => {
                            let until = std::time::Instant::now() + RECORD_LINGER;
                            while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
                                match rx.recv_timeout(left) {
                                    Ok(Msg::Records) => {}
                                    Ok(Msg::Job(job)) => {
                                        batch.push(job);
                                        break;
                                    }
                                    Ok(Msg::Checkpoint(reply)) => {
                                        checkpoints.push(reply);
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
                            Ok(Msg::Checkpoint(reply)) => checkpoints.push(reply),
                            Err(_) => break,
                        }
                    }
                    take_records(&queued, &mut taken);
                    commit_batch(&mut conn, &taken, batch, health);
                    taken.clear();
                    tender.tend(&conn);
                    for reply in checkpoints {
                        let _ = reply.send(truncate_wal(&conn, BUSY_TIMEOUT).map_err(|e| e.to_string()));
                    }
                }
                take_records(&queued, &mut taken);
                commit_batch(&mut conn, &taken, Vec::new(), health);
                if let Err(e) = truncate_wal(&conn, std::time::Duration::from_secs(1)) {
                    tracing::debug!(error = %e, "the last WAL reset failed");
                }
            })
            .map_err(|e| unavailable(format!("cannot start the store thread: {e}")))?;
        Ok(SqliteStore {
            stop,
            jobs: Some(jobs),
            threads: vec![store_thread, checkpoint_thread],
            records,
            health,
            wal,
            decision_retention_ms: std::sync::atomic::AtomicI64::new(crate::store::DEFAULT_DECISION_RETENTION_MS),
            snapshots_trimmed_to: Default::default(),
        })
    }

    /// The WAL's size in bytes now (for tests and the soak benchmark).
    pub fn wal_bytes(&self) -> u64 {
        file_len(&self.wal)
    }

    /// Runs `f` on the store thread and waits for its answer.
    ///
    /// (The store thread itself ends when this handle is dropped.)
    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let result = match self.enqueue(f) {
            Ok(rx) => rx
                .await
                .map_err(|_| unavailable("the store thread dropped a request"))
                .and_then(|r| r),
            Err(e) => Err(e),
        };
        if let Err(StoreError::Unavailable(why)) = &result {
            self.health
                .unavailable_total
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.health.failed(why);
        }
        result
    }

    /// Queues `f` on the store thread now, in order, and returns where its
    /// answer will arrive once its batch is committed.
    fn enqueue<T, F>(&self, f: F) -> Result<tokio::sync::oneshot::Receiver<Result<T, StoreError>>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Msg::Job(Box::new(move |conn: Result<&mut Connection, String>| {
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
        })))?;
        Ok(rx)
    }
}

/// One transaction: the queued decision records, then each job in its own
/// savepoint; the jobs are answered after the COMMIT.
fn commit_batch(conn: &mut Connection, records: &[NewReservation], batch: Vec<Job>, health: &Health) {
    if records.is_empty() && batch.is_empty() {
        return;
    }
    let lost = |e: &dyn std::fmt::Display| {
        if !records.is_empty() {
            tracing::warn!(error = %e, lost = records.len(), "recording decisions without a budget failed");
            health
                .unavailable_total
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            health.failed(&e.to_string());
        }
    };
    let changes_before = conn.total_changes();
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
                    if let Err(e) = bind_reservation(conn, &mut insert, r, "") {
                        tracing::warn!(error = %e, decision = %r.decision_id, "recording a decision without a budget failed");
                    }
                }
            }
            Err(e) => lost(&e),
        }
    }
    let replies: Vec<Reply> = batch.into_iter().map(|job| job(Ok(&mut *conn))).collect();
    let failed = run_cached(conn, "COMMIT").err().map(|e| e.to_string());
    match &failed {
        Some(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            lost(e);
            health.failed(e);
        }
        None if conn.total_changes() > changes_before => health.wrote(),
        None => {}
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

/// One job's savepoint inside the batch's transaction, through the
/// statement cache: rusqlite's own runs SAVEPOINT and RELEASE through
/// `execute_batch`, which parses both on every job (about 6,000
/// instructions a Route and again a ReportUsage). Dropped without
/// [`Savepoint::commit`], it rolls the job's writes back and leaves the rest
/// of the batch as it was.
pub(super) struct Savepoint<'c> {
    conn: &'c Connection,
    released: bool,
}

impl<'c> Savepoint<'c> {
    pub(super) fn new(conn: &'c Connection) -> Result<Savepoint<'c>, StoreError> {
        run_cached(conn, "SAVEPOINT job").map_err(unavailable)?;
        Ok(Savepoint { conn, released: false })
    }

    pub(super) fn commit(mut self) -> rusqlite::Result<()> {
        self.released = true;
        run_cached(self.conn, "RELEASE job")
    }
}

impl std::ops::Deref for Savepoint<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if !self.released {
            // Undo this job's writes, then end the savepoint. If either
            // fails the connection is in trouble, and the batch's COMMIT
            // says so to every job in it.
            let _ = run_cached(self.conn, "ROLLBACK TO job").and_then(|()| run_cached(self.conn, "RELEASE job"));
        }
    }
}

/// Executes one statement through the connection's statement cache.
fn exec(tx: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<usize, StoreError> {
    tx.prepare_cached(sql)
        .and_then(|mut st| st.execute(params))
        .map_err(unavailable)
}

impl SqliteStore {
    /// Sends the store thread a message; `Err` once it has stopped.
    fn send(&self, msg: Msg) -> Result<(), StoreError> {
        self.jobs
            .as_ref()
            .and_then(|j| j.send(msg).ok())
            .ok_or_else(|| unavailable("the store thread has stopped"))
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // The store thread makes its last commit and empties the WAL once
        // its channel closes; then the checkpoint thread is woken to stop.
        self.jobs.take();
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.thread().unpark();
            let _ = t.join();
        }
    }
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
