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

use crate::outcome::learn::LearnEvent;
use crate::outcome::ledger::{CallRecord, FeedbackEvent, Ledger, OutcomeEvent, OutcomeStatus};

use super::{
    extra_after_approval, BudgetStore, Escalation, NewReservation, ReservationRecord, Reserved, ScopeState, Settled,
    StoreError, Usage,
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
const ADDED_COLUMNS: [(&str, &str); 7] = [
    ("downgraded", "INTEGER NOT NULL DEFAULT 0"),
    ("labels", "TEXT NOT NULL DEFAULT ''"),
    // Who routed the call, and the prices it was routed at (NULL in rows
    // older than these columns: those are priced by the rules in force).
    ("caller", "TEXT NOT NULL DEFAULT ''"),
    ("price_input", "INTEGER"),
    ("price_cached", "INTEGER"),
    ("price_output", "INTEGER"),
    ("batch_bp", "INTEGER"),
];

/// One pending escalation per scope, enforced by the schema as well as by
/// [`escalate_job`]. Created after [`dedup_pending`] has cleaned up stores
/// an older build let hold several.
const ONE_PENDING: &str =
    "CREATE UNIQUE INDEX IF NOT EXISTS escalations_one_pending ON escalations (scope) WHERE state = 'pending'";

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
    repair_money(conn)?;
    dedup_pending(conn)?;
    conn.execute_batch(ONE_PENDING).map_err(unavailable)?;
    Ok(())
}

/// Money columns an older build could leave unreadable: SQLite turns an
/// integer sum that overflows into a REAL, and one such approval made every
/// read of the scope fail. Each is brought back into range (approvals to the
/// cap, counters saturated at the top of i64), loudly.
fn repair_money(conn: &Connection) -> Result<(), StoreError> {
    let cap = crate::money::MAX_SCOPE_EXTRA_NANOS;
    let fixes = [
        (
            "approved additions",
            "UPDATE scopes SET extra_nanos = ?1 WHERE typeof(extra_nanos) != 'integer' OR extra_nanos > ?1",
        ),
        (
            "limits",
            "UPDATE scopes SET limit_nanos = MIN(CAST(limit_nanos AS INTEGER), ?1) WHERE typeof(limit_nanos) != 'integer' OR limit_nanos > ?1",
        ),
        (
            "spend",
            "UPDATE scopes SET spent_nanos = CAST(spent_nanos AS INTEGER) WHERE typeof(spent_nanos) != 'integer'",
        ),
        (
            "reservations",
            "UPDATE scopes SET reserved_nanos = CAST(reserved_nanos AS INTEGER) WHERE typeof(reserved_nanos) != 'integer'",
        ),
    ];
    for (what, sql) in fixes {
        let n = if sql.contains("?1") {
            conn.execute(sql, [cap])
        } else {
            conn.execute(sql, [])
        }
        .map_err(unavailable)?;
        if n > 0 {
            tracing::error!(
                scopes = n,
                column = what,
                "budget store: repaired money columns an older build left out of range (see README, Budgets)"
            );
        }
    }
    Ok(())
}

