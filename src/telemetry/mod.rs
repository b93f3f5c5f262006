//! Traces: a span for every RPC, exported over OTLP/gRPC in batches, joined
//! to the caller's trace through `traceparent`.
//!
//! Export is on when an OTLP endpoint is configured the standard way
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`),
//! unless `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. The rest
//! of the standard variables are read too: `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and `_ARG` (`sampler`),
//! and the exporter's and batch processor's (`otlp`).
//!
//! Spans are made through the OpenTelemetry API and SDK and exported by
//! `opentelemetry-otlp` over gRPC (tonic), with the SDK's batch processor.
//! The SDK reads the variables itself; `vars` checks them first, so that a
//! value the SDK would ignore with a warning stops `serve` instead.
//! docs/benchmarks.md, "Export cost", gives what export costs a Route.
//!
//! Prompt text is never an attribute; only counts, names, IDs and money.

mod vars;
mod watch;

pub use watch::ExportCounts;

use std::time::{Duration, Instant};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Link, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, InstrumentationScope, Key, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::recent::Recent;

/// Every attribute name Switchyard puts on a span. The versions of the
/// conventions followed are named in docs/telemetry.md.
pub mod attr {
    // gRPC server spans (semantic conventions, RPC spans).
    pub const RPC_SYSTEM_NAME: &str = "rpc.system.name";
    pub const RPC_METHOD: &str = "rpc.method";
    pub const RPC_RESPONSE_STATUS_CODE: &str = "rpc.response.status_code";
    pub const ERROR_TYPE: &str = "error.type";
    // GenAI (semantic-conventions-genai): on Route, the decision; on
    // ReportUsage, the call's actual usage.
    pub const GEN_AI_PROVIDER_NAME: &str = "gen_ai.provider.name";
    pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
    pub const GEN_AI_REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
    pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
    pub const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    pub const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    pub const GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: &str = "gen_ai.usage.cache_read.input_tokens";
    pub const GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS: &str = "gen_ai.usage.cache_write.input_tokens";
    // Route's forecasts: not usage, so not under `gen_ai.usage`.
    pub const ESTIMATE_INPUT_TOKENS: &str = "switchyard.estimate.input_tokens";
    pub const ESTIMATE_CACHED_INPUT_TOKENS: &str = "switchyard.estimate.cached_input_tokens";
    pub const ESTIMATE_OUTPUT_TOKENS: &str = "switchyard.estimate.output_tokens";
    pub const ESTIMATE_COST_USD: &str = "switchyard.estimate.cost_usd";
    pub const MODEL: &str = "switchyard.model";
    pub const WORKFLOW: &str = "switchyard.workflow";
    pub const OUTCOME_ID: &str = "switchyard.outcome.id";
    pub const OUTCOME_STATUS: &str = "switchyard.outcome.status";
    pub const DECISION_ID: &str = "switchyard.decision.id";
    pub const COST_USD: &str = "switchyard.cost.usd";
    pub const ROUTE_STATUS: &str = "switchyard.route.status";
    pub const ROUTE_RULE: &str = "switchyard.route.rule";
    pub const COMPLEXITY: &str = "switchyard.complexity";
    pub const TASK_KIND: &str = "switchyard.task_kind";
    pub const TASK_KIND_SOURCE: &str = "switchyard.task_kind.source";
    pub const BUDGET_REMAINING_USD: &str = "switchyard.budget.remaining.usd";
    pub const FEEDBACK_ACCEPTED: &str = "switchyard.feedback.accepted";
    pub const ESCALATION_ID: &str = "switchyard.escalation.id";
    pub const ESCALATION_STATE: &str = "switchyard.escalation.state";
    pub const USAGE_FAILED: &str = "switchyard.usage.failed";
}

