//! `switchyard budget status`: each budgeted workflow's period budget as the
//! store holds it, and a paced budget's pace: spend, target so far, forecast
//! at the period's end and the price of spend, with the serving sidecar's
//! controller as it last saved it (`pacing.json` in its state folder).

use std::path::PathBuf;

use serde::Serialize;

use crate::budget::{pace_of, period_scope, read_pacers, Pacer};
use crate::money::nanos_to_usd;
use crate::outcome::report::PaceLine;
use crate::store::{Location, Store};

pub struct StatusArgs {
    pub rules: PathBuf,
    pub store: Location,
    /// Where `serve` keeps `pacing.json`.
    pub state_dir: PathBuf,
    pub workflow: Option<String>,
    pub format: String,
}

#[derive(Debug, Serialize)]
struct Line {
    workflow: String,
    period_scope: String,
    limit_usd: f64,
    spent_usd: f64,
    reserved_usd: f64,
    remaining_usd: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pace: Option<PaceLine>,
}

/// `switchyard budget status`. The exit code: 0, 1 when the store or the
/// pacing state cannot be read, 64 for bad flags or rules.
pub async fn status(a: StatusArgs) -> i32 {
    if !matches!(a.format.as_str(), "table" | "json") {
        eprintln!("--format {} is not table or json", a.format);
        return 64;
    }
    let table = match crate::rules::RuleTable::load(&a.rules) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return 64;
        }
    };
    if let Some(w) = &a.workflow {
        if table.workflow(w).is_none_or(|w| w.budget.is_none()) {
            eprintln!("the rules at {} give workflow `{w}` no budget", a.rules.display());
            return 64;
        }
    }
    let store: std::sync::Arc<dyn Store> = match crate::store::open(&a.store).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            eprintln!(
                "no store at {}: nothing has been recorded there yet",
                a.store.describe()
            );
            return 1;
        }
        Err(e) => {
            eprintln!("cannot read the store at {}: {e}", a.store.describe());
            return 1;
        }
    };
    let pacers = match read_pacers(&a.state_dir.join(crate::app::PACING_FILE)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let now = jiff::Timestamp::now();
    let mut lines = Vec::new();
    for w in &table.workflows {
        let Some(b) = &w.budget else { continue };
        if a.workflow.as_ref().is_some_and(|only| *only != w.name) {
            continue;
        }
        let scope = period_scope(w, b, now);
        // A period nothing was reserved in yet holds the rules' limit.
        let state = match store.scope(&scope).await {
            Ok(s) => crate::store::ScopeState::of_period(b, s),
            Err(e) => {
                eprintln!("cannot read `{scope}`: {e}");
                return 1;
            }
        };
        let mut pacer: Pacer = pacers.get(&w.name).cloned().unwrap_or_default();
        let pace = pace_of(b, &state, &mut pacer, now).map(|p| crate::outcome::report::pace_line(&p));
        lines.push(Line {
            workflow: w.name.clone(),
            period_scope: scope,
            limit_usd: nanos_to_usd(state.limit_nanos),
            spent_usd: nanos_to_usd(state.spent_nanos),
            reserved_usd: nanos_to_usd(state.reserved_nanos),
            remaining_usd: nanos_to_usd(state.remaining()),
            pace,
        });
    }
    if a.format == "json" {
        super::print_text(&serde_json::json!({ "workflows": lines }).to_string());
        return 0;
    }
    if lines.is_empty() {
        super::print_text("no workflow in the rules has a budget");
        return 0;
    }
    for l in &lines {
        let pace = l
            .pace
            .as_ref()
            .map_or_else(|| "not paced".to_string(), PaceLine::summary);
        super::print_text(&format!(
            "{}  {}: spent ${:.6} of ${:.2}, ${:.6} reserved, ${:.6} left; {pace}",
            l.workflow, l.period_scope, l.spent_usd, l.limit_usd, l.reserved_usd, l.remaining_usd
        ));
    }
    0
}
