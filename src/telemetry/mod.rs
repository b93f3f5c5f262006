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
//! Switchyard writes its spans itself rather than through the OpenTelemetry
//! SDK: each span's OTLP bytes are written while its RPC runs, straight from
//! the values it records, and a finished span is one push onto the export
//! queue. At full sampling the SDK's span objects, attribute lists and
//! conversion to protobuf had cost more CPU than the rest of a Route's
//! decision; docs/benchmarks.md, "Export cost", gives the measurement.
//!
//! Prompt text is never an attribute; only counts, names, IDs and money.

mod otlp;
mod sampler;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::recent::Recent;
use sampler::Sampler;

/// Every attribute name Switchyard puts on a span.
pub mod attr {
    pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
    pub const GEN_AI_PROVIDER_NAME: &str = "gen_ai.provider.name";
    pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
    pub const GEN_AI_REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
    pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
    /// Proposed in the GenAI conventions, beside `switchyard.cost.usd`.
    pub const GEN_AI_USAGE_COST_AMOUNT: &str = "gen_ai.usage.cost.amount";
    pub const GEN_AI_USAGE_COST_CURRENCY: &str = "gen_ai.usage.cost.currency";
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

/// An attribute's value. Strings are borrowed: a span writes them into its
/// bytes at once, so nothing is copied to keep them.
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
    /// Route: the request's output limit, when it set one.
    pub max_tokens: Option<u32>,
    /// ReportUsage: the model the provider answered with.
    pub response_model: Option<&'a str>,
}

impl CallAttrs<'_> {
    pub fn set_on(&self, span: &mut RpcSpan) {
        span.set(attr::GEN_AI_OPERATION_NAME, "chat");
        span.set(attr::GEN_AI_PROVIDER_NAME, self.provider);
        span.set(attr::GEN_AI_REQUEST_MODEL, self.model);
        span.set(attr::GEN_AI_USAGE_INPUT_TOKENS, self.input_tokens);
        span.set(attr::GEN_AI_USAGE_OUTPUT_TOKENS, self.output_tokens);
        span.set(attr::GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, self.cached_input_tokens);
        span.set(attr::WORKFLOW, self.workflow);
        span.set(attr::OUTCOME_ID, self.outcome_id);
        span.set(attr::DECISION_ID, self.decision_id);
        let usd = crate::money::nanos_to_usd(self.cost_nanos);
        span.set(attr::COST_USD, usd);
        span.set(attr::GEN_AI_USAGE_COST_AMOUNT, usd);
        span.set(attr::GEN_AI_USAGE_COST_CURRENCY, "USD");
        if let Some(n) = self.max_tokens {
            span.set(attr::GEN_AI_REQUEST_MAX_TOKENS, i64::from(n));
        }
        if let Some(m) = self.response_model {
            span.set(attr::GEN_AI_RESPONSE_MODEL, m);
        }
    }
}

/// A span's identity, as `traceparent` carries it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpanIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// W3C trace flags: bit 0 is "sampled".
    pub flags: u8,
}

impl SpanIds {
    /// Parses a W3C `traceparent`: version, 32 and 16 lower-case hex digits
    /// (not all zero), flags. Version `ff` is invalid; a later version may
    /// carry more fields after the flags.
    pub fn parse(tp: &str) -> Option<SpanIds> {
        let b = tp.as_bytes();
        if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        // The fields are lower-case hex only; the hex crate would also take
        // upper case.
        let lower_hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        if !(lower_hex(&b[0..2]) && lower_hex(&b[3..35]) && lower_hex(&b[36..52]) && lower_hex(&b[53..55])) {
            return None;
        }
        let (mut version, mut flags) = ([0u8; 1], [0u8; 1]);
        let mut ids = SpanIds {
            trace_id: [0; 16],
            span_id: [0; 8],
            flags: 0,
        };
        hex::decode_to_slice(&b[0..2], &mut version).ok()?;
        hex::decode_to_slice(&b[3..35], &mut ids.trace_id).ok()?;
        hex::decode_to_slice(&b[36..52], &mut ids.span_id).ok()?;
        hex::decode_to_slice(&b[53..55], &mut flags).ok()?;
        ids.flags = flags[0];
        if version[0] == 0xff || (version[0] == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
            return None;
        }
        (ids.trace_id != [0; 16] && ids.span_id != [0; 8]).then_some(ids)
    }

    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The W3C `traceparent` (version 00), written into a stack buffer:
    /// this runs on every traced Route, where the formatting machinery cost
    /// more than the rest of building the string.
    pub fn traceparent(&self) -> String {
        let mut b = *b"00-00000000000000000000000000000000-0000000000000000-00";
        // The lengths are fixed: each slice is exactly twice its bytes.
        let (trace, span, flags) = (
            hex::encode_to_slice(self.trace_id, &mut b[3..35]),
            hex::encode_to_slice(self.span_id, &mut b[36..52]),
            hex::encode_to_slice([self.flags], &mut b[53..55]),
        );
        debug_assert!(trace.is_ok() && span.is_ok() && flags.is_ok());
        String::from_utf8_lossy(&b).into_owned()
    }
}