/// Keeps the newest pending escalation of each scope and denies the older
/// duplicates an older build could create under concurrent Routes.
fn dedup_pending(conn: &Connection) -> Result<(), StoreError> {
    let n = conn
        .execute(
            "UPDATE escalations SET state = 'denied', resolved_by = '-', reason = 'superseded: a scope keeps one pending escalation'
             WHERE state = 'pending' AND rowid NOT IN (
                 SELECT rowid FROM escalations AS e WHERE e.state = 'pending' AND NOT EXISTS (
                     SELECT 1 FROM escalations AS n WHERE n.scope = e.scope AND n.state = 'pending'
                       AND (n.created_ms > e.created_ms OR (n.created_ms = e.created_ms AND n.rowid > e.rowid))))",
            [],
        )
        .map_err(unavailable)?;
    if n > 0 {
        tracing::warn!(
            escalations = n,
            "budget store: older duplicate pending escalations were superseded by the newest of their scope"
        );
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

/// How often the checkpoint thread copies the WAL into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// How long the store thread's WAL reset waits for a checkpoint in progress
/// or a reader, at most.
const WAL_RESET_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// After a reset that found the WAL in use, the next waits this long, then
/// twice as long each time, up to [`WAL_BACKOFF_MAX`].
const WAL_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(10);
const WAL_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(2);

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
    jobs: std::sync::mpsc::Sender<Msg>,
    /// Decision records without a budget, waiting for the store thread: it
    /// inserts them at the start of its next transaction, before any job
    /// queued after them, so a ReportUsage always finds its decision.
    records: Records,
    /// Whether the store can write, for readiness and /metrics.
    health: std::sync::Arc<Health>,
    /// The WAL file, for [`SqliteStore::wal_bytes`].
    wal: std::path::PathBuf,
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

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

/// Copies the WAL into the database off the Route path, on its own thread
/// and connection: a PASSIVE checkpoint every 500 ms, which blocks no one,
/// and a TRUNCATE once the WAL has stopped growing (the store is idle), so an
/// idle sidecar's WAL shrinks to nothing. Past the limit it leaves the reset
/// to the store thread ([`WalTender`]) and stays out of its way.
struct Checkpointer {
    conn: Connection,
    wal: std::path::PathBuf,
    limit: u64,
    health: std::sync::Arc<Health>,
    /// [`Health::writes`] at the last tick.
    last_writes: u64,
    failing: bool,
}

impl Checkpointer {
    fn tick(&mut self) {
        let len = file_len(&self.wal);
        let writes = self.health.writes.load(std::sync::atomic::Ordering::Relaxed);
        let idle = writes == self.last_writes;
        self.last_writes = writes;
        let result = if len == 0 || len > self.limit {
            Ok(())
        } else if idle {
            truncate_wal(&self.conn, std::time::Duration::from_millis(100)).map(drop)
        } else {
            self.conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);")
        };
        match result {
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!(error = %e, "WAL checkpoint failed; retrying every 500 ms");
            }
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!("WAL checkpoints work again");
            }
            _ => {}
        }
    }
}

thread_local! {
    /// Frames in the WAL after the last commit on this thread, as SQLite's
    /// WAL hook reports them: the store thread reads it after each commit,
    /// so watching the WAL's size costs no system call.
    static WAL_FRAMES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

fn note_wal_frames(_: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|f| f.set(frames));
    Ok(())
}

/// Keeps the WAL bounded. The checkpoint thread's PASSIVE checkpoints never
/// catch a writer that writes without pause: SQLite rewinds a WAL only once
/// every frame is copied, the writer adds more while the copy runs, and the
/// file grew without end (about 200 MB a second at the store's full rate). A
/// checkpoint that waits for the writer to pause waits forever under load, as
/// group commit begins the next transaction at once. The store thread is the
/// only writer, so it resets the WAL itself, between two commits, right
/// after the commit that takes the WAL past its limit: a RESTART checkpoint
/// there copies what the checkpoint thread has not and rewinds the WAL
/// (`journal_size_limit` then cuts the file back to the limit). It waits a
/// moment for a checkpoint in progress; a reader holding the WAL for longer
/// (a long `report`) makes it back off, so Routes are not held up.
struct WalTender {
    /// The limit in WAL frames (pages).
    limit_frames: i64,
    /// No reset is tried before this.
    not_before: std::time::Instant,
    /// How long to wait after a reset that found the WAL in use.
    backoff: std::time::Duration,
}

impl WalTender {
    fn new(limit_bytes: u64, page_bytes: i64) -> WalTender {
        WalTender {
            limit_frames: (limit_bytes as i64 / page_bytes.max(512)).max(1),
            not_before: std::time::Instant::now(),
            backoff: WAL_BACKOFF_MIN,
        }
    }

