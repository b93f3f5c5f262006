//! The learned model: what it holds, how a label moves it, what Route reads
//! from it, and the tier choice.
//!
//! **Each tier** of a workflow has a logistic model of P(accepted) with a
//! diagonal Gaussian posterior over its weights (the Laplace approximation,
//! updated one label at a time): a mean and a precision per weight, every
//! weight starting at N(0, 1/[`Q0`]). A label moves a weight by its error
//! over its precision, so a weight that has seen little moves far and a
//! well-known one barely moves; the precision is also what makes the model's
//! uncertainty about a request known.
//!
//! **The prior is a feature**, the logit of the rule table's complexity
//! score, and **each tier reads the logit of the tier below it**: a stronger
//! tier's model learns what it adds over the weaker one's prediction, which
//! is learned from every call the weaker tier answers. That is how the gain
//! of a stronger tier is learned from few labels at that tier. A retry
//! after a rejection one tier down (a cascade pair) has its own weight.
//!
//! **The evidence gate** keeps the learned score at the prior until labels
//! show that the model predicts them better than the prior alone does; the
//! score is then the prior and the learned gain, blended by the gate. Each
//! label is first predicted both by the model and by a three-weight model
//! of the prior (bias, retry, the prior's logit); the difference of their
//! log-losses is summed, and its z-score opens the gate from 0 to 1. With no
//! labels, or with labels that are noise, the gate stays shut: the score
//! ranks requests exactly as the complexity score does, and the rules decide.
//!
//! **Exploration** is scaled by doubt: a call explores with probability
//! `exploration × d`, where d is how likely, under the posterior, the
//! model's choice for this request is to be wrong (for each test the choice
//! makes of a tier, twice the probability that it comes out the other way),
//! and then goes to another tier in proportion to that tier's doubt. A
//! request far from every boundary rarely explores; a tier that has learned
//! nothing, or sits near the target, is explored at up to the cap. Every
//! choice carries its propensity, the probability that this policy made it.

mod choice;
pub use choice::*;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use super::{Features, LearnEvent, RETRY, TIERS};
use crate::rules::Learning;

/// A weight's prior precision: every weight starts as N(0, 1/Q0).
const Q0: f32 = 2.0;
/// Weights are kept within this: a logit of 30 is certainty in f32.
const LIMIT: f32 = 30.0;
/// The gate opens from a z-score of `GATE_FROM` and is fully open `GATE_SPAN` later.
const GATE_FROM: f64 = 0.0;
const GATE_SPAN: f64 = 1.0;
/// The gate weighs recent labels most: each label's evidence decays by this
/// per later label (a memory of about a thousand labels), so a model that
/// started badly, or a workflow whose traffic changed, is judged on now.
const GATE_DECAY: f64 = 0.999;

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z.clamp(-30.0, 30.0)).exp())
}

/// Twice the probability that a normal variable with this mean and
/// standard deviation has the other sign: 1 at the boundary, 0 far from it.
/// Φ is taken as the logistic σ(1.702 x), within 0.01 of it everywhere.
fn flip(margin: f64, sd: f64) -> f64 {
    if sd <= 0.0 {
        return 0.0;
    }
    2.0 * sigmoid(-1.702 * margin.abs() / sd)
}

/// The log-loss of predicting `p` for `label` (0 to 1).
fn log_loss(p: f64, label: f64) -> f64 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    -(label * p.ln() + (1.0 - label) * (1.0 - p).ln())
}