/// The GenAI conventions' well-known `gen_ai.provider.name` for a provider
/// as the rules name it; a name the conventions do not know is passed on.
pub fn provider_name(rules_name: &str) -> &str {
    match rules_name {
        "google" | "gemini" => "gcp.gemini",
        "vertex" | "vertex_ai" => "gcp.vertex_ai",
        "mistral" => "mistral_ai",
        "xai" => "x_ai",
        "bedrock" | "aws" => "aws.bedrock",
        "azure" | "azure_openai" => "azure.ai.openai",
        "watsonx" => "ibm.watsonx.ai",
        other => other,
    }
}

/// The name the RPC conventions give a gRPC status code (`OK`,
/// `RESOURCE_EXHAUSTED`, …), as `rpc.response.status_code` and
/// `error.type` carry it.
pub fn status_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Whether a server span with this status is an error: only the codes the
/// RPC conventions name for servers. A refusal the caller can act on (a
/// budget, a bad argument, a missing key) is the server working.
pub fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code as C;
    matches!(
        code,
        C::Unknown | C::DeadlineExceeded | C::Unimplemented | C::Internal | C::Unavailable | C::DataLoss
    )
}

/// An attribute's value. Strings are borrowed, and copied only when the
/// span is recording.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Str(&'a str),
    Int(i64),
    Double(f64),
    Bool(bool),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(s: &'a str) -> Self {
        Value::Str(s)
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(s: &'a String) -> Self {
        Value::Str(s)
    }
}

impl From<i64> for Value<'_> {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<u64> for Value<'_> {
    fn from(i: u64) -> Self {
        Value::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}

impl From<u32> for Value<'_> {
    fn from(i: u32) -> Self {
        Value::Int(i64::from(i))
    }
}

impl From<f64> for Value<'_> {
    fn from(d: f64) -> Self {
        Value::Double(d)
    }
}

impl From<bool> for Value<'_> {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

/// What Route says of its decision: the model chosen, and its forecasts
/// of the call's tokens and cost. None of it is usage.
pub struct DecisionAttrs<'a> {
    /// As the rules name it.
    pub provider: &'a str,
    /// The catalogue name.
    pub model: &'a str,
    /// The ID the provider is called with.
    pub api_model: &'a str,
    pub workflow: &'a str,
    pub outcome_id: &'a str,
    pub decision_id: &'a str,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub cost_nanos: i64,
    /// The request's output limit, when it set one.
    pub max_tokens: Option<u32>,
}

impl DecisionAttrs<'_> {
    pub fn set_on(&self, span: &mut RpcSpan) {
        span.set(attr::GEN_AI_PROVIDER_NAME, provider_name(self.provider));
        span.set(attr::GEN_AI_REQUEST_MODEL, self.api_model);
        span.set(attr::MODEL, self.model);
        span.set(attr::ESTIMATE_INPUT_TOKENS, self.input_tokens);
        span.set(attr::ESTIMATE_CACHED_INPUT_TOKENS, self.cached_input_tokens);
        span.set(attr::ESTIMATE_OUTPUT_TOKENS, self.output_tokens);
        span.set(attr::ESTIMATE_COST_USD, crate::money::nanos_to_usd(self.cost_nanos));
        span.set(attr::WORKFLOW, self.workflow);
        span.set(attr::OUTCOME_ID, self.outcome_id);
        span.set(attr::DECISION_ID, self.decision_id);
        if let Some(n) = self.max_tokens {
            span.set(attr::GEN_AI_REQUEST_MAX_TOKENS, i64::from(n));
        }
    }
}

/// What ReportUsage says of a call: the tokens it used and what it cost.
pub struct UsageAttrs<'a> {
    /// As the rules name it; empty when the model has left the rules.
    pub provider: &'a str,
    /// The catalogue name of the model charged.
    pub model: &'a str,
    /// Its provider ID, when the model is still in the rules.
    pub api_model: Option<&'a str>,
    pub workflow: &'a str,
    pub outcome_id: &'a str,
    pub decision_id: &'a str,
    /// All input, cache reads and writes included.
    pub input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_write_input_tokens: u64,
    pub output_tokens: u64,
    pub cost_nanos: i64,
}

