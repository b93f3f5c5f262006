//! The audit log: `audit.jsonl` in the state folder, append-only, one JSON
//! object a line, fsync'd before the writer takes the next batch.
//!
//! It records every refused request (authentication, permission, limits,
//! budget denials), every escalation created or resolved, every rules or keys
//! reload with the files' SHA-256, and every admin action. It never holds
//! prompt text: only names, IDs and reasons.
//!
//! - **Bounded on disk.** The file rotates once it reaches
//!   [`Rotation::max_bytes`]: `audit.jsonl` becomes `audit.jsonl.1`, the
//!   older ones shift up, and only [`Rotation::keep`] rotated files are kept.
//!   `switchyard audit` reads them all, oldest first.
//! - **Refusals are aggregated.** A caller (or an unauthenticated peer) that
//!   is refused over and over would otherwise write a line per attempt:
//!   40,000 bad-key calls were 8 MB in a second. The first refusal of a kind
//!   (same identity, peer, action, workflow and result) in an interval is
//!   written at once; the rest of that interval become one record with a
//!   `count`, written when the interval ends.
//!
//! Writes go through one thread, so a request never waits on the disk; if
//! the thread falls behind by more than [`QUEUE`] records, records are
//! dropped and counted (`switchyard_audit_dropped_total`), and the failure is
//! logged.

/// The identity of callers on loopback when no keys file is configured:
/// an admin, whose records own no outcome.
pub const LOCAL: &str = "local";

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub const FILE: &str = "audit.jsonl";
const QUEUE: usize = 65_536;

/// How long repeated refusals are gathered into one record.
pub const AGGREGATE_INTERVAL: Duration = Duration::from_secs(10);

/// The most kinds of refusal gathered at once; past it, they are written out
/// early, so an attacker with many addresses costs records, not memory.
const AGGREGATE_KINDS: usize = 4096;

/// When the audit log rotates and how much of it is kept.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    /// `audit.jsonl` rotates when a write would take it past this size.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.jsonl.1` .. `audit.jsonl.N`); older ones
    /// are deleted.
    pub keep: usize,
}

impl Default for Rotation {
    fn default() -> Rotation {
        Rotation {
            max_bytes: 64 * 1024 * 1024,
            keep: 5,
        }
    }
}

/// What was attempted, as the audit log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Route,
    ReportUsage,
    RecordOutcome,
    RecordFeedback,
    GetBudget,
    GetReport,
    ListEscalations,
    ResolveEscalation,
    RulesReload,
    KeysReload,
    StoreFreshStart,
    /// The budget store was found without state it had acknowledged.
    StoreStateLost,
    /// A budget's period or time zone changed and `--allow-scope-reset`
    /// let it start a fresh scope.
    BudgetScopeReset,
}

/// How it ended, as the audit log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Ok,
    /// A budget refused the call.
    Denied,
    /// A budget's limit was reached and a person must approve more.
    EscalationRequired,
    /// An escalation approved.
    Approved,
    Unauthenticated,
    PermissionDenied,
    Limited,
    InvalidArgument,
    Failed,
    /// Usage for a model other than the routed one, refused.
    RefusedOtherModel,
    /// Usage for a model other than the routed one, charged at its prices.
    OtherModel,
    /// The same, for a model the workflow's data policy excludes.
    OutsidePolicy,
    /// A cost past the workflow's overshoot factor times the estimate.
    UsageOvershoot,
    /// An outcome recorded again, over what another record said.
    Overwritten,
}

macro_rules! names {
    ($t:ty { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$v => $s),+
                }
            }
        }
    };
}

names!(Action {
    Route => "route",
    ReportUsage => "report_usage",
    RecordOutcome => "record_outcome",
    RecordFeedback => "record_feedback",
    GetBudget => "get_budget",
    GetReport => "get_report",
    ListEscalations => "list_escalations",
    ResolveEscalation => "resolve_escalation",
    RulesReload => "rules_reload",
    KeysReload => "keys_reload",
    StoreFreshStart => "store_fresh_start",
    StoreStateLost => "store_state_lost",
    BudgetScopeReset => "budget_scope_reset",
});

