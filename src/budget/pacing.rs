//! Budget pacing: spend a workflow's period budget along a target curve, so
//! that the period ends on budget, with the dollars going where a stronger
//! model changes the outcome most.
//!
//! A paced workflow keeps a *price of spend* λ ≥ 0. Each Route picks, among
//! the models the rules allow (the quality floor, the capabilities, a
//! retry's cascade), the one that maximises
//!
//! ```text
//! value(model) − λ × estimated cost(model)
//! ```
//!
//! where the value is P(accepted) from the difficulty score (a cheap tier
//! loses `complexity` of acceptance against the strongest, in proportion to
//! the tiers between them), averaged with the learner's prediction for the
//! model's tier where the learner has evidence.
//!
//! λ is set by a controller on the gap between spend and target, as a share
//! of the budget. The gap is of *cumulative* spend, so a proportional term on
//! it is already an integral on the spend rate: a burst raises λ smoothly
//! and an underspend lowers it back. A slow integral term on the gap learns
//! the level λ settles at, and carries it into the next period. The
//! controller works in log λ, so it is scale-free, and both terms are
//! clamped (no wind-up). Every sidecar derives λ from the same shared spend
//! (the store's period scope), so sidecars of a fleet agree.
//!
//! Nothing here does I/O or reads a clock: the gate, `explain` and
//! `simulate pacing` all call the same functions.

use jiff::Timestamp;

/// How a workflow's budget is paced: part of the rules, read here.
pub use crate::rules::Pacing;

/// Hours in a week: the traffic shape's resolution.
pub const HOURS_OF_WEEK: usize = 168;

/// The share of the budget pacing aims to have spent at the period's end:
/// a little under all of it, so that noise at the end lands below the hard
/// limit rather than on it.
pub const AIM: f64 = 0.98;

/// The controller's gains on the spend gap (as a share of the budget):
/// proportional, and integral per period. Chosen in `simulate pacing` for a
/// settling time under a tenth of the period with at most one overshoot
/// (docs/budgets.md).
pub const GAIN_P: f64 = 80.0;
pub const GAIN_I: f64 = 60.0;

/// Past [`AIM`] of the budget, the price rises this much more in log λ per
/// share of the budget spent: the last 2% is dear, so a burst at the end
/// steps down instead of running into the hard limit.
pub const GAIN_BARRIER: f64 = 400.0;

/// log λ stays within ± this of the reference price (1 / 10,000th of the
/// budget per unit of value).
pub const LOG_RANGE: f64 = 12.0;

/// How far the call rates of past periods may spread (their standard
/// deviation over their mean) for a period's volume to count as steady.
pub const STEADY_SPREAD: f64 = 0.2;

/// With a steady volume, the rest of a period is still expected to bring at
/// least this share of what the shape expects of it: a period busier than
/// its history is not taken to be over.
pub const VOLUME_FLOOR: f64 = 0.25;

/// The completed periods a steady volume is read from (the latest).
pub const VOLUME_PERIODS: usize = 8;

/// A workflow's traffic by hour of the week (Monday 00:00 in the budget's
/// time zone is hour 0): the calls expected in each hour of a week.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub hours: [f64; HOURS_OF_WEEK],
    /// The calls an hour of a period brings on average, when past periods
    /// agree on it ([`steady_volume`]): a burst then brings calls forward
    /// rather than adding to them, so what is left of the period expects
    /// fewer.
    pub volume: Option<f64>,
}

/// A completed period's calls and its length in hours (months and days
/// across a change of clocks differ in length).
pub type PeriodCount = (u64, u32);

/// The calls per hour a period brings, when the latest completed periods
/// (up to [`VOLUME_PERIODS`]) agree on it: at least two of them, their rates
/// spread no more than [`STEADY_SPREAD`] about their mean. `None` when they
/// do not.
pub fn steady_volume(past: &[PeriodCount]) -> Option<f64> {
    // Read on every paced Route: two passes over the slice, no allocation.
    let rates = || {
        past[past.len().saturating_sub(VOLUME_PERIODS)..]
            .iter()
            .filter(|p| p.1 > 0)
            .map(|&(calls, hours)| calls as f64 / f64::from(hours))
    };
    let k = rates().count();
    if k < 2 {
        return None;
    }
    let k = k as f64;
    let mean = rates().sum::<f64>() / k;
    let var = rates().map(|r| (r - mean).powi(2)).sum::<f64>() / (k - 1.0);
    (mean > 0.0 && var.sqrt() <= STEADY_SPREAD * mean).then_some(mean)
}

