//! Traces and metrics: a real OTLP/gRPC receiver (the collector's trace
//! service from opentelemetry-proto, on a free port) receives Switchyard's
//! spans, children of the caller's trace, with the GenAI and `switchyard.*`
//! attributes and no prompt text; `/metrics` parses as Prometheus text.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use switchyard::grpc::pb;

/// A received span with its resource's attributes.
type Received = (HashMap<String, String>, Span);

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
    /// The `x-tenant` header of each export.
    tenants: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let tenant = request.metadata().get("x-tenant").and_then(|v| v.to_str().ok());
        self.tenants
            .lock()
            .expect("lock")
            .push(tenant.unwrap_or("<none>").to_string());
        let mut spans = self.spans.lock().expect("lock");
        for rs in request.into_inner().resource_spans {
            let resource: HashMap<String, String> = rs
                .resource
                .map(|r| {
                    r.attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), value(kv.value.as_ref())))
                        .collect()
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push((resource.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn value(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        _ => String::new(),
    }
}

fn attrs(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| (kv.key.clone(), value(kv.value.as_ref())))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A real OTLP/gRPC trace receiver on a free port, and its endpoint URL.
async fn start_receiver() -> (Receiver, String) {
    start_receiver_on("127.0.0.1:0").await
}

async fn start_receiver_on(addr: &str) -> (Receiver, String) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let svc = receiver.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    (receiver, format!("http://{addr}"))
}

