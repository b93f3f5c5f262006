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

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use serde::Serialize;

use crate::budget::{period_bounds, ScopeState};
use crate::money::nanos_to_usd;
use crate::outcome::ledger::{CallRecord, Ledger, OutcomeEvent, OutcomeStatus};
use crate::rules::{Period, RuleTable};

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

fn iso(ms: i64) -> String {
    Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The latest event of each outcome, in recording order.
fn latest_outcomes(events: &[OutcomeEvent]) -> (Vec<&OutcomeEvent>, HashMap<&str, u64>) {
    let mut latest: HashMap<&str, usize> = HashMap::new();
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        latest.insert(&e.outcome_id, i);
        *seen.entry(&e.outcome_id).or_default() += 1;
    }
    let mut idx: Vec<usize> = latest.into_values().collect();
    idx.sort_unstable();
    (idx.into_iter().map(|i| &events[i]).collect(), seen)
}

/// Builds the report from the ledger, escalation counts per workflow
/// (created in the current window) and the budgets as they stand.
pub fn build(
    spec: &Spec,
    table: &RuleTable,
    ledger: &Ledger,
    escalations: &HashMap<String, u64>,
    budgets: &[BudgetInput],
) -> Report {
    let (cur, prev) = spec.windows();
    let now_ms = spec.now.as_millisecond();
    let mut names: Vec<String> = table.workflows.iter().map(|w| w.name.clone()).collect();
    for c in &ledger.calls {
        if !names.contains(&c.workflow) {
            names.push(c.workflow.clone());
        }
    }
    if let Some(w) = &spec.workflow {
        names.retain(|n| n == w);
    }
    let label_ok = |c: &CallRecord| spec.label.as_deref().is_none_or(|l| c.has_label(l));
    let total_spend: i64 = ledger
        .calls
        .iter()
        .filter(|c| cur.contains(c.created_ms) && label_ok(c))
        .map(|c| c.cost_nanos)
        .sum();

    let mut workflows = Vec::new();
    for name in names {
        let calls: Vec<&CallRecord> = ledger
            .calls
            .iter()
            .filter(|c| c.workflow == name && label_ok(c))
            .collect();
        let mut by_outcome: HashMap<&str, (i64, u64, i64)> = HashMap::new();
        for c in &calls {
            if !c.outcome_id.is_empty() {
                let e = by_outcome.entry(&c.outcome_id).or_insert((0, 0, i64::MAX));
                e.0 += c.cost_nanos;
                e.1 += 1;
                e.2 = e.2.min(c.created_ms);
            }
        }
        let events: Vec<OutcomeEvent> = ledger
            .outcomes
            .iter()
            .filter(|o| o.workflow == name)
            .filter(|o| spec.label.is_none() || by_outcome.contains_key(o.outcome_id.as_str()))
            .cloned()
            .collect();
        let (latest, seen) = latest_outcomes(&events);
        let in_cur: Vec<&CallRecord> = calls.iter().copied().filter(|c| cur.contains(c.created_ms)).collect();
        let in_prev: Vec<&CallRecord> = calls.iter().copied().filter(|c| prev.contains(c.created_ms)).collect();
        let out_cur: Vec<&OutcomeEvent> = latest.iter().copied().filter(|o| cur.contains(o.at_ms)).collect();
        let out_prev: Vec<&OutcomeEvent> = latest.iter().copied().filter(|o| prev.contains(o.at_ms)).collect();
        let now = Factors::of(&in_cur, &out_cur);
        let before = Factors::of(&in_prev, &out_prev);

        let count = |s: OutcomeStatus| out_cur.iter().filter(|o| o.status == s).count() as u64;
        let mut outcomes_by_status = BTreeMap::new();
        for s in [
            OutcomeStatus::Accepted,
            OutcomeStatus::Rejected,
            OutcomeStatus::Corrected,
            OutcomeStatus::Abandoned,
        ] {
            outcomes_by_status.insert(s.name(), count(s));
        }
        let input: u64 = in_cur.iter().map(|c| c.input_tokens).sum();
        let cached: u64 = in_cur.iter().map(|c| c.cached_input_tokens).sum();
        let value: Option<f64> = out_cur
            .iter()
            .filter(|o| o.status.is_accepted())
            .filter_map(|o| o.value_usd)
            .fold(None, |acc, v| Some(acc.unwrap_or(0.0) + v));
        let mut cycle: Vec<f64> = out_cur
            .iter()
            .filter_map(|o| {
                by_outcome
                    .get(o.outcome_id.as_str())
                    .map(|b| (o.at_ms - b.2) as f64 / 1000.0)
            })
            .filter(|s| *s >= 0.0)
            .collect();
        cycle.sort_by(f64::total_cmp);

        let mut mix: BTreeMap<&str, (u64, i64)> = BTreeMap::new();
        for c in &in_cur {
            let e = mix.entry(&c.model).or_default();
            e.0 += 1;
            e.1 += c.cost_nanos;
        }
        let mut model_mix: Vec<ModelShare> = mix
            .into_iter()
            .map(|(m, (n, spend))| ModelShare {
                model: m.to_string(),
                calls: n,
                spend_usd: nanos_to_usd(spend),
                share_of_spend: ratio(spend as f64, now.spend_nanousd as f64).unwrap_or(0.0),
            })
            .collect();
        model_mix.sort_by(|a, b| b.spend_usd.total_cmp(&a.spend_usd).then(b.calls.cmp(&a.calls)));

        let mut recent: Vec<&&OutcomeEvent> = latest.iter().rev().take(10).collect();
        recent.sort_by_key(|o| std::cmp::Reverse(o.at_ms));
        let recent_outcomes = recent
            .into_iter()
            .map(|o| {
                let (cost, n, _) = by_outcome.get(o.outcome_id.as_str()).copied().unwrap_or((0, 0, 0));
                RecentOutcome {
                    outcome_id: o.outcome_id.clone(),
                    status: o.status.name(),
                    calls: n,
                    cost_usd: nanos_to_usd(cost),
                    recorded_at: iso(o.at_ms),
                }
            })
            .collect();

        let feedback_rounds = ledger
            .feedback
            .iter()
            .filter(|f| f.workflow == name && cur.contains(f.at_ms))
            .count();
        let maturity = maturity(&in_cur, now.outcomes, feedback_rounds);
        let mut flags = Vec::new();
        let share = ratio(now.spend_nanousd as f64, total_spend as f64).unwrap_or(0.0);
        if let Some(rate) = now.acceptance_rate.filter(|r| *r < 0.5) {
            if now.outcomes >= 3 && share >= 0.25 {
                flags.push(format!(
                    "spend without absorption: {:.0}% of the period's spend, {:.0}% of outcomes accepted",
                    share * 100.0,
                    rate * 100.0
                ));
            }
        }
        flags.extend(cheaper_model_would_do(&name, ledger, &calls, &latest, cur));

        let budget = budgets
            .iter()
            .find(|b| b.workflow == name)
            .map(|b| budget_line(b, spec.now));
        workflows.push(WorkflowReport {
            workflow: name.clone(),
            outcomes: now.outcomes,
            accepted_outcomes: now.accepted_outcomes,
            acceptance_rate: now.acceptance_rate,
            spend_usd: nanos_to_usd(now.spend_nanousd),
            cost_per_accepted_outcome_usd: now.cost_per_accepted_outcome_usd,
            cost_per_token_usd: now.cost_per_token_usd,
            tokens_per_task: now.tokens_per_task,
            tasks_per_outcome: now.tasks_per_outcome,
            spend_nanousd: now.spend_nanousd,
            calls: now.calls,
            failed_calls: in_cur.iter().filter(|c| c.failed).count() as u64,
            input_tokens: input,
            cached_input_tokens: cached,
            output_tokens: in_cur.iter().map(|c| c.output_tokens).sum(),
            cached_token_share: ratio(cached as f64, input as f64),
            outcomes_by_status,
            outcome_changes: out_cur
                .iter()
                .map(|o| seen.get(o.outcome_id.as_str()).copied().unwrap_or(1) - 1)
                .sum(),
            downgrades: in_cur.iter().filter(|c| c.downgraded).count() as u64,
            escalations: escalations.get(&name).copied().unwrap_or(0),
            human_intervention_rate: ratio(count(OutcomeStatus::Corrected) as f64, now.outcomes as f64),
            human_minutes: out_cur.iter().filter_map(|o| o.human_minutes).sum(),
            median_cycle_time_s: (!cycle.is_empty()).then(|| cycle[cycle.len() / 2]),
            value_usd: value,
            value_per_dollar: value.and_then(|v| ratio(v, nanos_to_usd(now.spend_nanousd))),
            model_mix,
            moved_most: moved_most(&before, &now),
            previous: before,
            maturity,
            flags,
            budget,
            daily: daily(&calls, &latest, now_ms),
            recent_outcomes,
        });
    }
    let empty = workflows
        .iter()
        .all(|w| w.calls == 0 && w.outcomes == 0 && w.previous.calls == 0 && w.previous.outcomes == 0);
    Report {
        message: empty.then(|| EMPTY.trim_end().to_string()),
        period: match spec.period {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        },
        from: iso(cur.from_ms),
        to: iso(cur.to_ms),
        generated_at: spec.now.to_string(),
        label: spec.label.clone(),
        workflows,
    }
}