impl Shape {
    /// A shape from the calls counted in each hour of the week over `weeks`
    /// weeks; `None` for less than a week of history, or no calls at all.
    pub fn of_counts(counts: &[u64], weeks: f64) -> Option<Shape> {
        let total: u64 = counts.iter().sum();
        if counts.len() != HOURS_OF_WEEK || total == 0 || !weeks.is_finite() || weeks < 1.0 {
            return None;
        }
        let mut hours = [0.0; HOURS_OF_WEEK];
        // A floor of a tenth of the mean: an hour never seen is still
        // expected to bring a little traffic.
        let floor = total as f64 / HOURS_OF_WEEK as f64 / 10.0;
        for (h, &c) in hours.iter_mut().zip(counts) {
            *h = (c as f64).max(floor) / weeks;
        }
        Some(Shape { hours, volume: None })
    }

    /// This shape with the steady volume of `past` periods' calls, if any.
    pub fn with_periods(mut self, past: &[PeriodCount]) -> Shape {
        self.volume = steady_volume(past);
        self
    }

    /// The calls expected in `[from, to)`.
    fn expected(&self, tz: &jiff::tz::TimeZone, from: i64, to: i64) -> f64 {
        const HOUR: i64 = 3_600_000;
        let mut sum = 0.0;
        let mut at = from;
        while at < to {
            // The hour boundary after `at` (periods start on whole hours).
            let next = (at - at.rem_euclid(HOUR) + HOUR).min(to);
            let h = Timestamp::from_millisecond(at).map_or(0, |t| hour_of_week(tz, t));
            sum += self.hours[h] * (next - at) as f64 / HOUR as f64;
            at = next;
        }
        sum
    }
}

/// The hour of the week of `t` in `tz` (0: Monday 00:00–01:00).
pub fn hour_of_week(tz: &jiff::tz::TimeZone, t: Timestamp) -> usize {
    let dt = tz.to_datetime(t);
    dt.weekday().to_monday_zero_offset() as usize * 24 + dt.hour() as usize
}

/// The share of the period's spend due by `now`: the elapsed share of
/// `[start, end)` (even), or, by `shape`, the share of the period's traffic
/// that has arrived: the `seen` calls of this period against those and the
/// calls expected in the rest of it. A burst moves the target up with it; a
/// quiet stretch holds it back. The rest is what the shape expects of it,
/// or, where past periods show a steady volume, that volume less the calls
/// seen (but never under [`VOLUME_FLOOR`] of the shape's): a burst early in
/// such a period leaves fewer calls for later.
pub fn due_share(
    start: Timestamp,
    end: Timestamp,
    now: Timestamp,
    tz: &jiff::tz::TimeZone,
    shape: Option<&Shape>,
    seen: u64,
) -> f64 {
    let (s, e, n) = (start.as_millisecond(), end.as_millisecond(), now.as_millisecond());
    if e <= s {
        return 1.0;
    }
    let n = n.clamp(s, e);
    let elapsed = (n - s) as f64 / (e - s) as f64;
    let Some(shape) = shape else {
        return elapsed;
    };
    let seen = seen as f64;
    let by_shape = shape.expected(tz, n, e);
    let rest = match shape.volume {
        Some(per_hour) => (per_hour * (e - s) as f64 / 3_600_000.0 - seen).max(VOLUME_FLOOR * by_shape),
        None => by_shape,
    };
    if seen + rest > 0.0 {
        seen / (seen + rest)
    } else {
        elapsed
    }
}

/// The target curve of a period, for people to read spend against: at each
/// of `points + 1` evenly spaced moments, the elapsed share of the period
/// and the share of the budget pacing aims to have spent by then ([`AIM`]
/// times the due share). Even pacing is a straight line; traffic pacing
/// follows the calls its shape expects (as if traffic keeps to it from the
/// period's start; the live target also counts the calls that came).
pub fn target_curve(
    start: Timestamp,
    end: Timestamp,
    tz: &jiff::tz::TimeZone,
    shape: Option<&Shape>,
    points: usize,
) -> Vec<(f64, f64)> {
    let (s, e) = (start.as_millisecond(), end.as_millisecond());
    let points = points.max(1);
    let total = shape.map_or(0.0, |sh| sh.expected(tz, s, e));
    (0..=points)
        .map(|i| {
            let x = i as f64 / points as f64;
            let due = match shape {
                Some(sh) if total > 0.0 => sh.expected(tz, s, s + ((e - s) as f64 * x) as i64) / total,
                _ => x,
            };
            (x, AIM * due.clamp(0.0, 1.0))
        })
        .collect()
}

