//! What a rules change would have cost and delivered, estimated from the
//! decisions the stores logged (`switchyard whatif`).
//!
//! Every routed decision is logged with a [`Snapshot`]: the request's
//! estimate, the learner's features and predictions, the tiers available
//! and the probability the policy in force gave each. `whatif` decides every
//! logged call again with a candidate table and estimates, with 95%
//! bootstrap intervals, what the candidate would have spent and how many of
//! its calls would have been accepted (see `estimate`).

pub mod estimate;
pub mod snapshot;

pub use snapshot::{Logged, Snapshot, TierLog};

use serde::Serialize;

use crate::ledger::Ledger;
use crate::rules::RuleTable;
use estimate::{Figures, Row, Skipped};

/// Bootstrap resamples behind each interval.
const RESAMPLES: usize = 1000;

/// A 95% interval; in JSON `[low, high]`, as CONTRACT.md promises.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ci {
    pub low: f64,
    pub high: f64,
}

impl Serialize for Ci {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        [self.low, self.high].serialize(s)
    }
}

/// One policy's figures with their intervals.
#[derive(Debug, Clone, Serialize)]
pub struct Arm {
    pub calls: u64,
    pub acceptance_rate: f64,
    pub spend_usd: f64,
    pub cost_per_accepted_outcome_usd: f64,
    pub ci95: ArmCi,
}

#[derive(Debug, Clone, Serialize)]
pub struct ArmCi {
    pub acceptance_rate: Ci,
    pub spend_usd: Ci,
    pub cost_per_accepted_outcome_usd: Ci,
}

/// The candidate's acceptance by the doubly robust estimator.
#[derive(Debug, Clone, Serialize)]
pub struct Dr {
    pub acceptance_rate: f64,
    pub ci95: Ci,
}

/// Candidate minus current.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub acceptance_rate: f64,
    pub spend_usd: f64,
    pub cost_per_accepted_outcome_usd: f64,
    pub ci95: ArmCi,
}

/// The estimate of one candidate table.
#[derive(Debug, Clone, Serialize)]
pub struct WhatIf {
    /// Logged decisions with their usage, in the window.
    pub decisions: u64,
    /// Of those, decisions with a label (feedback, or their outcome's status).
    pub labelled: u64,
    /// The share of decisions where the logging policy gave the candidate's
    /// tier a non-zero probability.
    pub support: f64,
    /// The share of decisions the candidate routes to another tier.
    pub changed: f64,
    /// The effective number of labelled decisions the candidate's
    /// acceptance rests on, and the smallest propensity among them.
    pub effective_sample_size: f64,
    pub min_propensity: f64,
    pub current: Arm,
    /// Acceptance by self-normalised IPS over the supported decisions; spend
    /// priced directly.
    pub candidate: Arm,
    pub candidate_doubly_robust: Dr,
    pub change: Change,
    /// What the reader should know: support, scaled output, skipped calls.
    pub notes: Vec<String>,
}

/// Why nothing could be estimated, in one sentence.
#[derive(Debug)]
pub struct Nothing(pub String);

impl std::fmt::Display for Nothing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn interval(mut v: Vec<f64>) -> Ci {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    Ci {
        low: percentile(&v, 0.025),
        high: percentile(&v, 0.975),
    }
}

fn usd(nanos: f64) -> f64 {
    nanos / 1e9
}

/// The candidate's acceptance interval, widened for the decisions it sends
/// where the logs never went: their acceptance could be anything from 0 to 1.
fn widen(ci: Ci, support: f64) -> Ci {
    Ci {
        low: ci.low * support,
        high: ci.high * support + (1.0 - support),
    }
}