fn maturity(calls: &[&CallRecord], outcomes: u64, feedback: usize) -> Maturity {
    let attributed = calls.iter().filter(|c| !c.outcome_id.is_empty()).count();
    let steps: [(&str, bool, String); 4] = [
        (
            "metered",
            !calls.is_empty(),
            "report usage: call ReportUsage after every model call".into(),
        ),
        (
            "attributed",
            !calls.is_empty() && attributed * 10 >= calls.len() * 9,
            format!(
                "attribute calls to outcomes: {attributed} of {} calls carry an outcome_id (90% needed)",
                calls.len()
            ),
        ),
        (
            "unit-economic",
            outcomes > 0,
            "record how the work ended: call RecordOutcome for each outcome ID".into(),
        ),
        (
            "optimized",
            feedback > 0,
            "let routing learn from results: call RecordFeedback on each call's output".into(),
        ),
    ];
    let reached = steps.iter().take_while(|s| s.1).count();
    if reached == 0 {
        return Maturity {
            rung: "none",
            next: Some("metered"),
            needs: Some(steps[0].2.clone()),
        };
    }
    Maturity {
        rung: steps[reached - 1].0,
        next: steps.get(reached).map(|s| s.0),
        needs: steps.get(reached).map(|s| s.2.clone()),
    }
}

