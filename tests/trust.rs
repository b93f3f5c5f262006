//! Numbers the business can trust, over real gRPC against the real binary:
//! each test is one way ordinary operations (or an attacker) broke the
//! budget and accounting core, tried again.

mod common;

#[path = "common/redis.rs"]
mod redis_server;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use redis_server::RedisServer;
use switchyard::grpc::pb;
use switchyard::grpc::pb::router_client::RouterClient;
use tonic::transport::Channel;
use tonic::Code;

const DOLLAR: i64 = 1_000_000_000;

/// Two models, and workflows for the cases below: `tiny` escalates at a
/// budget one call crosses, `strict` refuses usage for other models,
/// `lenient` charges it, `capped` caps each outcome.
const RULES: &str = r#"
[[models]]
name = "small"
provider = "p"
input_per_mtok = 1.0
cached_input_per_mtok = 0.1
output_per_mtok = 4.0
context_window = 100000
max_output_tokens = 8000
tiers = { general = 2 }

[[models]]
name = "large"
provider = "q"
input_per_mtok = 15.0
cached_input_per_mtok = 1.5
output_per_mtok = 75.0
context_window = 100000
max_output_tokens = 8000
tiers = { general = 5 }

[[models]]
name = "offshore"
provider = "r"
input_per_mtok = 3.0
cached_input_per_mtok = 0.3
output_per_mtok = 15.0
context_window = 100000
max_output_tokens = 8000
tiers = { general = 3 }

[[workflows]]
name = "tiny"
allowed_models = ["small", "large"]
[workflows.budget]
limit_usd = 0.000001
period = "day"
on_limit = "escalate"

[[workflows]]
name = "strict"
allowed_models = ["small", "large"]

[[workflows]]
name = "lenient"
allowed_models = ["small", "large"]
other_model_usage = "charge"
usage_overshoot_factor = 3.0

[[workflows]]
name = "capped"
allowed_models = ["small", "large"]
[workflows.budget]
limit_usd = 100.0
period = "day"
per_outcome_usd = 1.0
on_limit = "deny"
"#;

fn call(workflow: &str, outcome: &str) -> pb::RouteRequest {
    pb::RouteRequest {
        outcome_id: outcome.into(),
        max_output_tokens: 200,
        ..request(workflow, "Summarise the incident report in three bullet points.")
    }
}

fn usage(r: &pb::RouteResponse, model: &str, output: u64) -> pb::UsageReport {
    pb::UsageReport {
        model: model.into(),
        ..usage_for(r, output)
    }
}

/// Defect 2: an approval of i64::MAX nano-USD overflowed the scope's limit
/// into a REAL, and every later Route, GetBudget and report failed, across
/// restarts. Now it is refused with the cap, and nothing breaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_approval_is_refused_and_the_workflow_keeps_serving() {
    let rules = rules_dir(RULES);
    let state = tempfile::tempdir().expect("state");
    let server = Server::start(rules.path(), &["--state-dir", state.path().to_str().expect("utf-8")]);
    let mut c = server.client().await;
    let r = c.route(call("tiny", "t-1")).await.expect("route").into_inner();
    assert_eq!(r.status, pb::RouteStatus::EscalationRequired as i32, "{}", r.reason);
    let resolve = |add: i64| pb::ResolveEscalationRequest {
        escalation_id: r.escalation_id.clone(),
        approve: true,
        add_nanousd: add,
        reason: "test".into(),
    };
    let e = c.resolve_escalation(resolve(i64::MAX)).await.expect_err("over the cap");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("over the $1000000 one approval may add"),
        "{}",
        e.message()
    );
    // The escalation is still pending; the workflow still answers.
    let b = budget(&mut c, "tiny").await;
    assert_eq!(b.limit_nanousd, 1_000);
    c.route(call("tiny", "t-2")).await.expect("route after the refusal");
    c.resolve_escalation(resolve(DOLLAR)).await.expect("a real approval");
    let b = budget(&mut c, "tiny").await;
    assert_eq!(b.limit_nanousd, DOLLAR + 1_000);
    let r = c.route(call("tiny", "t-3")).await.expect("route").into_inner();
    assert_eq!(r.status, pb::RouteStatus::Routed as i32, "{}", r.reason);
    drop(c);
    server.terminate();
    // After a restart the store reads, and so does the report.
    let server = Server::start(rules.path(), &["--state-dir", state.path().to_str().expect("utf-8")]);
    let mut c = server.client().await;
    assert_eq!(budget(&mut c, "tiny").await.limit_nanousd, DOLLAR + 1_000);
    let out = Command::new(BIN)
        .args(["report", "--format", "json", "--rules"])
        .arg(rules.path())
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .expect("report");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The CLI refuses the amount before it reaches the server.
    let out = Command::new(BIN)
        .args([
            "escalations",
            "approve",
            "esc-x",
            "--add-usd",
            "9223372036.854775807",
            "--server",
        ])
        .arg(&server.grpc)
        .output()
        .expect("cli");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("one approval's cap"));
}

