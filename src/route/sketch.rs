//! Where a request's complexity falls in its workflow's traffic: a
//! histogram of scores per workflow, which `top_share` rules read.
//!
//! The score is a probability, so its range is fixed: [`SCORE_BINS`] equal
//! bins hold it to within 1% of score, and two histograms merge by adding
//! their counts. That is what lets every sidecar of a fleet add its counts
//! into one shared histogram per workflow, and what a general-purpose
//! quantile sketch (t-digest, GK, DDSketch) would give up for a range this
//! one does not have.
//!
//! A workflow's histogram starts from the model's own calibration, weighed
//! as [`PRIOR_REQUESTS`](crate::estimate::PRIOR_REQUESTS) requests, so that
//! a `top_share` rule works from the first request; the workflow's own
//! traffic outweighs it after a hundred.
//!
//! Counts are kept per model (its checksum tag): scores of two models are
//! not comparable. Each Route adds one to its bin here; the server's flush
//! task adds the pending counts into the store every few seconds and reads
//! back the merged totals (the fleet's, with a shared store). Counts that
//! fail to reach the store stay pending for the next flush.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::estimate::quantile_in;
use crate::hashing::FastMap;
use crate::understand::{score_bin, Understanding, SCORE_BINS};

/// One workflow's histogram under one model.
struct Sketch {
    /// Counts added here and not yet in the store.
    pending: Vec<AtomicU32>,
    /// The store's totals as last read (including this sidecar's flushed
    /// counts).
    stored: Vec<AtomicU64>,
    /// The sums of `pending` and of `stored`, kept beside them so that a
    /// quantile reads only the bins below its score's.
    pending_total: AtomicU64,
    stored_total: AtomicU64,
}

impl Sketch {
    fn new() -> Sketch {
        Sketch {
            pending: (0..SCORE_BINS).map(|_| AtomicU32::new(0)).collect(),
            stored: (0..SCORE_BINS).map(|_| AtomicU64::new(0)).collect(),
            pending_total: AtomicU64::new(0),
            stored_total: AtomicU64::new(0),
        }
    }

    /// Routes in `bin`, stored and pending.
    fn count(&self, bin: usize) -> u64 {
        u64::from(self.pending[bin].load(Ordering::Relaxed)) + self.stored[bin].load(Ordering::Relaxed)
    }

    /// `(below_twice, seen)` for a score in `bin` (see
    /// [`quantile_in`]). The counts move while they are read; a quantile
    /// a few requests off is as good, and it is clamped to 0..1.
    fn counts_around(&self, bin: usize) -> (u64, u64) {
        let below: u64 = self.pending[..bin]
            .iter()
            .zip(&self.stored[..bin])
            .map(|(p, s)| u64::from(p.load(Ordering::Relaxed)) + s.load(Ordering::Relaxed))
            .sum();
        let seen = self.pending_total.load(Ordering::Relaxed) + self.stored_total.load(Ordering::Relaxed);
        (2 * below + self.count(bin), seen)
    }

    /// The total first: `take_pending` subtracts what it swapped out of the
    /// bins, which is then never more than the total holds.
    fn add_pending(&self, bin: usize, n: u32) {
        self.pending_total.fetch_add(u64::from(n), Ordering::AcqRel);
        self.pending[bin].fetch_add(n, Ordering::AcqRel);
    }
}

/// The histograms of every workflow: model tag -> workflow -> histogram.
/// Two levels, so that a Route finds its own by `&str` in two hash lookups.
#[derive(Default)]
pub struct ScoreSketches {
    by_model: RwLock<FastMap<String, FastMap<String, Arc<Sketch>>>>,
}

/// Counts waiting for the store: (model tag, workflow, count per bin).
pub type Pending = Vec<(String, String, Vec<u32>)>;

impl ScoreSketches {
    pub fn new() -> ScoreSketches {
        ScoreSketches::default()
    }

    fn get(&self, model: &str, workflow: &str) -> Option<Arc<Sketch>> {
        let map = self.by_model.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(model)?.get(workflow).cloned()
    }

    fn get_or_add(&self, model: &str, workflow: &str) -> Arc<Sketch> {
        if let Some(s) = self.get(model, workflow) {
            return s;
        }
        let mut map = self.by_model.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(model.to_string())
            .or_default()
            .entry(workflow.to_string())
            .or_insert_with(|| Arc::new(Sketch::new()))
            .clone()
    }

    /// The share of `workflow`'s traffic scoring below `score`.
    pub fn quantile(&self, model: &Understanding, workflow: &str, score: f64) -> f64 {
        match self.get(model.tag(), workflow) {
            Some(s) => {
                let (below_twice, seen) = s.counts_around(score_bin(score));
                quantile_in(model.prior_below(), score, below_twice, seen)
            }
            None => crate::estimate::prior_quantile(model.prior_below(), score),
        }
    }

    /// Counts one request of `workflow`.
    pub fn observe(&self, model: &Understanding, workflow: &str, score: f64) {
        let s = self.get_or_add(model.tag(), workflow);
        s.add_pending(score_bin(score), 1);
    }

    /// Takes the counts not yet in the store.
    pub fn take_pending(&self) -> Pending {
        let map = self.by_model.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::new();
        for (model, workflows) in map.iter() {
            for (workflow, s) in workflows {
                let counts: Vec<u32> = s.pending.iter().map(|p| p.swap(0, Ordering::AcqRel)).collect();
                let taken: u64 = counts.iter().map(|&c| u64::from(c)).sum();
                s.pending_total.fetch_sub(taken, Ordering::AcqRel);
                if taken > 0 {
                    out.push((model.clone(), workflow.clone(), counts));
                }
            }
        }
        out
    }

