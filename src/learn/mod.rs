//! Learning from outcomes: for each workflow and tier, an online Bayesian
//! logistic model of P(accepted | request, tier) that corrects the rule
//! table's prior.
//!
//! - [`Features`]: what a request looks like to the model: the prior (the
//!   rule table's complexity score), the complexity features, structural
//!   counts (numbers, operators, sentences, questions, list items, code
//!   fences, constraint words, tokens) in log buckets, hashed word unigrams
//!   and bigrams, and the task kind. Only bucket numbers and counts, never
//!   text.
//! - [`model`]: the weights, with a diagonal Gaussian posterior per weight,
//!   each tier reading the logit of the tier below it (what a stronger tier
//!   adds is learned as a correction to what the weaker one predicts); the
//!   evidence gate that keeps the learned score at the prior until labels
//!   show it predicts better; the tier choice with exploration scaled by the
//!   model's uncertainty, and the propensity of every choice.
//! - [`online`]: learning inside `serve`, from the store's labelled calls.

pub mod model;
pub mod online;

pub use model::{choose, Choice, Learned, Learner, TierPrediction};

pub use online::{Folded, Online, RoutedCall};

use crate::estimate::Signals as Complexity;
use crate::rules::MAX_TIER;

/// Hash buckets per tier model (2^18 = 262,144 weights, 1 MiB each of
/// weights and of AdaGrad sums).
pub const BUCKETS: usize = 1 << 18;
const MASK: u64 = (BUCKETS as u64) - 1;
/// Fixed slots below the hashed range: the bias, the nine complexity
/// features, the retry flag, the prior's logit and the logit of the tier
/// below.
const BIAS: u32 = 0;
const DENSE: u32 = 1;
const RETRY: u32 = 10;
const PRIOR: u32 = 11;
const BELOW: u32 = 12;
const FIXED: u64 = 16;
/// Words read from a request's user messages, newest first.
pub const MAX_WORDS: usize = 256;
const TIERS: usize = MAX_TIER as usize + 1;
/// The prior's logit is clamped to this: a score of 0 or 1 is not certainty.
const PRIOR_LOGIT: f32 = 4.0;

/// A request as the model sees it. `grams` share one value, `1/sqrt(n)`, so
/// that a long prompt weighs no more than a short one.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    /// The task kind's bucket (valued 1), then the log2 buckets of the word,
    /// digit, number, operator, sentence, question, list-item, code-fence,
    /// constraint-word and token counts (sharing one unit of weight).
    pub ones: Vec<u32>,
    /// The complexity features, 0 to 1, in `Complexity` field order.
    pub dense: [f32; 9],
    /// Sorted, distinct buckets of the word unigrams and bigrams.
    pub grams: Vec<u32>,
    /// The rule table's complexity score of the request, 0 to 1: the prior
    /// that learning corrects.
    pub prior: f32,
}

impl Default for Features {
    fn default() -> Features {
        Features {
            ones: Vec::new(),
            dense: [0.0; 9],
            grams: Vec::new(),
            prior: 0.5,
        }
    }
}

/// What a request is, besides its text, when its features are extracted.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub task_kind: &'a str,
    /// The complexity features.
    pub complexity: &'a Complexity,
    /// The complexity score, 0 to 1.
    pub prior: f64,
    /// Input tokens.
    pub tokens: u64,
}

impl<'a> Request<'a> {
    /// A request known only by its task kind and complexity features, with
    /// a neutral prior and no token count.
    pub fn new(task_kind: &'a str, complexity: &'a Complexity) -> Request<'a> {
        Request {
            task_kind,
            complexity,
            prior: 0.5,
            tokens: 0,
        }
    }
}

/// Structural counts from the same pass that hashes the words.
#[derive(Debug, Default, Clone, Copy)]
struct Shape {
    words: usize,
    digits: u32,
    numbers: u32,
    operators: u32,
    sentences: u32,
    questions: u32,
    list_items: u32,
    fences: u32,
}

/// Whether a line starting at `b[i..]` is a list item: `-`, `*` or `•`, or
/// a marker of one or two letters or digits closed by `.` or `)`.
fn list_item(b: &[u8], mut i: usize) -> bool {
    while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
        i += 1;
    }
    match b.get(i..) {
        Some([b'-' | b'*', b' ', ..]) | Some([0xE2, 0x80, 0xA2, ..]) => true,
        Some(rest) => {
            let n = rest.iter().take(3).take_while(|c| c.is_ascii_alphanumeric()).count();
            (1..=2).contains(&n) && matches!(rest.get(n), Some(b'.' | b')'))
        }
        None => false,
    }
}