/// The factor whose relative change from the previous period is largest.
fn moved_most(before: &Factors, now: &Factors) -> Option<Movement> {
    let pairs: [(&str, Option<f64>, Option<f64>, bool); 4] = [
        (
            "cost_per_token",
            before.cost_per_token_usd,
            now.cost_per_token_usd,
            true,
        ),
        ("tokens_per_task", before.tokens_per_task, now.tokens_per_task, true),
        (
            "tasks_per_outcome",
            before.tasks_per_outcome,
            now.tasks_per_outcome,
            true,
        ),
        ("acceptance_rate", before.acceptance_rate, now.acceptance_rate, false),
    ];
    pairs
        .into_iter()
        .filter_map(|(f, b, n, up_costs)| {
            let (b, n) = (b?, n?);
            (b > 0.0 && n > 0.0).then(|| Movement {
                factor: f,
                previous: b,
                current: n,
                change_pct: (n / b - 1.0) * 100.0,
                raises_cost: (n > b) == up_costs && n != b,
            })
        })
        .max_by(|a, b| {
            (a.current / a.previous)
                .ln()
                .abs()
                .total_cmp(&(b.current / b.previous).ln().abs())
        })
}

/// Models that were accepted at least as often as a dearer model of the same
/// workflow, by call feedback where there is some and else by outcome.
fn cheaper_model_would_do(
    workflow: &str,
    ledger: &Ledger,
    calls: &[&CallRecord],
    latest: &[&OutcomeEvent],
    cur: Window,
) -> Vec<String> {
    const MIN_SAMPLES: u64 = 5;
    // model -> (accepted, judged, cost, calls)
    let mut stats: BTreeMap<&str, (u64, u64, i64, u64)> = BTreeMap::new();
    for c in calls.iter().filter(|c| cur.contains(c.created_ms)) {
        let e = stats.entry(&c.model).or_default();
        e.2 += c.cost_nanos;
        e.3 += 1;
    }
    let feedback: Vec<_> = ledger
        .feedback
        .iter()
        .filter(|f| f.workflow == workflow && cur.contains(f.at_ms))
        .collect();
    if !feedback.is_empty() {
        for f in feedback {
            let e = stats.entry(&f.model).or_default();
            e.0 += u64::from(f.accepted);
            e.1 += 1;
        }
    } else {
        // An outcome judges the model that made most of its calls.
        let status: HashMap<&str, bool> = latest
            .iter()
            .map(|o| (o.outcome_id.as_str(), o.status.is_accepted()))
            .collect();
        let mut per_outcome: HashMap<&str, BTreeMap<&str, u64>> = HashMap::new();
        for c in calls.iter().filter(|c| status.contains_key(c.outcome_id.as_str())) {
            *per_outcome
                .entry(&c.outcome_id)
                .or_default()
                .entry(&c.model)
                .or_default() += 1;
        }
        for (outcome, models) in per_outcome {
            if let Some((model, _)) = models.iter().max_by_key(|(_, n)| **n) {
                let e = stats.entry(model).or_default();
                e.0 += u64::from(status[outcome]);
                e.1 += 1;
            }
        }
    }
    let judged: Vec<(&str, f64, f64)> = stats
        .iter()
        .filter(|(_, s)| s.1 >= MIN_SAMPLES && s.3 > 0)
        .map(|(m, s)| (*m, s.0 as f64 / s.1 as f64, s.2 as f64 / s.3 as f64))
        .collect();
    let mut flags = Vec::new();
    for (cheap, rate_c, cost_c) in &judged {
        if let Some((dear, rate_d, cost_d)) = judged
            .iter()
            .filter(|(_, rate_d, cost_d)| cost_d > cost_c && rate_c >= rate_d)
            .max_by(|a, b| a.2.total_cmp(&b.2))
        {
            flags.push(format!(
                "a cheaper model would do: {cheap} was accepted {:.0}% of the time against {dear}'s {:.0}%, at {:.0}% of its cost per call",
                rate_c * 100.0,
                rate_d * 100.0,
                cost_c / cost_d * 100.0
            ));
        }
    }
    flags
}

