//! The decision: from the rule table and a request's estimate to a model.
//!
//! `decide` is pure and synchronous: no I/O, no clock, no randomness. `serve`,
//! `explain` and `replay` all call it, so what `explain` shows is what the
//! server does. It allocates only the one-line reason (and, when asked, the
//! list of candidates for `explain`).
//!
//! 1. Find the first rule, in file order, that matches the workflow, task kind
//!    or class, complexity band and attempt. It requires a tier for the
//!    request's task class, or pins a model. No match requires the workflow's
//!    quality floor; a tier is never below the floor.
//! 2. Candidates are the workflow's allowed models that have the request's
//!    capabilities, a context window for input plus predicted output, a max
//!    output at least the predicted output, and the required tier.
//! 3. The cheapest estimate wins; a tie goes to the higher tier, then to the
//!    model listed first. A pinned model that cannot serve the request is
//!    skipped in favour of the next matching rule.

use serde::Serialize;

use crate::estimate::Estimate;
use crate::learn::{choose, Learned};
use crate::money::Usd;
use crate::rules::{Capabilities, Model, Requirement, RuleTable, Workflow};

/// The request as the decision sees it (everything but the text).
#[derive(Debug, Clone, Copy)]
pub struct RouteInput {
    pub attempt: u32,
    pub deferrable: bool,
    pub capabilities: Capabilities,
    /// The workflow's budget is past its soft threshold: step the required
    /// tier down one, never below the workflow's floor.
    pub downgrade: bool,
    /// The learned model's predictions, when the workflow learns: a rule
    /// that asks for a tier yields to them once they are warm.
    pub learned: Option<Learned>,
    /// The highest tier an earlier attempt of this outcome was rejected at:
    /// a later attempt goes at least one tier above it (the cascade).
    pub rejected_tier: Option<u8>,
    /// The workflow's budget is paced: a rule that asks for a tier yields to
    /// the model of most value net of its price (`crate::budget::pacing`).
    pub paced: Option<Paced>,
}

/// What pacing tells the decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paced {
    /// λ: value forgone per nano-dollar.
    pub price_per_nano: f64,
    /// Spend over target (1: on pace), for the reason; `None` before
    /// anything is due.
    pub ratio: Option<f64>,
}

/// Why a model was not a candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rejection {
    NotAllowed,
    MissingCapabilities { missing: Vec<&'static str> },
    ContextTooSmall { needed: u64, window: u64 },
    OutputTooLong { needed: u64, max_output_tokens: u64 },
    BelowTier { tier: u8, required: u8 },
    AboveMaxTier { tier: u8, max_tier: u8 },
    NotPinned,
}

/// One model as `explain` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub model: String,
    pub provider: String,
    pub tier: u8,
    pub input_tokens: u64,
    /// Leading input tokens the provider would serve from its prompt cache.
    pub cached_input_tokens: u64,
    pub estimated_cost_nanousd: i64,
    /// `None` for an adequate candidate.
    pub rejected: Option<Rejection>,
}

/// What the decision chose.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Index into `RuleTable::models`.
    pub model: usize,
    /// The name of the matched rule, or `default` (the workflow's floor).
    pub rule: String,
    pub required_tier: u8,
    /// The tier the rule asked for, when a downgrade lowered it.
    pub downgraded_from: Option<u8>,
    /// Input tokens in the chosen model's encoding, as billed.
    pub input_tokens: u64,
    /// The part of `input_tokens` priced at the cached-input rate.
    pub cached_tokens: u64,
    pub output_tokens: u64,
    pub cost_nanos: i64,
    /// How many adequate candidates there were.
    pub adequate: usize,
    /// The tier came from the learned model rather than the rule.
    pub learned: bool,
    /// The learned model sent this call to another tier, to keep learning.
    pub explored: bool,
    /// Pacing chose another model than the rules would have: theirs.
    pub paced_from: Option<usize>,
    /// When the workflow learns: the probability that the policy in force
    /// (the rules or the model, with its exploration) chose this tier.
    pub propensity: Option<f64>,
    /// When the workflow learns: the tier the policy picks when it does not
    /// explore (with `propensity`, what an off-policy estimate needs).
    pub policy_tier: Option<u8>,
    pub reason: String,
}

/// No model can serve the request; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoAdequateModel {
    pub message: String,
}

