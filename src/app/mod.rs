//! Wiring for `serve`: load and check everything, bind, serve, and shut down in
//! order.
//!
//! Bad configuration fails before any port is bound. On SIGTERM (what
//! Kubernetes sends) or Ctrl-C: readiness drops, health turns NOT_SERVING, the
//! gRPC server stops accepting and drains calls in flight within the grace
//! period, then the admin port stops.

mod signals;
mod store;

use signals::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::access::Access;
use crate::admin::{self, AdminState};
use crate::audit::{Action, Audit, Record as AuditRecord, Verdict};
use crate::budget::Budgets;
use crate::clock::{Clock, SystemClock};
use crate::estimate::cache::{CacheConfig, ContextCache};
use crate::estimate::tokens;
use crate::grpc::auth::Auth;
use crate::grpc::pb::router_server::RouterServer;
use crate::grpc::{self, RouteCounters, RouterService};
use crate::learn::online::Online;
use crate::learn::Learner;
use crate::route::{Effects, Router};
use crate::rules::reload::Rules;
use crate::sidecar::Sidecar;
use crate::store::SharedStore;

/// Everything `serve` needs, already parsed from flags and environment.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub rules: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub state_dir: PathBuf,
    pub max_request_bytes: usize,
    pub shutdown_grace: Duration,
    /// The repeated-context caches' bound and TTL.
    pub context_cache: CacheConfig,
    /// How long a reservation waits for its ReportUsage before it is released.
    pub reservation_ttl: Duration,
    /// How long each decision's snapshot is kept for `whatif`.
    pub decision_retention: Duration,
    /// Share budgets through Redis instead of the embedded store.
    pub redis: Option<RedisServe>,
    /// The API keys file; `None` accepts loopback callers as `local`.
    pub api_keys: Option<PathBuf>,
    /// Per-caller rate and concurrency limits.
    pub limits: crate::grpc::auth::Limits,
    /// Start with an empty embedded store where the state folder held one
    /// that is now missing or empty (audited).
    pub accept_fresh_store: bool,
    /// The embedded store's WAL is reset past this size.
    pub wal_limit_bytes: u64,
    /// The audit log's rotation: the size at which it rotates, and how many
    /// rotated files are kept.
    pub audit: crate::audit::Rotation,
    /// Connection and call limits of the gRPC port and of the admin port.
    pub grpc_limits: crate::listener::Limits,
    pub admin_limits: crate::listener::Limits,
    /// Threads that count the tokens of large prompts.
    pub tokenize_threads: usize,
    /// The most learned routing state held in memory.
    pub learning_memory_bytes: u64,
    /// A change of a budget's period or time zone starts a fresh scope
    /// (audited) instead of being refused.
    pub allow_scope_reset: bool,
}

/// The fleet store's settings, from `--redis-*`.
#[derive(Debug, Clone)]
pub struct RedisServe {
    pub url: String,
    pub key_prefix: String,
    pub timeout: Duration,
    /// `None` fails closed while Redis is unreachable.
    pub fail_open_cap_nanos: Option<i64>,
}

/// How often the API keys file is checked for changes.
const KEYS_POLL: Duration = Duration::from_secs(1);

/// How often expired reservations are looked for.
/// The longest the lease renewer sleeps between looks at its schedule.
const LEASE_TICK: Duration = Duration::from_millis(500);

/// How often a failing sweep is reported.
const SWEEP_WARN_EVERY: Duration = Duration::from_secs(60);
/// How often the complexity histograms are added into the store and read
/// back from it.
const SKETCH_SYNC_EVERY: Duration = Duration::from_secs(5);

/// Paced budgets' prices and traffic by hour of the week, in the state folder.
pub const PACING_FILE: &str = "pacing.json";

pub use crate::error::ConfigError;