/// The bucket of a feature hash `h` of a given kind: MurmurHash3's 64-bit
/// finalizer spreads the bits, then the hashed range is indexed.
fn bucket(kind: u8, h: u64) -> u32 {
    let z = crate::hashing::fmix64(h ^ (kind as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
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
    /// messages, newest first) and what else is known of it.
    pub fn extract<'a>(texts: impl Iterator<Item = &'a str>, r: &Request<'_>) -> Features {
        GRAMS.with(|scratch| {
            let (grams, spare) = &mut *scratch.borrow_mut();
            grams.clear();
            Features::extract_into(grams, spare, texts, r)
        })
    }

    /// [`Features::extract`], gathering the buckets in `grams` (empty) and
    /// sorting with `spare`; the features keep an exact-size copy.
    fn extract_into<'a>(
        grams: &mut Vec<u32>,
        spare: &mut Vec<u32>,
        texts: impl Iterator<Item = &'a str>,
        r: &Request<'_>,
    ) -> Features {
        let mut n = Shape::default();
        'texts: for text in texts {
            let mut prev: Option<u64> = None;
            let b = text.as_bytes();
            if list_item(b, 0) {
                n.list_items += 1;
            }
            let mut i = 0;
            while i < b.len() {
                let c = b[i];
                if !(c.is_ascii_alphanumeric() || c >= 0x80) {
                    // Between words: the punctuation that gives a prompt its shape.
                    match c {
                        b'+' | b'-' | b'*' | b'/' | b'=' | b'<' | b'>' | b'^' | b'%' => n.operators += 1,
                        b'.' | b'!' | b'?' => {
                            n.questions += u32::from(c == b'?');
                            n.sentences += u32::from(b.get(i + 1).is_none_or(|d| d.is_ascii_whitespace()));
                        }
                        b'\n' => n.list_items += u32::from(list_item(b, i + 1)),
                        b'`' if b.get(i + 1..i + 3) == Some(b"``") => {
                            n.fences += 1;
                            i += 2;
                        }
                        _ => {}
                    }
                    i += 1;
                    continue;
                }
                // One word: ASCII letters folded to lower case, digits, and
                // any non-ASCII bytes (so other scripts make words too).
                n.numbers += u32::from(c.is_ascii_digit());
                let mut h = crate::hashing::FNV1A_OFFSET;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] >= 0x80) {
                    n.digits += u32::from(b[i].is_ascii_digit());
                    h = crate::hashing::fnv1a_step(h, b[i].to_ascii_lowercase());
                    i += 1;
                }
                grams.push(bucket(1, h));
                if let Some(p) = prev {
                    grams.push(bucket(2, p.rotate_left(17) ^ h));
                }
                prev = Some(h);
                n.words += 1;
                if n.words >= MAX_WORDS {
                    break 'texts;
                }
            }
        }
        sort_buckets(grams, spare);
        grams.dedup();
        let log2 = |n: u64| u64::BITS - n.leading_zeros();
        let cx = r.complexity;
        // The complexity scan counts constraint words up to 6.
        let constraints = (cx.constraints * 6.0).round() as u64;
        Features {
            ones: vec![
                named(3, r.task_kind),
                numbered(4, b"len", log2(n.words as u64)),
                numbered(5, b"dig", log2(u64::from(n.digits))),
                numbered(6, b"num", log2(u64::from(n.numbers))),
                numbered(6, b"ops", log2(u64::from(n.operators))),
                numbered(6, b"snt", log2(u64::from(n.sentences))),
                numbered(6, b"qst", log2(u64::from(n.questions))),
                numbered(6, b"lst", log2(u64::from(n.list_items))),
                numbered(6, b"fen", log2(u64::from(n.fences))),
                numbered(6, b"cns", log2(constraints)),
                numbered(6, b"tok", log2(r.tokens)),
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
            // A score that is not a number is no evidence: a neutral prior.
            prior: if r.prior.is_finite() {
                r.prior.clamp(0.0, 1.0) as f32
            } else {
                0.5
            },
        }
    }

    fn gram_value(&self) -> f32 {
        1.0 / (self.grams.len().max(1) as f32).sqrt()
    }

    /// The prior's logit, clamped.
    fn prior_logit(&self) -> f32 {
        let p = self.prior.clamp(1e-3, 1.0 - 1e-3);
        (p / (1.0 - p)).ln().clamp(-PRIOR_LOGIT, PRIOR_LOGIT)
    }

    /// Every (bucket, value) pair: the bias, the retry flag if set, the
    /// prior's logit, `below` (the logit of the tier below) and the rest.
    fn each(&self, retry: bool, below: f32, mut f: impl FnMut(usize, f32)) {
        f(BIAS as usize, 1.0);
        if retry {
            f(RETRY as usize, 1.0);
        }
        f(PRIOR as usize, self.prior_logit());
        if below != 0.0 {
            f(BELOW as usize, below);
        }
        // Each group of inputs weighs at most about one input valued 1: the
        // nine complexity features (0 to 1 each) by a third, the ten count
        // buckets by 1/sqrt(10), the grams by 1/sqrt(n). A label moves the
        // logit by the sum of the squared values over the precisions, so
        // ungrouped, the buckets that every request has would take most of
        // each step and drown the task kind and the words.
        for (i, v) in self.dense.iter().enumerate() {
            if *v != 0.0 {
                f(DENSE as usize + i, *v / 3.0);
            }
        }
        if let Some((&kind, counts)) = self.ones.split_first() {
            f(kind as usize, 1.0);
            let c = 1.0 / (counts.len().max(1) as f32).sqrt();
            for &i in counts {
                f(i as usize, c);
            }
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
        out.extend_from_slice(&self.prior.to_le_bytes());
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
        // Calls labelled before the prior was kept end here: a neutral prior.
        let prior = if r.0.is_empty() { 0.5 } else { f32::from_bits(r.u32()?) };
        let valid = |i: &u32| (*i as usize) < BUCKETS;
        (r.0.is_empty()
            && ones.iter().all(valid)
            && grams.iter().all(valid)
            && dense.iter().all(|v| v.is_finite())
            && (0.0..=1.0).contains(&prior))
        .then_some(Features {
            ones,
            dense,
            grams,
            prior,
        })
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

#[cfg(test)]
mod tests;
