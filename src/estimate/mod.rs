//! Estimation: what a request will cost before it is made.
//!
//! For each message it counts tokens (in each encoding the workflow's models
//! use) and scans complexity signals. From those it derives the complexity
//! score and the predicted output length. The per-message work is the unit a
//! cache can keep, because agents resend the same system prompt every call.

pub mod cache;
pub mod complexity;
mod pretokenize;
pub mod tokens;

use serde::Serialize;

pub use complexity::Features;
use complexity::{scan, Counts};

use crate::rules::{Encoding, RuleTable, Workflow};

/// `len` (at most 16) bytes of `buf` from `start`, byte `i` at bits `8i`,
/// zero above. Where 16 bytes are there to read this is one load and a mask:
/// copying a short variable-length slice into an array instead compiled to a
/// `memcpy` call per word, a tenth of the server's time on unique contexts.
#[inline]
pub(crate) fn pack_le(buf: &[u8], start: usize, len: usize) -> u128 {
    let mut a = [0u8; 16];
    match buf.get(start..start + 16) {
        Some(s) => a.copy_from_slice(s),
        None => {
            for (slot, &b) in a.iter_mut().zip(&buf[start..start + len.min(16)]) {
                *slot = b;
            }
        }
    }
    let v = u128::from_le_bytes(a);
    if len >= 16 {
        v
    } else {
        v & ((1u128 << (8 * len)) - 1)
    }
}

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

/// One message of a request, borrowed from the decoded protobuf.
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

/// The estimate for one request, shared by every candidate model.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    /// Input tokens per encoding, including chat overhead; 0 where not counted.
    pub input_tokens: [u64; 2],
    pub features: Features,
    /// The complexity score, 0 to 1.
    pub complexity: f64,
    /// Predicted output tokens.
    pub output_tokens: u64,
    /// The task kind the request was estimated as.
    pub task_kind: String,
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
    let task_kind = if task_kind.is_empty() {
        workflow.default_task_kind.as_str()
    } else {
        task_kind
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

    let has_user = messages.iter().any(|m| m.role == Role::User);
    let mut counts = Counts::default();
    let mut read_tokens = 0u64;
    for (m, w) in messages.iter().zip(work) {
        if !has_user || m.role == Role::User {
            counts.add(&w.counts);
            read_tokens += w.tokens[primary as usize].unwrap_or(0);
        }
    }
    let features = counts.features(read_tokens, kind.map_or(0.0, |k| k.complexity_prior));

    let output_tokens = predicted_output_tokens(table, workflow, task_kind, max_output_tokens);

    Estimate {
        input_tokens,
        complexity: features.score(),
        features,
        output_tokens,
        task_kind: task_kind.to_string(),
        class,
    }
}

/// The kind a request is estimated as: its own, or, when the rules list it
/// neither as a task kind nor as a class, the workflow's default kind (the
/// request's name for it is still what learning and reports see).
fn estimated_as<'a>(table: &RuleTable, workflow: &'a Workflow, task_kind: &'a str) -> &'a str {
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
}
