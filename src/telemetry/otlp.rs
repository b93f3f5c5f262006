//! The OTLP/gRPC span exporter.
//!
//! The SDK's batch processor hands this exporter its finished spans on its
//! own thread. They are written straight into OTLP protobuf bytes there, in
//! one pass with no intermediate message structs and no copy of the batch;
//! the bytes then go to the collector as the body of one
//! `TraceService/Export` call on the shared Tokio runtime. Building the
//! protobuf structs first, then encoding them, had cost the Route path about
//! a tenth of the server's CPU at full sampling.
//!
//! Configured the standard way: `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`,
//! `_HEADERS` (comma-separated `key=value`, values percent-decoded) and
//! `_TIMEOUT` (milliseconds, 10 s by default).

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{Link, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use prost::bytes::Bytes;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::Channel;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// `ExportTraceServiceRequest` with each `ResourceSpans` already encoded:
/// the wire format of a repeated message and of repeated bytes is the same.
#[derive(Clone, PartialEq, prost::Message)]
struct ExportRequest {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    resource_spans: Vec<Bytes>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ExportResponse {
    #[prost(message, optional, tag = "1")]
    partial_success: Option<PartialSuccess>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PartialSuccess {
    #[prost(int64, tag = "1")]
    rejected_spans: i64,
    #[prost(string, tag = "2")]
    error_message: String,
}

/// Where and how spans are sent, read from the `OTEL_EXPORTER_OTLP_*` variables.
#[derive(Debug, PartialEq)]
pub struct Config {
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

/// The first of `names` (the traces-specific variable, then the general
/// one) that is set and not blank, with its value.
fn var(env: &impl Fn(&str) -> Option<String>, names: [&'static str; 2]) -> Option<(&'static str, String)> {
    names.into_iter().find_map(|name| {
        let v = env(name)?;
        let v = v.trim();
        (!v.is_empty()).then(|| (name, v.to_string()))
    })
}

impl Config {
    /// Reads the environment. `Ok(None)` when no endpoint is configured; an
    /// error names the variable and what to fix.
    pub fn from_env() -> Result<Option<Config>, String> {
        Config::from_vars(|name| std::env::var(name).ok())
    }

    /// As `from_env`, with `env` looking variables up.
    fn from_vars(env: impl Fn(&str) -> Option<String>) -> Result<Option<Config>, String> {
        let Some((endpoint_var, endpoint)) = var(
            &env,
            ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"],
        ) else {
            return Ok(None);
        };
        let lower = endpoint.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err(format!(
                "{endpoint_var}={endpoint}: TLS to the collector is not built in; \
                 point it at a collector's plain-text gRPC port (http://…:4317), such as a node-local agent"
            ));
        }
        if !lower.starts_with("http://") {
            return Err(format!(
                "{endpoint_var}={endpoint}: expected an http:// URL such as http://otel-collector:4317"
            ));
        }
        let headers = match var(
            &env,
            ["OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"],
        ) {
            Some((name, v)) => parse_headers(&v).map_err(|e| format!("{name}: {e}"))?,
            None => Vec::new(),
        };
        let timeout = match var(
            &env,
            ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"],
        ) {
            Some((name, v)) => match v.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => return Err(format!("{name}={v}: expected a positive number of milliseconds")),
            },
            None => DEFAULT_TIMEOUT,
        };
        Ok(Some(Config {
            endpoint,
            headers,
            timeout,
        }))
    }
}

/// `key1=value1,key2=value2`, values percent-decoded (W3C baggage style).
fn parse_headers(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            return Err(format!("`{item}` is not key=value"));
        };
        let key = k.trim().to_ascii_lowercase();
        let value = percent_decode(v.trim()).ok_or_else(|| format!("`{key}` has a bad %-escape in its value"))?;
        if MetadataKey::<tonic::metadata::Ascii>::from_bytes(key.as_bytes()).is_err() || key.ends_with("-bin") {
            return Err(format!("`{key}` is not a valid header name"));
        }
        if MetadataValue::<tonic::metadata::Ascii>::try_from(value.as_str()).is_err() {
            return Err(format!("the value of `{key}` is not a valid header value"));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Sends batches of spans to an OTLP/gRPC collector.
pub struct OtlpExporter {
    channel: Channel,
    metadata: MetadataMap,
    timeout: Duration,
    runtime: tokio::runtime::Handle,
    /// The encoded `Resource` message, set by the tracer provider.
    resource: Vec<u8>,
    resource_schema_url: String,
}

impl fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpExporter").field("timeout", &self.timeout).finish()
    }
}

impl OtlpExporter {
    /// Connects lazily: an unreachable collector costs failed exports, never
    /// a failed start. Must run inside the Tokio runtime.
    pub fn new(config: Config) -> Result<OtlpExporter, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| format!("the OTLP endpoint {}: {e}", config.endpoint))?
            .timeout(config.timeout)
            .connect_timeout(config.timeout);
        let mut metadata = MetadataMap::new();
        for (k, v) in &config.headers {
            // Both were validated by `parse_headers`.
            if let (Ok(k), Ok(v)) = (
                MetadataKey::from_bytes(k.as_bytes()),
                MetadataValue::try_from(v.as_str()),
            ) {
                metadata.append(k, v);
            }
        }
        Ok(OtlpExporter {
            channel: endpoint.connect_lazy(),
            metadata,
            timeout: config.timeout,
            runtime: tokio::runtime::Handle::current(),
            resource: Vec::new(),
            resource_schema_url: String::new(),
        })
    }
}

