//! Governance over real gRPC: API keys and roles, per-workflow callers and
//! data policy, the audit log and `switchyard audit`, keys and rules reloads,
//! per-caller limits, deadlines, and a scan that no prompt text reaches the
//! state folder or the logs.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use switchyard::grpc::pb;
use switchyard::grpc::pb::router_client::RouterClient;
use tonic::transport::Channel;
use tonic::Code;

/// Text that must never leave the request: searched for in every file after.
const SECRET_PROMPT: &str = "Customer zebra-quartz-7719 asks about the refund for order 55-A.";
const MARKER: &str = "zebra-quartz-7719";

fn rules_copy(dir: &Path) -> PathBuf {
    let p = dir.join("rules");
    std::fs::create_dir_all(&p).expect("rules dir");
    std::fs::copy(
        repo_path("routing-rules/examples/governance.toml"),
        p.join("governance.toml"),
    )
    .expect("copy rules");
    p
}

fn with_key<T>(mut req: tonic::Request<T>, key: Option<&str>) -> tonic::Request<T> {
    if let Some(k) = key {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {k}").parse().expect("header"));
    }
    req
}

async fn route(
    c: &mut RouterClient<Channel>,
    key: Option<&str>,
    workflow: &str,
) -> Result<pb::RouteResponse, tonic::Status> {
    let mut r = request(workflow, SECRET_PROMPT);
    r.outcome_id = format!("ticket-{MARKER}-not-prompt");
    c.route(with_key(tonic::Request::new(r), key))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_roles_policy_and_the_audit_trail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys_file(dir.path(), "");
    let rules = rules_copy(dir.path());
    let state = dir.path().join("state");
    let server = Server::start(
        &rules,
        &[
            "--api-keys",
            keys.to_str().expect("utf-8"),
            "--state-dir",
            state.to_str().expect("utf-8"),
        ],
    );
    let mut c = server.client().await;

    // Authentication.
    let no_key = route(&mut c, None, "open").await.expect_err("no key");
    assert_eq!(no_key.code(), Code::Unauthenticated, "{no_key:?}");
    assert!(no_key.message().contains("Bearer"), "{}", no_key.message());
    let bad = route(&mut c, Some("key-z"), "open").await.expect_err("unknown key");
    assert_eq!(bad.code(), Code::Unauthenticated);

    // Per-workflow callers and data policy.
    let denied = route(&mut c, Some("key-b"), "restricted").await.expect_err("agent-b");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("allowed_callers"), "{}", denied.message());
    route(&mut c, Some("key-b"), "open")
        .await
        .expect("agent-b may call `open`");
    let ok = route(&mut c, Some("key-a"), "restricted").await.expect("agent-a");
    assert!(
        ["mistral-large-latest", "claude-sonnet-4-5"].contains(&ok.model.as_str()),
        "only EU models with a data processing agreement: {}",
        ok.model
    );
    // Another caller cannot report on agent-a's call.
    let fb = c
        .record_feedback(with_key(
            tonic::Request::new(pb::FeedbackReport {
                decision_id: ok.decision_id.clone(),
                accepted: true,
            }),
            Some("key-b"),
        ))
        .await
        .expect_err("agent-b on agent-a's decision");
    assert_eq!(fb.code(), Code::PermissionDenied);

    // Roles: callers cannot use admin RPCs, admins cannot route.
    let list = |key: &'static str| {
        let mut c = c.clone();
        async move {
            c.list_escalations(with_key(
                tonic::Request::new(pb::ListEscalationsRequest::default()),
                Some(key),
            ))
            .await
        }
    };
    assert_eq!(list("key-a").await.expect_err("caller").code(), Code::PermissionDenied);
    list("key-ops").await.expect("admin lists escalations");
    let admin_routes = route(&mut c, Some("key-ops"), "open").await.expect_err("admin");
    assert_eq!(admin_routes.code(), Code::PermissionDenied);

    // Health stays open, for Kubernetes probes.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        Channel::from_shared(format!("http://{}", server.grpc))
            .expect("uri")
            .connect()
            .await
            .expect("connect"),
    );
    let h = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health without a key");
    assert_eq!(h.into_inner().status, 1, "SERVING");

    // A new key is picked up without a restart, and the reload is audited.
    keys_file(dir.path(), &key_entry("agent-c", "key-c", "\"caller\""));
    assert!(
        eventually(Duration::from_secs(10), || async {
            route(&mut c.clone(), Some("key-c"), "open").await.is_ok()
        })
        .await,
        "the keys file was not reloaded"
    );
    // A rules change is audited with the files' hash.
    let path = rules.join("governance.toml");
    let text = std::fs::read_to_string(&path).expect("rules");
    std::fs::write(&path, text.replace("Public documentation questions.", "Public docs.")).expect("edit");
    assert!(
        eventually(Duration::from_secs(10), || async {
            !audit(&state, &["--action", "rules_reload"]).is_empty()
        })
        .await,
        "the rules reload was not audited"
    );

    let (status, log) = server.terminate_keeping_log();
    assert!(status.success(), "{status:?}");
    assert!(log.contains("keys reloaded"), "the server log is the real one: {log}");

    // The audit trail, through `switchyard audit`.
    let all = audit(&state, &[]);
    let has = |identity: &str, action: &str, result: &str| {
        all.iter()
            .any(|r| r["identity"] == identity && r["action"] == action && r["result"] == result)
    };
    assert!(has("-", "route", "unauthenticated"), "{all:#?}");
    assert!(has("agent-b", "route", "permission_denied"));
    assert!(has("agent-b", "record_feedback", "permission_denied"));
    assert!(has("agent-a", "list_escalations", "permission_denied"));
    assert!(has("ops", "list_escalations", "ok"));
    assert!(has("ops", "route", "permission_denied"));
    assert!(has("-", "keys_reload", "ok"));
    let reload = all
        .iter()
        .find(|r| r["action"] == "rules_reload")
        .expect("rules reload");
    assert!(
        reload["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("sha256 ") && r.len() == 7 + 64),
        "{reload}"
    );
    let b = audit(&state, &["--identity", "agent-b"]);
    assert!(b.len() >= 2 && b.iter().all(|r| r["identity"] == "agent-b"), "{b:#?}");
    let denied_restricted = audit(&state, &["--workflow", "restricted", "--result", "permission_denied"]);
    assert!(!denied_restricted.is_empty());
    for r in &all {
        for key in ["at", "identity", "action", "workflow", "target", "result", "reason"] {
            assert!(r.get(key).is_some(), "{key} missing in {r}");
        }
    }

    // No prompt text in the state folder or the server's logs.
    let mut scanned = 0;
    for entry in walk(&state) {
        let bytes = std::fs::read(&entry).expect("read state file");
        scanned += 1;
        assert!(
            !contains(&bytes, SECRET_PROMPT.as_bytes()) && !contains(&bytes, b"refund for order 55-A"),
            "prompt text found in {}",
            entry.display()
        );
    }
    assert!(scanned >= 2, "the store and the audit log were scanned");
    assert!(!log.contains("refund for order 55-A"), "prompt text in the server log");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_caller_limits_and_deadlines() {
    let server = Server::start(
        &repo_path("routing-rules"),
        &["--caller-rps", "5", "--caller-burst", "5"],
    );
    let mut c = server.client().await;
    let mut limited = 0;
    for _ in 0..30 {
        match c.route(request("general", "hello")).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(s.message().contains("--caller-rps"), "{}", s.message());
                limited += 1;
            }
            Err(s) => panic!("unexpected {s:?}"),
        }
    }
    assert!(
        limited >= 20,
        "30 calls at once against 5/s, burst 5: {limited} limited"
    );
    let state = server.state.path().to_path_buf();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recs = audit(&state, &["--result", "limited"]);
    assert!(
        !recs.is_empty() && recs.iter().all(|r| r["identity"] == "local"),
        "{recs:#?}"
    );

    // A deadline is honoured: a call that needs longer than its caller
    // allows (counting a megabyte of new text) ends at the deadline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let big: String = (0..200_000).map(|i| format!("w{} ", i % 9973)).collect();
    let mut req = tonic::Request::new(request("general", &big));
    req.set_timeout(Duration::from_millis(5));
    let e = c.route(req).await.expect_err("past its deadline");
    assert!(matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled), "{e:?}");
}
