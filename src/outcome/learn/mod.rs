//! Learning from outcomes: for each workflow and tier, an online logistic
//! model of P(accepted | request features, tier).
//!
//! - [`Features`]: what a request looks like to the model: the complexity
//!   features, hashed word unigrams and bigrams, the task kind, and length
//!   and digit buckets. Only hashed bucket numbers and counts, never text.
//! - [`Learner`]: the weights. Route reads them without a lock (relaxed
//!   atomics); updates are applied by one task, off the hot path, in the
//!   order the store holds the learning events, so every sidecar that reads
//!   the same events holds the same model.
//! - [`choose`]: the pure tier choice `decide` makes from the predictions:
//!   the cheapest tier whose predicted acceptance meets the workflow's
//!   target; if none does, the cheapest tier within `min_gain` of the best.
//!
//! The update is AdaGrad on the logistic loss: each weight has its own step
//! size, large while it has seen little, so a new task kind or word moves the
//! model after a few examples and a common one settles.

pub mod online;

pub use online::{Folded, Online, RoutedCall};

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use crate::estimate::Features as Complexity;
use crate::rules::{Learning, MAX_TIER};

/// Hash buckets per tier model (2^18 = 262,144 weights, 1 MiB each of
/// weights and of AdaGrad sums).
pub const BUCKETS: usize = 1 << 18;
const MASK: u64 = (BUCKETS as u64) - 1;
/// Fixed slots below the hashed range: the bias, the nine complexity
/// features, and the retry flag.
const BIAS: u32 = 0;
const DENSE: u32 = 1;
const RETRY: u32 = 10;
const FIXED: u64 = 16;
/// Words read from a request's user messages, newest first.
pub const MAX_WORDS: usize = 256;
/// The base step size of the AdaGrad update.
const LEARNING_RATE: f32 = 0.2;
const TIERS: usize = MAX_TIER as usize + 1;

/// A request as the model sees it. `grams` share one value, `1/sqrt(n)`, so
/// that a long prompt weighs no more than a short one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Features {
    /// Buckets valued 1: the task kind, the length bucket, the digit bucket.
    pub ones: Vec<u32>,
    /// The complexity features, 0 to 1, in `Complexity` field order.
    pub dense: [f32; 9],
    /// Sorted, distinct buckets of the word unigrams and bigrams.
    pub grams: Vec<u32>,
}

