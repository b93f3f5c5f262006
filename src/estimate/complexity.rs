//! The complexity score: how demanding a request looks, from 0 to 1, computed
//! from cheap textual features in one pass over the text.
//!
//! It is deterministic and takes a few microseconds for a 1k-token prompt.
//! Each feature is scaled to 0..1 and the score is their weighted sum. The
//! weights sum to 1, so the score is 1 only when every signal is saturated.
//!
//! | feature | measures | saturates at | weight |
//! |---|---|---|---|
//! | `length` | log of the prompt's tokens | 8,192 tokens | 0.20 |
//! | `code` | code fences, code keywords, `{};` density | 12 signals | 0.12 |
//! | `math` | math words, operators between digits, LaTeX | 10 signals | 0.12 |
//! | `multi_step` | numbered or bulleted lines, sequencing words | 6 signals | 0.12 |
//! | `constraints` | must, exactly, at least, only, never... | 6 signals | 0.08 |
//! | `reasoning` | why, explain, prove, compare, design, debug... | 4 signals | 0.16 |
//! | `questions` | question marks | 4 | 0.05 |
//! | `structured` | asks for JSON, YAML, a table, a schema... | 2 signals | 0.05 |
//! | `task_prior` | the task kind's `complexity_prior` | 1.0 | 0.10 |

use serde::Serialize;

/// Feature values, each in 0..1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Signals {
    pub length: f64,
    pub code: f64,
    pub math: f64,
    pub multi_step: f64,
    pub constraints: f64,
    pub reasoning: f64,
    pub questions: f64,
    pub structured: f64,
    pub task_prior: f64,
}

/// Weights of each feature; they sum to 1.
pub const WEIGHTS: Signals = Signals {
    length: 0.20,
    code: 0.12,
    math: 0.12,
    multi_step: 0.12,
    constraints: 0.08,
    reasoning: 0.16,
    questions: 0.05,
    structured: 0.05,
    task_prior: 0.10,
};

/// The names of [`Signals::named`], comma-separated, as snapshots record
/// them beside the values.
pub const FEATURE_NAMES: &str = "length,code,math,multi_step,constraints,reasoning,questions,structured,task_prior";

impl Signals {
    /// The fields by name, as snapshots record them.
    pub fn named(&self) -> [(&'static str, f64); 9] {
        [
            ("length", self.length),
            ("code", self.code),
            ("math", self.math),
            ("multi_step", self.multi_step),
            ("constraints", self.constraints),
            ("reasoning", self.reasoning),
            ("questions", self.questions),
            ("structured", self.structured),
            ("task_prior", self.task_prior),
        ]
    }

    /// Signals from their names (absent ones 0).
    pub fn from_named(get: impl Fn(&str) -> Option<f64>) -> Signals {
        let at = |k: &str| get(k).unwrap_or(0.0);
        Signals {
            length: at("length"),
            code: at("code"),
            math: at("math"),
            multi_step: at("multi_step"),
            constraints: at("constraints"),
            reasoning: at("reasoning"),
            questions: at("questions"),
            structured: at("structured"),
            task_prior: at("task_prior"),
        }
    }

    /// The weighted score, clamped to 0..1.
    pub fn score(&self) -> f64 {
        let w = WEIGHTS;
        let s = self.length * w.length
            + self.code * w.code
            + self.math * w.math
            + self.multi_step * w.multi_step
            + self.constraints * w.constraints
            + self.reasoning * w.reasoning
            + self.questions * w.questions
            + self.structured * w.structured
            + self.task_prior * w.task_prior;
        s.clamp(0.0, 1.0)
    }
}

/// Raw counts from one pass over the text. Counts from several messages add.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub code: u32,
    pub math: u32,
    pub multi_step: u32,
    pub constraints: u32,
    pub reasoning: u32,
    pub questions: u32,
    pub structured: u32,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.code += o.code;
        self.math += o.math;
        self.multi_step += o.multi_step;
        self.constraints += o.constraints;
        self.reasoning += o.reasoning;
        self.questions += o.questions;
        self.structured += o.structured;
    }

    /// Scales the counts into features, given the prompt's token count and the
    /// task kind's prior.
    pub fn features(&self, tokens: u64, task_prior: f64) -> Signals {
        let sat = |n: u32, at: f64| (n as f64 / at).min(1.0);
        Signals {
            length: ((1.0 + tokens as f64).ln() / (1.0f64 + 8192.0).ln()).min(1.0),
            code: sat(self.code, 12.0),
            math: sat(self.math, 10.0),
            multi_step: sat(self.multi_step, 6.0),
            constraints: sat(self.constraints, 6.0),
            reasoning: sat(self.reasoning, 4.0),
            questions: sat(self.questions, 4.0),
            structured: sat(self.structured, 2.0),
            task_prior: task_prior.clamp(0.0, 1.0),
        }
    }
}

