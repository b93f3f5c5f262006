//! `switchyard simulate pacing`: a period of bursty arrivals of replay rows
//! against a budget set to a share of always-strong's cost, under threshold
//! step-down and under each pacing mode.
//!
//! Every call is decided by [`crate::decide::decide`], as `serve` decides
//! it, and its price comes from [`crate::budget::pacing`], as the gate's
//! does. The period is a week of hours with a weekday working-day shape,
//! multiplied in bursts of 3 to 30 times for 1 to 6 hours. `traffic` learns
//! its shape, and both paced modes their starting price, from the week
//! before (another draw of the same world). A call that would cross the hard
//! limit escalates and is not served in the period (a person has not
//! approved it yet); it counts as not accepted.

use serde::Serialize;

use super::data::{outcome_of, Case};
use super::{load, ReplayArgs};
use crate::budget::pacing::{due_share, hour_of_week, pace, Controller, Pacing, Shape, HOURS_OF_WEEK};
use crate::decide::{decide, Paced, RouteInput};
use crate::estimate::Estimate;
use crate::learn::Learned;
use crate::route::find_workflow;
use crate::rules::{RuleTable, Workflow};

pub struct PacingArgs {
    pub rules: std::path::PathBuf,
    pub data: std::path::PathBuf,
    pub workflow: Option<String>,
    pub budget_shares: Vec<f64>,
    pub seeds: u64,
    pub seed: u64,
    /// The soft threshold of the `threshold` policy when the workflow sets
    /// none, in percent.
    pub soft_threshold_pct: f64,
    /// Give every policy the learner's predictions (from the other half of
    /// the rows), as a workflow that learns has them; `false`: the
    /// difficulty score alone.
    pub learner: bool,
    pub json: bool,
}

/// One policy at one budget, over the seeds.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySummary {
    pub name: String,
    pub budget_share: f64,
    pub accepted_mean: f64,
    pub accepted_sd: f64,
    /// Accepted outcomes over threshold step-down's at the same budget, less 1.
    pub accepted_gain_over_threshold: f64,
    pub spend_share_mean: f64,
    pub spend_share_min: f64,
    pub spend_share_max: f64,
    pub seeds_within_95_100: u64,
    /// The largest spend past the budget, as a share of it (0: never over).
    pub overspend_max_share: f64,
    pub hours_stepped_down_mean: f64,
    pub hours_escalated_mean: f64,
    pub cost_per_accepted_nanousd: i64,
}

/// How the price settles after the call rate doubles at mid-period.
#[derive(Debug, Clone, Serialize)]
pub struct Settling {
    pub name: String,
    pub budget_share: f64,
    /// From the step to the first time log λ stays within 0.25 of its new
    /// level, as a share of the period.
    pub settle_share: f64,
    /// Times log λ went past its new level by more than that band (on the
    /// far side from its old level), each counted once until it came back.
    pub overshoots: u64,
    pub log_price_before: f64,
    pub log_price_after: f64,
}

#[derive(Debug, Serialize)]
pub struct PacingReport {
    /// Whether the policies had the learner's predictions.
    pub learner: bool,
    pub rules: String,
    pub data: String,
    pub workflow: String,
    pub rows: usize,
    pub seeds: u64,
    pub period_hours: usize,
    pub policies: Vec<PolicySummary>,
    /// At each budget, the most a router that knew each task kind's
    /// acceptance in hindsight could accept (`ceiling.rs`).
    pub ceilings: Vec<super::ceiling::Ceiling>,
    pub settling: Vec<Settling>,
}

/// A row as the simulation replays it: its estimate and its outcome and
/// cost on each model.
struct SimCase<'a> {
    case: &'a Case,
    est: Estimate,
    /// The learner's predictions for the row, from the other half's evidence.
    learned: Option<Learned>,
}

/// Weeks of traffic history before the week measured.
const HISTORY_WEEKS: usize = 4;
const PERIOD_MS: i64 = HOURS_OF_WEEK as i64 * 3_600_000;
/// 1970-01-05, a Monday: the simulated week starts there, in UTC.
const WEEK_START_MS: i64 = 4 * 86_400_000;

#[derive(Clone, Copy, PartialEq)]
enum Policy {
    Threshold,
    Paced(Pacing),
}

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Policy::Threshold => "threshold",
            Policy::Paced(p) => p.as_str(),
        }
    }
}

/// One seed's figures for one policy.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    accepted: u64,
    spent: i64,
    limit: i64,
    hours_down: u64,
    hours_escalated: u64,
}

