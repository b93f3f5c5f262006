//! Repeated context end to end over gRPC on loopback: the real `switchyard`
//! binary, a tonic client, one request in flight at a time.
//!
//! Scenarios, each with the same number of requests after a warm-up:
//! - `health`: `grpc.health.v1.Health/Check`, the baseline cost of a call;
//! - `route-repeated-6k`: Route with a 6k-token system context seen before;
//! - `route-unique-6k`: Route with a 6k-token context new on every call;
//! - `route-short`: Route with a short prompt, in a workflow without a budget;
//! - `route-short-budget`: the same in a workflow with a budget and a soft
//!   threshold (the threshold check, then a reservation on the embedded
//!   store at Route; no ReportUsage, the TTL is long);
//! - `route-short-budget-redis`: the same against a second server whose
//!   budgets are in Redis (a `redis-server` started here on a free port,
//!   without persistence);
//! - `route-short-budget-redis-aof`: the same with Redis writing its
//!   append-only file and fsyncing it every second.
//!
//! Prints p50, p99 and mean latency per scenario, the ratio of repeated to
//! unique, and the ratio of Route's p99 with a budget (on each store) to without. Run: `cargo bench --bench grpc_context` (bounded: about 10 s).

use std::time::{Duration, Instant};

use switchyard::grpc::pb;
use tonic_health::pb::health_client::HealthClient;

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/redis.rs"]
mod redis_server;
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
    if v.is_empty() {
        v.push(Duration::ZERO);
    }
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
    text.push_str("\n[[workflows]]\nname = \"budgeted\"\n[workflows.budget]\nlimit_usd = 1000000\nperiod = \"day\"\nsoft_threshold_pct = 80\n");
    std::fs::write(rules.path().join("rules.toml"), text).expect("write");
    let server = common::Server::start(&rules.path().join("rules.toml"), &[]);
    let mut router = server.client().await;
    // Redis as a cache would run it (no persistence), and with its
    // append-only file fsynced every second, as a budget store should be.
    let redis_mem = redis_server::RedisServer::start_with(&["--appendonly", "no"]);
    let redis_aof = redis_server::RedisServer::start_with(&["--appendfsync", "everysec"]);
    let fleet_mem = common::Server::start(&rules.path().join("rules.toml"), &["--redis-url", &redis_mem.url()]);
    let fleet_aof = common::Server::start(&rules.path().join("rules.toml"), &["--redis-url", &redis_aof.url()]);
    let mut mem_router = fleet_mem.client().await;
    let mut aof_router = fleet_aof.client().await;
    let mut health = HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", server.grpc))
            .expect("uri")
            .connect()
            .await
            .expect("connect"),
    );
    let context = context_6k();

    const SCENARIOS: [&str; 7] = [
        "health",
        "route-repeated-6k",
        "route-unique-6k",
        "route-short",
        "route-short-budget",
        "route-short-budget-redis",
        "route-short-budget-redis-aof",
    ];
    // Interleaved: request i of every scenario runs before request i + 1 of
    // any, so a noisy moment on this shared machine falls on all alike and
    // the ratios stay fair.
    let mut lat: Vec<Vec<Duration>> = SCENARIOS.iter().map(|_| Vec::with_capacity(REQUESTS)).collect();
    // `cargo bench --bench grpc_context -- route-short` runs only the
    // scenarios whose names contain an argument.
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let runs = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o.as_str()));
    for i in 0..WARMUP + REQUESTS {
        for (k, scenario) in SCENARIOS.iter().enumerate().filter(|(_, s)| runs(s)) {
            let t0 = Instant::now();
            match *scenario {
                "health" => {
                    health
                        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                        .await
                        .expect("health");
                }
                "route-repeated-6k" => {
                    router.route(request(context.clone(), i)).await.expect("route");
                }
                "route-unique-6k" => {
                    router
                        .route(request(format!("Session {i}. {context}"), i))
                        .await
                        .expect("route");
                }
                _ => {
                    let mut r = request("You are a helpful assistant.".into(), i);
                    if *scenario != "route-short" {
                        r.workflow = "budgeted".into();
                    }
                    let client = match *scenario {
                        "route-short-budget-redis" => &mut mem_router,
                        "route-short-budget-redis-aof" => &mut aof_router,
                        _ => &mut router,
                    };
                    let r = client.route(r).await.expect("route").into_inner();
                    assert_ne!(r.decision_id, "");
                }
            }
            if i >= WARMUP {
                lat[k].push(t0.elapsed());
            }
        }
    }
    // Building the request (cloning 24 KB) is inside the timing for both
    // 6k scenarios alike.
    let results: Vec<Summary> = lat.into_iter().map(summarise).collect();
    for (scenario, s) in SCENARIOS.iter().zip(&results).filter(|(n, _)| runs(n)) {
        println!(
            "{scenario:<28} p50 {:>9.1?}  p99 {:>9.1?}  mean {:>9.1?}  ({REQUESTS} requests, 1 in flight)",
            s.p50, s.p99, s.mean
        );
    }
    let ratio = |a: usize, b: usize, f: fn(&Summary) -> Duration| {
        (runs(SCENARIOS[a]) && runs(SCENARIOS[b])).then(|| f(&results[a]).as_secs_f64() / f(&results[b]).as_secs_f64())
    };
    if let Some(r) = ratio(1, 2, |s| s.mean) {
        println!("repeated / unique (mean latency): {r:.2}");
    }
    for (store, i) in [("sqlite", 4), ("redis", 5), ("redis with AOF everysec", 6)] {
        if let Some(r) = ratio(i, 3, |s| s.p99) {
            println!("route p99 with a budget ({store}) / without: {r:.2}");
        }
    }
}
