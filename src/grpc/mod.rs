//! The gRPC edge: the tonic service, protobuf-to-domain conversion, and the
//! mapping of [`Error`] onto gRPC status codes. This is the only module that
//! touches prost types.

pub mod auth;
pub mod edge_status;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::audit::{Audit, Record as AuditRecord};
use crate::budget::{period_scope, Admission, Budgets, Call, Escalation, ScopeState, Settled, StoreError, Usage};
use crate::error::{truncate, Error};
use crate::estimate::cache::ContextCache;
use crate::grpc::auth::{Admitted, Auth, Identity, Refusal};
use crate::metrics::Metrics;
use crate::outcome::learn::online::{Online, Routed};
use crate::route::{find_workflow, plan, record_routed, LearnWith, Planned, RawRoute, RouteCall};
use crate::rules::reload::Rules;
use crate::rules::{OtherModelUsage, RuleTable, Workflow};
use crate::telemetry::{attr, CallAttrs, RpcSpan, Telemetry};

/// The generated protobuf and gRPC code for `switchyard.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("switchyard.v1");

    /// The encoded descriptors, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("switchyard_descriptor");
}

use pb::router_server::Router;

/// Content above this many bytes is counted on the blocking pool, so that one
/// huge request cannot stall the runtime's workers for other callers.
const INLINE_CONTENT_BYTES: usize = 64 * 1024;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let msg = e.to_string();
        match e {
            Error::InvalidArgument(_) => Status::invalid_argument(msg),
            Error::UnknownWorkflow { .. } => Status::not_found(msg),
            Error::NoAdequateModel(_) => Status::failed_precondition(msg),
            Error::TooLarge(_) => Status::resource_exhausted(msg),
            Error::Unimplemented(_) => Status::unimplemented(msg),
            Error::NotFound(_) => Status::not_found(msg),
            Error::FailedPrecondition(_) => Status::failed_precondition(msg),
            Error::Unavailable(_) => Status::unavailable(msg),
            Error::PermissionDenied(_) => Status::permission_denied(msg),
        }
    }
}

/// Counters the admin port reports.
#[derive(Debug, Default)]
pub struct RouteCounters {
    pub routed: AtomicU64,
    pub rejected: AtomicU64,
}

/// The `switchyard.v1.Router` service: everything a call reads, shared.
#[derive(Clone)]
pub struct RouterService {
    pub rules: Arc<Rules>,
    pub cache: Arc<ContextCache>,
    pub counters: Arc<RouteCounters>,
    pub budgets: Arc<Budgets>,
    pub telemetry: Arc<Telemetry>,
    pub metrics: Arc<Metrics>,
    pub learning: Arc<Online>,
    pub auth: Arc<Auth>,
    pub audit: Arc<Audit>,
}

impl RouterService {
    /// Who is calling, within their limits; a refusal is audited.
    fn admit<T>(&self, request: &Request<T>, action: &str) -> Result<Admitted, Status> {
        self.auth
            .admit(request.metadata(), request.remote_addr())
            .map_err(|(who, refusal)| {
                let name = who.map_or_else(|| "-".to_string(), |w| w.name.to_string());
                let (result, status) = match &refusal {
                    Refusal::Unauthenticated(m) => ("unauthenticated", Status::unauthenticated(m.clone())),
                    Refusal::Limited(m) => ("limited", Status::resource_exhausted(m.clone())),
                };
                self.audit.refusal(
                    AuditRecord::new(&name, action, "", "", result, refusal.message()).from_peer(request.remote_addr()),
                );
                status
            })
    }

    /// A caller RPC on `workflow`: the identity needs the caller role and the
    /// workflow's permission.
    fn may_call(&self, who: &Identity, workflow: &Workflow, action: &str, target: &str) -> Result<(), Error> {
        let why = if !who.caller {
            format!("`{}` has no caller role; give its key the role \"caller\"", who.name)
        } else if !workflow.allowed_callers.is_empty() && !workflow.allowed_callers.iter().any(|c| **c == *who.name) {
            format!(
                "`{}` may not call workflow `{}`; add it to the workflow's allowed_callers",
                who.name, workflow.name
            )
        } else {
            return Ok(());
        };
        self.audit.refusal(AuditRecord::new(
            &who.name,
            action,
            &workflow.name,
            target,
            "permission_denied",
            &why,
        ));
        Err(Error::PermissionDenied(why))
    }

