//! Settlements Redis acknowledged to this sidecar, kept in `acks.jsonl` in
//! `--state-dir`: how a sidecar notices that Redis lost state, and what
//! `switchyard budget reconcile` rebuilds the counters from.
//!
//! - Redis counts, per workflow, the settlements it charged for each sidecar
//!   (field `a:<sidecar>` of the workflow's epoch record, in the same script
//!   as the charge).
//! - This sidecar appends each charge Redis acknowledged to its journal, and
//!   counts them. Every reservation, settlement and renewal sends that count;
//!   the script refuses (and marks the workflow's state lost for every
//!   sidecar) if Redis holds fewer: it came back without writes it had
//!   acknowledged, after a failover or a restart without persistence.
//! - The journal folds into per-scope sums of spend, so reconcile can set
//!   each counter to at least what the fleet's journals add up to.
//!
//! A line is `{"w": workflow, "s": [scopes], "c": cost, "n": count, "t": ms}`.
//! The file is compacted to one line per scope and per workflow once it has
//! grown by 10,000 lines; scopes untouched for 40 days are dropped then.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::super::StoreError;

const COMPACT_EVERY: usize = 10_000;
const KEEP_IDLE_MS: i64 = 40 * 24 * 3600 * 1000;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Line {
    w: String,
    #[serde(default)]
    s: Vec<String>,
    #[serde(default)]
    c: i64,
    #[serde(default)]
    n: u64,
    #[serde(default)]
    t: i64,
}

/// What a journal adds up to.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Folded {
    /// Settlements acknowledged, per workflow.
    pub counts: BTreeMap<String, u64>,
    /// Spend acknowledged, per scope: (nano-dollars, workflow, last ms).
    pub sums: BTreeMap<String, (i64, String, i64)>,
}

impl Folded {
    fn add(&mut self, l: &Line) {
        if l.n > 0 {
            *self.counts.entry(l.w.clone()).or_default() += l.n;
        }
        for s in &l.s {
            let e = self.sums.entry(s.clone()).or_insert((0, l.w.clone(), 0));
            e.0 = e.0.saturating_add(l.c);
            e.2 = e.2.max(l.t);
        }
    }
}

/// Reads a journal (a torn last line from a crash is skipped).
pub fn fold_file(path: &Path) -> Result<Folded, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut f = Folded::default();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match serde_json::from_str::<Line>(line) {
            Ok(l) => f.add(&l),
            Err(e) => tracing::warn!(file = %path.display(), line = i + 1, error = %e, "skipping an unreadable line"),
        }
    }
    Ok(f)
}

/// This sidecar's journal of acknowledged settlements.
pub(super) struct Acks {
    path: PathBuf,
    /// Open for appending, so that a settlement costs one write, not an
    /// open as well; reopened after a compaction replaces the file.
    file: Option<std::fs::File>,
    folded: Folded,
    lines: usize,
}

impl Acks {
    /// No journal: counts stay at zero, nothing is written (the read-only
    /// tools).
    pub(super) fn none() -> Acks {
        Acks {
            path: PathBuf::new(),
            file: None,
            folded: Folded::default(),
            lines: 0,
        }
    }

    pub(super) fn load(path: PathBuf) -> Result<Acks, StoreError> {
        let folded = if path.exists() {
            fold_file(&path).map_err(StoreError::Unavailable)?
        } else {
            Folded::default()
        };
        Ok(Acks {
            path,
            file: None,
            folded,
            lines: 0,
        })
    }

    /// Settlements of `workflow` Redis acknowledged to this sidecar.
    pub(super) fn count(&self, workflow: &str) -> u64 {
        self.folded.counts.get(workflow).copied().unwrap_or(0)
    }

    /// Records `n` settlements Redis just acknowledged, costing `cost` on
    /// each of `scopes`, in the file and then in the counts.
    pub(super) fn record(&mut self, workflow: &str, scopes: &[String], cost: i64, n: u64, now_ms: i64) {
        if self.path.as_os_str().is_empty() || n == 0 {
            return;
        }
        let line = Line {
            w: workflow.to_string(),
            s: scopes.to_vec(),
            c: cost,
            n,
            t: now_ms,
        };
        let written = serde_json::to_string(&line)
            .map_err(std::io::Error::other)
            .and_then(|mut text| {
                text.push('\n');
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?
                    .write_all(text.as_bytes())
            });
        if let Err(e) = written {
            self.file = None;
            // Not counted either: the check stays sound (Redis may hold
            // more than the journal says, never less), but reconcile cannot
            // restore this charge from this file.
            tracing::warn!(file = %self.path.display(), error = %e, "cannot journal an acknowledged settlement");
            return;
        }
        self.folded.add(&line);
        self.lines += 1;
        if self.lines >= COMPACT_EVERY {
            self.compact(now_ms);
        }
    }

    /// Rewrites the file as its sums, atomically.
    fn compact(&mut self, now_ms: i64) {
        self.lines = 0;
        self.folded.sums.retain(|_, (_, _, t)| now_ms - *t < KEEP_IDLE_MS);
        let mut text = String::new();
        for (w, n) in &self.folded.counts {
            let l = Line {
                w: w.clone(),
                s: vec![],
                c: 0,
                n: *n,
                t: now_ms,
            };
            text.push_str(&serde_json::to_string(&l).unwrap_or_default());
            text.push('\n');
        }
        for (s, (c, w, t)) in &self.folded.sums {
            let l = Line {
                w: w.clone(),
                s: vec![s.clone()],
                c: *c,
                n: 0,
                t: *t,
            };
            text.push_str(&serde_json::to_string(&l).unwrap_or_default());
            text.push('\n');
        }
        self.file = None;
        let tmp = self.path.with_extension("jsonl.tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.path)) {
            tracing::warn!(file = %self.path.display(), error = %e, "cannot compact the journal of acknowledged settlements; it keeps growing until it can");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_folds_to_the_same_sums_before_and_after_compaction() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("acks.jsonl");
        let mut a = Acks::load(path.clone()).expect("load");
        for i in 0..(COMPACT_EVERY as i64 + 10) {
            a.record("w", &["w|day|x".into(), "w|outcome|o".into()], i, 1, 1_000);
        }
        a.record("v", &["v|day|x".into()], 5, 2, 1_000);
        let expect: i64 = (0..(COMPACT_EVERY as i64 + 10)).sum();
        let f = fold_file(&path).expect("fold");
        assert_eq!(f.counts["w"], COMPACT_EVERY as u64 + 10);
        assert_eq!(f.counts["v"], 2);
        assert_eq!(f.sums["w|day|x"].0, expect);
        assert_eq!(f.sums["w|outcome|o"].0, expect);
        assert!(
            std::fs::read_to_string(&path).expect("read").lines().count() < 20,
            "compacted"
        );
        // A torn last line is skipped.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"w\":\"w\",\"s\":[\"w|da"))
            .expect("append");
        assert_eq!(fold_file(&path).expect("fold").counts["w"], COMPACT_EVERY as u64 + 10);
        assert_eq!(Acks::load(path).expect("load").count("w"), COMPACT_EVERY as u64 + 10);
    }
}
