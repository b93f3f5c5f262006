//! Keeping the write-ahead log bounded: a checkpoint thread off the Route
//! path, and the store thread's own reset once the WAL passes its limit.

use std::path::Path;

use rusqlite::Connection;

use super::{Health, BUSY_TIMEOUT};

/// How often the checkpoint thread copies the WAL into the database file.
pub(super) const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// How long the store thread's WAL reset waits for a checkpoint in progress
/// or a reader, at most.
const WAL_RESET_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// After a reset that found the WAL in use, the next waits this long, then
/// twice as long each time, up to [`WAL_BACKOFF_MAX`].
const WAL_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(10);
const WAL_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// Copies the WAL into the database off the Route path, on its own thread
/// and connection: a PASSIVE checkpoint every 500 ms, which blocks no one,
/// and a TRUNCATE once the WAL has stopped growing (the store is idle), so an
/// idle sidecar's WAL shrinks to nothing. Past the limit it leaves the reset
/// to the store thread ([`WalTender`]) and stays out of its way.
pub(super) struct Checkpointer {
    pub(super) conn: Connection,
    pub(super) wal: std::path::PathBuf,
    pub(super) limit: u64,
    pub(super) health: std::sync::Arc<Health>,
    /// [`Health::writes`] at the last tick.
    pub(super) last_writes: u64,
    pub(super) failing: bool,
}

impl Checkpointer {
    pub(super) fn tick(&mut self) {
        let len = file_len(&self.wal);
        let writes = self.health.writes.load(std::sync::atomic::Ordering::Relaxed);
        let idle = writes == self.last_writes;
        self.last_writes = writes;
        let result = if len == 0 {
            Ok(())
        } else if idle {
            // No writer to race, whatever the size (a WAL left just past the
            // limit by the last commit before a pause included).
            truncate_wal(&self.conn, std::time::Duration::from_millis(100)).map(drop)
        } else if len > self.limit {
            Ok(())
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

pub(super) fn note_wal_frames(_: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
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
pub(super) struct WalTender {
    /// The limit in WAL frames (pages).
    limit_frames: i64,
    /// No reset is tried before this.
    not_before: std::time::Instant,
    /// How long to wait after a reset that found the WAL in use.
    backoff: std::time::Duration,
}

impl WalTender {
    pub(super) fn new(limit_bytes: u64, page_bytes: i64) -> WalTender {
        WalTender {
            limit_frames: (limit_bytes as i64 / page_bytes.max(512)).max(1),
            not_before: std::time::Instant::now(),
            backoff: WAL_BACKOFF_MIN,
        }
    }

    pub(super) fn tend(&mut self, conn: &Connection) {
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
pub(super) fn truncate_wal(conn: &Connection, wait: std::time::Duration) -> rusqlite::Result<bool> {
    checkpoint(conn, "TRUNCATE", wait)
}

/// A checkpoint in `mode` (RESTART: the next commit writes the WAL from its
/// start, overwriting the file; TRUNCATE: the file is also cut to zero),
/// waiting at most `wait` for readers or another checkpoint.
pub(super) fn checkpoint(conn: &Connection, mode: &str, wait: std::time::Duration) -> rusqlite::Result<bool> {
    conn.busy_timeout(wait)?;
    let busy = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get::<_, i64>(0));
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(busy? == 0)
}

pub(super) fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}
