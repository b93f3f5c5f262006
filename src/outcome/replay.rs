//! `switchyard replay`: routing quality on recorded per-prompt outcomes.
//!
//! Each row holds a prompt and, for each model, whether its answer was
//! accepted. Rows are routed one by one through [`crate::route::Router`],
//! the Route use case `serve` runs (with no budget, and a learning gate of
//! replay's own), and only the outcome of the model that was called is
//! revealed and learned from (bandit feedback), as in production. Policies
//! are compared side by side; the learned router's scores also give
//! RouteLLM's metrics (APGR, CPT), from Ong et al., arXiv:2406.18665.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use std::sync::{Arc, Mutex, PoisonError};

use crate::decide::available_tiers;
use crate::estimate::tokens;
use crate::money::nanos_to_usd;
use crate::outcome::learn::{Features, LearnEvent, Learner, LearningGate, RoutedCall};
use crate::route::{find_workflow, Planned, RawRoute, RouteCall, Router};
use crate::rules::reload::Rules;
use crate::rules::{RuleTable, Workflow};

/// One row of a replay file (`../shared/bench-data/replay/SOURCE.md`).
#[derive(Debug, Deserialize)]
struct Row {
    id: String,
    #[serde(default)]
    workflow: Option<String>,
    #[serde(default)]
    task_kind: Option<String>,
    prompt: String,
    models: BTreeMap<String, RowModel>,
}

#[derive(Debug, Deserialize)]
struct RowModel {
    success: bool,
    score: Option<f64>,
    response: Option<String>,
}

/// A row ready to replay: its outcomes and costs by model index.
struct Case {
    /// The row's place in the file.
    index: usize,
    id: String,
    task_kind: String,
    prompt: String,
    /// Per model of the table: (accepted, quality 0..1, cost in nano-USD),
    /// `None` where the row has no answer from that model.
    outcome: Vec<Option<(bool, f64, i64)>>,
}

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

/// One line of `--scores-out`.
#[derive(Serialize)]
struct ScoreLine<'a> {
    id: &'a str,
    score: f64,
    model: &'a str,
    success: bool,
    cost_usd: f64,
    attempts: u32,
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
        Ok((routed.planned.decision.model, routed.planned))
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

fn outcome_of(table: &RuleTable, c: &Case, m: usize) -> Result<(bool, f64, i64), String> {
    c.outcome[m].ok_or_else(|| {
        format!(
            "row `{}` has no answer from {}, which the rules chose; limit the workflow's allowed_models to the data's models",
            c.id, table.models[m].name
        )
    })
}

/// Counts of one policy's run.
struct Tally {
    name: String,
    outcomes: u64,
    tasks: u64,
    successes: u64,
    cost: i64,
    strong: u64,
}

impl Tally {
    fn new(name: &str) -> Tally {
        Tally {
            name: name.to_string(),
            outcomes: 0,
            tasks: 0,
            successes: 0,
            cost: 0,
            strong: 0,
        }
    }
    fn call(&mut self, c: &Case, m: usize, strong: usize) {
        self.tasks += 1;
        self.cost += c.outcome[m].map_or(0, |o| o.2);
        self.strong += u64::from(m == strong);
    }
    fn finish(&mut self, ok: bool) {
        self.outcomes += 1;
        self.successes += u64::from(ok);
    }
    fn result(&self) -> PolicyResult {
        let n = self.outcomes.max(1) as f64;
        PolicyResult {
            name: self.name.clone(),
            outcomes: self.outcomes,
            tasks: self.tasks,
            successes: self.successes,
            success_rate: self.successes as f64 / n,
            cost_usd: nanos_to_usd(self.cost),
            cost_per_success_usd: (self.successes > 0).then(|| nanos_to_usd(self.cost) / self.successes as f64),
            tasks_per_outcome: self.tasks as f64 / n,
            strong_share: self.strong as f64 / self.tasks.max(1) as f64,
            routellm: None,
        }
    }
}