/// The bucket of a feature hash `h` of a given kind: MurmurHash3's 64-bit
/// finalizer spreads the bits, then the hashed range is indexed.
fn bucket(kind: u8, h: u64) -> u32 {
    let mut z = h ^ (kind as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    z = (z ^ (z >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^= z >> 33;
    (FIXED + z % (MASK + 1 - FIXED)) as u32
}

fn named(kind: u8, name: &str) -> u32 {
    bucket(kind, xxhash_rust::xxh3::xxh3_64(name.as_bytes()))
}

thread_local! {
    /// Each thread's buffers for gathering and sorting a request's buckets.
    /// Features keep an exact-size copy: learning holds a routed call's
    /// features for up to a day, and a buffer sized for a long request (1 KiB
    /// or more) held for each of 200,000 calls was most of the server's memory.
    static GRAMS: std::cell::RefCell<(Vec<u32>, Vec<u32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// `named(kind, "{prefix}{n}")` for `n` below 100, written on the stack.
fn numbered(kind: u8, prefix: &[u8; 3], n: u32) -> u32 {
    debug_assert!(n < 100, "a log2 of a count is at most 64");
    let mut name = [
        prefix[0],
        prefix[1],
        prefix[2],
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ];
    let bytes: &[u8] = if n < 10 {
        name[3] = name[4];
        &name[..4]
    } else {
        &name
    };
    bucket(kind, xxhash_rust::xxh3::xxh3_64(bytes))
}

/// Sorts bucket numbers (all below 2^18) with two passes of a nine-bit
/// radix sort: a request's few hundred buckets took a comparison sort about
/// forty thousand instructions and a mispredicted branch per comparison.
/// `out` is scratch space.
fn sort_buckets(v: &mut Vec<u32>, out: &mut Vec<u32>) {
    const _: () = assert!(BUCKETS <= 1 << 18, "two nine-bit passes cover 18 bits");
    if v.len() <= 32 {
        v.sort_unstable();
        return;
    }
    out.clear();
    out.resize(v.len(), 0);
    for shift in [0, 9] {
        let mut start = [0u32; 512];
        for &x in v.iter() {
            start[(x >> shift & 511) as usize] += 1;
        }
        let mut sum = 0;
        for s in start.iter_mut() {
            (*s, sum) = (sum, sum + *s);
        }
        for &x in v.iter() {
            let digit = (x >> shift & 511) as usize;
            out[start[digit] as usize] = x;
            start[digit] += 1;
        }
        std::mem::swap(v, out);
    }
}

impl Features {
    /// Extracts the features of a request from its texts (the user's
    /// messages, newest first), its task kind and its complexity features.
    pub fn extract<'a>(texts: impl Iterator<Item = &'a str>, task_kind: &str, cx: &Complexity) -> Features {
        GRAMS.with(|scratch| {
            let (grams, spare) = &mut *scratch.borrow_mut();
            grams.clear();
            Features::extract_into(grams, spare, texts, task_kind, cx)
        })
    }

    /// [`Features::extract`], gathering the buckets in `grams` (empty) and
    /// sorting with `spare`; the features keep an exact-size copy.
    fn extract_into<'a>(
        grams: &mut Vec<u32>,
        spare: &mut Vec<u32>,
        texts: impl Iterator<Item = &'a str>,
        task_kind: &str,
        cx: &Complexity,
    ) -> Features {
        let (mut words, mut digits) = (0usize, 0u32);
        'texts: for text in texts {
            let mut prev: Option<u64> = None;
            let b = text.as_bytes();
            let mut i = 0;
            while i < b.len() {
                let c = b[i];
                if !(c.is_ascii_alphanumeric() || c >= 0x80) {
                    i += 1;
                    continue;
                }
                // One word: ASCII letters folded to lower case, digits, and
                // any non-ASCII bytes (so other scripts make words too).
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] >= 0x80) {
                    digits += u32::from(b[i].is_ascii_digit());
                    h = (h ^ b[i].to_ascii_lowercase() as u64).wrapping_mul(0x0100_0000_01b3);
                    i += 1;
                }
                grams.push(bucket(1, h));
                if let Some(p) = prev {
                    grams.push(bucket(2, p.rotate_left(17) ^ h));
                }
                prev = Some(h);
                words += 1;
                if words >= MAX_WORDS {
                    break 'texts;
                }
            }
        }
        sort_buckets(grams, spare);
        grams.dedup();
        let log2 = |n: usize| usize::BITS - n.leading_zeros();
        Features {
            ones: vec![
                named(3, task_kind),
                numbered(4, b"len", log2(words)),
                numbered(5, b"dig", log2(digits as usize)),
            ],
            dense: [
                cx.length as f32,
                cx.code as f32,
                cx.math as f32,
                cx.multi_step as f32,
                cx.constraints as f32,
                cx.reasoning as f32,
                cx.questions as f32,
                cx.structured as f32,
                cx.task_prior as f32,
            ],
            grams: grams.to_vec(),
        }
    }

    fn gram_value(&self) -> f32 {
        1.0 / (self.grams.len().max(1) as f32).sqrt()
    }

    /// Every (bucket, value) pair, the bias included and the retry flag if set.
    fn each(&self, retry: bool, mut f: impl FnMut(usize, f32)) {
        f(BIAS as usize, 1.0);
        if retry {
            f(RETRY as usize, 1.0);
        }
        for (i, v) in self.dense.iter().enumerate() {
            if *v != 0.0 {
                f(DENSE as usize + i, *v);
            }
        }
        for &i in &self.ones {
            f(i as usize, 1.0);
        }
        let g = self.gram_value();
        for &i in &self.grams {
            f(i as usize, g);
        }
    }

    /// A compact little-endian encoding for the store.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.ones.len() as u8);
        for i in &self.ones {
            out.extend_from_slice(&i.to_le_bytes());
        }
        for v in &self.dense {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.grams.len() as u32).to_le_bytes());
        for i in &self.grams {
            out.extend_from_slice(&i.to_le_bytes());
        }
    }

    /// Decodes [`Features::encode`]'s bytes; `None` if they are damaged.
    pub fn decode(b: &[u8]) -> Option<Features> {
        let mut r = Reader(b);
        let n = r.byte()? as usize;
        let ones = (0..n).map(|_| r.u32()).collect::<Option<Vec<_>>>()?;
        let mut dense = [0f32; 9];
        for v in &mut dense {
            *v = f32::from_bits(r.u32()?);
        }
        let n = r.u32()? as usize;
        if n > r.0.len() / 4 {
            return None;
        }
        let grams = (0..n).map(|_| r.u32()).collect::<Option<Vec<_>>>()?;
        let valid = |i: &u32| (*i as usize) < BUCKETS;
        (r.0.is_empty() && ones.iter().all(valid) && grams.iter().all(valid) && dense.iter().all(|v| v.is_finite()))
            .then_some(Features { ones, dense, grams })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_at_checked(4)?;
        self.0 = rest;
        Some(u32::from_le_bytes(head.try_into().ok()?))
    }
}

