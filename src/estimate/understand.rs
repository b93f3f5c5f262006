//! Understanding a request with no model call: the task kind, inferred from
//! the text by a multinomial logistic regression over hashed word n-grams
//! and structural counts. The trainer (`examples/train_understanding.rs`,
//! run by `scripts/train-understanding`) and the server read requests
//! through this one extractor, so what was trained is what runs.
//!
//! **The model file** is one JSON document whose first line is a header,
//! `{"format": "switchyard-understanding", "version": 1, "sha256": …}`, and
//! whose rest is the body the checksum covers. A missing, damaged or
//! foreign file is an error that names the file and what is wrong; nothing
//! falls back silently.
//!
//! Features, all from one pass over the text:
//! - word unigrams and bigrams (lower-cased letters and digits), hashed into
//!   [`BUCKETS`] slots, each distinct one valued `1/sqrt(n)` so that a long
//!   prompt weighs no more than a short one;
//! - [`DENSE`] structural values: length, digits, numbers, operators, code
//!   markers, list items, questions, LaTeX, non-ASCII letters, lines, and
//!   word rarity from a public word-frequency table (shipped in the model).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::hashing::{fmix64 as mix, fnv1a_step as fnv_step, FNV1A_OFFSET as FNV_OFFSET};

/// Hashed n-gram slots.
pub const BUCKETS: usize = 1 << 15;
const MASK: u64 = (BUCKETS as u64) - 1;
/// Words read from a request, from its start.
pub const MAX_WORDS: usize = 1024;
const SEED_UNI: u64 = 0x5357_4954_4348_5931;
const SEED_BI: u64 = 0x5357_4954_4348_5932;
const SEED_STEM: u64 = 0x5357_4954_4348_5933;
const SEED_LEAD: u64 = 0x5357_4954_4348_5934;
/// Words longer than this also give their first `STEM` bytes as a gram, so
/// that "summarise", "summarize" and "summary" share one.
const STEM: usize = 5;
/// The first words also give a gram of their own: the ask usually leads.
const LEAD_WORDS: u32 = 6;
/// The gram scheme, recorded in the model file: a file trained on other
/// grams than this build extracts is refused.
pub const GRAMS: &str = "fnv1a-mix: words+bigrams+stem5+lead6";

/// The names of the structural features, in order (recorded in the model
/// file, so that a file and a build that disagree are caught).
pub const DENSE_NAMES: [&str; 14] = [
    "log_words",
    "digit_share",
    "log_numbers",
    "log_operators",
    "log_code_markers",
    "log_list_items",
    "log_questions",
    "log_latex",
    "non_ascii_share",
    "log_lines",
    "mean_word_len",
    "upper_share",
    "mean_rarity",
    "rare_share",
];
pub const DENSE: usize = DENSE_NAMES.len();

/// The shipped model, relative to the repository. The binary embeds it, so
/// a rule table that names no other file needs none on disk.
pub const SHIPPED: &str = "models/understanding.json";
static SHIPPED_TEXT: &str = include_str!("../../models/understanding.json");

/// Bins of the score's calibration and of the per-workflow quantile sketch:
/// bin `i` holds scores in `[i/SCORE_BINS, (i+1)/SCORE_BINS)`.
pub const SCORE_BINS: usize = 100;

/// The sketch bin of a score.
pub fn score_bin(score: f64) -> usize {
    if score.is_nan() {
        return 0;
    }
    ((score * SCORE_BINS as f64) as usize).min(SCORE_BINS - 1)
}

/// A request as the models read it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extracted {
    /// Distinct n-gram slots (a short request's sorted).
    pub grams: Vec<u32>,
    /// The value each gram carries.
    pub gram_value: f32,
    pub dense: [f32; DENSE],
}

// Words are hashed as they are read, with FNV-1a over their lower-cased
// bytes and a 64-bit finaliser (`crate::hashing`), the first [`STEM`] bytes'
// state kept for the stem gram: xxh3 per word, stem and pair was 40% of a
// 1k-token read.

