//! Off-policy estimates of a candidate rule table from logged decisions.
//!
//! Each logged decision carries the tier the policy in force chose and the
//! probability it gave every available tier. The candidate table decides
//! each logged request again (`decide`, with the learned predictions as they
//! were at the decision). Its acceptance is estimated two ways:
//!
//! - self-normalised inverse propensity scoring (SNIPS): the labels of the
//!   decisions whose logged tier is the candidate's, each weighted by one
//!   over the probability it was logged with, normalised by the weights;
//! - doubly robust (DR): the learner's predicted P(accepted) for the
//!   candidate's tier, corrected where the logged tier matches by the
//!   weighted difference between the label and the prediction.
//!
//! Spend needs no weighting: every logged call's token counts are known, so
//! the candidate's cost of it is priced directly at the new table's prices.
//! Intervals are 95% percentile bootstraps over decisions.

use std::collections::HashMap;

use crate::decide::{decide, RouteInput};
use crate::estimate::{predicted_output_tokens, Estimate};
use crate::learn::{Learned, TierPrediction};
use crate::ledger::{CallRecord, Ledger, OutcomeStatus};
use crate::rules::{Capabilities, RuleTable};

use super::Snapshot;

/// One logged decision, as the estimators read it.
#[derive(Debug, Clone)]
pub struct Row {
    /// The tier logged, and the probability the logging policy gave it.
    pub tier: u8,
    pub propensity: f64,
    /// 1 accepted, 0 rejected, 0.5 corrected; `None` unlabelled.
    pub label: Option<f64>,
    pub cost_nanos: i64,
    /// The candidate's tier and its cost of this call.
    pub candidate_tier: u8,
    pub candidate_cost_nanos: i64,
    /// The logging policy's probability of the candidate's tier.
    pub support: f64,
    /// Predicted P(accepted) for the logged and the candidate's tier (the
    /// learner's where it had one, else the logged tier's mean label).
    pub predicted_logged: f64,
    pub predicted_candidate: f64,
    /// The candidate routed to another model than the logged one.
    pub other_model: bool,
    /// The outcome the call worked towards (empty: its own): calls of one
    /// outcome share its label, so the bootstrap resamples them together.
    pub outcome: String,
}

/// A label for each decision: its own feedback, else its outcome's status.
/// Abandoned outcomes label nothing.
pub fn labels(ledger: &Ledger) -> HashMap<&str, f64> {
    let mut by_outcome: HashMap<(&str, &str), f64> = HashMap::new();
    for o in &ledger.outcomes {
        let v = match o.status {
            OutcomeStatus::Accepted => Some(1.0),
            OutcomeStatus::Corrected => Some(0.5),
            OutcomeStatus::Rejected => Some(0.0),
            OutcomeStatus::Abandoned => None,
        };
        match v {
            Some(v) => by_outcome.insert((&o.workflow, &o.outcome_id), v),
            None => by_outcome.remove(&(o.workflow.as_str(), o.outcome_id.as_str())),
        };
    }
    let feedback: HashMap<&str, f64> = ledger
        .feedback
        .iter()
        .map(|f| (f.decision_id.as_str(), f64::from(u8::from(f.accepted))))
        .collect();
    let mut out = HashMap::new();
    for c in &ledger.calls {
        let label = feedback
            .get(c.decision_id.as_str())
            .copied()
            .or_else(|| by_outcome.get(&(c.workflow.as_str(), c.outcome_id.as_str())).copied());
        if let Some(l) = label {
            out.insert(c.decision_id.as_str(), l);
        }
    }
    out
}

