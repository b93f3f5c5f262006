//! Repeated context end to end over gRPC on loopback: the real `switchyard`
//! binary, a tonic client, one request in flight at a time.
//!
//! Scenarios, each with the same number of requests after a warm-up:
//! - `health`: `grpc.health.v1.Health/Check`, the baseline cost of a call;
//! - `route-repeated-6k`: Route with a 6k-token system context seen before;
//! - `route-unique-6k`: Route with a 6k-token context new on every call;
//! - `route-short`: Route with a short prompt, in a workflow without a budget;
//! - `route-short-budget`: the same in a workflow with a budget (reserve on
//!   the embedded store at Route; no ReportUsage, the TTL is long).
//!
//! Prints p50, p99 and mean latency per scenario, the ratio of repeated to
//! unique, and the ratio of Route's p99 with a budget to without. Run: `cargo bench --bench grpc_context` (bounded: about 10 s).

use std::time::{Duration, Instant};

use switchyard::grpc::pb;
use tonic_health::pb::health_client::HealthClient;

#[path = "../tests/common/mod.rs"]
mod common;
mod shared;
use shared::context_6k;

const WARMUP: usize = 200;
const REQUESTS: usize = 2_000;

struct Summary {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

fn summarise(mut v: Vec<Duration>) -> Summary {
    v.sort();
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    Summary {
        p50: v[v.len() / 2],
        p99: v[v.len() * 99 / 100],
        mean,
    }
}

fn request(system: String, i: usize) -> pb::RouteRequest {
    pb::RouteRequest {
        workflow: "general".into(),
        outcome_id: format!("bench-{i}"),
        messages: vec![
            pb::Message {
                role: "system".into(),
                content: system,
            },
            pb::Message {
                role: "user".into(),
                content: format!("question {i}"),
            },
        ],
        attempt: 1,
        ..Default::default()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // The shipped rules plus a workflow with a budget too large to run out.
    let rules = tempfile::tempdir().expect("tmp");
    let mut text = std::fs::read_to_string(common::repo_path("routing-rules/default.toml")).expect("rules");
    text.push_str("\n[[workflows]]\nname = \"budgeted\"\n[workflows.budget]\nlimit_usd = 1000000\nperiod = \"day\"\n");
    std::fs::write(rules.path().join("rules.toml"), text).expect("write");
    let server = common::Server::start(&rules.path().join("rules.toml"), &[]);
    let mut router = server.client().await;
    let mut health = HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", server.grpc))
            .expect("uri")
            .connect()
            .await
            .expect("connect"),
    );
    let context = context_6k();

    let mut results = Vec::new();
    for scenario in [
        "health",
        "route-repeated-6k",
        "route-unique-6k",
        "route-short",
        "route-short-budget",
    ] {
        let mut lat = Vec::with_capacity(REQUESTS);
        for i in 0..WARMUP + REQUESTS {
            let t0 = Instant::now();
            match scenario {
                "health" => {
                    health
                        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                        .await
                        .expect("health");
                }
                "route-repeated-6k" => {
                    router.route(request(context.clone(), i)).await.expect("route");
                }
                "route-short" | "route-short-budget" => {
                    let mut r = request("You are a helpful assistant.".into(), i);
                    if scenario == "route-short-budget" {
                        r.workflow = "budgeted".into();
                    }
                    router.route(r).await.expect("route");
                }
                _ => {
                    router
                        .route(request(format!("Session {i}. {context}"), i))
                        .await
                        .expect("route");
                }
            }
            if i >= WARMUP {
                lat.push(t0.elapsed());
            }
        }
        // Building the request (cloning 24 KB) is inside the timing for both
        // Route scenarios alike.
        let s = summarise(lat);
        println!(
            "{scenario:<20} p50 {:>9.1?}  p99 {:>9.1?}  mean {:>9.1?}  ({REQUESTS} requests, 1 in flight)",
            s.p50, s.p99, s.mean
        );
        results.push(s);
    }
    let ratio = results[1].mean.as_secs_f64() / results[2].mean.as_secs_f64();
    println!("repeated / unique (mean latency): {ratio:.2}");
    let budget = results[4].p99.as_secs_f64() / results[3].p99.as_secs_f64();
    println!("route p99 with a budget / without: {budget:.2}");
}
