//! A paced workflow's state in one sidecar: its price controller and its
//! traffic by hour of the week, what `pacing.json` keeps of them across
//! restarts, and the pace they give at a moment.

use jiff::Timestamp;

use super::pacing::{due_share, pace, Controller, Pace, PeriodCount, Shape, HOURS_OF_WEEK, VOLUME_PERIODS};
use super::*;
use crate::store::ScopeState;

/// One paced workflow's state in a sidecar.
#[derive(Debug, Clone)]
pub struct Pacer {
    pub controller: Controller,
    /// Admitted calls by hour of the week, for `pacing = "traffic"`.
    pub traffic: Vec<u64>,
    /// When the first of them was counted: how many weeks they cover.
    pub since_ms: Option<i64>,
    /// The start of the period the calls of `period_calls` were admitted in.
    pub period_start_ms: i64,
    pub period_calls: u64,
    /// The calls and length of each completed period since counting began
    /// (the latest [`VOLUME_PERIODS`]): whether a period's volume is steady.
    pub periods: Vec<PeriodCount>,
    /// The last pace, for metrics.
    pub last: Option<Pace>,
}

impl Default for Pacer {
    fn default() -> Pacer {
        Pacer {
            controller: Controller::default(),
            traffic: vec![0; HOURS_OF_WEEK],
            since_ms: None,
            period_start_ms: 0,
            period_calls: 0,
            periods: Vec::new(),
            last: None,
        }
    }
}

const WEEK_MS: f64 = 7.0 * 86_400_000.0;

/// The pacing state file (`pacing.json` in the state folder).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SavedPacers {
    pub(super) version: u32,
    pub(super) workflows: std::collections::BTreeMap<String, SavedPacer>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SavedPacer {
    /// The controller's integral term, in log λ.
    pub(super) integral: f64,
    /// Admitted calls by hour of the week.
    pub(super) traffic: Vec<u64>,
    pub(super) since_ms: Option<i64>,
    /// The calls of the latest completed periods, and of the current one
    /// (which began at `period_start_ms`). Files from before these were
    /// kept read as none counted.
    #[serde(default)]
    pub(super) periods: Vec<PeriodCount>,
    #[serde(default)]
    pub(super) period_start_ms: i64,
    #[serde(default)]
    pub(super) period_calls: u64,
}

/// The pacers a sidecar saved (`Budgets::save_pacers`), by workflow: each
/// controller's price and traffic by hour. A missing file is a fresh start
/// (none); a damaged one is refused with its name and what to do, and
/// nothing of it is used.
pub fn read_pacers(path: &std::path::Path) -> Result<std::collections::BTreeMap<String, Pacer>, String> {
    let body = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let saved: SavedPacers = serde_json::from_slice(&body).map_err(|e| {
        format!(
            "{}:{}:{}: not a pacing state file ({e}); delete it to start pacing afresh",
            path.display(),
            e.line(),
            e.column()
        )
    })?;
    if saved.version != 1 {
        return Err(format!(
            "{}: pacing state version {} is not this build's (1); delete it to start pacing afresh",
            path.display(),
            saved.version
        ));
    }
    let mut out = std::collections::BTreeMap::new();
    for (w, s) in saved.workflows {
        if s.traffic.len() != HOURS_OF_WEEK || !s.integral.is_finite() {
            return Err(format!(
                "{}: workflow `{w}` has {} hourly counts (want {HOURS_OF_WEEK}) or a price that is not a number; \
                 delete the file to start pacing afresh",
                path.display(),
                s.traffic.len()
            ));
        }
        let mut p = Pacer::default();
        p.controller.integral = s.integral.clamp(-super::pacing::LOG_RANGE, super::pacing::LOG_RANGE);
        p.traffic = s.traffic;
        p.since_ms = s.since_ms;
        p.periods = s.periods;
        p.periods.drain(..p.periods.len().saturating_sub(VOLUME_PERIODS));
        (p.period_start_ms, p.period_calls) = (s.period_start_ms, s.period_calls);
        out.insert(w, p);
    }
    Ok(out)
}

impl Pacer {
    /// Counts a call admitted at `now` in its hour of the week and period.
    pub fn count(&mut self, b: &Budget, now: Timestamp) {
        let hour = super::pacing::hour_of_week(&b.timezone, now);
        if let Some(slot) = self.traffic.get_mut(hour) {
            *slot = slot.saturating_add(1);
        }
        self.since_ms.get_or_insert(now.as_millisecond());
        let start = period_bounds(b.period, &b.timezone, now).0.as_millisecond();
        if start != self.period_start_ms {
            // A period counted from its start is complete when the next
            // begins.
            if self.period_start_ms != 0 && self.since_ms.is_some_and(|s| s <= self.period_start_ms) {
                self.periods
                    .push((self.period_calls, period_hours(b, self.period_start_ms)));
                self.periods.drain(..self.periods.len().saturating_sub(VOLUME_PERIODS));
            }
            (self.period_start_ms, self.period_calls) = (start, 0);
        }
        self.period_calls = self.period_calls.saturating_add(1);
    }

    /// The shape `pacing` aims by: the traffic's, once it covers a week, for
    /// `traffic`; none (the elapsed share) for `even`.
    pub(super) fn shape_for(&self, pacing: super::pacing::Pacing, now: Timestamp) -> Option<Shape> {
        match pacing {
            super::pacing::Pacing::Traffic => self.shape(now),
            super::pacing::Pacing::Even => None,
        }
    }

    /// The traffic shape, once it covers a week, with the steady volume of
    /// the completed periods where they show one.
    fn shape(&self, now: Timestamp) -> Option<Shape> {
        let weeks = self
            .since_ms
            .map_or(0.0, |s| (now.as_millisecond() - s) as f64 / WEEK_MS);
        Shape::of_counts(&self.traffic, weeks).map(|s| s.with_periods(&self.periods))
    }
}

/// The length in whole hours of `b`'s period that starts at `start_ms`.
pub fn period_hours(b: &Budget, start_ms: i64) -> u32 {
    Timestamp::from_millisecond(start_ms).map_or(0, |t| {
        let (s, e) = period_bounds(b.period, &b.timezone, t);
        u32::try_from((e.as_millisecond() - s.as_millisecond()) / 3_600_000).unwrap_or(0)
    })
}

/// The pace of `workflow`'s period in `state` at `now`, moving `pacer`.
pub fn pace_of(b: &Budget, state: &ScopeState, pacer: &mut Pacer, now: Timestamp) -> Option<Pace> {
    let pacing = b.pacing?;
    let (start, end) = period_bounds(b.period, &b.timezone, now);
    let shape = pacer.shape_for(pacing, now);
    let seen = if pacer.period_start_ms == start.as_millisecond() {
        pacer.period_calls
    } else {
        0
    };
    let due = due_share(start, end, now, &b.timezone, shape.as_ref(), seen);
    let p = pace(
        pacing,
        &mut pacer.controller,
        state.spent_nanos.saturating_add(state.reserved_nanos),
        state.limit_nanos,
        due,
        now.as_millisecond(),
        end.as_millisecond() - start.as_millisecond(),
    );
    pacer.last = Some(p);
    Some(p)
}
