//! Budgets: reserve the estimated cost at Route, settle it to the actual cost
//! at ReportUsage, and step down, escalate or deny at the thresholds.
//!
//! Every budget is a set of *scopes*, each a counter of spent and reserved
//! nano-dollars against a limit:
//!
//! - the workflow's period: `budget-demo|day|2026-11-25@UTC`. The period is in
//!   the key, so a new period is a new counter: rollover is never a reset that
//!   could overwrite spend, and concurrent "resets" cannot race;
//! - one outcome ID: `budget-demo|outcome|ticket-4711`, capping a runaway
//!   agent episode over its whole life;
//! - a label value in the period: `budget-demo|label|team=search|day|…`.
//!
//! A reservation is made on all of a call's scopes atomically, or on none: the
//! store checks `spent + reserved + amount <= limit` and increments in one
//! transaction (SQLite) or one script (Redis), so there is no
//! check-then-increment race. Settling is idempotent by `decision_id`.
//! Reservations never settled expire and release their amount.

mod gate;
mod pacer;
pub mod pacing;

pub use gate::*;
pub use pacer::*;

use crate::error::StoreError;
use crate::store::ScopeCharge;

use jiff::civil::Weekday;
use jiff::Timestamp;

use crate::rules::{Budget, Period, Workflow};

/// The first day of the calendar period containing the date.
fn period_start_date(period: Period, date: jiff::civil::Date) -> jiff::civil::Date {
    match period {
        Period::Day => date,
        Period::Week => {
            let back = date.weekday().since(Weekday::Monday) as i64;
            date.checked_sub(jiff::Span::new().days(back)).unwrap_or(date)
        }
        Period::Month => date.first_of_month(),
    }
}

fn period_name(period: Period) -> &'static str {
    match period {
        Period::Day => "day",
        Period::Week => "week",
        Period::Month => "month",
    }
}

/// The calendar period containing `now`, in the budget's time zone, as a key
/// fragment such as `day|2026-11-25@Europe/Berlin`.
pub fn period_key(budget: &Budget, now: Timestamp) -> String {
    let start = period_start_date(budget.period, budget.timezone.to_datetime(now).date());
    format!("{}|{start}@{}", period_name(budget.period), budget.timezone_name)
}

/// The start and end of the calendar period containing `now` in `tz`.
pub fn period_bounds(period: Period, tz: &jiff::tz::TimeZone, now: Timestamp) -> (Timestamp, Timestamp) {
    let start = period_start_date(period, tz.to_datetime(now).date());
    let next = match period {
        Period::Day => start.checked_add(jiff::Span::new().days(1)),
        Period::Week => start.checked_add(jiff::Span::new().days(7)),
        Period::Month => start.checked_add(jiff::Span::new().months(1)),
    }
    .unwrap_or(start);
    let at = |d: jiff::civil::Date| {
        tz.to_timestamp(d.to_datetime(jiff::civil::Time::midnight()))
            .unwrap_or(now)
    };
    (at(start), at(next))
}

/// The key of a workflow's current period scope.
pub fn period_scope(workflow: &Workflow, budget: &Budget, now: Timestamp) -> String {
    format!("{}|{}", workflow.name, period_key(budget, now))
}

/// Every scope a call of `workflow` is charged to now.
pub fn scopes_for<'a>(
    workflow: &Workflow,
    outcome_id: &str,
    labels: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    now: Timestamp,
) -> Vec<ScopeCharge> {
    let Some(b) = &workflow.budget else { return Vec::new() };
    let period = period_key(b, now);
    let mut out = vec![ScopeCharge {
        key: format!("{}|{period}", workflow.name),
        limit_nanos: b.limit_nanos,
    }];
    if let (Some(limit), false) = (b.per_outcome_nanos, outcome_id.is_empty()) {
        out.push(ScopeCharge {
            key: format!("{}|outcome|{outcome_id}", workflow.name),
            limit_nanos: limit,
        });
    }
    for lb in &b.labels {
        if labels.clone().any(|(k, v)| k == lb.label && v == lb.value) {
            out.push(ScopeCharge {
                key: format!("{}|label|{}={}|{period}", workflow.name, lb.label, lb.value),
                limit_nanos: lb.limit_nanos,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
