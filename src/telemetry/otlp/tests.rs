use super::*;
use std::collections::HashMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::AnyValue;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span};
use prost::Message;

fn any(v: Any) -> Option<AnyValue> {
    Some(AnyValue { value: Some(v) })
}

#[test]
fn attributes_decode_as_the_collector_reads_them() {
    let mut span = Vec::new();
    let cases: [(&str, Value, Any); 9] = [
        (
            "gen_ai.request.model",
            Value::Str("gpt-4o-mini"),
            Any::StringValue("gpt-4o-mini".into()),
        ),
        ("empty", Value::Str(""), Any::StringValue(String::new())),
        ("tokens", Value::Int(1234), Any::IntValue(1234)),
        ("zero", Value::Int(0), Any::IntValue(0)),
        ("negative", Value::Int(-5), Any::IntValue(-5)),
        ("cost", Value::Double(0.000123), Any::DoubleValue(0.000123)),
        ("no", Value::Bool(false), Any::BoolValue(false)),
        ("yes", Value::Bool(true), Any::BoolValue(true)),
        ("", Value::Str("no key"), Any::StringValue("no key".into())),
    ];
    for (k, v, _) in &cases {
        put_attribute(&mut span, 9, k, v);
    }
    let decoded = Span::decode(span.as_slice()).expect("decodes as a Span");
    assert_eq!(decoded.attributes.len(), cases.len());
    for (kv, (k, _, want)) in decoded.attributes.iter().zip(cases) {
        assert_eq!(kv.key, k);
        assert_eq!(kv.value, any(want), "{k}");
    }
}

#[test]
fn a_batch_is_one_resource_with_one_scope_holding_every_span() {
    let mut resource = Vec::new();
    put_attribute(&mut resource, 1, "service.name", &Value::Str("agent"));
    let mut scope = Vec::new();
    put_str(&mut scope, 1, "switchyard");
    put_str(&mut scope, 2, "9.9.9");
    let spans: Vec<Vec<u8>> = ["Route", "ReportUsage", ""]
        .iter()
        .map(|name| {
            let mut s = Vec::new();
            put_str(&mut s, 5, name);
            put_fixed64(&mut s, 7, 42);
            s
        })
        .collect();
    let bytes = encode_resource_spans(&resource, &scope, &spans);
    let rs = ResourceSpans::decode(bytes.as_slice()).expect("decodes");
    let attrs = &rs.resource.as_ref().expect("resource").attributes;
    assert_eq!(attrs[0].key, "service.name");
    assert_eq!(rs.scope_spans.len(), 1);
    let ss = &rs.scope_spans[0];
    let sc = ss.scope.as_ref().expect("scope");
    assert_eq!((sc.name.as_str(), sc.version.as_str()), ("switchyard", "9.9.9"));
    let names: Vec<&str> = ss.spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["Route", "ReportUsage", ""]);
    assert!(ss.spans.iter().all(|s| s.start_time_unix_nano == 42));

    // The request wrapper carries those bytes as the request's one ResourceSpans.
    let request = ExportRequest {
        resource_spans: vec![Bytes::from(bytes)],
    }
    .encode_to_vec();
    let decoded = ExportTraceServiceRequest::decode(request.as_slice()).expect("decodes");
    assert_eq!(decoded.resource_spans, vec![rs]);

    let empty = ResourceSpans::decode(encode_resource_spans(&[], &scope, &[]).as_slice()).expect("decodes");
    assert!(empty.scope_spans[0].spans.is_empty());
}

#[test]
fn a_full_queue_drops_and_counts_and_wakes_the_thread_only_for_a_batch() {
    let q = Queue::new(3, 2);
    for i in 0..5u8 {
        q.push(vec![i]);
    }
    assert_eq!(q.dropped.load(Ordering::Relaxed), 2);
    assert_eq!(q.take(), vec![vec![0], vec![1], vec![2]]);
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
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "4096"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1024"),
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
    assert_eq!(c.schedule_delay, Duration::from_millis(100));
    assert_eq!((c.max_queue, c.max_batch), (4096, 1024));
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
    // The defaults, and the batch processor's export timeout capping the OTLP one.
    let c = config(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
        ("OTEL_BSP_EXPORT_TIMEOUT", "700"),
    ])
    .expect("valid")
    .expect("configured");
    assert_eq!(c.timeout, Duration::from_millis(700));
    assert_eq!(c.schedule_delay, Duration::from_secs(5));
    assert_eq!((c.max_queue, c.max_batch), (2048, 512));
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
    for name in [
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_BSP_SCHEDULE_DELAY",
        "OTEL_BSP_MAX_QUEUE_SIZE",
    ] {
        // Too large would overflow a deadline in the export thread.
        for v in ["0", "-1", "soon", "18446744073709551615"] {
            let e = with(name, v);
            assert!(
                e.starts_with(&format!("{name}={v}")) && e.contains("positive whole number") && e.contains("at most"),
                "{e}"
            );
        }
    }
    let e = config(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
    ])
    .expect_err("batch larger than queue");
    assert!(
        e.contains("OTEL_BSP_MAX_EXPORT_BATCH_SIZE=512") && e.contains("OTEL_BSP_MAX_QUEUE_SIZE=100"),
        "{e}"
    );
}