    fn tend(&mut self, conn: &Connection) {
        if i64::from(WAL_FRAMES.with(std::cell::Cell::get)) <= self.limit_frames {
            return;
        }
        let now = std::time::Instant::now();
        if now < self.not_before {
            return;
        }
        // RESTART, not TRUNCATE: the file keeps its size (up to the limit)
        // and is overwritten from its start, cheaper for the writer than
        // growing a file anew (9% against 16% of the store's top rate).
        match checkpoint(conn, "RESTART", WAL_RESET_WAIT) {
            Ok(true) => {
                WAL_FRAMES.with(|f| f.set(0));
                self.backoff = WAL_BACKOFF_MIN;
            }
            result => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "resetting the WAL failed; will retry");
                }
                self.not_before = now + self.backoff;
                self.backoff = (self.backoff * 2).min(WAL_BACKOFF_MAX);
            }
        }
    }
}

/// Empties the WAL into the database file and truncates it to zero bytes,
/// waiting at most `wait` for readers. `Ok(false)`: a reader or another
/// checkpoint was in the way; try again later.
fn truncate_wal(conn: &Connection, wait: std::time::Duration) -> rusqlite::Result<bool> {
    checkpoint(conn, "TRUNCATE", wait)
}

/// A checkpoint in `mode` (RESTART: the next commit writes the WAL from its
/// start, overwriting the file; TRUNCATE: the file is also cut to zero),
/// waiting at most `wait` for readers or another checkpoint.
fn checkpoint(conn: &Connection, mode: &str, wait: std::time::Duration) -> rusqlite::Result<bool> {
    conn.busy_timeout(wait)?;
    let busy = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get::<_, i64>(0));
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(busy? == 0)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// What `serve` found in the state folder before opening the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateStart {
    /// A store is there: open it.
    Existing,
    /// No store and no sign of one: a new state folder.
    New,
    /// A store was there and is gone or empty, and `--accept-fresh-store`
    /// says to begin again; what was found is in the text, for the audit.
    FreshAccepted(String),
}

/// The state folder knows it had a store: [`MARKER`] is written when the
/// store is created. A store that is missing or empty beside that record
/// (or beside its own WAL) would start with nothing spent and make the
/// period's whole budget available again, so it is refused with a message
/// that says what happened, unless `accept_fresh` (whose fresh start is
/// then set aside in files and audited by the caller).
pub fn prepare_state_dir(state_dir: &Path, accept_fresh: bool) -> Result<StateStart, String> {
    let db = state_dir.join(FILE);
    let wal = state_dir.join(format!("{FILE}-wal"));
    let marker = state_dir.join(MARKER);
    let size = std::fs::metadata(&db).map(|m| m.len()).ok();
    if size.is_some_and(|n| n > 0) {
        return Ok(StateStart::Existing);
    }
    let created = std::fs::read_to_string(&marker).ok().map(|t| {
        serde_json::from_str::<serde_json::Value>(&t)
            .ok()
            .and_then(|v| v.get("created").and_then(|c| c.as_str()).map(str::to_string))
            .unwrap_or_else(|| "at an unknown time".into())
    });
    let orphan_wal = file_len(&wal) > 0;
    if created.is_none() && !orphan_wal {
        return Ok(StateStart::New);
    }
    let what = match size {
        None => format!("{} is missing", db.display()),
        Some(_) => format!("{} is empty (0 bytes)", db.display()),
    };
    let evidence = match &created {
        Some(at) => format!("{} records a store created {at}", marker.display()),
        None => format!("its write-ahead log {} is still there", wal.display()),
    };
    if !accept_fresh {
        return Err(format!(
            "{what}, but this state folder held a budget store ({evidence}). Starting now would forget every \
             reservation and all the spend recorded there, and make each period's whole budget available again. \
             Restore {FILE} from a backup, or start serve with --accept-fresh-store to begin again with nothing \
             spent (the fresh start is audited)."
        ));
    }
    // Nothing is deleted: what was there is set aside beside it.
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
    for name in [FILE.to_string(), format!("{FILE}-wal"), format!("{FILE}-shm")] {
        let from = state_dir.join(&name);
        if from.exists() {
            let to = state_dir.join(format!("{name}.discarded-{stamp}"));
            std::fs::rename(&from, &to)
                .map_err(|e| format!("cannot set {} aside as {}: {e}", from.display(), to.display()))?;
        }
    }
    Ok(StateStart::FreshAccepted(format!(
        "{what} ({evidence}); started with an empty store, anything left was set aside as *.discarded-{stamp}"
    )))
}