    /// An admin RPC: the identity needs the admin role. Every admin action is
    /// audited; a refused one here, a done one by its handler.
    fn must_admin(&self, who: &Identity, action: &str, target: &str) -> Result<(), Status> {
        if who.admin {
            return Ok(());
        }
        let why = format!("`{}` has no admin role; {action} needs an admin key", who.name);
        self.audit.record(AuditRecord::new(
            &who.name,
            action,
            "",
            target,
            "permission_denied",
            &why,
        ));
        Err(Status::permission_denied(why))
    }
}

impl RouterService {
    /// A decision is reported on only by the identity that routed it, or by
    /// an admin: otherwise one caller could settle another's call at zero
    /// and have the real report acknowledged as a repeat.
    fn must_own(&self, who: &Identity, record: &crate::budget::ReservationRecord, action: &str) -> Result<(), Error> {
        if record.caller.is_empty() || *record.caller == *who.name || who.admin {
            return Ok(());
        }
        let why = format!(
            "decision {} was routed by another identity; only the identity that routed a call (or an admin) may report on it",
            record.decision_id
        );
        self.audit.record(AuditRecord::new(
            &who.name,
            action,
            &record.workflow,
            &record.decision_id,
            "permission_denied",
            &why,
        ));
        Err(Error::PermissionDenied(why))
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::Unavailable(_) => Error::Unavailable(e.to_string()),
            StoreError::UnknownDecision(_) | StoreError::UnknownEscalation(_) => Error::NotFound(e.to_string()),
            StoreError::AlreadyResolved(_, _) => Error::FailedPrecondition(e.to_string()),
            StoreError::InvalidAmount(_) => Error::InvalidArgument(e.to_string()),
        }
    }
}

/// Validates a decoded request's fields.
pub fn parse_call(req: &pb::RouteRequest) -> Result<RouteCall<'_>, Error> {
    RouteCall::parse(RawRoute {
        workflow: &req.workflow,
        outcome_id: &req.outcome_id,
        task_kind: &req.task_kind,
        messages: req.messages.iter().map(|m| (m.role.as_str(), m.content.as_str())),
        attempt: req.attempt,
        max_output_tokens: req.max_output_tokens,
        deferrable: req.deferrable,
        capabilities: &req.required_capabilities,
        labels: req.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    })
}

/// Validates and plans one decoded request. Pure CPU; safe on any thread.
fn plan_one(
    table: &RuleTable,
    cache: &ContextCache,
    req: &pb::RouteRequest,
    downgrade: bool,
    learning: &Online,
) -> Result<Planned, Error> {
    plan_call(table, cache, parse_call(req)?, downgrade, learning)
}

/// Plans a validated call: the budget's step-down, the cascade after a
/// rejection, and the learned model's predictions.
fn plan_call(
    table: &RuleTable,
    cache: &ContextCache,
    mut call: RouteCall<'_>,
    downgrade: bool,
    learning: &Online,
) -> Result<Planned, Error> {
    call.input.downgrade = downgrade;
    if call.input.attempt > 1 {
        call.input.rejected_tier = learning.rejected_tier(call.workflow, call.outcome_id);
    }
    let learn = LearnWith {
        learner: &learning.learner,
        draw: learning.draw(),
    };
    plan(table, &call, Some(cache), Some(learn), None)
}

