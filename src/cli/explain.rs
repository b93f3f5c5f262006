//! `switchyard explain`: the decision `serve` would make for a prompt, made
//! by the same Route use case. Beside a running server it reads that
//! server's store (`--state-dir`, or `--redis-url`) without writing to it:
//! the budget as it stands (a dry run of the reservation: nothing reserved,
//! no escalation created), the learned model folded from the store's
//! labelled calls as `serve` folds them, and, with `--outcome-id`, the tier
//! an earlier attempt of that outcome was rejected at.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use serde_json::json;

use crate::budget::{period_scope, DryRun};
use crate::error::Error;
use crate::learn::Folded;
use crate::money::{format_usd, nanos_to_usd};
use crate::route::{RawRoute, RouteCall, Router};
use crate::rules::reload::Rules;
use crate::store::{Escalation, ScopeState, StoreError, StoreView};

/// Options of `switchyard explain`.
pub struct ExplainArgs<'a> {
    pub rules: &'a Path,
    /// Where `serve` keeps its store, to show the budget and the learned
    /// state as they stand.
    /// Where the server's store is.
    pub store: &'a crate::store::Location,
    /// The folder whose Redis journal a Redis reader reads.
    pub state_dir: &'a Path,
    pub workflow: &'a str,
    pub task_kind: &'a str,
    pub text: Option<&'a str>,
    pub system: Option<&'a str>,
    pub max_output_tokens: u32,
    pub attempt: u32,
    /// Explain a retry under this outcome, as `serve` would route it.
    pub outcome_id: Option<&'a str>,
    pub deferrable: bool,
    pub capabilities: &'a [String],
}

/// A store with nothing in it: a state folder `serve` has not used yet.
struct Empty;

#[async_trait::async_trait]
impl StoreView for Empty {
    async fn view_scope(&self, _: &str) -> Result<ScopeState, StoreError> {
        Ok(ScopeState::default())
    }
    async fn view_escalation(&self, _: &str) -> Result<Option<Escalation>, StoreError> {
        Ok(None)
    }
    async fn view_learning(&self, _: &str, _: &str, _: usize) -> Result<crate::store::LearnPage, StoreError> {
        Ok(Vec::new())
    }
    async fn view_rejected_tier(&self, _: &str, _: &str) -> Result<Option<u8>, StoreError> {
        Ok(None)
    }
    async fn view_score_counts(&self, _: &str, _: &str) -> Result<Vec<u64>, StoreError> {
        Ok(vec![0; crate::understand::SCORE_BINS])
    }
}