/// APGR and CPT of a score ranking: the top-scored rows get the strong
/// model's answer, the rest the weak model's. Quality is the rows' `score`
/// (or success). `None` when the two models are equally good.
pub fn routellm_metrics(scores: &[f64], strong_q: &[f64], weak_q: &[f64]) -> Option<RouteLlmMetrics> {
    let n = scores.len();
    if n == 0 {
        return None;
    }
    let (qs, qw) = (strong_q.iter().sum::<f64>(), weak_q.iter().sum::<f64>());
    if (qs - qw).abs() < 1e-9 {
        return None;
    }
    let mut order: Vec<usize> = (0..n).collect();
    // Highest score first; ties keep file order.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    // pgr[k]: the gap recovered with the top k rows strong.
    let mut pgr = Vec::with_capacity(n + 1);
    let mut q = qw;
    pgr.push(0.0);
    for &i in &order {
        q += strong_q[i] - weak_q[i];
        pgr.push((q - qw) / (qs - qw));
    }
    let at = |share: f64| pgr[((share * n as f64).round() as usize).min(n)];
    let deciles: Vec<f64> = (0..=10).map(|d| at(d as f64 / 10.0)).collect();
    let apgr = deciles.windows(2).map(|w| (w[0] + w[1]) / 2.0 * 0.1).sum();
    let cpt = |target: f64| {
        pgr.iter()
            .position(|&p| p >= target)
            .map_or(1.0, |k| k as f64 / n as f64)
    };
    Some(RouteLlmMetrics {
        apgr,
        cpt50: cpt(0.5),
        cpt80: cpt(0.8),
    })
}

fn routellm(cases: &[Case], scores: &[f64], strong: usize, weak: usize) -> Option<RouteLlmMetrics> {
    let q = |m: usize| {
        cases
            .iter()
            .map(|c| c.outcome[m].map_or(0.0, |o| o.1))
            .collect::<Vec<_>>()
    };
    routellm_metrics(scores, &q(strong), &q(weak))
}

fn write_scores(path: &Path, table: &RuleTable, cases: &[Case], scored: &[Scored]) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write --scores-out {}: {e}", path.display());
    let tmp = path.with_extension("tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(fail)?);
    for (c, s) in cases.iter().zip(scored) {
        let line = ScoreLine {
            id: &c.id,
            score: s.score,
            model: &table.models[s.first_model].name,
            success: s.success,
            cost_usd: nanos_to_usd(s.cost),
            attempts: s.attempts,
        };
        serde_json::to_writer(&mut out, &line).map_err(|e| fail(e.into()))?;
        out.write_all(b"\n").map_err(fail)?;
    }
    out.into_inner()
        .map_err(|e| fail(e.into_error()))?
        .sync_all()
        .map_err(fail)?;
    // Whole or not at all: a reader never sees half a file.
    std::fs::rename(&tmp, path).map_err(fail)
}

fn read_rows(path: &Path) -> Result<Vec<(usize, Row)>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read --data {}: {e}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("{}:{}: cannot read: {e}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(&line).map_err(|e| {
            format!(
                "{}:{}:{}: not a replay row ({e}); each line needs id, prompt and models.<name>.success",
                path.display(),
                i + 1,
                e.column()
            )
        })?;
        rows.push((i + 1, row));
    }
    Ok(rows)
}

/// Checks the rows against the rules and prices each model's answer.
fn cases(table: &RuleTable, workflow: &Workflow, data: &Path, rows: Vec<(usize, Row)>) -> Result<Vec<Case>, String> {
    let mut out = Vec::with_capacity(rows.len());
    for (line, row) in rows {
        let at = format!("{}:{line}", data.display());
        if let Some(unknown) = row.models.keys().find(|m| table.models.iter().all(|x| &x.name != *m)) {
            return Err(format!(
                "{at}: model `{unknown}` is not in the rules' [[models]]; add it with its prices, or drop it from the data"
            ));
        }
        let task_kind = row.task_kind.clone().unwrap_or_default();
        // Input tokens as the estimate counts them: the prompt as one user message.
        let mut outcome = vec![None; table.models.len()];
        for (i, model) in table.models.iter().enumerate() {
            let Some(r) = row.models.get(&model.name) else { continue };
            let input = model.billed_tokens(
                tokens::count(model.encoding, &row.prompt) + tokens::PER_MESSAGE_OVERHEAD + tokens::REPLY_PRIMING,
            );
            let output = match &r.response {
                Some(text) => model.billed_tokens(tokens::count(model.encoding, text)),
                None => crate::estimate::predicted_output_tokens(table, workflow, &task_kind, 0),
            };
            let quality = r.score.unwrap_or(if r.success { 1.0 } else { 0.0 });
            if !(0.0..=1.0).contains(&quality) {
                return Err(format!("{at}: models.{}.score is {quality}; give 0 to 1", model.name));
            }
            outcome[i] = Some((r.success, quality, model.cost(input, 0, output, false)));
        }
        out.push(Case {
            index: out.len(),
            id: row.id,
            task_kind,
            prompt: row.prompt,
            outcome,
        });
    }
    Ok(out)
}

