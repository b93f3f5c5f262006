//! Estimation: what a request will cost before it is made.
//!
//! For each message it counts tokens (in each encoding the workflow's models
//! use) and scans complexity signals. From those it derives the complexity
//! score and the predicted output length. The per-message work is the unit a
//! cache can keep, because agents resend the same system prompt every call.

mod bits;
pub mod cache;
pub mod complexity;
mod pretokenize;
pub mod tokens;

use serde::Serialize;

pub use complexity::Signals;
use complexity::{scan, Counts};

pub(crate) use bits::{low_bytes, pack_le, run_end, Run, HIGH};

use crate::rules::{Encoding, RuleTable, Workflow};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "system" => Role::System,
            "developer" => Role::Developer,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            _ => return None,
        })
    }
}

/// One message of a request, borrowed from the call.
#[derive(Debug, Clone, Copy)]
pub struct MessageRef<'a> {
    pub role: Role,
    pub content: &'a str,
}

/// The work done on one message's content.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageWork {
    /// Content tokens per encoding (indexed by `Encoding as usize`), if counted.
    pub tokens: [Option<u64>; 2],
    pub counts: Counts,
}

impl MessageWork {
    /// Counts `content` in each of `encodings` and scans it.
    pub fn compute(content: &str, encodings: &[Encoding]) -> MessageWork {
        let mut w = MessageWork {
            tokens: [None; 2],
            counts: scan(content),
        };
        for &e in encodings {
            w.tokens[e as usize] = Some(tokens::count(e, content));
        }
        w
    }
}

/// Where a request's task kind came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KindSource {
    /// The request named it.
    Declared,
    /// The classifier read it from the text.
    Inferred,
    /// The workflow's `default_task_kind`: the workflow names one other
    /// than `general`, or the classifier was not confident enough.
    Default,
}

impl KindSource {
    pub fn as_str(self) -> &'static str {
        match self {
            KindSource::Declared => "declared",
            KindSource::Inferred => "inferred",
            KindSource::Default => "default",
        }
    }
}

/// The messages a request's kind and difficulty are read from: the user's,
/// newest first (the current ask leads), or every message when there is no
/// user message.
pub fn asked<'m, 'a>(messages: &'m [MessageRef<'a>]) -> impl Iterator<Item = &'m MessageRef<'a>> {
    let is_asked = asking(messages);
    messages.iter().rev().filter(move |m| is_asked(m))
}

/// Whether a message is one [`asked`] reads: the one place that rule is written.
fn asking(messages: &[MessageRef<'_>]) -> impl Fn(&MessageRef<'_>) -> bool + Copy {
    let has_user = messages.iter().any(|m| m.role == Role::User);
    move |m| !has_user || m.role == Role::User
}

/// The estimate for one request, shared by every candidate model.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    /// Input tokens per encoding, including chat overhead; 0 where not counted.
    pub input_tokens: [u64; 2],
    pub features: Signals,
    /// The complexity score: the probability, 0 to 1, that a cheap tier's
    /// answer would not be accepted where a strong tier's would.
    pub complexity: f64,
    /// The share of the workflow's traffic that scores below this request
    /// (set when the request is planned; the model's calibration alone
    /// until the workflow has traffic of its own).
    pub complexity_quantile: f64,
    /// Predicted output tokens.
    pub output_tokens: u64,
    /// The task kind the request was estimated as.
    pub task_kind: String,
    pub task_kind_source: KindSource,
    /// The classifier's probability for its most likely kind (1 for a
    /// declared kind).
    pub task_kind_confidence: f64,
    /// The index of the task class (into `RuleTable::classes`).
    pub class: usize,
}

impl Estimate {
    pub fn input_tokens(&self, e: Encoding) -> u64 {
        self.input_tokens[e as usize]
    }
}