/// A word's hash, from its FNV state.
#[inline(always)]
fn word_of(state: u64) -> u64 {
    mix(state ^ SEED_UNI)
}

/// The grams one word gives: (slot, what it is) for `drivers`; the
/// extractor pushes the same slots.
#[inline(always)]
fn stem_slot(state_at_stem: u64) -> u32 {
    (mix(state_at_stem ^ SEED_STEM) & MASK) as u32
}

#[inline(always)]
fn lead_slot(h: u64) -> u32 {
    (mix(h ^ SEED_LEAD) & MASK) as u32
}

#[inline(always)]
fn pair_slot(prev: u64, h: u64) -> u32 {
    (mix(prev.rotate_left(23) ^ h ^ SEED_BI) & MASK) as u32
}

/// The FNV state of a whole lower-cased word, and of its first [`STEM`]
/// bytes when it is longer than that and a character ends there.
fn hash_word(w: &str) -> (u64, Option<u64>) {
    let (mut h, mut stem) = (FNV_OFFSET, None);
    for (i, &b) in w.as_bytes().iter().enumerate() {
        h = fnv_step(h, b);
        if i + 1 == STEM && w.len() > STEM && w.is_char_boundary(STEM) {
            stem = Some(h);
        }
    }
    (h, stem)
}

/// A word's rarity slot in the frequency table (its unigram slot).
pub fn rarity_slot(word: &str) -> usize {
    (word_of(hash_word(word).0) & MASK) as usize
}

/// Reads `text` once. `rarity` is the model's table (Zipf frequency × 10 per
/// slot, 0 for a word not in the table); empty reads every word as unknown.
pub fn extract(text: &str, rarity: &[u8]) -> Extracted {
    extract_all(&[text], rarity)
}

/// The counts of one read, and the word being read.
#[derive(Default)]
struct Reader {
    words: u32,
    word_bytes: u32,
    upper: u32,
    letters: u32,
    non_ascii: u32,
    digits: u32,
    numbers: u32,
    operators: u32,
    code: u32,
    lists: u32,
    questions: u32,
    latex: u32,
    lines: u32,
    rarity_sum: u32,
    rare: u32,
    known: u32,
    /// The word being read: its length in bytes, FNV state, the state at
    /// its stem, whether it is letters only.
    len: usize,
    state: u64,
    stem: Option<u64>,
    alpha: bool,
    prev: Option<u64>,
    at_line_start: bool,
    prev_byte: u8,
    in_number: bool,
}

/// Each gram once: a short request's few are sorted (cheaper than clearing
/// a bitset of every slot), a long one's are filtered through the bitset.
fn distinct(grams: &mut Vec<u32>) {
    if grams.len() <= 256 {
        grams.sort_unstable();
        grams.dedup();
        return;
    }
    let mut seen = [0u64; BUCKETS / 64];
    grams.retain(|&slot| {
        let (w, bit) = ((slot >> 6) as usize, 1u64 << (slot & 63));
        let new = seen[w] & bit == 0;
        seen[w] |= bit;
        new
    });
}

impl Reader {
    #[inline(always)]
    fn push_byte(&mut self, b: u8) {
        if self.len == 0 {
            self.state = FNV_OFFSET;
            self.stem = None;
            self.alpha = true;
        }
        self.state = fnv_step(self.state, b);
        self.len += 1;
    }

    /// After a whole character's lower-cased bytes: a stem ends here when
    /// the word has just reached [`STEM`] bytes.
    #[inline(always)]
    fn char_done(&mut self) {
        if self.len == STEM {
            self.stem = Some(self.state);
        }
    }

