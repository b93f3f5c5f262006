use super::*;
use std::collections::{HashMap, HashSet};

use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};
use prost::Message;

/// Spans queued rather than exported, with `sampler`.
fn recorder(sampler: Sampler) -> (Telemetry, Arc<otlp::Queue>) {
    let queue = Arc::new(otlp::Queue::new(4096, 512));
    let t = Telemetry {
        pipeline: Some(Pipeline {
            sampler,
            queue: queue.clone(),
            exporter: None,
        }),
        route_spans: RouteSpans::new(Duration::from_secs(60)),
    };
    (t, queue)
}

fn metadata(pairs: &[(&'static str, &str)]) -> tonic::metadata::MetadataMap {
    let mut m = tonic::metadata::MetadataMap::new();
    for (k, v) in pairs {
        m.insert(*k, v.parse().expect("ascii"));
    }
    m
}

fn finished(queue: &otlp::Queue) -> Vec<Span> {
    queue
        .take()
        .iter()
        .map(|b| Span::decode(b.as_slice()).expect("a queued span decodes as an OTLP Span"))
        .collect()
}

fn attrs(span: &Span) -> HashMap<String, Any> {
    span.attributes
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone().and_then(|v| v.value).expect("value")))
        .collect()
}

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn a_span_is_a_child_of_the_callers_with_its_attributes_times_and_flags() {
    let (t, queue) = recorder(Sampler::ParentBased(sampler::Root::AlwaysOn));
    let md = metadata(&[("traceparent", CALLER), ("tracestate", "vendor=abc,other=1")]);
    let before = otlp::unix_nanos(SystemTime::now());
    let mut span = t.start("Route", &md, None);
    assert!(span.is_recording());
    CallAttrs {
        provider: "openai",
        model: "gpt-4o-mini",
        workflow: "support",
        outcome_id: "ticket-42",
        decision_id: "0190b6f4-0000-7000-8000-000000000001",
        input_tokens: 1200,
        output_tokens: 300,
        cached_input_tokens: 1024,
        cost_nanos: 123_456,
        max_tokens: Some(400),
        response_model: Some("gpt-4o-mini-2024-07-18"),
    }
    .set_on(&mut span);
    span.set(attr::COMPLEXITY, 0.25);
    let tp = span.traceparent().expect("traceparent");
    let ids = SpanIds::parse(&tp).expect("valid traceparent");
    drop(span);
    let after = otlp::unix_nanos(SystemTime::now());

    let spans = finished(&queue);
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert_eq!(s.name, "Route");
    assert_eq!(s.kind, SpanKind::Server as i32);
    assert_eq!(s.trace_id, ids.trace_id);
    assert_eq!(
        hex(&s.trace_id),
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "the caller's trace"
    );
    assert_eq!(
        hex(&s.parent_span_id),
        "00f067aa0ba902b7",
        "a child of the caller's span"
    );
    assert_eq!(s.span_id, ids.span_id);
    assert_ne!(hex(&s.span_id), "00f067aa0ba902b7");
    assert_eq!(s.trace_state, "vendor=abc,other=1");
    assert!(before <= s.start_time_unix_nano && s.start_time_unix_nano <= s.end_time_unix_nano);
    assert!(s.end_time_unix_nano <= after);
    // Sampled, with "the parent is remote" known and true.
    assert_eq!(s.flags, 0x301);
    assert_eq!(tp.split('-').nth(3), Some("01"));
    let status = s.status.as_ref().expect("status");
    assert_eq!((status.code, status.message.as_str()), (StatusCode::Unset as i32, ""));
    let a = attrs(s);
    assert_eq!(a["gen_ai.operation.name"], Any::StringValue("chat".into()));
    assert_eq!(a["gen_ai.provider.name"], Any::StringValue("openai".into()));
    assert_eq!(a["gen_ai.request.model"], Any::StringValue("gpt-4o-mini".into()));
    assert_eq!(a["gen_ai.usage.input_tokens"], Any::IntValue(1200));
    assert_eq!(a["gen_ai.usage.output_tokens"], Any::IntValue(300));
    assert_eq!(a["gen_ai.usage.cache_read.input_tokens"], Any::IntValue(1024));
    assert_eq!(a["switchyard.workflow"], Any::StringValue("support".into()));
    assert_eq!(a["switchyard.outcome.id"], Any::StringValue("ticket-42".into()));
    assert_eq!(a["switchyard.cost.usd"], Any::DoubleValue(0.000123456));
    assert_eq!(a["switchyard.complexity"], Any::DoubleValue(0.25));
    // The GenAI conventions' newer names, beside Switchyard's own.
    assert_eq!(a["gen_ai.request.max_tokens"], Any::IntValue(400));
    assert_eq!(
        a["gen_ai.response.model"],
        Any::StringValue("gpt-4o-mini-2024-07-18".into())
    );
    assert_eq!(a["gen_ai.usage.cost.amount"], Any::DoubleValue(0.000123456));
    assert_eq!(a["gen_ai.usage.cost.currency"], Any::StringValue("USD".into()));
    assert_eq!(a.len(), 15);
}

fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

#[test]
fn report_usage_links_to_its_route_span_and_a_failure_carries_its_message() {
    let (t, queue) = recorder(Sampler::ParentBased(sampler::Root::AlwaysOn));
    let decision = "0190b6f4-0000-7000-8000-0000000000aa";
    let route = t.start("Route", &metadata(&[]), None);
    t.remember_route(decision, &route);
    let route_ids = SpanIds::parse(&route.traceparent().expect("tp")).expect("ids");
    drop(route);
    assert_eq!(t.route_link("not-a-uuid"), None);
    assert_eq!(t.route_link("0190b6f4-0000-7000-8000-0000000000ab"), None);
    let link = t.route_link(decision);
    assert_eq!(link, Some(route_ids));
    let mut report = t.start("ReportUsage", &metadata(&[]), link);
    report.fail(&tonic::Status::not_found("decision 42 is unknown"));
    drop(report);

    let spans = finished(&queue);
    let (route, report) = (&spans[0], &spans[1]);
    // A new trace: no parent, flags say sampled and "parent is remote" known, false.
    assert!(route.parent_span_id.is_empty() && route.trace_state.is_empty());
    assert_eq!(route.flags, 0x101);
    assert_eq!(report.links.len(), 1);
    let l = &report.links[0];
    assert_eq!(
        (l.trace_id.as_slice(), l.span_id.as_slice()),
        (&route.trace_id[..], &route.span_id[..])
    );
    assert_eq!(l.flags, 0x101);
    let status = report.status.as_ref().expect("status");
    assert_eq!(status.code, StatusCode::Error as i32);
    assert_eq!(status.message, "NotFound: decision 42 is unknown");
}

#[test]
fn an_unsampled_caller_gets_a_traceparent_and_nothing_is_recorded() {
    let (t, queue) = recorder(Sampler::ParentBased(sampler::Root::AlwaysOn));
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let mut span = t.start("Route", &metadata(&[("traceparent", unsampled)]), None);
    assert!(!span.is_recording());
    span.set(attr::WORKFLOW, "support");
    let tp = span.traceparent().expect("traceparent");
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && tp.ends_with("-00"),
        "{tp}"
    );
    drop(span);
    assert!(queue.take().is_empty());
    // Export off: no span, no traceparent of our own.
    let off = Telemetry::off();
    let span = off.start("Route", &metadata(&[("traceparent", CALLER)]), None);
    assert!(!span.is_recording() && span.traceparent().is_none());
}

#[test]
fn new_traces_and_spans_get_distinct_ids() {
    let (t, queue) = recorder(Sampler::AlwaysOn);
    let (mut traces, mut spans) = (HashSet::new(), HashSet::new());
    for _ in 0..2000 {
        let ids = SpanIds::parse(&t.start("Route", &metadata(&[]), None).traceparent().expect("tp")).expect("ids");
        assert!(traces.insert(ids.trace_id) && spans.insert(ids.span_id));
    }
    assert_eq!(queue.take().len(), 2000);
}

