use super::*;
use std::borrow::Cow;
use std::collections::HashMap;

use opentelemetry::trace::{Event, SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry::StringValue;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
use prost::Message;

fn context(trace: u128, span: u64, sampled: bool, remote: bool, state: &str) -> SpanContext {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let state: TraceState = state.parse().expect("trace state");
    SpanContext::new(TraceId::from(trace), SpanId::from(span), flags, remote, state)
}

fn at(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// Spans with every field the encoder writes, and the defaults it leaves out.
fn batch() -> Vec<SpanData> {
    let scope = InstrumentationScope::builder("switchyard")
        .with_version("1.2.3")
        .build();
    let other = InstrumentationScope::builder("other")
        .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
        .with_attributes([KeyValue::new("scope.attr", 7)])
        .build();
    let mut events = SpanEvents::default();
    events.events.push(Event::new(
        "retry",
        at(1_700_000_000_500_000_000),
        vec![KeyValue::new("attempt", 2)],
        1,
    ));
    events.dropped_count = 3;
    let mut links = SpanLinks::default();
    links.links.push(Link::new(
        context(7, 8, true, true, "vendor=x"),
        vec![KeyValue::new("why", "same decision")],
        4,
    ));
    links.links.push(Link::with_context(context(9, 10, false, false, "")));
    links.dropped_count = 1;
    let route = SpanData {
        span_context: context(
            0x4bf92f3577b34da6a3ce929d0e0e4736,
            0x00f067aa0ba902b7,
            true,
            false,
            "a=1,b=2",
        ),
        parent_span_id: SpanId::from(0x1122334455667788),
        parent_span_is_remote: true,
        span_kind: SpanKind::Server,
        name: Cow::Borrowed("Route"),
        start_time: at(1_700_000_000_000_000_000),
        end_time: at(1_700_000_000_000_250_000),
        attributes: vec![
            KeyValue::new("gen_ai.request.model", "gpt-4o-mini"),
            KeyValue::new("gen_ai.usage.input_tokens", 1234_i64),
            KeyValue::new("negative", -5_i64),
            KeyValue::new("zero", 0_i64),
            KeyValue::new("switchyard.cost.usd", 0.000123),
            KeyValue::new("flag.off", false),
            KeyValue::new("flag.on", true),
            KeyValue::new("empty", ""),
            KeyValue::new("", "no key"),
            KeyValue::new("bools", Value::Array(vec![true, false].into())),
            KeyValue::new("ints", Value::Array(vec![1_i64, -2, 300].into())),
            KeyValue::new("floats", Value::Array(vec![0.5, -1.25].into())),
            KeyValue::new(
                "strings",
                Value::Array(vec![StringValue::from("a"), StringValue::from("")].into()),
            ),
            KeyValue::new("no.items", Value::Array(Vec::<i64>::new().into())),
        ],
        dropped_attributes_count: 2,
        events,
        links,
        status: Status::error("Internal: the store is unavailable"),
        instrumentation_scope: scope.clone(),
    };
    let plain = |name: &'static str, kind: SpanKind, status: Status, scope: &InstrumentationScope| SpanData {
        span_context: context(1, 2, true, false, ""),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: kind,
        name: Cow::Borrowed(name),
        start_time: at(5),
        end_time: at(6),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    };
    vec![
        route,
        plain("ReportUsage", SpanKind::Client, Status::Ok, &other),
        plain("RecordOutcome", SpanKind::Internal, Status::Unset, &scope),
        plain("p", SpanKind::Producer, Status::Unset, &other),
        plain("c", SpanKind::Consumer, Status::Unset, &scope),
    ]
}

fn resource() -> Resource {
    Resource::builder_empty()
        .with_schema_url(
            [KeyValue::new("service.name", "switchyard")],
            "https://opentelemetry.io/schemas/1.21.0",
        )
        .with_attributes([
            KeyValue::new("k8s.pod.name", "agent-7"),
            KeyValue::new("replicas", 3_i64),
        ])
        .build()
}

#[test]
fn encodes_exactly_what_the_reference_transform_builds() {
    let resource = resource();
    let mut encoded_resource = Vec::new();
    for (k, v) in resource.iter() {
        put_key_value(&mut encoded_resource, 1, k.as_str(), v);
    }
    let bytes = encode_resource_spans(&encoded_resource, resource.schema_url().unwrap_or_default(), &batch());
    let ours = ResourceSpans::decode(bytes.as_slice()).expect("our bytes decode as ResourceSpans");
    let reference = group_spans_by_resource_and_scope(batch(), &ResourceAttributesWithSchema::from(&resource));
    assert_eq!(reference.len(), 1);
    assert_eq!(ours, reference[0]);
    // And the request wrapper sends those bytes as one ResourceSpans.
    let request = ExportRequest {
        resource_spans: vec![Bytes::from(bytes)],
    }
    .encode_to_vec();
    let decoded =
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(request.as_slice())
            .expect("decodes");
    assert_eq!(decoded.resource_spans, reference);
}

#[test]
fn an_empty_batch_is_a_resource_with_no_scopes() {
    let bytes = encode_resource_spans(&[], "", &[]);
    let decoded = ResourceSpans::decode(bytes.as_slice()).expect("decodes");
    assert!(decoded.scope_spans.is_empty());
    assert_eq!(decoded.resource.map(|r| r.attributes.len()), Some(0));
}

fn config(vars: &[(&str, &str)]) -> Result<Option<Config>, String> {
    let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_vars(|name| vars.get(name).cloned())
}

#[test]
fn reads_the_standard_variables_traces_specific_first() {
    assert_eq!(config(&[]), Ok(None));
    assert_eq!(config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")]), Ok(None));
    let c = config(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-honeycomb-team=abc%20def , X-Tenant=t1"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
    ])
    .expect("valid")
    .expect("configured");
    assert_eq!(c.endpoint, "http://traces:4317");
    assert_eq!(
        c.headers,
        vec![
            ("x-honeycomb-team".to_string(), "abc def".to_string()),
            ("x-tenant".to_string(), "t1".to_string())
        ]
    );
    assert_eq!(c.timeout, Duration::from_millis(2500));
    let c = config(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "40"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "50"),
    ])
    .expect("valid")
    .expect("configured");
    assert_eq!(
        (c.endpoint.as_str(), c.timeout),
        ("http://general:4317", Duration::from_millis(40))
    );
    assert_eq!(c.headers, vec![("b".to_string(), "2".to_string())]);
}

#[test]
fn a_bad_variable_is_named_with_what_to_fix() {
    let endpoint = |v: &str| config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", v)]).expect_err(v);
    let e = endpoint("https://collector:4317");
    assert!(e.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && e.contains("TLS"), "{e}");
    let e = endpoint("collector:4317");
    assert!(e.contains("http://"), "{e}");
    let with =
        |name: &str, v: &str| config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), (name, v)]).expect_err(v);
    for (v, says) in [
        ("novalue", "not key=value"),
        ("a=%zz", "%-escape"),
        ("bad key=1", "not a valid header name"),
        ("k-bin=1", "not a valid header name"),
        ("k=line%0Abreak", "not a valid header value"),
    ] {
        let e = with("OTEL_EXPORTER_OTLP_TRACES_HEADERS", v);
        assert!(
            e.starts_with("OTEL_EXPORTER_OTLP_TRACES_HEADERS") && e.contains(says),
            "{v}: {e}"
        );
    }
    for v in ["0", "-1", "soon"] {
        let e = with("OTEL_EXPORTER_OTLP_TIMEOUT", v);
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_TIMEOUT") && e.contains("milliseconds"),
            "{e}"
        );
    }
}