/// Estimates a request from already-computed per-message work.
///
/// Complexity reads the user's messages (a long system prompt says little about
/// how hard this call is); if there are none, every message. Its length feature
/// uses the tokens of the messages it read.
pub fn estimate(
    table: &RuleTable,
    workflow: &Workflow,
    task_kind: &str,
    messages: &[MessageRef<'_>],
    work: &[MessageWork],
    max_output_tokens: u32,
) -> Estimate {
    let understanding = &table.understanding;
    let texts: Vec<&str> = asked(messages).map(|m| m.content).collect();
    let reading = understanding.read(&texts);
    let (task_kind, task_kind_source, task_kind_confidence) = if !task_kind.is_empty() {
        (task_kind, KindSource::Declared, 1.0)
    } else {
        let inferred = reading
            .kind
            .map(|i| understanding.kinds[i].as_str())
            .filter(|k| workflow.default_task_kind == crate::rules::GENERAL_CLASS && table.knows_kind(k));
        match inferred {
            Some(k) => (k, KindSource::Inferred, reading.confidence),
            None => (
                workflow.default_task_kind.as_str(),
                KindSource::Default,
                reading.confidence,
            ),
        }
    };
    let like = estimated_as(table, workflow, task_kind);
    let kind = table.task_kind(like);
    let class = table.class_of(like);
    let primary = workflow.encodings.first().copied().unwrap_or(Encoding::O200k);

    let mut input_tokens = [0u64; 2];
    for &e in &workflow.encodings {
        let content: u64 = work.iter().map(|w| w.tokens[e as usize].unwrap_or(0)).sum();
        input_tokens[e as usize] = content + tokens::PER_MESSAGE_OVERHEAD * work.len() as u64 + tokens::REPLY_PRIMING;
    }

    let is_asked = asking(messages);
    let mut counts = Counts::default();
    let mut read_tokens = 0u64;
    for (m, w) in messages.iter().zip(work) {
        if is_asked(m) {
            counts.add(&w.counts);
            read_tokens += w.tokens[primary as usize].unwrap_or(0);
        }
    }
    let features = counts.features(read_tokens, kind.map_or(0.0, |k| k.complexity_prior));

    let output_tokens = predicted_output_tokens(table, workflow, task_kind, max_output_tokens);

    Estimate {
        input_tokens,
        complexity: reading.difficulty,
        complexity_quantile: prior_quantile(understanding.prior_below(), reading.difficulty),
        features,
        output_tokens,
        task_kind: task_kind.to_string(),
        task_kind_source,
        task_kind_confidence,
        class,
    }
}

/// The share of traffic scoring below `score`: the calibration's shares
/// (summing to 1) weighed as [`PRIOR_REQUESTS`] requests, plus the
/// workflow's own counts: `below_twice` is twice its requests in bins below
/// the score's plus those in its bin (half of the score's own bin counts as
/// below), `seen` all of them ([`counts_around`] from a plain histogram).
/// No loop and no allocation: it runs on every Route.
pub fn quantile_in(prior_below: &[f64], score: f64, below_twice: u64, seen: u64) -> f64 {
    let bin = crate::understand::score_bin(score);
    // The calibration's part was summed once, at load (`prior_below`).
    let prior = prior_below.get(bin).copied().unwrap_or(1.0) * PRIOR_REQUESTS;
    ((prior + below_twice as f64 / 2.0) / (PRIOR_REQUESTS + seen as f64)).clamp(0.0, 1.0)
}

/// `(below_twice, seen)` of [`quantile_in`] from a histogram's counts.
pub fn counts_around(counts: &[u64], score: f64) -> (u64, u64) {
    let bin = crate::understand::score_bin(score).min(counts.len());
    let below: u64 = counts[..bin].iter().sum();
    let at = counts.get(bin).copied().unwrap_or(0);
    (2 * below + at, counts.iter().sum())
}

/// [`quantile_in`] before any traffic is seen: the calibration alone.
pub fn prior_quantile(prior_below: &[f64], score: f64) -> f64 {
    prior_below
        .get(crate::understand::score_bin(score))
        .copied()
        .unwrap_or(1.0)
        .clamp(0.0, 1.0)
}

/// How many requests the model's calibration counts for in a workflow's
/// quantiles: its own traffic outweighs it after a hundred requests. The
/// calibration is a broad mix, not any one workflow's traffic, so it yields
/// soon; at 100 a quantile rests on enough of the workflow's own requests
/// (about ±0.03 at the 0.9 quantile) by the time they outweigh it.
pub const PRIOR_REQUESTS: f64 = 100.0;

/// The kind a request is estimated as: its own, or, when the rules list it
/// neither as a task kind nor as a class, the workflow's default kind (the
/// request's name for it is still what learning and reports see).
pub(crate) fn estimated_as<'a>(table: &RuleTable, workflow: &'a Workflow, task_kind: &'a str) -> &'a str {
    let task_kind = if task_kind.is_empty() {
        workflow.default_task_kind.as_str()
    } else {
        task_kind
    };
    if table.task_kind(task_kind).is_some() || table.classes.iter().any(|c| c == task_kind) {
        task_kind
    } else {
        workflow.default_task_kind.as_str()
    }
}

/// The output length predicted for a request: its own `max_output_tokens`,
/// else its task kind's, else the rules' default.
pub fn predicted_output_tokens(table: &RuleTable, workflow: &Workflow, task_kind: &str, max_output_tokens: u32) -> u64 {
    if max_output_tokens > 0 {
        return max_output_tokens as u64;
    }
    table
        .task_kind(estimated_as(table, workflow, task_kind))
        .and_then(|k| k.output_tokens)
        .unwrap_or(table.default_output_tokens)
}

/// Computes the per-message work for `messages` without any cache.
pub fn compute_work(messages: &[MessageRef<'_>], encodings: &[Encoding]) -> Vec<MessageWork> {
    messages
        .iter()
        .map(|m| MessageWork::compute(m.content, encodings))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic xorshift for the randomised tests.
    pub(crate) fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn runs_end_where_a_byte_at_a_time_loop_ends() {
        // The bytes on either side of each range, and letters with the high
        // bit set, among plenty of letters so that runs cross eight bytes.
        let edges = b"@AZ[`az{ 0\x00\x7f\x80\xc1\xda\xe1\xfa\xff";
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for case in 0..5_000 {
            let b: Vec<u8> = (0..case % 41)
                .map(|_| {
                    let r = xorshift(&mut state);
                    let pick = (r >> 8) as usize;
                    if r.is_multiple_of(4) {
                        edges[pick % edges.len()]
                    } else {
                        b"aAbZzYq"[pick % 7]
                    }
                })
                .collect();
            for i in 0..=b.len() {
                for run in [Run::Lower, Run::Upper, Run::Alpha] {
                    let mut e = i;
                    while e < b.len() && run.holds(b[e]) {
                        e += 1;
                    }
                    assert_eq!(run_end(&b, i, run), e, "{run:?} from {i} in {b:?}");
                }
            }
        }
    }

    #[test]
    fn packs_exactly_the_bytes_asked_for() {
        let text = b"abcdefghijklmnopqrstuvwxyz";
        for start in [0, 3, 10, 20] {
            for len in 0..=16.min(text.len() - start) {
                let mut want = [0u8; 16];
                want[..len].copy_from_slice(&text[start..start + len]);
                assert_eq!(pack_le(text, start, len), u128::from_le_bytes(want), "{start} {len}");
            }
        }
    }

    #[test]
    fn an_unlisted_task_kind_is_estimated_as_the_workflows_default_kind() {
        let table = RuleTable::from_str(
            "t.toml",
            r#"
[[models]]
name = "m"
provider = "p"
input_per_mtok = 1.0
cached_input_per_mtok = 1.0
output_per_mtok = 1.0
context_window = 10000
max_output_tokens = 1000
tiers = { general = 2, code = 3 }

[[task_kinds]]
name = "mcq"
class = "code"
output_tokens = 16

[[workflows]]
name = "w"
default_task_kind = "mcq"
"#,
        )
        .expect("valid rules");
        let wf = table.workflow("w").expect("workflow");
        let msgs = [MessageRef {
            role: Role::User,
            content: "Which is right?",
        }];
        let work = compute_work(&msgs, &wf.encodings);
        let est = |kind: &str| estimate(&table, wf, kind, &msgs, &work, 0);
        let unlisted = est("anatomy");
        assert_eq!(unlisted.output_tokens, 16, "the default kind's output length");
        assert_eq!(table.classes[unlisted.class], "code", "and its class");
        assert_eq!(unlisted.task_kind, "anatomy", "under the request's own name");
        let class_name = est("general");
        assert_eq!(
            table.classes[class_name.class], "general",
            "a class name is taken as given"
        );
        assert_eq!(class_name.output_tokens, table.default_output_tokens);
        assert_eq!(predicted_output_tokens(&table, wf, "anatomy", 0), 16);
        assert_eq!(predicted_output_tokens(&table, wf, "anatomy", 99), 99);
    }

    #[test]
    fn quantiles_are_the_calibration_and_the_counts_below_with_half_the_bin() {
        use crate::understand::{score_bin, SCORE_BINS};
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || xorshift(&mut rng);
        let raw: Vec<f64> = (0..SCORE_BINS).map(|_| (next() % 1000) as f64 + 1.0).collect();
        let total: f64 = raw.iter().sum();
        let calibration: Vec<f64> = raw.iter().map(|c| c / total).collect();
        let mut prior_below = Vec::new();
        let mut below = 0.0;
        for c in &calibration {
            prior_below.push(below + c / 2.0);
            below += c;
        }
        let counts: Vec<u64> = (0..SCORE_BINS).map(|_| next() % 50).collect();
        for score in [0.0, 0.004, 0.25, 0.5, 0.731, 0.99, 1.0] {
            // The definition, summed bin by bin.
            let bin = score_bin(score);
            let (mut want, mut seen) = (0.0, 0u64);
            for i in 0..SCORE_BINS {
                let at = calibration[i] * PRIOR_REQUESTS + counts[i] as f64;
                seen += counts[i];
                if i < bin {
                    want += at;
                } else if i == bin {
                    want += at / 2.0;
                }
            }
            let want = want / (PRIOR_REQUESTS + seen as f64);
            let (below_twice, seen) = counts_around(&counts, score);
            let got = quantile_in(&prior_below, score, below_twice, seen);
            assert!((got - want).abs() < 1e-12, "{score}: {got} against {want}");
            let prior: f64 = calibration[..bin].iter().sum::<f64>() + calibration[bin] / 2.0;
            assert!((prior_quantile(&prior_below, score) - prior).abs() < 1e-12);
            assert!((quantile_in(&prior_below, score, 0, 0) - prior).abs() < 1e-12);
        }
    }
}