/// A random non-zero 64-bit value for span and trace IDs (fastrand's
/// per-thread wyrand, seeded from the OS): IDs must be unique, not secret.
fn random_id() -> u64 {
    fastrand::u64(1..)
}

/// The tracer, or nothing when export is off.
pub struct Telemetry {
    pipeline: Option<Pipeline>,
    /// Each recent Route span, by decision ID, so ReportUsage can link to it.
    route_spans: RouteSpans,
}

struct Pipeline {
    sampler: Sampler,
    queue: Arc<otlp::Queue>,
    /// The batch thread (none in unit tests, which read the queue).
    exporter: Option<otlp::Exporter>,
}

/// Recent Route spans by decision ID, with when they were made: at most
/// this many, each kept for the link TTL.
struct RouteSpans {
    recent: Recent<u128, (SpanIds, Instant)>,
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

    fn insert(&self, decision_id: &str, ids: SpanIds) {
        if let Some(k) = RouteSpans::key(decision_id) {
            self.recent.insert(k, (ids, Instant::now()));
        }
    }

    fn get(&self, decision_id: &str) -> Option<SpanIds> {
        let k = RouteSpans::key(decision_id)?;
        self.recent
            .read(&k, |(ids, at)| (at.elapsed() < self.ttl).then_some(*ids))
            .flatten()
    }
}

fn env_is(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
}

/// The resource's attributes: `OTEL_RESOURCE_ATTRIBUTES`, then
/// `service.name` from `OTEL_SERVICE_NAME` (or `switchyard`), and what wrote
/// the spans.
fn resource_from_vars(env: impl Fn(&str) -> Option<String>) -> Result<Vec<(String, String)>, String> {
    let mut attrs = match env("OTEL_RESOURCE_ATTRIBUTES") {
        Some(v) => otlp::parse_pairs(&v).map_err(|e| format!("OTEL_RESOURCE_ATTRIBUTES: {e}"))?,
        None => Vec::new(),
    };
    let named = env("OTEL_SERVICE_NAME")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let mut set = |k: &str, v: String, replace: bool| match attrs.iter_mut().find(|(key, _)| key == k) {
        Some(slot) if replace => slot.1 = v,
        Some(_) => {}
        None => attrs.push((k.to_string(), v)),
    };
    match named {
        Some(name) => set("service.name", name, true),
        None => set("service.name", "switchyard".to_string(), false),
    }
    set("telemetry.sdk.name", "switchyard".to_string(), true);
    set("telemetry.sdk.language", "rust".to_string(), true);
    set("telemetry.sdk.version", env!("CARGO_PKG_VERSION").to_string(), true);
    Ok(attrs)
}

impl Telemetry {
    /// No spans at all.
    pub fn off() -> Telemetry {
        Telemetry {
            pipeline: None,
            route_spans: RouteSpans::new(Duration::ZERO),
        }
    }