    #[inline(always)]
    fn finish(&mut self, rarity: &[u8], grams: &mut Vec<u32>) {
        if self.len == 0 {
            return;
        }
        let len = std::mem::take(&mut self.len);
        self.words += 1;
        self.word_bytes += len as u32;
        if self.words as usize > MAX_WORDS {
            return;
        }
        let h = word_of(self.state);
        let mut push = |slot: u32| grams.push(slot);
        push((h & MASK) as u32);
        if let (Some(st), true) = (self.stem, len > STEM) {
            push(stem_slot(st));
        }
        if self.words <= LEAD_WORDS {
            push(lead_slot(h));
        }
        if let Some(p) = self.prev {
            push(pair_slot(p, h));
        }
        self.prev = Some(h);
        if !rarity.is_empty() && self.alpha {
            let z = rarity[(h & MASK) as usize];
            if z == 0 {
                self.rare += 1;
            } else {
                self.known += 1;
                self.rarity_sum += u32::from(z);
                if z < 30 {
                    self.rare += 1;
                }
            }
        }
    }

    /// A character that is not part of a word.
    #[inline(always)]
    fn other(&mut self, c: char) {
        match c {
            '\n' => {
                self.lines += 1;
                self.at_line_start = true;
                return;
            }
            '?' => self.questions += 1,
            '+' | '*' | '/' | '=' | '^' | '<' | '>' | '%' => self.operators += 1,
            '-' if self.at_line_start => self.lists += 1,
            '-' => self.operators += 1,
            '{' | '}' | ';' | '`' | '[' | ']' => self.code += 1,
            '$' | '\\' => self.latex += 1,
            '•' => self.lists += 1,
            _ => {}
        }
        if !c.is_whitespace() {
            self.at_line_start = false;
        }
    }
}

/// Reads several texts as one, each on its own line (a request's messages),
/// up to [`MAX_WORDS`] words; past them, only the length is estimated (from
/// the bytes left), so that a long request costs no more than a 1k-word one.
pub fn extract_all(texts: &[&str], rarity: &[u8]) -> Extracted {
    let mut grams: Vec<u32> = Vec::with_capacity(64);
    let mut r = Reader {
        lines: 1,
        at_line_start: true,
        prev_byte: b' ',
        ..Reader::default()
    };
    let total_bytes: usize = texts.iter().map(|t| t.len() + 1).sum();
    let mut read_bytes = 0usize;
    'texts: for (t, text) in texts.iter().enumerate() {
        if t > 0 {
            r.finish(rarity, &mut grams);
            r.in_number = false;
            r.other('\n');
            r.prev_byte = b'\n';
        }
        let b = text.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if r.words as usize > MAX_WORDS {
                read_bytes += i;
                break 'texts;
            }
            let c = b[i];
            if c.is_ascii() {
                i += 1;
                if c.is_ascii_alphanumeric() {
                    if c.is_ascii_digit() {
                        r.digits += 1;
                        if !r.in_number && r.len == 0 {
                            r.numbers += 1;
                        }
                        r.in_number = r.len == 0 || r.in_number;
                        if r.at_line_start {
                            r.lists += 1;
                        }
                        r.push_byte(c);
                        r.alpha = false;
                    } else {
                        r.letters += 1;
                        if c.is_ascii_uppercase() {
                            r.upper += 1;
                        }
                        r.push_byte(c.to_ascii_lowercase());
                    }
                    r.char_done();
                    r.at_line_start = false;
                } else {
                    r.in_number = r.in_number && (c == b'.' || c == b',') && r.prev_byte.is_ascii_digit();
                    r.finish(rarity, &mut grams);
                    r.other(c as char);
                }
                r.prev_byte = c;
                continue;
            }
            // A character beyond ASCII: decoded, and lower-cased by Unicode.
            let ch = text[i..].chars().next().unwrap_or(' ');
            i += ch.len_utf8();
            if ch.is_alphanumeric() {
                r.letters += 1;
                r.non_ascii += 1;
                if ch.is_uppercase() {
                    r.upper += 1;
                }
                let alpha = ch.is_alphabetic();
                for l in ch.to_lowercase() {
                    let mut buf = [0u8; 4];
                    for &lb in l.encode_utf8(&mut buf).as_bytes() {
                        r.push_byte(lb);
                    }
                }
                r.alpha &= alpha;
                r.char_done();
                r.at_line_start = false;
            } else {
                r.in_number = false;
                r.finish(rarity, &mut grams);
                r.other(ch);
            }
            r.prev_byte = b' ';
        }
        read_bytes += b.len() + 1;
    }
    r.finish(rarity, &mut grams);
    distinct(&mut grams);
    // Past MAX_WORDS, the words not read are estimated from the bytes left.
    let words = if read_bytes < total_bytes && read_bytes > 0 {
        (f64::from(r.words) * total_bytes as f64 / read_bytes as f64) as u32
    } else {
        r.words
    };
    let ln = |n: u32, scale: f32| ((1.0 + n as f32).ln() / scale).min(2.0);
    let share = |n: u32, of: u32| if of == 0 { 0.0 } else { n as f32 / of as f32 };
    let counted = r.known + r.rare;
    let dense = [
        ln(words, 8.0),
        share(r.digits, r.digits + r.letters),
        ln(r.numbers, 4.0),
        ln(r.operators, 4.0),
        ln(r.code, 5.0),
        ln(r.lists, 3.0),
        ln(r.questions, 3.0),
        ln(r.latex, 4.0),
        share(r.non_ascii, r.letters),
        ln(r.lines, 5.0),
        if r.words == 0 {
            0.0
        } else {
            (r.word_bytes as f32 / r.words as f32 / 10.0).min(2.0)
        },
        share(r.upper, r.letters),
        if r.known == 0 {
            0.0
        } else {
            r.rarity_sum as f32 / r.known as f32 / 80.0
        },
        share(r.rare, counted),
    ];
    let gram_value = if grams.is_empty() {
        0.0
    } else {
        1.0 / (grams.len() as f32).sqrt()
    };
    Extracted {
        grams,
        gram_value,
        dense,
    }
}

