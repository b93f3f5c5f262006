//! What a decision is logged with, for off-policy estimates: the request's
//! estimate (counts and scores, never text), the learner's hashed features
//! and predictions, the tiers that were available, the tier chosen and the
//! probability the policy in force gave each tier.
//!
//! Stored as a protobuf message (prost) beside the decision's reservation,
//! in both stores, so `whatif` can run `decide` again with another table.

use prost::Message;

use crate::decide::Decision;
use crate::estimate::Estimate;
use crate::learn::{Features as LearnFeatures, Learned};
use crate::rules::{Capabilities, RuleTable, Workflow};

/// One decision, as logged.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Snapshot {
    /// The task kind the request was estimated as: named, inferred or the
    /// workflow's default (`task_kind_source`).
    #[prost(string, tag = "1")]
    pub task_kind: String,
    /// Input tokens per encoding (o200k, cl100k), 0 where not counted.
    #[prost(uint64, repeated, tag = "2")]
    pub input_tokens: Vec<u64>,
    /// The request's own output limit (0: none).
    #[prost(uint32, tag = "3")]
    pub max_output_tokens: u32,
    /// The predicted output tokens the decision priced.
    #[prost(uint64, tag = "4")]
    pub output_tokens: u64,
    /// The complexity features, in `complexity::Signals` order: snapshots
    /// written before `features` was, read as such.
    #[prost(double, repeated, tag = "5")]
    pub complexity_features: Vec<f64>,
    #[prost(uint32, tag = "6")]
    pub attempt: u32,
    #[prost(bool, tag = "7")]
    pub deferrable: bool,
    #[prost(uint32, tag = "8")]
    pub capabilities: u32,
    /// The budget's soft threshold stepped the tier down.
    #[prost(bool, tag = "9")]
    pub downgrade: bool,
    #[prost(uint32, optional, tag = "10")]
    pub rejected_tier: Option<u32>,
    /// The tier the routed model has for the request's class.
    #[prost(uint32, tag = "11")]
    pub tier: u32,
    /// The probability that the policy in force chose `tier`: 1 for the
    /// rules alone, less where the learned policy explores.
    #[prost(double, tag = "12")]
    pub propensity: f64,
    /// Every tier that was available, with the policy's probability of it
    /// and, where the workflow learns, the model's prediction for it.
    #[prost(message, repeated, tag = "13")]
    pub tiers: Vec<TierLog>,
    /// The learner's features, in its own encoding (hashed word buckets and
    /// counts; no text). Empty where the workflow does not learn.
    #[prost(bytes = "vec", tag = "14")]
    pub learner_features: Vec<u8>,
    /// The learner's evidence gate, 0 to 1.
    #[prost(double, tag = "15")]
    pub gate: f64,
    /// The prefix tokens priced at the cached rate.
    #[prost(uint64, tag = "16")]
    pub cached_tokens: u64,
    /// The complexity score; absent in snapshots from before the
    /// understanding model, whose score is computed again from
    /// `complexity_features`.
    #[prost(double, optional, tag = "17")]
    pub complexity: Option<f64>,
    /// The understanding model that scored it (its checksum tag).
    #[prost(string, tag = "18")]
    pub complexity_model: String,
    #[prost(double, tag = "19")]
    pub complexity_quantile: f64,
    /// `declared`, `inferred` or `default`; empty before kinds were inferred.
    #[prost(string, tag = "20")]
    pub task_kind_source: String,
    #[prost(double, tag = "21")]
    pub task_kind_confidence: f64,
    /// The names of `complexity_features`, in their order, comma-separated
    /// (empty in snapshots from before names were kept: the original nine,
    /// in `complexity::Signals` order).
    #[prost(string, tag = "22")]
    pub complexity_feature_names: String,
}

/// One available tier of a logged decision.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TierLog {
    #[prost(uint32, tag = "1")]
    pub tier: u32,
    /// The probability that the policy sent the call to this tier.
    #[prost(double, tag = "2")]
    pub probability: f64,
    /// The learned P(accepted), where the workflow learns.
    #[prost(double, optional, tag = "3")]
    pub p: Option<f64>,
    #[prost(double, tag = "4")]
    pub sd: f64,
    #[prost(uint64, tag = "5")]
    pub seen: u64,
    #[prost(double, tag = "6")]
    pub doubt: f64,
    #[prost(double, tag = "7")]
    pub p_retry: f64,
}

/// What a Route knew when it decided, enough to log it.
pub struct Logged<'a> {
    pub table: &'a RuleTable,
    pub workflow: &'a Workflow,
    pub est: &'a Estimate,
    pub decision: &'a Decision,
    pub learned: Option<&'a Learned>,
    pub features: Option<&'a LearnFeatures>,
    pub attempt: u32,
    pub deferrable: bool,
    pub capabilities: Capabilities,
    pub downgrade: bool,
    pub rejected_tier: Option<u8>,
    pub max_output_tokens: u32,
}

