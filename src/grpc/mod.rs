//! The gRPC edge: the tonic service. Each handler authenticates the caller,
//! converts the protobuf request into a domain type ([`convert`]), calls
//! one use case on [`Sidecar`], and converts the answer back, with the
//! RPC's span; an [`Error`] becomes the status its variant chooses. This is
//! the only module that touches prost types; it never touches a store.
//!
//! - [`auth`]: who is calling (API keys, loopback), and per-caller limits;
//! - [`convert`]: protobuf to domain types and back;
//! - [`edge_status`]: statuses tonic answers itself, made to say what to fix.

pub mod auth;
pub mod convert;
pub mod edge_status;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::access::Identity;
use crate::audit::{Action, Record};
use crate::error::Error;
use crate::route::RouteCall;
use crate::sidecar::{ReportQuery, Sidecar};
use crate::telemetry::{attr, DecisionAttrs, RpcSpan, SpanIds, Telemetry, UsageAttrs};
use auth::{Admitted, Auth};

/// The generated protobuf and gRPC code for `switchyard.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("switchyard.v1");

    /// The encoded descriptors, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("switchyard_descriptor");
}

use pb::router_server::Router;

/// Each RPC's fully qualified method, as gRPC names it on the wire: the
/// span's name and its `rpc.method`.
pub mod method {
    pub const ROUTE: &str = "switchyard.v1.Router/Route";
    pub const REPORT_USAGE: &str = "switchyard.v1.Router/ReportUsage";
    pub const RECORD_OUTCOME: &str = "switchyard.v1.Router/RecordOutcome";
    pub const RECORD_FEEDBACK: &str = "switchyard.v1.Router/RecordFeedback";
    pub const GET_BUDGET: &str = "switchyard.v1.Router/GetBudget";
    pub const LIST_ESCALATIONS: &str = "switchyard.v1.Router/ListEscalations";
    pub const RESOLVE_ESCALATION: &str = "switchyard.v1.Router/ResolveEscalation";
    pub const GET_REPORT: &str = "switchyard.v1.Router/GetReport";
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
    pub sidecar: Arc<Sidecar>,
    pub auth: Arc<Auth>,
    pub telemetry: Arc<Telemetry>,
    pub counters: Arc<RouteCounters>,
}

impl RouterService {
    /// Who is calling, within their limits; a refusal is audited (aggregated
    /// per peer and kind).
    fn admit<T>(&self, request: &Request<T>, action: Action) -> Result<Admitted, Error> {
        self.auth
            .admit(request.metadata(), request.remote_addr())
            .map_err(|(who, e)| {
                let name = who.map_or_else(|| "-".to_string(), |w| w.name.to_string());
                self.sidecar.audit().refusal(
                    Record::new(&name, action, "", "", e.verdict(), &e.to_string()).from_peer(request.remote_addr()),
                );
                e
            })
    }

    /// Every RPC's opening and close: the span (joined to the caller's trace,
    /// or linked to `link`), the caller's admission, the use case, and the
    /// refusal's status and log line. `method` is the fully qualified gRPC
    /// method, `switchyard.v1.Router/Route`; logs name the RPC by its last part.
    async fn rpc<Req, Resp>(
        &self,
        method: &'static str,
        action: Action,
        request: Request<Req>,
        link: Option<SpanIds>,
        handle: impl AsyncFnOnce(&Identity, Req, &mut RpcSpan) -> Result<Resp, Error>,
    ) -> Result<Response<Resp>, Status> {
        let name = method.rsplit('/').next().unwrap_or(method);
        let mut span = self.telemetry.start(method, request.metadata(), link);
        // Log lines about this RPC carry its trace and span IDs, so a log
        // search and a trace join up. The IDs are written out only when
        // debug lines are kept; otherwise the log span is a no-op.
        let hex_ids = span
            .ids()
            .filter(|_| tracing::enabled!(tracing::Level::DEBUG))
            .map(|ids| (ids.trace_id().to_string(), ids.span_id().to_string()));
        let trace_id = hex_ids.as_ref().map(|h| h.0.as_str());
        let span_id = hex_ids.as_ref().map(|h| h.1.as_str());
        let log_span = tracing::debug_span!("rpc", rpc = name, trace_id, span_id);
        let result = match self.admit(&request, action) {
            Ok(admitted) => {
                tracing::Instrument::instrument(
                    handle(&admitted.identity, request.into_inner(), &mut span),
                    log_span.clone(),
                )
                .await
            }
            Err(e) => Err(e),
        };
        let _in_rpc = log_span.enter();
        let answer = result.map(Response::new).map_err(|e| {
            e.log(name);
            Status::from(e)
        });
        span.answered(answer.as_ref().err());
        let code = answer.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        tracing::debug!(rpc = name, code = ?code, trace_id, span_id, "rpc answered");
        answer
    }
}

