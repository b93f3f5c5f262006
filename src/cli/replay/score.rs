//! Tallies of the policies, and RouteLLM's metrics of a score ranking.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::money::nanos_to_usd;
use crate::rules::RuleTable;

use super::*;

/// One line of `--scores-out`.
#[derive(Serialize)]
pub(super) struct ScoreLine<'a> {
    pub(super) id: &'a str,
    pub(super) score: f64,
    /// The rule table's complexity score of the row: the learned score's prior.
    pub(super) prior: f64,
    pub(super) model: &'a str,
    pub(super) success: bool,
    pub(super) cost_usd: f64,
    pub(super) attempts: u32,
}

/// Counts of one policy's run.
pub(super) struct Tally {
    pub(super) name: String,
    pub(super) outcomes: u64,
    pub(super) tasks: u64,
    pub(super) successes: u64,
    pub(super) cost: i64,
    pub(super) strong: u64,
}

impl Tally {
    pub(super) fn new(name: &str) -> Tally {
        Tally {
            name: name.to_string(),
            outcomes: 0,
            tasks: 0,
            successes: 0,
            cost: 0,
            strong: 0,
        }
    }
    pub(super) fn call(&mut self, c: &Case, m: usize, strong: usize) {
        self.tasks += 1;
        self.cost += c.outcome[m].map_or(0, |o| o.2);
        self.strong += u64::from(m == strong);
    }
    pub(super) fn finish(&mut self, ok: bool) {
        self.outcomes += 1;
        self.successes += u64::from(ok);
    }
    pub(super) fn result(&self) -> PolicyResult {
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

pub(super) fn routellm(cases: &[Case], scores: &[f64], strong: usize, weak: usize) -> Option<RouteLlmMetrics> {
    let q = |m: usize| {
        cases
            .iter()
            .map(|c| c.outcome[m].map_or(0.0, |o| o.1))
            .collect::<Vec<_>>()
    };
    routellm_metrics(scores, &q(strong), &q(weak))
}

pub(super) fn write_scores(path: &Path, table: &RuleTable, cases: &[Case], scored: &[Scored]) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write --scores-out {}: {e}", path.display());
    let tmp = path.with_extension("tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(fail)?);
    for (c, s) in cases.iter().zip(scored) {
        let line = ScoreLine {
            id: &c.id,
            score: s.score,
            prior: s.prior,
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
