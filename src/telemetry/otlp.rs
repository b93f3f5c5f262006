//! OTLP/gRPC export: the protobuf wire format written by hand, a batch
//! thread, and the `TraceService/Export` call.
//!
//! A span is written as OTLP `Span` bytes while its RPC runs (see
//! `RpcSpan`), so finishing it is a push onto a queue. The batch thread wraps
//! queued spans in one `ResourceSpans` message and sends it on the shared
//! Tokio runtime. Nothing is built twice and no span is copied field by field.
//!
//! Configured the standard way:
//! - `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, `_HEADERS` (comma-separated
//!   `key=value`, values percent-decoded) and `_TIMEOUT` (ms, 10 s by default);
//! - `OTEL_BSP_SCHEDULE_DELAY` (ms, 5 s), `OTEL_BSP_MAX_QUEUE_SIZE` (2048),
//!   `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512) and `OTEL_BSP_EXPORT_TIMEOUT` (ms, 30 s).
//!
//! A full queue drops the span and counts it: a slow or failing collector
//! never slows or fails an RPC.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::bytes::Bytes;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::Channel;

use super::{SpanIds, Value};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// `ExportTraceServiceRequest` with its `ResourceSpans` already encoded: the
/// wire format of a repeated message and of repeated bytes is the same.
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

/// Where, how and how often spans are sent.
#[derive(Debug, PartialEq)]
pub struct Config {
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    /// Each export's time limit: the OTLP timeout, capped by the batch processor's.
    pub timeout: Duration,
    pub schedule_delay: Duration,
    pub max_queue: usize,
    pub max_batch: usize,
}

/// The first of `names` (the traces-specific variable, then the general
/// one) that is set and not blank, with its value.
fn var(env: &impl Fn(&str) -> Option<String>, names: &[&'static str]) -> Option<(&'static str, String)> {
    names.iter().find_map(|&name| {
        let v = env(name)?;
        let v = v.trim();
        (!v.is_empty()).then(|| (name, v.to_string()))
    })
}

/// A whole number from 1 to `max` from the first set variable of `names`,
/// or `default`.
fn number(
    env: &impl Fn(&str) -> Option<String>,
    names: &[&'static str],
    unit: &str,
    default: u64,
    max: u64,
) -> Result<u64, String> {
    match var(env, names) {
        Some((name, v)) => match v.parse::<u64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(format!(
                "{name}={v}: expected a positive whole number of {unit}, at most {max}"
            )),
        },
        None => Ok(default),
    }
}

/// An hour, in milliseconds: the longest export timeout.
const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// A day, in milliseconds: the longest time between scheduled exports.
const MAX_DELAY_MS: u64 = 86_400_000;
/// The most spans queued or sent in one export.
const MAX_SPANS: u64 = 1 << 20;

impl Config {
    /// Reads the environment through `env`. `Ok(None)` when no endpoint is
    /// configured; an error names the variable and what to fix.
    pub fn from_vars(env: impl Fn(&str) -> Option<String>) -> Result<Option<Config>, String> {
        let Some((endpoint_var, endpoint)) = var(
            &env,
            &["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"],
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
            &["OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"],
        ) {
            Some((name, v)) => parse_headers(&v).map_err(|e| format!("{name}: {e}"))?,
            None => Vec::new(),
        };
        let ms = "milliseconds";
        let otlp_timeout = number(
            &env,
            &["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"],
            ms,
            10_000,
            MAX_TIMEOUT_MS,
        )?;
        let bsp_timeout = number(&env, &["OTEL_BSP_EXPORT_TIMEOUT"], ms, 30_000, MAX_TIMEOUT_MS)?;
        let schedule_delay = number(&env, &["OTEL_BSP_SCHEDULE_DELAY"], ms, 5_000, MAX_DELAY_MS)?;
        let max_queue = number(&env, &["OTEL_BSP_MAX_QUEUE_SIZE"], "spans", 2_048, MAX_SPANS)?;
        let max_batch = number(&env, &["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"], "spans", 512, MAX_SPANS)?;
        if max_batch > max_queue {
            return Err(format!(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE={max_batch} is larger than OTEL_BSP_MAX_QUEUE_SIZE={max_queue}; \
                 a batch can hold at most the queue"
            ));
        }
        Ok(Some(Config {
            endpoint,
            headers,
            timeout: Duration::from_millis(otlp_timeout.min(bsp_timeout)),
            schedule_delay: Duration::from_millis(schedule_delay),
            max_queue: max_queue as usize,
            max_batch: max_batch as usize,
        }))
    }
}

/// `key1=value1,key2=value2`, values percent-decoded (W3C baggage style),
/// as `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_RESOURCE_ATTRIBUTES` are written.
pub fn parse_pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            return Err(format!("`{item}` is not key=value"));
        };
        let key = k.trim().to_string();
        let value = percent_decode(v.trim()).ok_or_else(|| format!("`{key}` has a bad %-escape in its value"))?;
        out.push((key, value));
    }
    Ok(out)
}

