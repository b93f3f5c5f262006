//! Settlements that could not reach Redis, kept in an append-only file in
//! `--state-dir` before they are acknowledged, and replayed in order when
//! Redis answers again. Settlements are idempotent by decision ID, so a
//! replay never counts a call twice.

use std::io::Write as _;
use std::path::PathBuf;

use super::super::{NewReservation, StoreError, Usage};

/// A settlement that could not reach Redis yet.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct PendingSettle {
    pub(super) decision_id: String,
    pub(super) cost_nanos: i64,
    pub(super) usage: Usage,
    pub(super) now_ms: i64,
    /// The decision as this sidecar made it, when it still knew it.
    pub(super) record: Option<NewReservation>,
}

/// Settlements waiting for Redis, mirrored in an append-only file so that a
/// crash during an outage loses none of them.
pub(super) struct Journal {
    pub(super) path: PathBuf,
    pub(super) pending: Vec<PendingSettle>,
}

impl Journal {
    pub(super) fn load(path: PathBuf) -> Result<Journal, StoreError> {
        let mut pending = Vec::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                    match serde_json::from_str::<PendingSettle>(line) {
                        Ok(p) => pending.push(p),
                        // A torn last line from a crash mid-append: that
                        // report was never acknowledged.
                        Err(e) => {
                            tracing::warn!(file = %path.display(), line = i + 1, error = %e, "skipping an unreadable journal line")
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot read the Redis journal {}: {e}",
                    path.display()
                )))
            }
        }
        Ok(Journal { path, pending })
    }

    /// Appends one settlement; it is in the file before this returns.
    pub(super) fn append(&mut self, p: PendingSettle) -> Result<(), StoreError> {
        let fail = |e: std::io::Error| {
            StoreError::Unavailable(format!(
                "Redis is unreachable and the journal {} cannot be written: {e}",
                self.path.display()
            ))
        };
        let mut line = serde_json::to_string(&p).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        line.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(fail)?;
        f.write_all(line.as_bytes()).map_err(fail)?;
        self.pending.push(p);
        Ok(())
    }

    /// Rewrites the file to hold exactly `pending` (atomically, by rename).
    pub(super) fn rewrite(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut text = String::new();
        for p in &self.pending {
            text.push_str(&serde_json::to_string(p).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }
}