/// Spend against a budget, with the burn rate and when it runs out.
pub fn budget_line(b: &BudgetInput, now: Timestamp) -> BudgetLine {
    let st = b.state;
    let used = st.spent_nanos + st.reserved_nanos;
    let elapsed_h = (now.as_millisecond() - b.period_start.as_millisecond()).max(1) as f64 / 3.6e6;
    let rate = nanos_to_usd(used) / elapsed_h;
    let remaining = nanos_to_usd(st.remaining());
    let left_h = (b.period_end.as_millisecond() - now.as_millisecond()).max(0) as f64 / 3.6e6;
    let runs_out_in_s = if remaining <= 0.0 {
        Some(0.0)
    } else {
        ratio(remaining, rate).filter(|h| *h <= left_h).map(|h| h * 3600.0)
    };
    BudgetLine {
        period_scope: b.scope.clone(),
        limit_usd: nanos_to_usd(st.limit_nanos),
        spent_usd: nanos_to_usd(st.spent_nanos),
        reserved_usd: nanos_to_usd(st.reserved_nanos),
        remaining_usd: remaining,
        burn_rate_usd_per_hour: rate,
        runs_out_at: runs_out_in_s.map(|s| iso(now.as_millisecond() + (s * 1000.0) as i64)),
        runs_out_in_s,
        period_ends_at: b.period_end.to_string(),
    }
}

/// Spend and cost per accepted outcome for each of the last CHART_DAYS days (UTC).
fn daily(calls: &[&CallRecord], latest: &[&OutcomeEvent], now_ms: i64) -> Vec<DayPoint> {
    const DAY: i64 = 86_400_000;
    let today = now_ms.div_euclid(DAY);
    (0..CHART_DAYS as i64)
        .rev()
        .map(|back| {
            let d = today - back;
            let w = Window {
                from_ms: d * DAY,
                to_ms: (d + 1) * DAY,
            };
            let spend: i64 = calls
                .iter()
                .filter(|c| w.contains(c.created_ms))
                .map(|c| c.cost_nanos)
                .sum();
            let accepted = latest
                .iter()
                .filter(|o| w.contains(o.at_ms) && o.status.is_accepted())
                .count() as u64;
            DayPoint {
                day: iso(w.from_ms).get(..10).unwrap_or_default().to_string(),
                spend_usd: nanos_to_usd(spend),
                accepted_outcomes: accepted,
                cost_per_accepted_outcome_usd: ratio(nanos_to_usd(spend), accepted as f64),
            }
        })
        .collect()
}