#[test]
fn traceparent_parsing_follows_the_w3c_rules() {
    let ids = SpanIds::parse(CALLER).expect("valid");
    assert_eq!(ids.traceparent(), CALLER);
    assert!(ids.sampled());
    // A later version may append fields; version 00 may not.
    assert!(SpanIds::parse(&format!("01{}-extra", &CALLER[2..])).is_some());
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
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
    ] {
        assert_eq!(SpanIds::parse(bad), None, "{bad}");
        assert_eq!(incoming_traceparent(&metadata(&[("traceparent", bad)])), "", "{bad}");
    }
    assert_eq!(incoming_traceparent(&metadata(&[("traceparent", CALLER)])), CALLER);
}

fn sampler(vars: &[(&str, &str)]) -> Result<Sampler, String> {
    let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Sampler::from_vars(|name| vars.get(name).cloned())
}

#[test]
fn samplers_are_read_and_decide_as_specified() {
    use sampler::Root;
    assert_eq!(sampler(&[]), Ok(Sampler::ParentBased(Root::AlwaysOn)));
    assert_eq!(
        sampler(&[("OTEL_TRACES_SAMPLER", "always_off")]),
        Ok(Sampler::AlwaysOff)
    );
    assert_eq!(
        sampler(&[("OTEL_TRACES_SAMPLER", "parentbased_always_off")]),
        Ok(Sampler::ParentBased(Root::AlwaysOff))
    );
    let quarter = sampler(&[
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
    ])
    .expect("valid");
    let mut kept = 0;
    for i in 0..20_000u64 {
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&(random_id() ^ i).to_be_bytes());
        let keeps = quarter.keeps(&id, None);
        assert_eq!(keeps, quarter.keeps(&id, None), "the same trace, the same decision");
        kept += u32::from(keeps);
        // A caller's decision wins.
        assert!(quarter.keeps(&id, Some(true)) && !quarter.keeps(&id, Some(false)));
    }
    assert!((4_000..6_000).contains(&kept), "{kept} of 20000 kept at 0.25");
    let none = sampler(&[
        ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0"),
    ])
    .expect("valid");
    let all = sampler(&[("OTEL_TRACES_SAMPLER", "traceidratio")]).expect("valid");
    let id = [0xff; 16];
    assert!(!none.keeps(&id, Some(true)) && all.keeps(&id, Some(false)));
    for (vars, says) in [
        (vec![("OTEL_TRACES_SAMPLER", "sometimes")], "is not a sampler"),
        (
            vec![
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
            ],
            "from 0 to 1",
        ),
        (
            vec![
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "half"),
            ],
            "from 0 to 1",
        ),
    ] {
        let e = sampler(&vars).expect_err(says);
        assert!(e.contains(says), "{e}");
    }
}

fn resource(vars: &[(&str, &str)]) -> Result<Vec<(String, String)>, String> {
    let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    resource_from_vars(|name| vars.get(name).cloned())
}

#[test]
fn the_resource_names_the_service_and_carries_the_operators_attributes() {
    let get = |r: &[(String, String)], k: &str| r.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let r = resource(&[]).expect("valid");
    assert_eq!(get(&r, "service.name").as_deref(), Some("switchyard"));
    assert_eq!(get(&r, "telemetry.sdk.language").as_deref(), Some("rust"));
    let r = resource(&[(
        "OTEL_RESOURCE_ATTRIBUTES",
        "deployment.environment=prod,service.name=from-attrs,k8s.pod.name=agent%2D7",
    )])
    .expect("valid");
    assert_eq!(get(&r, "service.name").as_deref(), Some("from-attrs"));
    assert_eq!(get(&r, "k8s.pod.name").as_deref(), Some("agent-7"));
    let r = resource(&[
        ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs"),
        ("OTEL_SERVICE_NAME", "from-name"),
    ])
    .expect("valid");
    assert_eq!(get(&r, "service.name").as_deref(), Some("from-name"));
    assert_eq!(r.iter().filter(|(k, _)| k == "service.name").count(), 1);
    let e = resource(&[("OTEL_RESOURCE_ATTRIBUTES", "oops")]).expect_err("no =");
    assert!(
        e.starts_with("OTEL_RESOURCE_ATTRIBUTES") && e.contains("key=value"),
        "{e}"
    );
}