/// Estimates `table` against the decisions in `ledger`. `seed` fixes the
/// bootstrap's resamples.
pub fn run(table: &RuleTable, ledger: &Ledger, seed: u64) -> Result<WhatIf, Nothing> {
    let mut skipped = Skipped::default();
    let rows = estimate::rows(table, ledger, &mut skipped);
    let logged = ledger.calls.iter().filter(|c| !c.snapshot.is_empty()).count();
    if rows.is_empty() {
        return Err(Nothing(if ledger.calls.is_empty() {
            "no calls were settled in this window: nothing to estimate; widen --since or check --state-dir/--redis-url"
                .into()
        } else if logged == 0 {
            format!(
                "{} calls were settled in this window but none has a logged decision (decisions are logged by this \
                 build's `serve`, and kept for --decision-retention-days): nothing to estimate",
                ledger.calls.len()
            )
        } else {
            format!(
                "none of the {logged} logged decisions is in a workflow the new rules define, with a model that can \
                 serve it: nothing to estimate"
            )
        }));
    }
    let labelled = rows.iter().filter(|r| r.label.is_some()).count();
    if labelled == 0 {
        return Err(Nothing(format!(
            "{} decisions were logged but none is labelled: send RecordFeedback for calls or RecordOutcome for \
             outcomes, then run whatif again",
            rows.len()
        )));
    }
    let all: Vec<usize> = (0..rows.len()).collect();
    let n = rows.len() as f64;
    let support = rows.iter().filter(|r| r.support > 0.0).count() as f64 / n;
    let changed = rows.iter().filter(|r| r.candidate_tier != r.tier).count() as f64 / n;
    let (effective_sample_size, min_propensity) = estimate::effective_sample(&rows);
    let cur = estimate::current(&rows, &all);
    let (cand, dr) = estimate::candidate(&rows, &all);

    // Resampled by outcome: the calls of one outcome (a first attempt and
    // its retry, say) share its label, so they go in and out together.
    let mut groups: std::collections::HashMap<&str, Vec<usize>> = std::collections::HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        groups.entry(r.outcome.as_str()).or_default().push(i);
    }
    let mut groups: Vec<Vec<usize>> = groups.into_values().collect();
    groups.sort_unstable();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut pick = Vec::with_capacity(rows.len());
    let mut samples: [Vec<f64>; 10] = Default::default();
    for _ in 0..RESAMPLES {
        pick.clear();
        for _ in 0..groups.len() {
            pick.extend_from_slice(&groups[rng.usize(..groups.len())]);
        }
        let c = estimate::current(&rows, &pick);
        let (k, d) = estimate::candidate(&rows, &pick);
        for (slot, v) in samples.iter_mut().zip([
            c.acceptance_rate,
            usd(c.spend_nanos),
            usd(c.cost_per_accepted_nanos()),
            k.acceptance_rate,
            usd(k.spend_nanos),
            usd(k.cost_per_accepted_nanos()),
            d,
            k.acceptance_rate - c.acceptance_rate,
            usd(k.spend_nanos - c.spend_nanos),
            usd(k.cost_per_accepted_nanos() - c.cost_per_accepted_nanos()),
        ]) {
            slot.push(v);
        }
    }
    let [ca, cs, cc, ka, ks, kc, da, xa, xs, xc] = samples.map(interval);
    let arm = |f: &Figures, a: Ci, s: Ci, c: Ci| Arm {
        calls: f.calls as u64,
        acceptance_rate: f.acceptance_rate,
        spend_usd: usd(f.spend_nanos),
        cost_per_accepted_outcome_usd: usd(f.cost_per_accepted_nanos()),
        ci95: ArmCi {
            acceptance_rate: a,
            spend_usd: s,
            cost_per_accepted_outcome_usd: c,
        },
    };
    let mut notes = Vec::new();
    if effective_sample_size < 100.0 {
        notes.push(format!(
            "the candidate's acceptance rests on the equivalent of {effective_sample_size:.0} labelled decisions \
             (the smallest propensity among them is {min_propensity:.4}): too few to trust; explore more or wait for \
             more labels"
        ));
    }
    if support < 1.0 {
        notes.push(format!(
            "{:.1}% of decisions go to a tier the logged policy never gave a chance to for them: the candidate's \
             acceptance is estimated from the rest, and its interval is widened to allow anything from 0 to 1 for \
             those; explore more (a workflow's `exploration`) before trusting this",
            (1.0 - support) * 100.0
        ));
    }
    let scaled = rows.iter().filter(|r| r.other_model).count();
    if scaled > 0 {
        notes.push(format!(
            "{scaled} calls go to another model: their output tokens are the logged ones scaled by the tables' \
             output estimates, and their input and cached tokens are the logged ones"
        ));
    }
    if skipped.unknown_workflow + skipped.no_model > 0 {
        notes.push(format!(
            "left out: {} decisions in workflows the new rules do not define, {} no model of the new rules can serve",
            skipped.unknown_workflow, skipped.no_model
        ));
    }
    let widened = |ci: Ci| widen(ci, support);
    Ok(WhatIf {
        decisions: rows.len() as u64,
        labelled: labelled as u64,
        support,
        changed,
        effective_sample_size,
        min_propensity,
        current: arm(&cur, ca, cs, cc),
        candidate: arm(&cand, widened(ka), ks, kc),
        candidate_doubly_robust: Dr {
            acceptance_rate: dr,
            ci95: widened(da),
        },
        change: Change {
            acceptance_rate: cand.acceptance_rate - cur.acceptance_rate,
            spend_usd: usd(cand.spend_nanos - cur.spend_nanos),
            cost_per_accepted_outcome_usd: usd(cand.cost_per_accepted_nanos() - cur.cost_per_accepted_nanos()),
            ci95: ArmCi {
                acceptance_rate: Ci {
                    low: xa.low * support - (1.0 - support),
                    high: xa.high * support + (1.0 - support),
                },
                spend_usd: xs,
                cost_per_accepted_outcome_usd: xc,
            },
        },
        notes,
    })
}

