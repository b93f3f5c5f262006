//! Traces: a span for every RPC, exported over OTLP/gRPC in batches, joined
//! to the caller's trace through `traceparent`.
//!
//! Export is on when an OTLP endpoint is configured the standard way
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`),
//! unless `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. The
//! exporter (`otlp`) reads the endpoint, `OTEL_EXPORTER_OTLP_HEADERS` and
//! `_TIMEOUT`; the SDK reads the rest: `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and `_ARG`, and the
//! batch processor's `OTEL_BSP_*`. Spans are queued for a background thread
//! and dropped if its queue is full: a slow or failing collector never slows
//! or fails a Route. Prompt text is never an attribute; only counts, names,
//! IDs and money.

mod otlp;

use std::time::Duration;

use crate::recent::Recent;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Link, Span as _, SpanContext, SpanKind, Status, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// Every attribute name Switchyard puts on a span.
pub mod attr {
    pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
    pub const GEN_AI_PROVIDER_NAME: &str = "gen_ai.provider.name";
    pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
    pub const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    pub const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    pub const GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: &str = "gen_ai.usage.cache_read.input_tokens";
    pub const WORKFLOW: &str = "switchyard.workflow";
    pub const OUTCOME_ID: &str = "switchyard.outcome.id";
    pub const OUTCOME_STATUS: &str = "switchyard.outcome.status";
    pub const DECISION_ID: &str = "switchyard.decision.id";
    pub const COST_USD: &str = "switchyard.cost.usd";
    pub const ROUTE_STATUS: &str = "switchyard.route.status";
    pub const ROUTE_RULE: &str = "switchyard.route.rule";
    pub const COMPLEXITY: &str = "switchyard.complexity";
    pub const BUDGET_REMAINING_USD: &str = "switchyard.budget.remaining.usd";
    pub const FEEDBACK_ACCEPTED: &str = "switchyard.feedback.accepted";
    pub const ESCALATION_ID: &str = "switchyard.escalation.id";
    pub const ESCALATION_STATE: &str = "switchyard.escalation.state";
    pub const USAGE_FAILED: &str = "switchyard.usage.failed";
}

/// What Route and ReportUsage both say of a model call.
pub struct CallAttrs<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    pub workflow: &'a str,
    pub outcome_id: &'a str,
    pub decision_id: &'a str,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    /// The estimate on Route, the actual cost on ReportUsage.
    pub cost_nanos: i64,
}

impl CallAttrs<'_> {
    pub fn key_values(&self) -> [KeyValue; 10] {
        [
            KeyValue::new(attr::GEN_AI_OPERATION_NAME, "chat"),
            KeyValue::new(attr::GEN_AI_PROVIDER_NAME, self.provider.to_string()),
            KeyValue::new(attr::GEN_AI_REQUEST_MODEL, self.model.to_string()),
            KeyValue::new(attr::GEN_AI_USAGE_INPUT_TOKENS, self.input_tokens as i64),
            KeyValue::new(attr::GEN_AI_USAGE_OUTPUT_TOKENS, self.output_tokens as i64),
            KeyValue::new(
                attr::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
                self.cached_input_tokens as i64,
            ),
            KeyValue::new(attr::WORKFLOW, self.workflow.to_string()),
            KeyValue::new(attr::OUTCOME_ID, self.outcome_id.to_string()),
            KeyValue::new(attr::DECISION_ID, self.decision_id.to_string()),
            KeyValue::new(attr::COST_USD, crate::money::nanos_to_usd(self.cost_nanos)),
        ]
    }
}

/// The tracer, or nothing when export is off.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    tracer: Option<SdkTracer>,
    /// Each recent Route span, by decision ID, so ReportUsage can link to it.
    route_spans: RouteSpans,
}

/// Recent Route span contexts by decision ID, with when they were made: at
/// most this many, each kept for the link TTL.
struct RouteSpans {
    recent: Recent<u128, (SpanContext, std::time::Instant)>,
    ttl: Duration,
}

const ROUTE_SPANS: u64 = 131_072;

/// The most attributes one span gets (Route's 14, with room to spare).
const SPAN_ATTRIBUTES: usize = 16;

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

    fn insert(&self, decision_id: &str, cx: SpanContext) {
        if let Some(k) = RouteSpans::key(decision_id) {
            self.recent.insert(k, (cx, std::time::Instant::now()));
        }
    }

    fn get(&self, decision_id: &str) -> Option<SpanContext> {
        let k = RouteSpans::key(decision_id)?;
        self.recent
            .read(&k, |(cx, at)| (at.elapsed() < self.ttl).then(|| cx.clone()))
            .flatten()
    }
}

/// Reads `traceparent` and `tracestate` from gRPC metadata.
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

fn env_is(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
}

impl Telemetry {
    /// No spans at all.
    pub fn off() -> Telemetry {
        Telemetry {
            provider: None,
            tracer: None,
            route_spans: RouteSpans::new(Duration::ZERO),
        }
    }

