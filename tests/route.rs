//! Route over real gRPC: the binary on free ports, a tonic client.

mod common;

use common::*;
use switchyard::grpc::pb;
use tonic::Code;

#[tokio::test]
async fn easy_and_hard_prompts_route_to_different_models() {
    let server = Server::start(&repo_path("routing-rules"), &[]);
    let mut client = server.client().await;

    let easy = client
        .route(request("general", "What is the capital of France?"))
        .await
        .expect("easy routes")
        .into_inner();
    let hard = client
        .route(request("general", HARD_PROMPT))
        .await
        .expect("hard routes")
        .into_inner();

    assert_eq!(easy.status, pb::RouteStatus::Routed as i32);
    assert_ne!(easy.model, hard.model, "easy {easy:?}\nhard {hard:?}");
    assert!(easy.complexity < hard.complexity);
    assert!(hard.required_tier > easy.required_tier);
    assert!(easy.estimated_cost_nanousd < hard.estimated_cost_nanousd);
    assert!(easy.input_tokens > 4 && hard.input_tokens > easy.input_tokens);
    assert!(!easy.decision_id.is_empty() && easy.decision_id != hard.decision_id);
    assert!(easy.reason.contains("cheapest of"), "{}", easy.reason);
    // No task_kind given: each is inferred from its text, and priced as
    // its kind (qa's 400 output tokens; code's 1024).
    assert_eq!(
        (easy.task_kind.as_str(), easy.task_kind_source.as_str()),
        ("qa", "inferred")
    );
    assert_eq!(easy.estimated_output_tokens, 400, "qa's output length");
    assert_eq!(
        (hard.task_kind.as_str(), hard.task_kind_source.as_str()),
        ("code", "inferred")
    );
    assert_eq!(hard.task_class, "code");
    // A declared kind always wins, whatever the text reads as.
    let mut declared = request("general", HARD_PROMPT);
    declared.task_kind = "summarize".into();
    let declared = client.route(declared).await.expect("routes").into_inner();
    assert_eq!(
        (
            declared.task_kind.as_str(),
            declared.task_kind_source.as_str(),
            declared.task_class.as_str()
        ),
        ("summarize", "declared", "extraction")
    );
    assert!(!easy.provider.is_empty() && !easy.rule.is_empty());
}

#[tokio::test]
async fn bad_input_gets_a_clear_status_and_the_server_keeps_serving() {
    let server = Server::start(&repo_path("routing-rules"), &["--max-request-bytes", "65536"]);
    let mut client = server.client().await;

    let cases: Vec<(&str, pb::RouteRequest, Code, &str)> = vec![
        (
            "empty workflow",
            request("", "hi"),
            Code::InvalidArgument,
            "workflow is empty",
        ),
        (
            "no messages",
            pb::RouteRequest {
                messages: vec![],
                ..request("general", "hi")
            },
            Code::InvalidArgument,
            "messages is empty",
        ),
        (
            "control characters in the outcome",
            pb::RouteRequest {
                outcome_id: "ticket\u{1f}9".into(),
                ..request("general", "hi")
            },
            Code::InvalidArgument,
            "outcome_id contains control characters",
        ),
        (
            "unknown workflow",
            request("payroll", "hi"),
            Code::NotFound,
            "unknown workflow `payroll`",
        ),
        (
            "over the size limit",
            request("general", &"word ".repeat(40_000)),
            Code::ResourceExhausted,
            "--max-request-bytes",
        ),
        (
            "unknown role",
            pb::RouteRequest {
                messages: vec![message("wizard", "hi")],
                ..request("general", "hi")
            },
            Code::InvalidArgument,
            "messages[0].role",
        ),
        (
            "absurd attempt",
            pb::RouteRequest {
                attempt: 4_000_000,
                ..request("general", "hi")
            },
            Code::InvalidArgument,
            "attempt",
        ),
        (
            "absurd max_output_tokens",
            pb::RouteRequest {
                max_output_tokens: u32::MAX,
                ..request("general", "hi")
            },
            Code::FailedPrecondition,
            "lower max_output_tokens",
        ),
        (
            "unknown capability",
            pb::RouteRequest {
                required_capabilities: vec!["telepathy".into()],
                ..request("general", "hi")
            },
            Code::InvalidArgument,
            "telepathy",
        ),
        (
            "too many labels",
            pb::RouteRequest {
                labels: (0..100).map(|i| (format!("k{i}"), "v".to_string())).collect(),
                ..request("general", "hi")
            },
            Code::InvalidArgument,
            "labels",
        ),
    ];
    for (name, req, code, needle) in cases {
        let err = client.route(req).await.expect_err(name);
        assert_eq!(err.code(), code, "{name}: {err:?}");
        assert!(
            err.message().contains(needle),
            "{name}: message `{}` lacks `{needle}`",
            err.message()
        );
    }

    // Still healthy and still routing.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", server.grpc))
            .expect("uri")
            .connect()
            .await
            .expect("connect"),
    );
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "switchyard.v1.Router".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    client
        .route(request("general", "still there?"))
        .await
        .expect("routes after bad input");
    let (code, metrics) = server.admin_get("/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("switchyard_route_rejections_total 9"), "{metrics}");
}

