//! The Route use case: one type, [`Router`], that `serve`, `explain` and
//! `replay` all run, so what `explain` shows and `replay` measures is what
//! production does.
//!
//! A call moves through it in one direction:
//!
//! 1. **admit**: the workflow exists, the caller may call it, the request is
//!    complete for its budget (a per-outcome cap needs an outcome ID);
//! 2. **steer**: is the budget past its soft threshold, was an earlier
//!    attempt of this outcome rejected (and at which tier);
//! 3. **estimate** and **decide** ([`plan`]): pure CPU, on the blocking pool
//!    for very large requests;
//! 4. **reserve**: the estimated cost on every scope, or the limit's answer
//!    (escalate or deny);
//! 5. **record**: the prefixes now warm on the chosen model, the call for
//!    learning to label later, the audit record of a refusal, the metrics.
//!
//! What differs between the three front ends is plugged in: the budget gate
//! (`serve` reserves, `explain` only reads, `replay` has no budget) and the
//! learning gate (the live model, the model folded from a store, replay's
//! own), and whether effects (audit, metrics) are recorded.

pub mod call;
mod plan;
pub mod sketch;
pub use plan::*;

use std::sync::Arc;

use jiff::Timestamp;

pub use call::{limits, Message, RawRoute, RouteCall};

use crate::access::{Access, Identity};
use crate::audit::{Action, Record, Verdict};
use crate::budget::{Admission, BudgetGate, Call};
use crate::decide::{available_tiers, decide, Candidate, Decision, RouteInput};
use crate::error::Error;
use crate::estimate::cache::{ContextCache, Fingerprints};
use crate::estimate::{asked, compute_work, estimate, Estimate};
use crate::learn::{Features, Learned, Learner, LearningGate, Request, RoutedCall};
use crate::metrics::Metrics;
use crate::outcome::whatif::{Logged, Snapshot};
use crate::rules::reload::Rules;
use crate::rules::{Model, RuleTable, Workflow};
use sketch::ScoreSketches;

/// Content above this many bytes is estimated on the blocking pool, so that
/// one huge request cannot stall the runtime's workers for other callers.
const INLINE_CONTENT_BYTES: usize = 64 * 1024;

/// How a Route was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteStatus {
    Routed,
    /// Routed a tier lower, for the budget's soft threshold.
    Downgraded,
    /// At a hard limit: a person must approve more.
    EscalationRequired,
    /// At a hard limit that denies, or denied by a person.
    Denied,
}

impl RouteStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteStatus::Routed => "routed",
            RouteStatus::Downgraded => "downgraded",
            RouteStatus::EscalationRequired => "escalation_required",
            RouteStatus::Denied => "denied",
        }
    }

    /// Whether the agent should make the call.
    pub fn is_routed(self) -> bool {
        matches!(self, RouteStatus::Routed | RouteStatus::Downgraded)
    }
}

/// What a Route came to.
pub struct Routed {
    /// The table the call was decided with (a reload may swap it meanwhile).
    pub table: Arc<RuleTable>,
    pub decision_id: String,
    pub status: RouteStatus,
    /// With `EscalationRequired`: the escalation to approve.
    pub escalation_id: String,
    /// Why: the decision's reason, or the budget's answer.
    pub reason: String,
    pub workflow: String,
    pub outcome_id: String,
    /// The request's own output limit; 0 when it set none.
    pub max_output_tokens: u32,
    /// Boxed: a plan is several hundred bytes (the estimate and the learned
    /// predictions), and a Routed moves through every layer above. Its
    /// decision's reason has moved to [`Routed::reason`].
    pub planned: Box<Planned>,
    /// When it was decided: the period [`Router::budget_remaining`] reads.
    pub at: Timestamp,
    /// Every model with its cost or why it could not serve, when the router
    /// traces (`explain`); empty otherwise.
    pub candidates: Vec<Candidate>,
}

impl Routed {
    /// The model the decision chose.
    pub fn model(&self) -> &Model {
        &self.table.models[self.planned.decision.model]
    }

    /// The request's task class.
    pub fn task_class(&self) -> &str {
        &self.table.classes[self.planned.est.class]
    }
}