/// The header line of a model file.
#[derive(Debug, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// Hex SHA-256 of the body (everything after the header's line).
    pub sha256: String,
}

pub const FORMAT: &str = "switchyard-understanding";
pub const VERSION: u32 = 2;

/// The body of a model file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Body {
    /// How the file was made: the trainer, its data and their licences.
    pub provenance: String,
    pub buckets: usize,
    /// The gram scheme the weights were trained on ([`GRAMS`]).
    pub grams: String,
    pub dense_names: Vec<String>,
    /// The task kinds, in the order of the weights.
    pub kinds: Vec<String>,
    /// Below this probability of its most likely kind, a request is `general`.
    pub min_confidence: f32,
    /// Kind weights: `buckets` × kinds, then `dense` × kinds, then one bias
    /// per kind; scaled integers (weight = value × `scale`).
    pub scale: f32,
    pub kind_weights: Vec<i32>,
    /// Zipf frequency × 10 per hashed word slot (CC-BY-SA-4.0 data, see
    /// provenance), run-length encoded as (run, value) pairs.
    pub rarity_rle: Vec<(u32, u8)>,
    /// The difficulty score's weights: `buckets`, then `dense`, then the
    /// bias, scaled by `difficulty_scale`; empty in a file without one.
    #[serde(default)]
    pub difficulty_scale: f32,
    #[serde(default)]
    pub difficulty_weights: Vec<i32>,
    /// How the score falls on a broad mix of requests (every training source
    /// weighing the same): counts per [`SCORE_BINS`] bin. A workflow's
    /// quantiles start from it, so that `top_share` works from the first
    /// request.
    #[serde(default)]
    pub calibration: Vec<u32>,
    /// Each structural feature's mean over the difficulty labels: a
    /// driver's effect is measured from it, so that `explain` shows what
    /// sets this request apart rather than what every request has.
    #[serde(default)]
    pub dense_means: Vec<f32>,
}