/// Sends one encoded request, retrying while the collector is unavailable or
/// pushing back, until `timeout` has passed.
async fn send(channel: Channel, metadata: MetadataMap, body: Bytes, timeout: Duration) -> Result<(), tonic::Status> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        let mut request = tonic::Request::new(ExportRequest {
            resource_spans: vec![body.clone()],
        });
        *request.metadata_mut() = metadata.clone();
        let attempt = async {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(format!("the collector is not reachable: {e}")))?;
            let codec = tonic_prost::ProstCodec::<ExportRequest, ExportResponse>::default();
            grpc.unary(request, http::uri::PathAndQuery::from_static(EXPORT_PATH), codec)
                .await
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let status = match tokio::time::timeout(left, attempt).await {
            Ok(Ok(response)) => {
                if let Some(p) = response.into_inner().partial_success {
                    if p.rejected_spans > 0 || !p.error_message.is_empty() {
                        tracing::warn!(
                            rejected_spans = p.rejected_spans,
                            message = %p.error_message,
                            "the collector rejected part of a span batch"
                        );
                    }
                }
                return Ok(());
            }
            Ok(Err(status)) => status,
            Err(_) => return Err(tonic::Status::deadline_exceeded("the export timed out")),
        };
        let retryable = matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::ResourceExhausted | tonic::Code::Aborted
        );
        if !retryable || Instant::now() + backoff >= deadline {
            return Err(status);
        }
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
}

impl SpanExporter for OtlpExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let body = Bytes::from(encode_resource_spans(&self.resource, &self.resource_schema_url, &batch));
        drop(batch);
        let sent = self
            .runtime
            .spawn(send(self.channel.clone(), self.metadata.clone(), body, self.timeout));
        match sent.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(status)) => Err(OTelSdkError::InternalFailure(format!(
                "exporting spans failed: {:?}: {}",
                status.code(),
                status.message()
            ))),
            Err(e) => Err(OTelSdkError::InternalFailure(format!("the export task failed: {e}"))),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource.clear();
        for (k, v) in resource.iter() {
            put_key_value(&mut self.resource, 1, k.as_str(), v);
        }
        self.resource_schema_url = resource.schema_url().unwrap_or_default().to_string();
    }
}

// Protobuf, by hand. Field numbers are those of opentelemetry-proto's
// trace/v1, common/v1 and resource/v1 messages. Scalars at their default
// value are left out, as proto3 encoders do.

fn put_len(out: &mut Vec<u8>, tag: u32, len: usize) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