/// Runs the sidecar until SIGTERM or Ctrl-C.
pub async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    // 1. Everything that can be wrong with the configuration, before binding.
    std::fs::create_dir_all(&cfg.state_dir).map_err(|e| {
        ConfigError(format!(
            "cannot create the state folder {}: {e}; pass --state-dir with a writable folder",
            cfg.state_dir.display()
        ))
    })?;
    let (rules, scope_resets) =
        Rules::load_serving(&cfg.rules, &cfg.state_dir, cfg.allow_scope_reset).map_err(|e| {
            ConfigError(format!(
                "the rules at {} are not valid; nothing was started:\n{e}",
                cfg.rules.display()
            ))
        })?;
    let rules = Arc::new(rules);
    if cfg.context_cache.max_bytes < 1024 * 1024 {
        return Err(ConfigError(format!(
            "--context-cache-mib must be at least 1 (got {} bytes)",
            cfg.context_cache.max_bytes
        ))
        .into());
    }
    if cfg.max_request_bytes < 1024 {
        return Err(ConfigError(format!(
            "--max-request-bytes {} is too small to hold a request; use at least 1024",
            cfg.max_request_bytes
        ))
        .into());
    }
    let telemetry = Arc::new(crate::telemetry::Telemetry::from_env(cfg.reservation_ttl).map_err(|e| {
        ConfigError(format!(
            "the OpenTelemetry settings are not valid; nothing was started: {e}"
        ))
    })?);
    // The audit log first: a fresh start of the store is one of its records.
    let audit = Arc::new(Audit::open(&cfg.state_dir, cfg.audit).map_err(ConfigError)?);
    let store = store::open_store(&cfg, &audit).await?;
    let budgets = Arc::new(Budgets::new(store.clone(), cfg.reservation_ttl.as_millis() as i64));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    tokens::warm_up();

    // Who may call, and the audit trail of what they did.
    let auth = Arc::new(
        Auth::new(cfg.api_keys.as_deref(), cfg.limits)
            .map_err(|e| ConfigError(format!("the API keys are not valid; nothing was started:\n{e}")))?,
    );
    match auth.keys() {
        Some(k) => tracing::info!(
            keys = k.len(),
            file = %cfg.api_keys.as_deref().unwrap_or(Path::new("")).display(),
            "callers authenticate with API keys (authorization: Bearer <key>)"
        ),
        None => tracing::warn!(
            "no --api-keys: only loopback callers are accepted, all as the identity `local` with the caller and admin roles"
        ),
    }
    {
        let audit = audit.clone();
        let path = rules.path().display().to_string();
        rules.on_reload(Box::new(move |r| {
            let (result, reason) = match r {
                Ok(sha) => (Verdict::Ok, format!("sha256 {sha}")),
                Err(e) => (Verdict::Failed, e.to_string()),
            };
            audit.record(AuditRecord::new("-", Action::RulesReload, "", &path, result, &reason));
        }));
    }
    {
        let scope_reset = |audit: &Audit, workflow: &str, was: &str, now: &str| {
            audit.record(AuditRecord::new(
                "-",
                Action::BudgetScopeReset,
                workflow,
                "",
                Verdict::Ok,
                &format!("--allow-scope-reset: the budget's scope changed from {was} to {now}; spend so far stays in the old scope"),
            ));
        };
        for (workflow, was, now) in &scope_resets {
            tracing::warn!(workflow = %workflow, was = %was, now = %now, "--allow-scope-reset: a budget starts a fresh scope");
            scope_reset(&audit, workflow, was, now);
        }
        let audit = audit.clone();
        rules.on_scope_reset(Box::new(move |w, was, now| scope_reset(&audit, w, was, now)));
    }

    // The learned routing state is the fold of the labelled calls the store
    // keeps: rebuild it before serving, so a restart routes as before.
    let learning = Arc::new(Online::new(
        Arc::new(Learner::with_ceiling(cfg.learning_memory_bytes)),
        store.clone(),
    ));
    let mut learn_cursors = std::collections::HashMap::new();
    let started = std::time::Instant::now();
    match learning.catch_up(&store, &rules, &mut learn_cursors).await {
        Ok(n) => tracing::info!(
            labelled_calls = n,
            ms = started.elapsed().as_millis() as u64,
            "learned routing state loaded from the store"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot load the learned routing state yet; routing uses the rules until the store answers")
        }
    }

    // 2. Bind both ports; a taken port fails here, with its name.
    let grpc_listener = tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| {
        format!(
            "cannot bind the gRPC port {}; pass --listen with a free address",
            cfg.listen
        )
    })?;
    let grpc_addr = grpc_listener.local_addr()?;
    let admin_listener = admin::bind(cfg.admin_listen)?;
    let admin_addr = admin_listener.local_addr()?;
    let (grpc_limits, admin_limits) = fit_fd_limit(cfg.grpc_limits, cfg.admin_limits);
    let grpc_stats = Arc::new(crate::listener::PortStats::default());
    let admin_stats = Arc::new(crate::listener::PortStats::default());

    let counters = Arc::new(RouteCounters::default());
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let cache = Arc::new(ContextCache::new(cfg.context_cache));
    let admin_state = Arc::new(AdminState {
        rules: rules.clone(),
        cache: cache.clone(),
        counters: counters.clone(),
        store: store.clone(),
        budgets: budgets.clone(),
        metrics: metrics.clone(),
        learning: learning.clone(),
        audit: audit.clone(),
        ready: Default::default(),
        store_gauges: Default::default(),
        spans: telemetry.counts.clone(),
        ports: [
            (crate::listener::Protocol::Grpc, grpc_limits, grpc_stats.clone()),
            (crate::listener::Protocol::Http1, admin_limits, admin_stats.clone()),
        ],
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_thread = admin::spawn(
        admin_listener,
        admin_state.clone(),
        admin_limits,
        admin_stats,
        stop_rx.clone(),
    )?;

    let watcher = {
        let mut rx = stop_rx.clone();
        tokio::spawn(rules.clone().watch(async move {
            let _ = rx.wait_for(|s| *s).await;
        }))
    };

    let keys_watcher = {
        let (auth, audit, mut rx) = (auth.clone(), audit.clone(), stop_rx.clone());
        tokio::spawn(async move {
            // Rate state of idle callers is dropped every second; the keys
            // file, if there is one, is checked as often.
            let path = auth.keys_path().map(|p| p.display().to_string()).unwrap_or_default();
            loop {
                tokio::select! {
                    _ = rx.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(KEYS_POLL) => {}
                }
                auth.forget_idle();
                match auth.reload_if_changed() {
                    Some(Ok(sha)) => {
                        tracing::info!(file = %path, keys = auth.keys().map_or(0, |k| k.len()), "API keys reloaded");
                        audit.record(AuditRecord::new(
                            "-",
                            Action::KeysReload,
                            "",
                            &path,
                            Verdict::Ok,
                            &format!("sha256 {sha}"),
                        ));
                    }
                    Some(Err(e)) => {
                        tracing::error!(file = %path, error = %e, "API keys reload FAILED; the last good keys stay in use");
                        audit.record(AuditRecord::new(
                            "-",
                            Action::KeysReload,
                            "",
                            &path,
                            Verdict::Failed,
                            &e,
                        ));
                    }
                    None => {}
                }
            }
        })
    };

    // Each workflow's complexity histogram: counted per Route, added into
    // the store every few seconds and read back from it (the fleet's, with
    // Redis), so `top_share` rules see the whole workflow's traffic.
    let sketches = Arc::new(crate::route::sketch::ScoreSketches::new());
    if let Err(e) = sketches.sync(&*store, &rules.current()).await {
        tracing::warn!(error = %e, "the complexity histograms could not be read; top_share starts from the model's calibration");
    }
    // Paced budgets' prices and traffic by hour, kept in the state folder
    // across restarts.
    let pacing_file = cfg.state_dir.join(PACING_FILE);
    match budgets.load_pacers(&pacing_file) {
        Ok(0) => {}
        Ok(n) => tracing::info!(workflows = n, "pacing state loaded"),
        Err(e) => tracing::warn!(error = %e, "pacing starts afresh"),
    }
    let sketch_task = {
        let (sketches, store, rules, mut rx) = (sketches.clone(), store.clone(), rules.clone(), stop_rx.clone());
        let (budgets, pacing_file) = (budgets.clone(), pacing_file.clone());
        tokio::spawn(async move {
            let mut failing = false;
            let mut pacing_failing = false;
            loop {
                let stopping = tokio::select! {
                    _ = rx.wait_for(|s| *s) => true,
                    _ = tokio::time::sleep(SKETCH_SYNC_EVERY) => false,
                };
                if !budgets.paces().is_empty() {
                    match budgets.save_pacers(&pacing_file) {
                        Ok(()) => pacing_failing = false,
                        Err(e) => {
                            if !pacing_failing {
                                tracing::warn!(error = %e, file = %pacing_file.display(), "the pacing state could not be written; pacing goes on from memory");
                            }
                            pacing_failing = true;
                        }
                    }
                }
                match sketches.sync(&*store, &rules.current()).await {
                    Ok(()) => failing = false,
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "the complexity histograms could not be stored; their counts are kept for the next try");
                        }
                        failing = true;
                    }
                }
                if stopping {
                    return;
                }
            }
        })
    };

    let learner_task = tokio::spawn(
        learning
            .clone()
            .run(store.clone(), rules.clone(), learn_cursors, stop_rx.clone()),
    );

    let sweeper = {
        let (budgets, clock, mut rx, audit) = (budgets.clone(), clock.clone(), stop_rx.clone(), audit.clone());
        tokio::spawn(async move {
            // While the store is down the sweep fails every second: say so
            // once a minute, and say when it works again.
            let mut failing_since: Option<std::time::Instant> = None;
            let mut last_warned = std::time::Instant::now();
            let mut lost_seen: std::collections::BTreeSet<String> = Default::default();
            loop {
                tokio::select! {
                    _ = rx.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(budgets.store.leasing().map_or(Duration::from_secs(1), |l| l.sweep_every())) => {}
                }
                // Each workflow found with lost state is audited once a spell.
                let lost = budgets.store.health().state_lost;
                for (workflow, why) in &lost {
                    if lost_seen.insert(workflow.clone()) {
                        audit.record(AuditRecord::new(
                            "-",
                            Action::StoreStateLost,
                            workflow,
                            "",
                            Verdict::Failed,
                            why,
                        ));
                    }
                }
                lost_seen.retain(|w| lost.iter().any(|(l, _)| l == w));
                match budgets.store.expire(clock.now_ms()).await {
                    Ok(n) => {
                        if let Some(since) = failing_since.take() {
                            tracing::info!(after_s = since.elapsed().as_secs(), "the reservation sweep works again");
                        }
                        if n > 0 {
                            tracing::info!(released = n, "expired reservations released");
                        }
                    }
                    Err(e) => {
                        let first = failing_since.is_none();
                        let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                        if first || last_warned.elapsed() >= SWEEP_WARN_EVERY {
                            last_warned = std::time::Instant::now();
                            tracing::warn!(error = %e, failing_s = since.elapsed().as_secs(), "the reservation sweep is failing; retrying every second");
                        }
                    }
                }
            }
        })
    };
    // Leased budget slices are renewed on their schedule, or at once when a
    // Route wants one it does not have.
    let (renewer_stop, mut rx) = tokio::sync::watch::channel(false);
    let renewer = {
        let store = budgets.store.clone();
        tokio::spawn(async move {
            let Some(leasing) = store.leasing() else { return };
            let wake = leasing.lease_wake();
            let mut wait = LEASE_TICK;
            loop {
                tokio::select! {
                    _ = rx.wait_for(|s| *s) => return,
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = match leasing.renew_leases(false).await {
                    Ok(Some(ms)) => Duration::from_millis(ms).clamp(Duration::from_millis(5), LEASE_TICK),
                    _ => LEASE_TICK,
                };
            }
        })
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RouterServer<RouterService>>().await;
    // Both reflection versions: grpcurl asks for v1 and falls back to
    // v1alpha, which older tools and grpcio-reflection still use.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(grpc::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("building the gRPC reflection service")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building the gRPC reflection service")?;

    let limit = cfg.max_request_bytes;
    let sidecar = Arc::new(Sidecar {
        rules: rules.clone(),
        store: store.clone(),
        budgets: budgets.clone(),
        router: Router {
            rules: rules.clone(),
            cache: Some(cache),
            budgets: budgets.clone(),
            learning: learning.clone(),
            effects: Some(Effects {
                access: Access { audit: audit.clone() },
                metrics: metrics.clone(),
            }),
            trace: false,
            large_requests: Some(Arc::new(tokio::sync::Semaphore::new(cfg.tokenize_threads))),
            sketches: Some(sketches.clone()),
            observe_scores: true,
        },
        learning,
        access: Access { audit: audit.clone() },
        metrics: metrics.clone(),
        clock: clock.clone(),
    });
    let router = RouterServer::new(RouterService {
        sidecar,
        auth,
        telemetry: telemetry.clone(),
        counters,
    })
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);

    tracing::info!(
        rules = %cfg.rules.display(),
        summary = %crate::rules::summary(&rules.current()),
        grpc = %grpc_addr,
        admin = %admin_addr,
        state_dir = %cfg.state_dir.display(),
        budget_store = if cfg.redis.is_some() { "redis" } else { "sqlite" },
        "switchyard serving"
    );

    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let routes = tonic::service::Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(router);
    let grpc_service = tower::ServiceBuilder::new()
        .map_response(move |resp| grpc::edge_status::rewrite(resp, limit))
        .service(routes);
    let server = {
        let (limits, stats) = (grpc_limits, grpc_stats.clone());
        async move {
            crate::listener::serve::<_, crate::listener::GrpcRefusal, _>(
                grpc_listener,
                crate::listener::Protocol::Grpc,
                limits,
                stats,
                grpc_service,
                async move {
                    let _ = drain_rx.await;
                },
            )
            .await;
            anyhow::Ok(())
        }
    };
    let mut server = tokio::spawn(server);
    let mut shutdown = ShutdownSignal::register();
    // Ready only now: the port is bound (connections queue in its backlog)
    // and the server task is running.
    admin_state.ready.store(true, Ordering::Release);
    // One plain line on stdout, for people and for scripts that start the
    // server on port 0 and need to know where it is. It comes after the
    // readiness latch, so whoever reads it finds /readyz answering 200.
    // Tests and supervisors wait for this line; a closed stdout must not
    // stop the server.
    crate::terminal::print_text(&format!(
        "switchyard listening: grpc={grpc_addr} admin=http://{admin_addr}"
    ));

    tokio::select! {
        res = &mut server => {
            // The server stopped by itself: that is an error worth exiting on.
            let _ = stop_tx.send(true);
            res.context("gRPC server task")?.context("gRPC server")?;
            anyhow::bail!("the gRPC server stopped by itself");
        }
        sig = shutdown.recv() => {
            tracing::info!(signal = sig, grace_s = cfg.shutdown_grace.as_secs_f64(), "shutting down: draining calls in flight");
        }
    }

    let shutdown_began = std::time::Instant::now();
    admin_state.ready.store(false, Ordering::Release);
    health.set_not_serving::<RouterServer<RouterService>>().await;
    let _ = drain_tx.send(());
    match tokio::time::timeout(cfg.shutdown_grace, &mut server).await {
        Ok(res) => res.context("gRPC server task")?.context("gRPC server")?,
        Err(_) => {
            tracing::warn!(
                grace_s = cfg.shutdown_grace.as_secs_f64(),
                "grace period overrun; abandoning calls still in flight"
            );
            server.abort();
        }
    }
    // Give back what the lease slices hold, with the last settlements.
    // The renewer finishes a renewal it is in the middle of, then stops.
    let _ = renewer_stop.send(true);
    let _ = renewer.await;
    let returned = match budgets.store.leasing() {
        Some(l) => l.renew_leases(true).await,
        None => Ok(None),
    };
    if let Err(e) = returned {
        tracing::warn!(error = %e, "the lease slices could not be returned; Redis releases them when they expire");
    }
    // The decisions of the calls just drained are durable before we exit.
    if let Err(e) = budgets.store.sync().await {
        tracing::warn!(error = %e, "the last decision records may not be stored");
    }
    // Export the spans still queued, within the grace period.
    let flush = telemetry.clone();
    let grace = cfg
        .shutdown_grace
        .saturating_sub(shutdown_began.elapsed())
        .max(Duration::from_millis(100));
    let _ = tokio::task::spawn_blocking(move || flush.shutdown(grace)).await;
    let _ = stop_tx.send(true);
    let _ = watcher.await;
    let _ = sweeper.await;
    // The last counts of the complexity histograms are stored on the way out.
    let _ = sketch_task.await;
    let _ = keys_watcher.await;
    // The learning loop stores what it holds before it returns.
    let _ = learner_task.await;
    let _ = tokio::task::spawn_blocking(move || admin_thread.join()).await;
    tracing::info!("stopped");
    Ok(())
}