#[tokio::test]
async fn bad_outcomes_and_feedback_say_what_to_fix() {
    let server = Server::start(&repo_path("routing-rules"), &[]);
    let mut client = server.client().await;
    let cases = [
        (pb::OutcomeReport::default(), Code::InvalidArgument, "outcome_id"),
        (
            pb::OutcomeReport {
                outcome_id: "t-1".into(),
                workflow: "payroll".into(),
                status: pb::OutcomeStatus::Accepted as i32,
                ..Default::default()
            },
            Code::NotFound,
            "payroll",
        ),
        (
            pb::OutcomeReport {
                outcome_id: "t-1".into(),
                workflow: "general".into(),
                status: 0,
                ..Default::default()
            },
            Code::InvalidArgument,
            "OUTCOME_STATUS_ACCEPTED",
        ),
        (
            pb::OutcomeReport {
                outcome_id: "t-1".into(),
                workflow: "general".into(),
                status: pb::OutcomeStatus::Accepted as i32,
                value_usd: Some(f64::NAN),
                ..Default::default()
            },
            Code::InvalidArgument,
            "value_usd",
        ),
    ];
    for (report, code, text) in cases {
        let err = client.record_outcome(report).await.expect_err("refused");
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(text), "{}", err.message());
    }
    let err = client
        .record_feedback(pb::FeedbackReport {
            decision_id: "nope".into(),
            accepted: true,
        })
        .await
        .expect_err("unknown decision");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn large_request_routes_off_the_runtime_threads() {
    let server = Server::start(&repo_path("routing-rules"), &[]);
    let mut client = server.client().await;
    // ~400 KB of content takes the blocking-pool path; a short request still answers meanwhile.
    let big = request(
        "general",
        &"The quick brown fox jumps over the lazy dog. ".repeat(9_000),
    );
    let mut c2 = client.clone();
    let (a, b) = tokio::join!(client.route(big), c2.route(request("general", "hi")));
    let a = a.expect("big routes").into_inner();
    b.expect("small routes");
    assert!(a.input_tokens > 80_000, "{}", a.input_tokens);
}

#[tokio::test]
async fn admin_port_reports_health_readiness_and_metrics() {
    let server = Server::start(&repo_path("routing-rules"), &[]);
    assert_eq!(server.admin_get("/readyz").0, 200);
    let (code, body) = server.admin_get("/healthz");
    assert_eq!(code, 200);
    assert!(body.contains("\"reload_failing\":false"), "{body}");
    let (code, body) = server.admin_get("/");
    assert_eq!(code, 200);
    assert!(body.contains("gpt-5-mini"), "{body}");
    let status = server.terminate();
    assert!(status.success(), "SIGTERM exits cleanly: {status:?}");
}

#[tokio::test]
async fn serve_refuses_bad_rules_before_binding() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[models]]\nname = \"x\"\nprovider = \"p\"\ncolour = 1\n").expect("write");
    // The port is held throughout: see `serve_on_a_held_port`.
    let (held, mut serve) = serve_on_a_held_port(&bad, dir.path());
    let out = serve.output().expect("run");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:4:1: `models[0].colour`"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "nothing listened");
    assert!(
        !stderr.contains("in use") && !stderr.contains("bind"),
        "serve tried the port before refusing the rules: {stderr}"
    );
    drop(held);
}