/// The arrival time of each call of a week: a working-day shape, in bursts.
#[derive(Clone, Copy, PartialEq)]
enum Arrivals {
    /// A working-day shape in bursts.
    Bursty,
    /// The same rate all week.
    Flat,
    /// A flat rate that doubles halfway through.
    Step,
}

fn arrivals(n: usize, rng: &mut fastrand::Rng, kind: Arrivals) -> (Vec<i64>, Vec<u64>) {
    let step = kind != Arrivals::Bursty;
    let mut weight = [0f64; HOURS_OF_WEEK];
    for (h, w) in weight.iter_mut().enumerate() {
        let (day, hour) = (h / 24, h % 24);
        *w = match (day < 5, (9..18).contains(&hour)) {
            _ if step => 1.0,
            (true, true) => 1.0,
            (true, false) => 0.25,
            (false, _) => 0.15,
        };
    }
    if kind == Arrivals::Step {
        // The rate doubles halfway through.
        for w in &mut weight[HOURS_OF_WEEK / 2..] {
            *w *= 2.0;
        }
    } else if kind == Arrivals::Bursty {
        // Bursts: 4 to 12 a week, each 1 to 6 hours at 3 to 30 times.
        // Bursts that overlap do not multiply: an hour runs at most 30x.
        let mut burst = [1f64; HOURS_OF_WEEK];
        for _ in 0..rng.usize(4..=12) {
            let (at, len, times) = (rng.usize(0..HOURS_OF_WEEK), rng.usize(1..=6), 3.0 + rng.f64() * 27.0);
            for b in burst.iter_mut().skip(at).take(len) {
                *b = b.max(times);
            }
        }
        for (w, b) in weight.iter_mut().zip(burst) {
            *w *= b;
        }
    }
    let total: f64 = weight.iter().sum();
    let mut cdf = Vec::with_capacity(HOURS_OF_WEEK);
    let mut acc = 0.0;
    for w in &weight {
        acc += w / total;
        cdf.push(acc);
    }
    let mut counts = vec![0u64; HOURS_OF_WEEK];
    let mut times: Vec<i64> = (0..n)
        .map(|_| {
            let u = rng.f64();
            let h = cdf.partition_point(|&c| c < u).min(HOURS_OF_WEEK - 1);
            counts[h] += 1;
            WEEK_START_MS + h as i64 * 3_600_000 + rng.i64(0..3_600_000)
        })
        .collect();
    times.sort_unstable();
    (times, counts)
}

/// What one policy did over one week of calls.
struct World<'a> {
    table: &'a RuleTable,
    workflow: &'a Workflow,
    cases: &'a [SimCase<'a>],
    soft_bp: u32,
}

impl World<'_> {
    /// Plays `order` (indices into the cases) at `times` against `limit`.
    /// Returns the run and the controller at its end; `trace` gets log λ
    /// at each call when given.
    fn play(
        &self,
        policy: Policy,
        (order, times): (&[usize], &[i64]),
        limit: i64,
        mut controller: Controller,
        shape: Option<&Shape>,
        mut trace: Option<&mut Vec<(i64, f64)>>,
    ) -> Result<(Run, Controller), String> {
        let tz = jiff::tz::TimeZone::UTC;
        let ts = |ms: i64| jiff::Timestamp::from_millisecond(ms).map_err(|e| e.to_string());
        let (start, end) = (ts(WEEK_START_MS)?, ts(WEEK_START_MS + PERIOD_MS)?);
        let mut run = Run {
            limit,
            ..Run::default()
        };
        let (mut down, mut escalated) = ([false; HOURS_OF_WEEK], [false; HOURS_OF_WEEK]);
        for (seen, (&i, &at)) in order.iter().zip(times).enumerate() {
            let c = &self.cases[i];
            let now = ts(at)?;
            let hour = hour_of_week(&tz, now);
            let mut input = RouteInput {
                attempt: 1,
                deferrable: false,
                capabilities: crate::rules::Capabilities::default(),
                downgrade: false,
                learned: c.learned,
                rejected_tier: None,
                paced: None,
            };
            match policy {
                Policy::Threshold => {
                    input.downgrade = run.spent as i128 * 10_000 >= limit as i128 * i128::from(self.soft_bp);
                }
                Policy::Paced(mode) => {
                    // The calls before this one, as the gate counts them.
                    let due = due_share(start, end, now, &tz, shape, seen as u64);
                    let p = pace(mode, &mut controller, run.spent, limit, due, at, PERIOD_MS);
                    input.paced = Some(Paced {
                        price_per_nano: p.price_per_nano,
                        ratio: p.ratio(),
                    });
                    if let Some(t) = trace.as_deref_mut() {
                        t.push((at, controller.log_price));
                    }
                }
            }
            let d = decide(self.table, self.workflow, &input, &c.est, &[], None).map_err(|e| e.message)?;
            if run.spent.saturating_add(d.cost_nanos) > limit {
                escalated[hour] = true;
                continue;
            }
            let (ok, _, cost) = outcome_of(self.table, c.case, d.model)?;
            run.spent = run.spent.saturating_add(cost);
            run.accepted += u64::from(ok);
            let cheaper = d.paced_from.is_some_and(|m| {
                self.table.models[m].tiers[c.est.class] > self.table.models[d.model].tiers[c.est.class]
            });
            if d.downgraded_from.is_some() || cheaper {
                down[hour] = true;
            }
        }
        run.hours_down = down.iter().filter(|&&x| x).count() as u64;
        run.hours_escalated = escalated.iter().filter(|&&x| x).count() as u64;
        Ok((run, controller))
    }
}