impl RouterService {
    async fn route_inner(
        &self,
        who: &Identity,
        req: pb::RouteRequest,
        span: &mut RpcSpan,
    ) -> Result<pb::RouteResponse, Error> {
        let table = self.rules.current();
        let now = jiff::Timestamp::now();
        // Validate first, so that a bad request costs no store round trip.
        let call = parse_call(&req)?;
        let workflow = find_workflow(&table, call.workflow)?;
        self.may_call(who, workflow, "route", &req.outcome_id)?;
        if call.outcome_id.is_empty() && workflow.budget.as_ref().is_some_and(|b| b.per_outcome_nanos.is_some()) {
            return Err(Error::InvalidArgument(format!(
                "workflow `{}` caps the spend of each outcome (per_outcome_usd), so outcome_id is required: \
                 set it to the ticket, PR or task this call works on",
                workflow.name
            )));
        }
        let downgrade = self.budgets.past_soft_threshold(workflow, now).await?;
        let content: usize = call.messages.iter().map(|m| m.content.len()).sum();
        let retry = call.input.attempt > 1;
        let (req, planned) = if content > INLINE_CONTENT_BYTES {
            // The request moves to the blocking pool and is parsed again there;
            // at this size the count dwarfs the parse.
            drop(call);
            let (t, cache, learning) = (table.clone(), self.cache.clone(), self.learning.clone());
            tokio::task::spawn_blocking(move || {
                let p = plan_one(&t, &cache, &req, downgrade, &learning);
                (req, p)
            })
            .await
            .map_err(|e| Error::Unavailable(format!("route task failed: {e}")))?
        } else {
            let p = plan_call(&table, &self.cache, call, downgrade, &self.learning);
            (req, p)
        };
        let mut planned = planned?;
        let d = &planned.decision;
        let model = &table.models[d.model];
        let decision_id = crate::budget::new_decision_id();
        let admission = self
            .budgets
            .admit(
                &Call {
                    decision_id: &decision_id,
                    workflow,
                    outcome_id: &req.outcome_id,
                    labels: req.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
                    model: &model.name,
                    deferrable: req.deferrable,
                    cost_nanos: d.cost_nanos,
                    caller: &who.name,
                    downgraded: d.downgraded_from.is_some(),
                    prices: model.prices(),
                },
                now,
            )
            .await?;
        let (status, escalation_id, reason) = match admission {
            Admission::Routed => {
                record_routed(&self.cache, &table, &planned);
                if let Some(f) = planned.features.take() {
                    let call = Routed {
                        decision_id: &decision_id,
                        workflow: &workflow.name,
                        outcome_id: &req.outcome_id,
                        tier: model.tiers[planned.est.class],
                        retry,
                        explored: d.explored,
                    };
                    self.learning.remember(call, f);
                }
                let status = if d.downgraded_from.is_some() {
                    pb::RouteStatus::Downgraded
                } else {
                    pb::RouteStatus::Routed
                };
                (status, String::new(), d.reason.clone())
            }
            Admission::Escalate(e) => {
                self.audit.record(AuditRecord::new(
                    &who.name,
                    "route",
                    &workflow.name,
                    &e.id,
                    "escalation_required",
                    &e.reason,
                ));
                (
                    pb::RouteStatus::EscalationRequired,
                    e.id.clone(),
                    format!(
                        "{}; escalation {} waits for approval (switchyard escalations approve {} --add-usd N)",
                        e.reason, e.id, e.id
                    ),
                )
            }
            Admission::Denied(why) => {
                self.audit.refusal(AuditRecord::new(
                    &who.name,
                    "route",
                    &workflow.name,
                    &req.outcome_id,
                    "denied",
                    &why,
                ));
                (pb::RouteStatus::Denied, String::new(), why)
            }
        };
        let status_name = match status {
            pb::RouteStatus::Routed => "routed",
            pb::RouteStatus::Downgraded => "downgraded",
            pb::RouteStatus::EscalationRequired => "escalation_required",
            _ => "denied",
        };
        self.metrics
            .decisions
            .add(&[&workflow.name, &model.name, status_name], 1);
        if matches!(status, pb::RouteStatus::Routed | pb::RouteStatus::Downgraded) {
            self.metrics
                .estimated_spend
                .add(&[&workflow.name, &model.name], d.cost_nanos.max(0) as u64);
        }
        if span.is_recording() {
            CallAttrs {
                provider: &model.provider,
                model: &model.name,
                workflow: &workflow.name,
                outcome_id: &req.outcome_id,
                decision_id: &decision_id,
                input_tokens: d.input_tokens,
                output_tokens: d.output_tokens,
                cached_input_tokens: d.cached_tokens,
                cost_nanos: d.cost_nanos,
            }
            .set_on(span);
            span.set(attr::ROUTE_STATUS, status_name);
            span.set(attr::ROUTE_RULE, &d.rule);
            span.set(attr::COMPLEXITY, planned.est.complexity);
            if let Some(left) = self.budgets.remaining_hint(workflow, now) {
                span.set(attr::BUDGET_REMAINING_USD, crate::money::nanos_to_usd(left));
            }
            self.telemetry.remember_route(&decision_id, span);
        }
        Ok(pb::RouteResponse {
            decision_id,
            model: model.name.clone(),
            provider: model.provider.clone(),
            status: status as i32,
            escalation_id,
            complexity: planned.est.complexity,
            input_tokens: d.input_tokens,
            cached_input_tokens: d.cached_tokens,
            estimated_output_tokens: d.output_tokens,
            estimated_cost_nanousd: d.cost_nanos,
            rule: d.rule.clone(),
            reason,
            traceparent: span.traceparent().unwrap_or_default(),
            required_tier: d.required_tier as u32,
            task_class: table.classes[planned.est.class].clone(),
        })
    }