#[tokio::test]
async fn reflection_lists_and_describes_the_router_as_grpcurl_does() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let server = Server::start(&repo_path("routing-rules"), &[]);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = ServerReflectionClient::new(channel);
    let ask = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };

    // `grpcurl list`
    let mut stream = client
        .server_reflection_info(tokio_stream::once(ask(MessageRequest::ListServices(String::new()))))
        .await
        .expect("reflection")
        .into_inner();
    let resp = stream.message().await.expect("answer").expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("{resp:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"switchyard.v1.Router".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");

    // `grpcurl describe switchyard.v1.RouteRequest`
    let mut stream = client
        .server_reflection_info(tokio_stream::once(ask(MessageRequest::FileContainingSymbol(
            "switchyard.v1.RouteRequest".into(),
        ))))
        .await
        .expect("reflection")
        .into_inner();
    let resp = stream.message().await.expect("answer").expect("one message");
    let Some(MessageResponse::FileDescriptorResponse(fds)) = resp.message_response else {
        panic!("{resp:?}")
    };
    assert!(!fds.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn logs_to_a_file_carry_no_terminal_colour_codes() {
    let server = Server::start(&repo_path("routing-rules"), &[]);
    let status = server.terminate_keeping_log();
    assert!(status.0.success(), "{:?}: {}", status.0, status.1);
    assert!(status.1.contains("switchyard serving"), "{}", status.1);
    assert!(
        !status.1.contains('\u{1b}'),
        "escape codes in a log file: {:?}",
        status.1
    );
}

#[tokio::test]
async fn route_names_the_id_to_send_the_provider() {
    let rules = rules_dir(
        r#"
[[models]]
name = "sonnet"
provider = "anthropic"
api_model = "claude-sonnet-4-5-20250929"
input_per_mtok = 3.0
cached_input_per_mtok = 0.3
output_per_mtok = 15.0
context_window = 200000
max_output_tokens = 64000
tiers = { general = 4 }

[[models]]
name = "gpt-5-mini"
provider = "openai"
input_per_mtok = 0.25
cached_input_per_mtok = 0.025
output_per_mtok = 2.0
context_window = 400000
max_output_tokens = 128000
tiers = { general = 3 }

[[workflows]]
name = "w"

[[rules]]
name = "strong"
workflow = "w"
min_attempt = 2
tier = 4
"#,
    );
    let server = Server::start(rules.path(), &[]);
    let mut c = server.client().await;
    let first = c.route(request("w", "hello")).await.expect("route").into_inner();
    assert_eq!(
        (first.model.as_str(), first.provider_model.as_str()),
        ("gpt-5-mini", "gpt-5-mini"),
        "defaults to the name"
    );
    let retry = c
        .route(pb::RouteRequest {
            attempt: 2,
            ..request("w", "hello")
        })
        .await
        .expect("route")
        .into_inner();
    assert_eq!(
        (retry.model.as_str(), retry.provider_model.as_str()),
        ("sonnet", "claude-sonnet-4-5-20250929")
    );
    // An ID with a space is refused with its place in the file.
    let bad = rules_dir("[[models]]\nname = \"m\"\nprovider = \"p\"\napi_model = \"two words\"\ninput_per_mtok = 1.0\ncached_input_per_mtok = 1.0\noutput_per_mtok = 1.0\ncontext_window = 1000\nmax_output_tokens = 100\ntiers = { general = 1 }\n[[workflows]]\nname = \"w\"\n");
    let out = std::process::Command::new(BIN)
        .args(["check", "--rules"])
        .arg(bad.path())
        .output()
        .expect("check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("api_model") && err.contains(":4:"),
        "{err}"
    );
}

/// Each workflow's complexity histogram is counted per Route, stored when
/// the server stops, and read back by `explain` (and the next start): the
/// quantiles `top_share` rules read follow the workflow's own traffic.
#[tokio::test]
async fn complexity_quantiles_are_kept_in_the_store_across_a_restart() {
    let state = tempfile::tempdir().expect("state");
    let dir = state.path().to_str().expect("utf-8 path");
    let server = Server::start(&repo_path("routing-rules"), &["--state-dir", dir]);
    let mut client = server.client().await;
    for i in 0..40 {
        client
            .route(request("general", &format!("What is {i} plus {i}?")))
            .await
            .expect("routes");
    }
    assert!(server.terminate().success());
    let explain = |state: &str| -> serde_json::Value {
        let out = std::process::Command::new(BIN)
            .args(["explain", "--rules"])
            .arg(repo_path("routing-rules"))
            .args(["--state-dir", state, "What is 7 plus 7?"])
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let kept = explain(dir);
    assert_eq!(kept["understanding_model"]["workflow_requests_scored"], 40, "{kept}");
    let empty = tempfile::tempdir().expect("empty");
    let fresh = explain(empty.path().to_str().expect("utf-8"));
    assert_eq!(fresh["understanding_model"]["workflow_requests_scored"], 0);
    // Forty requests like this one: it is no longer below as much of the
    // workflow's traffic as the calibration alone says.
    assert_ne!(
        kept["complexity_quantile"], fresh["complexity_quantile"],
        "{kept}\n{fresh}"
    );

    // The next start reads the histogram back and adds to it.
    let server = Server::start(&repo_path("routing-rules"), &["--state-dir", dir]);
    let mut client = server.client().await;
    client
        .route(request("general", "What is 1 plus 1?"))
        .await
        .expect("routes");
    assert!(server.terminate().success());
    assert_eq!(explain(dir)["understanding_model"]["workflow_requests_scored"], 41);
}