/// A bar on stderr (hidden when stderr is not a terminal).
fn progress_bar(len: u64, msg: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len).with_message(msg);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len}, {eta} left") {
        bar.set_style(style);
    }
    bar
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, v.sqrt())
}

pub fn simulate_pacing(a: &PacingArgs) -> Result<PacingReport, String> {
    if a.budget_shares.is_empty()
        || a.budget_shares
            .iter()
            .any(|s| !(s.is_finite() && *s > 0.0 && *s <= 1.0))
    {
        return Err(
            "--budget-share takes shares of always-strong's cost above 0 and at most 1, e.g. 0.3,0.5,0.7".into(),
        );
    }
    if !(a.soft_threshold_pct.is_finite() && a.soft_threshold_pct > 0.0 && a.soft_threshold_pct < 100.0) {
        return Err("--soft-threshold-pct takes a percentage between 0 and 100".into());
    }
    let l = load(&ReplayArgs {
        rules: a.rules.clone(),
        data: a.data.clone(),
        workflow: a.workflow.clone(),
        scores_out: None,
        json: a.json,
        seed: a.seed,
        seeds: 0,
    })?;
    let table = l.rules.current();
    let workflow = find_workflow(&table, &l.workflow).map_err(|e| e.to_string())?;
    let soft_bp = workflow
        .budget
        .as_ref()
        .and_then(|b| b.soft_threshold_bp)
        .unwrap_or((a.soft_threshold_pct * 100.0).round() as u32);
    // Each half of the rows is estimated by a learner that learned from the
    // other half only, as the learned router does in `replay` (its own
    // exploration, bandit feedback): the learner's evidence, never its own
    // row's outcome.
    let rt = super::runtime()?;
    let mut progress = super::show::Progress::new(l.cases.len() as u64 * 2);
    let mut cases: Vec<Option<SimCase<'_>>> = (0..l.cases.len()).map(|_| None).collect();
    for half in 0..2usize {
        let (train, test): (Vec<&Case>, Vec<&Case>) = l.cases.iter().partition(|c| c.index % 2 != half);
        let train: Vec<Case> = train.into_iter().cloned().collect();
        let replayer = super::Replayer::new(&l.rules, &rt, a.seed ^ half as u64);
        super::learned(&replayer, workflow, &train, l.strong, false, &mut progress)?;
        for c in test {
            let (_, planned) = replayer.route(workflow, c, 1, None)?;
            cases[c.index] = Some(SimCase {
                case: c,
                est: planned.est,
                learned: planned.learned.filter(|_| a.learner),
            });
            progress.tick("estimating");
        }
    }
    progress.done();
    let cases: Vec<SimCase<'_>> = cases.into_iter().flatten().collect();
    let world = World {
        table: &table,
        workflow,
        cases: &cases,
        soft_bp,
    };
    let strong_cost: i64 = l.cases.iter().map(|c| c.outcome[l.strong].map_or(0, |o| o.2)).sum();
    let policies = [
        Policy::Threshold,
        Policy::Paced(Pacing::Even),
        Policy::Paced(Pacing::Traffic),
    ];
    let total = a.seeds * a.budget_shares.len() as u64;
    let bar = progress_bar(total, "simulating periods");
    let n = cases.len();
    let mut summaries = Vec::new();
    let mut ceilings = Vec::new();
    let all: Vec<&Case> = l.cases.iter().collect();
    for &share in &a.budget_shares {
        let limit = (strong_cost as f64 * share).round() as i64;
        let mut by_policy: Vec<Vec<Run>> = vec![Vec::new(); policies.len()];
        let results = std::sync::Mutex::new(Vec::new());
        let next = std::sync::atomic::AtomicU64::new(0);
        let threads = std::thread::available_parallelism()
            .map_or(1, |t| t.get())
            .min(a.seeds as usize)
            .max(1);
        let failed = std::sync::Mutex::new(None::<String>);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if k >= a.seeds {
                        return;
                    }
                    let seed = a.seed.wrapping_add(k);
                    match one_seed(&world, &policies, n, limit, seed) {
                        Ok(runs) => results
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push((seed, runs)),
                        Err(e) => {
                            *failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
                            return;
                        }
                    }
                    bar.inc(1);
                });
            }
        });
        if let Some(e) = failed.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
            return Err(e);
        }
        let mut results = results.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        results.sort_by_key(|r| r.0);
        for (_, runs) in results {
            for (i, r) in runs.into_iter().enumerate() {
                by_policy[i].push(r);
            }
        }
        let threshold_mean = mean_sd(&by_policy[0].iter().map(|r| r.accepted as f64).collect::<Vec<_>>()).0;
        let oracle = super::ceiling::kind_oracle(&all, l.strong, l.weak, limit);
        ceilings.push(super::ceiling::Ceiling {
            name: "kind_oracle".into(),
            budget_share: share,
            accepted: oracle,
            gain_over_threshold: if threshold_mean > 0.0 {
                oracle / threshold_mean - 1.0
            } else {
                0.0
            },
        });
        for (p, runs) in policies.iter().zip(&by_policy) {
            let accepted: Vec<f64> = runs.iter().map(|r| r.accepted as f64).collect();
            let spend: Vec<f64> = runs.iter().map(|r| r.spent as f64 / r.limit.max(1) as f64).collect();
            let (am, asd) = mean_sd(&accepted);
            let spent_total: i64 = runs.iter().map(|r| r.spent).sum();
            let accepted_total: u64 = runs.iter().map(|r| r.accepted).sum();
            summaries.push(PolicySummary {
                name: p.name().to_string(),
                budget_share: share,
                accepted_mean: am,
                accepted_sd: asd,
                accepted_gain_over_threshold: if threshold_mean > 0.0 {
                    am / threshold_mean - 1.0
                } else {
                    0.0
                },
                spend_share_mean: mean_sd(&spend).0,
                spend_share_min: spend.iter().copied().fold(f64::INFINITY, f64::min),
                spend_share_max: spend.iter().copied().fold(0.0, f64::max),
                seeds_within_95_100: spend.iter().filter(|&&s| (0.95..=1.0).contains(&s)).count() as u64,
                overspend_max_share: spend.iter().map(|s| (s - 1.0).max(0.0)).fold(0.0, f64::max),
                hours_stepped_down_mean: mean_sd(&runs.iter().map(|r| r.hours_down as f64).collect::<Vec<_>>()).0,
                hours_escalated_mean: mean_sd(&runs.iter().map(|r| r.hours_escalated as f64).collect::<Vec<_>>()).0,
                cost_per_accepted_nanousd: spent_total / accepted_total.max(1) as i64,
            });
        }
    }
    bar.finish_and_clear();
    let mut settling = Vec::new();
    for &share in &a.budget_shares {
        let limit = (strong_cost as f64 * share).round() as i64;
        settling.push(settle(&world, n, limit, share, a.seed)?);
    }
    Ok(PacingReport {
        learner: a.learner,
        rules: a.rules.display().to_string(),
        data: a.data.display().to_string(),
        workflow: workflow.name.clone(),
        rows: n,
        seeds: a.seeds,
        period_hours: HOURS_OF_WEEK,
        policies: summaries,
        ceilings,
        settling,
    })
}

