//! The `check` and `explain` commands: the rule table and the decision,
//! without a server.

use std::io::Read;
use std::path::Path;

use serde_json::json;

use crate::decide::Candidate;
use crate::error::Error;
use crate::estimate::Role;
use crate::money::{format_usd, nanos_to_usd};
use crate::route::{plan, RawRoute, RouteCall};
use crate::rules::{summary, RuleTable};

/// `switchyard check`: prints a summary and returns 0, or prints every
/// problem as `file:line:col: key: message` and returns 1.
pub fn check(rules: &Path) -> i32 {
    match RuleTable::load(rules) {
        Ok(table) => {
            println!("ok: {}: {}", rules.display(), summary(&table));
            0
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "{}: {} problem(s); fix them and run `switchyard check` again",
                rules.display(),
                e.diagnostics.len()
            );
            1
        }
    }
}

/// Options of `switchyard explain`.
pub struct ExplainArgs<'a> {
    pub rules: &'a Path,
    pub workflow: &'a str,
    pub task_kind: &'a str,
    pub text: Option<&'a str>,
    pub system: Option<&'a str>,
    pub max_output_tokens: u32,
    pub attempt: u32,
    pub deferrable: bool,
    pub capabilities: &'a [String],
}

/// `switchyard explain`: prints the decision and every candidate as JSON.
/// Returns the exit code.
pub fn explain(args: ExplainArgs<'_>) -> i32 {
    let table = match RuleTable::load(args.rules) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let stdin_text;
    let text = match args.text {
        Some("-") | None => {
            let mut s = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut s) {
                eprintln!("cannot read the prompt from stdin: {e}");
                return 1;
            }
            stdin_text = s;
            stdin_text.as_str()
        }
        Some(t) => t,
    };
    let mut messages: Vec<(&str, &str)> = Vec::new();
    if let Some(s) = args.system {
        messages.push(("system", s));
    }
    messages.push(("user", text));
    let call = match RouteCall::parse(RawRoute {
        workflow: args.workflow,
        outcome_id: "",
        task_kind: args.task_kind,
        messages: messages.iter().copied(),
        attempt: args.attempt,
        max_output_tokens: args.max_output_tokens,
        deferrable: args.deferrable,
        capabilities: args.capabilities,
        labels: std::iter::empty(),
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let mut candidates: Vec<Candidate> = Vec::new();
    let (est, decision) = match plan(&table, &call, None, Some(&mut candidates)) {
        Ok(p) => (p.est, p.decision),
        Err(e @ Error::NoAdequateModel(_)) => {
            let out = json!({ "workflow": args.workflow, "error": e.to_string(), "candidates": candidates });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            return 2;
        }
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let model = &table.models[decision.model];
    let mut input_tokens = serde_json::Map::new();
    if let Some(w) = table.workflow(args.workflow) {
        for e in &w.encodings {
            input_tokens.insert(e.name().to_string(), json!(est.input_tokens(*e)));
        }
    }
    let out = json!({
        "workflow": args.workflow,
        "task_kind": est.task_kind,
        "task_class": table.classes[est.class],
        "complexity": est.complexity,
        "features": est.features,
        "input_tokens_by_encoding": input_tokens,
        "estimated_output_tokens": est.output_tokens,
        "messages": call.messages.iter().map(|m| match m.role {
            Role::System => "system", Role::Developer => "developer", Role::User => "user",
            Role::Assistant => "assistant", Role::Tool => "tool",
        }).collect::<Vec<_>>(),
        "decision": {
            "model": model.name,
            "provider": model.provider,
            "rule": decision.rule,
            "required_tier": decision.required_tier,
            "input_tokens": decision.input_tokens,
            "cached_input_tokens": decision.cached_tokens,
            "estimated_cost_nanousd": decision.cost_nanos,
            "estimated_cost_usd": nanos_to_usd(decision.cost_nanos),
            "estimated_cost": format_usd(decision.cost_nanos),
            "reason": decision.reason,
        },
        "candidates": candidates,
    });
    match serde_json::to_string_pretty(&out) {
        Ok(s) => {
            println!("{s}");
            0
        }
        Err(e) => {
            eprintln!("cannot render the decision as JSON: {e}");
            1
        }
    }
}