/// The estimate a logged decision is decided again from, under `table`.
fn estimate_under(table: &RuleTable, workflow: &crate::rules::Workflow, s: &Snapshot) -> Estimate {
    let like = crate::estimate::estimated_as(table, workflow, &s.task_kind);
    let class = table.class_of(like);
    // By the names the snapshot records; a snapshot from before names were
    // kept holds the same nine in today's order.
    let names: Vec<&str> = if s.complexity_feature_names.is_empty() {
        crate::estimate::complexity::FEATURE_NAMES.split(',').collect()
    } else {
        s.complexity_feature_names.split(',').collect()
    };
    let recorded = |k: &str| {
        names
            .iter()
            .position(|p| *p == k)
            .and_then(|i| s.complexity_features.get(i).copied())
    };
    let mut features = crate::estimate::complexity::Signals::from_named(recorded);
    if let Some(k) = table.task_kind(like) {
        features.task_prior = k.complexity_prior;
    }
    // The score the decision was made with; a snapshot from before the
    // understanding model has none, and is scored as it was then.
    let complexity = s.complexity.unwrap_or_else(|| features.score());
    let complexity_quantile = if s.complexity.is_some() && s.complexity_model == table.understanding.tag() {
        s.complexity_quantile
    } else {
        crate::estimate::prior_quantile(table.understanding.prior_below(), complexity)
    };
    let task_kind_source = match s.task_kind_source.as_str() {
        "inferred" => crate::estimate::KindSource::Inferred,
        "default" => crate::estimate::KindSource::Default,
        _ => crate::estimate::KindSource::Declared,
    };
    let mut input_tokens = [0u64; 2];
    for (i, t) in s.input_tokens.iter().take(2).enumerate() {
        input_tokens[i] = *t;
    }
    Estimate {
        input_tokens,
        complexity,
        complexity_quantile,
        task_kind_source,
        task_kind_confidence: s.task_kind_confidence,
        features,
        output_tokens: predicted_output_tokens(table, workflow, &s.task_kind, s.max_output_tokens),
        task_kind: s.task_kind.clone(),
        class,
    }
}

/// The learned predictions as they were at the decision, for the tiers the
/// candidate has; the candidate does not explore.
fn learned_at(s: &Snapshot, available: &[u8], prior: f64) -> Option<Learned> {
    if !s.tiers.iter().any(|t| t.p.is_some()) {
        return None;
    }
    let mut learned = Learned {
        tiers: Default::default(),
        gate: s.gate,
        prior,
        explore: 0.0,
        draw: 1.0,
    };
    for t in &s.tiers {
        let (Some(p), Ok(tier)) = (t.p, u8::try_from(t.tier)) else {
            continue;
        };
        if available.contains(&tier) {
            if let Some(slot) = learned.tiers.get_mut(tier as usize) {
                *slot = Some(TierPrediction {
                    p,
                    p_retry: t.p_retry,
                    sd: t.sd,
                    seen: t.seen,
                    doubt: t.doubt,
                });
            }
        }
    }
    Some(learned)
}

/// Why a logged decision could not be decided again under the candidate.
#[derive(Debug, Default)]
pub struct Skipped {
    /// Its workflow is not in the candidate table.
    pub unknown_workflow: u64,
    /// No model of the candidate table can serve it.
    pub no_model: u64,
}