/// One seed: the week before (for the traffic shape and the carried price),
/// then the week measured, under every policy.
fn one_seed(world: &World<'_>, policies: &[Policy], n: usize, limit: i64, seed: u64) -> Result<Vec<Run>, String> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x9ACE);
    let mut order: Vec<usize> = (0..n).collect();
    // Four weeks of history: their traffic by hour is the shape, and the
    // last of them carries its price into the week measured.
    let mut history = vec![0u64; HOURS_OF_WEEK];
    let mut before_times = Vec::new();
    let mut weeks = Vec::with_capacity(HISTORY_WEEKS);
    for _ in 0..HISTORY_WEEKS {
        let (times, before_counts) = arrivals(n, &mut rng, Arrivals::Bursty);
        before_times = times;
        for (h, c) in history.iter_mut().zip(&before_counts) {
            *h += c;
        }
        weeks.push((before_counts.iter().sum(), HOURS_OF_WEEK as u32));
    }
    rng.shuffle(&mut order);
    let before_order = order.clone();
    let (times, _) = arrivals(n, &mut rng, Arrivals::Bursty);
    rng.shuffle(&mut order);
    let shape = Shape::of_counts(&history, HISTORY_WEEKS as f64).map(|s| s.with_periods(&weeks));
    let mut out = Vec::with_capacity(policies.len());
    for &p in policies {
        let shape = match p {
            Policy::Paced(Pacing::Traffic) => shape.as_ref(),
            _ => None,
        };
        let warm = match p {
            Policy::Threshold => Controller::default(),
            Policy::Paced(_) => {
                world
                    .play(
                        p,
                        (&before_order, &before_times),
                        limit,
                        Controller::default(),
                        shape,
                        None,
                    )?
                    .1
            }
        };
        let carried = Controller {
            integral: warm.integral,
            last_ms: None,
            log_price: warm.log_price,
        };
        out.push(world.play(p, (&order, &times), limit, carried, shape, None)?.0);
    }
    Ok(out)
}

