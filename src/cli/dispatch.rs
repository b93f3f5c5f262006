//! The command line, dispatched: each command's arguments, unpacked from
//! clap's types, handed to the library. Configuration errors exit 64 before
//! any port is bound.

use std::process::ExitCode;
use std::time::Duration;

use crate::app::{self, ServeConfig};
use crate::cli;
use crate::cli::args::{
    BudgetAction, Cli, Command, EscalationAction, FleetArgs, PricesAction, SimulateWhat, StoreFlags,
};
use crate::error::{ConfigError, EXIT_CONFIG};

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal; log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs one parsed command line: what `main` does once clap has read it.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check {
            rules,
            state_dir,
            allow_scope_reset,
        } => ExitCode::from(cli::check(&rules, state_dir.as_deref(), allow_scope_reset) as u8),
        Command::Escalations {
            server,
            api_key,
            action,
        } => {
            let cmd = match action {
                EscalationAction::List { workflow, json } => cli::EscalationCommand::List { workflow, json },
                EscalationAction::Approve { id, add_usd, reason } => {
                    cli::EscalationCommand::Approve { id, add_usd, reason }
                }
                EscalationAction::Deny { id, reason } => cli::EscalationCommand::Deny { id, reason },
            };
            run_async(cli::escalations(&server, api_key.as_deref(), cmd))
        }
        Command::Whatif {
            rules,
            store,
            workflow,
            since,
            format,
            seed,
        } => {
            let source = cli::ReportSource::Store(store.location());
            let args = cli::WhatifArgs {
                source,
                rules,
                workflow,
                since,
                format,
                seed,
            };
            run_async(cli::whatif(args))
        }
        Command::Budget {
            action:
                BudgetAction::Reconcile {
                    redis_url,
                    redis_key_prefix,
                    journals,
                    dry_run,
                    format,
                },
        } => {
            let args = cli::ReconcileArgs {
                redis_url,
                prefix: redis_key_prefix,
                journals,
                dry_run,
                format,
            };
            run_async(cli::reconcile(args))
        }
        Command::Budget {
            action:
                BudgetAction::Status {
                    rules,
                    store,
                    workflow,
                    format,
                },
        } => run_async(cli::status(cli::StatusArgs {
            rules,
            store: store.location(),
            state_dir: store.state_dir,
            workflow,
            format,
        })),
        Command::Budget {
            action: BudgetAction::Init {
                redis_url,
                redis_key_prefix,
            },
        } => run_async(cli::budget_init(redis_url, redis_key_prefix)),
        Command::Simulate { what, fleet } => match what {
            None => simulate_fleet(fleet),
            Some(SimulateWhat::Fleet(f)) => simulate_fleet(f),
            Some(SimulateWhat::Pacing {
                rules,
                data,
                workflow,
                budget_share,
                seeds,
                seed,
                soft_threshold_pct,
                no_learner,
                format,
            }) => ExitCode::from(cli::simulate_pacing(
                crate::cli::replay::pacing::PacingArgs {
                    rules,
                    data,
                    workflow,
                    budget_shares: budget_share,
                    seeds,
                    seed,
                    soft_threshold_pct,
                    learner: !no_learner,
                    json: format == "json",
                },
                &format,
            )),
        },
        Command::Report {
            state_dir,
            redis_url,
            redis_key_prefix,
            server,
            api_key,
            rules,
            workflow,
            period,
            label,
            format,
        } => {
            let source = match server {
                Some(s) => cli::ReportSource::Server(s),
                None => cli::ReportSource::Store(
                    StoreFlags {
                        state_dir,
                        redis_url,
                        redis_key_prefix,
                    }
                    .location(),
                ),
            };
            let args = cli::ReportArgs {
                source,
                rules,
                workflow,
                period,
                label: label.unwrap_or_default(),
                format,
                api_key,
            };
            run_async(cli::report(args))
        }
        Command::Prices {
            action:
                PricesAction::Import {
                    file,
                    rules,
                    out,
                    dry_run,
                },
        } => ExitCode::from(crate::cli::prices::import(&crate::cli::prices::ImportArgs {
            map: file,
            rules,
            out,
            dry_run,
        }) as u8),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "switchyard",
                &mut script,
            );
            cli::print_text(String::from_utf8_lossy(&script).trim_end_matches('\n'));
            ExitCode::SUCCESS
        }
        Command::Audit {
            state_dir,
            identity,
            action,
            workflow,
            result,
            since,
            format,
        } => {
            let Some(json) = json_format(&format) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            let since = match since.map(|s| s.parse::<jiff::Timestamp>().map_err(|e| (s, e))) {
                None => None,
                Some(Ok(t)) => Some(t),
                Some(Err((s, e))) => {
                    eprintln!("--since `{s}` is not an RFC 3339 time such as 2026-11-25T00:00:00Z: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let filter = crate::audit::Filter {
                identity,
                action,
                workflow,
                result,
                since,
            };
            ExitCode::from(crate::audit::command(&state_dir, &filter, json) as u8)
        }
        Command::Replay {
            rules,
            data,
            workflow,
            scores_out,
            format,
            seed,
            seeds,
        } => {
            let Some(json) = json_format(&format) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            ExitCode::from(crate::cli::replay::replay(crate::cli::replay::ReplayArgs {
                rules,
                data,
                workflow,
                scores_out,
                json,
                seed,
                seeds,
            }))
        }
        Command::Explain {
            rules,
            store,
            workflow,
            task_kind,
            system,
            max_output_tokens,
            attempt,
            outcome_id,
            deferrable,
            capabilities,
            text,
        } => ExitCode::from(cli::explain(cli::ExplainArgs {
            rules: &rules,
            store: &store.location(),
            state_dir: &store.state_dir,
            workflow: &workflow,
            task_kind: &task_kind,
            text: text.as_deref(),
            system: system.as_deref(),
            max_output_tokens,
            attempt,
            outcome_id: outcome_id.as_deref(),
            deferrable,
            capabilities: &capabilities,
        }) as u8),
        Command::Serve {
            rules,
            listen,
            admin_listen,
            state_dir,
            redis_url,
            redis_fail_open_usd,
            redis_timeout_ms,
            redis_key_prefix,
            api_keys,
            caller_rps,
            caller_burst,
            caller_concurrency,
            max_request_bytes,
            context_cache_mib,
            context_cache_ttl_s,
            reservation_ttl_s,
            decision_retention_days,
            shutdown_grace_s,
            log_format,
            accept_fresh_store,
            audit_max_mib,
            audit_keep,
            wal_limit_mib,
            limits,
        } => {
            let json = match log_format.as_str() {
                "json" => true,
                "text" => false,
                other => {
                    eprintln!("--log-format `{other}` is not text or json");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            init_logging(json);
            let redis = match redis_settings(redis_url, redis_fail_open_usd, redis_timeout_ms, redis_key_prefix) {
                Ok(r) => r,
                Err(why) => {
                    eprintln!("{why}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            if !(shutdown_grace_s.is_finite() && (0.0..=3600.0).contains(&shutdown_grace_s)) {
                eprintln!("--shutdown-grace-s {shutdown_grace_s} must be between 0 and 3600");
                return ExitCode::from(EXIT_CONFIG);
            }
            if audit_max_mib == 0 || audit_max_mib > 1024 * 1024 || audit_keep > 1000 {
                eprintln!("--audit-max-mib must be 1 to 1048576 and --audit-keep at most 1000");
                return ExitCode::from(EXIT_CONFIG);
            }
            if !(1..=1024 * 1024).contains(&wal_limit_mib) {
                eprintln!("--wal-limit-mib {wal_limit_mib} must be 1 to 1048576");
                return ExitCode::from(EXIT_CONFIG);
            }
            let (grpc_limits, admin_limits) = match limits.limits() {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let cfg = ServeConfig {
                grpc_limits,
                admin_limits,
                tokenize_threads: match limits.tokenize_threads {
                    0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
                    n => n,
                },
                learning_memory_bytes: limits.learning_memory_mib * 1024 * 1024,
                allow_scope_reset: limits.allow_scope_reset,
                accept_fresh_store,
                wal_limit_bytes: wal_limit_mib * 1024 * 1024,
                audit: crate::audit::Rotation {
                    max_bytes: audit_max_mib * 1024 * 1024,
                    keep: audit_keep,
                },
                api_keys,
                limits: crate::grpc::auth::Limits {
                    rate_per_s: caller_rps,
                    burst: caller_burst,
                    concurrency: caller_concurrency,
                },
                rules,
                listen,
                admin_listen,
                state_dir,
                max_request_bytes,
                shutdown_grace: Duration::from_secs_f64(shutdown_grace_s),
                reservation_ttl: Duration::from_secs(reservation_ttl_s.max(1)),
                decision_retention: Duration::from_secs(u64::from(decision_retention_days) * 86_400),
                redis,
                context_cache: crate::estimate::cache::CacheConfig {
                    max_bytes: context_cache_mib.saturating_mul(1024 * 1024),
                    ttl: Duration::from_secs(context_cache_ttl_s.max(1)),
                },
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(app::serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.downcast_ref::<ConfigError>().is_some() => {
                    eprintln!("{e}");
                    ExitCode::from(EXIT_CONFIG)
                }
                Err(e) => {
                    eprintln!("switchyard: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `--format`: `Some(true)` for json, `Some(false)` for table, `None` (said
/// on stderr) for anything else.
fn json_format(format: &str) -> Option<bool> {
    match format {
        "json" => Some(true),
        "table" => Some(false),
        other => {
            eprintln!("--format `{other}` is not table or json");
            None
        }
    }
}

/// Checks the `--redis-*` flags together.
fn redis_settings(
    url: Option<String>,
    fail_open_usd: Option<f64>,
    timeout_ms: u64,
    key_prefix: String,
) -> Result<Option<app::RedisServe>, String> {
    let Some(url) = url else {
        if fail_open_usd.is_some() {
            return Err("--redis-fail-open-usd applies only with --redis-url".into());
        }
        return Ok(None);
    };
    if !(url.starts_with("redis://")
        || url.starts_with("rediss://")
        || url.starts_with("redis+unix://")
        || url.starts_with(crate::store::redis::CLUSTER_SCHEME))
    {
        return Err(format!(
            "--redis-url `{}` must start with redis:// (or rediss://, redis+unix://, or redis+cluster://host:port,host:port for a Redis Cluster)",
            crate::store::redis::redact_url(&url)
        ));
    }
    if !(10..=60_000).contains(&timeout_ms) {
        return Err(format!("--redis-timeout-ms {timeout_ms} must be between 10 and 60000"));
    }
    if key_prefix.is_empty() || key_prefix.contains(['{', '}', ' ']) {
        return Err(format!(
            "--redis-key-prefix `{key_prefix}` must be non-empty, without braces or spaces"
        ));
    }
    let fail_open_cap_nanos = match fail_open_usd {
        None => None,
        Some(usd) => Some(
            crate::money::budget_usd_to_nanos(usd)
                .ok_or_else(|| format!("--redis-fail-open-usd {usd} must be a positive amount of USD, at most 1e9"))?,
        ),
    };
    Ok(Some(app::RedisServe {
        url,
        key_prefix,
        timeout: Duration::from_millis(timeout_ms),
        fail_open_cap_nanos,
    }))
}

/// Runs a command on a single-threaded runtime; its result is the exit code.
fn run_async(command: impl std::future::Future<Output = i32>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => ExitCode::from(rt.block_on(command) as u8),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn simulate_fleet(f: FleetArgs) -> ExitCode {
    let cfg = crate::cli::simulate::fleet::SimConfig {
        sidecars: f.sidecars,
        refresh_s: f.refresh_s,
        max_share: f.max_share,
        duration_s: f.duration_s,
        calls_per_sidecar_s: f.calls_per_sidecar_s,
        crash_share: f.crash_share,
        cut_off_share: f.cut_off_share,
        rtt_us: f.rtt_us,
        leases: true,
    };
    ExitCode::from(cli::simulate(cli::SimulateArgs {
        cfg,
        seeds: f.seeds,
        seed: f.seed,
        format: f.format,
    }) as u8)
}