impl std::fmt::Display for NoAdequateModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The name a decision reports when no rule matched.
pub const DEFAULT_RULE: &str = "default";

/// Decides. `cached[i]` is how many leading input tokens model `i` would
/// serve from its prompt cache (empty: none); a warm model is priced at its
/// cached-input rate for those, so affinity to it can only lower the cost.
/// `trace`, when given, receives every model with its cost or the reason it
/// was rejected (for `explain`); the hot path passes `None`.
pub fn decide(
    table: &RuleTable,
    workflow: &Workflow,
    input: &RouteInput,
    est: &Estimate,
    cached: &[u64],
    mut trace: Option<&mut Vec<Candidate>>,
) -> Result<Decision, NoAdequateModel> {
    let ctx = Ctx {
        table,
        workflow,
        input,
        est,
        cached,
    };
    let mut skipped_pins: Vec<&str> = Vec::new();
    for rule in &table.rules {
        if !rule.matches(
            &workflow.name,
            &est.task_kind,
            est.class,
            (est.complexity, est.complexity_quantile),
            input.attempt,
        ) {
            continue;
        }
        match rule.requirement {
            Requirement::Tier(t) => {
                let mut asked = t.max(workflow.quality_floor).min(workflow.max_tier);
                let mut notes: Vec<String> = Vec::new();
                let (mut learned, mut explored, mut propensity, mut policy_tier) = (false, false, None, None);
                let available = available_tiers(workflow, est.class);
                if let Some(l) = input.learned.as_ref().filter(|_| workflow.learning.enabled) {
                    let c = choose(l, available, &workflow.learning, asked);
                    if c.learned || c.explored {
                        asked = c.tier;
                    }
                    (learned, explored, propensity, policy_tier) =
                        (c.learned, c.explored, Some(c.propensity), Some(c.policy_tier));
                    notes.extend(c.reason);
                }
                if let Some(r) = input.rejected_tier.filter(|_| input.attempt > 1) {
                    if asked <= r && available.iter().any(|&a| a > r) {
                        asked = r + 1;
                        notes.push(format!(
                            "attempt {} after a rejection at tier {r}: one tier up",
                            input.attempt
                        ));
                    }
                }
                if let Some(paced) = input.paced {
                    return decide_paced(&ctx, paced, asked, available, &rule.name, &skipped_pins, trace);
                }
                // One available tier down: a table with tiers 3 and 5 steps
                // from 5 to 3, not to a tier 4 no model has.
                let required = if input.downgrade {
                    available
                        .iter()
                        .rev()
                        .find(|&&t| t < asked)
                        .copied()
                        .unwrap_or(asked)
                        .max(workflow.quality_floor)
                } else {
                    asked
                };
                let mut d = pick(&ctx, required, None, &rule.name, &skipped_pins, trace)?;
                d.learned = learned;
                d.explored = explored;
                d.propensity = propensity;
                d.policy_tier = policy_tier;
                if required < asked {
                    d.downgraded_from = Some(asked);
                    notes.push(format!(
                        "budget past its soft threshold: tier {asked} stepped down to {required}"
                    ));
                }
                if !notes.is_empty() {
                    notes.push(std::mem::take(&mut d.reason));
                    d.reason = notes.join("; ");
                }
                return Ok(d);
            }
            Requirement::Pin(i) => {
                let model = &table.models[i];
                let required = workflow.quality_floor;
                let ok = workflow.allowed.contains(&i) && ctx.eligible(i, model, required).is_ok();
                if ok {
                    return pick(&ctx, required, Some(i), &rule.name, &skipped_pins, trace);
                }
                skipped_pins.push(&rule.name);
                if let Some(t) = trace.as_deref_mut() {
                    t.clear();
                }
            }
        }
    }
    if let Some(paced) = input.paced {
        let available = available_tiers(workflow, est.class);
        return decide_paced(
            &ctx,
            paced,
            workflow.quality_floor,
            available,
            DEFAULT_RULE,
            &skipped_pins,
            trace,
        );
    }
    pick(&ctx, workflow.quality_floor, None, DEFAULT_RULE, &skipped_pins, trace)
}