/// What is recorded besides the answer; `serve` has them, `explain` and
/// `replay` do not.
pub struct Effects {
    pub access: Access,
    pub metrics: Arc<Metrics>,
}

/// The Route use case.
pub struct Router {
    pub rules: Arc<Rules>,
    /// Reuses message work across calls and prices warm prefixes; `None`
    /// computes everything afresh and keeps nothing.
    pub cache: Option<Arc<ContextCache>>,
    pub budgets: Arc<dyn BudgetGate>,
    pub learning: Arc<dyn LearningGate>,
    pub effects: Option<Effects>,
    /// Keep every candidate model with its cost or rejection (`explain`).
    pub trace: bool,
    /// Requests larger than [`INLINE_CONTENT_BYTES`] are estimated on the
    /// blocking pool, at most this many at once (the rest wait their turn,
    /// holding no thread), so that small Routes keep a core; `None`: no bound.
    pub large_requests: Option<Arc<tokio::sync::Semaphore>>,
    /// Each workflow's complexity histogram, which `top_share` rules read;
    /// `None` reads the model's calibration alone.
    pub sketches: Option<Arc<ScoreSketches>>,
    /// Count each Route in `sketches` (`serve` and `replay`; `explain` only
    /// reads).
    pub observe_scores: bool,
}

/// What the budget and the outcome's history add to a request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Steer {
    /// The workflow's budget is past its soft threshold: a tier lower.
    pub downgrade: bool,
    /// The highest tier an earlier attempt of the outcome was rejected at.
    pub rejected_tier: Option<u8>,
    /// The workflow's budget is paced: its price of spend.
    pub paced: Option<crate::decide::Paced>,
}

/// What a call was admitted to, and what it was called under.
struct Admitted<'a> {
    admission: Admission,
    decision_id: String,
    /// The operator's own tools route as `-`.
    caller_name: Arc<str>,
    model: &'a Model,
}

impl Router {
    /// Routes one call. `caller` is the identity a request carries; the
    /// operator's own tools (`explain`, `replay`) pass `None`, and are not
    /// held to a workflow's callers.
    pub async fn route(&self, caller: Option<&Identity>, call: RouteCall, now: Timestamp) -> Result<Routed, Error> {
        let table = self.rules.current();
        let workflow = self.admit(&table, caller, &call)?;
        let steer = self.steer(workflow, &call, now).await?;
        let (call, mut planned, candidates) = self.estimate(&table, workflow, call, steer).await?;
        let admitted = self
            .reserve(&table, workflow, &call, &planned, steer, caller, now)
            .await?;
        let (status, escalation_id, reason) = self.record(&table, workflow, &call, &mut planned, &admitted);
        Ok(Routed {
            at: now,
            workflow: workflow.name.clone(),
            table: table.clone(),
            decision_id: admitted.decision_id,
            status,
            escalation_id,
            reason,
            outcome_id: call.outcome_id,
            max_output_tokens: call.max_output_tokens,
            planned,
            candidates,
        })
    }

