//! A Route request as the domain holds it: owned, validated. The edge moves
//! the decoded strings in (nothing is copied), so a large request is parsed
//! once, and the call can move to the blocking pool whole.

use crate::error::{truncate, Error};
use crate::estimate::{MessageRef, Role};
use crate::rules::Capabilities;

/// Limits on a Route request's fields. The whole message is also capped in
/// bytes at the gRPC edge (`--max-request-bytes`).
pub mod limits {
    pub const MAX_NAME_BYTES: usize = 128;
    pub const MAX_OUTCOME_ID_BYTES: usize = 256;
    pub const MAX_MESSAGES: usize = 4096;
    pub const MAX_LABELS: usize = 16;
    pub const MAX_LABEL_KEY_BYTES: usize = 64;
    pub const MAX_LABEL_VALUE_BYTES: usize = 256;
    pub const MAX_ATTEMPT: u32 = 1000;
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// A Route request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCall {
    pub workflow: String,
    /// Empty when the call names no outcome.
    pub outcome_id: String,
    pub task_kind: String,
    pub messages: Vec<Message>,
    /// 0: not given.
    pub max_output_tokens: u32,
    /// 1 for a first try.
    pub attempt: u32,
    pub deferrable: bool,
    pub capabilities: Capabilities,
    pub labels: Vec<(String, String)>,
    /// The span this call is traced in: the spend counter's exemplar.
    pub trace: Option<crate::metrics::TraceRef>,
}

/// The fields of a Route request as any front end receives them, by value.
pub struct RawRoute<M, L, C> {
    pub workflow: String,
    pub outcome_id: String,
    pub task_kind: String,
    /// (role, content) pairs.
    pub messages: M,
    pub attempt: u32,
    pub max_output_tokens: u32,
    pub deferrable: bool,
    /// Capability names.
    pub capabilities: C,
    /// (key, value) pairs.
    pub labels: L,
}

impl RouteCall {
    /// Validates untrusted fields. Every error names the field and what to do.
    pub fn new<M, L, C>(raw: RawRoute<M, L, C>) -> Result<RouteCall, Error>
    where
        M: ExactSizeIterator<Item = (String, String)>,
        L: ExactSizeIterator<Item = (String, String)>,
        C: Iterator<Item = String>,
    {
        use limits::*;
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if raw.workflow.is_empty() {
            return bad(
                "workflow is empty: set RouteRequest.workflow to a workflow from the rules, e.g. \"general\"".into(),
            );
        }
        if raw.workflow.len() > MAX_NAME_BYTES {
            return bad(format!(
                "workflow is {} bytes; names are at most {MAX_NAME_BYTES}",
                raw.workflow.len()
            ));
        }
        if raw.outcome_id.len() > MAX_OUTCOME_ID_BYTES {
            return bad(format!(
                "outcome_id is {} bytes; at most {MAX_OUTCOME_ID_BYTES}",
                raw.outcome_id.len()
            ));
        }
        if raw.outcome_id.chars().any(char::is_control) {
            return bad(
                "outcome_id contains control characters; use printable text (a ticket or PR ID, say)".to_string(),
            );
        }
        if raw.task_kind.len() > MAX_NAME_BYTES {
            return bad(format!(
                "task_kind is {} bytes; at most {MAX_NAME_BYTES}",
                raw.task_kind.len()
            ));
        }
        if raw.messages.len() == 0 {
            return bad("messages is empty: send at least one Message{role, content}".into());
        }
        if raw.messages.len() > MAX_MESSAGES {
            return bad(format!(
                "{} messages; at most {MAX_MESSAGES} per request",
                raw.messages.len()
            ));
        }
        if raw.attempt > MAX_ATTEMPT {
            return bad(format!(
                "attempt {} is absurd; attempts count from 1 and stop at {MAX_ATTEMPT}",
                raw.attempt
            ));
        }
        if raw.labels.len() > MAX_LABELS {
            return bad(format!(
                "{} labels; at most {MAX_LABELS} labels per request: keep labels for what reports group by",
                raw.labels.len()
            ));
        }
        let mut labels = Vec::with_capacity(raw.labels.len());
        for (k, v) in raw.labels {
            if k.is_empty() || k.len() > MAX_LABEL_KEY_BYTES {
                return bad(format!(
                    "label key `{}` is {} bytes; label keys are 1 to {MAX_LABEL_KEY_BYTES} bytes",
                    truncate(&k, 64),
                    k.len()
                ));
            }
            if v.len() > MAX_LABEL_VALUE_BYTES {
                return bad(format!(
                    "label `{}` has a value of {} bytes; label values are at most {MAX_LABEL_VALUE_BYTES} bytes",
                    truncate(&k, 64),
                    v.len()
                ));
            }
            if k.chars().chain(v.chars()).any(char::is_control) || k.contains('=') {
                return bad(format!(
                    "label `{}` contains `=` in its key or control characters; use printable text",
                    truncate(&k, 64).escape_debug()
                ));
            }
            labels.push((k, v));
        }
        let mut capabilities = Capabilities::default();
        for c in raw.capabilities {
            match Capabilities::parse(&c) {
                Some(cap) => capabilities.insert(cap),
                None => {
                    return bad(format!(
                        "unknown capability `{}` in required_capabilities; use \"tools\", \"vision\" or \"json\"",
                        truncate(&c, 64)
                    ))
                }
            }
        }
        let mut messages = Vec::with_capacity(raw.messages.len());
        for (i, (role, content)) in raw.messages.enumerate() {
            let Some(role) = Role::parse(&role) else {
                return bad(format!(
                    "messages[{i}].role is `{}`; use system, developer, user, assistant or tool",
                    truncate(&role, 32)
                ));
            };
            messages.push(Message { role, content });
        }
        Ok(RouteCall {
            workflow: raw.workflow,
            outcome_id: raw.outcome_id,
            task_kind: raw.task_kind,
            messages,
            max_output_tokens: raw.max_output_tokens,
            attempt: raw.attempt.max(1),
            deferrable: raw.deferrable,
            capabilities,
            labels,
            trace: None,
        })
    }

    /// The messages as the estimate reads them.
    pub fn message_refs(&self) -> Vec<MessageRef<'_>> {
        self.messages
            .iter()
            .map(|m| MessageRef {
                role: m.role,
                content: &m.content,
            })
            .collect()
    }

    /// Bytes of message content.
    pub fn content_bytes(&self) -> usize {
        self.messages.iter().map(|m| m.content.len()).sum()
    }

    /// The labels as borrowed pairs.
    pub fn label_pairs(&self) -> impl Iterator<Item = (&str, &str)> + Clone {
        self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}