/// A paced decision: among the models from the workflow's floor (or a
/// retry's cascade) up, the one of most value net of its price; the reason
/// says when that is not the model the rule asked for.
fn decide_paced(
    ctx: &Ctx<'_>,
    paced: Paced,
    asked: u8,
    available: &[u8],
    rule: &str,
    skipped_pins: &[&str],
    trace: Option<&mut Vec<Candidate>>,
) -> Result<Decision, NoAdequateModel> {
    let (input, workflow) = (ctx.input, ctx.workflow);
    let bound = match input.rejected_tier.filter(|_| input.attempt > 1) {
        Some(r) if available.iter().any(|&a| a > r) => r + 1,
        _ => workflow.quality_floor,
    };
    let usable: Vec<u8> = available.iter().copied().filter(|&t| t >= bound).collect();
    let (weakest, strongest) = (
        usable.first().copied().unwrap_or(bound),
        usable.last().copied().unwrap_or(bound),
    );
    // The learner's acceptance where every usable tier has its evidence,
    // else the difficulty score's.
    let learned = input.learned.as_ref().filter(|l| {
        workflow.learning.enabled
            && l.gate > 0.0
            && usable
                .iter()
                .all(|&t| l.tiers[t as usize].is_some_and(|p| p.seen >= workflow.learning.cold_start))
    });
    // With the learner's evidence, the mean of its acceptance and the
    // score's: the learner knows how a kind of request fares on each tier
    // (its values are shared by the calls of a cluster), the score how hard
    // this request is among them.
    let value = |tier: u8| {
        let prior = crate::budget::pacing::prior_value(ctx.est.complexity, tier, weakest, strongest);
        match learned.and_then(|l| l.tiers.get(tier as usize).copied().flatten()) {
            Some(p) => 0.5 * (p.p + prior),
            None => prior,
        }
    };
    // The learner's values come in clusters (a subject's calls share
    // theirs), so one price would flip a whole cluster at once and spend
    // would jump as the price crosses it. The call's own uniform draw
    // spreads each call's price over a factor of e around λ, so that spend
    // moves smoothly with λ; without the learner the score's values are
    // spread already.
    let price = match learned {
        Some(l) => paced.price_per_nano * (l.draw.clamp(0.0, 1.0) - 0.5).exp(),
        None => paced.price_per_nano,
    };
    // The rule's own choice, for the reason, comes from the same pass when
    // its tier is within the paced pick's range (it is unless a retry's
    // cascade rose past the workflow's `max_tier`). A rule that no model can
    // serve fails the call as it would unpaced.
    let ruled_at = (asked >= bound).then_some(asked);
    let (mut d, ruled) = match pick_among(
        ctx,
        bound,
        None,
        Some((price, &value)),
        ruled_at,
        rule,
        skipped_pins,
        trace,
    ) {
        Ok(picked) => picked,
        Err(e) => return Err(pick(ctx, asked, None, rule, skipped_pins, None).err().unwrap_or(e)),
    };
    let ruled = match ruled {
        Some(m) => m,
        None => pick(ctx, asked, None, rule, skipped_pins, None)?.model,
    };
    d.propensity = learned.map(|_| 1.0);
    d.policy_tier = learned.map(|_| ctx.table.models[d.model].tiers[ctx.est.class]);
    use std::fmt::Write as _;
    let mut reason = String::with_capacity(96 + d.reason.len());
    reason.push_str("paced (");
    let _ = match paced.ratio {
        Some(r) => write!(reason, "spend at {}% of its paced target", (r * 100.0).round()),
        None => write!(reason, "nothing due yet"),
    };
    let _ = if d.model == ruled {
        write!(reason, "): the rule's choice stands; ")
    } else {
        d.paced_from = Some(ruled);
        write!(
            reason,
            "): {} instead of {}, which rule `{rule}` would have chosen; ",
            ctx.table.models[d.model].name, ctx.table.models[ruled].name
        )
    };
    reason.push_str(&d.reason);
    d.reason = reason;
    Ok(d)
}

/// The distinct tiers, ascending, of the models `workflow` may use for task
/// class `class`, from its quality floor up: where learning may move (kept
/// with the workflow since load, [`Workflow::available`]).
pub fn available_tiers(workflow: &Workflow, class: usize) -> &[u8] {
    workflow.available.get(class).map_or(&[], Vec::as_slice)
}

/// What every step of a decision reads.
struct Ctx<'a> {
    table: &'a RuleTable,
    workflow: &'a Workflow,
    input: &'a RouteInput,
    est: &'a Estimate,
    cached: &'a [u64],
}