/// The logistic model of one workflow's tier. Only the weights a label has
/// moved are kept (a weight never moved is its prior mean, 0, with the prior
/// precision), so a tier costs memory in proportion to what it learned:
/// about 16 bytes a weight, a few KiB a label at first, never more than
/// [`BUCKETS`] weights.
struct TierModel {
    /// Bucket -> (posterior mean, precision gained from labels; a weight's
    /// posterior precision is [`Q0`] plus this). Route reads under the read
    /// lock while the one writer updates under the write lock.
    weights: RwLock<crate::hashing::FastMap<u32, Weight>>,
    seen: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Weight {
    mean: f32,
    gained: f32,
}

/// What one kept weight costs, with the map's own share.
pub const WEIGHT_BYTES: usize = 16;

impl TierModel {
    fn new() -> TierModel {
        TierModel {
            weights: RwLock::new(Default::default()),
            seen: AtomicU64::new(0),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, crate::hashing::FastMap<u32, Weight>> {
        self.weights.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn mean(&self, i: u32) -> f32 {
        self.read().get(&i).map_or(0.0, |w| w.mean)
    }

    fn logit(&self, f: &Features, retry: bool, below: f32) -> f32 {
        let w = self.read();
        logit_of(&w, f, retry, below)
    }

    /// The logit of a first attempt and its posterior variance.
    fn moments(&self, f: &Features, below: f32) -> (f32, f32) {
        let w = self.read();
        let (mut z, mut var) = (0f32, 0f32);
        f.each(false, below, |i, v| {
            let k = w.get(&(i as u32)).copied().unwrap_or_default();
            z += k.mean * v;
            var += v * v / (Q0 + k.gained);
        });
        (z, var)
    }

    /// Weights kept.
    fn len(&self) -> usize {
        self.read().len()
    }

    /// One label, by the one writer ([`Learner`]'s lock); the weights it added.
    fn update(&self, f: &Features, retry: bool, below: f32, label: f32) -> usize {
        let mut w = self.weights.write().unwrap_or_else(PoisonError::into_inner);
        let before = w.len();
        let p = sigmoid(logit_of(&w, f, retry, below) as f64) as f32;
        let (err, curvature) = (p - label, p * (1.0 - p));
        f.each(retry, below, |i, v| {
            let k = w.entry(i as u32).or_default();
            let precision = Q0 + k.gained + curvature * v * v;
            k.gained = precision - Q0;
            k.mean = (k.mean - err * v / precision).clamp(-LIMIT, LIMIT);
        });
        self.seen.fetch_add(1, Ordering::Relaxed);
        w.len() - before
    }
}

fn logit_of(w: &crate::hashing::FastMap<u32, Weight>, f: &Features, retry: bool, below: f32) -> f32 {
    let mut z = 0f32;
    f.each(retry, below, |i, v| z += w.get(&(i as u32)).map_or(0.0, |k| k.mean) * v);
    z
}

/// The prior alone, per tier: bias, retry and the prior's logit, the
/// baseline the gate holds the model to.
#[derive(Default, Clone, Copy)]
struct Baseline {
    mean: [f32; 3],
    gained: [f32; 3],
}

impl Baseline {
    fn inputs(f: &Features, retry: bool) -> [f32; 3] {
        [1.0, f32::from(u8::from(retry)), f.prior_logit()]
    }

    fn predict(&self, x: &[f32; 3]) -> f64 {
        sigmoid(self.mean.iter().zip(x).map(|(m, v)| m * v).sum::<f32>() as f64)
    }

    fn update(&mut self, x: &[f32; 3], label: f32) {
        let p = self.predict(x) as f32;
        for ((m, g), v) in self.mean.iter_mut().zip(&mut self.gained).zip(x) {
            *g += p * (1.0 - p) * v * v;
            *m -= (p - label) * v / (Q0 + *g);
        }
    }
}

/// The evidence gate's running sums.
#[derive(Default)]
struct GateSums {
    baseline: [Baseline; TIERS],
    /// Σ and Σ² of (baseline's log-loss − the model's), each label predicted
    /// before either learned from it.
    sum: f64,
    sum_sq: f64,
}

impl GateSums {
    /// The gate, 0 (the prior alone) to 1 (the learned score alone).
    fn weight(&self) -> f64 {
        if self.sum_sq <= 0.0 {
            return 0.0;
        }
        ((self.sum / self.sum_sq.sqrt() - GATE_FROM) / GATE_SPAN).clamp(0.0, 1.0)
    }
}

#[derive(Default)]
struct WorkflowModel {
    /// Seconds after the learner started that Route or a label last used it.
    last_used: AtomicU64,
    tiers: [OnceLock<TierModel>; TIERS],
    /// [`GateSums::weight`] as f32 bits, for Route.
    gate: AtomicU32,
    sums: Mutex<GateSums>,
}

impl WorkflowModel {
    /// Calls `each(tier, model, below)` for every tier below `upto` that has
    /// learned, in ascending order, with the first-attempt logit of the
    /// nearest such tier beneath it (0 for the lowest).
    fn chain(&self, upto: usize, mut each: impl FnMut(usize, &TierModel, f32) -> f32) -> f32 {
        let mut below = 0f32;
        for (t, m) in self.tiers.iter().enumerate().take(upto) {
            if let Some(m) = m.get() {
                below = each(t, m, below);
            }
        }
        below
    }

    /// The logit `tier`'s model reads as the tier below.
    fn below(&self, tier: usize, f: &Features) -> f32 {
        self.chain(tier, |_, m, below| m.logit(f, false, below))
    }

    fn gate(&self) -> f64 {
        f64::from(f32::from_bits(self.gate.load(Ordering::Relaxed)))
    }
}

/// Every workflow's models, within a ceiling on the weights held: past it,
/// the workflows used least lately are evicted (their labelled calls stay
/// in the store) and folded in again from the store when Route next wants
/// them.
pub struct Learner {
    workflows: RwLock<crate::hashing::FastMap<String, Arc<WorkflowModel>>>,
    /// One writer at a time: labels are folded in the store's order.
    write: Mutex<()>,
    started: std::time::Instant,
    /// Weights held over all workflows, and the most that may be.
    held: std::sync::atomic::AtomicUsize,
    ceiling: std::sync::atomic::AtomicUsize,
    /// Evicted workflows, and those of them Route asked for since.
    evicted: Mutex<std::collections::HashSet<String>>,
    wanted: Mutex<std::collections::HashSet<String>>,
    any_evicted: std::sync::atomic::AtomicBool,
    evictions: AtomicU64,
}

impl Default for Learner {
    fn default() -> Learner {
        Learner {
            workflows: Default::default(),
            write: Mutex::new(()),
            started: std::time::Instant::now(),
            held: Default::default(),
            ceiling: std::sync::atomic::AtomicUsize::new(usize::MAX),
            evicted: Default::default(),
            wanted: Default::default(),
            any_evicted: Default::default(),
            evictions: AtomicU64::new(0),
        }
    }
}

/// What the learner holds in memory, for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Held {
    pub bytes: u64,
    pub ceiling_bytes: u64,
    pub workflows: u64,
    pub evicted_workflows: u64,
    pub evictions_total: u64,
}

/// What [`Learner::skip_evicted`] says of a workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    No,
    Yes,
    /// Wanted again: fold its labels from the oldest kept.
    Refold,
}

/// What the model predicts for one tier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierPrediction {
    /// P(accepted) on a first attempt.
    pub p: f64,
    /// P(accepted) after a rejected attempt one tier down.
    pub p_retry: f64,
    /// The posterior standard deviation of `p` (by the delta method: the
    /// logit's, times p(1 − p)).
    pub sd: f64,
    /// Labelled calls the tier has learned from.
    pub seen: u64,
    /// How unsure the model is of this tier's part in the choice, 0 to 1
    /// (set by [`Learned::gather`]): exploration goes to the most doubtful.
    pub doubt: f64,
}

impl TierPrediction {
    /// A tier that has learned nothing: even odds, and as unsure as the prior.
    fn cold(f: &Features) -> TierPrediction {
        let mut var = 0f32;
        f.each(false, 0.0, |_, v| var += v * v / Q0);
        TierPrediction {
            p: 0.5,
            p_retry: 0.5,
            sd: 0.25 * f64::from(var.sqrt()),
            seen: 0,
            doubt: 1.0,
        }
    }
}

impl Learner {
    pub fn new() -> Learner {
        Learner::default()
    }