const SECRET_PROMPT: &str = "Summarise the zebra-violet-quartz incident for the status page.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_real_otlp_receiver_inside_the_callers_trace() {
    let (receiver, endpoint) = start_receiver().await;
    let server = Server::start_with_env(
        &repo_path("routing-rules/examples/budgets.toml"),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "switchyard-under-test"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme%20ci"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let mut c = server.client().await;
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut req = tonic::Request::new(pb::RouteRequest {
        outcome_id: "ticket-42".into(),
        max_output_tokens: 300,
        ..request("budget-demo", SECRET_PROMPT)
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-{caller_span}-01").parse().expect("metadata"),
    );
    let r = c.route(req).await.expect("route").into_inner();
    let (tp_trace, route_span_id) = switchyard::telemetry::parse_traceparent(&r.traceparent).expect("traceparent");
    assert_eq!(tp_trace, caller_trace, "our span is in the caller's trace");
    let mut usage = tonic::Request::new(pb::UsageReport {
        decision_id: r.decision_id.clone(),
        model: r.model.clone(),
        input_tokens: 120,
        cached_input_tokens: 20,
        cache_write_input_tokens: 30,
        output_tokens: 80,
        failed: false,
    });
    usage
        .metadata_mut()
        .insert("traceparent", r.traceparent.parse().expect("metadata"));
    let cost = c.report_usage(usage).await.expect("usage").into_inner().cost_nanousd;
    c.record_outcome(pb::OutcomeReport {
        outcome_id: "ticket-42".into(),
        workflow: "budget-demo".into(),
        status: pb::OutcomeStatus::Accepted as i32,
        ..Default::default()
    })
    .await
    .expect("outcome");
    c.record_feedback(pb::FeedbackReport {
        decision_id: r.decision_id.clone(),
        accepted: true,
    })
    .await
    .expect("feedback");
    // A refusal the caller can act on is not a server error.
    let refused = c
        .route(request("no-such-workflow", "hello"))
        .await
        .expect_err("an unknown workflow is refused");
    assert_ne!(refused.code(), tonic::Code::Ok);

    const ROUTE: &str = "switchyard.v1.Router/Route";
    const REPORT_USAGE: &str = "switchyard.v1.Router/ReportUsage";
    let names = [
        ROUTE,
        REPORT_USAGE,
        "switchyard.v1.Router/RecordOutcome",
        "switchyard.v1.Router/RecordFeedback",
    ];
    let all_in = eventually(Duration::from_secs(15), || {
        let spans = receiver.spans.clone();
        async move {
            let got = spans.lock().expect("lock");
            names.iter().all(|n| got.iter().any(|(_, s)| s.name == *n))
                && got.iter().filter(|(_, s)| s.name == ROUTE).count() == 2
        }
    })
    .await;
    let spans = receiver.spans.lock().expect("lock").clone();
    assert!(
        all_in,
        "spans received: {:?}",
        spans.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()
    );
    let find = |n: &str| spans.iter().find(|(_, s)| s.name == n).expect("span");
    assert!(
        spans.iter().all(|(_, s)| s.name.starts_with("switchyard.v1.Router/")),
        "every span is named for its gRPC method: {:?}",
        spans.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()
    );

    let (resource, route) = find(ROUTE);
    assert_eq!(resource["service.name"], "switchyard-under-test");
    assert_eq!(resource["deployment.environment"], "ci");
    let tenants = receiver.tenants.lock().expect("lock").clone();
    assert!(
        !tenants.is_empty() && tenants.iter().all(|t| t == "acme ci"),
        "every export carries OTEL_EXPORTER_OTLP_HEADERS, percent-decoded: {tenants:?}"
    );
    assert_eq!(hex(&route.trace_id), caller_trace);
    assert_eq!(hex(&route.parent_span_id), caller_span, "a child of the caller's span");
    assert_eq!(
        hex(&route.span_id),
        route_span_id,
        "RouteResponse.traceparent names this span"
    );
    let a = attrs(route);
    for (k, v) in [
        ("rpc.system.name", "grpc"),
        ("rpc.method", ROUTE),
        ("rpc.response.status_code", "OK"),
        ("gen_ai.provider.name", r.provider.as_str()),
        ("gen_ai.request.model", r.provider_model.as_str()),
        ("switchyard.model", r.model.as_str()),
        ("switchyard.workflow", "budget-demo"),
        ("switchyard.outcome.id", "ticket-42"),
        ("switchyard.decision.id", r.decision_id.as_str()),
        ("switchyard.route.status", "routed"),
        ("switchyard.route.rule", r.rule.as_str()),
        ("switchyard.task_kind", r.task_kind.as_str()),
        ("switchyard.task_kind.source", r.task_kind_source.as_str()),
    ] {
        assert_eq!(a.get(k).map(String::as_str), Some(v), "{k} on Route: {a:?}");
    }
    assert_eq!(a["switchyard.estimate.input_tokens"], r.input_tokens.to_string());
    assert_eq!(
        a["switchyard.estimate.output_tokens"],
        r.estimated_output_tokens.to_string()
    );
    let est: f64 = a["switchyard.estimate.cost_usd"].parse().expect("cost");
    assert!((est - r.estimated_cost_nanousd as f64 / 1e9).abs() < 1e-12);
    assert!(a.contains_key("switchyard.complexity") && a.contains_key("switchyard.estimate.cached_input_tokens"));
    assert!(a.contains_key("switchyard.budget.remaining.usd"), "{a:?}");
    assert_eq!(a["gen_ai.request.max_tokens"], "300", "the request's own limit");
    // A decision is not a model call: nothing a backend would sum as usage or spend.
    for k in a.keys() {
        assert!(
            !k.starts_with("gen_ai.usage.") && k != "gen_ai.operation.name" && k != "switchyard.cost.usd",
            "{k} on Route: {a:?}"
        );
    }
    assert!(!a.contains_key("error.type"));

    let refusal = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == ROUTE && attrs(s)["rpc.response.status_code"] != "OK")
        .expect("the refused Route's span");
    let a = attrs(refusal);
    assert_eq!(
        a["rpc.response.status_code"],
        switchyard::telemetry::status_code_name(refused.code())
    );
    assert!(!a.contains_key("error.type"), "a refusal is not a server error: {a:?}");
    assert!(
        refusal.status.as_ref().is_none_or(|st| st.code == 0),
        "status left unset: {:?}",
        refusal.status
    );

    let (_, report) = find(REPORT_USAGE);
    let a = attrs(report);
    assert_eq!(hex(&report.trace_id), caller_trace);
    assert_eq!(a["gen_ai.usage.input_tokens"], "120");
    assert_eq!(a["gen_ai.usage.output_tokens"], "80");
    assert_eq!(a["gen_ai.usage.cache_read.input_tokens"], "20");
    assert_eq!(a["gen_ai.usage.cache_write.input_tokens"], "30");
    assert_eq!(a["switchyard.outcome.id"], "ticket-42");
    let actual: f64 = a["switchyard.cost.usd"].parse().expect("cost");
    assert!((actual - cost as f64 / 1e9).abs() < 1e-12, "the actual cost");
    assert_eq!(
        a["gen_ai.response.model"], r.provider_model,
        "the model the usage was reported for, by its provider ID"
    );
    assert!(!a.contains_key("gen_ai.operation.name") && !a.contains_key("gen_ai.usage.cost.amount"));
    assert!(
        report
            .links
            .iter()
            .any(|l| hex(&l.span_id) == route_span_id && hex(&l.trace_id) == caller_trace),
        "ReportUsage links to its Route span: {:?}",
        report.links
    );
    assert_eq!(
        attrs(&find("switchyard.v1.Router/RecordOutcome").1)["switchyard.outcome.id"],
        "ticket-42"
    );
    assert_eq!(
        attrs(&find("switchyard.v1.Router/RecordFeedback").1)["switchyard.feedback.accepted"],
        "true"
    );

    // Never the prompt: no attribute of any span carries a word of it.
    for (_, s) in &spans {
        for (k, v) in attrs(s) {
            assert!(!v.contains("zebra-violet-quartz"), "prompt text in {}.{k}", s.name);
        }
    }
    drop(spans);

    // The collector's acceptances are counted (once its answer is back).
    let exported = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("switchyard_spans_exported_total "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let text = server.admin_get_until("/metrics", Duration::from_secs(10), |m| exported(m) >= 4);
    assert!(exported(&text) >= 4, "{text}");

    // The latency histogram and the spend counters link to the spans: the
    // bucket this Route fell in, and its estimated spend, carry the Route
    // span as an exemplar; the actual spend carries the ReportUsage span.
    let (_, text) = server.admin_get("/metrics");
    let (_, exemplars) = parse_openmetrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let linked = |family: &str| -> Vec<String> {
        exemplars
            .iter()
            .filter(|(series, _)| series.starts_with(family))
            .map(|(_, e)| e.clone())
            .collect()
    };
    let route_exemplar = format!("trace_id=\"{caller_trace}\",span_id=\"{route_span_id}\"");
    assert_eq!(
        linked("switchyard_route_latency_seconds_bucket"),
        std::slice::from_ref(&route_exemplar),
        "one Route, one exemplar: {exemplars:?}"
    );
    assert_eq!(linked("switchyard_estimated_spend_nanousd_total"), [route_exemplar]);
    let spans = receiver.spans.lock().expect("lock").clone();
    let report = spans.iter().find(|(_, s)| s.name == REPORT_USAGE).expect("span");
    assert_eq!(
        linked("switchyard_actual_spend_nanousd_total"),
        [format!(
            "trace_id=\"{caller_trace}\",span_id=\"{}\"",
            hex(&report.1.span_id)
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_the_spans_still_queued() {
    let (receiver, endpoint) = start_receiver().await;
    // An hour between scheduled exports, and batches larger than this test
    // makes: only the shutdown flush can deliver these spans.
    let server = Server::start_with_env(
        &repo_path("routing-rules"),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "3600000"),
        ],
    );
    let mut c = server.client().await;
    let mut decisions = Vec::new();
    for i in 0..25 {
        let r = c
            .route(request("general", &format!("question {i}")))
            .await
            .expect("route");
        decisions.push(r.into_inner().decision_id);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        receiver.spans.lock().expect("lock").is_empty(),
        "nothing exported before shutdown"
    );
    assert!(server.terminate().success());
    let spans = receiver.spans.lock().expect("lock");
    let routed: Vec<String> = spans
        .iter()
        .filter(|(_, s)| s.name == "switchyard.v1.Router/Route")
        .map(|(_, s)| attrs(s)["switchyard.decision.id"].clone())
        .collect();
    for d in &decisions {
        assert!(routed.contains(d), "the Route span of {d} was flushed at SIGTERM");
    }
}

#[tokio::test]
async fn an_unreachable_collector_never_fails_a_route() {
    let server = Server::start_with_env(
        &repo_path("routing-rules"),
        &["--shutdown-grace-s", "1"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "300"),
        ],
    );
    let mut c = server.client().await;
    for i in 0..50 {
        let r = c
            .route(request("general", &format!("question {i}")))
            .await
            .expect("route");
        assert!(!r.into_inner().traceparent.is_empty());
    }
    // The spans lost are counted, and said once.
    let counter = |m: &str, name: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let metrics = server.admin_get_until("/metrics", Duration::from_secs(15), |m| {
        counter(m, "switchyard_spans_export_failed_total") == Some(50)
    });
    assert_eq!(
        counter(&metrics, "switchyard_spans_export_failed_total"),
        Some(50),
        "every Route span is counted lost"
    );
    assert_eq!(counter(&metrics, "switchyard_spans_exported_total"), Some(0));
    let warned = server
        .stderr()
        .matches("exporting spans to the OTLP collector failed")
        .count();
    assert_eq!(warned, 1, "logged once a minute, not per batch: {}", server.stderr());
    assert!(
        server.terminate().success(),
        "shuts down cleanly with spans it cannot send"
    );
}

/// An OpenMetrics number: a float, or infinity or NaN spelt any case.
fn om_number(v: &str) -> Option<f64> {
    match v.to_ascii_lowercase().as_str() {
        "+inf" | "inf" | "+infinity" | "infinity" => Some(f64::INFINITY),
        "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
        "nan" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

/// `{k="v",…}`, checked: label names, quoted values with only `\\`, `\"`
/// and `\n` escaped.
fn om_labels(s: &str) -> Result<(), String> {
    let inner = s
        .strip_prefix('{')
        .and_then(|l| l.strip_suffix('}'))
        .ok_or("labels not in braces")?;
    let mut rest = inner;
    while !rest.is_empty() {
        let (k, after) = rest.split_once("=\"").ok_or("a label is not k=\"v\"")?;
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name {k}"));
        }
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\' | '"' | 'n')) => {}
                    _ => return Err("a bad escape in a label value".into()),
                },
                Some((i, '"')) => break i,
                Some((_, '\n')) | None => return Err("an unterminated label value".into()),
                Some(_) => {}
            }
        };
        rest = &after[end + 1..];
        rest = match rest.strip_prefix(',') {
            Some(r) if !r.is_empty() => r,
            Some(_) => return Err("a trailing comma".into()),
            None if rest.is_empty() => rest,
            None => return Err("labels not separated by commas".into()),
        };
    }
    Ok(())
}

