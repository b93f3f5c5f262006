//! Protobuf to domain types and back. Strings are moved, not copied: a
//! request is decoded once by tonic and its text moves into the domain.

use super::pb;
use crate::error::Error;
use crate::ledger::OutcomeStatus;
use crate::route::{RawRoute, RouteCall, RouteStatus, Routed};
use crate::sidecar::{OutcomeReport, Resolution, UsageReport};
use crate::store::{Escalation, ScopeState};

impl TryFrom<pb::RouteRequest> for RouteCall {
    type Error = Error;

    fn try_from(r: pb::RouteRequest) -> Result<RouteCall, Error> {
        RouteCall::new(RawRoute {
            workflow: r.workflow,
            outcome_id: r.outcome_id,
            task_kind: r.task_kind,
            messages: r.messages.into_iter().map(|m| (m.role, m.content)),
            attempt: r.attempt,
            max_output_tokens: r.max_output_tokens,
            deferrable: r.deferrable,
            capabilities: r.required_capabilities.into_iter(),
            labels: r.labels.into_iter(),
        })
    }
}

impl From<RouteStatus> for pb::RouteStatus {
    fn from(s: RouteStatus) -> pb::RouteStatus {
        match s {
            RouteStatus::Routed => pb::RouteStatus::Routed,
            RouteStatus::Downgraded => pb::RouteStatus::Downgraded,
            RouteStatus::EscalationRequired => pb::RouteStatus::EscalationRequired,
            RouteStatus::Denied => pb::RouteStatus::Denied,
        }
    }
}

impl From<Routed> for pb::RouteResponse {
    fn from(r: Routed) -> pb::RouteResponse {
        let (model, provider, provider_model) = {
            let m = r.model();
            (m.name.clone(), m.provider.clone(), m.api_model.clone())
        };
        let task_class = r.task_class().to_string();
        let est = &r.planned.est;
        let (task_kind, task_kind_source) = (est.task_kind.clone(), est.task_kind_source.as_str().to_string());
        let d = r.planned.decision;
        pb::RouteResponse {
            decision_id: r.decision_id,
            model,
            provider,
            status: pb::RouteStatus::from(r.status) as i32,
            escalation_id: r.escalation_id,
            complexity: r.planned.est.complexity,
            input_tokens: d.input_tokens,
            cached_input_tokens: d.cached_tokens,
            estimated_output_tokens: d.output_tokens,
            estimated_cost_nanousd: d.cost_nanos,
            rule: d.rule,
            reason: r.reason,
            // Set by the edge from the Route's span.
            traceparent: String::new(),
            required_tier: d.required_tier as u32,
            task_class,
            provider_model,
            task_kind,
            task_kind_source,
        }
    }
}

impl From<pb::UsageReport> for UsageReport {
    fn from(u: pb::UsageReport) -> UsageReport {
        UsageReport {
            decision_id: u.decision_id,
            model: u.model,
            input_tokens: u.input_tokens,
            cached_input_tokens: u.cached_input_tokens,
            cache_write_input_tokens: u.cache_write_input_tokens,
            output_tokens: u.output_tokens,
            failed: u.failed,
            trace: None,
        }
    }
}

impl From<pb::OutcomeReport> for OutcomeReport {
    fn from(o: pb::OutcomeReport) -> OutcomeReport {
        let status = match pb::OutcomeStatus::try_from(o.status) {
            Ok(pb::OutcomeStatus::Accepted) => Some(OutcomeStatus::Accepted),
            Ok(pb::OutcomeStatus::Rejected) => Some(OutcomeStatus::Rejected),
            Ok(pb::OutcomeStatus::Corrected) => Some(OutcomeStatus::Corrected),
            Ok(pb::OutcomeStatus::Abandoned) => Some(OutcomeStatus::Abandoned),
            Ok(pb::OutcomeStatus::Unspecified) | Err(_) => None,
        };
        OutcomeReport {
            outcome_id: o.outcome_id,
            workflow: o.workflow,
            status,
            value_usd: o.value_usd,
            human_minutes: o.human_minutes,
        }
    }
}

impl From<pb::ResolveEscalationRequest> for Resolution {
    fn from(r: pb::ResolveEscalationRequest) -> Resolution {
        Resolution {
            escalation_id: r.escalation_id,
            approve: r.approve,
            add_nanos: r.add_nanousd,
            reason: r.reason,
        }
    }
}

impl From<Escalation> for pb::Escalation {
    fn from(e: Escalation) -> pb::Escalation {
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
            state: e.state.as_str().to_string(),
            resolved_by: e.resolved_by,
            created_at: iso(e.created_ms),
            resolved_at: iso(e.resolved_ms),
            model: e.model,
        }
    }
}

/// A workflow's budget as `GetBudget` answers it.
pub fn budget_status(workflow: String, st: ScopeState) -> pb::BudgetStatus {
    pb::BudgetStatus {
        workflow,
        limit_nanousd: st.limit_nanos,
        spent_nanousd: st.spent_nanos,
        reserved_nanousd: st.reserved_nanos,
        remaining_nanousd: st.remaining(),
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        tonic::Status::new(e.code(), e.to_string())
    }
}