/// A loaded model, ready to classify.
#[derive(Clone)]
pub struct Understanding {
    pub kinds: Vec<String>,
    pub min_confidence: f32,
    /// Gram weights, kind-major per slot (`slot * kinds + k`).
    gram_w: Vec<f32>,
    dense_w: Vec<f32>,
    bias: Vec<f32>,
    pub rarity: Vec<u8>,
    /// Gram weights, dense weights, bias; empty without a difficulty model.
    difficulty_w: Vec<f32>,
    /// Each score bin's share of the calibration mix (sums to 1).
    calibration: Vec<f64>,
    dense_means: Vec<f32>,
    pub sha256: String,
}

impl std::fmt::Debug for Understanding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Understanding")
            .field("sha256", &self.sha256)
            .field("kinds", &self.kinds)
            .finish_non_exhaustive()
    }
}

/// What the models read in a request, from one pass over its text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// The most likely kind (an index into `kinds`), `None` below
    /// `min_confidence`.
    pub kind: Option<usize>,
    /// The probability of the most likely kind.
    pub confidence: f64,
    /// The difficulty score, 0 to 1.
    pub difficulty: f64,
}

/// One feature's push on the difficulty score, in log-odds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Driver {
    /// A word (`word:prove`), a pair of words (`pair:lock free`), the
    /// leading words (`lead:design`) or a structural count by name.
    pub feature: String,
    pub effect: f64,
}