/// Samples by series, and each exemplar's labels by the series it sits on.
type Exposition = (HashMap<String, f64>, HashMap<String, String>);

/// A strict reading of the OpenMetrics text format (1.0): every family
/// typed once before its samples, counters' samples suffixed `_total`,
/// exemplars only on counters and histogram buckets, `# EOF` last.
fn parse_openmetrics(text: &str) -> Result<Exposition, String> {
    let (mut samples, mut exemplars) = (HashMap::new(), HashMap::new());
    let mut typed: HashMap<String, String> = HashMap::new();
    let body = text
        .strip_suffix("# EOF\n")
        .ok_or("the exposition does not end with # EOF")?;
    for (i, line) in body.lines().enumerate() {
        let at = |why: &str| format!("line {}: {why}: {line}", i + 1);
        if line.is_empty() {
            return Err(at("an empty line"));
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP" | "UNIT"), Some(_), Some(_)) => {}
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "unknown",
                        "info",
                        "stateset",
                        "gaugehistogram",
                    ]
                    .contains(&kind)
                    {
                        return Err(at("unknown type"));
                    }
                    if typed.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(at("a family typed twice"));
                    }
                }
                _ => return Err(at("a comment that is neither HELP, TYPE nor UNIT")),
            }
            continue;
        }
        let (sample, exemplar) = match line.split_once(" # ") {
            Some((s, e)) => (s, Some(e)),
            None => (line, None),
        };
        let (series, value) = sample.rsplit_once(' ').ok_or_else(|| at("no value"))?;
        let v = om_number(value).ok_or_else(|| at("value is not a number"))?;
        let name = series.split('{').next().unwrap_or_default();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            return Err(at("bad metric name"));
        }
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            om_labels(labels).map_err(|e| at(&e))?;
        }
        let (family, kind) = typed
            .iter()
            .filter(|(f, _)| name.starts_with(f.as_str()))
            .max_by_key(|(f, _)| f.len())
            .ok_or_else(|| at("a sample before its TYPE line"))?;
        let suffix = &name[family.len()..];
        let allowed: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            _ => &[""],
        };
        if !allowed.contains(&suffix) {
            return Err(at(&format!("a {kind} sample named {name}")));
        }
        if let Some(e) = exemplar {
            if !matches!(suffix, "_total" | "_bucket") {
                return Err(at("an exemplar off a counter or bucket"));
            }
            let (labels, rest) = e.split_once("} ").ok_or_else(|| at("an exemplar without a value"))?;
            om_labels(&format!("{labels}}}")).map_err(|e| at(&e))?;
            let value = rest.split(' ').next().unwrap_or_default();
            om_number(value).ok_or_else(|| at("an exemplar value is not a number"))?;
            exemplars.insert(series.to_string(), labels.trim_start_matches('{').to_string());
        }
        if samples.insert(series.to_string(), v).is_some() {
            return Err(at("a series given twice"));
        }
    }
    Ok((samples, exemplars))
}