/// A workflow's pace: where its spend is against the target, and the price.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    pub pacing: Pacing,
    /// Spent plus reserved in the period so far.
    pub spent_nanos: i64,
    /// What pacing aims to have spent by now.
    pub target_nanos: i64,
    pub limit_nanos: i64,
    /// Spend at the period's end if it goes on as it has against the target.
    pub forecast_nanos: i64,
    /// λ: value forgone per nano-dollar.
    pub price_per_nano: f64,
}

impl Pace {
    /// Spend over target (1: on pace); `None` before anything is due.
    pub fn ratio(&self) -> Option<f64> {
        (self.target_nanos > 0).then(|| self.spent_nanos as f64 / self.target_nanos as f64)
    }

    /// λ per USD, as metrics and people read it.
    pub fn price_per_usd(&self) -> f64 {
        self.price_per_nano * 1e9
    }
}

/// The controller of one workflow's price. `integral` is carried from one
/// period into the next: traffic like last period's starts at last period's
/// price.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Controller {
    /// The integral term, in log λ.
    pub integral: f64,
    /// When the controller last moved, and the period it was in.
    pub last_ms: Option<i64>,
    pub log_price: f64,
}

impl Controller {
    /// Moves the controller to `now_ms` with the spend gap `gap` (spend minus
    /// target, as a share of the budget) over a period `period_ms` long, and
    /// returns log λ relative to the reference price.
    pub fn update(&mut self, now_ms: i64, period_ms: i64, gap: f64) -> f64 {
        let gap = if gap.is_finite() { gap.clamp(-1.0, 1.0) } else { 0.0 };
        let dt = match self.last_ms {
            Some(last) if now_ms > last && period_ms > 0 => ((now_ms - last) as f64 / period_ms as f64).min(0.05),
            _ => 0.0,
        };
        self.last_ms = Some(now_ms.max(self.last_ms.unwrap_or(now_ms)));
        let p = GAIN_P * gap;
        let mut next = self.integral + GAIN_I * gap * dt;
        // No wind-up: the integral does not move further the way the output
        // is already clamped.
        if (next + p > LOG_RANGE && next > self.integral) || (next + p < -LOG_RANGE && next < self.integral) {
            next = self.integral;
        }
        self.integral = next.clamp(-LOG_RANGE, LOG_RANGE);
        self.log_price = (self.integral + p).clamp(-LOG_RANGE, LOG_RANGE);
        self.log_price
    }
}

/// The reference price: one unit of value per 10,000th of the budget.
pub fn reference_price(limit_nanos: i64) -> f64 {
    1e4 / (limit_nanos.max(1) as f64)
}

/// The pace of a period: the target by the due share, the forecast, and the
/// controller moved to `now`.
pub fn pace(
    pacing: Pacing,
    c: &mut Controller,
    spent_nanos: i64,
    limit_nanos: i64,
    due: f64,
    now_ms: i64,
    period_ms: i64,
) -> Pace {
    let target = AIM * limit_nanos as f64 * due.clamp(0.0, 1.0);
    let gap = (spent_nanos as f64 - target) / limit_nanos.max(1) as f64;
    let used = spent_nanos as f64 / limit_nanos.max(1) as f64;
    let barrier = GAIN_BARRIER * (used - AIM).max(0.0);
    let log_price = (c.update(now_ms, period_ms, gap) + barrier).min(LOG_RANGE + GAIN_BARRIER * (1.0 - AIM));
    // Early in the period the forecast is noise; it reads as on pace.
    let forecast = if due > 0.02 {
        spent_nanos as f64 / due
    } else {
        AIM * limit_nanos as f64
    };
    Pace {
        pacing,
        spent_nanos,
        target_nanos: target.round() as i64,
        limit_nanos,
        forecast_nanos: forecast.min(i64::MAX as f64 / 2.0).round() as i64,
        price_per_nano: reference_price(limit_nanos) * log_price.exp(),
    }
}