    /// The decision a report names, or the status that says what is wrong.
    async fn decision(&self, decision_id: &str) -> Result<crate::budget::ReservationRecord, Error> {
        if decision_id.is_empty() {
            return Err(Error::InvalidArgument(
                "decision_id is empty: quote the decision_id that Route returned".into(),
            ));
        }
        self.budgets.store.reservation(decision_id).await?.ok_or_else(|| {
            Error::NotFound(StoreError::UnknownDecision(truncate(decision_id, 64).to_string()).to_string())
        })
    }

    async fn report_usage_inner(
        &self,
        who: &Identity,
        u: pb::UsageReport,
        span: &mut RpcSpan,
    ) -> Result<pb::UsageAck, Error> {
        let record = self.decision(&u.decision_id).await?;
        let table = self.rules.current();
        let workflow = table.workflow(&record.workflow);
        // An admin may settle any decision (a stuck agent's, say); a caller
        // needs the workflow's permission and must have routed the call.
        if let (Some(wf), false) = (workflow, who.admin) {
            self.may_call(who, wf, "report_usage", &u.decision_id)?;
        }
        self.must_own(who, &record, "report_usage")?;
        if u.cached_input_tokens > u.input_tokens {
            return Err(Error::InvalidArgument(format!(
                "cached_input_tokens ({}) is more than input_tokens ({}); cached tokens are part of the input",
                u.cached_input_tokens, u.input_tokens
            )));
        }
        const ABSURD_TOKENS: u64 = 100_000_000;
        if u.input_tokens > ABSURD_TOKENS || u.output_tokens > ABSURD_TOKENS {
            return Err(Error::InvalidArgument(format!(
                "token counts above {ABSURD_TOKENS} are not plausible usage"
            )));
        }
        let routed = record.model.as_str();
        let reported = if u.model.is_empty() { routed } else { u.model.as_str() };
        let current = table.model_index(reported).map(|i| (i, &table.models[i]));
        let prices = if reported == routed {
            // Priced as routed: the reservation keeps the prices, so a reload
            // that renamed or removed the model loses nothing.
            match (record.prices, current) {
                (Some(p), _) => p,
                (None, Some((_, m))) => m.prices(),
                (None, None) => {
                    return Err(Error::FailedPrecondition(format!(
                    "decision {} was routed to `{routed}`, which is no longer in the rules, and its record predates \
                         stored prices; add the model back to [[models]] to settle it",
                    record.decision_id
                )))
                }
            }
        } else {
            let policy = workflow.map_or(OtherModelUsage::Refuse, |w| w.other_model_usage);
            let what = format!("routed to `{routed}`, usage reported for `{}`", truncate(reported, 128));
            let (Some((index, m)), OtherModelUsage::Charge) = (current, policy) else {
                let why = match policy {
                    OtherModelUsage::Refuse => format!(
                        "decision {} was {what}: report the model Route chose ({routed}); workflow `{}` refuses usage \
                         for other models (other_model_usage = \"charge\" accepts it, flagged)",
                        record.decision_id, record.workflow
                    ),
                    OtherModelUsage::Charge => format!(
                        "model `{}` is not in the rules, so its usage cannot be priced; report the model Route chose \
                         ({routed}) or add it to [[models]]",
                        truncate(reported, 128)
                    ),
                };
                self.audit.record(AuditRecord::new(
                    &who.name,
                    "report_usage",
                    &record.workflow,
                    &record.decision_id,
                    "refused_other_model",
                    &what,
                ));
                return Err(Error::InvalidArgument(why));
            };
            let outside = workflow.is_some_and(|w| !w.allowed.contains(&index));
            self.metrics.usage_model_mismatch.add(&[&record.workflow], 1);
            self.audit.record(AuditRecord::new(
                &who.name,
                "report_usage",
                &record.workflow,
                &record.decision_id,
                if outside { "outside_policy" } else { "other_model" },
                &if outside {
                    format!("{what}, which the workflow's allowed models exclude; charged at its prices")
                } else {
                    format!("{what}; charged at its prices")
                },
            ));
            m.prices()
        };
        let model_name = reported;
        let provider = current.map_or("", |(_, m)| m.provider.as_str());
        // A failed call is charged for what the provider still bills: the
        // tokens reported (report zeros if the provider billed nothing).
        let cost = prices.cost(
            u.input_tokens,
            u.cached_input_tokens,
            u.output_tokens,
            record.deferrable,
        );
        let usage = Usage {
            input_tokens: u.input_tokens,
            cached_input_tokens: u.cached_input_tokens,
            output_tokens: u.output_tokens,
            failed: u.failed,
        };
        let settled = self
            .budgets
            .store
            .settle(&u.decision_id, cost, &usage, crate::budget::now_ms())
            .await?;
        let cost_nanousd = match settled {
            Settled::Charged { cost_nanos } => {
                let factor_bp = workflow.map_or(20_000, |w| w.overshoot_bp);
                if cost_nanos as i128 * 10_000 > record.amount_nanos as i128 * factor_bp as i128 {
                    self.metrics.usage_overshoot.add(&[&record.workflow], 1);
                    self.audit.record(AuditRecord::new(
                        &who.name,
                        "report_usage",
                        &record.workflow,
                        &record.decision_id,
                        "usage_overshoot",
                        &format!(
                            "charged {} against an estimate of {}: over {}x the estimate ({} input, {} output tokens)",
                            crate::money::format_usd_exact(cost_nanos),
                            crate::money::format_usd_exact(record.amount_nanos),
                            factor_bp as f64 / 10_000.0,
                            u.input_tokens,
                            u.output_tokens
                        ),
                    ));
                }
                let labels = [record.workflow.as_str(), model_name];
                self.metrics.actual_spend.add(&labels, cost_nanos.max(0) as u64);
                let uncached = u.input_tokens - u.cached_input_tokens;
                for (kind, n) in [
                    ("input", uncached),
                    ("cached_input", u.cached_input_tokens),
                    ("output", u.output_tokens),
                ] {
                    self.metrics.tokens.add(&[labels[0], labels[1], kind], n);
                }
                cost_nanos
            }
            Settled::AlreadySettled { cost_nanos } => cost_nanos,
        };
        if span.is_recording() {
            CallAttrs {
                provider,
                model: model_name,
                workflow: &record.workflow,
                outcome_id: &record.outcome_id,
                decision_id: &u.decision_id,
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                cached_input_tokens: u.cached_input_tokens,
                cost_nanos: cost_nanousd,
            }
            .set_on(span);
            span.set(attr::USAGE_FAILED, u.failed);
        }
        Ok(pb::UsageAck { cost_nanousd })
    }