    /// Starts export if the environment asks for it. Must run inside the
    /// Tokio runtime, which the exporter's gRPC channel uses. A variable
    /// that cannot be used is an error that names it and says what to write
    /// instead: `serve` exits 64 on it before binding a port, rather than
    /// run with traces silently off.
    pub fn from_env(link_ttl: Duration) -> Result<Telemetry, String> {
        if env_is("OTEL_SDK_DISABLED", "true") || env_is("OTEL_TRACES_EXPORTER", "none") {
            return Ok(Telemetry::off());
        }
        for (name, spoken) in [
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"),
        ] {
            if let Ok(v) = std::env::var(name) {
                if !v.trim().is_empty() && !v.trim().eq_ignore_ascii_case(spoken) {
                    return Err(format!(
                        "{name}={v} is not supported: Switchyard sends spans over OTLP/gRPC, uncompressed; \
                         set {name}={spoken} or unset it"
                    ));
                }
            }
        }
        let env = |name: &str| std::env::var(name).ok();
        let started = (|| -> Result<Option<Pipeline>, String> {
            let Some(config) = otlp::Config::from_vars(env)? else {
                return Ok(None);
            };
            let sampler = Sampler::from_vars(env)?;
            let resource = resource_from_vars(env)?;
            let queue = Arc::new(otlp::Queue::new(config.max_queue, config.max_batch));
            let exporter = otlp::Exporter::start(config, queue.clone(), &resource)?;
            Ok(Some(Pipeline {
                sampler,
                queue,
                exporter: Some(exporter),
            }))
        })();
        let Some(pipeline) = started? else {
            return Ok(Telemetry::off());
        };
        tracing::info!(sampler = ?pipeline.sampler, "traces are exported over OTLP/gRPC");
        Ok(Telemetry {
            pipeline: Some(pipeline),
            route_spans: RouteSpans::new(link_ttl),
        })
    }

    pub fn enabled(&self) -> bool {
        self.pipeline.is_some()
    }

    /// Starts a server span for `rpc`, a child of the caller's trace context
    /// when the metadata carries one, linked to `link` if given.
    pub fn start(&self, rpc: &'static str, metadata: &tonic::metadata::MetadataMap, link: Option<SpanIds>) -> RpcSpan {
        let Some(p) = &self.pipeline else {
            return RpcSpan { live: None };
        };
        let parent = metadata
            .get(&*TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(SpanIds::parse);
        let trace_id = match parent {
            Some(parent) => parent.trace_id,
            None => {
                let mut t = [0u8; 16];
                t[..8].copy_from_slice(&random_id().to_be_bytes());
                t[8..].copy_from_slice(&random_id().to_be_bytes());
                t
            }
        };
        let sampled = p.sampler.keeps(&trace_id, parent.map(|p| p.sampled()));
        let ids = SpanIds {
            trace_id,
            span_id: random_id().to_be_bytes(),
            flags: u8::from(sampled),
        };
        let recording = sampled.then(|| {
            let tracestate = parent
                .and_then(|_| metadata.get("tracestate"))
                .and_then(|v| v.to_str().ok())
                .filter(|s| s.len() <= 512);
            Recording::begin(p.queue.clone(), rpc, &ids, parent, tracestate, link)
        });
        RpcSpan {
            live: Some(Live {
                ids,
                remote_parent: parent.is_some(),
                recording,
            }),
        }
    }

    /// Remembers a Route span for the decision's later ReportUsage.
    pub fn remember_route(&self, decision_id: &str, span: &RpcSpan) {
        if let Some(live) = &span.live {
            self.route_spans.insert(decision_id, live.ids);
        }
    }

    /// The Route span that made the decision, if this sidecar did.
    pub fn route_link(&self, decision_id: &str) -> Option<SpanIds> {
        if !self.enabled() {
            return None;
        }
        self.route_spans.get(decision_id)
    }

    /// Exports what is queued and stops, within `grace`.
    pub fn shutdown(&self, grace: Duration) {
        if let Some(exporter) = self.pipeline.as_ref().and_then(|p| p.exporter.as_ref()) {
            if let Err(e) = exporter.shutdown(grace) {
                tracing::warn!("flushing traces at shutdown: {e}");
            }
        }
    }
}

/// One RPC's span (or nothing). Ends, and is queued for export, when dropped.
pub struct RpcSpan {
    live: Option<Live>,
}

struct Live {
    ids: SpanIds,
    remote_parent: bool,
    /// The span's bytes so far, when it is sampled.
    recording: Option<Recording>,
}

/// A sampled span being written: an OTLP `Span` body whose fields are
/// appended as they become known (protobuf fields may come in any order).
struct Recording {
    buf: Vec<u8>,
    queue: Arc<otlp::Queue>,
    error: Option<String>,
}

/// Room for a Route span's bytes: IDs, times, 14 attributes and a link.
const SPAN_BYTES: usize = 768;

impl Recording {
    fn begin(
        queue: Arc<otlp::Queue>,
        name: &str,
        ids: &SpanIds,
        parent: Option<SpanIds>,
        tracestate: Option<&str>,
        link: Option<SpanIds>,
    ) -> Recording {
        let mut buf = Vec::with_capacity(SPAN_BYTES);
        otlp::put_ids(&mut buf, ids);
        if let Some(ts) = tracestate {
            otlp::put_str(&mut buf, 3, ts);
        }
        if let Some(parent) = parent {
            otlp::put_bytes(&mut buf, 4, &parent.span_id);
        }
        otlp::put_str(&mut buf, 5, name);
        otlp::put_varint(&mut buf, 6, 2); // SPAN_KIND_SERVER
        otlp::put_fixed64(&mut buf, 7, otlp::unix_nanos(SystemTime::now()));
        if let Some(link) = link {
            otlp::put_link(&mut buf, &link);
        }
        Recording {
            buf,
            queue,
            error: None,
        }
    }
}

impl RpcSpan {
    /// Whether attributes set now are kept (the span exists and was sampled).
    pub fn is_recording(&self) -> bool {
        self.live.as_ref().is_some_and(|l| l.recording.is_some())
    }

