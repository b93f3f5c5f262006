//! The gRPC load generator: the real `switchyard` binary on loopback, tonic
//! clients, open loop at a fixed rate or closed loop at a fixed concurrency,
//! latencies in an HDR histogram.
//!
//! Scenarios:
//! - `health`: `grpc.health.v1.Health/Check`, the baseline;
//! - `route-short`: Route with a short prompt;
//! - `route-repeated-1k`: Route with a 1k-token context seen before;
//! - `route-repeated-1k-budgeted`: the same in the budgeted workflow, which
//!   `benches/instructions.sh` paces when `SWITCHYARD_PACING` is set;
//! - `route-unique-4k`: Route with a 4k-token context new on every call;
//! - `route-usage-sqlite`: Route then ReportUsage in a budgeted workflow,
//!   on the embedded store;
//! - `route-usage-redis`: the same on Redis (a `redis-server` started here,
//!   append-only file fsync'd every second);
//! - `route-usage-redis-leased`: the same with the budget leased in slices
//!   (`lease = { refresh_s = 10, max_share = 0.05 }`).
//!
//! The Redis scenarios also report, per call, the scripts Redis ran
//! (`EVALSHA` in `INFO commandstats`: every reservation, settlement and
//! lease renewal is one) and the reads it processed (`INFO stats`
//! `total_reads_processed`: requests that arrive together are read at once).
//!
//! ```sh
//! cargo bench --bench load                                   # every scenario, closed loop, 32 in flight, 5 s each
//! cargo bench --bench load -- --scenario route-repeated-1k --rate 2000 --duration 10
//! cargo bench --bench load -- --concurrency 64 --duration 10 --json
//! ```
//!
//! Flags: `--scenario NAME` (repeatable; default all), `--concurrency N`
//! (closed loop) or `--rate R` (open loop, requests a second, each sent on
//! schedule whether or not earlier ones answered), `--duration S`,
//! `--requests N` (a bound on the count as well), `--connections N`
//! (HTTP/2 connections, default 4), `--json`, `--target ADDR` (load a
//! running server instead of starting one), `--rounds N` (split each
//! scenario's time into N rounds run in turn with the others, so that the
//! health check is measured beside each scenario on this noisy machine; the
//! ratio is the median of the rounds' and `--requests` bounds each round).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use switchyard::grpc::pb;
use switchyard::grpc::pb::router_client::RouterClient;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/redis.rs"]
mod redis_server;

const SCENARIOS: [&str; 8] = [
    "health",
    "route-short",
    "route-repeated-1k",
    "route-repeated-1k-budgeted",
    "route-unique-4k",
    "route-usage-sqlite",
    "route-usage-redis",
    "route-usage-redis-leased",
];

struct Args {
    scenarios: Vec<String>,
    concurrency: usize,
    rate: Option<f64>,
    duration: Duration,
    requests: u64,
    connections: usize,
    json: bool,
    /// Slices each scenario's time into this many rounds, run in turn across
    /// the scenarios (health, A, B, health, A, B, ...), and reports each
    /// scenario's ratio to the health check as the median of the rounds'.
    rounds: usize,
    /// A running server to load instead of starting one (its rules need a
    /// `budgeted` workflow for the route-usage scenarios).
    target: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        scenarios: Vec::new(),
        concurrency: 32,
        rate: None,
        duration: Duration::from_secs(5),
        requests: u64::MAX,
        connections: 4,
        json: false,
        rounds: 1,
        target: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--scenario" => a.scenarios.push(value()),
            "--concurrency" => a.concurrency = value().parse().expect("--concurrency N"),
            "--rate" => a.rate = Some(value().parse().expect("--rate R")),
            "--duration" => a.duration = Duration::from_secs_f64(value().parse().expect("--duration S")),
            "--requests" => a.requests = value().parse().expect("--requests N"),
            "--connections" => a.connections = value().parse().expect("--connections N"),
            "--json" => a.json = true,
            "--rounds" => a.rounds = value().parse::<usize>().expect("--rounds N").max(1),
            "--target" => a.target = Some(value()),
            // cargo bench passes --bench; ignore anything else cargo adds.
            _ => {}
        }
    }
    if a.scenarios.is_empty() {
        a.scenarios = SCENARIOS.iter().map(|s| s.to_string()).collect();
    }
    for s in &a.scenarios {
        assert!(
            SCENARIOS.contains(&s.as_str()),
            "unknown scenario {s}; one of {SCENARIOS:?}"
        );
    }
    a
}