    async fn record_outcome_inner(
        &self,
        who: &Identity,
        o: pb::OutcomeReport,
        span: &mut RpcSpan,
    ) -> Result<pb::OutcomeAck, Error> {
        use crate::outcome::ledger::OutcomeStatus;
        if o.outcome_id.is_empty() || o.outcome_id.len() > 256 || o.outcome_id.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(
                "outcome_id must be 1 to 256 bytes of printable text: the ID the calls carried in Route".into(),
            ));
        }
        let table = self.rules.current();
        let workflow = find_workflow(&table, &o.workflow)?;
        self.may_call(who, workflow, "record_outcome", &o.outcome_id)?;
        let status = match pb::OutcomeStatus::try_from(o.status) {
            Ok(pb::OutcomeStatus::Accepted) => OutcomeStatus::Accepted,
            Ok(pb::OutcomeStatus::Rejected) => OutcomeStatus::Rejected,
            Ok(pb::OutcomeStatus::Corrected) => OutcomeStatus::Corrected,
            Ok(pb::OutcomeStatus::Abandoned) => OutcomeStatus::Abandoned,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "status {} is not an outcome: use OUTCOME_STATUS_ACCEPTED, _REJECTED, _CORRECTED or _ABANDONED",
                    o.status
                )))
            }
        };
        let check = |name: &str, v: Option<f64>| match v {
            Some(x) if !(x.is_finite() && (0.0..=1e12).contains(&x)) => Err(Error::InvalidArgument(format!(
                "{name} is {x}; give a finite amount from 0 to 1e12, or leave it unset"
            ))),
            _ => Ok(v),
        };
        let event = crate::outcome::ledger::OutcomeEvent {
            workflow: workflow.name.clone(),
            outcome_id: o.outcome_id,
            status,
            value_usd: check("value_usd", o.value_usd)?,
            human_minutes: check("human_minutes", o.human_minutes)?,
            at_ms: crate::budget::now_ms(),
        };
        self.budgets.store.record_outcome(&event).await?;
        self.learning.outcome(&event.workflow, &event.outcome_id, event.status);
        self.metrics.outcomes.add(&[&event.workflow, event.status.name()], 1);
        span.set(attr::WORKFLOW, &event.workflow);
        span.set(attr::OUTCOME_ID, &event.outcome_id);
        span.set(attr::OUTCOME_STATUS, event.status.name());
        tracing::debug!(workflow = %event.workflow, outcome = %event.outcome_id, status = event.status.name(), "outcome recorded");
        Ok(pb::OutcomeAck {})
    }

    async fn record_feedback_inner(
        &self,
        who: &Identity,
        f: pb::FeedbackReport,
        span: &mut RpcSpan,
    ) -> Result<pb::FeedbackAck, Error> {
        let record = self.decision(&f.decision_id).await?;
        if let (Some(wf), false) = (self.rules.current().workflow(&record.workflow), who.admin) {
            self.may_call(who, wf, "record_feedback", &f.decision_id)?;
        }
        self.must_own(who, &record, "record_feedback")?;
        let event = crate::outcome::ledger::FeedbackEvent {
            workflow: record.workflow,
            decision_id: f.decision_id,
            model: record.model,
            accepted: f.accepted,
            at_ms: crate::budget::now_ms(),
        };
        self.budgets.store.record_feedback(&event).await?;
        self.learning.feedback(&event.decision_id, event.accepted);
        span.set(attr::WORKFLOW, &event.workflow);
        span.set(attr::DECISION_ID, &event.decision_id);
        span.set(attr::GEN_AI_REQUEST_MODEL, &event.model);
        span.set(attr::FEEDBACK_ACCEPTED, event.accepted);
        Ok(pb::FeedbackAck {})
    }

    async fn get_budget_inner(&self, who: &Identity, r: pb::GetBudgetRequest) -> Result<pb::BudgetStatus, Error> {
        let table = self.rules.current();
        let workflow = find_workflow(&table, &r.workflow)?;
        self.may_call(who, workflow, "get_budget", "")?;
        let Some(b) = &workflow.budget else {
            return Err(Error::FailedPrecondition(format!(
                "workflow `{}` has no budget; add a [workflows.budget] table to enforce and report one",
                workflow.name
            )));
        };
        let stored = self
            .budgets
            .store
            .scope(&period_scope(workflow, b, jiff::Timestamp::now()))
            .await?;
        let st = ScopeState::of_period(b, stored);
        Ok(pb::BudgetStatus {
            workflow: workflow.name.clone(),
            limit_nanousd: st.limit_nanos,
            spent_nanousd: st.spent_nanos,
            reserved_nanousd: st.reserved_nanos,
            remaining_nanousd: st.remaining(),
        })
    }
}

