//! The route pipeline shared by `serve` and `explain`: validate the request,
//! estimate it, decide. Nothing here knows about protobuf or the network.

use crate::decide::{available_tiers, decide, Candidate, Decision, RouteInput};
use crate::error::{truncate, Error};
use crate::estimate::cache::{ContextCache, Fingerprints};
use crate::estimate::{compute_work, estimate, Estimate, MessageRef, Role};
use crate::outcome::learn::{Features, Learned, Learner};
use crate::rules::{Capabilities, RuleTable, Workflow};

/// Limits on a Route request's fields. The whole message is also capped in
/// bytes at the gRPC edge (`--max-request-bytes`).
pub mod limits {
    pub const MAX_NAME_BYTES: usize = 128;
    pub const MAX_OUTCOME_ID_BYTES: usize = 256;
    pub const MAX_MESSAGES: usize = 4096;
    pub const MAX_LABELS: usize = 64;
    pub const MAX_LABEL_KEY_BYTES: usize = 128;
    pub const MAX_LABEL_VALUE_BYTES: usize = 1024;
    pub const MAX_ATTEMPT: u32 = 1000;
}

/// A Route request, validated, borrowing its text from the decoded message.
#[derive(Debug)]
pub struct RouteCall<'a> {
    pub workflow: &'a str,
    pub outcome_id: &'a str,
    pub task_kind: &'a str,
    pub messages: Vec<MessageRef<'a>>,
    pub max_output_tokens: u32,
    pub input: RouteInput,
}

/// The raw fields of a Route request, as any front end receives them.
pub struct RawRoute<'a, M, L> {
    pub workflow: &'a str,
    pub outcome_id: &'a str,
    pub task_kind: &'a str,
    /// (role, content) pairs.
    pub messages: M,
    pub attempt: u32,
    pub max_output_tokens: u32,
    pub deferrable: bool,
    pub capabilities: &'a [String],
    /// (key, value) pairs.
    pub labels: L,
}

impl<'a> RouteCall<'a> {
    /// Validates untrusted fields. Every error names the field and what to do.
    pub fn parse<M, L>(raw: RawRoute<'a, M, L>) -> Result<RouteCall<'a>, Error>
    where
        M: ExactSizeIterator<Item = (&'a str, &'a str)>,
        L: ExactSizeIterator<Item = (&'a str, &'a str)>,
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
            return bad(format!("{} labels; at most {MAX_LABELS}", raw.labels.len()));
        }
        for (k, v) in raw.labels {
            if k.is_empty() || k.len() > MAX_LABEL_KEY_BYTES || v.len() > MAX_LABEL_VALUE_BYTES {
                return bad(format!(
                    "label `{}` is empty or too long: keys 1 to {MAX_LABEL_KEY_BYTES} bytes, values up to {MAX_LABEL_VALUE_BYTES}",
                    truncate(k, 64)
                ));
            }
            if k.chars().chain(v.chars()).any(char::is_control) || k.contains('=') {
                return bad(format!(
                    "label `{}` contains `=` in its key or control characters; use printable text",
                    truncate(k, 64).escape_debug()
                ));
            }
        }
        let mut capabilities = Capabilities::default();
        for c in raw.capabilities {
            match Capabilities::parse(c) {
                Some(cap) => capabilities.insert(cap),
                None => {
                    return bad(format!(
                        "unknown capability `{}` in required_capabilities; use \"tools\", \"vision\" or \"json\"",
                        truncate(c, 64)
                    ))
                }
            }
        }
        let mut messages = Vec::with_capacity(raw.messages.len());
        for (i, (role, content)) in raw.messages.enumerate() {
            let Some(role) = Role::parse(role) else {
                return bad(format!(
                    "messages[{i}].role is `{}`; use system, developer, user, assistant or tool",
                    truncate(role, 32)
                ));
            };
            messages.push(MessageRef { role, content });
        }
        Ok(RouteCall {
            workflow: raw.workflow,
            outcome_id: raw.outcome_id,
            task_kind: raw.task_kind,
            messages,
            max_output_tokens: raw.max_output_tokens,
            input: RouteInput {
                attempt: raw.attempt.max(1),
                deferrable: raw.deferrable,
                capabilities,
                downgrade: false,
                learned: None,
                rejected_tier: None,
            },
        })
    }
}