/// Scans `text` once and counts the signals.
///
/// Letters are consumed a word at a time, eight bytes per step (most bytes
/// are letters); only the bytes between words are examined one by one.
pub fn scan(text: &str) -> Counts {
    let mut c = Counts::default();
    let bytes = text.as_bytes();
    let n = bytes.len();
    let mut at_line_start = true;
    let mut line_indent = 0u32;
    let mut code_punct = 0u32;
    let mut prev_digit = false;
    let mut i = 0;
    while i < n {
        let b = bytes[i];
        if b.is_ascii_alphabetic() {
            let start = i;
            i = super::run_end(bytes, i, super::Run::Alpha);
            classify_word(bytes, start, i - start, &mut c);
            at_line_start = false;
            prev_digit = false;
            // The space after a word, the commonest case, changes nothing below.
            if bytes.get(i) == Some(&b' ') {
                i += 1;
            }
            continue;
        }
        if b == b' ' && !at_line_start {
            // The commonest byte between words changes nothing below.
            i += 1;
            continue;
        }
        match b {
            b'\n' => {
                at_line_start = true;
                line_indent = 0;
            }
            b' ' | b'\t' if at_line_start => {
                line_indent += if b == b'\t' { 4 } else { 1 };
                if line_indent == 4 {
                    // An indented line reads as code.
                    code_punct += 2;
                }
            }
            _ if at_line_start => {
                at_line_start = false;
                // "1." / "2)" / "- " / "* " at the start of a line is a step.
                if b.is_ascii_digit() {
                    let mut j = i;
                    while j < n && bytes[j].is_ascii_digit() {
                        j += 1;
                    }
                    if j + 1 < n && (bytes[j] == b'.' || bytes[j] == b')') && bytes[j + 1] == b' ' {
                        c.multi_step += 1;
                    }
                } else if (b == b'-' || b == b'*') && bytes.get(i + 1) == Some(&b' ') {
                    c.multi_step += 1;
                }
            }
            _ => {}
        }
        match b {
            b'?' => c.questions += 1,
            b'`' if bytes[i..].starts_with(b"```") => {
                c.code += 3;
                i += 2;
            }
            b'{' | b'}' | b';' => code_punct += 1,
            b'\\' if bytes.get(i + 1).is_some_and(|n| n.is_ascii_alphabetic()) => c.math += 1,
            b'+' | b'*' | b'/' | b'^' | b'=' | b'<' | b'>'
                if prev_digit || bytes.get(i + 1).is_some_and(u8::is_ascii_digit) =>
            {
                c.math += 1
            }
            _ => {}
        }
        prev_digit = b.is_ascii_digit() || (b == b' ' && prev_digit);
        i += 1;
    }
    c.code += code_punct / 4;
    c
}

/// Which count a keyword adds to.
#[derive(Clone, Copy)]
enum Signal {
    Reasoning,
    Constraint,
    Step,
    Structured,
    Math,
    Code,
}