impl Understanding {
    /// Loads and checks a model file; every error names the file and the fix.
    pub fn load(path: &Path) -> Result<Understanding, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read the understanding model {}: {e}; point `understanding_model` in the rules at the shipped {SHIPPED}, or run scripts/train-understanding",
                path.display()
            )
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    pub fn parse(name: &str, text: &str) -> Result<Understanding, String> {
        let (head, body) = text
            .split_once('\n')
            .ok_or_else(|| format!("{name}: not an understanding model (no header line)"))?;
        let header: Header =
            serde_json::from_str(head).map_err(|e| format!("{name}:1: not an understanding model header ({e})"))?;
        if header.format != FORMAT {
            return Err(format!("{name}:1: format `{}`, not `{FORMAT}`", header.format));
        }
        if header.version != VERSION {
            return Err(format!(
                "{name}:1: model version {}, but this build reads version {VERSION}; use the model file that ships with this build",
                header.version
            ));
        }
        let sha = crate::hashing::sha256_hex(body.as_bytes());
        if sha != header.sha256 {
            return Err(format!(
                "{name}: the body's SHA-256 is {sha}, not the {} its header records: the file is damaged or was edited; restore it or retrain",
                header.sha256
            ));
        }
        let b: Body =
            serde_json::from_str(body).map_err(|e| format!("{name}:2: the model body does not parse ({e})"))?;
        let k = b.kinds.len();
        if b.buckets != BUCKETS || b.grams != GRAMS || b.dense_names != DENSE_NAMES || k == 0 {
            return Err(format!(
                "{name}: trained for {} slots of `{}` grams and features {:?}; this build extracts {BUCKETS} of `{GRAMS}` and {DENSE_NAMES:?}: use the model file that ships with this build, or retrain",
                b.buckets, b.grams, b.dense_names
            ));
        }
        if b.kind_weights.len() != (BUCKETS + DENSE + 1) * k {
            return Err(format!(
                "{name}: {} kind weights, expected {}",
                b.kind_weights.len(),
                (BUCKETS + DENSE + 1) * k
            ));
        }
        let w: Vec<f32> = b.kind_weights.iter().map(|&v| v as f32 * b.scale).collect();
        let mut rarity = Vec::with_capacity(BUCKETS);
        for &(run, v) in &b.rarity_rle {
            rarity.extend(std::iter::repeat_n(v, run as usize));
        }
        if rarity.len() != BUCKETS {
            return Err(format!(
                "{name}: the rarity table has {} slots, expected {BUCKETS}",
                rarity.len()
            ));
        }
        let difficulty_w: Vec<f32> = b
            .difficulty_weights
            .iter()
            .map(|&v| v as f32 * b.difficulty_scale)
            .collect();
        if difficulty_w.len() != BUCKETS + DENSE + 1 {
            return Err(format!(
                "{name}: {} difficulty weights, expected {}: retrain with scripts/train-understanding",
                difficulty_w.len(),
                BUCKETS + DENSE + 1
            ));
        }
        let total: u64 = b.calibration.iter().map(|&c| u64::from(c)).sum();
        if b.calibration.len() != SCORE_BINS || total == 0 {
            return Err(format!(
                "{name}: the score's calibration has {} bins and {total} requests, expected {SCORE_BINS} bins: retrain with scripts/train-understanding",
                b.calibration.len()
            ));
        }
        let calibration = b.calibration.iter().map(|&c| f64::from(c) / total as f64).collect();
        if b.dense_means.len() != DENSE {
            return Err(format!(
                "{name}: {} structural means, expected {DENSE}: retrain with scripts/train-understanding",
                b.dense_means.len()
            ));
        }
        Ok(Understanding {
            difficulty_w,
            calibration,
            dense_means: b.dense_means,
            kinds: b.kinds,
            min_confidence: b.min_confidence,
            gram_w: w[..BUCKETS * k].to_vec(),
            dense_w: w[BUCKETS * k..(BUCKETS + DENSE) * k].to_vec(),
            bias: w[(BUCKETS + DENSE) * k..].to_vec(),
            rarity,
            sha256: header.sha256,
        })
    }

    /// The kinds' logits for an extracted request.
    pub fn logits(&self, x: &Extracted) -> Vec<f32> {
        let k = self.kinds.len();
        let mut z = self.bias.clone();
        for &g in &x.grams {
            let row = &self.gram_w[g as usize * k..(g as usize + 1) * k];
            for (zi, w) in z.iter_mut().zip(row) {
                *zi += w * x.gram_value;
            }
        }
        for (d, &v) in x.dense.iter().enumerate() {
            if v != 0.0 {
                let row = &self.dense_w[d * k..(d + 1) * k];
                for (zi, w) in z.iter_mut().zip(row) {
                    *zi += w * v;
                }
            }
        }
        z
    }

    /// A model that knows no kind and scores every request 0.5, standing in
    /// only where loading failed and the table is refused anyway.
    pub fn empty() -> Understanding {
        Understanding {
            kinds: Vec::new(),
            min_confidence: 1.0,
            gram_w: Vec::new(),
            dense_w: Vec::new(),
            bias: Vec::new(),
            rarity: Vec::new(),
            difficulty_w: vec![0.0; BUCKETS + DENSE + 1],
            calibration: vec![1.0 / SCORE_BINS as f64; SCORE_BINS],
            dense_means: vec![0.0; DENSE],
            sha256: "none".into(),
        }
    }

    /// The model the binary embeds (`models/understanding.json`), parsed once.
    pub fn shipped() -> Result<std::sync::Arc<Understanding>, String> {
        static SHIPPED_MODEL: std::sync::OnceLock<Result<std::sync::Arc<Understanding>, String>> =
            std::sync::OnceLock::new();
        SHIPPED_MODEL
            .get_or_init(|| Understanding::parse(SHIPPED, SHIPPED_TEXT).map(std::sync::Arc::new))
            .clone()
    }

    /// A short name for the model: the first 12 hex digits of its checksum.
    pub fn tag(&self) -> &str {
        &self.sha256[..self.sha256.len().min(12)]
    }

    /// Each score bin's share of the calibration mix.
    pub fn calibration(&self) -> &[f64] {
        &self.calibration
    }

    /// Reads a request's texts once, for both its kind and its score.
    pub fn read(&self, texts: &[&str]) -> Reading {
        let x = extract_all(texts, &self.rarity);
        let p = softmax(&self.logits(&x));
        let (best, conf) = most_likely(&p);
        Reading {
            kind: (conf >= self.min_confidence).then_some(best),
            confidence: f64::from(conf),
            difficulty: difficulty_of(&self.difficulty_w, &x),
        }
    }

    /// The `n` features that moved the request's score most, either way:
    /// a word's weight, or a structural feature's weight times its distance
    /// from the mean request.
    /// Words are read back from the texts given (the caller's own request,
    /// shown to the operator who typed it; nothing is kept).
    pub fn drivers(&self, texts: &[&str], n: usize) -> Vec<Driver> {
        let x = extract_all(texts, &self.rarity);
        let w = &self.difficulty_w;
        let mut out: Vec<Driver> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut push = |out: &mut Vec<Driver>, slot: u32, name: String| {
            let slot = slot as usize;
            if seen.insert(slot) {
                let effect = f64::from(w[slot] * x.gram_value);
                if effect != 0.0 {
                    out.push(Driver { feature: name, effect });
                }
            }
        };
        let mut prev: Option<(u64, String)> = None;
        for (i, word) in words(texts).into_iter().enumerate() {
            let (state, stem) = hash_word(&word);
            let h = word_of(state);
            push(&mut out, (h & MASK) as u32, format!("word:{word}"));
            if let Some(st) = stem {
                push(&mut out, stem_slot(st), format!("stem:{}", &word[..STEM]));
            }
            if (i as u32) < LEAD_WORDS {
                push(&mut out, lead_slot(h), format!("lead:{word}"));
            }
            if let Some((p, pw)) = &prev {
                push(&mut out, pair_slot(*p, h), format!("pair:{pw} {word}"));
            }
            prev = Some((h, word));
        }
        for (d, &v) in x.dense.iter().enumerate() {
            let effect = f64::from(w[BUCKETS + d] * (v - self.dense_means[d]));
            if effect != 0.0 {
                out.push(Driver {
                    feature: DENSE_NAMES[d].to_string(),
                    effect,
                });
            }
        }
        out.sort_by(|a, b| b.effect.abs().total_cmp(&a.effect.abs()));
        out.truncate(n);
        out
    }
}