/// One labelled call: the unit the store keeps and every sidecar folds in.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnEvent {
    pub workflow: String,
    pub tier: u8,
    /// The call came after a rejected attempt.
    pub retry: bool,
    /// 1 accepted, 0 rejected, 0.5 accepted after a person corrected it.
    pub label: f32,
    pub features: Features,
}

impl LearnEvent {
    /// The features and flags, encoded (the workflow is stored beside it).
    pub fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 4 * self.features.grams.len());
        out.push(self.tier);
        out.push(u8::from(self.retry));
        out.extend_from_slice(&self.label.to_le_bytes());
        self.features.encode(&mut out);
        out
    }

    pub fn decode_body(workflow: &str, b: &[u8]) -> Option<LearnEvent> {
        let mut r = Reader(b);
        let tier = r.byte()?;
        let retry = r.byte()? != 0;
        let label = f32::from_bits(r.u32()?);
        if !(0.0..=1.0).contains(&label) || tier > MAX_TIER {
            return None;
        }
        Some(LearnEvent {
            workflow: workflow.to_string(),
            tier,
            retry,
            label,
            features: Features::decode(r.0)?,
        })
    }
}

/// The logistic model of one workflow's tier.
struct TierModel {
    /// f32 weights as bits: Route reads them while the learner writes.
    w: Box<[AtomicU32]>,
    /// AdaGrad's sums of squared gradients; only the learner touches them.
    g: Mutex<Box<[f32]>>,
    seen: AtomicU64,
}

impl TierModel {
    fn new() -> TierModel {
        TierModel {
            w: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            g: Mutex::new(vec![0f32; BUCKETS].into_boxed_slice()),
            seen: AtomicU64::new(0),
        }
    }

    fn weight(&self, i: usize) -> f32 {
        f32::from_bits(self.w[i].load(Ordering::Relaxed))
    }

    /// The logit of a first attempt; a retry adds the retry weight.
    fn logit(&self, f: &Features) -> f32 {
        let mut z = 0f32;
        f.each(false, |i, v| z += self.weight(i) * v);
        z
    }

    fn predict(&self, f: &Features, retry: bool) -> f64 {
        let z = self.logit(f) + if retry { self.weight(RETRY as usize) } else { 0.0 };
        sigmoid(z as f64)
    }

    fn update(&self, f: &Features, retry: bool, label: f32) {
        let mut g = self.g.lock().unwrap_or_else(PoisonError::into_inner);
        let err = (self.predict(f, retry) - label as f64) as f32;
        f.each(retry, |i, v| {
            let grad = err * v;
            g[i] += grad * grad;
            let step = LEARNING_RATE * grad / (g[i] + 1e-6).sqrt();
            let w = (self.weight(i) - step).clamp(-30.0, 30.0);
            self.w[i].store(w.to_bits(), Ordering::Relaxed);
        });
        self.seen.fetch_add(1, Ordering::Relaxed);
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z.clamp(-30.0, 30.0)).exp())
}

#[derive(Default)]
struct WorkflowModel {
    tiers: [OnceLock<TierModel>; TIERS],
}

impl WorkflowModel {
    fn predict(&self, tier: u8, f: &Features) -> Option<TierPrediction> {
        let m = self.tiers.get(tier as usize)?.get()?;
        let z = m.logit(f);
        Some(TierPrediction {
            p: sigmoid(z as f64),
            p_retry: sigmoid((z + m.weight(RETRY as usize)) as f64),
            seen: m.seen.load(Ordering::Relaxed),
        })
    }
}

/// Every workflow's models.
#[derive(Default)]
pub struct Learner {
    workflows: RwLock<crate::hashing::FastMap<String, Arc<WorkflowModel>>>,
}

/// What the model predicts for one tier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierPrediction {
    /// P(accepted) on a first attempt.
    pub p: f64,
    /// P(accepted) after a rejected attempt one tier down.
    pub p_retry: f64,
    /// Labelled calls the tier has learned from.
    pub seen: u64,
}

impl Learner {
    pub fn new() -> Learner {
        Learner::default()
    }