/// Text of about `tokens` o200k tokens, varied line by line; `salt` makes it unique.
fn context(tokens: u64, salt: &str) -> String {
    use switchyard::estimate::tokens::count;
    use switchyard::rules::Encoding;
    let mut s = format!("{salt}\n");
    let mut i = 0;
    while count(Encoding::O200k, &s) < tokens {
        s.push_str(&format!(
            "Clause {i}: for order {i}, check the ledger, cite the policy, and never promise a refund before review. "
        ));
        i += 1;
    }
    s
}

#[derive(Clone)]
struct Clients {
    routers: Vec<RouterClient<Channel>>,
    health: Vec<HealthClient<Channel>>,
}

async fn clients(addr: &str, n: usize) -> Clients {
    let mut routers = Vec::new();
    let mut health = Vec::new();
    for _ in 0..n.max(1) {
        let ch = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect");
        routers.push(RouterClient::new(ch.clone()));
        health.push(HealthClient::new(ch));
    }
    Clients { routers, health }
}

/// What one call of a scenario sends.
struct Work {
    scenario: String,
    repeated: String,
    unique_base: String,
    counter: AtomicU64,
    /// Differs per run, so that a run against a server (`--target`) that an
    /// earlier run loaded sends contexts that server has not seen.
    run: u64,
}

impl Work {
    async fn call(&self, c: &Clients, k: usize) -> Result<(), tonic::Status> {
        let i = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut router = c.routers[k % c.routers.len()].clone();
        let req = |workflow: &str, system: Option<String>, user: String| pb::RouteRequest {
            workflow: workflow.into(),
            outcome_id: format!("load-{i}"),
            attempt: 1,
            messages: system
                .into_iter()
                .map(|s| pb::Message {
                    role: "system".into(),
                    content: s,
                })
                .chain(std::iter::once(pb::Message {
                    role: "user".into(),
                    content: user,
                }))
                .collect(),
            ..Default::default()
        };
        match self.scenario.as_str() {
            "health" => {
                let mut h = c.health[k % c.health.len()].clone();
                h.check(tonic_health::pb::HealthCheckRequest::default()).await?;
            }
            "route-short" => {
                router
                    .route(req("general", None, format!("What is the capital of France? ({i})")))
                    .await?;
            }
            "route-repeated-1k" | "route-repeated-1k-budgeted" => {
                let workflow = if self.scenario.ends_with("-budgeted") {
                    "budgeted"
                } else {
                    "general"
                };
                router
                    .route(req(
                        workflow,
                        Some(self.repeated.clone()),
                        format!("Question {i}: is order 7 late?"),
                    ))
                    .await?;
            }
            "route-unique-4k" => {
                router
                    .route(req(
                        "general",
                        None,
                        format!("Session {}-{i}. {}", self.run, self.unique_base),
                    ))
                    .await?;
            }
            s => {
                let workflow = if s.ends_with("-leased") { "leased" } else { "budgeted" };
                let r = router
                    .route(req(workflow, None, format!("Summarize ticket {i} in one line.")))
                    .await?
                    .into_inner();
                router
                    .report_usage(pb::UsageReport {
                        decision_id: r.decision_id,
                        model: r.model,
                        input_tokens: r.input_tokens,
                        cached_input_tokens: 0,
                        cache_write_input_tokens: 0,
                        output_tokens: 40,
                        failed: false,
                    })
                    .await?;
            }
        }
        Ok(())
    }
}

#[derive(serde::Serialize)]
struct Result_ {
    scenario: String,
    mode: String,
    requests: u64,
    errors: u64,
    seconds: f64,
    rate: f64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    max_us: u64,
    /// With `--rounds`: this scenario's rate over the health check's, per
    /// round, and their median.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    health_ratio_rounds: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health_ratio_median: Option<f64>,
    /// Reads Redis processed per call, for the Redis scenarios.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_reads_per_call: Option<f64>,
    /// Scripts Redis ran per call, for the Redis scenarios.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_scripts_per_call: Option<f64>,
}

/// One stretch of load on one scenario.
struct Slice {
    mode: String,
    requests: u64,
    errors: u64,
    seconds: f64,
    hist: Histogram<u64>,
    /// Reads Redis processed and scripts it ran during the slice, for the
    /// Redis scenarios.
    redis_reads: Option<(u64, u64)>,
}

