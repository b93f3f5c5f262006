//! Repeated context over real gRPC: counted once, priced at the cached rate,
//! and never dearer than routing it cold.

mod common;

use std::process::Command;

use common::*;
use switchyard::grpc::pb;

/// A system prompt of a few thousand tokens, the kind agents resend every call.
fn system_prompt() -> String {
    (0..700)
        .map(|i| format!("Policy {i}: answer from the knowledge base only. "))
        .collect()
}

fn with_system(system: &str, user: &str) -> pb::RouteRequest {
    pb::RouteRequest {
        messages: vec![message("system", system), message("user", user)],
        ..request("general", user)
    }
}

/// The cold price of the same request, from `explain` (which keeps no cache).
fn cold_cost(system: &str, user: &str) -> (String, i64) {
    let out = Command::new(BIN)
        .args(["explain", "--rules"])
        .arg(repo_path("routing-rules"))
        .args(["--system", system, user])
        .output()
        .expect("explain");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    (
        v["decision"]["model"].as_str().expect("model").to_string(),
        v["decision"]["estimated_cost_nanousd"].as_i64().expect("cost"),
    )
}

#[tokio::test]
async fn a_repeated_system_prompt_is_priced_at_the_cached_rate() {
    let server = Server::start(&repo_path("routing-rules"), &[]);
    let mut client = server.client().await;
    let system = system_prompt();

    let first = client
        .route(with_system(&system, "What is our refund window?"))
        .await
        .expect("route")
        .into_inner();
    assert_eq!(first.cached_input_tokens, 0, "nothing is warm yet");

    let second = client
        .route(with_system(&system, "Do we ship to Norway?"))
        .await
        .expect("route")
        .into_inner();
    assert_eq!(
        second.model, first.model,
        "the warm model is still the cheapest: {second:?}"
    );
    assert!(second.cached_input_tokens > 1024, "{second:?}");
    assert!(second.cached_input_tokens < second.input_tokens);
    assert!(
        second.estimated_cost_nanousd < first.estimated_cost_nanousd,
        "{first:?}\n{second:?}"
    );
    assert!(second.reason.contains("prefix tokens warm on"), "{}", second.reason);

    // Affinity never makes a request dearer than routing it cold.
    let (_, cold) = cold_cost(&system, "Do we ship to Norway?");
    assert!(
        second.estimated_cost_nanousd <= cold,
        "warm {} > cold {cold}",
        second.estimated_cost_nanousd
    );

    // A different system prompt is cold.
    let other = client
        .route(with_system(&format!("{system} (v2)"), "Do we ship to Norway?"))
        .await
        .expect("route");
    assert_eq!(other.into_inner().cached_input_tokens, 0);

    let (_, metrics) = server.admin_get("/metrics");
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert!(value("switchyard_context_cache_hits_total") >= 1);
    assert!(value("switchyard_context_cache_misses_total") >= 4);
    assert_eq!(value("switchyard_prefix_cache_hits_total"), 1);
    assert!(value("switchyard_context_cache_entries") > 0);
    assert!(value("switchyard_context_cache_weight_bytes") > 0);
}

#[tokio::test]
async fn concurrent_calls_with_the_same_prefix_get_the_same_counts() {
    let server = Server::start(&repo_path("routing-rules"), &[]);
    let client = server.client().await;
    let system = system_prompt();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let mut c = client.clone();
            let req = with_system(&system, "Same question for everyone.");
            tokio::spawn(async move {
                let r = c.route(req).await.expect("route").into_inner();
                (i, r.input_tokens)
            })
        })
        .collect();
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.expect("task").1);
    }
    counts.dedup();
    assert_eq!(counts.len(), 1, "every caller saw the same count: {counts:?}");
    // And it is the exact count, as explain computes it without any cache.
    let out = Command::new(BIN)
        .args(["explain", "--rules"])
        .arg(repo_path("routing-rules"))
        .args(["--system", &system, "Same question for everyone."])
        .output()
        .expect("explain");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["decision"]["input_tokens"].as_u64(), Some(counts[0]));
}