impl UsageAttrs<'_> {
    pub fn set_on(&self, span: &mut RpcSpan) {
        if !self.provider.is_empty() {
            span.set(attr::GEN_AI_PROVIDER_NAME, provider_name(self.provider));
        }
        let id = self.api_model.unwrap_or(self.model);
        span.set(attr::GEN_AI_REQUEST_MODEL, id);
        span.set(attr::GEN_AI_RESPONSE_MODEL, id);
        span.set(attr::MODEL, self.model);
        span.set(attr::GEN_AI_USAGE_INPUT_TOKENS, self.input_tokens);
        span.set(attr::GEN_AI_USAGE_OUTPUT_TOKENS, self.output_tokens);
        span.set(attr::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, self.cache_read_input_tokens);
        span.set(
            attr::GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS,
            self.cache_write_input_tokens,
        );
        span.set(attr::COST_USD, crate::money::nanos_to_usd(self.cost_nanos));
        span.set(attr::WORKFLOW, self.workflow);
        span.set(attr::OUTCOME_ID, self.outcome_id);
        span.set(attr::DECISION_ID, self.decision_id);
    }
}

/// A span's identity and trace flags, as `traceparent` carries them.
pub type SpanIds = SpanContext;

/// The W3C `traceparent` (version 00) of a span, written into a stack
/// buffer: this runs on every traced Route.
pub fn traceparent(ids: &SpanContext) -> String {
    let mut b = *b"00-00000000000000000000000000000000-0000000000000000-00";
    // The lengths are fixed: each slice is exactly twice its bytes.
    let (trace, span, flags) = (
        hex::encode_to_slice(ids.trace_id().to_bytes(), &mut b[3..35]),
        hex::encode_to_slice(ids.span_id().to_bytes(), &mut b[36..52]),
        hex::encode_to_slice([ids.trace_flags().to_u8()], &mut b[53..55]),
    );
    debug_assert!(trace.is_ok() && span.is_ok() && flags.is_ok());
    String::from_utf8_lossy(&b).into_owned()
}

/// gRPC metadata as the propagator reads it.
struct Metadata<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The caller's trace context from `traceparent` and `tracestate`: the
/// SDK's W3C propagator is the one parser.
fn caller_context(metadata: &tonic::metadata::MetadataMap) -> Option<SpanContext> {
    if !metadata.contains_key("traceparent") {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&Metadata(metadata));
    let parent = cx.span().span_context().clone();
    parent.is_valid().then_some(parent)
}

/// The tracer, or nothing when export is off.
pub struct Telemetry {
    pipeline: Option<Pipeline>,
    /// Spans exported and lost, for `/metrics`.
    pub counts: std::sync::Arc<ExportCounts>,
    /// Each recent Route span, by decision ID, so ReportUsage can link to it.
    route_spans: RouteSpans,
}

struct Pipeline {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// Recent Route spans by decision ID, with when they were made: at most
/// this many, each kept for the link TTL.
struct RouteSpans {
    recent: Recent<u128, (SpanContext, Instant)>,
    ttl: Duration,
}

const ROUTE_SPANS: u64 = 131_072;

impl RouteSpans {
    fn new(ttl: Duration) -> RouteSpans {
        RouteSpans {
            // An unused entry lives between half of Recent's ttl and all of
            // it, so Recent gets twice the link TTL; `get` applies the TTL exactly.
            recent: Recent::new(ROUTE_SPANS, ttl.max(Duration::from_millis(1)) * 2),
            ttl,
        }
    }

    /// Decision IDs are UUIDs, kept as their 128 bits; any other string
    /// was not made by a Route here and has no span to link to.
    fn key(decision_id: &str) -> Option<u128> {
        uuid::Uuid::try_parse(decision_id).ok().map(|u| u.as_u128())
    }