/// Decides every logged call again under `table`: one row per call that has
/// a snapshot, in the ledger's order.
pub fn rows(table: &RuleTable, ledger: &Ledger, skipped: &mut Skipped) -> Vec<Row> {
    let labels = labels(ledger);
    // The direct model's fallback: each tier's mean label as logged.
    let mut by_tier: HashMap<u8, (f64, f64)> = HashMap::new();
    // A snapshot that does not decode, or names a tier or probability no
    // Route could have logged (the store is written by sidecars, but Redis
    // by anyone with its password), is left out rather than trusted.
    let logged: Vec<(&CallRecord, Snapshot)> = ledger
        .calls
        .iter()
        .filter(|c| !c.snapshot.is_empty())
        .filter_map(|c| Snapshot::from_bytes(&c.snapshot).map(|s| (c, s)))
        .filter(|(_, s)| s.is_plausible())
        .collect();
    for (c, s) in &logged {
        if let Some(l) = labels.get(c.decision_id.as_str()) {
            let e = by_tier.entry(s.tier as u8).or_default();
            e.0 += l;
            e.1 += 1.0;
        }
    }
    let overall = {
        let (sum, n) = by_tier.values().fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        if n > 0.0 {
            sum / n
        } else {
            0.5
        }
    };
    let mean_of = |t: u8| by_tier.get(&t).map_or(overall, |(s, n)| s / n);
    let mut pacers = Pacers::of(table, &logged);
    let mut out = Vec::with_capacity(logged.len());
    for (c, s) in logged {
        let Some(workflow) = table.workflow(&c.workflow) else {
            skipped.unknown_workflow += 1;
            continue;
        };
        let est = estimate_under(table, workflow, &s);
        let available = crate::decide::available_tiers(workflow, est.class);
        // A candidate that paces this workflow prices each call by the
        // candidate's own spend so far in the call's period.
        let paced = pacers.pace(workflow, c.created_ms);
        let input = RouteInput {
            attempt: s.attempt.max(1),
            deferrable: s.deferrable,
            capabilities: Capabilities(u8::try_from(s.capabilities).unwrap_or(0)),
            downgrade: s.downgrade && paced.is_none(),
            learned: learned_at(&s, available, est.complexity).filter(|_| workflow.learning.enabled),
            rejected_tier: s.rejected_tier.and_then(|t| u8::try_from(t).ok()),
            paced,
        };
        let Ok(d) = decide(table, workflow, &input, &est, &[], None) else {
            skipped.no_model += 1;
            continue;
        };
        let model = &table.models[d.model];
        let candidate_tier = model.tiers[est.class];
        let other_model = model.name != c.model;
        let candidate_cost_nanos = if other_model {
            // The logged call's output, scaled by how the tables' output
            // estimates for it differ.
            let output = if s.output_tokens > 0 {
                (c.output_tokens as f64 * est.output_tokens as f64 / s.output_tokens as f64).round() as u64
            } else {
                c.output_tokens
            };
            model
                .prices()
                .cost(c.input_tokens, c.cached_input_tokens, output, s.deferrable)
        } else {
            c.cost_nanos
        };
        pacers.spent(workflow, candidate_cost_nanos);
        let tier = s.tier as u8;
        let prediction = |t: u8| {
            s.tiers
                .iter()
                .find(|x| x.tier == u32::from(t))
                .and_then(|x| x.p)
                .unwrap_or_else(|| mean_of(t))
        };
        out.push(Row {
            tier,
            propensity: if s.tiers.is_empty() {
                s.propensity
            } else {
                s.probability_of(tier)
            },
            label: labels.get(c.decision_id.as_str()).copied(),
            cost_nanos: c.cost_nanos,
            candidate_tier,
            candidate_cost_nanos,
            support: s.probability_of(candidate_tier),
            predicted_logged: prediction(tier),
            predicted_candidate: prediction(candidate_tier),
            other_model,
            outcome: if c.outcome_id.is_empty() {
                c.decision_id.clone()
            } else {
                format!("{}\u{1f}{}", c.workflow, c.outcome_id)
            },
        });
    }
    out
}

/// The candidate's pacing of each paced workflow, over the logged calls in
/// time order: its spend so far in the period, its controller, and the
/// workflow's logged traffic by hour of the week as the `traffic` shape.
struct Pacers {
    by_workflow: HashMap<String, Paced>,
}

#[derive(Default)]
struct Paced {
    controller: crate::budget::pacing::Controller,
    period_start_ms: i64,
    spent_nanos: i64,
    seen: u64,
    shape: Option<crate::budget::pacing::Shape>,
}