impl Ctx<'_> {
    /// Billed input tokens and cached tokens of model `i` for this request.
    fn tokens(&self, i: usize, model: &Model) -> (u64, u64) {
        let tokens = model.billed_tokens(self.est.input_tokens(model.encoding));
        (tokens, self.cached.get(i).copied().unwrap_or(0).min(tokens))
    }

    /// Billed input tokens, cached tokens and cost of model `i` for this
    /// request, whether or not it is adequate.
    fn price(&self, i: usize, model: &Model) -> (u64, u64, i64) {
        let (tokens, cached) = self.tokens(i, model);
        (
            tokens,
            cached,
            model.cost(tokens, cached, self.est.output_tokens, self.input.deferrable),
        )
    }

    /// The price of model `i`, or why it cannot serve the request.
    fn eligible(&self, i: usize, model: &Model, required: u8) -> Result<(u64, u64, i64), Rejection> {
        let (input, est) = (self.input, self.est);
        if !input.capabilities.met_by(model.capabilities) {
            let missing = input.capabilities.missing_from(model.capabilities);
            return Err(Rejection::MissingCapabilities { missing });
        }
        if est.output_tokens > model.max_output_tokens {
            return Err(Rejection::OutputTooLong {
                needed: est.output_tokens,
                max_output_tokens: model.max_output_tokens,
            });
        }
        // Priced only once adequate: most models fail on their tier.
        let (tokens, _) = self.tokens(i, model);
        let needed = tokens.saturating_add(est.output_tokens);
        if needed > model.context_window {
            return Err(Rejection::ContextTooSmall {
                needed,
                window: model.context_window,
            });
        }
        let tier = model.tiers[est.class];
        if tier < required {
            return Err(Rejection::BelowTier { tier, required });
        }
        if tier > self.workflow.max_tier {
            return Err(Rejection::AboveMaxTier {
                tier,
                max_tier: self.workflow.max_tier,
            });
        }
        Ok(self.price(i, model))
    }
}

fn pick(
    ctx: &Ctx<'_>,
    required: u8,
    pinned: Option<usize>,
    rule: &str,
    skipped_pins: &[&str],
    trace: Option<&mut Vec<Candidate>>,
) -> Result<Decision, NoAdequateModel> {
    pick_among(ctx, required, pinned, None, None, rule, skipped_pins, trace).map(|(d, _)| d)
}

/// The value of a tier, for a paced pick.
type Value<'v> = &'v dyn Fn(u8) -> f64;