pub(crate) fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.1}%", v * 100.0))
}

pub(crate) fn usd(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| crate::money::format_dollars(v, 2))
}

pub(crate) fn num(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| {
        if v >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.2}")
        }
    })
}

/// The report as a table for people.
pub fn table(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Switchyard report: this {} ({} to {}){}",
        r.period,
        r.from,
        r.to,
        r.label.as_ref().map(|l| format!(", label {l}")).unwrap_or_default()
    );
    for w in &r.workflows {
        let _ = writeln!(out, "\n== {}", w.workflow);
        let _ = writeln!(
            out,
            "  outcomes {} (accepted {}, corrected {}, rejected {}, abandoned {}; {} re-recorded)  acceptance {}",
            w.outcomes,
            w.outcomes_by_status["accepted"],
            w.outcomes_by_status["corrected"],
            w.outcomes_by_status["rejected"],
            w.outcomes_by_status["abandoned"],
            w.outcome_changes,
            pct(w.acceptance_rate)
        );
        let _ = writeln!(
            out,
            "  spend {} over {} calls ({} failed)  cost per accepted outcome {}",
            usd(Some(w.spend_usd)),
            w.calls,
            w.failed_calls,
            usd(w.cost_per_accepted_outcome_usd)
        );
        let _ = writeln!(
            out,
            "    = cost/token {} × tokens/task {} × tasks/outcome {} ÷ acceptance {}",
            usd(w.cost_per_token_usd),
            num(w.tokens_per_task),
            num(w.tasks_per_outcome),
            num(w.acceptance_rate)
        );
        let _ = writeln!(
            out,
            "  previous {}: cost per accepted outcome {}, {} calls, {} outcomes",
            r.period,
            usd(w.previous.cost_per_accepted_outcome_usd),
            w.previous.calls,
            w.previous.outcomes
        );
        if let Some(m) = &w.moved_most {
            let _ = writeln!(
                out,
                "  moved most: {} {:+.1}% ({} → {}), which {} cost per outcome",
                m.factor,
                m.change_pct,
                num(Some(m.previous)),
                num(Some(m.current)),
                if m.raises_cost { "raises" } else { "lowers" }
            );
        }
        let mix: Vec<String> = w
            .model_mix
            .iter()
            .map(|m| format!("{} {:.0}% ({} calls)", m.model, m.share_of_spend * 100.0, m.calls))
            .collect();
        let _ = writeln!(
            out,
            "  model mix (share of spend): {}",
            if mix.is_empty() { "–".into() } else { mix.join(", ") }
        );
        let _ = writeln!(
            out,
            "  cached input {}  downgrades {}  escalations {}  human intervention {} ({:.0} min)  median cycle time {}",
            pct(w.cached_token_share),
            w.downgrades,
            w.escalations,
            pct(w.human_intervention_rate),
            w.human_minutes,
            w.median_cycle_time_s.map_or("–".into(), |s| format!("{s:.0} s"))
        );
        if let Some(v) = w.value_usd {
            let _ = writeln!(
                out,
                "  value {} ({} per dollar spent)",
                usd(Some(v)),
                num(w.value_per_dollar)
            );
        }
        if let Some(b) = &w.budget {
            let _ = writeln!(
                out,
                "  budget {}: {} spent + {} reserved of {} ({} left), burning {}/h; {}",
                b.period_scope,
                usd(Some(b.spent_usd)),
                usd(Some(b.reserved_usd)),
                usd(Some(b.limit_usd)),
                usd(Some(b.remaining_usd)),
                usd(Some(b.burn_rate_usd_per_hour)),
                match &b.runs_out_at {
                    Some(t) => format!("runs out at {t}"),
                    None => format!("lasts the period (ends {})", b.period_ends_at),
                }
            );
        }
        let _ = writeln!(
            out,
            "  maturity: {}{}",
            w.maturity.rung,
            match (&w.maturity.next, &w.maturity.needs) {
                (Some(n), Some(why)) => format!(" (next: {n}: {why})"),
                _ => String::new(),
            }
        );
        for f in &w.flags {
            let _ = writeln!(out, "  ! {f}");
        }
    }
    out
}

