//! `switchyard replay`: routing quality on recorded per-prompt outcomes.
//!
//! Each row holds a prompt and, for each model, whether its answer was
//! accepted. Rows are routed one by one through [`crate::route::Router`],
//! the Route use case `serve` runs (with no budget, and a learning gate of
//! replay's own), and only the outcome of the model that was called is
//! revealed and learned from (bandit feedback), as in production. Policies
//! are compared side by side; the learned router's scores also give
//! RouteLLM's metrics (APGR, CPT), from Ong et al., arXiv:2406.18665.
//!
//! The files: `data.rs` reads the rows and prices each model's answer,
//! `score.rs` tallies the policies and computes RouteLLM's metrics,
//! `show.rs` prints progress and the table; this one runs the policies.

mod ceiling;
mod data;
pub mod pacing;
mod score;
mod show;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

use crate::decide::available_tiers;
use crate::learn::{Features, LearnEvent, Learner, LearningGate, RoutedCall};
use crate::route::{find_workflow, Planned, RawRoute, RouteCall, Router};
use crate::rules::reload::Rules;
use crate::rules::Workflow;

use data::{cases, outcome_of, poles, read_rows, Case};
pub use score::routellm_metrics;
use score::{routellm, write_scores, Tally};
use show::{table, Progress};

pub struct ReplayArgs {
    pub rules: PathBuf,
    pub data: PathBuf,
    pub workflow: Option<String>,
    pub scores_out: Option<PathBuf>,
    pub json: bool,
    pub seed: u64,
    /// 0: one run in file order. N: N runs, each over its own shuffle of the
    /// rows (seeds `seed`, `seed + 1`, ...), summarised as mean and spread.
    pub seeds: u32,
}

/// How one policy did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PolicyResult {
    pub name: String,
    pub outcomes: u64,
    pub tasks: u64,
    pub successes: u64,
    pub success_rate: f64,
    pub cost_usd: f64,
    pub cost_per_success_usd: Option<f64>,
    pub tasks_per_outcome: f64,
    pub strong_share: f64,
    /// For the learned policies: RouteLLM's metrics of their scores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routellm: Option<RouteLlmMetrics>,
}

/// RouteLLM's metrics of a score ranking.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct RouteLlmMetrics {
    /// Area under the PGR curve over strong-call shares 0, 10%, ... 100%.
    pub apgr: f64,
    /// The least strong-call share that recovers 50% of the quality gap.
    pub cpt50: f64,
    /// The same for 80%.
    pub cpt80: f64,
}

/// RouteLLM's metrics of one set of scores, over all rows and over each
/// successive fifth of them in the order they were replayed (progressive
/// validation: each score was computed before its row's feedback).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScoreSet {
    pub name: String,
    pub apgr: f64,
    pub cpt50: f64,
    pub cpt80: f64,
    /// APGR of the scores within each fifth of the rows; `None` for a fifth
    /// where the two models are equally good.
    pub fifths: Vec<Option<f64>>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workflow: String,
    pub rows: usize,
    pub seed: u64,
    /// `file` or `shuffled`.
    pub order: String,
    pub strong_model: String,
    pub weak_model: String,
    pub policies: Vec<PolicyResult>,
    /// Which policy's scores `--scores-out` holds and the metrics use.
    pub scores_from: String,
    pub apgr: Option<f64>,
    pub cpt50: Option<f64>,
    pub cpt80: Option<f64>,
    /// The rule table's own complexity score (the prior), the router's and
    /// the router+cascade's scores, side by side on the same rows.
    pub scores: Vec<ScoreSet>,
}