fn parse_headers(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = parse_pairs(s)?;
    for (key, value) in &mut pairs {
        key.make_ascii_lowercase();
        if MetadataKey::<tonic::metadata::Ascii>::from_bytes(key.as_bytes()).is_err() || key.ends_with("-bin") {
            return Err(format!("`{key}` is not a valid header name"));
        }
        if MetadataValue::<tonic::metadata::Ascii>::try_from(value.as_str()).is_err() {
            return Err(format!("the value of `{key}` is not a valid header value"));
        }
    }
    Ok(pairs)
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

/// Finished spans waiting for the batch thread, shared with every RPC.
pub struct Queue {
    state: Mutex<Waiting>,
    wake: Condvar,
    max_queue: usize,
    max_batch: usize,
    dropped: AtomicU64,
}

struct Waiting {
    /// Each an encoded `Span` message body.
    spans: Vec<Vec<u8>>,
    /// Set at shutdown: export what is here by then, then stop.
    closing: Option<Instant>,
}

impl Queue {
    pub fn new(max_queue: usize, max_batch: usize) -> Queue {
        Queue {
            state: Mutex::new(Waiting {
                spans: Vec::with_capacity(max_batch),
                closing: None,
            }),
            wake: Condvar::new(),
            max_queue,
            max_batch,
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues a finished span, or drops it if the queue is full. The batch
    /// thread is woken only when a batch is ready.
    pub fn push(&self, span: Vec<u8>) {
        let Ok(mut q) = self.state.lock() else { return };
        if q.spans.len() >= self.max_queue {
            drop(q);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.spans.push(span);
        let ready = q.spans.len() == self.max_batch;
        drop(q);
        if ready {
            self.wake.notify_one();
        }
    }

    /// Everything queued so far (tests).
    #[cfg(test)]
    pub fn take(&self) -> Vec<Vec<u8>> {
        self.state
            .lock()
            .map(|mut q| std::mem::take(&mut q.spans))
            .unwrap_or_default()
    }
}

/// The batch thread and how to stop it.
pub struct Exporter {
    queue: Arc<Queue>,
    done: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

/// What the batch thread sends with.
struct Sender {
    channel: Channel,
    metadata: MetadataMap,
    timeout: Duration,
    runtime: tokio::runtime::Handle,
    /// The encoded `Resource` and `InstrumentationScope` messages.
    resource: Vec<u8>,
    scope: Vec<u8>,
}

impl Exporter {
    /// Starts the batch thread. The collector is connected to lazily: an
    /// unreachable one costs failed exports, never a failed start. Must run
    /// inside the Tokio runtime.
    pub fn start(config: Config, queue: Arc<Queue>, resource: &[(String, String)]) -> Result<Exporter, String> {
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
        let mut resource_bytes = Vec::new();
        for (k, v) in resource {
            put_attribute(&mut resource_bytes, 1, k, &Value::Str(v));
        }
        let mut scope = Vec::new();
        put_str(&mut scope, 1, "switchyard");
        put_str(&mut scope, 2, env!("CARGO_PKG_VERSION"));
        let sender = Sender {
            channel: endpoint.connect_lazy(),
            metadata,
            timeout: config.timeout,
            runtime: tokio::runtime::Handle::current(),
            resource: resource_bytes,
            scope,
        };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let q = queue.clone();
        let delay = config.schedule_delay;
        std::thread::Builder::new()
            .name("switchyard-otlp".into())
            .spawn(move || {
                batch_loop(&q, &sender, delay);
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("the span export thread cannot start: {e}"))?;
        Ok(Exporter {
            queue,
            done: Mutex::new(Some(done_rx)),
        })
    }

    /// Exports what is queued and stops the thread, within `grace`.
    pub fn shutdown(&self, grace: Duration) -> Result<(), String> {
        let deadline = Instant::now() + grace;
        if let Ok(mut q) = self.queue.state.lock() {
            q.closing = Some(deadline);
        }
        self.queue.wake.notify_one();
        let done = self.done.lock().ok().and_then(|mut d| d.take());
        match done.map(|d| d.recv_timeout(grace)) {
            Some(Ok(())) | None => Ok(()),
            Some(Err(_)) => Err(format!("spans still queued after {grace:?} were not exported")),
        }
    }
}

/// Waits for a full batch, the schedule delay or shutdown; exports; repeats.
fn batch_loop(queue: &Queue, sender: &Sender, delay: Duration) {
    let mut last_warning: Option<Instant> = None;
    let mut failed_batches = 0u64;
    loop {
        let due = Instant::now() + delay;
        let (batch, closing) = {
            let Ok(mut q) = queue.state.lock() else { return };
            while q.closing.is_none() && q.spans.len() < queue.max_batch {
                let left = due.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                q = match queue.wake.wait_timeout(q, left) {
                    Ok((q, _)) => q,
                    Err(_) => return,
                };
            }
            let n = q.spans.len().min(queue.max_batch);
            (q.spans.drain(..n).collect::<Vec<_>>(), q.closing)
        };
        if !batch.is_empty() {
            let timeout = match closing {
                Some(deadline) => sender.timeout.min(deadline.saturating_duration_since(Instant::now())),
                None => sender.timeout,
            };
            let body = Bytes::from(encode_resource_spans(&sender.resource, &sender.scope, &batch));
            drop(batch);
            let sent = sender
                .runtime
                .block_on(send(sender.channel.clone(), sender.metadata.clone(), body, timeout));
            if let Err(status) = sent {
                failed_batches += 1;
                // At most one warning a minute, however often exports fail.
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(
                        code = ?status.code(),
                        message = %status.message(),
                        failed_batches,
                        "spans could not be exported; they are dropped"
                    );
                    last_warning = Some(Instant::now());
                }
            }
        }
        let dropped = queue.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "spans were dropped because the export queue was full (raise OTEL_BSP_MAX_QUEUE_SIZE, or sample)"
            );
        }
        if let Some(deadline) = closing {
            let empty = queue.state.lock().map(|q| q.spans.is_empty()).unwrap_or(true);
            if empty || Instant::now() >= deadline {
                return;
            }
        }
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

// Protobuf, by hand. Field numbers are those of opentelemetry-proto's
// trace/v1, common/v1 and resource/v1 messages. Scalars at their default
// value are left out, as proto3 encoders do.

fn put_len(out: &mut Vec<u8>, tag: u32, len: usize) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

pub fn put_bytes(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    put_len(out, tag, bytes.len());
    out.extend_from_slice(bytes);
}

pub fn put_str(out: &mut Vec<u8>, tag: u32, s: &str) {
    if !s.is_empty() {
        put_bytes(out, tag, s.as_bytes());
    }
}

pub fn put_varint(out: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(v, out);
    }
}

pub fn put_fixed64(out: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        encode_key(tag, WireType::SixtyFourBit, out);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

pub fn put_fixed32(out: &mut Vec<u8>, tag: u32, v: u32) {
    if v != 0 {
        encode_key(tag, WireType::ThirtyTwoBit, out);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A length-delimited field's size: key, length and body.
fn field_len(tag: u32, body: usize) -> usize {
    prost::encoding::key_len(tag) + encoded_len_varint(body as u64) + body
}

/// The `AnyValue` message's body size.
fn any_value_len(v: &Value) -> usize {
    match v {
        Value::Bool(_) => 2,
        Value::Int(i) => 1 + encoded_len_varint(*i as u64),
        Value::Double(_) => 9,
        Value::Str(s) => field_len(1, s.len()),
    }
}

/// A `KeyValue` field: the key, and the value as an `AnyValue`, whose oneof
/// member is written even at its default.
pub fn put_attribute(out: &mut Vec<u8>, tag: u32, key: &str, value: &Value) {
    let key_len = if key.is_empty() { 0 } else { field_len(1, key.len()) };
    let value_len = any_value_len(value);
    put_len(out, tag, key_len + field_len(2, value_len));
    put_str(out, 1, key);
    put_len(out, 2, value_len);
    match value {
        Value::Bool(b) => {
            encode_key(2, WireType::Varint, out);
            encode_varint(u64::from(*b), out);
        }
        Value::Int(i) => {
            encode_key(3, WireType::Varint, out);
            encode_varint(*i as u64, out);
        }
        Value::Double(d) => {
            encode_key(4, WireType::SixtyFourBit, out);
            out.extend_from_slice(&d.to_le_bytes());
        }
        Value::Str(s) => put_bytes(out, 1, s.as_bytes()),
    }
}

/// `flags` in a `Span` or `Link`: the W3C trace flags, plus "whether the
/// parent is remote is known" and, if so, whether it is.
pub fn span_flags(trace_flags: u8, remote: bool) -> u32 {
    u32::from(trace_flags) | 0x100 | if remote { 0x200 } else { 0 }
}

/// trace_id (1) and span_id (2), the same fields in a `Span` and a `Link`.
/// Their sizes are fixed, so the lengths are constants.
pub fn put_ids(out: &mut Vec<u8>, ids: &SpanIds) {
    out.extend_from_slice(&[0x0a, 16]);
    out.extend_from_slice(&ids.trace_id);
    out.extend_from_slice(&[0x12, 8]);
    out.extend_from_slice(&ids.span_id);
}

/// A `Span`'s link (13) to a span of this sidecar: its IDs and flags (6),
/// whose size is fixed too.
pub fn put_link(out: &mut Vec<u8>, ids: &SpanIds) {
    const BODY: usize = 2 + 16 + 2 + 8 + 5;
    put_len(out, 13, BODY);
    put_ids(out, ids);
    put_fixed32(out, 6, span_flags(ids.flags, false));
}

/// A `Span`'s status (15), always present: for an error, its message (2) and
/// code 2 (3); otherwise empty (unset).
pub fn put_status(out: &mut Vec<u8>, error: Option<&str>) {
    match error {
        Some(message) => {
            let message_len = if message.is_empty() {
                0
            } else {
                field_len(2, message.len())
            };
            put_len(out, 15, message_len + 2);
            put_str(out, 2, message);
            put_varint(out, 3, 2);
        }
        None => put_len(out, 15, 0),
    }
}

pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// One `ResourceSpans` message: the resource, and one `ScopeSpans` holding
/// every span (each an encoded `Span` body).
pub fn encode_resource_spans(resource: &[u8], scope: &[u8], spans: &[Vec<u8>]) -> Vec<u8> {
    let spans_len: usize = spans.iter().map(|s| field_len(2, s.len())).sum();
    let scope_spans_len = field_len(1, scope.len()) + spans_len;
    let mut out = Vec::with_capacity(field_len(1, resource.len()) + field_len(2, scope_spans_len));
    put_bytes(&mut out, 1, resource);
    put_len(&mut out, 2, scope_spans_len);
    put_bytes(&mut out, 1, scope);
    for s in spans {
        put_bytes(&mut out, 2, s);
    }
    out
}

#[cfg(test)]
mod tests;