/// 32 concurrent Routes cross one limit; returns the escalation IDs they got.
async fn cross_the_limit_at_once(clients: &[RouterClient<Channel>]) -> std::collections::HashSet<String> {
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let mut c = clients[i % clients.len()].clone();
            tokio::spawn(async move {
                let r = c
                    .route(call("tiny", &format!("race-{i}")))
                    .await
                    .expect("route")
                    .into_inner();
                assert_eq!(r.status, pb::RouteStatus::EscalationRequired as i32, "{}", r.reason);
                r.escalation_id
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(t.await.expect("task"));
    }
    ids
}

/// Defect 3: concurrent Routes over a limit made several pending escalations
/// for one scope, each approvable; denying one changed nothing.
async fn one_escalation_then_a_deny_holds(clients: &[RouterClient<Channel>]) {
    let ids = cross_the_limit_at_once(clients).await;
    assert_eq!(ids.len(), 1, "one pending escalation per scope: {ids:?}");
    let mut c = clients[0].clone();
    let listed = c
        .list_escalations(pb::ListEscalationsRequest {
            workflow: "tiny".into(),
        })
        .await
        .expect("list")
        .into_inner()
        .escalations;
    assert_eq!(listed.iter().filter(|e| e.state == "pending").count(), 1, "{listed:?}");
    let id = ids.into_iter().next().unwrap_or_default();
    c.resolve_escalation(pb::ResolveEscalationRequest {
        escalation_id: id.clone(),
        approve: false,
        add_nanousd: 0,
        reason: "not today".into(),
    })
    .await
    .expect("deny");
    for (i, c) in clients.iter().enumerate() {
        let r = c
            .clone()
            .route(call("tiny", &format!("after-{i}")))
            .await
            .expect("route")
            .into_inner();
        assert_eq!(r.status, pb::RouteStatus::Denied as i32, "the deny holds: {}", r.reason);
        assert!(r.reason.contains(&id), "{}", r.reason);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_routes_over_a_limit_share_one_escalation_on_the_embedded_store() {
    let rules = rules_dir(RULES);
    let server = Server::start(rules.path(), &[]);
    one_escalation_then_a_deny_holds(&[server.client().await]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_routes_over_a_limit_share_one_escalation_across_two_sidecars_on_redis() {
    let redis = RedisServer::start();
    let rules = rules_dir(RULES);
    let url = redis.url();
    let a = Server::start(rules.path(), &["--redis-url", &url]);
    let b = Server::start(rules.path(), &["--redis-url", &url]);
    one_escalation_then_a_deny_holds(&[a.client().await, b.client().await]).await;
}

/// Defect 4: a reload that renamed the routed model made its ReportUsage
/// INVALID_ARGUMENT, and the call's cost was never charged. The reservation
/// now carries its prices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_charged_at_the_routed_prices_after_a_reload_renames_the_model() {
    let rules = rules_dir(RULES);
    let server = Server::start(rules.path(), &[]);
    let mut c = server.client().await;
    let r = c.route(call("capped", "ticket-9")).await.expect("route").into_inner();
    assert_eq!(r.model, "small");
    // The model is renamed and repriced: `small` is gone.
    let renamed = RULES
        .replacen("name = \"small\"", "name = \"small-v2\"", 1)
        .replacen("input_per_mtok = 1.0", "input_per_mtok = 9.0", 1)
        .replace(
            "allowed_models = [\"small\", \"large\"]",
            "allowed_models = [\"small-v2\", \"large\"]",
        );
    let tmp = rules.path().join("rules.toml.tmp");
    std::fs::write(&tmp, renamed).expect("write");
    std::fs::rename(&tmp, rules.path().join("rules.toml")).expect("rename");
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric_at(&server.admin, "switchyard_rules_reloads_total") == 1
        })
        .await,
        "the reload took"
    );
    let ack = c
        .report_usage(usage(&r, "small", 100))
        .await
        .expect("report after the rename");
    // $1 and $4 per million tokens: 1,000 and 4,000 nano-USD a token.
    let expected = r.input_tokens as i64 * 1_000 + 100 * 4_000;
    assert_eq!(ack.into_inner().cost_nanousd, expected);
    let b = budget(&mut c, "capped").await;
    assert_eq!(
        (b.spent_nanousd, b.reserved_nanousd),
        (expected, 0),
        "charged, and released"
    );
}

/// Defect 10: callers controlled the accounting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_cannot_steer_the_accounting() {
    let dir = tempfile::tempdir().expect("tmp");
    let rules = rules_dir(RULES);
    let keys = keys_file(dir.path(), "");
    let state = tempfile::tempdir().expect("state");
    let server = Server::start(
        rules.path(),
        &[
            "--api-keys",
            keys.to_str().expect("utf-8"),
            "--state-dir",
            state.path().to_str().expect("utf-8"),
        ],
    );
    let mut c = server.client().await;

    // Another identity cannot settle (or label) agent-a's call.
    let r = c
        .route(keyed(call("capped", "ticket-1"), "key-a"))
        .await
        .expect("route")
        .into_inner();
    let e = c
        .report_usage(keyed(usage(&r, "", 0), "key-b"))
        .await
        .expect_err("another identity");
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    let e = c
        .record_feedback(keyed(
            pb::FeedbackReport {
                decision_id: r.decision_id.clone(),
                accepted: false,
            },
            "key-b",
        ))
        .await
        .expect_err("another identity's feedback");
    assert_eq!(e.code(), Code::PermissionDenied);
    // agent-a's real report is charged in full, not answered as a repeat at 0.
    let cost = c
        .report_usage(keyed(usage(&r, "", 150), "key-a"))
        .await
        .expect("own report")
        .into_inner()
        .cost_nanousd;
    assert_eq!(cost, r.input_tokens as i64 * 1_000 + 150 * 4_000);
    // An admin may settle anyone's.
    let r2 = c
        .route(keyed(call("capped", "ticket-2"), "key-a"))
        .await
        .expect("route")
        .into_inner();
    c.report_usage(keyed(usage(&r2, "", 10), "key-ops"))
        .await
        .expect("an admin settles");

    // Usage for another model: refused by default, and audited.
    let r3 = c
        .route(keyed(call("strict", "s-1"), "key-a"))
        .await
        .expect("route")
        .into_inner();
    let e = c
        .report_usage(keyed(
            pb::UsageReport {
                input_tokens: 100_000_000,
                output_tokens: 100_000_000,
                ..usage(&r3, "large", 0)
            },
            "key-a",
        ))
        .await
        .expect_err("another model");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("report the model Route chose (small)"),
        "{}",
        e.message()
    );
    // Charged where the workflow says so, at that model's prices, flagged.
    let r4 = c
        .route(keyed(call("lenient", "l-1"), "key-a"))
        .await
        .expect("route")
        .into_inner();
    let cost = c
        .report_usage(keyed(usage(&r4, "large", 100), "key-a"))
        .await
        .expect("charged")
        .into_inner()
        .cost_nanousd;
    assert_eq!(cost, r4.input_tokens as i64 * 15_000 + 100 * 75_000);
    let r5 = c
        .route(keyed(call("lenient", "l-2"), "key-a"))
        .await
        .expect("route")
        .into_inner();
    c.report_usage(keyed(usage(&r5, "offshore", 10), "key-a"))
        .await
        .expect("charged");
    assert_eq!(
        metric_at(
            &server.admin,
            "switchyard_usage_model_mismatch_total{workflow=\"lenient\"}"
        ),
        2
    );

    // A workflow that caps each outcome needs an outcome ID.
    let mut no_outcome = call("capped", "");
    no_outcome.outcome_id.clear();
    let e = c.route(keyed(no_outcome, "key-a")).await.expect_err("no outcome");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("outcome_id is required"), "{}", e.message());

    // An overshoot far past the estimate (200 output tokens) is flagged.
    let r6 = c
        .route(keyed(call("lenient", "l-3"), "key-a"))
        .await
        .expect("route")
        .into_inner();
    c.report_usage(keyed(usage(&r6, "", 5_000_000), "key-a"))
        .await
        .expect("charged in full");
    // That one, and the call charged at `large` instead of the routed
    // `small`: 15 times the input price is past 3 times the estimate too.
    assert_eq!(
        metric_at(&server.admin, "switchyard_usage_overshoot_total{workflow=\"lenient\"}"),
        2
    );
    drop(c);
    server.terminate();
    let results: Vec<String> = audit(state.path(), &["--action", "report_usage"])
        .iter()
        .map(|r| r["result"].as_str().unwrap_or_default().to_string())
        .collect();
    for want in [
        "permission_denied",
        "refused_other_model",
        "other_model",
        "outside_policy",
        "usage_overshoot",
    ] {
        assert!(results.iter().any(|r| r == want), "audited {want}: {results:?}");
    }
}