/// The estimate as a table a person reads.
pub fn render_table(w: &WhatIf) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    let money = |x: f64| {
        if x < 0.0 {
            format!("-${:.4}", -x)
        } else {
            format!("${x:.4}")
        }
    };
    let signed = |x: f64| if x < 0.0 { money(x) } else { format!("+{}", money(x)) };
    let points = |x: f64| format!("{:+.1}", x * 100.0);
    let ci_pct = |c: Ci| format!("[{}, {}]", pct(c.low), pct(c.high));
    let ci_money = |c: Ci| format!("[{}, {}]", money(c.low), money(c.high));
    let _ = writeln!(
        out,
        "{} logged decisions, {} labelled; the candidate changes the tier of {}; support {}; \
         effective sample {:.0} (smallest propensity {:.4})",
        w.decisions,
        w.labelled,
        pct(w.changed),
        pct(w.support),
        w.effective_sample_size,
        w.min_propensity
    );
    let _ = writeln!(
        out,
        "\n{:<18} {:>7} {:>10} {:>16} {:>10} {:>22}",
        "", "calls", "acceptance", "95% CI", "spend", "95% CI"
    );
    for (name, a) in [("current", &w.current), ("candidate (SNIPS)", &w.candidate)] {
        let _ = writeln!(
            out,
            "{:<18} {:>7} {:>10} {:>16} {:>10} {:>22}",
            name,
            a.calls,
            pct(a.acceptance_rate),
            ci_pct(a.ci95.acceptance_rate),
            money(a.spend_usd),
            ci_money(a.ci95.spend_usd)
        );
    }
    let _ = writeln!(
        out,
        "{:<18} {:>7} {:>10} {:>16}",
        "candidate (DR)",
        "",
        pct(w.candidate_doubly_robust.acceptance_rate),
        ci_pct(w.candidate_doubly_robust.ci95)
    );
    let _ = writeln!(
        out,
        "\ncost per accepted outcome: current {} {}, candidate {} {}",
        money(w.current.cost_per_accepted_outcome_usd),
        ci_money(w.current.ci95.cost_per_accepted_outcome_usd),
        money(w.candidate.cost_per_accepted_outcome_usd),
        ci_money(w.candidate.ci95.cost_per_accepted_outcome_usd)
    );
    let c = &w.change;
    let _ = writeln!(
        out,
        "change: acceptance {} points [{}, {}], spend {} [{}, {}], cost per accepted outcome {} [{}, {}]",
        points(c.acceptance_rate),
        points(c.ci95.acceptance_rate.low),
        points(c.ci95.acceptance_rate.high),
        signed(c.spend_usd),
        signed(c.ci95.spend_usd.low),
        signed(c.ci95.spend_usd.high),
        signed(c.cost_per_accepted_outcome_usd),
        signed(c.ci95.cost_per_accepted_outcome_usd.low),
        signed(c.ci95.cost_per_accepted_outcome_usd.high)
    );
    for n in &w.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