/// The strong model (highest tier among the workflow's models the data
/// covers; the dearer on a tie) and the weak one (the cheapest).
fn poles(table: &RuleTable, workflow: &Workflow, cases: &[Case]) -> Result<(usize, usize), String> {
    let covered: Vec<usize> = workflow
        .allowed
        .iter()
        .copied()
        .filter(|&m| cases.iter().all(|c| c.outcome[m].is_some()))
        .collect();
    if covered.len() < 2 {
        return Err(format!(
            "workflow `{}` needs at least two of its models answered on every row; the data covers {}",
            workflow.name,
            covered.len()
        ));
    }
    let price = |m: usize| {
        let x = &table.models[m];
        x.input_nanos_per_mtok + x.output_nanos_per_mtok
    };
    let class = table.class_of(&workflow.default_task_kind);
    let tier = |m: usize| table.models[m].tiers[class];
    let strong = *covered
        .iter()
        .max_by_key(|&&m| (tier(m), price(m)))
        .unwrap_or(&covered[0]);
    let weak = *covered
        .iter()
        .min_by_key(|&&m| (price(m), tier(m)))
        .unwrap_or(&covered[0]);
    Ok((strong, weak))
}

/// A seeded SplitMix64: replay's draws, the same for the same seed.
struct SplitMix(u64);

impl SplitMix {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(crate::outcome::learn::SPLITMIX_STEP);
        crate::outcome::learn::splitmix_unit(self.0)
    }
}

/// A progress bar on stderr: redrawn in place on a terminal, a line every
/// 10% otherwise.
struct Progress {
    total: u64,
    done: u64,
    tty: bool,
    last: std::time::Instant,
    last_decile: u64,
    started: std::time::Instant,
}

impl Progress {
    fn new(total: u64) -> Progress {
        Progress {
            total: total.max(1),
            done: 0,
            tty: std::io::stderr().is_terminal(),
            last: std::time::Instant::now(),
            last_decile: 0,
            started: std::time::Instant::now(),
        }
    }
    fn tick(&mut self, policy: &str) {
        self.done += 1;
        let decile = self.done * 10 / self.total;
        if self.tty {
            if self.last.elapsed().as_millis() >= 100 || self.done == self.total {
                self.last = std::time::Instant::now();
                let filled = (self.done * 30 / self.total) as usize;
                eprint!(
                    "\rreplay [{}{}] {:>3}% {}/{} rows  {policy:<16}",
                    "=".repeat(filled),
                    " ".repeat(30 - filled),
                    self.done * 100 / self.total,
                    self.done,
                    self.total
                );
            }
        } else if decile > self.last_decile {
            self.last_decile = decile;
            eprintln!("replay: {}% ({}/{} rows, {policy})", decile * 10, self.done, self.total);
        }
    }
    fn done(&mut self) {
        if self.tty {
            eprintln!(
                "\rreplay: {} rows in {:.1} s{}",
                self.total,
                self.started.elapsed().as_secs_f64(),
                " ".repeat(40)
            );
        }
    }
}

fn table(r: &Report) -> String {
    let mut out = format!(
        "replay of {} rows, workflow `{}`, seed {}: strong = {}, weak = {}\n\n",
        r.rows, r.workflow, r.seed, r.strong_model, r.weak_model
    );
    out.push_str(&format!(
        "{:<16} {:>8} {:>12} {:>14} {:>10} {:>8} {:>7}\n",
        "policy", "success", "cost", "cost/success", "tasks/out", "strong", "APGR"
    ));
    for p in &r.policies {
        out.push_str(&format!(
            "{:<16} {:>7.2}% {:>12} {:>14} {:>10.3} {:>7.1}% {:>7}\n",
            p.name,
            p.success_rate * 100.0,
            format!("${:.4}", p.cost_usd),
            p.cost_per_success_usd.map_or("-".into(), |c| format!("${c:.7}")),
            p.tasks_per_outcome,
            p.strong_share * 100.0,
            p.routellm.map_or("".into(), |m| format!("{:.3}", m.apgr)),
        ));
    }
    if let (Some(apgr), Some(c50), Some(c80)) = (r.apgr, r.cpt50, r.cpt80) {
        out.push_str(&format!(
            "\nRouteLLM metrics of the {} scores: APGR {apgr:.3}, CPT(50%) {:.1}%, CPT(80%) {:.1}% (random: APGR 0.500, CPT 50% / 80%)\n",
            r.scores_from,
            c50 * 100.0,
            c80 * 100.0
        ));
    }
    out
}

#[cfg(test)]
mod tests;