    /// Admit: everything that can refuse the call without a store round
    /// trip: the workflow, the caller's permission, a required outcome ID.
    fn admit<'t>(
        &self,
        table: &'t RuleTable,
        caller: Option<&Identity>,
        call: &RouteCall,
    ) -> Result<&'t Workflow, Error> {
        let workflow = find_workflow(table, &call.workflow)?;
        if let (Some(who), Some(fx)) = (caller, &self.effects) {
            fx.access.may_call(who, workflow, Action::Route, &call.outcome_id)?;
        }
        if call.outcome_id.is_empty() && workflow.budget.as_ref().is_some_and(|b| b.per_outcome_nanos.is_some()) {
            return Err(Error::InvalidArgument(format!(
                "workflow `{}` caps the spend of each outcome (per_outcome_usd), so outcome_id is required: \
                 set it to the ticket, PR or task this call works on",
                workflow.name
            )));
        }
        Ok(workflow)
    }

    /// Steer: what the budget (its soft threshold, its pace) and the
    /// outcome's earlier rejections add to the decision.
    async fn steer(&self, workflow: &Workflow, call: &RouteCall, now: Timestamp) -> Result<Steer, Error> {
        let budget = self.budgets.steer(workflow, now).await?;
        let rejected_tier = if call.attempt > 1 && !call.outcome_id.is_empty() {
            self.learning.rejected_tier(&workflow.name, &call.outcome_id).await?
        } else {
            None
        };
        Ok(Steer {
            downgrade: budget.downgrade,
            rejected_tier,
            paced: budget.pace.map(|p| crate::decide::Paced {
                price_per_nano: p.price_per_nano,
                ratio: p.ratio(),
            }),
        })
    }

    /// Estimate and decide, on this thread, or for a large request on the
    /// blocking pool, one at a time, so that it cannot hold up small ones.
    async fn estimate(
        &self,
        table: &Arc<RuleTable>,
        workflow: &Workflow,
        call: RouteCall,
        steer: Steer,
    ) -> Result<(RouteCall, Box<Planned>, Vec<Candidate>), Error> {
        let trace = self.trace;
        let (call, planned, candidates) = if call.content_bytes() > INLINE_CONTENT_BYTES {
            let (t, cache, learning, sketches) = (
                table.clone(),
                self.cache.clone(),
                self.learning.clone(),
                self.sketches.clone(),
            );
            let turn = match &self.large_requests {
                Some(s) => Some(
                    s.clone()
                        .acquire_owned()
                        .await
                        .map_err(|_| Error::Unavailable("the server is shutting down".into()))?,
                ),
                None => None,
            };
            tokio::task::spawn_blocking(move || {
                let _turn = turn;
                // The table moved here, so the workflow is found in it again.
                let (p, candidates) = match find_workflow(&t, &call.workflow) {
                    Ok(w) => plan_with(
                        &t,
                        w,
                        &call,
                        steer,
                        cache.as_deref(),
                        sketches.as_deref(),
                        &*learning,
                        trace,
                    ),
                    Err(e) => (Err(e), Vec::new()),
                };
                (call, p, candidates)
            })
            .await?
        } else {
            let (p, candidates) = plan_with(
                table,
                workflow,
                &call,
                steer,
                self.cache.as_deref(),
                self.sketches.as_deref(),
                &*self.learning,
                trace,
            );
            (call, p, candidates)
        };
        let planned = Box::new(planned?);
        if let (Some(s), true) = (&self.sketches, self.observe_scores) {
            s.observe(&table.understanding, &workflow.name, planned.est.complexity);
        }
        Ok((call, planned, candidates))
    }

    /// Reserve: the decision's estimated cost against every budget scope it
    /// falls in, with what `whatif` will need of it (`serve` logs it).
    #[allow(clippy::too_many_arguments)]
    async fn reserve<'t>(
        &self,
        table: &'t RuleTable,
        workflow: &Workflow,
        call: &RouteCall,
        planned: &Planned,
        steer: Steer,
        caller: Option<&Identity>,
        now: Timestamp,
    ) -> Result<Admitted<'t>, Error> {
        let d = &planned.decision;
        let model = &table.models[d.model];
        let decision_id = crate::store::new_decision_id();
        let caller_name = caller.map_or_else(|| Arc::from("-"), |w| w.name.clone());
        let snapshot = match &self.effects {
            Some(_) => Snapshot::of(&Logged {
                table,
                workflow,
                est: &planned.est,
                decision: d,
                learned: planned.learned.as_ref(),
                features: planned.features.as_ref(),
                attempt: call.attempt,
                deferrable: call.deferrable,
                capabilities: call.capabilities,
                downgrade: steer.downgrade,
                rejected_tier: steer.rejected_tier,
                max_output_tokens: call.max_output_tokens,
            })
            .to_bytes(),
            None => Vec::new(),
        };
        let admission = self
            .budgets
            .admit(
                &Call {
                    decision_id: &decision_id,
                    workflow,
                    outcome_id: &call.outcome_id,
                    labels: call.label_pairs().collect(),
                    model: &model.name,
                    deferrable: call.deferrable,
                    cost_nanos: d.cost_nanos,
                    caller: &caller_name,
                    downgraded: d.downgraded_from.is_some(),
                    prices: model.prices(),
                    tier: model.tiers[planned.est.class],
                    snapshot: &snapshot,
                },
                now,
            )
            .await?;
        Ok(Admitted {
            admission,
            decision_id,
            caller_name,
            model,
        })
    }

    /// Record: what the admission came to. A routed call warms the context
    /// cache and is remembered for learning; a refused one is audited; both
    /// are counted. The status, escalation ID and reason of the answer.
    fn record(
        &self,
        table: &RuleTable,
        workflow: &Workflow,
        call: &RouteCall,
        planned: &mut Planned,
        admitted: &Admitted<'_>,
    ) -> (RouteStatus, String, String) {
        let (model, decision_id, caller_name) = (admitted.model, &admitted.decision_id, &admitted.caller_name);
        let (status, escalation_id, reason) = match &admitted.admission {
            Admission::Routed => {
                if let Some(cache) = &self.cache {
                    record_routed(cache, table, planned);
                }
                if let Some(f) = planned.features.take() {
                    let routed = RoutedCall {
                        decision_id,
                        workflow: &workflow.name,
                        outcome_id: &call.outcome_id,
                        tier: model.tiers[planned.est.class],
                        retry: call.attempt > 1,
                        explored: planned.decision.explored,
                    };
                    self.learning.remember(routed, f);
                }
                let status = if planned.decision.downgraded_from.is_some() {
                    RouteStatus::Downgraded
                } else {
                    RouteStatus::Routed
                };
                // Moved, not copied: `Routed::reason` is where it is read.
                (status, String::new(), std::mem::take(&mut planned.decision.reason))
            }
            Admission::Escalate(e) => {
                self.audit_refusal(caller_name, workflow, &e.id, Verdict::EscalationRequired, &e.reason);
                let reason = if e.id.is_empty() {
                    format!(
                        "{}; a new escalation would be created for a person to approve",
                        e.reason
                    )
                } else {
                    format!(
                        "{}; escalation {} waits for approval (switchyard escalations approve {} --add-usd N)",
                        e.reason, e.id, e.id
                    )
                };
                (RouteStatus::EscalationRequired, e.id.clone(), reason)
            }
            Admission::Denied(why) => {
                self.audit_refusal(caller_name, workflow, &call.outcome_id, Verdict::Denied, why);
                (RouteStatus::Denied, String::new(), why.clone())
            }
        };
        if let Some(fx) = &self.effects {
            let d = &planned.decision;
            fx.metrics
                .decisions
                .add(&[&workflow.name, &model.name, status.as_str()], 1);
            if status.is_routed() {
                fx.metrics.estimated_spend.add_traced(
                    &[&workflow.name, &model.name],
                    d.cost_nanos.max(0) as u64,
                    call.trace.as_ref(),
                );
            }
        }
        (status, escalation_id, reason)
    }

    /// What is left of the routed workflow's period budget, as this sidecar
    /// last saw it (no store round trip): asked for only when a span records
    /// it, so an unsampled Route does not pay for the lookup.
    pub fn budget_remaining(&self, routed: &Routed) -> Option<i64> {
        let workflow = routed.table.workflow(&routed.workflow)?;
        self.budgets.remaining_hint(workflow, routed.at)
    }

    fn audit_refusal(&self, who: &str, workflow: &Workflow, target: &str, verdict: Verdict, why: &str) {
        if let Some(fx) = &self.effects {
            fx.access
                .audit
                .refusal(Record::new(who, Action::Route, &workflow.name, target, verdict, why));
        }
    }
}

/// The workflow a call names: `INVALID_ARGUMENT` for no name, `NOT_FOUND`
/// with the known names for an unknown one.
pub fn find_workflow<'t>(table: &'t RuleTable, name: &str) -> Result<&'t Workflow, Error> {
    if name.is_empty() {
        return Err(Error::InvalidArgument(
            "workflow is empty: name a workflow from the rules, e.g. \"general\"".into(),
        ));
    }
    table.workflow(name).ok_or_else(|| Error::UnknownWorkflow {
        name: name.to_string(),
        known: table.workflows.iter().map(|w| w.name.clone()).collect(),
    })
}
