//! The admin HTTP port: `/healthz`, `/readyz`, `/metrics` and `/`.
//!
//! It runs on its own single-threaded runtime on its own thread, so probes and
//! scrapes answer even when the gRPC runtime is saturated.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse};
use axum::routing::get;

mod readings;

use crate::estimate::cache::ContextCache;
use crate::grpc::RouteCounters;
use crate::money::format_usd;
use crate::rules::reload::Rules;

/// What the admin port reads.
pub struct AdminState {
    pub rules: Arc<Rules>,
    pub cache: Arc<ContextCache>,
    pub counters: Arc<RouteCounters>,
    pub store: crate::store::SharedStore,
    /// The budget gate Route asks: its paced workflows' prices.
    pub budgets: Arc<crate::budget::Budgets>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub learning: Arc<crate::learn::online::Online>,
    pub audit: Arc<crate::audit::Audit>,
    /// Released once the rules are loaded, the tokenizers warm and the gRPC
    /// port bound; set back to false when shutdown begins.
    pub ready: AtomicBool,
    /// The gauges read from the store, kept by a task of their own.
    pub store_gauges: StoreGauges,
    /// Spans the OTLP exporter sent and lost.
    pub spans: Arc<crate::telemetry::ExportCounts>,
    /// Each port's protocol, limits and connection counts.
    pub ports: [(
        crate::listener::Protocol,
        crate::listener::Limits,
        Arc<crate::listener::PortStats>,
    ); 2],
}

/// How often the gauges read from the store (open escalations, what is left
/// of each budget) are recomputed, while someone scrapes.
const STORE_GAUGES_EVERY: Duration = Duration::from_secs(5);
/// With no scrape for this long, the store is left alone until the next.
const STORE_GAUGES_IDLE: Duration = Duration::from_secs(120);

/// The gauges read from the store, computed off the scrape path: a scrape
/// serves the last computed lines and never waits on the store, so any
/// number of scrapers cost the store one read every few seconds.
#[derive(Default)]
pub struct StoreGauges {
    /// The readings, and when they were taken.
    lines: Mutex<(Arc<Vec<Readings>>, Option<Instant>)>,
    /// When `/metrics` was last scraped.
    scraped: Mutex<Option<Instant>>,
}