fn put_bytes(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    put_len(out, tag, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_str(out: &mut Vec<u8>, tag: u32, s: &str) {
    if !s.is_empty() {
        put_bytes(out, tag, s.as_bytes());
    }
}

fn put_varint(out: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(v, out);
    }
}

fn put_fixed64(out: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        encode_key(tag, WireType::SixtyFourBit, out);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_fixed32(out: &mut Vec<u8>, tag: u32, v: u32) {
    if v != 0 {
        encode_key(tag, WireType::ThirtyTwoBit, out);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A length-delimited field's size: key, length and body.
fn field_len(tag: u32, body: usize) -> usize {
    prost::encoding::key_len(tag) + encoded_len_varint(body as u64) + body
}

/// One `AnyValue` that is not an array.
enum Scalar<'a> {
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(&'a str),
}

impl Scalar<'_> {
    /// The `AnyValue` message's body size.
    fn len(&self) -> usize {
        match self {
            Scalar::Bool(_) => 2,
            Scalar::Int(i) => 1 + encoded_len_varint(*i as u64),
            Scalar::Double(_) => 9,
            Scalar::Str(s) => field_len(1, s.len()),
        }
    }

    /// The `AnyValue` body. A oneof member is written even at its default.
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Scalar::Bool(b) => {
                encode_key(2, WireType::Varint, out);
                encode_varint(u64::from(*b), out);
            }
            Scalar::Int(i) => {
                encode_key(3, WireType::Varint, out);
                encode_varint(*i as u64, out);
            }
            Scalar::Double(d) => {
                encode_key(4, WireType::SixtyFourBit, out);
                out.extend_from_slice(&d.to_le_bytes());
            }
            Scalar::Str(s) => put_bytes(out, 1, s.as_bytes()),
        }
    }
}

/// An array attribute's items; `None` for a kind of value newer than this
/// encoder, which is sent as an empty `AnyValue`.
fn array_items(v: &Value) -> Option<Vec<Scalar<'_>>> {
    Some(match v {
        Value::Array(Array::Bool(a)) => a.iter().map(|b| Scalar::Bool(*b)).collect(),
        Value::Array(Array::I64(a)) => a.iter().map(|i| Scalar::Int(*i)).collect(),
        Value::Array(Array::F64(a)) => a.iter().map(|d| Scalar::Double(*d)).collect(),
        Value::Array(Array::String(a)) => a.iter().map(|s| Scalar::Str(s.as_str())).collect(),
        _ => return None,
    })
}

/// A `KeyValue` field: the key, and the value as an `AnyValue`.
fn put_key_value(out: &mut Vec<u8>, tag: u32, key: &str, value: &Value) {
    let key_len = if key.is_empty() { 0 } else { field_len(1, key.len()) };
    // Single values, by far the usual case, need no allocation.
    let single = match value {
        Value::Bool(b) => Some(Scalar::Bool(*b)),
        Value::I64(i) => Some(Scalar::Int(*i)),
        Value::F64(d) => Some(Scalar::Double(*d)),
        Value::String(s) => Some(Scalar::Str(s.as_str())),
        _ => None,
    };
    if let Some(s) = single {
        put_len(out, tag, key_len + field_len(2, s.len()));
        put_str(out, 1, key);
        put_len(out, 2, s.len());
        s.put(out);
        return;
    }
    let items = array_items(value);
    // AnyValue { array_value (5): ArrayValue { values (1): repeated AnyValue } }
    let array_len: usize = items.iter().flatten().map(|s| field_len(1, s.len())).sum();
    let any_len = if items.is_some() { field_len(5, array_len) } else { 0 };
    put_len(out, tag, key_len + field_len(2, any_len));
    put_str(out, 1, key);
    put_len(out, 2, any_len);
    if let Some(items) = items {
        put_len(out, 5, array_len);
        for s in &items {
            put_len(out, 1, s.len());
            s.put(out);
        }
    }
}