names!(Verdict {
    Ok => "ok",
    Denied => "denied",
    EscalationRequired => "escalation_required",
    Approved => "approved",
    Unauthenticated => "unauthenticated",
    PermissionDenied => "permission_denied",
    Limited => "limited",
    InvalidArgument => "invalid_argument",
    Failed => "failed",
    RefusedOtherModel => "refused_other_model",
    OtherModel => "other_model",
    OutsidePolicy => "outside_policy",
    UsageOvershoot => "usage_overshoot",
    Overwritten => "overwritten",
});

fn is_one(n: &u64) -> bool {
    *n == 1
}

fn one() -> u64 {
    1
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// RFC 3339, UTC. For an aggregated record, the last refusal's time.
    pub at: String,
    pub identity: String,
    /// What was attempted: an [`Action`]'s name.
    pub action: String,
    #[serde(default)]
    pub workflow: String,
    /// The object acted on: a decision, escalation or outcome ID, a file.
    #[serde(default)]
    pub target: String,
    /// How it ended: a [`Verdict`]'s name.
    pub result: String,
    #[serde(default)]
    pub reason: String,
    /// The caller's address, for refusals made before an identity is known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub peer: String,
    /// How many times this happened: more than 1 for aggregated refusals.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u64,
    /// For an aggregated record, the first refusal's time.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub since: String,
}

impl Record {
    pub fn new(identity: &str, action: Action, workflow: &str, target: &str, result: Verdict, reason: &str) -> Record {
        Record {
            at: jiff::Timestamp::now().to_string(),
            identity: identity.to_string(),
            action: action.as_str().to_string(),
            workflow: workflow.to_string(),
            target: target.to_string(),
            result: result.as_str().to_string(),
            reason: reason.to_string(),
            peer: String::new(),
            count: 1,
            since: String::new(),
        }
    }

    /// The record with the caller's address.
    pub fn from_peer(mut self, peer: Option<std::net::SocketAddr>) -> Record {
        self.peer = peer.map(|p| p.ip().to_canonical().to_string()).unwrap_or_default();
        self
    }
}

/// What aggregation tells refusals apart by.
type Kind = (String, String, String, String, String);

/// Refusals of one kind gathered in the current interval.
struct Gathered {
    /// When the interval began: the first refusal, which was written at once.
    opened: Instant,
    /// The refusals since, as one record (`count` of them), if any.
    rest: Option<Record>,
}

pub struct Audit {
    tx: Option<SyncSender<Record>>,
    pub written: Arc<AtomicU64>,
    pub dropped: AtomicU64,
    gathered: Arc<Mutex<HashMap<Kind, Gathered>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Audit {
    /// Opens (creating) `audit.jsonl` in `state_dir` for appending.
    pub fn open(state_dir: &Path, rotation: Rotation) -> Result<Audit, String> {
        let path = state_dir.join(FILE);
        let file = open_append(&path)?;
        let len = file.metadata().map_or(0, |m| m.len());
        let (tx, rx) = sync_channel(QUEUE);
        let written = Arc::new(AtomicU64::new(0));
        let gathered: Arc<Mutex<HashMap<Kind, Gathered>>> = Arc::default();
        let (counter, pending) = (written.clone(), gathered.clone());
        let thread = std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                Writer {
                    out: std::io::BufWriter::new(file),
                    path,
                    rotation,
                    len,
                    failing: false,
                    written: counter,
                }
                .run(rx, &pending)
            })
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok(Audit {
            tx: Some(tx),
            written,
            dropped: AtomicU64::new(0),
            gathered,
            thread: Some(thread),
        })
    }

    pub fn record(&self, r: Record) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(r) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::error!(
                        "the audit log is not keeping up; records are being dropped (switchyard_audit_dropped_total)"
                    );
                }
            }
        }
    }

    /// Records a refusal, aggregated: the first of its kind in an interval
    /// is written now, the rest as one counted record when it ends.
    pub fn refusal(&self, r: Record) {
        let kind = (
            r.identity.clone(),
            r.peer.clone(),
            r.action.clone(),
            r.workflow.clone(),
            r.result.clone(),
        );
        let first = {
            let mut g = self.gathered.lock().unwrap_or_else(PoisonError::into_inner);
            match g.get_mut(&kind) {
                Some(open) => {
                    match &mut open.rest {
                        Some(rest) => {
                            rest.count += 1;
                            rest.at = r.at;
                            rest.target = r.target;
                            rest.reason = r.reason;
                        }
                        None => {
                            open.rest = Some(Record {
                                since: r.at.clone(),
                                ..r
                            })
                        }
                    }
                    None
                }
                None => {
                    if g.len() >= AGGREGATE_KINDS {
                        for (_, open) in g.drain() {
                            if let Some(rest) = open.rest {
                                self.record(rest);
                            }
                        }
                    }
                    g.insert(
                        kind,
                        Gathered {
                            opened: Instant::now(),
                            rest: None,
                        },
                    );
                    Some(r)
                }
            }
        };
        if let Some(r) = first {
            self.record(r);
        }
    }

    /// Writes what is queued and gathered, and stops the writer.
    pub fn close(&mut self) {
        let rest: Vec<Record> = self
            .gathered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .filter_map(|(_, g)| g.rest)
            .collect();
        for r in rest {
            self.record(r);
        }
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        self.close();
    }
}