pub fn replay(a: ReplayArgs) -> u8 {
    let printed = if a.seeds > 0 {
        run_seeds(&a).map(|r| {
            if a.json {
                serde_json::to_string_pretty(&r)
            } else {
                Ok(show::seeds_table(&r))
            }
        })
    } else {
        run(&a).map(|r| {
            if a.json {
                serde_json::to_string_pretty(&r)
            } else {
                Ok(table(&r))
            }
        })
    };
    match printed {
        Ok(Ok(s)) => {
            super::print_text(s.trim_end());
            0
        }
        Ok(Err(e)) => {
            eprintln!("cannot write the report: {e}");
            1
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// A replay file checked against the rules, ready to replay.
struct Loaded {
    rules: Arc<Rules>,
    workflow: String,
    cases: Vec<Case>,
    strong: usize,
    weak: usize,
}

fn load(a: &ReplayArgs) -> Result<Loaded, String> {
    let rules =
        Arc::new(Rules::load(&a.rules).map_err(|e| format!("the rules at {} are not valid:\n{e}", a.rules.display()))?);
    let table = rules.current();
    let rows = read_rows(&a.data)?;
    let first = rows.first().ok_or_else(|| {
        format!(
            "{}: no rows; a replay file has one JSON object per line",
            a.data.display()
        )
    })?;
    let wf_name = match &a.workflow {
        Some(w) => w.clone(),
        None => [first.1.workflow.as_deref(), Some("replay")]
            .into_iter()
            .flatten()
            .find(|w| table.workflow(w).is_some())
            .map(str::to_string)
            .ok_or_else(|| {
                format!(
                    "the rules have neither the rows' workflow `{}` nor one named `replay`; pass --workflow",
                    first.1.workflow.as_deref().unwrap_or("")
                )
            })?,
    };
    let workflow = find_workflow(&table, &wf_name).map_err(|e| e.to_string())?;
    let cases = cases(&table, workflow, &a.data, rows)?;
    let (strong, weak) = poles(&table, workflow, &cases)?;
    Ok(Loaded {
        workflow: workflow.name.clone(),
        rules,
        cases,
        strong,
        weak,
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// One replay of the rows in file order.
fn run(a: &ReplayArgs) -> Result<Report, String> {
    let l = load(a)?;
    let mut progress = Progress::new(l.cases.len() as u64 * POLICIES);
    let report = replay_rows(
        &l,
        &l.cases,
        a.seed,
        "file",
        a.scores_out.as_deref(),
        &runtime()?,
        &mut progress,
    )?;
    progress.done();
    Ok(report)
}

/// `--seeds N`: N replays, each over its own shuffle of the rows.
fn run_seeds(a: &ReplayArgs) -> Result<SeedsReport, String> {
    let l = load(a)?;
    let rt = runtime()?;
    let mut progress = Progress::new(l.cases.len() as u64 * POLICIES * u64::from(a.seeds));
    let mut runs = Vec::with_capacity(a.seeds as usize);
    for i in 0..u64::from(a.seeds) {
        let seed = a.seed.wrapping_add(i);
        let mut rows = l.cases.clone();
        shuffle(&mut rows, seed);
        // The first run's scores, if asked for: one file, not N.
        let out = if i == 0 { a.scores_out.as_deref() } else { None };
        runs.push(replay_rows(&l, &rows, seed, "shuffled", out, &rt, &mut progress)?);
    }
    progress.done();
    Ok(SeedsReport::of(&runs))
}

/// The rows in an order drawn from `seed`.
fn shuffle<T>(v: &mut [T], seed: u64) {
    fastrand::Rng::with_seed(seed ^ 0x05A1_F0DE).shuffle(v);
}

/// Rows each policy replays once: always-strong, always-weak, rules,
/// router, router+cascade, random.
const POLICIES: u64 = 6;

/// Replays `cases` in the order given: every policy, side by side.
fn replay_rows(
    l: &Loaded,
    cases: &[Case],
    seed: u64,
    order: &str,
    scores_out: Option<&std::path::Path>,
    rt: &tokio::runtime::Runtime,
    progress: &mut Progress,
) -> Result<Report, String> {
    let table = l.rules.current();
    let workflow = find_workflow(&table, &l.workflow).map_err(|e| e.to_string())?;
    let (strong, weak) = (l.strong, l.weak);
    let replayer = |seed: u64| Replayer::new(&l.rules, rt, seed);

    let mut results = Vec::new();
    let fixed = |name: &str, m: usize, progress: &mut Progress| {
        let mut t = Tally::new(name);
        for c in cases {
            t.call(c, m, strong);
            t.finish(c.outcome[m].is_some_and(|o| o.0));
            progress.tick(name);
        }
        t
    };
    results.push(fixed("always-strong", strong, progress).result());
    results.push(fixed("always-weak", weak, progress).result());

    let mut rules = Tally::new("rules");
    // The rules alone: a model that never learns is never warm, so the
    // rule table decides every row.
    let by_rules = replayer(seed);
    for c in cases {
        let m = by_rules.route(workflow, c, 1, None)?.0;
        let ok = outcome_of(&table, c, m)?.0;
        rules.call(c, m, strong);
        rules.finish(ok);
        progress.tick("rules");
    }

    let (router, router_scored) = learned(&replayer(seed), workflow, cases, strong, false, progress)?;
    let (cascade, scored) = learned(&replayer(seed), workflow, cases, strong, true, progress)?;

    // Random, at the learned router's strong share.
    let share = router.strong as f64 / router.tasks.max(1) as f64;
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5EED);
    let mut random = Tally::new("random");
    for c in cases {
        let m = if rng.f64() < share { strong } else { weak };
        random.call(c, m, strong);
        random.finish(c.outcome[m].is_some_and(|o| o.0));
        progress.tick("random");
    }

    let metrics_of = |scores: &[f64]| routellm(cases, scores, strong, weak);
    let prior: Vec<f64> = router_scored.iter().map(|s| s.prior).collect();
    let router_scores: Vec<f64> = router_scored.iter().map(|s| s.score).collect();
    let cascade_scores: Vec<f64> = scored.iter().map(|s| s.score).collect();
    let mut router = router.result();
    router.routellm = metrics_of(&router_scores);
    let mut cascade = cascade.result();
    cascade.routellm = metrics_of(&cascade_scores);
    results.extend([rules.result(), router, cascade, random.result()]);
    let score_sets = [
        ("prior", &prior),
        ("router", &router_scores),
        ("router+cascade", &cascade_scores),
    ]
    .into_iter()
    .filter_map(|(name, s)| score_set(name, cases, s, strong, weak))
    .collect();

    if let Some(path) = scores_out {
        write_scores(path, &table, cases, &scored)?;
    }
    let head = metrics_of(&cascade_scores);
    Ok(Report {
        workflow: workflow.name.clone(),
        rows: cases.len(),
        seed,
        order: order.to_string(),
        strong_model: table.models[strong].name.clone(),
        weak_model: table.models[weak].name.clone(),
        policies: results,
        scores_from: "router+cascade".into(),
        apgr: head.map(|m| m.apgr),
        cpt50: head.map(|m| m.cpt50),
        cpt80: head.map(|m| m.cpt80),
        scores: score_sets,
    })
}

/// The metrics of `scores` over all rows and over each fifth of them.
fn score_set(name: &str, cases: &[Case], scores: &[f64], strong: usize, weak: usize) -> Option<ScoreSet> {
    let all = routellm(cases, scores, strong, weak)?;
    let n = cases.len();
    let fifths = (0..5)
        .map(|k| {
            let (a, b) = (n * k / 5, n * (k + 1) / 5);
            routellm(&cases[a..b], &scores[a..b], strong, weak).map(|m| m.apgr)
        })
        .collect();
    Some(ScoreSet {
        name: name.to_string(),
        apgr: all.apgr,
        cpt50: all.cpt50,
        cpt80: all.cpt80,
        fifths,
    })
}

/// What the learned run recorded for one row.
struct Scored {
    score: f64,
    /// The rule table's complexity score of the row: the prior.
    prior: f64,
    first_model: usize,
    success: bool,
    cost: i64,
    attempts: u32,
}

/// Replay's learning gate: its own model, seeded draws, the rejected tier
/// of the row being cascaded, and the features of the call just routed.
struct ReplayLearning {
    learner: Learner,
    rng: Mutex<fastrand::Rng>,
    rejected: Mutex<Option<u8>>,
    routed: Mutex<Option<Features>>,
}

#[async_trait::async_trait]
impl LearningGate for ReplayLearning {
    fn learner(&self) -> &Learner {
        &self.learner
    }

    fn draw(&self) -> f64 {
        self.rng.lock().unwrap_or_else(PoisonError::into_inner).f64()
    }

    async fn rejected_tier(&self, _: &str, _: &str) -> Result<Option<u8>, crate::error::StoreError> {
        Ok(*self.rejected.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn remember(&self, _: RoutedCall<'_>, features: Features) {
        *self.routed.lock().unwrap_or_else(PoisonError::into_inner) = Some(features);
    }
}

/// Routes rows through the Route use case, as `serve` does.
struct Replayer<'a> {
    router: Router,
    learning: Arc<ReplayLearning>,
    rt: &'a tokio::runtime::Runtime,
}

impl<'a> Replayer<'a> {
    fn new(rules: &Arc<Rules>, rt: &'a tokio::runtime::Runtime, seed: u64) -> Replayer<'a> {
        let learning = Arc::new(ReplayLearning {
            learner: Learner::new(),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            rejected: Mutex::new(None),
            routed: Mutex::new(None),
        });
        Replayer {
            router: Router {
                rules: rules.clone(),
                cache: None,
                budgets: Arc::new(crate::budget::Unlimited),
                learning: learning.clone(),
                effects: None,
                trace: false,
                large_requests: None,
                sketches: Some(Arc::new(crate::route::sketch::ScoreSketches::new())),
                observe_scores: true,
            },
            learning,
            rt,
        }
    }

    /// Routes row `c` as attempt `attempt`, after a rejection at
    /// `rejected_tier`; the plan keeps the features learning saw.
    fn route(
        &self,
        workflow: &Workflow,
        c: &Case,
        attempt: u32,
        rejected_tier: Option<u8>,
    ) -> Result<(usize, Planned), String> {
        *self.learning.rejected.lock().unwrap_or_else(PoisonError::into_inner) = rejected_tier;
        let call = RouteCall::new(RawRoute {
            workflow: workflow.name.clone(),
            // An outcome of its own per row: a retry cascades past the row's
            // rejected tier, as a retry of an outcome does in `serve`.
            outcome_id: format!("row-{}", c.index),
            task_kind: c.task_kind.clone(),
            messages: std::iter::once(("user".to_string(), c.prompt.clone())),
            attempt,
            max_output_tokens: 0,
            deferrable: false,
            capabilities: std::iter::empty(),
            labels: std::iter::empty(),
        })
        .map_err(|e| format!("row `{}`: {e}", c.id))?;
        let mut routed = self
            .rt
            .block_on(self.router.route(None, call, jiff::Timestamp::now()))
            .map_err(|e| format!("row `{}`: {e}", c.id))?;
        routed.planned.features = self
            .learning
            .routed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        Ok((routed.planned.decision.model, *routed.planned))
    }

    fn learner(&self) -> &Learner {
        &self.learning.learner
    }
}

/// The learned router over every row, optionally with the cascade: a
/// rejected attempt is retried one tier up, as a further task.
fn learned(
    replayer: &Replayer<'_>,
    workflow: &Workflow,
    cases: &[Case],
    strong: usize,
    cascade: bool,
    progress: &mut Progress,
) -> Result<(Tally, Vec<Scored>), String> {
    let table = replayer.router.rules.current();
    let table = &*table;
    let name = if cascade { "router+cascade" } else { "router" };
    let learner = replayer.learner();
    let mut tally = Tally::new(name);
    let mut scored = Vec::with_capacity(cases.len());
    for c in cases {
        let (m, planned) = replayer.route(workflow, c, 1, None)?;
        let class = planned.est.class;
        let available = available_tiers(workflow, class);
        let planned_prior = planned.est.complexity;
        // Scored before this row's outcome is learned.
        let score = planned
            .learned
            .and_then(|l| l.score(available))
            .unwrap_or(planned.est.complexity);
        let first = m;
        let (mut m, mut planned) = (m, planned);
        let mut attempt = 1u32;
        let mut cost = 0i64;
        let ok = loop {
            let (ok, _, c_nanos) = outcome_of(table, c, m)?;
            cost += c_nanos;
            tally.call(c, m, strong);
            let tier = table.models[m].tiers[class];
            if let Some(f) = planned.features.take() {
                learner.apply(&LearnEvent {
                    workflow: workflow.name.clone(),
                    tier,
                    retry: attempt > 1,
                    label: if ok { 1.0 } else { 0.0 },
                    features: f,
                });
            }
            // The cascade stops at an accepted answer or the top tier.
            if ok || !cascade || !available.iter().any(|&t| t > tier) {
                break ok;
            }
            attempt += 1;
            let next = replayer.route(workflow, c, attempt, Some(tier))?;
            m = next.0;
            planned = next.1;
        };
        tally.finish(ok);
        scored.push(Scored {
            score,
            prior: planned_prior,
            first_model: first,
            success: ok,
            cost,
            attempts: attempt,
        });
        progress.tick(name);
    }
    Ok((tally, scored))
}

mod seeds;
#[cfg(test)]
mod tests;
pub use seeds::*;