/// Why opening failed, in words that say what to do.
fn open_error(path: &Path, e: &rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{CannotOpen, DatabaseCorrupt, NotADatabase, PermissionDenied, ReadOnly};
    let hint = match e.sqlite_error_code() {
        Some(NotADatabase | DatabaseCorrupt) => format!(
            "it is not a SQLite database or it is damaged; restore {FILE} from a backup, or move it aside and \
             start with --accept-fresh-store to begin again with nothing spent"
        ),
        Some(CannotOpen | PermissionDenied | ReadOnly) => {
            "pass --state-dir with a folder this process can write".to_string()
        }
        _ => "see the error above".to_string(),
    };
    StoreError::Unavailable(format!("{}: {e}; {hint}", path.display()))
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
        {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("switchyard-checkpoint".into())
                .spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::sleep(CHECKPOINT_EVERY);
                        keeper.tick();
                    }
                })
                .map_err(|e| unavailable(format!("cannot start the checkpoint thread: {e}")))?;
        }
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

        std::thread::Builder::new()
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
            jobs,
            records,
            health,
            wal,
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
        if r.amount_nanos < 0 {
            return Err(StoreError::InvalidAmount(format!(
                "a reservation of {} nano-USD is negative",
                r.amount_nanos
            )));
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
            if !state.fits(r.amount_nanos) {
                // Dropping the savepoint rolls back the limit upserts too.
                return Ok(Reserved::OverLimit {
                    scope: s.key.clone(),
                    state,
                });
            }
        }
        // Each scope fits the amount, so reserved + amount stays below its
        // limit (at most about 2e18): the sum cannot overflow.
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
                               created_ms, expires_ms, state, downgraded, labels, caller,
                               price_input, price_cached, price_output, batch_bp)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'reserved', ?10, ?11, ?12, ?13, ?14, ?15, ?16)";

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
            r.labels,
            r.caller,
            r.prices.input_nanos_per_mtok,
            r.prices.cached_input_nanos_per_mtok,
            r.prices.output_nanos_per_mtok,
            r.prices.batch_discount_bp
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
    // The limit and the additions are summed here, not in SQL, where an
    // overflowing sum would turn into a REAL.
    let mut st = tx
        .prepare_cached("SELECT limit_nanos, extra_nanos, spent_nanos, reserved_nanos FROM scopes WHERE key = ?1")
        .map_err(unavailable)?;
    st.query_row([key], |r| {
        let extra: i64 = r.get(1)?;
        Ok(ScopeState {
            limit_nanos: r.get::<_, i64>(0)?.saturating_add(extra),
            spent_nanos: r.get(2)?,
            reserved_nanos: r.get(3)?,
            extra_nanos: extra,
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
        self.with(|_| Ok(())).await?;
        // At shutdown the WAL is emptied into the database, so a stopped
        // sidecar leaves a zero-length WAL behind.
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Msg::Checkpoint(tx))
            .map_err(|_| unavailable("the store thread has stopped"))?;
        match rx.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unavailable(format!("resetting the WAL: {e}"))),
            Err(_) => Err(unavailable("the store thread dropped a request")),
        }
    }

    fn health(&self) -> super::StoreHealth {
        super::StoreHealth {
            unavailable_total: self.health.unavailable_total.load(std::sync::atomic::Ordering::Relaxed),
            failing: self.health.failing().clone(),
            ..Default::default()
        }
    }

    async fn settle(&self, decision_id: &str, cost: i64, usage: &Usage, now_ms: i64) -> Result<Settled, StoreError> {
        let (id, usage) = (decision_id.to_string(), *usage);
        if cost < 0 {
            return Err(StoreError::InvalidAmount(format!(
                "a cost of {cost} nano-USD is negative"
            )));
        }
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
                // Spend saturates at the top of i64 rather than overflow into
                // a REAL that no later read could take.
                exec(
                    &tx,
                    "UPDATE scopes SET reserved_nanos = reserved_nanos - ?1,
                         spent_nanos = CASE WHEN spent_nanos > 9223372036854775807 - ?2 THEN 9223372036854775807
                                            ELSE spent_nanos + ?2 END
                     WHERE key = ?3",
                    params![release, cost, key],
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
                "SELECT decision_id, workflow, outcome_id, model, is_deferrable, amount_nanos, state, actual_nanos,
                        caller, price_input, price_cached, price_output, batch_bp
                 FROM reservations WHERE decision_id = ?1",
                [&id],
                |r| {
                    let prices = match (r.get(9)?, r.get(10)?, r.get(11)?, r.get::<_, Option<u32>>(12)?) {
                        (Some(input), Some(cached), Some(output), Some(bp)) => Some(crate::rules::Prices {
                            input_nanos_per_mtok: input,
                            cached_input_nanos_per_mtok: cached,
                            output_nanos_per_mtok: output,
                            batch_discount_bp: bp,
                        }),
                        _ => None,
                    };
                    Ok(ReservationRecord {
                        decision_id: r.get(0)?,
                        workflow: r.get(1)?,
                        outcome_id: r.get(2)?,
                        model: r.get(3)?,
                        deferrable: r.get(4)?,
                        amount_nanos: r.get(5)?,
                        state: r.get(6)?,
                        actual_nanos: r.get(7)?,
                        caller: r.get(8)?,
                        prices,
                    })
                },
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn escalate(&self, e: &Escalation) -> Result<Escalation, StoreError> {
        let e = e.clone();
        self.with(move |conn| {
            // One job on the one writer: the look and the insert cannot be
            // interleaved with another Route's (and the partial unique index
            // refuses a second pending escalation on a scope regardless).
            let tx = conn.savepoint().map_err(unavailable)?;
            let newest = tx
                .query_row(
                    &format!(
                        "SELECT {ESCALATION_COLUMNS} FROM escalations WHERE scope = ?1 ORDER BY created_ms DESC, rowid DESC LIMIT 1"
                    ),
                    [&e.scope],
                    escalation_row,
                )
                .optional()
                .map_err(unavailable)?;
            if let Some(open) = newest.filter(|n| n.state != "approved") {
                return Ok(open);
            }
            tx.execute(
                &format!("INSERT INTO escalations ({ESCALATION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
                params![
                    e.id, e.workflow, e.scope, e.outcome_id, e.caller, e.amount_nanos, e.model, e.state, e.created_ms,
                    e.resolved_by, e.resolved_ms, e.added_nanos, e.reason
                ],
            )
            .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(e)
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
                if add_nanos <= 0 {
                    return Err(StoreError::InvalidAmount(format!(
                        "an approval must add a positive amount, not {add_nanos} nano-USD"
                    )));
                }
                // The scope's row may not exist yet (the period's first call
                // was over the limit): the approval creates it, and the next
                // reservation writes the rules' limit beside the addition.
                let extra: i64 = tx
                    .query_row("SELECT extra_nanos FROM scopes WHERE key = ?1", [&e.scope], |r| r.get(0))
                    .optional()
                    .map_err(unavailable)?
                    .unwrap_or(0);
                let total = extra_after_approval(&e.scope, extra, add_nanos)?;
                exec(
                    &tx,
                    "INSERT INTO scopes (key, limit_nanos, extra_nanos) VALUES (?1, 0, ?2)
                         ON CONFLICT(key) DO UPDATE SET extra_nanos = excluded.extra_nanos",
                    params![e.scope, total],
                )?;
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