#[tokio::test]
async fn metrics_parse_as_openmetrics_with_the_promised_series() {
    let server = Server::start(&repo_path("routing-rules/examples/budgets.toml"), &[]);
    let mut c = server.client().await;
    let r = c
        .route(pb::RouteRequest {
            outcome_id: "o-1".into(),
            ..request("budget-demo", "hello")
        })
        .await
        .expect("route")
        .into_inner();
    c.report_usage(pb::UsageReport {
        decision_id: r.decision_id.clone(),
        model: r.model.clone(),
        input_tokens: 100,
        cached_input_tokens: 40,
        cache_write_input_tokens: 25,
        output_tokens: 10,
        failed: false,
    })
    .await
    .expect("usage");
    c.record_outcome(pb::OutcomeReport {
        outcome_id: "o-1".into(),
        workflow: "budget-demo".into(),
        status: pb::OutcomeStatus::Accepted as i32,
        ..Default::default()
    })
    .await
    .expect("outcome");
    let (code, _) = server.admin_get("/metrics");
    assert_eq!(code, 200);
    let content_type = server.admin_header("/metrics", "content-type");
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    // The gauges read from the store come from a task of their own: the
    // first reading is taken as the server starts.
    let text = server.admin_get_until("/metrics", Duration::from_secs(10), |m| {
        m.contains("switchyard_escalations_open{workflow=\"budget-demo\"}")
    });
    assert!(text.contains("switchyard_store_gauges_age_seconds "), "{text}");
    let (m, exemplars) = parse_openmetrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(exemplars.is_empty(), "no trace, no exemplar: {exemplars:?}");
    assert_eq!(
        m["switchyard_outcomes_total{workflow=\"budget-demo\",status=\"accepted\"}"],
        1.0
    );
    let labels = format!("workflow=\"budget-demo\",model=\"{}\"", r.model);
    assert_eq!(
        m[&format!("switchyard_decisions_total{{{labels},status=\"routed\"}}")],
        1.0
    );
    assert_eq!(
        m[&format!("switchyard_estimated_spend_nanousd_total{{{labels}}}")],
        r.estimated_cost_nanousd as f64
    );
    assert!(m[&format!("switchyard_actual_spend_nanousd_total{{{labels}}}")] > 0.0);
    assert_eq!(
        m[&format!("switchyard_tokens_total{{{labels},kind=\"cached_input\"}}")],
        40.0
    );
    assert_eq!(m[&format!("switchyard_tokens_total{{{labels},kind=\"input\"}}")], 60.0);
    // The separate families: input is all of it, cache reads and writes parts of it.
    assert_eq!(m[&format!("switchyard_input_tokens_total{{{labels}}}")], 100.0);
    assert_eq!(m[&format!("switchyard_cached_input_tokens_total{{{labels}}}")], 40.0);
    assert_eq!(
        m[&format!("switchyard_cache_write_input_tokens_total{{{labels}}}")],
        25.0
    );
    assert_eq!(m[&format!("switchyard_output_tokens_total{{{labels}}}")], 10.0);
    assert!(
        text.contains("# HELP switchyard_tokens Deprecated"),
        "the old family says it is deprecated"
    );
    assert_eq!(m["switchyard_route_latency_seconds_count"], 1.0);
    assert_eq!(m["switchyard_route_latency_seconds_bucket{le=\"+Inf\"}"], 1.0);
    assert!(m.contains_key("switchyard_context_cache_hits_total"));
    assert!(m.contains_key("switchyard_budget_remaining_nanousd{workflow=\"budget-demo\"}"));
    assert_eq!(m["switchyard_escalations_open{workflow=\"budget-demo\"}"], 0.0);
    assert_eq!(m["switchyard_rules_reload_failing"], 0.0);
    // Outcome IDs are never labels.
    assert!(!text.contains("o-1"), "{text}");

    // Every series the shipped Grafana dashboard queries is one the server serves.
    let served: std::collections::HashSet<&str> = m
        .keys()
        .map(|k| k.split('{').next().unwrap_or(k))
        .map(|n| n.trim_end_matches("_bucket"))
        .collect();
    let dashboard = std::fs::read_to_string(repo_path("deploy/grafana/switchyard.json")).expect("dashboard");
    let mut queried = 0;
    for (i, _) in dashboard.match_indices("switchyard_") {
        let name: String = dashboard[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let name = name.trim_end_matches("_bucket");
        if name == "switchyard_" {
            continue;
        }
        queried += 1;
        assert!(
            served.contains(name),
            "the dashboard queries {name}, which /metrics does not serve"
        );
    }
    assert!(queried >= 20, "the dashboard queries the series ({queried})");
}

/// A tracing variable that cannot be used stops `serve` with exit 64 before
/// any port is bound, naming the variable and what to write instead.
#[test]
fn bad_opentelemetry_settings_stop_serve_before_binding() {
    let cases = [
        ("OTEL_TRACES_SAMPLER", "sometimes", "is not a sampler"),
        // Read, as the SDK reads it, only by a ratio sampler (set below).
        ("OTEL_TRACES_SAMPLER_ARG", "1.5", "expected a ratio from 0 to 1"),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "http/protobuf",
            "set OTEL_EXPORTER_OTLP_PROTOCOL=grpc or unset it",
        ),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon", "OTEL_EXPORTER_OTLP_TIMEOUT"),
    ];
    for (name, value, says) in cases {
        let dir = tempfile::tempdir().expect("tmp");
        // The port is held for the whole run: see `serve_on_a_held_port`.
        let (held, mut cmd) = serve_on_a_held_port(&common::repo_path("routing-rules"), dir.path());
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
            .env(name, value)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if name == "OTEL_TRACES_SAMPLER_ARG" {
            cmd.env("OTEL_TRACES_SAMPLER", "traceidratio");
        }
        let mut child = cmd.spawn().expect("run");
        // A server that started anyway is a failure, not a hung test.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while child.try_wait().expect("wait").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{name}={value}: serve started instead of refusing the setting");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{name}={value}: {stderr}");
        assert!(
            stderr.contains(name) && stderr.contains(says),
            "{name}={value}: {stderr}"
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).is_empty(),
            "{name}={value}: nothing listened"
        );
        assert!(
            !stderr.contains("in use") && !stderr.contains("bind"),
            "{name}={value}: serve tried the port before refusing the setting: {stderr}"
        );
        drop(held);
    }
}