const KEYWORDS: &[(&str, Signal)] = &[
    ("why", Signal::Reasoning),
    ("explain", Signal::Reasoning),
    ("analyze", Signal::Reasoning),
    ("analyse", Signal::Reasoning),
    ("compare", Signal::Reasoning),
    ("evaluate", Signal::Reasoning),
    ("derive", Signal::Reasoning),
    ("prove", Signal::Reasoning),
    ("justify", Signal::Reasoning),
    ("design", Signal::Reasoning),
    ("debug", Signal::Reasoning),
    ("optimize", Signal::Reasoning),
    ("optimise", Signal::Reasoning),
    ("reason", Signal::Reasoning),
    ("infer", Signal::Reasoning),
    ("critique", Signal::Reasoning),
    ("tradeoffs", Signal::Reasoning),
    ("architect", Signal::Reasoning),
    ("diagnose", Signal::Reasoning),
    ("refactor", Signal::Reasoning),
    ("assess", Signal::Reasoning),
    ("must", Signal::Constraint),
    ("exactly", Signal::Constraint),
    ("least", Signal::Constraint),
    ("most", Signal::Constraint),
    ("without", Signal::Constraint),
    ("only", Signal::Constraint),
    ("never", Signal::Constraint),
    ("always", Signal::Constraint),
    ("ensure", Signal::Constraint),
    ("require", Signal::Constraint),
    ("requires", Signal::Constraint),
    ("limit", Signal::Constraint),
    ("strictly", Signal::Constraint),
    ("constraint", Signal::Constraint),
    ("constraints", Signal::Constraint),
    ("then", Signal::Step),
    ("next", Signal::Step),
    ("finally", Signal::Step),
    ("afterwards", Signal::Step),
    ("steps", Signal::Step),
    ("first", Signal::Step),
    ("second", Signal::Step),
    ("third", Signal::Step),
    ("subsequently", Signal::Step),
    ("json", Signal::Structured),
    ("yaml", Signal::Structured),
    ("xml", Signal::Structured),
    ("csv", Signal::Structured),
    ("table", Signal::Structured),
    ("schema", Signal::Structured),
    ("markdown", Signal::Structured),
    ("format", Signal::Structured),
    ("integral", Signal::Math),
    ("derivative", Signal::Math),
    ("equation", Signal::Math),
    ("theorem", Signal::Math),
    ("matrix", Signal::Math),
    ("probability", Signal::Math),
    ("polynomial", Signal::Math),
    ("lemma", Signal::Math),
    ("eigenvalue", Signal::Math),
    ("sqrt", Signal::Math),
    ("modulo", Signal::Math),
    ("logarithm", Signal::Math),
    ("calculate", Signal::Math),
    ("compute", Signal::Math),
    ("fn", Signal::Code),
    ("def", Signal::Code),
    ("class", Signal::Code),
    ("import", Signal::Code),
    ("return", Signal::Code),
    ("const", Signal::Code),
    ("struct", Signal::Code),
    ("impl", Signal::Code),
    ("function", Signal::Code),
    ("async", Signal::Code),
    ("await", Signal::Code),
    ("lambda", Signal::Code),
    ("include", Signal::Code),
    ("println", Signal::Code),
    ("printf", Signal::Code),
    ("select", Signal::Code),
    ("traceback", Signal::Code),
    ("stacktrace", Signal::Code),
    ("compile", Signal::Code),
    ("segfault", Signal::Code),
];

/// The keywords by their packed lower-case bytes (`pack_le`), in an
/// open-addressed table: a word is one multiply and, nearly always, one
/// comparison (a binary search over the sorted keywords cost several
/// mispredicted branches for every word of a prompt).
struct KeywordTable {
    slots: [(u128, Option<Signal>); KEYWORD_SLOTS],
    /// By word length, a bit for each first letter some keyword of that
    /// length has: most words are ruled out by one load and a shift.
    first: [u32; 13],
}

/// A power of two, about four times the keywords.
const KEYWORD_SLOTS: usize = 256;

fn keyword_slot(key: u128) -> usize {
    let folded = (key as u64) ^ ((key >> 64) as u64).rotate_left(31);
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize % KEYWORD_SLOTS
}

impl KeywordTable {
    fn build() -> KeywordTable {
        let mut slots = [(0u128, None); KEYWORD_SLOTS];
        let mut first = [0u32; 13];
        for (w, s) in KEYWORDS {
            first[w.len()] |= 1 << (w.as_bytes()[0] - b'a');
            let key = super::pack_le(w.as_bytes(), 0, w.len());
            let mut i = keyword_slot(key);
            while slots[i].1.is_some() {
                i = (i + 1) % KEYWORD_SLOTS;
            }
            slots[i] = (key, Some(*s));
        }
        KeywordTable { slots, first }
    }

    /// Whether some keyword has this length and first letter (`len` 2 to 12).
    fn may_hold(&self, len: usize, first_letter: u8) -> bool {
        self.first[len] >> ((first_letter | 0x20).wrapping_sub(b'a') & 31) & 1 == 1
    }

