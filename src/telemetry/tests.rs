use super::*;
use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SpanData};

/// Spans exported as each ends, to memory, with `sampler`.
fn recorder(sampler: Sampler) -> (Telemetry, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .with_sampler(sampler)
        .build();
    (
        Telemetry::with_provider(provider, Duration::from_secs(60), Default::default()),
        exporter,
    )
}

fn parent_based() -> Sampler {
    Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
}

fn metadata(pairs: &[(&'static str, &str)]) -> tonic::metadata::MetadataMap {
    let mut m = tonic::metadata::MetadataMap::new();
    for (k, v) in pairs {
        m.insert(*k, v.parse().expect("ascii"));
    }
    m
}

fn finished(exporter: &InMemorySpanExporter) -> Vec<SpanData> {
    exporter.get_finished_spans().expect("spans")
}

fn attrs(span: &SpanData) -> HashMap<String, opentelemetry::Value> {
    span.attributes
        .iter()
        .map(|kv| (kv.key.to_string(), kv.value.clone()))
        .collect()
}

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

const ROUTE: &str = "switchyard.v1.Router/Route";
const REPORT_USAGE: &str = "switchyard.v1.Router/ReportUsage";

#[test]
fn a_route_span_is_a_child_of_the_callers_named_for_its_method_with_a_decision_not_usage() {
    use opentelemetry::Value as V;
    let (t, exporter) = recorder(parent_based());
    let md = metadata(&[("traceparent", CALLER), ("tracestate", "vendor=abc,other=1")]);
    let before = SystemTime::now();
    let mut span = t.start(ROUTE, &md, None);
    assert!(span.is_recording());
    DecisionAttrs {
        provider: "google",
        model: "gemini-flash",
        api_model: "gemini-2.5-flash",
        workflow: "support",
        outcome_id: "ticket-42",
        decision_id: "0190b6f4-0000-7000-8000-000000000001",
        input_tokens: 1200,
        cached_input_tokens: 1024,
        output_tokens: 300,
        cost_nanos: 123_456,
        max_tokens: Some(400),
    }
    .set_on(&mut span);
    span.set(attr::COMPLEXITY, 0.25);
    span.answered(None);
    let tp = span.traceparent().expect("traceparent");
    drop(span);
    let after = SystemTime::now();

    let spans = finished(&exporter);
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert_eq!(s.name, ROUTE);
    assert_eq!(s.span_kind, SpanKind::Server);
    assert_eq!(
        s.span_context.trace_id(),
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex"),
        "the caller's trace"
    );
    assert_eq!(
        s.parent_span_id,
        SpanId::from_hex("00f067aa0ba902b7").expect("hex"),
        "a child of the caller's span"
    );
    assert!(s.parent_span_is_remote);
    assert_eq!(
        tp,
        format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", s.span_context.span_id()),
        "the traceparent names this span, sampled"
    );
    assert_eq!(s.span_context.trace_state().header(), "vendor=abc,other=1");
    assert!(before <= s.start_time && s.start_time <= s.end_time && s.end_time <= after);
    assert_eq!(s.status, Status::Unset);
    let a = attrs(s);
    assert_eq!(a["rpc.system.name"], V::from("grpc"));
    assert_eq!(a["rpc.method"], V::from(ROUTE));
    assert_eq!(a["rpc.response.status_code"], V::from("OK"));
    assert_eq!(a["gen_ai.provider.name"], V::from("gcp.gemini"), "the well-known value");
    assert_eq!(a["gen_ai.request.model"], V::from("gemini-2.5-flash"), "the ID sent");
    assert_eq!(a["gen_ai.request.max_tokens"], V::I64(400));
    assert_eq!(a["switchyard.model"], V::from("gemini-flash"));
    assert_eq!(a["switchyard.estimate.input_tokens"], V::I64(1200));
    assert_eq!(a["switchyard.estimate.cached_input_tokens"], V::I64(1024));
    assert_eq!(a["switchyard.estimate.output_tokens"], V::I64(300));
    assert_eq!(a["switchyard.estimate.cost_usd"], V::F64(0.000123456));
    assert_eq!(a["switchyard.workflow"], V::from("support"));
    assert_eq!(a["switchyard.outcome.id"], V::from("ticket-42"));
    assert_eq!(a["switchyard.complexity"], V::F64(0.25));
    // A forecast is never usage, cost, or a model call.
    for k in a.keys() {
        assert!(
            !k.starts_with("gen_ai.usage.") && k != "gen_ai.operation.name" && k != "switchyard.cost.usd",
            "{k} on Route"
        );
    }
    assert_eq!(a.len(), 15);
}

#[test]
fn report_usage_links_to_its_route_span_and_carries_the_actual_usage() {
    use opentelemetry::Value as V;
    let (t, exporter) = recorder(parent_based());
    let decision = "0190b6f4-0000-7000-8000-0000000000aa";
    let route = t.start(ROUTE, &metadata(&[]), None);
    t.remember_route(decision, &route);
    let route_ids = route.ids().expect("ids");
    drop(route);
    assert_eq!(t.route_link("not-a-uuid"), None);
    assert_eq!(t.route_link("0190b6f4-0000-7000-8000-0000000000ab"), None);
    let link = t.route_link(decision);
    assert_eq!(link.as_ref(), Some(&route_ids));
    let mut report = t.start(REPORT_USAGE, &metadata(&[]), link);
    UsageAttrs {
        provider: "anthropic",
        model: "claude-sonnet",
        api_model: Some("claude-sonnet-4-5-20250929"),
        workflow: "support",
        outcome_id: "ticket-42",
        decision_id: decision,
        input_tokens: 3000,
        cache_read_input_tokens: 1024,
        cache_write_input_tokens: 512,
        output_tokens: 200,
        cost_nanos: 7_000_000,
    }
    .set_on(&mut report);
    report.answered(None);
    drop(report);

    let spans = finished(&exporter);
    let (route, report) = (&spans[0], &spans[1]);
    // A new trace: no parent.
    assert_eq!(route.parent_span_id, SpanId::INVALID);
    assert!(route.span_context.is_sampled());
    assert_eq!(report.name, REPORT_USAGE);
    assert_eq!(report.links.len(), 1);
    assert_eq!(report.links[0].span_context, route.span_context);
    let a = attrs(report);
    assert_eq!(a["gen_ai.provider.name"], V::from("anthropic"));
    assert_eq!(a["gen_ai.request.model"], V::from("claude-sonnet-4-5-20250929"));
    assert_eq!(a["gen_ai.usage.input_tokens"], V::I64(3000));
    assert_eq!(a["gen_ai.usage.output_tokens"], V::I64(200));
    assert_eq!(a["gen_ai.usage.cache_read.input_tokens"], V::I64(1024));
    assert_eq!(a["gen_ai.usage.cache_write.input_tokens"], V::I64(512));
    assert_eq!(a["switchyard.cost.usd"], V::F64(0.007));
    assert!(
        !a.contains_key("gen_ai.operation.name"),
        "a report on a call is not a call"
    );
    assert!(!a.contains_key("gen_ai.usage.cost.amount"));
}

#[test]
fn only_server_errors_mark_a_span_failed() {
    use opentelemetry::Value as V;
    let (t, exporter) = recorder(parent_based());
    let cases = [
        (tonic::Status::resource_exhausted("budget `support` is spent"), false),
        (tonic::Status::failed_precondition("escalation waits"), false),
        (tonic::Status::invalid_argument("messages is empty"), false),
        (tonic::Status::not_found("decision 42 is unknown"), false),
        (tonic::Status::unauthenticated("no key"), false),
        (tonic::Status::unavailable("the store is down"), true),
        (tonic::Status::internal("a bug"), true),
        (tonic::Status::deadline_exceeded("too slow"), true),
    ];
    for (status, _) in &cases {
        let mut span = t.start(ROUTE, &metadata(&[]), None);
        span.answered(Some(status));
    }
    let spans = finished(&exporter);
    assert_eq!(spans.len(), cases.len());
    for (s, (status, error)) in spans.iter().zip(&cases) {
        let a = attrs(s);
        let name = status_code_name(status.code());
        assert_eq!(a["rpc.response.status_code"], V::from(name));
        if *error {
            assert_eq!(a["error.type"], V::from(name));
            assert_eq!(s.status, Status::error(format!("{name}: {}", status.message())));
        } else {
            assert!(!a.contains_key("error.type"), "{name} is not a server error");
            assert_eq!(s.status, Status::Unset, "{name}");
        }
    }
}

#[test]
fn providers_get_the_conventions_well_known_names() {
    for (rules, semconv) in [
        ("openai", "openai"),
        ("anthropic", "anthropic"),
        ("google", "gcp.gemini"),
        ("mistral", "mistral_ai"),
        ("xai", "x_ai"),
        ("bedrock", "aws.bedrock"),
        ("deepseek", "deepseek"),
        ("acme-internal", "acme-internal"),
    ] {
        assert_eq!(provider_name(rules), semconv);
    }
}

#[test]
fn an_unsampled_caller_gets_a_traceparent_and_nothing_is_recorded() {
    let (t, exporter) = recorder(parent_based());
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let mut span = t.start(ROUTE, &metadata(&[("traceparent", unsampled)]), None);
    assert!(!span.is_recording());
    span.set(attr::WORKFLOW, "support");
    let tp = span.traceparent().expect("traceparent");
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp.ends_with("-00"),
        "{tp}"
    );
    drop(span);
    assert!(finished(&exporter).is_empty());
    // Export off: no span, no traceparent of our own.
    let off = Telemetry::off();
    let span = off.start(ROUTE, &metadata(&[("traceparent", CALLER)]), None);
    assert!(!span.is_recording() && span.traceparent().is_none());
}

#[test]
fn a_ratio_sampler_keeps_about_its_share_and_the_callers_decision_wins() {
    let (t, exporter) = recorder(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.25))));
    let mut kept = 0;
    for _ in 0..8_000 {
        kept += usize::from(t.start(ROUTE, &metadata(&[]), None).is_recording());
    }
    assert!((1_600..2_400).contains(&kept), "{kept} of 8000 kept at 0.25");
    assert_eq!(finished(&exporter).len(), kept);
    assert!(t
        .start(ROUTE, &metadata(&[("traceparent", CALLER)]), None)
        .is_recording());
}