/// The words of `texts` as the extractor reads them (lower-cased runs of
/// letters and digits, at most [`MAX_WORDS`]).
fn words(texts: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for t in texts {
        let mut word = String::new();
        for c in t.chars().chain(std::iter::once(' ')) {
            if c.is_alphanumeric() {
                word.extend(c.to_lowercase());
            } else if !word.is_empty() {
                out.push(std::mem::take(&mut word));
                if out.len() >= MAX_WORDS {
                    return out;
                }
            }
        }
    }
    out
}

/// The difficulty model's probability for an extracted request, from its
/// weights (grams, dense, bias).
pub fn difficulty_of(w: &[f32], x: &Extracted) -> f64 {
    let mut z = w[BUCKETS + DENSE];
    for &g in &x.grams {
        z += w[g as usize] * x.gram_value;
    }
    for (d, &v) in x.dense.iter().enumerate() {
        z += w[BUCKETS + d] * v;
    }
    1.0 / (1.0 + (-f64::from(z)).exp())
}

/// The index and probability of the most likely kind.
fn most_likely(p: &[f32]) -> (usize, f32) {
    p.iter()
        .enumerate()
        .fold((0, f32::MIN), |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc })
}

/// The area under the ROC curve of scores for their labels (ties count
/// half): how the trainer and the evaluation judge a score.
pub fn auc(pairs: &mut [(f64, bool)]) -> f64 {
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut pos, mut i) = (0f64, 0f64, 0usize);
    while i < pairs.len() {
        let mut j = i;
        while j < pairs.len() && pairs[j].0 == pairs[i].0 {
            j += 1;
        }
        let mid = (i + j + 1) as f64 / 2.0;
        for p in &pairs[i..j] {
            if p.1 {
                rank_sum += mid;
                pos += 1.0;
            }
        }
        i = j;
    }
    let neg = pairs.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return 0.5;
    }
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