/// Rows for tests and tools: every logged decision decided again.
pub fn decided_again(table: &RuleTable, ledger: &Ledger) -> Vec<Row> {
    estimate::rows(table, ledger, &mut Skipped::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{CallRecord, OutcomeEvent, OutcomeStatus};

    const RULES: &str = include_str!("../../../tests/fixtures/unit/whatif-unit.toml");

    fn call(i: usize, outcome: &str) -> CallRecord {
        let snapshot = Snapshot {
            tier: 2,
            propensity: 1.0,
            tiers: vec![TierLog {
                tier: 2,
                probability: 1.0,
                ..Default::default()
            }],
            input_tokens: vec![100, 0],
            output_tokens: 10,
            ..Default::default()
        };
        CallRecord {
            decision_id: format!("d-{i}"),
            workflow: "w".into(),
            outcome_id: outcome.into(),
            model: "m".into(),
            created_ms: i as i64,
            settled_ms: i as i64,
            cost_nanos: 110,
            input_tokens: 100,
            cached_input_tokens: 0,
            output_tokens: 10,
            failed: false,
            downgraded: false,
            labels: String::new(),
            snapshot: snapshot.to_bytes(),
        }
    }

    fn ended(outcome: &str, status: OutcomeStatus) -> OutcomeEvent {
        OutcomeEvent {
            workflow: "w".into(),
            outcome_id: outcome.into(),
            status,
            value_usd: None,
            human_minutes: None,
            at_ms: 1_000,
        }
    }

    #[test]
    fn calls_of_one_outcome_are_resampled_together() {
        let table = RuleTable::from_str("rules.toml", RULES).expect("rules");
        // Two outcomes of fifty calls each, one accepted and one rejected:
        // two independent labels, not a hundred.
        let ledger = Ledger {
            calls: (0..100).map(|i| call(i, if i < 50 { "a" } else { "b" })).collect(),
            outcomes: vec![ended("a", OutcomeStatus::Accepted), ended("b", OutcomeStatus::Rejected)],
            feedback: Vec::new(),
        };
        let w = run(&table, &ledger, 42).expect("an estimate");
        assert_eq!((w.decisions, w.labelled), (100, 100));
        assert_eq!(w.current.acceptance_rate, 0.5);
        let ci = w.current.ci95.acceptance_rate;
        assert!(ci.low == 0.0 && ci.high == 1.0, "two outcomes say little: {ci:?}");
        // The candidate is the same table: it changes nothing, exactly.
        assert_eq!(w.changed, 0.0);
        assert_eq!(w.candidate.spend_usd, w.current.spend_usd);
        // A hundred outcomes of one call each say much more.
        let many = Ledger {
            calls: (0..100).map(|i| call(i, &format!("o{i}"))).collect(),
            outcomes: (0..100)
                .map(|i| {
                    let status = if i % 2 == 0 {
                        OutcomeStatus::Accepted
                    } else {
                        OutcomeStatus::Rejected
                    };
                    ended(&format!("o{i}"), status)
                })
                .collect(),
            feedback: Vec::new(),
        };
        let ci = run(&table, &many, 42)
            .expect("an estimate")
            .current
            .ci95
            .acceptance_rate;
        assert!(ci.low > 0.35 && ci.high < 0.65, "{ci:?}");
    }
}