    /// A learner that holds at most `bytes` of weights in memory.
    pub fn with_ceiling(bytes: u64) -> Learner {
        let l = Learner::default();
        let weights = usize::try_from(bytes / WEIGHT_BYTES as u64).unwrap_or(usize::MAX);
        l.ceiling.store(weights.max(1), Ordering::Relaxed);
        l
    }

    fn now_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn workflow(&self, name: &str) -> Option<Arc<WorkflowModel>> {
        let found = self
            .workflows
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned();
        match &found {
            Some(wf) => {
                // Written only when the second changes: Routes on every core
                // would otherwise contend for the line.
                let now = self.now_s();
                if wf.last_used.load(Ordering::Relaxed) != now {
                    wf.last_used.store(now, Ordering::Relaxed);
                }
            }
            None if self.any_evicted.load(Ordering::Relaxed)
                && self
                    .evicted
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains(name) =>
            {
                self.wanted
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(name.to_string());
            }
            None => {}
        }
        found
    }

    /// Whether `workflow` is evicted and should not be folded now: false once
    /// Route wanted it, which lifts the eviction (its labels are then folded
    /// again from the oldest the store keeps; the caller restarts its cursor).
    pub fn skip_evicted(&self, workflow: &str) -> Skip {
        if !self.any_evicted.load(Ordering::Relaxed) {
            return Skip::No;
        }
        let mut evicted = self.evicted.lock().unwrap_or_else(PoisonError::into_inner);
        if !evicted.contains(workflow) {
            return Skip::No;
        }
        if self
            .wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(workflow)
        {
            evicted.remove(workflow);
            self.any_evicted.store(!evicted.is_empty(), Ordering::Relaxed);
            return Skip::Refold;
        }
        Skip::Yes
    }

    /// What the learner holds.
    pub fn held(&self) -> Held {
        let weights = self.held.load(Ordering::Relaxed) as u64;
        let ceiling = self.ceiling.load(Ordering::Relaxed) as u64;
        Held {
            bytes: weights * WEIGHT_BYTES as u64,
            ceiling_bytes: ceiling.saturating_mul(WEIGHT_BYTES as u64),
            workflows: self.workflows.read().unwrap_or_else(PoisonError::into_inner).len() as u64,
            evicted_workflows: self.evicted.lock().unwrap_or_else(PoisonError::into_inner).len() as u64,
            evictions_total: self.evictions.load(Ordering::Relaxed),
        }
    }