pub fn softmax(z: &[f32]) -> Vec<f32> {
    let m = z.iter().copied().fold(f32::MIN, f32::max);
    let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Writes a model file: the header with the body's checksum, then the body.
pub fn write(path: &Path, body: &Body) -> std::io::Result<()> {
    let body_text = serde_json::to_string(body).map_err(std::io::Error::other)?;
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        sha256: crate::hashing::sha256_hex(body_text.as_bytes()),
    };
    let head = serde_json::to_string(&header).map_err(std::io::Error::other)?;
    std::fs::write(path, format!("{head}\n{body_text}"))
}

/// Run-length encodes a rarity table.
pub fn rle(table: &[u8]) -> Vec<(u32, u8)> {
    let mut out: Vec<(u32, u8)> = Vec::new();
    for &v in table {
        match out.last_mut() {
            Some((n, last)) if *last == v => *n += 1,
            _ => out.push((1, v)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_is_deterministic_and_reads_structure() {
        let a = extract("Prove that x^2 + 1 > 0 for every real x?\n1. first\n2. second", &[]);
        assert_eq!(
            a,
            extract("Prove that x^2 + 1 > 0 for every real x?\n1. first\n2. second", &[])
        );
        assert!(a.dense[3] > 0.0, "operators");
        assert!(a.dense[5] > 0.0, "list items");
        assert!(a.dense[6] > 0.0, "a question");
        let mut distinct = a.grams.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), a.grams.len(), "each gram once");
        assert!((a.gram_value - 1.0 / (a.grams.len() as f32).sqrt()).abs() < 1e-6);
        assert_eq!(extract("", &[]).grams.len(), 0);
    }

    /// The shipped file loads, and classifies a handful of fixed prompts.
    /// (Groundwork: the model is not yet wired into Route.)
    #[test]
    fn the_shipped_model_loads_and_classifies_fixed_prompts() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(SHIPPED);
        let m = Understanding::load(&path).expect("the shipped model loads");
        assert_eq!(m.kinds.len(), 11);
        for (text, kind) in [
            (
                "Write a Python function that parses a CSV file and returns the rows as dictionaries.",
                "code",
            ),
            ("Find all real x such that x^2 - 5x + 6 = 0.", "math"),
            (
                "Translate into French: Where is the nearest train station?",
                "translation",
            ),
        ] {
            let r = m.read(&[text]);
            assert_eq!(r.kind.map(|k| m.kinds[k].as_str()), Some(kind), "{text}");
            let d = r.difficulty;
            assert!(d > 0.0 && d < 1.0, "{d}");
        }
    }

    #[test]
    fn a_damaged_or_foreign_file_is_refused_with_its_name() {
        let body = Body {
            provenance: "test".into(),
            buckets: BUCKETS,
            grams: GRAMS.into(),
            dense_names: DENSE_NAMES.iter().map(|s| s.to_string()).collect(),
            kinds: vec!["code".into(), "chat".into()],
            min_confidence: 0.4,
            scale: 1.0,
            kind_weights: vec![0; (BUCKETS + DENSE + 1) * 2],
            rarity_rle: vec![(BUCKETS as u32, 0)],
            difficulty_scale: 1.0,
            difficulty_weights: vec![0; BUCKETS + DENSE + 1],
            calibration: vec![1; SCORE_BINS],
            dense_means: vec![0.0; DENSE],
        };
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("m.json");
        write(&path, &body).expect("write");
        let m = Understanding::load(&path).expect("loads");
        assert_eq!(m.kinds.len(), 2);
        let text = std::fs::read_to_string(&path).expect("read");
        let damaged = text.replacen("\"test\"", "\"tesT\"", 1);
        let e = Understanding::parse("m.json", &damaged).expect_err("checksum");
        assert!(e.contains("m.json") && e.contains("SHA-256"), "{e}");
        let e = Understanding::parse("m.json", "{}").expect_err("no header");
        assert!(e.contains("m.json"), "{e}");
        let e = Understanding::load(&dir.path().join("missing.json")).expect_err("missing");
        assert!(e.contains("missing.json") && e.contains("train-understanding"), "{e}");
    }
}