fn open_append(path: &Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open the audit log {}: {e}", path.display()))
}

/// The audit log's files, oldest first: `audit.jsonl.N` .. `audit.jsonl.1`,
/// then `audit.jsonl`.
pub fn files(state_dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(state_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix(FILE)?.strip_prefix('.')?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    out.push(state_dir.join(FILE));
    out
}

/// The writer thread's state.
struct Writer {
    out: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    rotation: Rotation,
    /// The current file's size.
    len: u64,
    failing: bool,
    written: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Record>, gathered: &Mutex<HashMap<Kind, Gathered>>) {
        loop {
            let first = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(r) => Some(r),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch: Vec<Record> = first.into_iter().collect();
            while let Ok(r) = rx.try_recv() {
                batch.push(r);
                if batch.len() >= 1024 {
                    break;
                }
            }
            // Intervals that ended: their gathered refusals, as one record each.
            {
                let mut g = gathered.lock().unwrap_or_else(PoisonError::into_inner);
                g.retain(|_, open| {
                    if open.opened.elapsed() < AGGREGATE_INTERVAL {
                        return true;
                    }
                    batch.extend(open.rest.take());
                    false
                });
            }
            if !batch.is_empty() {
                self.write(&batch);
            }
        }
    }

    fn write(&mut self, batch: &[Record]) {
        let result = (|| -> std::io::Result<()> {
            let mut line = Vec::with_capacity(512);
            for r in batch {
                line.clear();
                serde_json::to_writer(&mut line, r)?;
                line.push(b'\n');
                self.rotate_for(line.len() as u64)?;
                self.out.write_all(&line)?;
                self.len += line.len() as u64;
            }
            self.out.flush()?;
            self.out.get_ref().sync_data()
        })();
        match result {
            Ok(()) => {
                self.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                if self.failing {
                    self.failing = false;
                    tracing::info!(file = %self.path.display(), "the audit log is writable again");
                }
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    tracing::error!(file = %self.path.display(), error = %e, "cannot write the audit log; records are lost until it is writable");
                }
            }
        }
    }

    /// Rotates first if `more` bytes would take the file past its limit.
    fn rotate_for(&mut self, more: u64) -> std::io::Result<()> {
        if self.len == 0 || self.len + more <= self.rotation.max_bytes {
            return Ok(());
        }
        // What is in the file now is durable before it is renamed away.
        self.out.flush()?;
        self.out.get_ref().sync_data()?;
        let numbered = |n: usize| self.path.with_file_name(format!("{FILE}.{n}"));
        if self.rotation.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            match std::fs::remove_file(numbered(self.rotation.keep)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            for n in (1..self.rotation.keep).rev() {
                match std::fs::rename(numbered(n), numbered(n + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        let file = open_append(&self.path).map_err(std::io::Error::other)?;
        self.out = std::io::BufWriter::new(file);
        self.len = 0;
        if let Some(dir) = self.path.parent() {
            // The renames are durable before anything is written after them.
            std::fs::File::open(dir).and_then(|d| d.sync_all())?;
        }
        tracing::info!(file = %self.path.display(), kept = self.rotation.keep, "audit log rotated");
        Ok(())
    }
}

mod read;
#[cfg(test)]
mod tests;
pub use read::*;