    fn workflow(&self, name: &str) -> Option<Arc<WorkflowModel>> {
        self.workflows
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// The prediction for `tier` of `workflow`, or `None` if that tier has
    /// learned nothing yet.
    pub fn predict(&self, workflow: &str, tier: u8, f: &Features) -> Option<TierPrediction> {
        self.workflow(workflow)?.predict(tier, f)
    }

    /// Folds in one labelled call.
    pub fn apply(&self, e: &LearnEvent) {
        let slot = e.tier as usize;
        if slot >= TIERS {
            return;
        }
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
        wf.tiers[slot]
            .get_or_init(TierModel::new)
            .update(&e.features, e.retry, e.label);
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

/// The learned state `decide` reads: a prediction per tier (`None`: cold),
/// and the tier to explore, if this call explores. Plain data, so the
/// decision stays pure.
#[derive(Debug, Clone, Copy, Default)]
pub struct Learned {
    pub tiers: [Option<TierPrediction>; TIERS],
    pub explore: Option<u8>,
}

impl Learned {
    /// Predictions for the tiers of `available` (ascending), with `explore`
    /// chosen from `draw` (uniform in 0..1) at the workflow's rate, once the
    /// workflow has any labelled call.
    pub fn gather(
        learner: &Learner,
        workflow: &str,
        available: &[u8],
        f: &Features,
        cfg: &Learning,
        draw: f64,
    ) -> Learned {
        let mut out = Learned::default();
        if let Some(wf) = learner.workflow(workflow) {
            for &t in available {
                out.tiers[t as usize] = wf.predict(t, f);
            }
        }
        // Explore only where feedback flows: a workflow nobody labels would
        // pay for exploration and learn nothing from it.
        let labelled = out.tiers.iter().flatten().any(|p| p.seen > 0);
        if labelled && available.len() > 1 && draw < cfg.exploration {
            // The draw is uniform below the rate: rescale it to pick a tier.
            let k = ((draw / cfg.exploration) * available.len() as f64) as usize;
            out.explore = available.get(k.min(available.len() - 1)).copied();
        }
        out
    }

    /// How much a row needs a stronger model than the cheapest: the chance
    /// that the cheapest tier is rejected and the strongest would then be
    /// accepted. `None` until both have learned something.
    pub fn score(&self, available: &[u8]) -> Option<f64> {
        let (lo, hi) = (*available.first()?, *available.last()?);
        let weak = self.tiers[lo as usize]?;
        let strong = self.tiers[hi as usize]?;
        Some((1.0 - weak.p) * strong.p_retry)
    }
}

/// What Route asks of learning: the model to consult, a draw for
/// exploration, the tier an outcome's earlier attempt was rejected at, and
/// where to hand a routed call's features so that its feedback can label it.
#[async_trait::async_trait]
pub trait LearningGate: Send + Sync {
    fn learner(&self) -> &Learner;
    /// Uniform in 0..1; below the workflow's exploration rate, the call explores.
    fn draw(&self) -> f64;
    async fn rejected_tier(&self, workflow: &str, outcome_id: &str) -> Result<Option<u8>, crate::error::StoreError>;
    fn remember(&self, call: RoutedCall<'_>, features: Features);
}

/// The tier the learned model picks among `available` (ascending), with the
/// reason; `None` while any of them is cold (the static rules decide).
pub fn choose(learned: &Learned, available: &[u8], cfg: &Learning) -> Option<(u8, String)> {
    if let Some(t) = learned.explore.filter(|t| available.contains(t)) {
        return Some((
            t,
            format!("exploring tier {t} ({:.0}% of calls)", cfg.exploration * 100.0),
        ));
    }
    let mut preds: Vec<(u8, f64)> = Vec::with_capacity(available.len());
    for &t in available {
        let p = learned.tiers[t as usize].filter(|p| p.seen >= cfg.cold_start)?;
        preds.push((t, p.p));
    }
    let shown = preds
        .iter()
        .map(|(t, p)| format!("tier {t} {p:.2}"))
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(&(t, _)) = preds.iter().find(|(_, p)| *p >= cfg.target) {
        return Some((
            t,
            format!(
                "learned: P(accepted) {shown}; tier {t} meets the target {:.2}",
                cfg.target
            ),
        ));
    }
    let best = preds.iter().map(|(_, p)| *p).fold(0.0, f64::max);
    let &(t, _) = preds.iter().find(|(_, p)| best - p < cfg.min_gain)?;
    Some((
        t,
        format!(
            "learned: P(accepted) {shown}; none meets {:.2}, tier {t} is within {:.2} of the best",
            cfg.target, cfg.min_gain
        ),
    ))
}

#[cfg(test)]
mod tests;
