//! Repeated context end to end over gRPC on loopback: the real `switchyard`
//! binary, a tonic client, one request in flight at a time.
//!
//! Scenarios, each with the same number of requests after a warm-up:
//! - `health`: `grpc.health.v1.Health/Check`, the baseline cost of a call;
//! - `route-repeated-6k`: Route with a 6k-token system context seen before;
//! - `route-unique-6k`: Route with a 6k-token context new on every call.
//!
//! Prints p50, p99 and mean latency per scenario, and the ratio of repeated
//! to unique. Run: `cargo bench --bench grpc_context` (bounded: about 10 s).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchyard::estimate::tokens;
use switchyard::grpc::pb;
use switchyard::grpc::pb::router_client::RouterClient;
use switchyard::rules::Encoding;
use tonic_health::pb::health_client::HealthClient;

const WARMUP: usize = 200;
const REQUESTS: usize = 2_000;

fn context_6k() -> String {
    let mut s = String::new();
    let mut i = 0;
    while tokens::count(Encoding::O200k, &s) < 6_000 {
        s.push_str(&format!(
            "Policy {i}: when a customer asks about order {i}, check the ledger, cite the clause, and never promise a refund before the review. "
        ));
        i += 1;
    }
    s
}

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
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("routing-rules");
    let state = std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("serve")
        .arg("--rules")
        .arg(&rules)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start switchyard");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let addr = line
        .split("grpc=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("grpc address");
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut router = RouterClient::new(channel.clone());
    let mut health = HealthClient::new(channel);
    let context = context_6k();

    let mut results = Vec::new();
    for scenario in ["health", "route-repeated-6k", "route-unique-6k"] {
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
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&state);
}