/// Reads what a report needs from a store and builds it.
pub async fn gather(
    store: &dyn crate::budget::Store,
    table: &RuleTable,
    spec: &Spec,
) -> Result<Report, crate::budget::StoreError> {
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
    store: &dyn crate::budget::Store,
    table: &RuleTable,
    workflow: Option<&str>,
    now: Timestamp,
) -> Result<Vec<BudgetInput>, crate::budget::StoreError> {
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

/// What the table says when nothing has been recorded.
pub const EMPTY: &str = "No calls or outcomes are recorded for this period yet. Route calls, report their usage \
with ReportUsage and how the work ended with RecordOutcome, then run the report again.\n";

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
[[models]]
name = "small"
provider = "p"
input_per_mtok = 0.1
cached_input_per_mtok = 0.01
output_per_mtok = 0.4
context_window = 100000
max_output_tokens = 4000
tiers = { general = 2 }

[[workflows]]
name = "w"

[[workflows]]
name = "v"
"#;

    const HOUR: i64 = 3_600_000;

    fn now() -> Timestamp {
        "2026-11-25T12:00:00Z".parse().expect("ts")
    }

    fn call(wf: &str, id: &str, outcome: &str, model: &str, at: i64, cost: i64, tokens: u64) -> CallRecord {
        CallRecord {
            decision_id: id.into(),
            workflow: wf.into(),
            outcome_id: outcome.into(),
            model: model.into(),
            created_ms: at,
            settled_ms: at,
            cost_nanos: cost,
            input_tokens: tokens / 2,
            cached_input_tokens: 0,
            output_tokens: tokens - tokens / 2,
            failed: false,
            downgraded: false,
            labels: String::new(),
        }
    }

    fn outcome(wf: &str, id: &str, status: OutcomeStatus, at: i64) -> OutcomeEvent {
        OutcomeEvent {
            workflow: wf.into(),
            outcome_id: id.into(),
            status,
            value_usd: None,
            human_minutes: None,
            at_ms: at,
        }
    }

    fn report(ledger: &Ledger) -> Report {
        let table = RuleTable::from_str("r.toml", RULES).expect("rules");
        let spec = Spec {
            period: Period::Day,
            workflow: None,
            label: None,
            now: now(),
        };
        build(&spec, &table, ledger, &HashMap::new(), &[])
    }

    #[test]
    fn the_factor_that_moved_most_and_the_flags() {
        let t = now().as_millisecond();
        let yesterday = t - 24 * HOUR;
        let mut l = Ledger::default();
        // Yesterday: 4 outcomes of one call each, 1000 tokens a call.
        for i in 0..4 {
            let id = format!("y{i}");
            l.calls
                .push(call("w", &format!("dy{i}"), &id, "small", yesterday + i, 1000, 1000));
            l.outcomes
                .push(outcome("w", &id, OutcomeStatus::Accepted, yesterday + 10));
        }
        // Today: the same outcomes take three calls each (tasks/outcome x3),
        // and only one of four is accepted.
        for i in 0..4 {
            let id = format!("t{i}");
            for j in 0..3 {
                l.calls.push(call(
                    "w",
                    &format!("dt{i}{j}"),
                    &id,
                    "small",
                    t - HOUR + i * 10 + j,
                    1000,
                    1000,
                ));
            }
            let status = if i == 0 {
                OutcomeStatus::Accepted
            } else {
                OutcomeStatus::Rejected
            };
            l.outcomes.push(outcome("w", &id, status, t - 1000));
        }
        let r = report(&l);
        let w = r.workflows.iter().find(|w| w.workflow == "w").expect("w");
        assert_eq!((w.calls, w.outcomes, w.accepted_outcomes), (12, 4, 1));
        assert_eq!(w.previous.calls, 4);
        let m = w.moved_most.as_ref().expect("moved");
        // acceptance went 1.0 -> 0.25 (x4), tasks/outcome 1 -> 3 (x3).
        assert_eq!(m.factor, "acceptance_rate", "{m:?}");
        assert!(m.raises_cost);
        assert!(
            w.flags.iter().any(|f| f.starts_with("spend without absorption")),
            "{:?}",
            w.flags
        );
        assert_eq!(w.maturity.rung, "unit-economic");
        assert_eq!(w.maturity.next, Some("optimized"));
        // The other workflow has nothing: no rung, and it says what to do.
        let v = r.workflows.iter().find(|w| w.workflow == "v").expect("v");
        assert_eq!(v.maturity.rung, "none");
        assert!(v.cost_per_accepted_outcome_usd.is_none());
    }

    #[test]
    fn a_cheaper_model_accepted_as_often_is_flagged() {
        let t = now().as_millisecond() - HOUR;
        let mut l = Ledger::default();
        for i in 0..6 {
            let (a, b) = (format!("a{i}"), format!("b{i}"));
            l.calls.push(call("w", &format!("da{i}"), &a, "small", t + i, 100, 500));
            l.calls.push(call("w", &format!("db{i}"), &b, "big", t + i, 1000, 500));
            // small: 5 of 6 accepted; big: 4 of 6.
            let sa = if i < 5 {
                OutcomeStatus::Accepted
            } else {
                OutcomeStatus::Rejected
            };
            let sb = if i < 4 {
                OutcomeStatus::Accepted
            } else {
                OutcomeStatus::Rejected
            };
            l.outcomes.push(outcome("w", &a, sa, t + 100));
            l.outcomes.push(outcome("w", &b, sb, t + 100));
        }
        let r = report(&l);
        let w = &r.workflows[0];
        assert!(
            w.flags
                .iter()
                .any(|f| f.starts_with("a cheaper model would do: small") && f.contains("big")),
            "{:?}",
            w.flags
        );
        // With fewer than 5 judgements each, no flag.
        l.outcomes.truncate(6);
        assert!(report(&l).workflows[0].flags.iter().all(|f| !f.contains("cheaper")));
    }

    #[test]
    fn late_and_replaced_outcomes_land_where_they_belong() {
        let t = now().as_millisecond();
        let mut l = Ledger::default();
        // Recorded yesterday as accepted, re-recorded today as rejected.
        l.calls.push(call("w", "d1", "o1", "small", t - 30 * HOUR, 500, 100));
        l.outcomes
            .push(outcome("w", "o1", OutcomeStatus::Accepted, t - 26 * HOUR));
        l.outcomes.push(outcome("w", "o1", OutcomeStatus::Rejected, t - HOUR));
        let r = report(&l);
        let w = &r.workflows[0];
        assert_eq!((w.outcomes, w.accepted_outcomes, w.outcome_changes), (1, 0, 1));
        assert_eq!(w.previous.outcomes, 0, "the replaced record no longer counts");
        // Its call was the day before yesterday's: no spend today.
        assert_eq!(w.calls, 0);
        assert_eq!(w.recent_outcomes[0].cost_usd, 500e-9);
        assert!(w.median_cycle_time_s.is_some_and(|s| (s - 29.0 * 3600.0).abs() < 1.0));
    }

    #[test]
    fn the_forecast_says_when_a_budget_runs_out() {
        let start: Timestamp = "2026-11-25T00:00:00Z".parse().expect("ts");
        let end: Timestamp = "2026-11-26T00:00:00Z".parse().expect("ts");
        let b = |spent: i64| BudgetInput {
            workflow: "w".into(),
            scope: "w|day|2026-11-25@UTC".into(),
            state: ScopeState {
                limit_nanos: 1_000_000_000,
                spent_nanos: spent,
                reserved_nanos: 0,
                extra_nanos: 0,
            },
            period_start: start,
            period_end: end,
        };
        // $0.75 in 12 hours: the last $0.25 lasts 4 more hours.
        let line = budget_line(&b(750_000_000), now());
        assert!((line.burn_rate_usd_per_hour - 0.0625).abs() < 1e-12);
        assert_eq!(line.runs_out_in_s, Some(4.0 * 3600.0));
        assert_eq!(line.runs_out_at.as_deref(), Some("2026-11-25T16:00:00Z"));
        // $0.25 in 12 hours lasts the day.
        assert_eq!(budget_line(&b(250_000_000), now()).runs_out_at, None);
    }
}