    fn get(&self, key: u128) -> Option<Signal> {
        let mut i = keyword_slot(key);
        loop {
            match self.slots[i] {
                (k, Some(s)) if k == key => return Some(s),
                (_, Some(_)) => i = (i + 1) % KEYWORD_SLOTS,
                (_, None) => return None,
            }
        }
    }
}

static KEYWORD_INDEX: std::sync::LazyLock<KeywordTable> = std::sync::LazyLock::new(KeywordTable::build);

/// Counts the word `text[start..start + len]` if it is a keyword.
fn classify_word(text: &[u8], start: usize, len: usize, c: &mut Counts) {
    if !(2..=12).contains(&len) {
        return;
    }
    let index = &*KEYWORD_INDEX;
    if !index.may_hold(len, text[start]) {
        return;
    }
    // Every byte is an ASCII letter: setting bit 5 lowercases it.
    let lower = 0x2020_2020_2020_2020_2020_2020_2020_2020u128 & super::low_bytes(len);
    let key = super::pack_le(text, start, len) | lower;
    if let Some(signal) = index.get(key) {
        match signal {
            Signal::Reasoning => c.reasoning += 1,
            Signal::Constraint => c.constraints += 1,
            Signal::Step => c.multi_step += 1,
            Signal::Structured => c.structured += 1,
            Signal::Math => c.math += 1,
            Signal::Code => c.code += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(text: &str) -> f64 {
        let tokens = (text.len() / 4) as u64;
        scan(text).features(tokens, 0.0).score()
    }

    #[test]
    fn weights_sum_to_one() {
        let w = WEIGHTS;
        let sum = w.length
            + w.code
            + w.math
            + w.multi_step
            + w.constraints
            + w.reasoning
            + w.questions
            + w.structured
            + w.task_prior;
        assert!((sum - 1.0).abs() < 1e-12, "weights sum to {sum}");
    }

    #[test]
    fn easy_prompt_scores_low_and_hard_prompt_high() {
        let easy = score("What is the capital of France?");
        let hard = score(
            "Design a lock-free queue in Rust and explain why it is linearizable. First, derive the invariants; \
             then prove each step. You must handle ABA exactly, never allocate on the hot path, and return JSON with \
             the schema {\"proof\": string}.\n1. fn push(&self, v: T) { ... }\n2. fn pop(&self) -> Option<T> { ... }\n\
             ```rust\nimpl<T> Queue<T> { fn new() -> Self { todo!() } }\n```\nWhy does x^2 = 4 have two roots? Compare both.",
        );
        assert!(easy < 0.15, "easy scored {easy}");
        assert!(hard > 0.5, "hard scored {hard}");
    }

    #[test]
    fn counts_each_signal() {
        let c = scan("Explain why.\n1. first step\n- second\nReturn JSON. 3+4=7? \\frac{1}{2}");
        assert_eq!(c.reasoning, 2);
        assert!(c.multi_step >= 3, "{c:?}");
        assert_eq!(c.structured, 1);
        assert!(c.math >= 3, "{c:?}");
        assert_eq!(c.questions, 1);
    }

    #[test]
    fn every_keyword_is_found_and_no_other_word() {
        for (w, _) in KEYWORDS {
            assert!(w.len() <= 12 && *w == w.to_lowercase(), "{w}");
            let c = scan(w);
            assert_ne!(c, Counts::default(), "{w} not counted");
        }
        assert_eq!(scan("the cat sat on a mat"), Counts::default());
        assert_eq!(scan("Explainer whys"), Counts::default(), "whole words only");
        // In running text, in any case: each keyword counts once, whether it
        // is read with 16 bytes after it or near the end of the text.
        let text: String = KEYWORDS
            .iter()
            .enumerate()
            .map(|(i, (w, _))| if i % 2 == 0 { w.to_uppercase() } else { w.to_string() })
            .collect::<Vec<_>>()
            .join(" and ");
        let c = scan(&text);
        let total = c.reasoning + c.constraints + c.multi_step + c.structured + c.math + c.code;
        assert_eq!(total as usize, KEYWORDS.len(), "{c:?}");
    }

    #[test]
    fn deterministic_and_bounded() {
        let text = "x".repeat(100_000) + &"why? ".repeat(10_000);
        let a = scan(&text).features(1_000_000, 1.0);
        let b = scan(&text).features(1_000_000, 1.0);
        assert_eq!(a, b);
        assert!((0.0..=1.0).contains(&a.score()));
    }
}