/// A recorded span, as a metric's exemplar names it.
fn trace_ref(span: &RpcSpan) -> Option<crate::metrics::TraceRef> {
    span.ids()
        .filter(|_| span.is_recording())
        .map(|ids| crate::metrics::TraceRef {
            trace_id: ids.trace_id().to_string(),
            span_id: ids.span_id().to_string(),
        })
}

#[tonic::async_trait]
impl Router for RouterService {
    async fn route(&self, request: Request<pb::RouteRequest>) -> Result<Response<pb::RouteResponse>, Status> {
        let started = std::time::Instant::now();
        // Not tracing: hand back the caller's own context, so its provider
        // call still joins its trace.
        let echo = if self.telemetry.enabled() {
            String::new()
        } else {
            crate::telemetry::incoming_traceparent(request.metadata())
        };
        // The latency histogram's exemplar: the trace of a recorded Route.
        let mut exemplar = None;
        let answer = self
            .rpc(method::ROUTE, Action::Route, request, None, async |who, req, span| {
                let mut call = RouteCall::try_from(req)?;
                call.trace = trace_ref(span);
                let routed = self.sidecar.route(who, call).await?;
                if span.is_recording() {
                    exemplar = trace_ref(span);
                    let (m, d) = (routed.model(), &routed.planned.decision);
                    DecisionAttrs {
                        provider: &m.provider,
                        model: &m.name,
                        api_model: &m.api_model,
                        workflow: &routed.workflow,
                        outcome_id: &routed.outcome_id,
                        decision_id: &routed.decision_id,
                        input_tokens: d.input_tokens,
                        cached_input_tokens: d.cached_tokens,
                        output_tokens: d.output_tokens,
                        cost_nanos: d.cost_nanos,
                        max_tokens: (routed.max_output_tokens > 0).then_some(routed.max_output_tokens),
                    }
                    .set_on(span);
                    span.set(attr::ROUTE_STATUS, routed.status.as_str());
                    span.set(attr::ROUTE_RULE, &d.rule);
                    span.set(attr::COMPLEXITY, routed.planned.est.complexity);
                    span.set(attr::TASK_KIND, &routed.planned.est.task_kind);
                    span.set(attr::TASK_KIND_SOURCE, routed.planned.est.task_kind_source.as_str());
                    if let Some(left) = self.sidecar.router.budget_remaining(&routed) {
                        span.set(attr::BUDGET_REMAINING_USD, crate::money::nanos_to_usd(left));
                    }
                    self.telemetry.remember_route(&routed.decision_id, span);
                }
                let traceparent = span.traceparent().unwrap_or(echo);
                Ok(pb::RouteResponse {
                    traceparent,
                    ..routed.into()
                })
            })
            .await;
        self.sidecar
            .metrics
            .route_latency
            .observe(started.elapsed(), exemplar.as_ref());
        let counter = if answer.is_ok() {
            &self.counters.routed
        } else {
            &self.counters.rejected
        };
        counter.fetch_add(1, Ordering::Relaxed);
        answer
    }

    async fn report_usage(&self, request: Request<pb::UsageReport>) -> Result<Response<pb::UsageAck>, Status> {
        let link = self.telemetry.route_link(&request.get_ref().decision_id);
        self.rpc(
            method::REPORT_USAGE,
            Action::ReportUsage,
            request,
            link,
            async |who, u, span| {
                let decision_id = u.decision_id.clone();
                let report = crate::sidecar::UsageReport {
                    trace: trace_ref(span),
                    ..u.into()
                };
                let s = self.sidecar.report_usage(who, report).await?;
                if span.is_recording() {
                    UsageAttrs {
                        provider: &s.provider,
                        model: &s.model,
                        api_model: s.api_model.as_deref(),
                        workflow: &s.workflow,
                        outcome_id: &s.outcome_id,
                        decision_id: &decision_id,
                        input_tokens: s.usage.input_tokens,
                        cache_read_input_tokens: s.usage.cached_input_tokens,
                        cache_write_input_tokens: s.usage.cache_write_input_tokens,
                        output_tokens: s.usage.output_tokens,
                        cost_nanos: s.cost_nanos,
                    }
                    .set_on(span);
                    span.set(attr::USAGE_FAILED, s.usage.failed);
                }
                Ok(pb::UsageAck {
                    cost_nanousd: s.cost_nanos,
                })
            },
        )
        .await
    }

