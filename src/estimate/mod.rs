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
    let kind = table.task_kind(task_kind);
    let class = table.class_of(task_kind);
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

    let output_tokens = if max_output_tokens > 0 {
        max_output_tokens as u64
    } else {
        kind.and_then(|k| k.output_tokens)
            .unwrap_or(table.default_output_tokens)
    };

    Estimate {
        input_tokens,
        complexity: features.score(),
        features,
        output_tokens,
        task_kind: task_kind.to_string(),
        class,
    }
}

/// Computes the per-message work for `messages` without any cache.
pub fn compute_work(messages: &[MessageRef<'_>], encodings: &[Encoding]) -> Vec<MessageWork> {
    messages
        .iter()
        .map(|m| MessageWork::compute(m.content, encodings))
        .collect()
}
