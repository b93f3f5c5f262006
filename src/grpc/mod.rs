//! The gRPC edge: the tonic service, protobuf-to-domain conversion, and the
//! mapping of [`Error`] onto gRPC status codes. This is the only module that
//! touches prost types.

pub mod size_limit;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::estimate::cache::ContextCache;
use crate::route::{plan, RawRoute, RouteCall};
use crate::rules::reload::Rules;

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
        }
    }
}

/// Counters the admin port reports.
#[derive(Debug, Default)]
pub struct RouteCounters {
    pub routed: AtomicU64,
    pub rejected: AtomicU64,
}

/// The `switchyard.v1.Router` service.
#[derive(Clone)]
pub struct RouterService {
    rules: Arc<Rules>,
    cache: Arc<ContextCache>,
    counters: Arc<RouteCounters>,
}

impl RouterService {
    pub fn new(rules: Arc<Rules>, cache: Arc<ContextCache>, counters: Arc<RouteCounters>) -> Self {
        RouterService { rules, cache, counters }
    }
}

/// Decides one decoded request. Pure CPU; safe to run on any thread.
pub fn route_one(rules: &Rules, cache: &ContextCache, req: &pb::RouteRequest) -> Result<pb::RouteResponse, Error> {
    let call = RouteCall::parse(RawRoute {
        workflow: &req.workflow,
        outcome_id: &req.outcome_id,
        task_kind: &req.task_kind,
        messages: req.messages.iter().map(|m| (m.role.as_str(), m.content.as_str())),
        attempt: req.attempt,
        max_output_tokens: req.max_output_tokens,
        deferrable: req.deferrable,
        capabilities: &req.required_capabilities,
        labels: req.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    })?;
    let table = rules.current();
    let (est, decision) = plan(&table, &call, Some(cache), None)?;
    let model = &table.models[decision.model];
    Ok(pb::RouteResponse {
        decision_id: uuid::Uuid::now_v7().to_string(),
        model: model.name.clone(),
        provider: model.provider.clone(),
        status: pb::RouteStatus::Routed as i32,
        escalation_id: String::new(),
        complexity: est.complexity,
        input_tokens: decision.input_tokens,
        cached_input_tokens: decision.cached_tokens,
        estimated_output_tokens: decision.output_tokens,
        estimated_cost_nanousd: decision.cost_nanos,
        rule: decision.rule,
        reason: decision.reason,
        traceparent: String::new(),
        required_tier: decision.required_tier as u32,
        task_class: table.classes[est.class].clone(),
    })
}

#[tonic::async_trait]
impl Router for RouterService {
    async fn route(&self, request: Request<pb::RouteRequest>) -> Result<Response<pb::RouteResponse>, Status> {
        let req = request.into_inner();
        let content: usize = req.messages.iter().map(|m| m.content.len()).sum();
        let result = if content > INLINE_CONTENT_BYTES {
            let (rules, cache) = (self.rules.clone(), self.cache.clone());
            tokio::task::spawn_blocking(move || route_one(&rules, &cache, &req))
                .await
                .map_err(|e| Status::internal(format!("route task failed: {e}")))?
        } else {
            route_one(&self.rules, &self.cache, &req)
        };
        match result {
            Ok(resp) => {
                self.counters.routed.fetch_add(1, Ordering::Relaxed);
                Ok(Response::new(resp))
            }
            Err(e) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "route refused");
                Err(e.into())
            }
        }
    }

    async fn report_usage(&self, _: Request<pb::UsageReport>) -> Result<Response<pb::UsageAck>, Status> {
        Err(Error::Unimplemented(
            "ReportUsage is not available in this build: usage settlement arrives with budgets; Route works now",
        )
        .into())
    }

    async fn record_outcome(&self, _: Request<pb::OutcomeReport>) -> Result<Response<pb::OutcomeAck>, Status> {
        Err(Error::Unimplemented(
            "RecordOutcome is not available in this build: outcomes arrive with the outcome ledger; Route works now",
        )
        .into())
    }

    async fn record_feedback(&self, _: Request<pb::FeedbackReport>) -> Result<Response<pb::FeedbackAck>, Status> {
        Err(Error::Unimplemented(
            "RecordFeedback is not available in this build: feedback arrives with the outcome ledger; Route works now",
        )
        .into())
    }

    async fn get_budget(&self, _: Request<pb::GetBudgetRequest>) -> Result<Response<pb::BudgetStatus>, Status> {
        Err(Error::Unimplemented("GetBudget is not available in this build: budgets are not enforced yet").into())
    }

    async fn list_escalations(
        &self,
        _: Request<pb::ListEscalationsRequest>,
    ) -> Result<Response<pb::ListEscalationsResponse>, Status> {
        Err(
            Error::Unimplemented("ListEscalations is not available in this build: escalations arrive with budgets")
                .into(),
        )
    }

    async fn resolve_escalation(
        &self,
        _: Request<pb::ResolveEscalationRequest>,
    ) -> Result<Response<pb::Escalation>, Status> {
        Err(
            Error::Unimplemented("ResolveEscalation is not available in this build: escalations arrive with budgets")
                .into(),
        )
    }
}
