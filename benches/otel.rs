//! Route throughput over gRPC on loopback with span export on and off.
//!
//! Two `switchyard` servers (release build), one exporting every span over
//! OTLP/gRPC to a receiver in this process, one without export. A load
//! generator keeps 32 Route calls in flight on each for 3 s, alternating
//! off, on, four times over, so the machine's noise falls on both alike.
//!
//! Run: `cargo bench --bench otel` (about 30 s); `BENCH_SAMPLER_RATIO=0.1` samples a tenth
//! of traces (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`).
//!
//! `BENCH_BASELINE_BIN=/path/to/switchyard` adds a third server: that build,
//! exporting too, in every round after the other two, so two exporters are
//! compared in one run against the same export-off baseline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use switchyard::grpc::pb;
use switchyard::grpc::pb::router_client::RouterClient;
use tonic::transport::Channel;

#[path = "../tests/common/mod.rs"]
mod common;

const IN_FLIGHT: usize = 32;
const PHASE: Duration = Duration::from_secs(3);

/// The export request with its spans left as raw bytes: decoding it is a
/// copy, so the receiver, which shares this machine's two cores with the
/// server under test, costs little (a remote collector costs the sidecar
/// nothing).
#[derive(Clone, PartialEq, prost::Message)]
struct RawExport {
    #[prost(bytes = "vec", repeated, tag = "1")]
    resource_spans: Vec<Vec<u8>>,
}

/// Accepts OTLP/gRPC trace exports and counts their bytes.
#[derive(Clone, Default)]
struct Receiver {
    bytes: Arc<AtomicU64>,
    exports: Arc<AtomicU64>,
}

impl tonic::server::NamedService for Receiver {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl tonic::server::UnaryService<RawExport> for Receiver {
    type Response = ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<tonic::Response<Self::Response>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<RawExport>) -> Self::Future {
        let n: usize = request.get_ref().resource_spans.iter().map(Vec::len).sum();
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        self.exports.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        })))
    }
}

impl<B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for Receiver
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<ExportTraceServiceResponse, RawExport>::default();
            Ok(tonic::server::Grpc::new(codec).unary(me, req).await)
        })
    }
}

/// Routes per second, and the server's CPU time per Route.
async fn load(client: &RouterClient<Channel>, server: &common::Server) -> (f64, Duration) {
    let cpu = server.cpu_time();
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|t| {
            let (mut c, done) = (client.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while start.elapsed() < PHASE {
                    let req = pb::RouteRequest {
                        outcome_id: format!("bench-{t}-{i}"),
                        ..common::request("general", "Summarise the incident report in three bullet points.")
                    };
                    c.route(req).await.expect("route");
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client");
    }
    let n = done.load(Ordering::Relaxed);
    let per_route = (server.cpu_time() - cpu) / n.max(1) as u32;
    (n as f64 / start.elapsed().as_secs_f64(), per_route)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let svc = receiver.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    let rules = common::repo_path("routing-rules");
    let off = common::Server::start(&rules, &[]);
    // Optional: BENCH_SAMPLER_RATIO=0.1 samples a tenth of traces.
    let ratio = std::env::var("BENCH_SAMPLER_RATIO").ok();
    let mut env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    if let Some(r) = &ratio {
        env.push(("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"));
        env.push(("OTEL_TRACES_SAMPLER_ARG", r.as_str()));
    }
    let on = common::Server::start_with_env(&rules, &[], &env);
    let baseline_bin = std::env::var("BENCH_BASELINE_BIN").ok();
    let other = baseline_bin
        .as_deref()
        .map(|bin| common::Server::start_bin(bin, &rules, &[], &env));
    let (c_off, c_on) = (off.client().await, on.client().await);
    let c_other = match &other {
        Some(s) => Some(s.client().await),
        None => None,
    };
    // Warm them all.
    for c in [Some(&c_off), Some(&c_on), c_other.as_ref()].into_iter().flatten() {
        let mut c = c.clone();
        for _ in 0..200 {
            c.route(common::request("general", "warm up")).await.expect("route");
        }
    }
    let (mut ratios, mut cpu_ratios) = (Vec::new(), Vec::new());
    let (mut other_ratios, mut other_cpu_ratios) = (Vec::new(), Vec::new());
    let rounds: u32 = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(4);
    for round in 1..=rounds {
        let (a, ca) = load(&c_off, &off).await;
        // The two exporters swap places every round, so neither always
        // runs on the heels of the other.
        let mut other_run = None;
        if round % 2 == 0 {
            if let (Some(c), Some(s)) = (&c_other, &other) {
                other_run = Some(load(c, s).await);
            }
        }
        let (b, cb) = load(&c_on, &on).await;
        if round % 2 == 1 {
            if let (Some(c), Some(s)) = (&c_other, &other) {
                other_run = Some(load(c, s).await);
            }
        }
        ratios.push(b / a);
        cpu_ratios.push(cb.as_secs_f64() / ca.as_secs_f64());
        println!(
            "round {round}: export off {a:>7.0} routes/s {:>5.1} µs CPU/route   export on {b:>7.0} routes/s {:>5.1} µs CPU/route   throughput on/off {:.3}",
            ca.as_secs_f64() * 1e6,
            cb.as_secs_f64() * 1e6,
            b / a
        );
        if let Some((o, co)) = other_run {
            other_ratios.push(o / a);
            other_cpu_ratios.push(co.as_secs_f64() / ca.as_secs_f64());
            println!(
                "         baseline build, export on {o:>7.0} routes/s {:>5.1} µs CPU/route   throughput on/off {:.3}",
                co.as_secs_f64() * 1e6,
                o / a
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    let cpu_mean = cpu_ratios.iter().sum::<f64>() / cpu_ratios.len() as f64;
    println!(
        "the server spends {:.1}% more CPU per Route with export on (mean of {} rounds)",
        (cpu_mean - 1.0) * 100.0,
        cpu_ratios.len()
    );
    println!(
        "export costs {:.1}% of Route throughput (mean of {} rounds; {} exports, {} MB of spans received)",
        (1.0 - mean) * 100.0,
        ratios.len(),
        receiver.exports.load(Ordering::Relaxed),
        receiver.bytes.load(Ordering::Relaxed) / 1_000_000
    );
    if !other_ratios.is_empty() {
        let n = other_ratios.len() as f64;
        let (om, ocpu) = (
            other_ratios.iter().sum::<f64>() / n,
            other_cpu_ratios.iter().sum::<f64>() / n,
        );
        println!(
            "the baseline build: export costs {:.1}% of Route throughput, {:.1}% more CPU per Route; \
             this build loses {:.1} points of throughput more than the baseline",
            (1.0 - om) * 100.0,
            (ocpu - 1.0) * 100.0,
            (om - mean) * 100.0
        );
    }
}