/// With `--log-format json` and debug logs, each RPC logs a line carrying
/// the trace and span IDs of the span it exported, so logs and traces join;
/// a refused call's error line carries them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_carry_the_trace_of_their_exported_span() {
    let (receiver, endpoint) = start_receiver().await;
    let server = Server::start_with_env(
        &repo_path("routing-rules"),
        &["--log-format", "json"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("RUST_LOG", "switchyard=debug"),
        ],
    );
    let mut c = server.client().await;
    c.route(request("general", "What is the capital of France?"))
        .await
        .expect("route");
    let refused = c
        .route(request("no-such-workflow", "hello"))
        .await
        .expect_err("an unknown workflow is refused");
    assert_eq!(refused.code(), tonic::Code::NotFound);
    let both = eventually(Duration::from_secs(15), || {
        let spans = receiver.spans.clone();
        async move {
            spans
                .lock()
                .expect("lock")
                .iter()
                .filter(|(_, s)| s.name == "switchyard.v1.Router/Route")
                .count()
                >= 2
        }
    })
    .await;
    assert!(both, "two Route spans exported");
    let spans = receiver.spans.lock().expect("lock").clone();
    let lines: Vec<serde_json::Value> = server
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for (_, span) in spans.iter().filter(|(_, s)| s.name == "switchyard.v1.Router/Route") {
        let (trace, id) = (hex(&span.trace_id), hex(&span.span_id));
        let answered = lines.iter().find(|l| {
            l["fields"]["message"] == "rpc answered"
                && l["fields"]["trace_id"] == trace.as_str()
                && l["fields"]["span_id"] == id.as_str()
        });
        assert!(
            answered.is_some(),
            "no log line for the Route span {trace}/{id}: {lines:?}"
        );
    }
    // The refusal's own line sits inside the RPC's span, with its IDs.
    let refusal = lines
        .iter()
        .find(|l| l["fields"]["message"] == "request refused")
        .expect("the refusal is logged at debug");
    let trace = refusal["span"]["trace_id"]
        .as_str()
        .expect("the refusal carries a trace ID");
    assert!(
        spans.iter().any(|(_, s)| hex(&s.trace_id) == trace),
        "the refusal's trace {trace} is an exported span's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampler_variables_are_read_as_the_sdk_reads_them() {
    let (receiver, endpoint) = start_receiver().await;
    let server = Server::start_with_env(
        &repo_path("routing-rules"),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
            ("OTEL_BSP_SCHEDULE_DELAY", "3600000"),
        ],
    );
    let mut c = server.client().await;
    const CALLS: usize = 2000;
    let mut sampled_flags = 0;
    for i in 0..CALLS {
        let r = c
            .route(request("general", &format!("question {i}")))
            .await
            .expect("route")
            .into_inner();
        sampled_flags += usize::from(r.traceparent.ends_with("-01"));
    }
    // A caller's sampled flag wins over the ratio.
    let mut req = tonic::Request::new(request("general", "a sampled caller"));
    req.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .expect("metadata"),
    );
    assert!(c
        .route(req)
        .await
        .expect("route")
        .into_inner()
        .traceparent
        .ends_with("-01"));
    assert!(server.terminate().success());
    let spans = receiver.spans.lock().expect("lock");
    let exported = spans
        .iter()
        .filter(|(_, s)| s.name == "switchyard.v1.Router/Route")
        .count();
    assert_eq!(exported, sampled_flags + 1, "exactly the sampled Routes are exported");
    // 10% of 2000: 200, with a standard deviation of about 13.
    assert!(
        (140..=260).contains(&sampled_flags),
        "{sampled_flags} of {CALLS} sampled at 0.1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_flow_again_once_a_collector_that_was_down_comes_up() {
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let server = Server::start_with_env(
        &repo_path("routing-rules"),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
        ],
    );
    let mut c = server.client().await;
    for i in 0..20 {
        c.route(request("general", &format!("while down {i}")))
            .await
            .expect("a Route succeeds while the collector is down");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (receiver, _) = start_receiver_on(&format!("127.0.0.1:{port}")).await;
    let arrived = eventually(Duration::from_secs(20), || {
        let (mut c, spans) = (c.clone(), receiver.spans.clone());
        async move {
            c.route(request("general", "after the collector came up"))
                .await
                .expect("route");
            !spans.lock().expect("lock").is_empty()
        }
    })
    .await;
    assert!(arrived, "no span reached the collector after it came up");
}