    /// Starts export if the environment asks for it. Must run inside the
    /// Tokio runtime, which the exporter's gRPC channel uses.
    pub fn from_env(link_ttl: Duration) -> Telemetry {
        if env_is("OTEL_SDK_DISABLED", "true") || env_is("OTEL_TRACES_EXPORTER", "none") {
            return Telemetry::off();
        }
        let exporter = match otlp::Config::from_env().and_then(|c| c.map(otlp::OtlpExporter::new).transpose()) {
            Ok(Some(e)) => e,
            Ok(None) => return Telemetry::off(),
            Err(e) => {
                tracing::warn!("traces are off: {e}");
                return Telemetry::off();
            }
        };
        for (name, spoken) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"),
        ] {
            if let Ok(v) = std::env::var(name) {
                if !v.trim().is_empty() && !v.trim().eq_ignore_ascii_case(spoken) {
                    tracing::warn!("{name}={v} is not supported: spans go over OTLP/gRPC, uncompressed");
                }
            }
        }
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var("OTEL_SERVICE_NAME").is_err() {
            resource = resource.with_service_name("switchyard");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "switchyard");
        tracing::info!("traces are exported over OTLP/gRPC");
        Telemetry {
            provider: Some(provider),
            tracer: Some(tracer),
            route_spans: RouteSpans::new(link_ttl),
        }
    }

    pub fn enabled(&self) -> bool {
        self.tracer.is_some()
    }

    /// Starts a server span for `rpc`, a child of the caller's trace context
    /// when the metadata carries one.
    pub fn start(&self, rpc: &'static str, metadata: &tonic::metadata::MetadataMap, links: Vec<Link>) -> RpcSpan {
        let Some(tracer) = &self.tracer else {
            return RpcSpan { span: None };
        };
        let parent = TraceContextPropagator::new().extract_with_context(&Context::new(), &Metadata(metadata));
        let span = tracer
            .span_builder(rpc)
            .with_kind(SpanKind::Server)
            // Room for every attribute a span gets, so setting them never regrows the list.
            .with_attributes(Vec::with_capacity(SPAN_ATTRIBUTES))
            .with_links(links)
            .start_with_context(tracer, &parent);
        RpcSpan { span: Some(span) }
    }

    /// Remembers a Route span for the decision's later ReportUsage.
    pub fn remember_route(&self, decision_id: &str, span: &RpcSpan) {
        if let Some(cx) = span.context() {
            self.route_spans.insert(decision_id, cx);
        }
    }

    /// A link to the Route span that made the decision, if this sidecar did.
    pub fn route_link(&self, decision_id: &str) -> Vec<Link> {
        if !self.enabled() {
            return Vec::new();
        }
        self.route_spans
            .get(decision_id)
            .map(|cx| vec![Link::with_context(cx)])
            .unwrap_or_default()
    }

    /// Exports what is queued and stops, within `grace`.
    pub fn shutdown(&self, grace: Duration) {
        if let Some(p) = &self.provider {
            if let Err(e) = p.shutdown_with_timeout(grace) {
                tracing::warn!(error = %e, "flushing traces at shutdown failed");
            }
        }
    }
}

/// One RPC's span (or nothing). Ends when dropped.
pub struct RpcSpan {
    span: Option<opentelemetry_sdk::trace::Span>,
}

impl RpcSpan {
    /// Whether attributes set now are kept (the span exists and was sampled).
    pub fn is_recording(&self) -> bool {
        self.span.as_ref().is_some_and(|s| s.is_recording())
    }

    pub fn set(&mut self, attrs: impl IntoIterator<Item = KeyValue>) {
        if let Some(s) = &mut self.span {
            s.set_attributes(attrs);
        }
    }

    /// Marks the span failed with the status's message (never prompt text).
    pub fn fail(&mut self, status: &tonic::Status) {
        if let Some(s) = &mut self.span {
            s.set_status(Status::error(format!("{:?}: {}", status.code(), status.message())));
        }
    }

    fn context(&self) -> Option<SpanContext> {
        self.span
            .as_ref()
            .map(|s| s.span_context().clone())
            .filter(|c| c.is_valid())
    }

    /// The W3C `traceparent` of this span.
    pub fn traceparent(&self) -> Option<String> {
        let c = self.span.as_ref()?.span_context();
        if !c.is_valid() {
            return None;
        }
        // Hex by hand: this runs on every traced Route, and the formatting
        // machinery cost more than the rest of building the string.
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &c.trace_id().to_bytes());
        out.push('-');
        push_hex(&mut out, &c.span_id().to_bytes());
        out.push('-');
        push_hex(&mut out, &[c.trace_flags().to_u8()]);
        Some(out)
    }
}

/// Appends `bytes` in lower-case hex.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
}

impl Drop for RpcSpan {
    fn drop(&mut self) {
        if let Some(s) = &mut self.span {
            s.end();
        }
    }
}

/// The caller's `traceparent`, echoed when Switchyard does not trace, so the
/// agent's provider call still joins the agent's own trace.
pub fn incoming_traceparent(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() == 55 && v.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
        .unwrap_or_default()
        .to_string()
}

/// The span context a `traceparent` string names (for tests and tools).
pub fn parse_traceparent(tp: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = tp.split('-').collect();
    (parts.len() == 4 && parts[1].len() == 32 && parts[2].len() == 16)
        .then(|| (parts[1].to_string(), parts[2].to_string()))
}