impl Snapshot {
    pub fn of(l: &Logged<'_>) -> Snapshot {
        let chosen = l.table.models[l.decision.model].tiers[l.est.class];
        let available = crate::decide::available_tiers(l.workflow, l.est.class);
        let probabilities = match (l.learned, l.decision.policy_tier) {
            (Some(learned), Some(policy_tier)) => learned.probabilities(available, policy_tier),
            _ => available
                .iter()
                .map(|&t| (t, f64::from(u8::from(t == chosen))))
                .collect(),
        };
        let tiers = probabilities
            .into_iter()
            .map(|(t, probability)| {
                let pred = l.learned.and_then(|x| x.tiers.get(t as usize).copied().flatten());
                TierLog {
                    tier: u32::from(t),
                    probability,
                    p: pred.map(|p| p.p),
                    sd: pred.map_or(0.0, |p| p.sd),
                    seen: pred.map_or(0, |p| p.seen),
                    doubt: pred.map_or(0.0, |p| p.doubt),
                    p_retry: pred.map_or(0.0, |p| p.p_retry),
                }
            })
            .collect();
        let f = &l.est.features;
        // Sized as the learning log sizes it: growing it a push at a time
        // cost a Route over a thousand instructions.
        let learner_features = l.features.map_or_else(Vec::new, |lf| {
            let mut out = Vec::with_capacity(64 + 4 * lf.grams.len());
            lf.encode(&mut out);
            out
        });
        Snapshot {
            task_kind: l.est.task_kind.clone(),
            input_tokens: l.est.input_tokens.to_vec(),
            max_output_tokens: l.max_output_tokens,
            output_tokens: l.est.output_tokens,
            complexity_features: f.named().iter().map(|(_, v)| *v).collect(),
            complexity_feature_names: crate::estimate::complexity::FEATURE_NAMES.to_string(),
            complexity: Some(l.est.complexity),
            complexity_model: l.table.understanding.tag().to_string(),
            complexity_quantile: l.est.complexity_quantile,
            task_kind_source: l.est.task_kind_source.as_str().to_string(),
            task_kind_confidence: l.est.task_kind_confidence,
            attempt: l.attempt,
            deferrable: l.deferrable,
            capabilities: u32::from(l.capabilities.0),
            downgrade: l.downgrade,
            rejected_tier: l.rejected_tier.map(u32::from),
            tier: u32::from(chosen),
            propensity: l.decision.propensity.unwrap_or(1.0),
            tiers,
            learner_features,
            gate: l.learned.map_or(0.0, |x| x.gate),
            cached_tokens: l.decision.cached_tokens,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    pub fn from_bytes(b: &[u8]) -> Option<Snapshot> {
        Snapshot::decode(b).ok()
    }

    /// Whether every tier is one a rule table can hold and every
    /// probability is one: what a Route logs, and nothing else.
    pub fn is_plausible(&self) -> bool {
        let tier_ok = |t: u32| t <= u32::from(crate::rules::MAX_TIER);
        let p_ok = |p: f64| p.is_finite() && (0.0..=1.0).contains(&p);
        tier_ok(self.tier)
            && p_ok(self.propensity)
            && self.rejected_tier.is_none_or(tier_ok)
            && self.tiers.len() <= usize::from(crate::rules::MAX_TIER) + 1
            && self
                .tiers
                .iter()
                .all(|t| tier_ok(t.tier) && p_ok(t.probability) && t.p.is_none_or(p_ok))
    }

    /// The logged policy's probability of `tier` (0 where it was not available).
    pub fn probability_of(&self, tier: u8) -> f64 {
        self.tiers
            .iter()
            .find(|t| t.tier == u32::from(tier))
            .map_or(0.0, |t| t.probability)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(tier: u32, propensity: f64) -> Snapshot {
        Snapshot {
            tier,
            propensity,
            tiers: vec![TierLog {
                tier,
                probability: propensity,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_snapshot_survives_its_bytes_and_a_hostile_one_is_refused() {
        let s = logged(4, 0.25);
        let back = Snapshot::from_bytes(&s.to_bytes()).expect("decodes");
        assert_eq!(back, s);
        assert!(back.is_plausible());
        assert_eq!(back.probability_of(4), 0.25);
        assert_eq!(back.probability_of(3), 0.0);
        for bad in [logged(300, 0.5), logged(4, f64::NAN), logged(4, -0.1), logged(4, 7.0)] {
            assert!(!bad.is_plausible(), "{bad:?}");
        }
        assert!(
            Snapshot::from_bytes(&[0xff, 0xff, 0xff]).is_none(),
            "garbage does not decode"
        );
    }
}