    /// Records an attribute.
    pub fn set<'a>(&mut self, key: &'static str, value: impl Into<Value<'a>>) {
        if let Some(Live { recording: Some(r), .. }) = &mut self.live {
            otlp::put_attribute(&mut r.buf, 9, key, &value.into());
        }
    }

    /// Marks the span failed with the status's message (never prompt text).
    pub fn fail(&mut self, status: &tonic::Status) {
        if let Some(Live { recording: Some(r), .. }) = &mut self.live {
            r.error = Some(format!("{:?}: {}", status.code(), status.message()));
        }
    }

    /// The span's IDs, when there is a span (export on), sampled or not.
    pub fn ids(&self) -> Option<SpanIds> {
        self.live.as_ref().map(|l| l.ids)
    }

    /// The W3C `traceparent` of this span.
    pub fn traceparent(&self) -> Option<String> {
        self.live.as_ref().map(|l| l.ids.traceparent())
    }
}

impl Drop for RpcSpan {
    fn drop(&mut self) {
        let Some(Live {
            ids,
            remote_parent,
            recording: Some(r),
        }) = self.live.take()
        else {
            return;
        };
        let Recording { mut buf, queue, error } = r;
        otlp::put_fixed64(&mut buf, 8, otlp::unix_nanos(SystemTime::now()));
        otlp::put_status(&mut buf, error.as_deref());
        otlp::put_fixed32(&mut buf, 16, otlp::span_flags(ids.flags, remote_parent));
        queue.push(buf);
    }
}

/// The trace context header's key, made once: looking one up by `&str`
/// parses the name on every call.
static TRACEPARENT: std::sync::LazyLock<tonic::metadata::MetadataKey<tonic::metadata::Ascii>> =
    std::sync::LazyLock::new(|| tonic::metadata::MetadataKey::from_static("traceparent"));

/// The caller's `traceparent`, echoed when Switchyard does not trace, so the
/// agent's provider call still joins the agent's own trace.
pub fn incoming_traceparent(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get(&*TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .filter(|v| SpanIds::parse(v).is_some())
        .unwrap_or_default()
        .to_string()
}

/// The trace and span IDs, in hex, that a valid `traceparent` names (for
/// tests and tools): [`SpanIds::parse`], the one parser.
pub fn parse_traceparent(tp: &str) -> Option<(String, String)> {
    SpanIds::parse(tp).map(|ids| (hex::encode(ids.trace_id), hex::encode(ids.span_id)))
}

#[cfg(test)]
mod tests;