/// `switchyard explain`: prints the decision and every candidate as JSON.
/// Returns the exit code.
pub fn explain(args: ExplainArgs<'_>) -> i32 {
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
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(run(&args, text)) {
        Ok(out) => {
            crate::cli::print_json(&out);
            if out.get("error").is_some() {
                2
            } else {
                0
            }
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

async fn run(args: &ExplainArgs<'_>, text: &str) -> Result<serde_json::Value, String> {
    let rules = Rules::load(args.rules).map_err(|e| e.to_string())?;
    let (view, store): (Arc<dyn StoreView>, String) = match crate::store::open_view(args.store, args.state_dir)
        .await
        .map_err(|e| e.to_string())?
    {
        Some(v) => (v, args.store.describe()),
        None => (
            Arc::new(Empty),
            format!("none in {} (nothing spent or learned yet)", args.state_dir.display()),
        ),
    };
    let table = rules.current();
    let (learning, learned_calls) = Folded::from_view(view.clone(), &[args.workflow])
        .await
        .map_err(|e| e.to_string())?;
    // The workflow's complexity histogram as the server left it.
    let sketches = Arc::new(crate::route::sketch::ScoreSketches::new());
    // The paced workflows' state as the serving sidecar last saved it.
    let pacers = crate::budget::read_pacers(&args.state_dir.join(crate::app::PACING_FILE))?;
    let tag = table.understanding.tag().to_string();
    let counts = view
        .view_score_counts(args.workflow, &tag)
        .await
        .map_err(|e| e.to_string())?;
    let scored_requests: u64 = counts.iter().sum();
    sketches.set_stored(&tag, args.workflow, &counts);
    let router = Router {
        rules: Arc::new(rules),
        cache: None,
        budgets: Arc::new(DryRun {
            view: view.clone(),
            pacers: pacers.clone(),
        }),
        learning: Arc::new(learning),
        effects: None,
        trace: true,
        large_requests: None,
        sketches: Some(sketches),
        observe_scores: false,
    };
    let mut messages: Vec<(String, String)> = Vec::new();
    if let Some(s) = args.system {
        messages.push(("system".into(), s.into()));
    }
    messages.push(("user".into(), text.into()));
    let call = RouteCall::new(RawRoute {
        workflow: args.workflow.to_string(),
        outcome_id: args.outcome_id.unwrap_or_default().to_string(),
        task_kind: args.task_kind.to_string(),
        messages: messages.into_iter(),
        attempt: args.attempt,
        max_output_tokens: args.max_output_tokens,
        deferrable: args.deferrable,
        capabilities: args.capabilities.iter().cloned(),
        labels: std::iter::empty(),
    })
    .map_err(|e| e.to_string())?;
    let drivers = {
        let refs = call.message_refs();
        let texts: Vec<&str> = crate::estimate::asked(&refs).map(|m| m.content).collect();
        table.understanding.drivers(&texts, 6)
    };
    let roles: Vec<&str> = call.messages.iter().map(|m| m.role.name()).collect();
    let roles: Vec<String> = roles.into_iter().map(str::to_string).collect();
    let now = jiff::Timestamp::now();
    let routed = match router.route(None, call, now).await {
        Ok(r) => r,
        Err(e @ Error::NoAdequateModel(_)) => {
            return Ok(json!({ "workflow": args.workflow, "error": e.to_string() }));
        }
        Err(e) => return Err(e.to_string()),
    };
    let (est, d) = (&routed.planned.est, &routed.planned.decision);
    let model = routed.model();
    let mut input_tokens = serde_json::Map::new();
    if let Some(w) = table.workflow(args.workflow) {
        for e in &w.encodings {
            input_tokens.insert(e.name().to_string(), json!(est.input_tokens(*e)));
        }
    }
    let budget = match table
        .workflow(args.workflow)
        .and_then(|w| w.budget.as_ref().map(|b| (w, b)))
    {
        None => None,
        Some((w, b)) => {
            let scope = period_scope(w, b, now);
            let st = ScopeState::of_period(b, view.view_scope(&scope).await.map_err(|e| e.to_string())?);
            // The pace the serving sidecar's saved pacer reads from the same
            // spend.
            let mut pacer = pacers.get(&w.name).cloned().unwrap_or_default();
            let pace = crate::budget::pace_of(b, &st, &mut pacer, now).map(|p| pace_json(&p));
            Some(json!({
                "pace": pace,
                "period_scope": scope,
                "limit_nanousd": st.limit_nanos,
                "spent_nanousd": st.spent_nanos,
                "reserved_nanousd": st.reserved_nanos,
                "remaining_nanousd": st.remaining(),
                "past_soft_threshold": st.past_soft_threshold(b),
                "this_call_fits": st.fits(d.cost_nanos),
                "on_limit": match b.on_limit {
                    crate::rules::OnLimit::Escalate => "escalate",
                    crate::rules::OnLimit::Deny => "deny",
                },
                "store": store,
            }))
        }
    };
    Ok(json!({
        "workflow": args.workflow,
        "task_kind": est.task_kind,
        "task_kind_source": est.task_kind_source.as_str(),
        "task_kind_confidence": est.task_kind_confidence,
        "task_class": routed.task_class(),
        "complexity": est.complexity,
        "complexity_quantile": est.complexity_quantile,
        // What moved the score most, in log-odds (positive: harder).
        "complexity_drivers": drivers,
        "understanding_model": {
            "sha256": table.understanding.sha256,
            "workflow_requests_scored": scored_requests,
        },
        "features": est.features,
        "input_tokens_by_encoding": input_tokens,
        "estimated_output_tokens": est.output_tokens,
        "messages": roles,
        "status": routed.status.as_str(),
        "escalation_id": routed.escalation_id,
        "decision": {
            "model": model.name,
            "provider": model.provider,
            "provider_model": model.api_model,
            "rule": d.rule,
            "required_tier": d.required_tier,
            "tier": model.tiers[est.class],
            "learned": d.learned,
            "explored": d.explored,
            "propensity": d.propensity,
            "input_tokens": d.input_tokens,
            "cached_input_tokens": d.cached_tokens,
            "estimated_cost_nanousd": d.cost_nanos,
            "estimated_cost_usd": nanos_to_usd(d.cost_nanos),
            "estimated_cost": format_usd(d.cost_nanos),
            "reason": routed.reason.clone(),
        },
        "learning": {
            "labelled_calls": learned_calls,
            "store": store,
            // What the model saw for this request: how far its evidence gate
            // is open, how likely the call was to explore, and each tier's
            // prediction with its uncertainty and doubt.
            "gate": routed.planned.learned.map(|l| l.gate),
            "explore_probability": routed.planned.learned.map(|l| l.explore),
            "tiers": routed.planned.learned.map(|l| {
                l.tiers
                    .iter()
                    .enumerate()
                    .filter_map(|(t, p)| p.map(|p| serde_json::json!({
                        "tier": t,
                        "p_accepted": p.p,
                        "p_accepted_after_rejection": p.p_retry,
                        "sd": p.sd,
                        "labelled_calls": p.seen,
                        "doubt": p.doubt,
                    })))
                    .collect::<Vec<_>>()
            }),
        },
        "budget": budget,
        "candidates": routed.candidates,
    }))
}

/// A paced budget's pace, as `explain` and `budget status` print it.
pub fn pace_json(p: &crate::budget::pacing::Pace) -> serde_json::Value {
    json!({
        "pacing": p.pacing.as_str(),
        "spent_nanousd": p.spent_nanos,
        "target_nanousd": p.target_nanos,
        "forecast_nanousd": p.forecast_nanos,
        "limit_nanousd": p.limit_nanos,
        "pace_ratio": p.ratio(),
        "spend_price_per_usd": p.price_per_usd(),
    })
}
