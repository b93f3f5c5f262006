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

mod features;

pub use features::*;

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Each bin's share of `calibration` below it plus half its own.
fn prior_below(calibration: &[f64]) -> Vec<f64> {
    let mut below = 0.0;
    calibration
        .iter()
        .map(|&c| {
            let at = below + c / 2.0;
            below += c;
            at
        })
        .collect()
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
    /// Each structural feature's largest value over the difficulty labels:
    /// the score reads no feature past the range it was trained on (a
    /// request wholly in another script than its labels' is not scored by
    /// extrapolating from a few accented letters). Empty: no bound.
    #[serde(default)]
    pub dense_max: Vec<f32>,
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
    /// For each bin, the calibration's share below it plus half its own:
    /// the quantile of a score in that bin before any traffic is seen.
    prior_below: Vec<f64>,
    dense_means: Vec<f32>,
    /// The score's bound on each structural feature; empty for none.
    dense_max: Vec<f32>,
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
        let calibration: Vec<f64> = b.calibration.iter().map(|&c| f64::from(c) / total as f64).collect();
        if b.dense_means.len() != DENSE {
            return Err(format!(
                "{name}: {} structural means, expected {DENSE}: retrain with scripts/train-understanding",
                b.dense_means.len()
            ));
        }
        if !b.dense_max.is_empty() && b.dense_max.len() != DENSE {
            return Err(format!(
                "{name}: {} structural bounds, expected {DENSE}: retrain with scripts/train-understanding",
                b.dense_max.len()
            ));
        }
        Ok(Understanding {
            difficulty_w,
            dense_max: b.dense_max,
            prior_below: prior_below(&calibration),
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
            prior_below: prior_below(&[1.0 / SCORE_BINS as f64; SCORE_BINS]),
            dense_means: vec![0.0; DENSE],
            dense_max: Vec::new(),
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

    /// The calibration's share below each bin plus half the bin's own (see
    /// `estimate::quantile_in`), kept from load so that a Route reads it
    /// rather than summing the bins.
    pub fn prior_below(&self) -> &[f64] {
        &self.prior_below
    }

    /// Reads a request's texts once, for both its kind and its score.
    pub fn read(&self, texts: &[&str]) -> Reading {
        let x = extract_all(texts, &self.rarity);
        let p = softmax(&self.logits(&x));
        let (best, conf) = most_likely(&p);
        Reading {
            kind: (conf >= self.min_confidence).then_some(best),
            confidence: f64::from(conf),
            difficulty: difficulty_of(&self.difficulty_w, &self.dense_max, &x),
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
            let v = bounded(&self.dense_max, d, v);
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

/// Structural feature `d` as the score reads it: at most `max[d]` (no
/// bound when `max` is empty).
#[inline]
pub fn bounded(max: &[f32], d: usize, v: f32) -> f32 {
    max.get(d).map_or(v, |&m| v.min(m))
}

/// The difficulty model's probability for an extracted request, from its
/// weights (grams, dense, bias) and its bounds on the structural features
/// (empty for none).
pub fn difficulty_of(w: &[f32], max: &[f32], x: &Extracted) -> f64 {
    let mut z = w[BUCKETS + DENSE];
    for &g in &x.grams {
        z += w[g as usize] * x.gram_value;
    }
    for (d, &v) in x.dense.iter().enumerate() {
        z += w[BUCKETS + d] * bounded(max, d, v);
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

    /// The score's labels are almost all in the Latin script: a request in
    /// another is scored within the range they cover, not as near-certain
    /// hard for its script, and an ask to translate written in the
    /// requester's language is still `translation`.
    #[test]
    fn a_request_in_another_script_is_not_hard_for_its_script() {
        let m = Understanding::shipped().expect("the shipped model loads");
        for text in [
            "Напиши короткий рассказ о собаке.",
            "写一个关于小猫的故事。",
            "Переведи на английский: Я завтра не смогу прийти на работу.",
        ] {
            let d = m.read(&[text]).difficulty;
            assert!(d < 0.85, "{text}: {d}");
        }
        let r = m.read(&["Переведи на английский: Я завтра не смогу прийти на работу."]);
        assert_eq!(r.kind.map(|k| m.kinds[k].as_str()), Some("translation"));
        // The bound is what keeps it in range: unbounded, the same request
        // reads its share of letters beyond ASCII far past any label's.
        let x = extract_all(&["Напиши короткий рассказ о собаке."], &m.rarity);
        assert!(!m.dense_max.is_empty());
        assert!(x.dense[8] > m.dense_max[8], "{} vs {}", x.dense[8], m.dense_max[8]);
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
            dense_max: Vec::new(),
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
