//! Cost per accepted outcome, its four factors, and what they say.
//!
//! A report covers one calendar period (UTC) and compares it with the one
//! before. Calls belong to the period in which Route decided them; an outcome
//! belongs to the period of its latest RecordOutcome (a second report for the
//! same ID replaces the first). Because a report is computed from the ledger
//! when it is asked for, usage or outcomes that arrive late are attributed
//! to the calls and outcomes they belong to.
//!
//! With the same calls and outcomes in every factor, the identity is exact:
//!
//! ```text
//! spend / accepted = spend/tokens × tokens/calls × calls/outcomes ÷ accepted/outcomes
//! ```
//!
//! An outcome counts as accepted when it is ACCEPTED or CORRECTED (delivered,
//! with a person's correction: that is what the intervention rate counts).
//!
//! The files: `build.rs` turns a ledger into the report, `table.rs` renders
//! it for people; this one holds the report's shape, what it is gathered
//! from, and the entry points.

mod build;
mod table;

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use serde::Serialize;

use crate::budget::period_bounds;
use crate::ledger::{CallRecord, OutcomeEvent};
use crate::money::nanos_to_usd;
use crate::rules::{Period, RuleTable};
use crate::store::ScopeState;

pub use build::{budget_line, build, pace_line};
pub(crate) use table::{num, pct, usd};
pub use table::{table, EMPTY};

/// How far before the previous period the ledger is read, so that cycle
/// times and outcome costs see calls made before it.
pub const LOOKBACK_MS: i64 = 30 * 24 * 3600 * 1000;

/// Days of history in the dashboard's chart.
pub const CHART_DAYS: usize = 14;

/// What a report covers.
#[derive(Debug, Clone)]
pub struct Spec {
    pub period: Period,
    pub workflow: Option<String>,
    /// `key=value`: only calls with this label, and outcomes with such calls.
    pub label: Option<String>,
    pub now: Timestamp,
}

impl Spec {
    /// The current period and the one before, in UTC.
    pub fn windows(&self) -> (Window, Window) {
        let utc = jiff::tz::TimeZone::UTC;
        let (start, end) = period_bounds(self.period, &utc, self.now);
        let before = start.checked_sub(jiff::SignedDuration::from_millis(1)).unwrap_or(start);
        let (prev_start, _) = period_bounds(self.period, &utc, before);
        (
            Window {
                from_ms: start.as_millisecond(),
                to_ms: end.as_millisecond(),
            },
            Window {
                from_ms: prev_start.as_millisecond(),
                to_ms: start.as_millisecond(),
            },
        )
    }

    /// Where the ledger must be read from for this report.
    pub fn since_ms(&self) -> i64 {
        let (_, prev) = self.windows();
        let chart = self.now.as_millisecond() - CHART_DAYS as i64 * 86_400_000;
        prev.from_ms.min(chart) - LOOKBACK_MS
    }
}

/// `[from, to)` in ms since the epoch.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Window {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl Window {
    fn contains(&self, ms: i64) -> bool {
        (self.from_ms..self.to_ms).contains(&ms)
    }
}

/// A budget as it stands, for the spend-against-budget lines and forecast.
#[derive(Debug, Clone)]
pub struct BudgetInput {
    pub workflow: String,
    pub scope: String,
    pub state: ScopeState,
    pub period_start: Timestamp,
    pub period_end: Timestamp,
}

/// The cost-per-outcome factors of one window.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Factors {
    pub calls: u64,
    pub outcomes: u64,
    pub accepted_outcomes: u64,
    pub spend_nanousd: i64,
    pub tokens: u64,
    pub acceptance_rate: Option<f64>,
    pub cost_per_accepted_outcome_usd: Option<f64>,
    pub cost_per_token_usd: Option<f64>,
    pub tokens_per_task: Option<f64>,
    pub tasks_per_outcome: Option<f64>,
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