/// A gRPC codec that sends raw bytes as the request body: what a broken or
/// hostile client puts on the wire.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

async fn raw_call(server: &Server, method: &'static str, body: Vec<u8>) -> tonic::Status {
    let ch = Channel::from_shared(format!("http://{}", server.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.expect("ready");
    grpc.unary(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(method),
        RawCodec,
    )
    .await
    .expect_err("refused")
}

/// Defect 11: malformed protobuf and invalid UTF-8 answered INTERNAL, a
/// server fault; an empty workflow on GetBudget answered NOT_FOUND.
#[tokio::test]
async fn client_mistakes_are_invalid_argument_not_server_faults() {
    let rules = rules_dir(RULES);
    let server = Server::start(rules.path(), &[]);
    // Field 1 (workflow), length-delimited, two bytes that are not UTF-8.
    let bad_utf8 = vec![0x0a, 0x02, 0xff, 0xfe];
    let s = raw_call(&server, "/switchyard.v1.Router/Route", bad_utf8).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    assert!(s.message().contains("RouteRequest.workflow"), "{}", s.message());
    // A length that runs past the end of the message.
    let truncated = vec![0x0a, 0x40, b'x'];
    let s = raw_call(&server, "/switchyard.v1.Router/ReportUsage", truncated).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
    let mut c = server.client().await;
    let e = c
        .get_budget(pb::GetBudgetRequest {
            workflow: String::new(),
        })
        .await
        .expect_err("empty workflow");
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    let e = c
        .record_outcome(pb::OutcomeReport {
            outcome_id: "o".into(),
            workflow: String::new(),
            status: pb::OutcomeStatus::Accepted as i32,
            ..Default::default()
        })
        .await
        .expect_err("empty workflow");
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    // And the server keeps serving.
    c.route(call("strict", "after")).await.expect("route");
}

/// Defect 8: `--listen [::]:P` without keys refused 127.0.0.1, seen there
/// as ::ffff:127.0.0.1.
#[tokio::test]
async fn a_dual_stack_listener_without_keys_accepts_ipv4_loopback() {
    let rules = rules_dir(RULES);
    let server = Server::start(rules.path(), &["--listen", "[::]:0"]);
    let port = server.grpc.rsplit(':').next().expect("port");
    let ch = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect over IPv4");
    let mut c = RouterClient::new(ch);
    c.route(call("strict", "v4")).await.expect("IPv4 loopback is local");
}

fn serve_once(rules: &Path, state: &Path, extra: &[&str]) -> std::process::Output {
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--rules")
        .arg(rules)
        .arg("--state-dir")
        .arg(state)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().expect("output")
}

/// Defect 9: a zero-length or deleted budget.sqlite3 started silently with
/// nothing spent, making the period's whole budget available again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_store_beside_its_state_is_refused_unless_a_fresh_start_is_accepted() {
    let rules = rules_dir(RULES);
    let state = tempfile::tempdir().expect("state");
    let dir = state.path().to_str().expect("utf-8").to_string();
    {
        let server = Server::start(rules.path(), &["--state-dir", &dir]);
        let mut c = server.client().await;
        let r = c.route(call("capped", "ticket-1")).await.expect("route").into_inner();
        c.report_usage(usage(&r, "", 100)).await.expect("report");
        assert!(budget(&mut c, "capped").await.spent_nanousd > 0);
        drop(c);
        server.terminate();
    }
    let db = state.path().join("budget.sqlite3");
    for (what, damage) in [("is empty (0 bytes)", true), ("is missing", false)] {
        if damage {
            std::fs::write(&db, b"").expect("truncate");
        } else {
            std::fs::remove_file(&db).expect("delete");
        }
        let out = serve_once(rules.path(), state.path(), &[]);
        assert_eq!(out.status.code(), Some(64), "refused, before any port is bound");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(what) && err.contains("--accept-fresh-store"), "{err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    }
    // Accepted on purpose: it serves, empty, and the fresh start is audited.
    let server = Server::start(rules.path(), &["--state-dir", &dir, "--accept-fresh-store"]);
    let mut c = server.client().await;
    assert_eq!(budget(&mut c, "capped").await.spent_nanousd, 0);
    drop(c);
    server.terminate();
    let fresh = audit(state.path(), &["--action", "store_fresh_start"]);
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert!(fresh[0]["reason"].as_str().unwrap_or_default().contains("is missing"));
    // A damaged file is named as damaged.
    std::fs::write(&db, b"not a database at all, just some text that is long enough").expect("write");
    let out = serve_once(rules.path(), state.path(), &[]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("damaged") && !err.contains("writable folder"), "{err}");
}

/// Defect 5: unauthenticated callers flooded the audit log, a line each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_cannot_flood_the_audit_log() {
    let dir = tempfile::tempdir().expect("tmp");
    let rules = rules_dir(RULES);
    let keys = keys_file(dir.path(), "");
    let state = tempfile::tempdir().expect("state");
    let server = Server::start(
        rules.path(),
        &[
            "--api-keys",
            keys.to_str().expect("utf-8"),
            "--caller-rps",
            "100",
            "--state-dir",
            state.path().to_str().expect("utf-8"),
        ],
    );
    let c = server.client().await;
    const CALLS: usize = 10_000;
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let (mut unauthenticated, mut limited) = (0u64, 0u64);
                for _ in 0..CALLS / 32 + usize::from(t < CALLS % 32) {
                    match c.route(keyed(call("strict", "x"), "not-a-key")).await {
                        Err(e) if e.code() == Code::Unauthenticated => unauthenticated += 1,
                        Err(e) if e.code() == Code::ResourceExhausted => limited += 1,
                        other => panic!("{other:?}"),
                    }
                }
                (unauthenticated, limited)
            })
        })
        .collect();
    let (unauthenticated, limited) = sum_pairs(tasks).await;
    assert!(limited > 0, "the peer was limited after its burst");
    assert!(unauthenticated >= 100, "the burst was answered as unauthenticated");
    // A good key from the same address is not locked out.
    c.clone()
        .route(keyed(call("strict", "ok"), "key-a"))
        .await
        .expect("a valid key still routes");
    drop(c);
    server.terminate();
    let records = audit(state.path(), &["--action", "route"]);
    assert!(
        records.len() <= 8,
        "a handful of records, not one a call: {}",
        records.len()
    );
    let counted: u64 = records
        .iter()
        .filter(|r| r["identity"] == "-")
        .map(|r| r["count"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(counted, (unauthenticated + limited), "every refusal is counted");
    assert!(records.iter().any(|r| r["peer"] == "127.0.0.1"), "{records:?}");
}
