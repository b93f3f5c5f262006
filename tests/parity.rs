//! `explain` decides as `serve` does: the same Route use case, with the
//! store beside a running server read, not written. Three cases that once
//! differed: a learning workflow after feedback, a retry after a
//! rejection, and a workflow past its soft threshold.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use switchyard::grpc::pb;
use switchyard::grpc::pb::router_client::RouterClient;
use tonic::transport::Channel;

const RULES: &str = include_str!("fixtures/parity.toml");

fn ask(workflow: &str, kind: &str, text: &str, outcome: &str, attempt: u32) -> pb::RouteRequest {
    pb::RouteRequest {
        task_kind: kind.into(),
        outcome_id: outcome.into(),
        attempt,
        ..request(workflow, text)
    }
}

fn status_name(code: i32) -> &'static str {
    match pb::RouteStatus::try_from(code) {
        Ok(pb::RouteStatus::Routed) => "routed",
        Ok(pb::RouteStatus::Downgraded) => "downgraded",
        Ok(pb::RouteStatus::EscalationRequired) => "escalation_required",
        _ => "denied",
    }
}

/// `switchyard explain` beside the server, as JSON.
fn explain(rules: &Path, state: &Path, workflow: &str, kind: &str, text: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["explain", "--rules"])
        .arg(rules)
        .arg("--state-dir")
        .arg(state)
        .args(["--workflow", workflow, "--task-kind", kind])
        .args(extra)
        .arg(text)
        .output()
        .expect("run explain");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("explain prints JSON")
}

/// The decision, as both sides name it: model, rule, tier and status.
fn same(served: &pb::RouteResponse, explained: &serde_json::Value) {
    let d = &explained["decision"];
    assert_eq!(
        (
            d["model"].as_str(),
            d["rule"].as_str(),
            d["required_tier"].as_u64(),
            explained["status"].as_str()
        ),
        (
            Some(served.model.as_str()),
            Some(served.rule.as_str()),
            Some(u64::from(served.required_tier)),
            Some(status_name(served.status))
        ),
        "explain: {explained:#}\nserve: {served:?}"
    );
}

async fn feedback(c: &mut RouterClient<Channel>, r: &pb::RouteResponse, accepted: bool) {
    c.record_feedback(pb::FeedbackReport {
        decision_id: r.decision_id.clone(),
        accepted,
    })
    .await
    .expect("feedback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_decides_as_serve_does() {
    let rules = rules_dir(RULES);
    let state = tempfile::tempdir().expect("state");
    let dir = state.path().to_str().expect("utf-8");
    let server = Server::start(rules.path(), &["--state-dir", dir]);
    let mut c = server.client().await;

    // 1. A learning workflow after feedback: proofs fail on the weak tier
    // and pass on the strong one; chat passes on the weak one.
    let mut labelled = 0;
    for i in 0..24 {
        let proof = format!("Prove that every finite structure of order {i} has the stated property.");
        let outcome = format!("p-{i}");
        let r = c
            .route(ask("learn", "proof", &proof, &outcome, 1))
            .await
            .expect("route")
            .into_inner();
        feedback(&mut c, &r, r.model == "strong").await;
        let chat = format!("Hello! Tell me something cheerful, please. Message {i}.");
        let r = c
            .route(ask("learn", "chat", &chat, "", 1))
            .await
            .expect("route")
            .into_inner();
        feedback(&mut c, &r, true).await;
        labelled += 2;
        // A rejected proof is retried, a tier up, where it passes.
        if r.model == "weak" {
            let r = c
                .route(ask("learn", "proof", &proof, &outcome, 2))
                .await
                .expect("route")
                .into_inner();
            assert_eq!(r.model, "strong", "the retry cascades: {}", r.reason);
            feedback(&mut c, &r, true).await;
            labelled += 1;
        }
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric_at(&server.admin, "switchyard_learning_applied_total") >= labelled
        })
        .await,
        "serve folded what it learned"
    );
    let probe = "Prove that every finite structure of order 500 has the stated property.";
    let served = c
        .route(ask("learn", "proof", probe, "", 1))
        .await
        .expect("route")
        .into_inner();
    assert!(
        served.reason.contains("learned"),
        "the learned model decides: {}",
        served.reason
    );
    let explained = explain(rules.path(), state.path(), "learn", "proof", probe, &[]);
    same(&served, &explained);
    assert_eq!(explained["decision"]["learned"], true);
    // A learned choice carries the probability that the policy made it.
    let propensity = explained["decision"]["propensity"].as_f64().expect("a propensity");
    assert!(propensity > 0.0 && propensity <= 1.0, "{propensity}");
    // And what the model saw: an open gate and a prediction for each tier.
    assert!(
        explained["learning"]["gate"].as_f64() > Some(0.0),
        "{}",
        explained["learning"]
    );
    let tiers = explained["learning"]["tiers"].as_array().expect("tiers");
    assert!(tiers.len() >= 2, "{}", explained["learning"]);
    assert!(tiers
        .iter()
        .all(|t| t["p_accepted"].as_f64().is_some_and(|p| (0.0..=1.0).contains(&p))));
    assert!(explained["learning"]["labelled_calls"].as_u64() >= Some(labelled));

    // 2. A retry after a rejection: the rules alone send it a tier up.
    let text = "Summarise the incident report for the on-call engineer.";
    let first = c
        .route(ask("cascade", "chat", text, "ticket-7", 1))
        .await
        .expect("route")
        .into_inner();
    assert_eq!(first.model, "weak");
    feedback(&mut c, &first, false).await;
    let served = c
        .route(ask("cascade", "chat", text, "ticket-7", 2))
        .await
        .expect("route")
        .into_inner();
    assert_eq!(served.model, "strong", "{}", served.reason);
    let explained = explain(
        rules.path(),
        state.path(),
        "cascade",
        "chat",
        text,
        &["--outcome-id", "ticket-7", "--attempt", "2"],
    );
    same(&served, &explained);
    // Another outcome's retry has no rejection behind it.
    let other = explain(
        rules.path(),
        state.path(),
        "cascade",
        "chat",
        text,
        &["--outcome-id", "ticket-8", "--attempt", "2"],
    );
    assert_eq!(other["decision"]["model"], "weak");

    // 3. Past the soft threshold: $0.60 of a $1 budget spent.
    let r = c
        .route(ask("thrifty", "chat", text, "", 1))
        .await
        .expect("route")
        .into_inner();
    assert_eq!(r.model, "strong");
    c.report_usage(pb::UsageReport {
        decision_id: r.decision_id,
        model: r.model,
        input_tokens: 0,
        cached_input_tokens: 0,
        cache_write_input_tokens: 0,
        output_tokens: 40_000,
        failed: false,
    })
    .await
    .expect("report");
    // The soft threshold reads the period's counters at most every 250 ms.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let served = c
        .route(ask("thrifty", "chat", text, "", 1))
        .await
        .expect("route")
        .into_inner();
    assert_eq!(
        (served.model.as_str(), status_name(served.status)),
        ("mid", "downgraded")
    );
    let explained = explain(rules.path(), state.path(), "thrifty", "chat", text, &[]);
    same(&served, &explained);
    assert_eq!(explained["budget"]["past_soft_threshold"], true);
}