impl StoreGauges {
    fn current(&self) -> (Arc<Vec<Readings>>, Option<Instant>) {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn scraped_now(&self) {
        *self.scraped.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// Whether the lines are worth recomputing: never computed yet, or
    /// scraped lately.
    fn wanted(&self) -> bool {
        let computed = self.lines.lock().unwrap_or_else(PoisonError::into_inner).1.is_some();
        let scraped = *self.scraped.lock().unwrap_or_else(PoisonError::into_inner);
        !computed || scraped.is_some_and(|t| t.elapsed() < STORE_GAUGES_IDLE)
    }
}

/// Recomputes the store's gauges every [`STORE_GAUGES_EVERY`] while they are
/// wanted, until shutdown.
async fn keep_store_gauges(s: Arc<AdminState>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        if s.store_gauges.wanted() {
            let lines = Arc::new(store_gauges(&s).await);
            *s.store_gauges.lines.lock().unwrap_or_else(PoisonError::into_inner) = (lines, Some(Instant::now()));
        }
        tokio::select! {
            _ = tokio::time::sleep(STORE_GAUGES_EVERY) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

pub fn router(state: Arc<AdminState>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .with_state(state)
}

async fn healthz(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let st = s.rules.status();
    let store = s.store.health();
    // Liveness stays 200: restarting a sidecar does not mend a full disk or
    // bring Redis back. The body says what is wrong; /readyz acts on it.
    let body = serde_json::json!({
        "status": if store.failing.is_some() { "degraded" } else { "ok" },
        "store": {
            "failing": store.failing.is_some(),
            "last_error": store.failing,
            "unavailable_total": store.unavailable_total,
        },
        "rules": {
            "path": s.rules.path().display().to_string(),
            "reload_failing": st.failing,
            "last_error": st.last_error,
            "loaded_at_unix": st.loaded_at.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
        }
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string())
}

async fn readyz(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    if !s.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_string());
    }
    match s.store.health().failing {
        // A sidecar whose store cannot take budgeted calls fails them closed:
        // it should not be sent work until the store can.
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the budget store cannot serve budgeted calls: {why}\n"),
        ),
        None => (StatusCode::OK, "ready\n".to_string()),
    }
}

async fn metrics(State(s): State<Arc<AdminState>>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let now = readings::Now::read(&s);
    let series = now.readings();
    let mut registry = Registry::default();
    s.metrics.register(&mut registry);
    registry.register_collector(Box::new(ReadingsCollector(Arc::new(series))));
    registry.register_collector(Box::new(ReadingsCollector(Arc::new(port_readings(&s.ports)))));
    let seen = s.learning.learner.seen();
    if !seen.is_empty() {
        let mut learned = Readings::family(
            "switchyard_learned_calls",
            MetricType::Gauge,
            "Labelled calls the learned model holds, by workflow and tier.",
        );
        for (w, tier, n) in seen {
            learned.push(
                vec![("workflow", w.to_string()), ("tier", tier.to_string())],
                Reading::Count(n),
            );
        }
        registry.register_collector(Box::new(ReadingsCollector(Arc::new(vec![learned]))));
    }
    // What the store holds, as of its last reading off this path.
    s.store_gauges.scraped_now();
    let (readings, at) = s.store_gauges.current();
    registry.register_collector(Box::new(ReadingsCollector(readings)));
    if let Some(at) = at {
        registry.register_collector(Box::new(ReadingsCollector(Arc::new(vec![Readings::one(
            "switchyard_store_gauges_age_seconds",
            MetricType::Gauge,
            "How old the gauges read from the store (escalations open, budget remaining) are.",
            Reading::Real(at.elapsed().as_secs_f64()),
        )]))));
    }
    let text = crate::metrics::encode(&registry);
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if crate::metrics::wants_prometheus_text(accept) {
        (
            [(header::CONTENT_TYPE, crate::metrics::PROMETHEUS_TEXT_TYPE)],
            crate::metrics::to_prometheus_text(&text),
        )
    } else {
        ([(header::CONTENT_TYPE, crate::metrics::OPENMETRICS_TYPE)], text)
    }
}

/// Each port's open connections, their cap, and what its limits refused.
fn port_readings(
    ports: &[(
        crate::listener::Protocol,
        crate::listener::Limits,
        Arc<crate::listener::PortStats>,
    )],
) -> Vec<Readings> {
    let mut open = Readings::family(
        "switchyard_connections_open",
        MetricType::Gauge,
        "Connections open on each port (grpc, admin).",
    );
    let mut cap = Readings::family(
        "switchyard_connections_max",
        MetricType::Gauge,
        "The cap on open connections of each port, after fitting the descriptor limit.",
    );
    let mut accepted = Readings::family(
        "switchyard_connections_accepted_total",
        MetricType::Counter,
        "Connections accepted on each port.",
    );
    let mut refused = Readings::family(
        "switchyard_connection_refusals_total",
        MetricType::Counter,
        "Connections and calls a port's limits refused or closed, by reason (max_connections, accept_failed, \
         max_in_flight, connection_concurrency, request_timeout, idle, header_read_timeout, close_grace_exceeded).",
    );
    for (protocol, limits, stats) in ports {
        let port = || vec![("port", protocol.port_name().to_string())];
        open.push(port(), Reading::Count(stats.open.load(Ordering::Relaxed) as u64));
        cap.push(port(), Reading::Count(limits.max_connections as u64));
        accepted.push(port(), Reading::Count(stats.accepted.load(Ordering::Relaxed)));
        for why in crate::listener::Refusal::ALL {
            let mut labels = port();
            labels.push(("reason", why.label().to_string()));
            refused.push(labels, Reading::Count(stats.refused(why)));
        }
    }
    vec![open, cap, accepted, refused]
}

/// The gauges read from the store: open escalations by workflow, and per
/// budgeted workflow what is left and how long it lasts at this period's
/// burn rate.
async fn store_gauges(s: &AdminState) -> Vec<Readings> {
    let table = s.rules.current();
    let mut out = Vec::new();
    // Escalations waiting for a person, by workflow.
    if let Ok(all) = s.store.list_escalations(None).await {
        let mut open: std::collections::BTreeMap<&str, u64> =
            table.workflows.iter().map(|w| (w.name.as_str(), 0)).collect();
        for e in all.iter().filter(|e| e.state == crate::store::EscalationState::Pending) {
            *open.entry(e.workflow.as_str()).or_default() += 1;
        }
        let mut gauge = Readings::family(
            "switchyard_escalations_open",
            MetricType::Gauge,
            "Escalations waiting for a person.",
        );
        for (w, n) in open {
            gauge.push(vec![("workflow", w.to_string())], Reading::Count(n));
        }
        out.push(gauge);
    }
    // Per budgeted workflow: what is left and, at the current burn rate,
    // how long it lasts (+Inf when it lasts the period).
    let now = jiff::Timestamp::now();
    match crate::outcome::report::budget_inputs(s.store.as_ref(), &table, None, now).await {
        Ok(budgets) if !budgets.is_empty() => {
            let mut remaining = Readings::family(
                "switchyard_budget_remaining_nanousd",
                MetricType::Gauge,
                "What is left of the workflow's budget this period.",
            );
            let mut exhausted = Readings::family(
                "switchyard_budget_exhausted_in_seconds",
                MetricType::Gauge,
                "Seconds until the budget runs out at this period's burn rate; +Inf if it lasts the period.",
            );
            for b in &budgets {
                let line = crate::outcome::report::budget_line(b, now);
                let labels = vec![("workflow", b.workflow.to_string())];
                remaining.push(labels.clone(), Reading::Int(b.state.remaining()));
                exhausted.push(
                    labels,
                    Reading::Real(line.runs_out_in_s.map_or(f64::INFINITY, |s| s.round())),
                );
            }
            out.push(remaining);
            out.push(exhausted);
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "budget gauges skipped: the store cannot be read"),
    }
    // Paced workflows, as this sidecar's controller last set them.
    let paces = s.budgets.paces();
    if !paces.is_empty() {
        let mut ratio = Readings::family(
            "switchyard_budget_pace_ratio",
            MetricType::Gauge,
            "A paced budget's spend over its target so far this period (1: on pace).",
        );
        let mut price = Readings::family(
            "switchyard_budget_spend_price",
            MetricType::Gauge,
            "A paced budget's price of spend: acceptance probability a Route gives up per USD saved.",
        );
        for (w, p) in paces {
            let labels = vec![("workflow", w)];
            // Before anything is due, spend is on pace.
            ratio.push(labels.clone(), Reading::Real(p.ratio().unwrap_or(1.0)));
            price.push(labels, Reading::Real(p.price_per_usd()));
        }
        out.push(ratio);
        out.push(price);
    }
    out
}

async fn index(State(s): State<Arc<AdminState>>) -> Html<String> {
    let table = s.rules.current();
    let st = s.rules.status();
    let mut rows = String::new();
    for m in &table.models {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&m.name),
            escape(&m.provider),
            format_usd(m.input_nanos_per_mtok),
            format_usd(m.cached_input_nanos_per_mtok),
            format_usd(m.output_nanos_per_mtok),
            m.tiers[0]
        );
    }
    let banner = match &st.last_error {
        Some(e) if st.failing => format!(
            "<p style=\"color:#b00\"><b>Rules reload failing</b>; serving the last good rules.<pre>{}</pre></p>",
            escape(e)
        ),
        _ => String::new(),
    };
    let status = format!(
        "<h2>Sidecar</h2>{banner}\
         <p>Rules: <code>{}</code> ({})</p>\
         <p>Route calls answered: {}, refused: {}</p>\
         <table><tr><th>model</th><th>provider</th><th>input /Mtok</th>\
         <th>cached /Mtok</th><th>output /Mtok</th><th>general tier</th></tr>{rows}</table>\
         <p><a href=\"/metrics\">/metrics</a> · <a href=\"/healthz\">/healthz</a> · <a href=\"/readyz\">/readyz</a></p>",
        escape(&s.rules.path().display().to_string()),
        escape(&crate::rules::summary(&table)),
        s.counters.routed.load(Ordering::Relaxed),
        s.counters.rejected.load(Ordering::Relaxed),
    );
    let spec = crate::outcome::report::Spec {
        period: crate::rules::Period::Day,
        workflow: None,
        label: None,
        now: jiff::Timestamp::now(),
    };
    match crate::outcome::report::gather(s.store.as_ref(), &table, &spec).await {
        Ok(mut report) => {
            // Paced budgets: the target and price this sidecar set last.
            let paces = s.budgets.paces();
            for w in &mut report.workflows {
                let Some(b) = w.budget.as_mut() else { continue };
                if let Some((_, p)) = paces.iter().find(|(name, _)| *name == w.workflow) {
                    let mut line = crate::outcome::report::pace_line(p);
                    let rules = table.workflow(&w.workflow);
                    if let Some((curve, elapsed)) = rules.and_then(|x| s.budgets.target_curve(x, spec.now)) {
                        (line.curve, line.elapsed) = (curve, elapsed);
                    }
                    b.pace = Some(line);
                }
            }
            Html(crate::outcome::dashboard::page(&report, &status))
        }
        Err(e) => Html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Switchyard</title></head><body>\
             <h1>Switchyard</h1><p style=\"color:#b00\">The ledger cannot be read: {}</p>{status}</body></html>",
            escape(&e.to_string())
        )),
    }
}

use crate::metrics::{Reading, Readings, ReadingsCollector};
use crate::outcome::dashboard::escape;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Serves the admin port on a dedicated thread and runtime until `shutdown`
/// flips to true. Binding happens before this returns, so a taken port fails
/// startup rather than a background thread.
pub fn spawn(
    listener: std::net::TcpListener,
    state: Arc<AdminState>,
    limits: crate::listener::Limits,
    stats: Arc<crate::listener::PortStats>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("switchyard-admin".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "admin runtime failed to start");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "admin listener failed");
                        return;
                    }
                };
                tokio::spawn(keep_store_gauges(state.clone(), shutdown.clone()));
                let stop = async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                };
                let service = router(state);
                crate::listener::serve::<_, crate::listener::HttpRefusal, _>(
                    listener,
                    crate::listener::Protocol::Http1,
                    limits,
                    stats,
                    service,
                    stop,
                )
                .await;
            });
        })
}

/// Binds the admin address, naming it in the error.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot bind the admin port {addr}: {e}; pass --admin-listen with a free address"))
}