/// The workflow the call names, or `NOT_FOUND` with the known names.
pub fn find_workflow<'t>(table: &'t RuleTable, name: &str) -> Result<&'t Workflow, Error> {
    if name.is_empty() {
        return Err(Error::InvalidArgument(
            "workflow is empty: name a workflow from the rules, e.g. \"general\"".into(),
        ));
    }
    table.workflow(name).ok_or_else(|| Error::UnknownWorkflow {
        name: name.to_string(),
        known: table.workflows.iter().map(|w| w.name.clone()).collect(),
    })
}

/// Estimates and decides one call.
///
/// With a `cache`, message work is reused across calls, warm prefixes are
/// priced at each model's cached rate, and the chosen model is recorded as
/// warm for this request's prefixes (the agent is about to send them to it).
/// Without one (`explain`), everything is computed afresh and nothing is kept.
pub fn plan(
    table: &RuleTable,
    call: &RouteCall<'_>,
    cache: Option<&ContextCache>,
    learn: Option<LearnWith<'_>>,
    trace: Option<&mut Vec<Candidate>>,
) -> Result<Planned, Error> {
    let workflow = find_workflow(table, call.workflow)?;
    let (work, fingerprints) = match cache {
        Some(c) => {
            let (work, fps) = c.work(&call.messages, &workflow.encodings);
            (work, Some(fps))
        }
        None => (compute_work(&call.messages, &workflow.encodings), None),
    };
    let est = estimate(
        table,
        workflow,
        call.task_kind,
        &call.messages,
        &work,
        call.max_output_tokens,
    );
    let cached = match (cache, &fingerprints) {
        (Some(c), Some(fps)) => c.cached_tokens(table, workflow, fps, &work),
        _ => Vec::new(),
    };
    let mut input = call.input;
    let mut features = None;
    if let Some(l) = learn.filter(|_| workflow.learning.enabled) {
        // The user's messages, newest first: the current ask leads.
        let has_user = call.messages.iter().any(|m| m.role == Role::User);
        let texts = call
            .messages
            .iter()
            .rev()
            .filter(|m| !has_user || m.role == Role::User)
            .map(|m| m.content);
        let f = Features::extract(texts, &est.task_kind, &est.features);
        let available = available_tiers(table, workflow, est.class);
        input.learned = Some(Learned::gather(
            l.learner,
            &workflow.name,
            &available,
            &f,
            &workflow.learning,
            l.draw,
        ));
        features = Some(f);
    }
    let decision =
        decide(table, workflow, &input, &est, &cached, trace).map_err(|e| Error::NoAdequateModel(e.message))?;
    Ok(Planned {
        est,
        decision,
        fingerprints,
        features,
        learned: input.learned,
    })
}

/// What `plan` needs to consult the learned model.
#[derive(Clone, Copy)]
pub struct LearnWith<'a> {
    pub learner: &'a Learner,
    /// Uniform in 0..1: below the workflow's exploration rate, the call
    /// explores.
    pub draw: f64,
}

/// What `plan` worked out for one call.
pub struct Planned {
    pub est: Estimate,
    pub decision: Decision,
    /// The request's prefix chain, when planned with a cache: pass it to
    /// [`record_routed`] once the call is admitted.
    pub fingerprints: Option<Fingerprints>,
    /// What the learned model saw and predicted, when it was consulted.
    pub features: Option<Features>,
    pub learned: Option<Learned>,
}

/// Records that the call was routed to its model: its prefixes are now warm
/// there. Calls that were denied or escalated are not sent, so not recorded.
pub fn record_routed(cache: &ContextCache, table: &RuleTable, planned: &Planned) {
    if let Some(fps) = &planned.fingerprints {
        if planned.decision.cached_tokens > 0 {
            cache
                .counters
                .prefix_hits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        cache.record(&table.models[planned.decision.model].name, fps);
    }
}