    /// Evicts the workflows used least lately, other than `keep`, until the
    /// weights held are within nine tenths of the ceiling.
    fn evict_over_ceiling(&self, keep: &str) {
        let ceiling = self.ceiling.load(Ordering::Relaxed);
        if self.held.load(Ordering::Relaxed) <= ceiling {
            return;
        }
        let target = ceiling / 10 * 9;
        let mut map = self.workflows.write().unwrap_or_else(PoisonError::into_inner);
        let mut by_age: Vec<(u64, String, usize)> = map
            .iter()
            .filter(|(name, _)| name.as_str() != keep)
            .map(|(name, wf)| {
                let weights = wf.tiers.iter().filter_map(OnceLock::get).map(TierModel::len).sum();
                (wf.last_used.load(Ordering::Relaxed), name.clone(), weights)
            })
            .collect();
        by_age.sort();
        let mut evicted = self.evicted.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, name, weights) in by_age {
            if self.held.load(Ordering::Relaxed) <= target {
                break;
            }
            map.remove(&name);
            self.held.fetch_sub(weights, Ordering::Relaxed);
            self.evictions.fetch_add(1, Ordering::Relaxed);
            evicted.insert(name);
        }
        self.any_evicted.store(!evicted.is_empty(), Ordering::Relaxed);
    }

    /// The prediction for `tier` of `workflow`, or `None` if that tier has
    /// learned nothing yet.
    pub fn predict(&self, workflow: &str, tier: u8, f: &Features) -> Option<TierPrediction> {
        let wf = self.workflow(workflow)?;
        let t = tier as usize;
        let m = wf.tiers.get(t)?.get()?;
        let below = wf.below(t, f);
        Some(predict(m, f, below).0)
    }

    /// The evidence gate of `workflow`: 0 while its labels have not shown
    /// the model to predict better than the prior, up to 1.
    pub fn gate(&self, workflow: &str) -> f64 {
        self.workflow(workflow).map_or(0.0, |wf| wf.gate())
    }

    /// Folds in one labelled call.
    pub fn apply(&self, e: &LearnEvent) {
        let t = e.tier as usize;
        if t >= TIERS {
            return;
        }
        let _one_writer = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let wf = match self.workflow(&e.workflow) {
            Some(wf) => wf,
            None => self
                .workflows
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(e.workflow.clone())
                .or_default()
                .clone(),
        };
        let below = wf.below(t, &e.features);
        let m = wf.tiers[t].get_or_init(TierModel::new);
        let label = e.label.clamp(0.0, 1.0);
        // The gate scores both predictions before either learns the label.
        let ours = sigmoid(m.logit(&e.features, e.retry, below) as f64);
        let mut sums = wf.sums.lock().unwrap_or_else(PoisonError::into_inner);
        let x = Baseline::inputs(&e.features, e.retry);
        let theirs = sums.baseline[t].predict(&x);
        let d = log_loss(theirs, label as f64) - log_loss(ours, label as f64);
        sums.sum = sums.sum * GATE_DECAY + d;
        sums.sum_sq = sums.sum_sq * GATE_DECAY + d * d;
        sums.baseline[t].update(&x, label);
        wf.gate.store((sums.weight() as f32).to_bits(), Ordering::Relaxed);
        drop(sums);
        let added = m.update(&e.features, e.retry, below, label);
        wf.last_used.store(self.now_s(), Ordering::Relaxed);
        self.held.fetch_add(added, Ordering::Relaxed);
        self.evict_over_ceiling(&e.workflow);
    }

    /// Labelled calls learned, per workflow and tier (for metrics and `explain`).
    pub fn seen(&self) -> Vec<(String, u8, u64)> {
        let map = self.workflows.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::new();
        for (name, wf) in map.iter() {
            for (t, m) in wf.tiers.iter().enumerate() {
                if let Some(m) = m.get() {
                    out.push((name.clone(), t as u8, m.seen.load(Ordering::Relaxed)));
                }
            }
        }
        out.sort();
        out
    }
}

/// The prediction of `m` for a request, and its first-attempt logit (what
/// the tier above reads).
fn predict(m: &TierModel, f: &Features, below: f32) -> (TierPrediction, f32) {
    let (z, var) = m.moments(f, below);
    let p = sigmoid(z as f64);
    let prediction = TierPrediction {
        p,
        p_retry: sigmoid((z + m.mean(RETRY)) as f64),
        sd: p * (1.0 - p) * f64::from(var.sqrt()),
        seen: m.seen.load(Ordering::Relaxed),
        doubt: 0.0,
    };
    (prediction, z)
}