    /// Puts back counts the store did not take, for the next flush.
    pub fn restore(&self, pending: Pending) {
        for (model, workflow, counts) in pending {
            let s = self.get_or_add(&model, &workflow);
            for (bin, c) in counts.into_iter().enumerate().take(SCORE_BINS) {
                s.add_pending(bin, c);
            }
        }
    }

    /// Sets the store's totals for a workflow (they include every count
    /// this sidecar flushed).
    pub fn set_stored(&self, model: &str, workflow: &str, totals: &[u64]) {
        let s = self.get_or_add(model, workflow);
        let mut sum = 0u64;
        for (slot, &t) in s.stored.iter().zip(totals) {
            slot.store(t, Ordering::Relaxed);
            sum = sum.saturating_add(t);
        }
        s.stored_total.store(sum, Ordering::Relaxed);
    }

    /// Adds the pending counts into `store` and reads back every workflow's
    /// totals under `table`'s model (the fleet's, with a shared store).
    /// Counts the store does not take stay pending; the first error is
    /// returned after every workflow was tried.
    pub async fn sync(
        &self,
        store: &dyn crate::store::LearningStore,
        table: &crate::rules::RuleTable,
    ) -> Result<(), crate::error::StoreError> {
        let mut failed = Vec::new();
        let mut first_error = None;
        let mut synced: Vec<(String, String)> = Vec::new();
        for (model, workflow, counts) in self.take_pending() {
            match store.merge_score_counts(&workflow, &model, &counts).await {
                Ok(totals) => self.set_stored(&model, &workflow, &totals),
                Err(e) => {
                    first_error.get_or_insert(e);
                    failed.push((model.clone(), workflow.clone(), counts));
                }
            }
            synced.push((model, workflow));
        }
        self.restore(failed);
        let tag = table.understanding.tag();
        for w in &table.workflows {
            if synced.iter().any(|(m, x)| m == tag && x == &w.name) {
                continue;
            }
            match store.merge_score_counts(&w.name, tag, &[]).await {
                Ok(totals) => self.set_stored(tag, &w.name, &totals),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// A workflow's counts as this sidecar sees them (stored plus pending).
    pub fn counts(&self, model: &str, workflow: &str) -> Vec<u64> {
        self.get(model, workflow).map_or_else(
            || vec![0; SCORE_BINS],
            |s| (0..SCORE_BINS).map(|b| s.count(b)).collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Arc<Understanding> {
        Understanding::shipped().expect("the shipped model")
    }

    #[test]
    fn a_workflow_starts_from_the_calibration_and_moves_to_its_own_traffic() {
        let m = model();
        let s = ScoreSketches::new();
        let prior = s.quantile(&m, "w", 0.5);
        assert!((0.05..0.95).contains(&prior), "{prior}");
        // A workflow whose traffic all scores 0.9: 0.5 is soon near the bottom.
        for _ in 0..2_000 {
            s.observe(&m, "w", 0.9);
        }
        let after = s.quantile(&m, "w", 0.5);
        assert!(after < prior && after < 0.15, "{after} vs {prior}");
        assert!(s.quantile(&m, "w", 0.95) > 0.9);
        // Another workflow is untouched.
        assert_eq!(s.quantile(&m, "v", 0.5), prior);
    }

    /// The totals kept beside the bins agree with the bins through every
    /// move: observed, taken, put back, stored.
    #[test]
    fn a_quantile_reads_the_same_as_the_histogram_it_keeps() {
        let m = model();
        let s = ScoreSketches::new();
        let check = |s: &ScoreSketches| {
            let counts = s.counts(m.tag(), "w");
            for score in [0.0, 0.12, 0.31, 0.5, 0.77, 0.999] {
                let (below_twice, seen) = crate::estimate::counts_around(&counts, score);
                let want = quantile_in(m.prior_below(), score, below_twice, seen);
                assert!((s.quantile(&m, "w", score) - want).abs() < 1e-12, "{score}");
            }
        };
        for i in 0..300 {
            s.observe(&m, "w", f64::from(i % 97) / 97.0);
        }
        check(&s);
        let p = s.take_pending();
        check(&s);
        s.restore(p);
        check(&s);
        let p = s.take_pending();
        s.set_stored(
            m.tag(),
            "w",
            &p[0].2.iter().map(|&c| u64::from(c) * 3).collect::<Vec<_>>(),
        );
        s.observe(&m, "w", 0.5);
        check(&s);
    }

    #[test]
    fn pending_counts_move_to_the_store_and_back_when_it_fails() {
        let m = model();
        let s = ScoreSketches::new();
        s.observe(&m, "w", 0.31);
        s.observe(&m, "w", 0.31);
        let p = s.take_pending();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].2[score_bin(0.31)], 2);
        assert!(s.take_pending().is_empty(), "taken once");
        s.restore(p);
        let p = s.take_pending();
        assert_eq!(p[0].2.iter().sum::<u32>(), 2, "a failed flush loses nothing");
        let mut totals = vec![0u64; SCORE_BINS];
        totals[score_bin(0.31)] = 7;
        s.set_stored(m.tag(), "w", &totals);
        assert_eq!(s.counts(m.tag(), "w")[score_bin(0.31)], 7);
    }
}