/// The pick among the models the workflow allows at tier ≥ `required`: the
/// cheapest, or paced, the greatest value − price × cost. With `ruled_at`,
/// also the cheapest at tier ≥ that, in the same pass (the rule's choice a
/// paced pick is measured against).
#[allow(clippy::too_many_arguments)]
fn pick_among(
    ctx: &Ctx<'_>,
    required: u8,
    pinned: Option<usize>,
    paced: Option<(f64, Value<'_>)>,
    ruled_at: Option<u8>,
    rule: &str,
    skipped_pins: &[&str],
    mut trace: Option<&mut Vec<Candidate>>,
) -> Result<(Decision, Option<usize>), NoAdequateModel> {
    let (table, workflow, input, est) = (ctx.table, ctx.workflow, ctx.input, ctx.est);
    // (cost, -tier, index) orders candidates: cheapest, then higher tier, then first listed.
    let mut best: Option<(i64, i16, usize, (u64, u64))> = None;
    let mut cheapest_ruled: Option<(i64, i16, usize)> = None;
    // Paced: the best net value so far (ties fall to the order above).
    let mut best_net = f64::NEG_INFINITY;
    let mut adequate = 0usize;
    let mut rejections: [usize; 5] = [0; 5];
    // `allowed` ascends, so walking it beside the models answers "allowed?"
    // without a search per model.
    let mut next_allowed = workflow.allowed.iter().copied().peekable();
    for (i, model) in table.models.iter().enumerate() {
        let allowed = next_allowed.next_if_eq(&i).is_some();
        if !allowed && trace.is_none() {
            continue;
        }
        let result = if !allowed {
            Err(Rejection::NotAllowed)
        } else if pinned.is_some_and(|p| p != i) {
            Err(Rejection::NotPinned)
        } else {
            ctx.eligible(i, model, required)
        };
        if let Some(t) = trace.as_deref_mut() {
            let (tokens, cached, cost) = ctx.price(i, model);
            t.push(Candidate {
                model: model.name.clone(),
                provider: model.provider.clone(),
                tier: model.tiers[est.class],
                input_tokens: tokens,
                cached_input_tokens: cached,
                estimated_cost_nanousd: cost,
                rejected: result.as_ref().err().cloned(),
            });
        }
        match result {
            Ok((tokens, cached, cost)) => {
                adequate += 1;
                let key = (cost, -(model.tiers[est.class] as i16), i, (tokens, cached));
                if ruled_at.is_some_and(|t| model.tiers[est.class] >= t)
                    && cheapest_ruled.is_none_or(|c| (key.0, key.1, key.2) < c)
                {
                    cheapest_ruled = Some((key.0, key.1, key.2));
                }
                let better = match paced {
                    Some((price, value)) => {
                        let net = value(model.tiers[est.class]) - price * cost as f64;
                        let tie = (net - best_net).abs() <= 1e-12;
                        let b = net > best_net + 1e-12
                            || (tie && best.is_none_or(|b| (key.0, key.1, key.2) < (b.0, b.1, b.2)));
                        if b {
                            best_net = net;
                        }
                        b
                    }
                    None => best.is_none_or(|b| (key.0, key.1, key.2) < (b.0, b.1, b.2)),
                };
                if better {
                    best = Some(key);
                }
            }
            Err(r) => {
                let slot = match r {
                    Rejection::MissingCapabilities { .. } => 0,
                    Rejection::ContextTooSmall { .. } => 1,
                    Rejection::OutputTooLong { .. } => 2,
                    Rejection::BelowTier { .. } | Rejection::AboveMaxTier { .. } => 3,
                    Rejection::NotAllowed | Rejection::NotPinned => 4,
                };
                rejections[slot] += 1;
            }
        }
    }
    let class = &table.classes[est.class];
    let Some((cost, _, model, (tokens, cached))) = best else {
        let [caps, ctx, out, tier, _] = rejections;
        return Err(NoAdequateModel {
            message: format!(
                "no model allowed in workflow `{}` can serve this request at tier >= {required} for {class} \
                 (rule `{rule}`): {tier} below the tier, {caps} missing a required capability, {ctx} with too small a \
                 context window for {} input + {} output tokens, {out} with too small a max output; \
                 send less context, lower max_output_tokens, drop a capability, or add a model to the rules",
                workflow.name,
                est.input_tokens.iter().max().copied().unwrap_or(0),
                est.output_tokens,
            ),
        });
    };
    let m = &table.models[model];
    // Written into one buffer sized for the common reason: every Route
    // builds one, and growing it as it is written showed up.
    use std::fmt::Write as _;
    let mut reason = String::with_capacity(128);
    let _ = if pinned.is_some() {
        write!(
            reason,
            "pinned to {} by rule `{rule}` for {class}: est. {}",
            m.name,
            Usd(cost)
        )
    } else if paced.is_some() {
        write!(
            reason,
            "most value net of its price of {adequate} models at tier >= {required} for {class}: est. {}",
            Usd(cost)
        )
    } else {
        write!(
            reason,
            "cheapest of {adequate} models at tier >= {required} for {class}: est. {}",
            Usd(cost)
        )
    };
    if input.deferrable && m.batch_discount_bp > 0 {
        reason.push_str(" at batch price");
    }
    if cached > 0 {
        let _ = write!(
            reason,
            "; {cached} prefix tokens warm on {} at the cached price",
            m.name
        );
    }
    if !skipped_pins.is_empty() {
        let _ = write!(
            reason,
            " (pin rule(s) {} skipped: model cannot serve this request)",
            skipped_pins.join(", ")
        );
    }
    Ok((
        Decision {
            model,
            rule: rule.to_string(),
            required_tier: required,
            downgraded_from: None,
            input_tokens: tokens,
            cached_tokens: cached,
            output_tokens: est.output_tokens,
            cost_nanos: cost,
            adequate,
            learned: false,
            explored: false,
            paced_from: None,
            propensity: None,
            policy_tier: None,
            reason,
        },
        cheapest_ruled.map(|c| c.2),
    ))
}

#[cfg(test)]
mod tests;
