//! Learning over real gRPC: feedback and outcomes teach the router that the
//! weak tier fails one task kind; the learned state survives a crash
//! (SIGKILL) and restart of the embedded store, and a second sidecar sharing
//! Redis routes with it from its first call.

mod common;

#[path = "common/redis.rs"]
mod redis_server;

use std::path::Path;
use std::time::Duration;

use common::*;
use redis_server::RedisServer;
use switchyard::grpc::pb;
use switchyard::grpc::pb::router_client::RouterClient;
use tonic::transport::Channel;

const RULES: &str = include_str!("fixtures/learning.toml");

const TOPICS: [&str; 6] = ["graphs", "primes", "groups", "lattices", "series", "matrices"];

fn text(kind: &str, i: usize) -> String {
    let topic = TOPICS[i % TOPICS.len()];
    match kind {
        "proof" => format!("Prove that every finite {topic} object of size {i} has the stated property."),
        _ => format!("Hello! Tell me something cheerful about {topic}, please. Message {i}."),
    }
}

async fn route(c: &mut RouterClient<Channel>, kind: &str, i: usize, outcome: &str, attempt: u32) -> pb::RouteResponse {
    let mut req = request("learn", &text(kind, i));
    req.task_kind = kind.into();
    req.outcome_id = outcome.into();
    req.attempt = attempt;
    c.route(req).await.expect("route").into_inner()
}

/// The agent's side: proofs fail on the weak model and are retried, which
/// the cascade sends one tier up, where they are accepted; chat is accepted
/// on the weak model, reported as an outcome.
/// Returns how many calls it labelled.
async fn teach(c: &mut RouterClient<Channel>, rounds: std::ops::Range<usize>) -> u64 {
    let mut labelled = 0;
    for i in rounds {
        let outcome = format!("proof-{i}");
        let first = route(c, "proof", i, &outcome, 1).await;
        let accepted = first.model == "strong";
        labelled += 1;
        c.record_feedback(pb::FeedbackReport {
            decision_id: first.decision_id,
            accepted,
        })
        .await
        .expect("feedback");
        if !accepted {
            labelled += 1;
            let retry = route(c, "proof", i, &outcome, 2).await;
            assert_eq!(
                retry.model, "strong",
                "a rejected attempt goes one tier up: {}",
                retry.reason
            );
            c.record_feedback(pb::FeedbackReport {
                decision_id: retry.decision_id,
                accepted: true,
            })
            .await
            .expect("feedback");
        }
        let outcome = format!("chat-{i}");
        let chat = route(c, "chat", i, &outcome, 1).await;
        assert_eq!(chat.model, "weak", "chat stays on the weak tier: {}", chat.reason);
        c.record_outcome(pb::OutcomeReport {
            outcome_id: outcome,
            workflow: "learn".into(),
            status: pb::OutcomeStatus::Accepted as i32,
            ..Default::default()
        })
        .await
        .expect("outcome");
        labelled += 1;
    }
    labelled
}

/// A new proof (never seen) goes straight to the strong tier on its first
/// attempt, by the learned model's choice; chat stays weak.
async fn routes_as_learned(c: &mut RouterClient<Channel>) -> bool {
    let proof = route(c, "proof", 1000, "fresh-proof", 1).await;
    let chat = route(c, "chat", 1000, "fresh-chat", 1).await;
    proof.model == "strong" && proof.reason.contains("learned") && chat.model == "weak"
}

fn rules_file(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("learn.toml");
    std::fs::write(&p, RULES).expect("rules");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_teaches_the_router_and_survives_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = rules_file(dir.path());
    let state = dir.path().join("state");
    let state_arg = state.to_str().expect("utf-8 path");
    let server = Server::start(&rules, &["--state-dir", state_arg]);
    let mut c = server.client().await;

    // Cold: the rules send a proof's first attempt to the weak tier.
    let cold = route(&mut c, "proof", 0, "cold", 1).await;
    assert_eq!(cold.model, "weak", "{}", cold.reason);
    assert!(!cold.reason.contains("learned"), "{}", cold.reason);

    let taught = teach(&mut c, 0..14).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            routes_as_learned(&mut c.clone()).await
        })
        .await,
        "the router did not learn that proofs need the strong tier"
    );
    let (_, metrics) = server.admin_get("/metrics");
    assert!(
        metrics.contains("switchyard_learned_calls{workflow=\"learn\",tier=\"4\"}"),
        "{metrics}"
    );
    let labelled = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_learning_labelled_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("labelled counter");
    assert_eq!(labelled, taught, "every proof attempt and chat outcome labels one call");

    // A crash, then a restart on the same state folder: the learned state
    // is rebuilt from the store before the server reports it is listening.
    server.kill9();
    let server = Server::start(&rules, &["--state-dir", state_arg]);
    let mut c = server.client().await;
    assert!(
        routes_as_learned(&mut c).await,
        "the first call after a restart routes with the learned state; log:\n{}",
        server.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_sharing_redis_share_what_they_learn() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = rules_file(dir.path());
    let url = redis.url();
    let flags = ["--redis-url", url.as_str(), "--redis-timeout-ms", "5000"];
    let a = Server::start(&rules, &flags);
    let mut ca = a.client().await;
    teach(&mut ca, 0..14).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            routes_as_learned(&mut ca.clone()).await
        })
        .await,
        "sidecar A did not learn"
    );
    // Sidecar B has its own state folder and never saw a call.
    let b = Server::start(&rules, &flags);
    let mut cb = b.client().await;
    assert!(
        routes_as_learned(&mut cb).await,
        "sidecar B routes with what A learned, from its first call"
    );
}