impl Slice {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// A scenario's slices as one result.
fn combine(scenario: &str, slices: &[Slice]) -> Result_ {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for s in slices {
        hist.add(&s.hist).expect("histograms of the same bounds");
    }
    let (requests, errors, seconds) = slices.iter().fold((0, 0, 0.0), |(r, e, t), s| {
        (r + s.requests, e + s.errors, t + s.seconds)
    });
    Result_ {
        scenario: scenario.to_string(),
        mode: slices.first().map_or_else(String::new, |s| s.mode.clone()),
        requests,
        errors,
        seconds,
        rate: requests as f64 / seconds,
        p50_us: hist.value_at_quantile(0.50),
        p90_us: hist.value_at_quantile(0.90),
        p99_us: hist.value_at_quantile(0.99),
        max_us: hist.max(),
        health_ratio_rounds: Vec::new(),
        health_ratio_median: None,
        redis_reads_per_call: slices
            .iter()
            .map(|s| s.redis_reads.map(|r| r.0))
            .sum::<Option<u64>>()
            .map(|r| r as f64 / requests.max(1) as f64),
        redis_scripts_per_call: slices
            .iter()
            .map(|s| s.redis_reads.map(|r| r.1))
            .sum::<Option<u64>>()
            .map(|r| r as f64 / requests.max(1) as f64),
    }
}

/// Reads a Redis has processed, and scripts it has run (`INFO`).
fn redis_reads(port: u16) -> (u64, u64) {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "all"])
        .output()
        .expect("redis-cli");
    let text = String::from_utf8_lossy(&out.stdout);
    let reads = text
        .lines()
        .find_map(|l| l.strip_prefix("total_reads_processed:")?.trim().parse().ok())
        .unwrap_or(0);
    let scripts = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("cmdstat_evalsha:calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    (reads, scripts)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (n > 0).then(|| {
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    })
}