fn put_attributes(out: &mut Vec<u8>, tag: u32, attrs: &[KeyValue]) {
    for kv in attrs {
        put_key_value(out, tag, kv.key.as_str(), &kv.value);
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// W3C trace flags plus the "has is-remote" and "is remote" bits.
fn span_flags(is_remote: bool, trace_flags: u8) -> u32 {
    u32::from(trace_flags) | 0x100 | if is_remote { 0x200 } else { 0 }
}

fn kind(k: &SpanKind) -> u64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// Writes `body` (built in `scratch`) as a length-delimited field of `out`.
fn put_message(out: &mut Vec<u8>, tag: u32, scratch: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    scratch.clear();
    body(scratch);
    put_bytes(out, tag, scratch);
}

/// trace_id (1), span_id (2) and trace_state (3), the same fields in a
/// `Span` and a `Link`. The IDs have fixed sizes, so their lengths are constants.
fn put_ids(out: &mut Vec<u8>, cx: &opentelemetry::trace::SpanContext) {
    out.extend_from_slice(&[0x0a, 16]);
    out.extend_from_slice(&cx.trace_id().to_bytes());
    out.extend_from_slice(&[0x12, 8]);
    out.extend_from_slice(&cx.span_id().to_bytes());
    put_str(out, 3, &cx.trace_state().header());
}

fn put_link(out: &mut Vec<u8>, link: &Link) {
    let cx = &link.span_context;
    put_ids(out, cx);
    put_attributes(out, 4, &link.attributes);
    put_varint(out, 5, u64::from(link.dropped_attributes_count));
    put_fixed32(out, 6, span_flags(cx.is_remote(), cx.trace_flags().to_u8()));
}

/// One `Span` message's body.
fn put_span(out: &mut Vec<u8>, scratch: &mut Vec<u8>, span: &SpanData) {
    let cx = &span.span_context;
    put_ids(out, cx);
    if span.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        put_bytes(out, 4, &span.parent_span_id.to_bytes());
    }
    put_str(out, 5, &span.name);
    put_varint(out, 6, kind(&span.span_kind));
    put_fixed64(out, 7, unix_nanos(span.start_time));
    put_fixed64(out, 8, unix_nanos(span.end_time));
    put_attributes(out, 9, &span.attributes);
    put_varint(out, 10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        put_message(out, 11, scratch, |m| {
            put_fixed64(m, 1, unix_nanos(event.timestamp));
            put_str(m, 2, &event.name);
            put_attributes(m, 3, &event.attributes);
            put_varint(m, 4, u64::from(event.dropped_attributes_count));
        });
    }
    put_varint(out, 12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        put_message(out, 13, scratch, |m| put_link(m, link));
    }
    put_varint(out, 14, u64::from(span.links.dropped_count));
    // Status (15) is always present: { message (2), code (3) }.
    let (code, message): (u64, &str) = match &span.status {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description),
    };
    let message_len = if message.is_empty() {
        0
    } else {
        field_len(2, message.len())
    };
    let code_len = if code == 0 { 0 } else { 2 };
    put_len(out, 15, message_len + code_len);
    put_str(out, 2, message);
    put_varint(out, 3, code);
    put_fixed32(
        out,
        16,
        span_flags(span.parent_span_is_remote, cx.trace_flags().to_u8()),
    );
}

/// One `InstrumentationScope` message's body.
fn put_scope(out: &mut Vec<u8>, scope: &InstrumentationScope) {
    put_str(out, 1, scope.name());
    put_str(out, 2, scope.version().unwrap_or_default());
    for kv in scope.attributes() {
        put_key_value(out, 3, kv.key.as_str(), &kv.value);
    }
}

/// One `ResourceSpans` message: the resource, then the spans grouped by
/// instrumentation scope in the order the scopes first appear.
pub fn encode_resource_spans(resource: &[u8], resource_schema_url: &str, batch: &[SpanData]) -> Vec<u8> {
    let mut scopes: Vec<(&InstrumentationScope, Vec<u8>)> = Vec::new();
    let (mut span, mut scratch) = (Vec::with_capacity(1024), Vec::new());
    for s in batch {
        let i = match scopes.iter().position(|(scope, _)| *scope == &s.instrumentation_scope) {
            Some(i) => i,
            None => {
                scopes.push((&s.instrumentation_scope, Vec::with_capacity(batch.len() * 512)));
                scopes.len() - 1
            }
        };
        span.clear();
        put_span(&mut span, &mut scratch, s);
        put_bytes(&mut scopes[i].1, 2, &span);
    }
    let mut out = Vec::with_capacity(resource.len() + scopes.iter().map(|(_, b)| b.len() + 64).sum::<usize>() + 16);
    put_bytes(&mut out, 1, resource);
    for (scope, spans) in &scopes {
        scratch.clear();
        put_scope(&mut scratch, scope);
        let schema_url = scope.schema_url().unwrap_or_default();
        let schema_len = if schema_url.is_empty() {
            0
        } else {
            field_len(3, schema_url.len())
        };
        put_len(&mut out, 2, field_len(1, scratch.len()) + spans.len() + schema_len);
        put_bytes(&mut out, 1, &scratch);
        out.extend_from_slice(spans);
        put_str(&mut out, 3, schema_url);
    }
    put_str(&mut out, 3, resource_schema_url);
    out
}

#[cfg(test)]
mod tests;
