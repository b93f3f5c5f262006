use super::*;
use crate::ledger::{Ledger, OutcomeStatus};

const RULES: &str = include_str!("../../../tests/fixtures/unit/report.toml");

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
        snapshot: Vec::new(),
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