    fn insert(&self, decision_id: &str, ids: SpanContext) {
        if let Some(k) = RouteSpans::key(decision_id) {
            self.recent.insert(k, (ids, Instant::now()));
        }
    }

    fn get(&self, decision_id: &str) -> Option<SpanContext> {
        let k = RouteSpans::key(decision_id)?;
        self.recent
            .read(&k, |(ids, at)| (at.elapsed() < self.ttl).then(|| ids.clone()))
            .flatten()
    }
}

impl Telemetry {
    /// No spans at all.
    pub fn off() -> Telemetry {
        Telemetry {
            pipeline: None,
            counts: Default::default(),
            route_spans: RouteSpans::new(Duration::ZERO),
        }
    }

    /// Spans made by `provider` (tests give it an in-memory exporter).
    fn with_provider(
        provider: SdkTracerProvider,
        link_ttl: Duration,
        counts: std::sync::Arc<ExportCounts>,
    ) -> Telemetry {
        let scope = InstrumentationScope::builder("switchyard")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let tracer = provider.tracer_with_scope(scope);
        Telemetry {
            pipeline: Some(Pipeline { provider, tracer }),
            counts,
            route_spans: RouteSpans::new(link_ttl),
        }
    }

    /// Starts export if the environment asks for it. Must run inside the
    /// Tokio runtime, which the exporter's gRPC channel uses. A variable
    /// that cannot be used is an error that names it and says what to write
    /// instead: `serve` exits 64 on it before binding a port, rather than
    /// run with traces silently off.
    pub fn from_env(link_ttl: Duration) -> Result<Telemetry, String> {
        let env = |name: &str| std::env::var(name).ok();
        if !vars::export_wanted(env)? {
            return Ok(Telemetry::off());
        }
        // The exporter reads OTEL_EXPORTER_OTLP_*, the batch processor
        // OTEL_BSP_*, the sampler OTEL_TRACES_SAMPLER[_ARG], the resource
        // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES. The collector is
        // connected to lazily: an unreachable one costs failed exports,
        // never a failed start.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| format!("the OTLP exporter cannot be built: {e}"))?;
        let mut resource = Resource::builder();
        if !vars::service_named(env) {
            resource = resource.with_service_name("switchyard");
        }
        let counts = std::sync::Arc::new(ExportCounts::default());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(watch::Watched::new(exporter, counts.clone()))
            .with_resource(resource.build())
            .build();
        tracing::info!("traces are exported over OTLP/gRPC");
        Ok(Telemetry::with_provider(provider, link_ttl, counts))
    }

    pub fn enabled(&self) -> bool {
        self.pipeline.is_some()
    }

    /// Starts a server span for `method`, the fully qualified gRPC method
    /// (`switchyard.v1.Router/Route`), which names the span and is its
    /// `rpc.method`: a child of the caller's trace context when the metadata
    /// carries one, linked to `link` if given.
    pub fn start(
        &self,
        method: &'static str,
        metadata: &tonic::metadata::MetadataMap,
        link: Option<SpanContext>,
    ) -> RpcSpan {
        let Some(p) = &self.pipeline else {
            return RpcSpan { live: None };
        };
        let parent = match caller_context(metadata) {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        // Given at creation, so that a sampler sees them.
        let mut builder = p
            .tracer
            .span_builder(method)
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new(attr::RPC_SYSTEM_NAME, "grpc"),
                KeyValue::new(attr::RPC_METHOD, method),
            ]);
        if let Some(link) = link {
            builder = builder.with_links(vec![Link::with_context(link)]);
        }
        RpcSpan {
            live: Some(p.tracer.build_with_context(builder, &parent)),
        }
    }

    /// Remembers a Route span for the decision's later ReportUsage.
    pub fn remember_route(&self, decision_id: &str, span: &RpcSpan) {
        if let Some(ids) = span.ids() {
            self.route_spans.insert(decision_id, ids);
        }
    }