/// The call rate doubles at mid-period: how long `even` pacing's price
/// takes to settle at its new level, and how often it overshoots.
fn settle(world: &World<'_>, n: usize, limit: i64, share: f64, seed: u64) -> Result<Settling, String> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x57E9);
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let (times, _) = arrivals(n, &mut rng, Arrivals::Step);
    let policy = Policy::Paced(Pacing::Even);
    // A week at the first half's rate (two thirds of the calls, the same
    // budget) first, so that the price starts settled.
    let (flat, _) = arrivals(n * 2 / 3, &mut rng, Arrivals::Flat);
    let warm = world
        .play(
            policy,
            (&order[..flat.len()], &flat),
            limit,
            Controller::default(),
            None,
            None,
        )?
        .1;
    let mut trace = Vec::new();
    let carried = Controller {
        integral: warm.integral,
        last_ms: None,
        log_price: warm.log_price,
    };
    world.play(policy, (&order, &times), limit, carried, None, Some(&mut trace))?;
    let step_ms = WEEK_START_MS + PERIOD_MS / 2;
    let level = |from: f64, to: f64| {
        let xs: Vec<f64> = trace
            .iter()
            .filter(|(t, _)| {
                let s = (t - WEEK_START_MS) as f64 / PERIOD_MS as f64;
                s >= from && s < to
            })
            .map(|x| x.1)
            .collect();
        mean_sd(&xs).0
    };
    let (before, after) = (level(0.35, 0.5), level(0.7, 0.9));
    const BAND: f64 = 0.25;
    let after_step: Vec<&(i64, f64)> = trace.iter().filter(|(t, _)| *t >= step_ms).collect();
    // The last time it was outside the band (before 90% of the period).
    let end_ms = WEEK_START_MS + PERIOD_MS * 9 / 10;
    let last_out = after_step
        .iter()
        .filter(|(t, v)| *t < end_ms && (v - after).abs() > BAND)
        .map(|(t, _)| *t)
        .max()
        .unwrap_or(step_ms);
    // An overshoot goes past the new level, by more than the band, on the
    // far side from where the price came; it counts again only once the
    // price has come back to the level. Noise at the near edge while the
    // price approaches is settling time, not overshoot.
    let dir = if after >= before { 1.0 } else { -1.0 };
    let mut overshoots = 0u64;
    let mut armed = true;
    for (t, v) in &after_step {
        if *t >= end_ms {
            break;
        }
        let past = (v - after) * dir;
        if past > BAND && armed {
            overshoots += 1;
            armed = false;
        } else if past <= 0.0 {
            armed = true;
        }
    }
    Ok(Settling {
        name: policy.name().to_string(),
        budget_share: share,
        settle_share: (last_out - step_ms).max(0) as f64 / PERIOD_MS as f64,
        overshoots,
        log_price_before: before,
        log_price_after: after,
    })
}

pub use super::show::pacing_table as table;
