//! What a call's tiers are predicted to deliver, and the tier chosen from it.

use super::*;

/// The learned state `decide` reads: plain data, so the decision stays pure.
#[derive(Debug, Clone, Copy)]
pub struct Learned {
    /// A prediction for each available tier (`None`: not available).
    pub tiers: [Option<TierPrediction>; TIERS],
    /// The evidence gate, 0 to 1.
    pub gate: f64,
    /// The rule table's complexity score of the request.
    pub prior: f64,
    /// The probability that this call explores.
    pub explore: f64,
    /// Uniform in 0..1: below `explore`, the call explores.
    pub draw: f64,
}

impl Learned {
    /// Predictions for the tiers of `available` (ascending), and how likely
    /// this call is to explore: once the workflow has any labelled call, at
    /// the workflow's rate scaled by the model's doubt about its choice.
    pub fn gather(
        learner: &Learner,
        workflow: &str,
        available: &[u8],
        f: &Features,
        cfg: &Learning,
        draw: f64,
    ) -> Learned {
        let mut out = Learned {
            tiers: [None; TIERS],
            gate: 0.0,
            prior: f64::from(f.prior),
            explore: 0.0,
            draw,
        };
        let Some(&top) = available.last() else {
            return out;
        };
        let mut labelled = false;
        if let Some(wf) = learner.workflow(workflow) {
            out.gate = wf.gate();
            wf.chain(top as usize + 1, |t, m, below| {
                let (p, z) = predict(m, f, below);
                labelled |= p.seen > 0;
                if available.contains(&(t as u8)) {
                    out.tiers[t] = Some(p);
                }
                z
            });
        }
        // Every tier that has learned nothing predicts the same: one pass.
        let mut cold = None;
        for &t in available {
            out.tiers[t as usize].get_or_insert_with(|| *cold.get_or_insert_with(|| TierPrediction::cold(f)));
        }
        // Explore only where feedback flows: a workflow nobody labels would
        // pay for exploration and learn nothing from it.
        if labelled && available.len() > 1 {
            out.explore = (cfg.exploration * out.doubt(available, cfg)).max(cfg.min_exploration);
        }
        out
    }

    /// How much exploration favours `tier` over the other alternatives.
    fn exploration_weight(&self, tier: u8) -> f64 {
        self.tiers[tier as usize].map_or(1.0, |p| p.doubt.max(1e-9))
    }

    /// The chance this call explores away from `policy_tier`, and the total
    /// weight of the tiers it may explore to.
    fn exploring(&self, available: &[u8], policy_tier: u8) -> (f64, f64) {
        let total: f64 = available
            .iter()
            .filter(|&&t| t != policy_tier)
            .map(|&t| self.exploration_weight(t))
            .sum();
        (if total > 0.0 { self.explore } else { 0.0 }, total)
    }

    /// The probability that [`choose`] sends this call to each of
    /// `available`, given the tier it picks when it does not explore: the
    /// propensities an off-policy estimate weighs logged calls by.
    pub fn probabilities(&self, available: &[u8], policy_tier: u8) -> Vec<(u8, f64)> {
        let (eps, total) = self.exploring(available, policy_tier);
        available
            .iter()
            .map(|&t| {
                let p = if t == policy_tier {
                    1.0 - eps
                } else {
                    eps * self.exploration_weight(t) / total
                };
                (t, p)
            })
            .collect()
    }

    /// How unsure the model is of each tier's part in the choice for this
    /// call, 0 to 1, kept in [`TierPrediction::doubt`]: for each test
    /// [`choose`] makes of the tier (does it meet the target; is it within
    /// `min_gain` of the best), twice the probability, under the posterior,
    /// that the test comes out the other way; the larger of the two. A tier
    /// that has learned nothing is a guess: 1. Returns the largest.
    fn doubt(&mut self, available: &[u8], cfg: &Learning) -> f64 {
        let preds = available.iter().filter_map(|&t| self.tiers[t as usize]);
        let Some(best) = preds.max_by(|a, b| a.p.total_cmp(&b.p)) else {
            return 0.0;
        };
        let mut most = 0f64;
        for &t in available {
            let Some(p) = self.tiers[t as usize].as_mut() else {
                continue;
            };
            let gap = best.p - p.p;
            p.doubt = if p.seen == 0 {
                1.0
            } else {
                let target = flip(p.p - cfg.target, p.sd);
                let near = if gap > 0.0 {
                    flip(gap - cfg.min_gain, p.sd.hypot(best.sd))
                } else {
                    0.0
                };
                target.max(near).min(1.0)
            };
            most = most.max(p.doubt);
        }
        most
    }