async fn run(work: Arc<Work>, c: Clients, a: &Args, duration: Duration) -> Slice {
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    ));
    let errors = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let record = |hist: &Mutex<Histogram<u64>>, since: Instant| {
        let us = since.elapsed().as_micros().max(1) as u64;
        let _ = hist.lock().expect("histogram lock").record(us.min(60_000_000));
    };
    let mode = if let Some(rate) = a.rate {
        // Open loop: request n is sent at started + n / rate, whether or not
        // earlier ones have answered. Latency counts from the actual send:
        // tokio's timer ticks every millisecond, so timing from the due
        // instant would add up to a millisecond of the generator's own lag.
        // The achieved rate shows whether the generator kept up.
        let mut tasks = tokio::task::JoinSet::new();
        let mut n = 0u64;
        while n < a.requests {
            let due = started + Duration::from_secs_f64(n as f64 / rate);
            if due >= deadline {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            let (work, c, hist, errors, done) = (work.clone(), c.clone(), hist.clone(), errors.clone(), done.clone());
            tasks.spawn(async move {
                let sent = Instant::now();
                if work.call(&c, n as usize).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                record(&hist, sent);
                done.fetch_add(1, Ordering::Relaxed);
            });
            n += 1;
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        format!("open {rate}/s")
    } else {
        let mut tasks = tokio::task::JoinSet::new();
        let issued = Arc::new(AtomicU64::new(0));
        for w in 0..a.concurrency {
            let (work, c, hist, errors, done, issued) = (
                work.clone(),
                c.clone(),
                hist.clone(),
                errors.clone(),
                done.clone(),
                issued.clone(),
            );
            let requests = a.requests;
            tasks.spawn(async move {
                while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < requests {
                    let t0 = Instant::now();
                    if work.call(&c, w).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    record(&hist, t0);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        format!("closed {}", a.concurrency)
    };
    let seconds = started.elapsed().as_secs_f64();
    let hist = hist.lock().expect("histogram lock").clone();
    Slice {
        mode,
        requests: done.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        seconds,
        hist,
        redis_reads: None,
    }
}

/// The same allocator as the server, so that the generator spends as little
/// of the shared cores as it can.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let a = args();
    // The shipped rules plus a workflow with a budget too large to run out.
    let rules = tempfile::tempdir().expect("tmp");
    let mut text = std::fs::read_to_string(common::repo_path("routing-rules/default.toml")).expect("rules");
    text.push_str("\n[[workflows]]\nname = \"budgeted\"\n[workflows.budget]\nlimit_usd = 1000000\nperiod = \"day\"\nsoft_threshold_pct = 80\n");
    text.push_str("\n[[workflows]]\nname = \"leased\"\n[workflows.budget]\nlimit_usd = 1000000\nperiod = \"day\"\nsoft_threshold_pct = 80\nlease = { refresh_s = 10, max_share = 0.05 }\n");
    let path = rules.path().join("rules.toml");
    std::fs::write(&path, text).expect("write");
    let needs_redis = a.target.is_none() && a.scenarios.iter().any(|s| s.starts_with("route-usage-redis"));
    let redis = needs_redis.then(|| redis_server::RedisServer::start_with(&["--appendfsync", "everysec"]));
    let sqlite_server = a.target.is_none().then(|| common::Server::start(&path, &[]));
    let redis_server = redis
        .as_ref()
        .map(|r| common::Server::start(&path, &["--redis-url", &r.url()]));
    let repeated = context(1_000, "You are the support agent for a shop. Policies follow.");
    let unique_base = context(4_000, "Transcript follows.");
    let mut scenarios = Vec::new();
    for s in &a.scenarios {
        let addr = match (s.as_str(), &redis_server, &sqlite_server, &a.target) {
            (_, _, _, Some(t)) => t.clone(),
            (s, Some(r), _, _) if s.starts_with("route-usage-redis") => r.grpc.clone(),
            (_, _, Some(l), _) => l.grpc.clone(),
            _ => unreachable!("a server is started when no --target is given"),
        };
        let c = clients(&addr, a.connections).await;
        let work = Arc::new(Work {
            scenario: s.clone(),
            repeated: repeated.clone(),
            unique_base: unique_base.clone(),
            counter: AtomicU64::new(0),
            run: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        });
        // Warm up: connections, caches, the tokenizer's memo.
        for k in 0..200 {
            let _ = work.call(&c, k).await;
        }
        scenarios.push((work, c, Vec::new()));
    }
    let slice = a.duration / a.rounds as u32;
    for _ in 0..a.rounds {
        for (work, c, slices) in scenarios.iter_mut() {
            let port = redis
                .as_ref()
                .filter(|_| work.scenario.starts_with("route-usage-redis"))
                .map(|r| r.port);
            let before = port.map(redis_reads);
            let mut done = run(work.clone(), c.clone(), &a, slice).await;
            done.redis_reads = port.zip(before).map(|(p, b)| {
                let a = redis_reads(p);
                (a.0 - b.0, a.1 - b.1)
            });
            slices.push(done);
        }
    }
    let health = scenarios
        .iter()
        .find(|(w, _, _)| w.scenario == "health")
        .map(|(_, _, s)| s);
    let mut results = Vec::new();
    for (work, _, slices) in &scenarios {
        let mut r = combine(&work.scenario, slices);
        if let (Some(health), true) = (health, a.rounds > 1) {
            r.health_ratio_rounds = slices.iter().zip(health).map(|(s, h)| s.rate() / h.rate()).collect();
            r.health_ratio_median = median(r.health_ratio_rounds.clone());
        }
        results.push(r);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results).expect("json"));
        return;
    }
    let health = results.iter().find(|r| r.scenario == "health").map(|r| r.rate);
    if a.rounds > 1 {
        println!(
            "{} rounds of {:.1} s per scenario, in turn; ÷ health is the median of the rounds' ratios",
            a.rounds,
            slice.as_secs_f64()
        );
    }
    println!(
        "{:<26} {:<12} {:>9} {:>7} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>13} {:>11}",
        "scenario",
        "mode",
        "requests",
        "errors",
        "rate/s",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "max µs",
        "÷ health",
        "scripts/call",
        "reads/call"
    );
    for r in &results {
        println!(
            "{:<26} {:<12} {:>9} {:>7} {:>10.0} {:>8} {:>8} {:>8} {:>9} {:>9} {:>13} {:>11}",
            r.scenario,
            r.mode,
            r.requests,
            r.errors,
            r.rate,
            r.p50_us,
            r.p90_us,
            r.p99_us,
            r.max_us,
            r.health_ratio_median
                .or(health.map(|h| r.rate / h))
                .map_or("-".into(), |x| format!("{x:.2}")),
            r.redis_scripts_per_call.map_or("-".into(), |x| format!("{x:.3}")),
            r.redis_reads_per_call.map_or("-".into(), |x| format!("{x:.3}"))
        );
    }
}