impl Pacers {
    fn of(table: &RuleTable, logged: &[(&CallRecord, Snapshot)]) -> Pacers {
        use crate::budget::pacing::{hour_of_week, Shape, HOURS_OF_WEEK};
        let mut by_workflow = HashMap::new();
        for w in &table.workflows {
            let Some(b) = w.budget.as_ref().filter(|b| b.pacing.is_some()) else {
                continue;
            };
            let mut counts = vec![0u64; HOURS_OF_WEEK];
            let (mut first, mut last) = (i64::MAX, i64::MIN);
            let mut periods = std::collections::BTreeMap::<i64, u64>::new();
            for (c, _) in logged.iter().filter(|(c, _)| c.workflow == w.name) {
                if let Ok(t) = jiff::Timestamp::from_millisecond(c.created_ms) {
                    counts[hour_of_week(&b.timezone, t)] += 1;
                    let start = crate::budget::period_bounds(b.period, &b.timezone, t).0;
                    *periods.entry(start.as_millisecond()).or_default() += 1;
                }
                (first, last) = (first.min(c.created_ms), last.max(c.created_ms));
            }
            let weeks = (last.saturating_sub(first)) as f64 / (7.0 * 86_400_000.0);
            // The log's first and last periods are partial: only those
            // between them say how many calls a period brings.
            let whole: Vec<crate::budget::pacing::PeriodCount> = periods
                .iter()
                .skip(1)
                .map(|(&start, &calls)| (calls, crate::budget::period_hours(b, start)))
                .collect();
            let whole = &whole[..whole.len().saturating_sub(1)];
            by_workflow.insert(
                w.name.clone(),
                Paced {
                    shape: Shape::of_counts(&counts, weeks).map(|s| s.with_periods(whole)),
                    ..Paced::default()
                },
            );
        }
        Pacers { by_workflow }
    }

    /// The price a paced `workflow` puts on a call logged at `at_ms`.
    fn pace(&mut self, workflow: &crate::rules::Workflow, at_ms: i64) -> Option<crate::decide::Paced> {
        let b = workflow.budget.as_ref()?;
        let pacing = b.pacing?;
        let p = self.by_workflow.get_mut(&workflow.name)?;
        let now = jiff::Timestamp::from_millisecond(at_ms).ok()?;
        let (start, end) = crate::budget::period_bounds(b.period, &b.timezone, now);
        if start.as_millisecond() != p.period_start_ms {
            (p.period_start_ms, p.spent_nanos, p.seen) = (start.as_millisecond(), 0, 0);
        }
        let shape = match pacing {
            crate::budget::pacing::Pacing::Traffic => p.shape.as_ref(),
            crate::budget::pacing::Pacing::Even => None,
        };
        let due = crate::budget::pacing::due_share(start, end, now, &b.timezone, shape, p.seen);
        let pace = crate::budget::pacing::pace(
            pacing,
            &mut p.controller,
            p.spent_nanos,
            b.limit_nanos,
            due,
            at_ms,
            end.as_millisecond() - start.as_millisecond(),
        );
        Some(crate::decide::Paced {
            price_per_nano: pace.price_per_nano,
            ratio: pace.ratio(),
        })
    }

    /// Counts the candidate's cost of a call of `workflow`.
    fn spent(&mut self, workflow: &crate::rules::Workflow, cost_nanos: i64) {
        if let Some(p) = self.by_workflow.get_mut(&workflow.name) {
            p.spent_nanos = p.spent_nanos.saturating_add(cost_nanos);
            p.seen += 1;
        }
    }
}

/// One policy's figures over a set of rows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    pub calls: f64,
    pub acceptance_rate: f64,
    pub spend_nanos: f64,
}

impl Figures {
    /// Spend over accepted calls (the acceptance rate times the calls).
    pub fn cost_per_accepted_nanos(&self) -> f64 {
        let accepted = self.acceptance_rate * self.calls;
        if accepted > 0.0 {
            self.spend_nanos / accepted
        } else {
            f64::INFINITY
        }
    }
}

/// The logging policy, as it happened.
pub fn current(rows: &[Row], pick: &[usize]) -> Figures {
    let (mut spend, mut sum, mut n) = (0.0, 0.0, 0.0);
    for &i in pick {
        let r = &rows[i];
        spend += r.cost_nanos as f64;
        if let Some(l) = r.label {
            sum += l;
            n += 1.0;
        }
    }
    Figures {
        calls: pick.len() as f64,
        acceptance_rate: if n > 0.0 { sum / n } else { f64::NAN },
        spend_nanos: spend,
    }
}