    /// How much a request needs a stronger model than the cheapest: the
    /// prior, blended by the gate with the learned gain, the chance that the
    /// cheapest tier is rejected and the strongest would then be accepted.
    pub fn score(&self, available: &[u8]) -> Option<f64> {
        let (lo, hi) = (*available.first()?, *available.last()?);
        let weak = self.tiers[lo as usize]?;
        let strong = self.tiers[hi as usize]?;
        let learned = (1.0 - weak.p) * strong.p_retry;
        Some((1.0 - self.gate) * self.prior + self.gate * learned)
    }
}

/// The tier for a call, as [`choose`] made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub tier: u8,
    /// The tier the policy picks when it does not explore.
    pub policy_tier: u8,
    /// The learned model chose it (not the rule, not exploration).
    pub learned: bool,
    /// Exploration chose it.
    pub explored: bool,
    /// The probability that this policy chose this tier for this call.
    pub propensity: f64,
    /// Why, when learning chose or explored.
    pub reason: Option<String>,
}

/// The tier for a call among `available` (ascending), given the tier the
/// rule asks for.
///
/// Once the gate is open and every available tier has `cold_start` labels,
/// the model chooses: the cheapest tier whose predicted acceptance meets
/// the workflow's target, or if none does, the cheapest within `min_gain` of
/// the best. Otherwise the rule's tier stands. Then, with probability
/// [`Learned::explore`], the call goes to another tier, each in proportion
/// to its doubt.
pub fn choose(learned: &Learned, available: &[u8], cfg: &Learning, rule_tier: u8) -> Choice {
    // The tier the rule's requirement lands on: the cheapest available tier
    // that meets it, or the strongest there is.
    let rule_lands = available
        .iter()
        .copied()
        .find(|&t| t >= rule_tier)
        .or(available.last().copied())
        .unwrap_or(rule_tier);
    let greedy = greedy(learned, available, cfg);
    let (tier, reason) = match &greedy {
        Some((t, why)) => (*t, Some(why.clone())),
        None => (rule_lands, None),
    };
    let others = || available.iter().copied().filter(move |&t| t != tier);
    let weight = |t: u8| learned.exploration_weight(t);
    let (eps, total) = learned.exploring(available, tier);
    if learned.draw < eps {
        // The draw is uniform below eps: rescaled, it picks the tier.
        let mut at = learned.draw / eps * total;
        let mut pick = tier;
        for t in others() {
            pick = t;
            at -= weight(t);
            if at < 0.0 {
                break;
            }
        }
        return Choice {
            tier: pick,
            policy_tier: tier,
            learned: false,
            explored: true,
            propensity: eps * weight(pick) / total,
            reason: Some(format!(
                "exploring tier {pick} (the model is unsure; {:.1}% of such calls explore)",
                eps * 100.0
            )),
        };
    }
    Choice {
        tier,
        policy_tier: tier,
        learned: greedy.is_some(),
        explored: false,
        propensity: 1.0 - eps,
        reason,
    }
}

/// The model's own choice, once it may choose.
fn greedy(learned: &Learned, available: &[u8], cfg: &Learning) -> Option<(u8, String)> {
    if learned.gate <= 0.0 {
        return None;
    }
    let mut preds: Vec<(u8, f64)> = Vec::with_capacity(available.len());
    for &t in available {
        let p = learned.tiers[t as usize].filter(|p| p.seen >= cfg.cold_start)?;
        preds.push((t, p.p));
    }
    let shown = preds
        .iter()
        .map(|(t, p)| format!("tier {t} {p:.2}"))
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(&(t, _)) = preds.iter().find(|(_, p)| *p >= cfg.target) {
        return Some((
            t,
            format!(
                "learned: P(accepted) {shown}; tier {t} meets the target {:.2}",
                cfg.target
            ),
        ));
    }
    let best = preds.iter().map(|(_, p)| *p).fold(0.0, f64::max);
    let &(t, _) = preds.iter().find(|(_, p)| best - p < cfg.min_gain)?;
    Some((
        t,
        format!(
            "learned: P(accepted) {shown}; none meets {:.2}, tier {t} is within {:.2} of the best",
            cfg.target, cfg.min_gain
        ),
    ))
}
