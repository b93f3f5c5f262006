//! The audit log: `audit.jsonl` in the state folder, append-only, one JSON
//! object a line, fsync'd before the writer takes the next batch.
//!
//! It records every refused request (authentication, permission, limits,
//! budget denials), every escalation created or resolved, every rules or keys
//! reload with the files' SHA-256, and every admin action. It never holds
//! prompt text: only names, IDs and reasons.
//!
//! Writes go through one thread, so a request never waits on the disk; if
//! the thread falls behind by more than [`QUEUE`] records, records are
//! dropped and counted (`switchyard_audit_dropped_total`), and the failure is
//! logged.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

use serde::{Deserialize, Serialize};

pub const FILE: &str = "audit.jsonl";
const QUEUE: usize = 65_536;

/// One line of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// RFC 3339, UTC.
    pub at: String,
    pub identity: String,
    /// What was attempted: `route`, `report_usage`, `resolve_escalation`,
    /// `escalation_created`, `rules_reload`, `keys_reload`, ...
    pub action: String,
    #[serde(default)]
    pub workflow: String,
    /// The object acted on: a decision, escalation or outcome ID, a file.
    #[serde(default)]
    pub target: String,
    /// `ok`, `denied`, `unauthenticated`, `permission_denied`, `limited`,
    /// `escalated`, `approved`, `failed`.
    pub result: String,
    #[serde(default)]
    pub reason: String,
}

impl Record {
    pub fn new(identity: &str, action: &str, workflow: &str, target: &str, result: &str, reason: &str) -> Record {
        Record {
            at: jiff::Timestamp::now().to_string(),
            identity: identity.to_string(),
            action: action.to_string(),
            workflow: workflow.to_string(),
            target: target.to_string(),
            result: result.to_string(),
            reason: reason.to_string(),
        }
    }
}

pub struct Audit {
    tx: Option<SyncSender<Record>>,
    pub written: std::sync::Arc<AtomicU64>,
    pub dropped: AtomicU64,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Audit {
    /// Opens (creating) `audit.jsonl` in `state_dir` for appending.
    pub fn open(state_dir: &Path) -> Result<Audit, String> {
        let path = state_dir.join(FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open the audit log {}: {e}", path.display()))?;
        let (tx, rx) = sync_channel(QUEUE);
        let written = std::sync::Arc::new(AtomicU64::new(0));
        let counter = written.clone();
        let thread = std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || write_loop(file, path, rx, counter))
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok(Audit {
            tx: Some(tx),
            written,
            dropped: AtomicU64::new(0),
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

    /// Writes what is queued and stops the writer.
    pub fn close(&mut self) {
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

fn write_loop(file: std::fs::File, path: PathBuf, rx: Receiver<Record>, written: std::sync::Arc<AtomicU64>) {
    let mut out = std::io::BufWriter::new(file);
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(r) = rx.try_recv() {
            batch.push(r);
            if batch.len() >= 1024 {
                break;
            }
        }
        let result = (|| -> std::io::Result<()> {
            for r in &batch {
                serde_json::to_writer(&mut out, r)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
            out.get_ref().sync_data()
        })();
        match result {
            Ok(()) => {
                written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                if failing {
                    failing = false;
                    tracing::info!(file = %path.display(), "the audit log is writable again");
                }
            }
            Err(e) => {
                if !failing {
                    failing = true;
                    tracing::error!(file = %path.display(), error = %e, "cannot write the audit log; records are lost until it is writable");
                }
            }
        }
    }
}

/// What `switchyard audit` keeps.
#[derive(Debug, Default)]
pub struct Filter {
    pub identity: Option<String>,
    pub action: Option<String>,
    pub workflow: Option<String>,
    pub result: Option<String>,
    /// RFC 3339: records at or after it.
    pub since: Option<jiff::Timestamp>,
}

impl Filter {
    fn keeps(&self, r: &Record) -> bool {
        let eq = |f: &Option<String>, v: &str| f.as_deref().is_none_or(|f| f == v);
        eq(&self.identity, &r.identity)
            && eq(&self.action, &r.action)
            && eq(&self.workflow, &r.workflow)
            && eq(&self.result, &r.result)
            && self
                .since
                .is_none_or(|s| r.at.parse::<jiff::Timestamp>().is_ok_and(|t| t >= s))
    }
}

/// Reads the audit log, keeping what `filter` keeps; also returns how many
/// lines could not be read (a torn last line after a crash, say).
pub fn read(state_dir: &Path, filter: &Filter) -> Result<(Vec<Record>, usize), String> {
    let path = state_dir.join(FILE);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let (mut out, mut bad) = (Vec::new(), 0usize);
    for line in std::io::BufReader::new(file).lines() {
        let Ok(line) = line else {
            bad += 1;
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(&line) {
            Ok(r) if filter.keeps(&r) => out.push(r),
            Ok(_) => {}
            Err(_) => bad += 1,
        }
    }
    Ok((out, bad))
}

/// `switchyard audit`: prints the kept records as a table or JSON lines.
pub fn command(state_dir: &Path, filter: &Filter, json: bool) -> i32 {
    let (records, bad) = match read(state_dir, filter) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    if bad > 0 {
        eprintln!("{bad} line(s) of the audit log could not be read and were skipped");
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if json {
        for r in &records {
            let _ = serde_json::to_writer(&mut out, r);
            let _ = out.write_all(b"\n");
        }
    } else if records.is_empty() {
        let _ = writeln!(
            out,
            "no audit records{} in {}",
            if state_dir.join(FILE).exists() { " match" } else { "" },
            state_dir.join(FILE).display()
        );
    } else {
        let _ = writeln!(
            out,
            "{:<27} {:<16} {:<20} {:<16} {:<18} {:<38} reason",
            "at", "identity", "action", "workflow", "result", "target"
        );
        for r in &records {
            let _ = writeln!(
                out,
                "{:<27} {:<16} {:<20} {:<16} {:<18} {:<38} {}",
                r.at, r.identity, r.action, r.workflow, r.result, r.target, r.reason
            );
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_appended_synced_and_filtered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = Audit::open(dir.path()).expect("open");
        a.record(Record::new(
            "agent-b",
            "route",
            "restricted",
            "",
            "permission_denied",
            "not allowed",
        ));
        a.record(Record::new(
            "ops",
            "resolve_escalation",
            "w",
            "esc-1",
            "approved",
            "+$5",
        ));
        a.close();
        // Reopening appends; it never truncates.
        let mut a = Audit::open(dir.path()).expect("reopen");
        a.record(Record::new("ops", "rules_reload", "", "rules/", "ok", "sha256 ab"));
        a.close();
        let all = read(dir.path(), &Filter::default()).expect("read").0;
        assert_eq!(all.len(), 3);
        let ops = Filter {
            identity: Some("ops".into()),
            ..Filter::default()
        };
        assert_eq!(read(dir.path(), &ops).expect("read").0.len(), 2);
        let denied = Filter {
            result: Some("permission_denied".into()),
            ..Filter::default()
        };
        let d = read(dir.path(), &denied).expect("read").0;
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].workflow, "restricted");
        // A torn line (a crash mid-write) is skipped and counted.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .expect("file");
        f.write_all(b"{\"at\": \"2026").expect("write");
        let (all, bad) = read(dir.path(), &Filter::default()).expect("read");
        assert_eq!((all.len(), bad), (3, 1));
        let future = Filter {
            since: Some("2100-01-01T00:00:00Z".parse().expect("ts")),
            ..Filter::default()
        };
        assert!(read(dir.path(), &future).expect("read").0.is_empty());
    }
}