impl Factors {
    fn of(calls: &[&CallRecord], outcomes: &[&OutcomeEvent]) -> Factors {
        let spend: i64 = calls.iter().map(|c| c.cost_nanos).sum();
        let tokens: u64 = calls.iter().map(|c| c.tokens()).sum();
        let accepted = outcomes.iter().filter(|o| o.status.is_accepted()).count() as u64;
        let (n_calls, n_out) = (calls.len() as f64, outcomes.len() as f64);
        Factors {
            calls: calls.len() as u64,
            outcomes: outcomes.len() as u64,
            accepted_outcomes: accepted,
            spend_nanousd: spend,
            tokens,
            acceptance_rate: ratio(accepted as f64, n_out),
            cost_per_accepted_outcome_usd: ratio(nanos_to_usd(spend), accepted as f64),
            cost_per_token_usd: ratio(nanos_to_usd(spend), tokens as f64),
            tokens_per_task: ratio(tokens as f64, n_calls),
            tasks_per_outcome: ratio(n_calls, n_out),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelShare {
    pub model: String,
    pub calls: u64,
    pub spend_usd: f64,
    pub share_of_spend: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecentOutcome {
    pub outcome_id: String,
    pub status: &'static str,
    pub calls: u64,
    pub cost_usd: f64,
    pub recorded_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Movement {
    pub factor: &'static str,
    pub previous: f64,
    pub current: f64,
    pub change_pct: f64,
    /// Whether the move raised cost per accepted outcome.
    pub raises_cost: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Maturity {
    pub rung: &'static str,
    pub next: Option<&'static str>,
    pub needs: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BudgetLine {
    pub period_scope: String,
    pub limit_usd: f64,
    pub spent_usd: f64,
    pub reserved_usd: f64,
    pub remaining_usd: f64,
    pub burn_rate_usd_per_hour: f64,
    /// When the budget runs out at the current rate, if within the period.
    pub runs_out_at: Option<String>,
    pub runs_out_in_s: Option<f64>,
    pub period_ends_at: String,
    /// A paced budget's pace: in `report`, as a fresh controller reads it
    /// from the spend; on the dashboard, as the serving sidecar's controller
    /// last set it. `None` for an unpaced budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pace: Option<PaceLine>,
}

/// A paced budget's target and price.
#[derive(Debug, Clone, Serialize)]
pub struct PaceLine {
    pub pacing: &'static str,
    pub target_usd: f64,
    pub forecast_usd: f64,
    pub pace_ratio: Option<f64>,
    pub spend_price_per_usd: f64,
    /// The period's target curve (elapsed share, share of the budget) and
    /// the elapsed share now, for the dashboard's chart; empty where no
    /// sidecar's pacer is at hand (`report`), and not part of the JSON.
    #[serde(skip)]
    pub curve: Vec<(f64, f64)>,
    #[serde(skip)]
    pub elapsed: f64,
}

impl PaceLine {
    /// One line for people: the `report` table and the dashboard.
    pub fn summary(&self) -> String {
        format!(
            "paced ({}): target so far {}, {}; forecast at the period's end {}; price {:.1} per USD",
            self.pacing,
            usd(Some(self.target_usd)),
            match self.pace_ratio {
                Some(r) => format!("spend at {:.0}% of target", r * 100.0),
                None => "nothing due yet".into(),
            },
            usd(Some(self.forecast_usd)),
            self.spend_price_per_usd
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DayPoint {
    pub day: String,
    pub spend_usd: f64,
    pub accepted_outcomes: u64,
    pub cost_per_accepted_outcome_usd: Option<f64>,
}

/// One workflow's report. The first fields are the ones CONTRACT.md names.
#[derive(Debug, Clone, Serialize)]
pub struct WorkflowReport {
    pub workflow: String,
    pub outcomes: u64,
    pub accepted_outcomes: u64,
    pub acceptance_rate: Option<f64>,
    pub spend_usd: f64,
    pub cost_per_accepted_outcome_usd: Option<f64>,
    pub cost_per_token_usd: Option<f64>,
    pub tokens_per_task: Option<f64>,
    pub tasks_per_outcome: Option<f64>,
    pub spend_nanousd: i64,
    pub calls: u64,
    pub failed_calls: u64,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub cached_token_share: Option<f64>,
    /// The share of calls with a label (their own feedback, or their
    /// outcome's status), and with a logged decision and propensity: how far
    /// a `whatif` over this traffic can be trusted.
    pub labelled_call_share: Option<f64>,
    pub logged_decision_share: Option<f64>,
    pub outcomes_by_status: BTreeMap<&'static str, u64>,
    /// Outcomes whose status was recorded again (the later one counts).
    pub outcome_changes: u64,
    pub downgrades: u64,
    pub escalations: u64,
    pub human_intervention_rate: Option<f64>,
    pub human_minutes: f64,
    pub median_cycle_time_s: Option<f64>,
    pub value_usd: Option<f64>,
    pub value_per_dollar: Option<f64>,
    pub model_mix: Vec<ModelShare>,
    pub previous: Factors,
    pub moved_most: Option<Movement>,
    pub maturity: Maturity,
    pub flags: Vec<String>,
    pub budget: Option<BudgetLine>,
    pub daily: Vec<DayPoint>,
    pub recent_outcomes: Vec<RecentOutcome>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Set when nothing is recorded for the period: what to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub period: &'static str,
    pub from: String,
    pub to: String,
    pub generated_at: String,
    pub label: Option<String>,
    pub workflows: Vec<WorkflowReport>,
}

/// Reads what a report needs from a store and builds it.
pub async fn gather(
    store: &dyn crate::store::Store,
    table: &RuleTable,
    spec: &Spec,
) -> Result<Report, crate::store::StoreError> {
    let ledger = store.ledger(spec.workflow.as_deref(), spec.since_ms()).await?;
    let (cur, _) = spec.windows();
    let mut escalations: HashMap<String, u64> = HashMap::new();
    for e in store.list_escalations(spec.workflow.as_deref()).await? {
        if cur.contains(e.created_ms) {
            *escalations.entry(e.workflow).or_default() += 1;
        }
    }
    let budgets = budget_inputs(store, table, spec.workflow.as_deref(), spec.now).await?;
    Ok(build(spec, table, &ledger, &escalations, &budgets))
}

/// Each budgeted workflow's current period as the store has it.
pub async fn budget_inputs(
    store: &dyn crate::store::Store,
    table: &RuleTable,
    workflow: Option<&str>,
    now: Timestamp,
) -> Result<Vec<BudgetInput>, crate::store::StoreError> {
    let mut budgets = Vec::new();
    for w in &table.workflows {
        let Some(b) = &w.budget else { continue };
        if workflow.is_some_and(|n| n != w.name) {
            continue;
        }
        let scope = crate::budget::period_scope(w, b, now);
        let state = ScopeState::of_period(b, store.scope(&scope).await?);
        let (period_start, period_end) = period_bounds(b.period, &b.timezone, now);
        budgets.push(BudgetInput {
            workflow: w.name.clone(),
            scope,
            state,
            period_start,
            period_end,
        });
    }
    Ok(budgets)
}

impl Report {
    /// Whether nothing at all has been recorded for the report's workflows.
    pub fn is_empty(&self) -> bool {
        self.message.is_some()
    }
}

/// Parses `--period`.
pub fn parse_period(s: &str) -> Result<Period, String> {
    match s {
        "" | "day" => Ok(Period::Day),
        "week" => Ok(Period::Week),
        "month" => Ok(Period::Month),
        other => Err(format!("period `{other}` is not day, week or month")),
    }
}

/// Checks `--label`.
pub fn parse_label(s: &str) -> Result<Option<String>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(Some(s.to_string())),
        _ => Err(format!("label `{s}` is not key=value")),
    }
}

/// The report in the requested format: `table` or `json`.
pub fn render(r: &Report, format: &str) -> Result<String, String> {
    match format {
        "table" => Ok(if r.is_empty() { EMPTY.to_string() } else { table(r) }),
        "" | "json" => serde_json::to_string_pretty(r).map_err(|e| e.to_string()),
        other => Err(format!("format `{other}` is not table or json")),
    }
}

#[cfg(test)]
mod tests;
