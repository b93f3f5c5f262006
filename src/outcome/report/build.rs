//! From a ledger to the report: the factors of cost per accepted outcome,
//! what moved them, the diagnosis, the budget lines and the daily chart.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;

use crate::ledger::{CallRecord, Ledger, OutcomeEvent, OutcomeStatus};
use crate::money::nanos_to_usd;
use crate::rules::{Period, RuleTable};

use super::*;

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
    // The calls a `whatif` could learn from: those with a label.
    let labelled = crate::outcome::whatif::estimate::labels(ledger);
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

        let rules_budget = table.workflow(&name).and_then(|w| w.budget.as_ref());
        let budget = budgets.iter().find(|b| b.workflow == name).map(|b| {
            let mut line = budget_line(b, spec.now);
            // A paced budget's pace as a fresh controller reads it from the
            // same spend (the dashboard shows the serving sidecar's own).
            line.pace = rules_budget
                .and_then(|r| crate::budget::pace_of(r, &b.state, &mut crate::budget::Pacer::default(), spec.now))
                .map(|p| pace_line(&p));
            line
        });
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
            labelled_call_share: ratio(
                in_cur
                    .iter()
                    .filter(|c| labelled.contains_key(c.decision_id.as_str()))
                    .count() as f64,
                in_cur.len() as f64,
            ),
            logged_decision_share: ratio(
                in_cur.iter().filter(|c| !c.snapshot.is_empty()).count() as f64,
                in_cur.len() as f64,
            ),
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

/// A paced budget's pace as the report and the dashboard show it.
pub fn pace_line(p: &crate::budget::pacing::Pace) -> super::PaceLine {
    super::PaceLine {
        pacing: p.pacing.as_str(),
        target_usd: nanos_to_usd(p.target_nanos),
        forecast_usd: nanos_to_usd(p.forecast_nanos),
        pace_ratio: p.ratio(),
        spend_price_per_usd: p.price_per_usd(),
        curve: Vec::new(),
        elapsed: 0.0,
    }
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
        pace: None,
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