/// Debian's `prometheus` on a free port, scraping `target` every 200 ms
/// with exemplar storage on; killed when dropped.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 200ms\n  scrape_timeout: 200ms\nscrape_configs:\n  - job_name: switchyard\n    static_configs:\n      - targets: ['{}']\n",
                target.trim_start_matches("http://")
            ),
        )
        .expect("config");
        let port = free_port();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--enable-feature=exemplar-storage")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).expect("log"))
            .spawn()
            .expect("prometheus (scripts/test installs Debian's package)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The API's `data`, once it answers `success`.
    fn api(&self, path: &str) -> Option<serde_json::Value> {
        let host = self.url.trim_start_matches("http://");
        std::net::TcpStream::connect(host).ok()?;
        let (code, body) = http_get_accepting(&self.url, path, "application/json");
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (code == 200 && v["status"] == "success").then(|| v["data"].clone())
    }

    /// An instant query's value for each series, by its `model` label.
    fn values(&self, query: &str) -> Vec<f64> {
        self.api(&format!("/api/v1/query?query={query}"))
            .and_then(|d| d["result"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r["value"][1].as_str().and_then(|v| v.parse().ok()))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_token_series_and_an_exemplar_that_names_a_received_span() {
    let (receiver, endpoint) = start_receiver().await;
    let server = Server::start_with_env(
        &repo_path("routing-rules/examples/budgets.toml"),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let mut c = server.client().await;
    let r = c
        .route(pb::RouteRequest {
            outcome_id: "o-prom".into(),
            ..request("budget-demo", "Translate 'good morning' into French.")
        })
        .await
        .expect("route")
        .into_inner();
    c.report_usage(pb::UsageReport {
        decision_id: r.decision_id.clone(),
        model: r.model.clone(),
        input_tokens: 1500,
        cached_input_tokens: 1024,
        cache_write_input_tokens: 256,
        output_tokens: 90,
        failed: false,
    })
    .await
    .expect("usage");

    // promtool lints what a text-format scraper is served, warnings and all.
    let (code, text) = http_get_accepting(&server.admin, "/metrics", "text/plain; version=0.0.4");
    assert_eq!(code, 200);
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (scripts/test installs Debian's prometheus)");
    {
        use std::io::Write;
        lint.stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    let out = lint.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );

    let prom = Prometheus::start(&server.admin);
    let labels = format!("{{workflow=\"budget-demo\",model=\"{}\"}}", r.model);
    let enc = |q: &str| {
        q.replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
            .replace(',', "%2C")
            .replace('=', "%3D")
    };
    let series = [
        ("switchyard_input_tokens_total", 1500.0),
        ("switchyard_cached_input_tokens_total", 1024.0),
        ("switchyard_output_tokens_total", 90.0),
    ];
    let scraped = eventually(Duration::from_secs(30), || {
        let ok = series
            .iter()
            .all(|(name, want)| prom.values(&enc(&format!("{name}{labels}"))) == [*want]);
        async move { ok }
    })
    .await;
    for (name, want) in series {
        assert_eq!(
            prom.values(&enc(&format!("{name}{labels}"))),
            [want],
            "{name} as Prometheus stored it (scraped: {scraped})"
        );
    }

    // The latency bucket's exemplar, read back through Prometheus, names the
    // Route span the receiver got.
    let exemplar = || {
        prom.api("/api/v1/query_exemplars?query=switchyard_route_latency_seconds_bucket&start=0&end=9999999999")
            .and_then(|d| d.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .flat_map(|s| s["exemplars"].as_array().cloned().unwrap_or_default())
            .map(|e| {
                (
                    e["labels"]["trace_id"].as_str().unwrap_or_default().to_string(),
                    e["labels"]["span_id"].as_str().unwrap_or_default().to_string(),
                )
            })
            .next()
    };
    let mut found = None;
    for _ in 0..100 {
        found = exemplar();
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (trace_id, span_id) = found.expect("an exemplar in Prometheus");
    let received = eventually(Duration::from_secs(10), || {
        let spans = receiver.spans.clone();
        let (t, s) = (trace_id.clone(), span_id.clone());
        async move {
            spans.lock().expect("lock").iter().any(|(_, sp)| {
                sp.name == "switchyard.v1.Router/Route" && hex(&sp.trace_id) == t && hex(&sp.span_id) == s
            })
        }
    })
    .await;
    assert!(
        received,
        "the exemplar {trace_id}/{span_id} is a Route span the receiver got"
    );
    let (tp_trace, tp_span) = switchyard::telemetry::parse_traceparent(&r.traceparent).expect("traceparent");
    assert_eq!((tp_trace, tp_span), (trace_id, span_id), "and it is this Route's");
}