/// The value of each candidate tier from the difficulty score: the strongest
/// available tier is worth 0, the weakest `-complexity`, those between in
/// proportion.
pub fn prior_value(complexity: f64, tier: u8, weakest: u8, strongest: u8) -> f64 {
    if strongest <= weakest {
        return 0.0;
    }
    let c = if complexity.is_finite() {
        complexity.clamp(0.0, 1.0)
    } else {
        0.0
    };
    -c * f64::from(strongest.saturating_sub(tier)) / f64::from(strongest - weakest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_even_period_is_due_by_its_elapsed_share() {
        let tz = jiff::tz::TimeZone::UTC;
        let s = Timestamp::from_second(0).expect("t");
        let e = Timestamp::from_second(7 * 86_400).expect("t");
        let mid = Timestamp::from_second(7 * 43_200).expect("t");
        assert!((due_share(s, e, mid, &tz, None, 7) - 0.5).abs() < 1e-9);
        assert_eq!(due_share(s, e, e, &tz, None, 7), 1.0);
        assert_eq!(due_share(s, e, s, &tz, None, 7), 0.0);
    }

    #[test]
    fn a_traffic_shape_moves_the_target_to_the_busy_hours() {
        let tz = jiff::tz::TimeZone::UTC;
        // 1970-01-05 was a Monday.
        let s = Timestamp::from_second(4 * 86_400).expect("t");
        let e = Timestamp::from_second(11 * 86_400).expect("t");
        let mut counts = vec![1u64; HOURS_OF_WEEK];
        // Monday 09:00-17:00 carries almost everything: 8,000 calls a week.
        for c in &mut counts[9..17] {
            *c = 1000;
        }
        let shape = Shape::of_counts(&counts, 1.0).expect("shape");
        let monday_5pm = Timestamp::from_second(4 * 86_400 + 17 * 3600).expect("t");
        let due = due_share(s, e, monday_5pm, &tz, Some(&shape), 8_000);
        assert!(due > 0.85, "{due}");
        assert!(due_share(s, e, monday_5pm, &tz, None, 8_000) < 0.11);
        // A burst: twice the usual calls by then moves the target up.
        let burst = due_share(s, e, monday_5pm, &tz, Some(&shape), 16_000);
        assert!(burst > due, "{burst} against {due}");
        // Half the usual holds it back.
        assert!(due_share(s, e, monday_5pm, &tz, Some(&shape), 4_000) < due);
    }

    /// The chart's curve: straight for even pacing, and for traffic pacing
    /// steep through the busy hours, flat through the quiet ones, ending at
    /// the aim.
    #[test]
    fn the_target_curve_follows_the_pacing() {
        let tz = jiff::tz::TimeZone::UTC;
        let s = Timestamp::from_second(4 * 86_400).expect("t");
        let e = Timestamp::from_second(11 * 86_400).expect("t");
        let even = target_curve(s, e, &tz, None, 14);
        assert_eq!(even.len(), 15);
        for &(x, y) in &even {
            assert!((y - AIM * x).abs() < 1e-9, "{x} {y}");
        }
        // Traffic only on weekdays, none at the weekend.
        let mut counts = vec![0u64; HOURS_OF_WEEK];
        for c in &mut counts[..5 * 24] {
            *c = 100;
        }
        let shape = Shape::of_counts(&counts, 1.0).expect("shape");
        let curve = target_curve(s, e, &tz, Some(&shape), 14);
        // Half-day steps: by Friday night (10 of 14) nearly all is due.
        assert!(curve[10].1 > 0.95 * AIM, "{curve:?}");
        assert!(curve[10].1 - curve[5].1 > 0.3, "steep through the week");
        assert!(curve[14].1 - curve[10].1 < 0.05 * AIM, "flat at the weekend");
        assert!((curve[14].1 - AIM).abs() < 1e-9);
        assert!(curve.windows(2).all(|w| w[1].1 >= w[0].1), "never falls");
    }

    #[test]
    fn a_volume_is_steady_only_when_past_periods_agree_on_it() {
        assert_eq!(steady_volume(&[(1000, 10), (1010, 10), (990, 10)]), Some(100.0));
        assert_eq!(steady_volume(&[(1000, 10)]), None, "one period says nothing of spread");
        assert_eq!(steady_volume(&[(1000, 10), (3000, 10)]), None, "too spread");
        assert_eq!(steady_volume(&[(0, 10), (0, 10)]), None);
        assert_eq!(steady_volume(&[(10, 0), (10, 0)]), None, "no length, no rate");
        // A rate, not a count: a 31-day month of the same days as a 28-day
        // one is as steady.
        let (feb, mar) = ((28 * 24 * 100, 28 * 24), (31 * 24 * 100, 31 * 24));
        assert_eq!(steady_volume(&[feb, mar]), Some(100.0));
        // Only the latest periods count: an old outlier is forgotten.
        let mut past = vec![(10_000, 1)];
        past.extend([(500, 1); VOLUME_PERIODS]);
        assert_eq!(steady_volume(&past), Some(500.0));
    }

    /// Where past weeks brought the same calls, a burst brings calls
    /// forward: half the week's calls on Monday leave half the budget due,
    /// where the shape alone would expect a full week more of them.
    #[test]
    fn a_burst_in_a_steady_period_brings_the_target_forward() {
        let tz = jiff::tz::TimeZone::UTC;
        let s = Timestamp::from_second(4 * 86_400).expect("t");
        let e = Timestamp::from_second(11 * 86_400).expect("t");
        let tuesday = Timestamp::from_second(5 * 86_400).expect("t");
        // Ten calls an hour, 1,680 a week, three weeks alike.
        let plain = Shape::of_counts(&[30; HOURS_OF_WEEK], 3.0).expect("shape");
        let week = (1680, HOURS_OF_WEEK as u32);
        let steady = plain.clone().with_periods(&[week, week, week]);
        assert_eq!(steady.volume, Some(10.0));
        let by_shape = due_share(s, e, tuesday, &tz, Some(&plain), 840);
        assert!((by_shape - 840.0 / 2280.0).abs() < 1e-9, "{by_shape}");
        let by_volume = due_share(s, e, tuesday, &tz, Some(&steady), 840);
        assert!((by_volume - 0.5).abs() < 1e-9, "{by_volume}");
        // A week busier than any before is not taken to be over: the rest
        // still expects a quarter of what the shape does.
        let busier = due_share(s, e, tuesday, &tz, Some(&steady), 2000);
        assert!((busier - 2000.0 / 2360.0).abs() < 1e-9, "{busier}");
        // Weeks that disagree leave the shape alone.
        let unsteady = plain.clone().with_periods(&[(500, 168), (3000, 168)]);
        assert_eq!(due_share(s, e, tuesday, &tz, Some(&unsteady), 840), by_shape);
    }

    #[test]
    fn too_little_history_is_no_shape() {
        let mut counts = vec![0u64; HOURS_OF_WEEK];
        assert!(Shape::of_counts(&counts, 1.0).is_none(), "no calls");
        counts[3] = 50;
        assert!(Shape::of_counts(&counts, 0.5).is_none(), "half a week");
        assert!(Shape::of_counts(&counts, 1.0).is_some());
        assert!(Shape::of_counts(&[1; 10], 1.0).is_none());
        assert!(Shape::of_counts(&[1; HOURS_OF_WEEK], 0.0).is_none());
    }

    #[test]
    fn overspend_raises_the_price_and_underspend_lowers_it() {
        let mut c = Controller::default();
        let period = 1_000_000;
        let on = c.update(0, period, 0.0);
        let ahead = c.update(10_000, period, 0.05);
        assert!(ahead > on + 1.5, "{on} -> {ahead}");
        let mut c = Controller::default();
        let behind = c.update(10_000, period, -0.05);
        assert!(behind < -1.5, "{behind}");
    }

    #[test]
    fn the_price_is_bounded_and_does_not_wind_up() {
        let mut c = Controller::default();
        let period = 1_000;
        for t in 0..10_000 {
            c.update(t, period, 1.0);
        }
        assert_eq!(c.log_price, LOG_RANGE);
        // Back on pace, the price comes off its bound at once.
        let back = c.update(10_001, period, 0.0);
        assert!(back < LOG_RANGE, "{back}");
        let junk = c.update(10_002, period, f64::NAN);
        assert!(junk.is_finite());
    }

    #[test]
    fn the_prior_value_falls_with_the_tiers_below_the_strongest() {
        assert!((prior_value(0.3, 3, 3, 5) + 0.3).abs() < 1e-12);
        assert!((prior_value(0.3, 4, 3, 5) + 0.15).abs() < 1e-12);
        assert_eq!(prior_value(0.3, 5, 3, 5), 0.0);
        assert_eq!(prior_value(f64::NAN, 3, 3, 5), 0.0);
    }

    #[test]
    fn the_forecast_and_ratio_read_the_spend_against_the_target() {
        let mut c = Controller::default();
        let p = pace(Pacing::Even, &mut c, 60, 100, 0.5, 0, 1000);
        assert_eq!(p.target_nanos, 49);
        assert_eq!(p.forecast_nanos, 120);
        assert!(p.ratio().is_some_and(|r| r > 1.2));
        let start = pace(Pacing::Even, &mut c, 0, 100, 0.0, 0, 1000);
        assert_eq!(start.ratio(), None, "nothing is due at the start");
    }
}