fn escalation_pb(e: Escalation) -> pb::Escalation {
    let iso = |ms: i64| {
        if ms == 0 {
            String::new()
        } else {
            jiff::Timestamp::from_millisecond(ms)
                .map(|t| t.to_string())
                .unwrap_or_default()
        }
    };
    pb::Escalation {
        escalation_id: e.id,
        workflow: e.workflow,
        outcome_id: e.outcome_id,
        caller: e.caller,
        amount_nanousd: e.amount_nanos,
        state: e.state,
        resolved_by: e.resolved_by,
        created_at: iso(e.created_ms),
        resolved_at: iso(e.resolved_ms),
        model: e.model,
    }
}

/// Marks the span failed when the answer is an error; the span ends here.
fn traced<T>(mut span: RpcSpan, r: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
    if let Err(status) = &r {
        span.fail(status);
    }
    r
}

fn respond<T>(counters: Option<&RouteCounters>, r: Result<T, Error>) -> Result<Response<T>, Status> {
    match r {
        Ok(v) => {
            if let Some(c) = counters {
                c.routed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Response::new(v))
        }
        Err(e) => {
            if let Some(c) = counters {
                c.rejected.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(error = %e, "request refused");
            Err(e.into())
        }
    }
}

#[tonic::async_trait]
impl Router for RouterService {
    async fn route(&self, request: Request<pb::RouteRequest>) -> Result<Response<pb::RouteResponse>, Status> {
        let started = std::time::Instant::now();
        let mut span = self.telemetry.start("Route", request.metadata(), None);
        // Not tracing: hand back the caller's own context, so its provider
        // call still joins its trace.
        let echo = if self.telemetry.enabled() {
            String::new()
        } else {
            crate::telemetry::incoming_traceparent(request.metadata())
        };
        let admitted = match self.admit(&request, "route") {
            Ok(a) => a,
            Err(status) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                return traced(span, Err(status));
            }
        };
        let who = &admitted.identity;
        let result = self
            .route_inner(who, request.into_inner(), &mut span)
            .await
            .map(|mut r| {
                if r.traceparent.is_empty() {
                    r.traceparent = echo;
                }
                r
            });
        self.metrics.route_latency.observe(started.elapsed());
        traced(span, respond(Some(&self.counters), result))
    }

    async fn report_usage(&self, request: Request<pb::UsageReport>) -> Result<Response<pb::UsageAck>, Status> {
        let link = self.telemetry.route_link(&request.get_ref().decision_id);
        let mut span = self.telemetry.start("ReportUsage", request.metadata(), link);
        let admitted = match self.admit(&request, "report_usage") {
            Ok(a) => a,
            Err(status) => return traced(span, Err(status)),
        };
        let result = self
            .report_usage_inner(&admitted.identity, request.into_inner(), &mut span)
            .await;
        traced(span, respond(None, result))
    }

    async fn record_outcome(&self, request: Request<pb::OutcomeReport>) -> Result<Response<pb::OutcomeAck>, Status> {
        let mut span = self.telemetry.start("RecordOutcome", request.metadata(), None);
        let admitted = match self.admit(&request, "record_outcome") {
            Ok(a) => a,
            Err(status) => return traced(span, Err(status)),
        };
        let result = self
            .record_outcome_inner(&admitted.identity, request.into_inner(), &mut span)
            .await;
        traced(span, respond(None, result))
    }

    async fn record_feedback(&self, request: Request<pb::FeedbackReport>) -> Result<Response<pb::FeedbackAck>, Status> {
        let mut span = self.telemetry.start("RecordFeedback", request.metadata(), None);
        let admitted = match self.admit(&request, "record_feedback") {
            Ok(a) => a,
            Err(status) => return traced(span, Err(status)),
        };
        let result = self
            .record_feedback_inner(&admitted.identity, request.into_inner(), &mut span)
            .await;
        traced(span, respond(None, result))
    }

    async fn get_report(&self, request: Request<pb::ReportRequest>) -> Result<Response<pb::ReportResponse>, Status> {
        let admitted = self.admit(&request, "get_report")?;
        let who = &admitted.identity;
        self.must_admin(who, "get_report", "")?;
        let r = request.into_inner();
        self.audit
            .record(AuditRecord::new(&who.name, "get_report", &r.workflow, "", "ok", ""));
        let result = async {
            let table = self.rules.current();
            let workflow = if r.workflow.is_empty() {
                None
            } else {
                Some(find_workflow(&table, &r.workflow)?.name.clone())
            };
            let spec = crate::outcome::report::Spec {
                period: crate::outcome::report::parse_period(&r.period).map_err(Error::InvalidArgument)?,
                workflow,
                label: crate::outcome::report::parse_label(&r.label).map_err(Error::InvalidArgument)?,
                now: jiff::Timestamp::now(),
            };
            let report = crate::outcome::report::gather(self.budgets.store.as_ref(), &table, &spec).await?;
            let text = crate::outcome::report::render(&report, &r.format).map_err(Error::InvalidArgument)?;
            Ok(pb::ReportResponse { text })
        }
        .await;
        respond(None, result)
    }

    async fn get_budget(&self, request: Request<pb::GetBudgetRequest>) -> Result<Response<pb::BudgetStatus>, Status> {
        let admitted = self.admit(&request, "get_budget")?;
        respond(
            None,
            self.get_budget_inner(&admitted.identity, request.into_inner()).await,
        )
    }

    async fn list_escalations(
        &self,
        request: Request<pb::ListEscalationsRequest>,
    ) -> Result<Response<pb::ListEscalationsResponse>, Status> {
        let mut span = self.telemetry.start("ListEscalations", request.metadata(), None);
        let admitted = match self.admit(&request, "list_escalations") {
            Ok(a) => a,
            Err(status) => return traced(span, Err(status)),
        };
        let who = &admitted.identity;
        if let Err(status) = self.must_admin(who, "list_escalations", "") {
            return traced(span, Err(status));
        }
        let r = request.into_inner();
        self.audit.record(AuditRecord::new(
            &who.name,
            "list_escalations",
            &r.workflow,
            "",
            "ok",
            "",
        ));
        if !r.workflow.is_empty() {
            span.set(attr::WORKFLOW, &r.workflow);
        }
        let workflow = (!r.workflow.is_empty()).then_some(r.workflow.as_str());
        let result = self
            .budgets
            .store
            .list_escalations(workflow)
            .await
            .map_err(Error::from)
            .map(|v| pb::ListEscalationsResponse {
                escalations: v.into_iter().map(escalation_pb).collect(),
            });
        respond(None, result)
    }

    async fn resolve_escalation(
        &self,
        request: Request<pb::ResolveEscalationRequest>,
    ) -> Result<Response<pb::Escalation>, Status> {
        let mut span = self.telemetry.start("ResolveEscalation", request.metadata(), None);
        let admitted = match self.admit(&request, "resolve_escalation") {
            Ok(a) => a,
            Err(status) => return traced(span, Err(status)),
        };
        let who = &admitted.identity;
        if let Err(status) = self.must_admin(who, "resolve_escalation", &request.get_ref().escalation_id) {
            return traced(span, Err(status));
        }
        let r = request.into_inner();
        span.set(attr::ESCALATION_ID, &r.escalation_id);
        if r.escalation_id.is_empty() {
            return Err(Error::InvalidArgument(
                "escalation_id is empty; list them with `switchyard escalations list`".into(),
            )
            .into());
        }
        if r.approve && !(1..=crate::money::MAX_APPROVAL_NANOS).contains(&r.add_nanousd) {
            let why = if r.add_nanousd <= 0 {
                "an approval must add an amount: set add_nanousd above 0 (`--add-usd` on the command line)".to_string()
            } else {
                format!(
                    "add_nanousd {} is over the {} one approval may add; approve a smaller amount, or raise the \
                     budget in the rules",
                    r.add_nanousd,
                    crate::money::format_usd_exact(crate::money::MAX_APPROVAL_NANOS)
                )
            };
            self.audit.record(AuditRecord::new(
                &who.name,
                "resolve_escalation",
                "",
                &r.escalation_id,
                "invalid_argument",
                &why,
            ));
            return traced(span, Err(Error::InvalidArgument(why).into()));
        }
        let result = self
            .budgets
            .store
            .resolve_escalation(
                &r.escalation_id,
                r.approve,
                r.add_nanousd,
                &who.name,
                &r.reason,
                crate::budget::now_ms(),
            )
            .await
            .map_err(Error::from)
            .inspect_err(|e| {
                self.audit.record(AuditRecord::new(
                    &who.name,
                    "resolve_escalation",
                    "",
                    &r.escalation_id,
                    "failed",
                    &e.to_string(),
                ))
            })
            .map(|e| {
                self.audit.record(AuditRecord::new(
                    &who.name,
                    "resolve_escalation",
                    &e.workflow,
                    &e.id,
                    &e.state,
                    &if r.approve {
                        format!("added {}; {}", crate::money::format_usd_exact(r.add_nanousd), r.reason)
                    } else {
                        r.reason.clone()
                    },
                ));
                self.budgets.refresh_view();
                tracing::info!(escalation = %e.id, state = %e.state, added = e.added_nanos, "escalation resolved");
                span.set(attr::WORKFLOW, &e.workflow);
                span.set(attr::OUTCOME_ID, &e.outcome_id);
                span.set(attr::ESCALATION_STATE, &e.state);
                escalation_pb(e)
            });
        traced(span, respond(None, result))
    }
}