    /// The Route span that made the decision, if this sidecar did.
    pub fn route_link(&self, decision_id: &str) -> Option<SpanContext> {
        if !self.enabled() {
            return None;
        }
        self.route_spans.get(decision_id)
    }

    /// Exports what is queued and stops, within `grace`. Blocks: call it
    /// off the runtime's workers (the export itself runs on the runtime).
    pub fn shutdown(&self, grace: Duration) {
        if let Some(p) = &self.pipeline {
            if let Err(e) = p.provider.shutdown_with_timeout(grace) {
                tracing::warn!("flushing traces at shutdown: {e}");
            }
        }
    }
}

/// One RPC's span (or nothing). Ends, and is queued for export, when dropped.
pub struct RpcSpan {
    live: Option<opentelemetry_sdk::trace::Span>,
}

impl RpcSpan {
    /// Whether attributes set now are kept (the span exists and was sampled).
    pub fn is_recording(&self) -> bool {
        use opentelemetry::trace::Span as _;
        self.live.as_ref().is_some_and(|s| s.is_recording())
    }

    /// Records an attribute.
    pub fn set<'a>(&mut self, key: &'static str, value: impl Into<Value<'a>>) {
        use opentelemetry::trace::Span as _;
        let Some(span) = self.live.as_mut().filter(|s| s.is_recording()) else {
            return;
        };
        let value = match value.into() {
            Value::Str(s) => opentelemetry::Value::from(s.to_string()),
            Value::Int(i) => opentelemetry::Value::I64(i),
            Value::Double(d) => opentelemetry::Value::F64(d),
            Value::Bool(b) => opentelemetry::Value::Bool(b),
        };
        span.set_attribute(KeyValue::new(Key::from_static_str(key), value));
    }

    /// Records how the RPC ended: `rpc.response.status_code` always, and for
    /// the codes a server span counts as errors ([`is_server_error`]) an
    /// error status with the message (never prompt text) and `error.type`.
    /// Any other refusal leaves the status unset: the server did its job.
    pub fn answered(&mut self, status: Option<&tonic::Status>) {
        use opentelemetry::trace::Span as _;
        let Some(span) = self.live.as_mut().filter(|s| s.is_recording()) else {
            return;
        };
        let code = status.map_or(tonic::Code::Ok, tonic::Status::code);
        let name = status_code_name(code);
        span.set_attribute(KeyValue::new(attr::RPC_RESPONSE_STATUS_CODE, name));
        if let Some(status) = status.filter(|s| is_server_error(s.code())) {
            span.set_attribute(KeyValue::new(attr::ERROR_TYPE, name));
            span.set_status(Status::error(format!("{name}: {}", status.message())));
        }
    }

    /// The span's IDs, when there is a span (export on), sampled or not.
    pub fn ids(&self) -> Option<SpanContext> {
        use opentelemetry::trace::Span as _;
        self.live.as_ref().map(|s| s.span_context().clone())
    }

    /// The W3C `traceparent` of this span.
    pub fn traceparent(&self) -> Option<String> {
        use opentelemetry::trace::Span as _;
        self.live.as_ref().map(|s| traceparent(s.span_context()))
    }
}

/// The caller's `traceparent`, echoed when Switchyard does not trace, so the
/// agent's provider call still joins the agent's own trace. Only a valid one.
pub fn incoming_traceparent(metadata: &tonic::metadata::MetadataMap) -> String {
    match caller_context(metadata) {
        Some(_) => metadata
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        None => String::new(),
    }
}

/// The trace and span IDs, in hex, that a valid `traceparent` names (for
/// tests and tools), read by the same propagator as every RPC's.
pub fn parse_traceparent(tp: &str) -> Option<(String, String)> {
    let mut m = tonic::metadata::MetadataMap::new();
    m.insert("traceparent", tp.parse().ok()?);
    caller_context(&m).map(|sc| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

#[cfg(test)]
mod tests;