    async fn record_outcome(&self, request: Request<pb::OutcomeReport>) -> Result<Response<pb::OutcomeAck>, Status> {
        self.rpc(
            method::RECORD_OUTCOME,
            Action::RecordOutcome,
            request,
            None,
            async |who, o, span| {
                let event = self.sidecar.record_outcome(who, o.into()).await?;
                span.set(attr::WORKFLOW, &event.workflow);
                span.set(attr::OUTCOME_ID, &event.outcome_id);
                span.set(attr::OUTCOME_STATUS, event.status.name());
                Ok(pb::OutcomeAck {})
            },
        )
        .await
    }

    async fn record_feedback(&self, request: Request<pb::FeedbackReport>) -> Result<Response<pb::FeedbackAck>, Status> {
        self.rpc(
            method::RECORD_FEEDBACK,
            Action::RecordFeedback,
            request,
            None,
            async |who, f, span| {
                let event = self.sidecar.record_feedback(who, f.decision_id, f.accepted).await?;
                span.set(attr::WORKFLOW, &event.workflow);
                span.set(attr::DECISION_ID, &event.decision_id);
                span.set(attr::MODEL, &event.model);
                span.set(attr::FEEDBACK_ACCEPTED, event.accepted);
                Ok(pb::FeedbackAck {})
            },
        )
        .await
    }

    async fn get_budget(&self, request: Request<pb::GetBudgetRequest>) -> Result<Response<pb::BudgetStatus>, Status> {
        self.rpc(
            method::GET_BUDGET,
            Action::GetBudget,
            request,
            None,
            async |who, r, span| {
                let (workflow, st) = self.sidecar.budget(who, &r.workflow).await?;
                span.set(attr::WORKFLOW, &workflow);
                Ok(convert::budget_status(workflow, st))
            },
        )
        .await
    }

    async fn list_escalations(
        &self,
        request: Request<pb::ListEscalationsRequest>,
    ) -> Result<Response<pb::ListEscalationsResponse>, Status> {
        self.rpc(
            method::LIST_ESCALATIONS,
            Action::ListEscalations,
            request,
            None,
            async |who, r, span| {
                if !r.workflow.is_empty() {
                    span.set(attr::WORKFLOW, &r.workflow);
                }
                let list = self.sidecar.list_escalations(who, &r.workflow).await?;
                Ok(pb::ListEscalationsResponse {
                    escalations: list.into_iter().map(Into::into).collect(),
                })
            },
        )
        .await
    }

    async fn resolve_escalation(
        &self,
        request: Request<pb::ResolveEscalationRequest>,
    ) -> Result<Response<pb::Escalation>, Status> {
        self.rpc(
            method::RESOLVE_ESCALATION,
            Action::ResolveEscalation,
            request,
            None,
            async |who, r, span| {
                span.set(attr::ESCALATION_ID, &r.escalation_id);
                let e = self.sidecar.resolve_escalation(who, r.into()).await?;
                span.set(attr::WORKFLOW, &e.workflow);
                span.set(attr::OUTCOME_ID, &e.outcome_id);
                span.set(attr::ESCALATION_STATE, e.state.as_str());
                Ok(e.into())
            },
        )
        .await
    }

    async fn get_report(&self, request: Request<pb::ReportRequest>) -> Result<Response<pb::ReportResponse>, Status> {
        self.rpc(
            method::GET_REPORT,
            Action::GetReport,
            request,
            None,
            async |who, r, _| {
                let text = self
                    .sidecar
                    .report(
                        who,
                        ReportQuery {
                            workflow: r.workflow,
                            period: r.period,
                            label: r.label,
                            format: r.format,
                        },
                    )
                    .await?;
                Ok(pb::ReportResponse { text })
            },
        )
        .await
    }
}