#[test]
fn new_traces_and_spans_get_distinct_ids() {
    let (t, exporter) = recorder(Sampler::AlwaysOn);
    let (mut traces, mut spans) = (HashSet::new(), HashSet::new());
    for _ in 0..2000 {
        let ids = t.start(ROUTE, &metadata(&[]), None).ids().expect("ids");
        assert!(traces.insert(ids.trace_id()) && spans.insert(ids.span_id()));
    }
    assert_eq!(finished(&exporter).len(), 2000);
}

#[test]
fn traceparent_parsing_follows_the_w3c_rules() {
    let (trace, span) = parse_traceparent(CALLER).expect("valid");
    assert_eq!(
        (trace.as_str(), span.as_str()),
        ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
    );
    for bad in [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
    ] {
        assert_eq!(parse_traceparent(bad), None, "{bad}");
        assert_eq!(incoming_traceparent(&metadata(&[("traceparent", bad)])), "", "{bad}");
    }
    assert_eq!(incoming_traceparent(&metadata(&[("traceparent", CALLER)])), CALLER);
    // What Switchyard writes, its propagator reads back.
    let (t, _exporter) = recorder(Sampler::AlwaysOn);
    let span = t.start(ROUTE, &metadata(&[]), None);
    let ids = span.ids().expect("ids");
    let tp = span.traceparent().expect("tp");
    assert_eq!(
        parse_traceparent(&tp),
        Some((ids.trace_id().to_string(), ids.span_id().to_string()))
    );
}

#[test]
fn hostile_trace_context_starts_a_new_trace_or_is_bounded() {
    let (t, exporter) = recorder(parent_based());
    // A huge tracestate with a valid traceparent: the caller's trace is kept,
    // and the state the SDK keeps is bounded by its own rules (32 members).
    let members: Vec<String> = (0..2000).map(|i| format!("k{i}=v{i}")).collect();
    let huge = members.join(",");
    let span = t.start(
        "Route",
        &metadata(&[("traceparent", CALLER), ("tracestate", &huge)]),
        None,
    );
    let ids = span.ids().expect("ids");
    assert_eq!(ids.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(
        ids.trace_state().header().len() <= 512 * 32,
        "{}",
        ids.trace_state().header().len()
    );
    drop(span);
    // Garbage: a new trace, not an error.
    for bad in ["\u{7f}", "00-zz", &"9".repeat(8192)] {
        let Ok(v) = bad.parse() else { continue };
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("traceparent", v);
        let span = t.start(ROUTE, &m, None);
        let ids = span.ids().expect("ids");
        assert!(ids.is_valid() && ids.trace_id().to_string() != "4bf92f3577b34da6a3ce929d0e0e4736");
    }
    assert_eq!(finished(&exporter).len(), 3);
}
