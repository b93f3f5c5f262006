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

mod data;
mod score;
mod show;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

use crate::decide::available_tiers;
use crate::outcome::learn::{Features, LearnEvent, Learner, LearningGate, RoutedCall};
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

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub workflow: String,
    pub rows: usize,
    pub seed: u64,
    pub strong_model: String,
    pub weak_model: String,
    pub policies: Vec<PolicyResult>,
    /// Which policy's scores `--scores-out` holds and the metrics use.
    pub scores_from: String,
    pub apgr: Option<f64>,
    pub cpt50: Option<f64>,
    pub cpt80: Option<f64>,
}

pub fn replay(a: ReplayArgs) -> u8 {
    match run(&a) {
        Ok(report) => {
            if a.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("cannot write the report: {e}");
                        return 1;
                    }
                }
            } else {
                print!("{}", table(&report));
            }
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn run(a: &ReplayArgs) -> Result<Report, String> {
    let rules =
        Arc::new(Rules::load(&a.rules).map_err(|e| format!("the rules at {} are not valid:\n{e}", a.rules.display()))?);
    let table = rules.current();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let replayer = |seed: u64| Replayer::new(&rules, &rt, seed);
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
    let total = cases.len() as u64 * 6;
    let mut progress = Progress::new(total);

    let mut results = Vec::new();
    let fixed = |name: &str, m: usize, progress: &mut Progress| {
        let mut t = Tally::new(name);
        for c in &cases {
            t.call(c, m, strong);
            t.finish(c.outcome[m].is_some_and(|o| o.0));
            progress.tick(name);
        }
        t
    };
    results.push(fixed("always-strong", strong, &mut progress).result());
    results.push(fixed("always-weak", weak, &mut progress).result());

    let mut rules = Tally::new("rules");
    // The rules alone: a model that never learns is never warm, so the
    // rule table decides every row.
    let by_rules = replayer(a.seed);
    for c in &cases {
        let m = by_rules.route(workflow, c, 1, None)?.0;
        let ok = outcome_of(&table, c, m)?.0;
        rules.call(c, m, strong);
        rules.finish(ok);
        progress.tick("rules");
    }

    let (router, router_scored) = learned(&replayer(a.seed), workflow, &cases, strong, false, &mut progress)?;
    let (cascade, scored) = learned(&replayer(a.seed), workflow, &cases, strong, true, &mut progress)?;

    // Random, at the learned router's strong share.
    let share = router.strong as f64 / router.tasks.max(1) as f64;
    let mut rng = SplitMix(a.seed ^ 0x5EED);
    let mut random = Tally::new("random");
    for c in &cases {
        let m = if rng.next_f64() < share { strong } else { weak };
        random.call(c, m, strong);
        random.finish(c.outcome[m].is_some_and(|o| o.0));
        progress.tick("random");
    }
    progress.done();

    let scores_of = |s: &[Scored]| s.iter().map(|s| s.score).collect::<Vec<f64>>();
    let metrics_of = |scores: &[f64]| routellm(&cases, scores, strong, weak);
    let scores = scores_of(&scored);
    let mut router = router.result();
    router.routellm = metrics_of(&scores_of(&router_scored));
    let mut cascade = cascade.result();
    cascade.routellm = metrics_of(&scores);
    results.extend([rules.result(), router, cascade, random.result()]);

    if let Some(path) = &a.scores_out {
        write_scores(path, &table, &cases, &scored)?;
    }
    let head = metrics_of(&scores);
    Ok(Report {
        workflow: workflow.name.clone(),
        rows: cases.len(),
        seed: a.seed,
        strong_model: table.models[strong].name.clone(),
        weak_model: table.models[weak].name.clone(),
        policies: results,
        scores_from: "router+cascade".into(),
        apgr: head.map(|m| m.apgr),
        cpt50: head.map(|m| m.cpt50),
        cpt80: head.map(|m| m.cpt80),
    })
}

/// What the learned run recorded for one row.
struct Scored {
    score: f64,
    first_model: usize,
    success: bool,
    cost: i64,
    attempts: u32,
}

/// Replay's learning gate: its own model, seeded draws, the rejected tier
/// of the row being cascaded, and the features of the call just routed.
struct ReplayLearning {
    learner: Learner,
    rng: Mutex<SplitMix>,
    rejected: Mutex<Option<u8>>,
    routed: Mutex<Option<Features>>,
}

#[async_trait::async_trait]
impl LearningGate for ReplayLearning {
    fn learner(&self) -> &Learner {
        &self.learner
    }

    fn draw(&self) -> f64 {
        self.rng.lock().unwrap_or_else(PoisonError::into_inner).next_f64()
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
            rng: Mutex::new(SplitMix(seed)),
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
        let available = available_tiers(table, workflow, class);
        // Scored before this row's outcome is learned.
        let score = planned
            .learned
            .and_then(|l| l.score(&available))
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
            first_model: first,
            success: ok,
            cost,
            attempts: attempt,
        });
        progress.tick(name);
    }
    Ok((tally, scored))
}

/// A seeded SplitMix64: replay's draws, the same for the same seed.
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(crate::outcome::learn::SPLITMIX_STEP);
        crate::outcome::learn::splitmix_unit(self.0)
    }
}

#[cfg(test)]
mod tests;