/// The candidate by SNIPS (acceptance over the supported decisions) and by
/// DR, with the direct spend.
pub fn candidate(rows: &[Row], pick: &[usize]) -> (Figures, f64) {
    let (mut spend, mut wsum, mut wr, mut dr, mut n) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &i in pick {
        let r = &rows[i];
        spend += r.candidate_cost_nanos as f64;
        let Some(l) = r.label else { continue };
        n += 1.0;
        let matched = r.tier == r.candidate_tier && r.propensity > 0.0;
        let w = if matched { 1.0 / r.propensity } else { 0.0 };
        wsum += w;
        wr += w * l;
        dr += r.predicted_candidate + w * (l - r.predicted_logged);
    }
    let snips = if wsum > 0.0 { wr / wsum } else { f64::NAN };
    let dr = if n > 0.0 { (dr / n).clamp(0.0, 1.0) } else { f64::NAN };
    (
        Figures {
            calls: pick.len() as f64,
            acceptance_rate: snips,
            spend_nanos: spend,
        },
        dr,
    )
}

/// How much the candidate's acceptance estimate rests on: the effective
/// number of labelled decisions behind it ((Σw)² / Σw², w = 1 / propensity
/// where the logged tier is the candidate's), and the smallest propensity
/// among them (a small one is a large weight).
pub fn effective_sample(rows: &[Row]) -> (f64, f64) {
    let (mut sum, mut squares, mut least) = (0.0, 0.0, 1.0f64);
    for r in rows
        .iter()
        .filter(|r| r.label.is_some() && r.tier == r.candidate_tier && r.propensity > 0.0)
    {
        let w = 1.0 / r.propensity;
        sum += w;
        squares += w * w;
        least = least.min(r.propensity);
    }
    if squares > 0.0 {
        (sum * sum / squares, least)
    } else {
        (0.0, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimate::complexity::Signals;

    fn table() -> RuleTable {
        RuleTable::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("routing-rules")).expect("shipped rules")
    }

    /// A snapshot from before the understanding model has no score and its
    /// features by position: it is scored as it was then. A new one carries
    /// its score, its model, and its features by name in any order.
    #[test]
    fn old_snapshots_are_scored_as_then_and_new_ones_by_name() {
        let t = table();
        let w = t.workflow("general").expect("general");
        let old_features = vec![0.5, 0.2, 0.0, 0.0, 0.0, 0.5, 0.25, 0.0, 0.0];
        let old = Snapshot {
            task_kind: "general".into(),
            complexity_features: old_features.clone(),
            ..Default::default()
        };
        let est = estimate_under(&t, w, &old);
        let f = Signals {
            length: 0.5,
            code: 0.2,
            reasoning: 0.5,
            questions: 0.25,
            ..Default::default()
        };
        assert_eq!(est.features, f);
        assert!((est.complexity - f.score()).abs() < 1e-12, "the old score");
        assert_eq!(est.task_kind_source, crate::estimate::KindSource::Declared);

        let new = Snapshot {
            task_kind: "code".into(),
            complexity_features: vec![0.25, 0.5],
            complexity_feature_names: "reasoning,length".into(),
            complexity: Some(0.7),
            complexity_model: t.understanding.tag().to_string(),
            complexity_quantile: 0.9,
            task_kind_source: "inferred".into(),
            task_kind_confidence: 0.8,
            ..Default::default()
        };
        let est = estimate_under(&t, w, &new);
        assert_eq!((est.features.reasoning, est.features.length), (0.25, 0.5));
        assert_eq!((est.complexity, est.complexity_quantile), (0.7, 0.9));
        assert_eq!(est.task_kind_source, crate::estimate::KindSource::Inferred);
        // Under another model, the recorded score is placed in that model's
        // calibration rather than trusted for its quantile.
        let other = Snapshot {
            complexity_model: "another".into(),
            ..new
        };
        let q = estimate_under(&t, w, &other).complexity_quantile;
        assert_eq!(q, crate::estimate::prior_quantile(t.understanding.prior_below(), 0.7));
        assert_eq!(
            crate::estimate::complexity::FEATURE_NAMES
                .split(',')
                .collect::<Vec<_>>(),
            f.named().iter().map(|(k, _)| *k).collect::<Vec<_>>()
        );
    }
}
