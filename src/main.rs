//! The `switchyard` binary: parses the command line and hands over to the
//! library. Configuration errors exit 64 before any port is bound.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use switchyard::app::{self, ServeConfig};
use switchyard::cli;
use switchyard::error::{ConfigError, EXIT_CONFIG};

/// Every Route allocates and frees a few dozen small objects across the
/// runtime's threads and the store's; mimalloc's thread-local free lists keep
/// that off glibc's shared arenas (see README, "Load").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Routes each model call to the cheapest adequate model."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum PricesAction {
    /// Update the prices and limits of the models a rules file names from LiteLLM's
    /// model_prices_and_context_window.json; prints a diff and keeps comments and layout.
    Import {
        /// The price map (in the `litellm` PyPI package: litellm/model_prices_and_context_window_backup.json).
        file: PathBuf,
        /// The rules file whose [[models]] to update.
        #[arg(long, default_value = "routing-rules/default.toml")]
        rules: PathBuf,
        /// Write the result here instead of in place.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print the diff only.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Start the sidecar: gRPC on --listen, health/metrics on --admin-listen.
    Serve {
        /// A rules TOML file, or a folder whose *.toml files are loaded.
        #[arg(long, env = "SWITCHYARD_RULES", default_value = "routing-rules")]
        rules: PathBuf,
        /// The gRPC address. Loopback by default: the agent is in the same pod.
        #[arg(long, env = "SWITCHYARD_LISTEN", default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// The admin HTTP address (/healthz, /readyz, /metrics, /).
        #[arg(long, env = "SWITCHYARD_ADMIN_LISTEN", default_value = "127.0.0.1:9464")]
        admin_listen: SocketAddr,
        /// The folder for the embedded store and the audit log.
        #[arg(long, env = "SWITCHYARD_STATE_DIR", default_value = "state")]
        state_dir: PathBuf,
        /// Share budgets across a fleet through this Redis (redis://host:port) instead of the embedded store.
        #[arg(long, env = "SWITCHYARD_REDIS_URL")]
        redis_url: Option<String>,
        /// While Redis is unreachable, admit calls until this sidecar's estimated spend reaches this many USD
        /// (fail open with a local cap). Unset: fail closed (Route answers UNAVAILABLE).
        #[arg(long, env = "SWITCHYARD_REDIS_FAIL_OPEN_USD")]
        redis_fail_open_usd: Option<f64>,
        /// The longest a budget call waits for Redis before Redis counts as unreachable, in milliseconds.
        #[arg(long, env = "SWITCHYARD_REDIS_TIMEOUT_MS", default_value_t = 500)]
        redis_timeout_ms: u64,
        /// The prefix of every Redis key, so that deployments can share one Redis.
        #[arg(long, env = "SWITCHYARD_REDIS_KEY_PREFIX", default_value = "sy")]
        redis_key_prefix: String,
        /// The API keys file: [[keys]] with identity, sha256 and roles. Without it, only loopback
        /// callers are accepted, as `local`.
        #[arg(long, env = "SWITCHYARD_API_KEYS")]
        api_keys: Option<PathBuf>,
        /// Calls a second each caller identity may make (0, the default: no rate limit).
        #[arg(long, env = "SWITCHYARD_CALLER_RPS", default_value_t = 0)]
        caller_rps: u32,
        /// Calls above the rate a caller may make in a burst.
        #[arg(long, env = "SWITCHYARD_CALLER_BURST", default_value_t = 10_000)]
        caller_burst: u32,
        /// Calls each caller identity may have in flight (0: no limit).
        #[arg(long, env = "SWITCHYARD_CALLER_CONCURRENCY", default_value_t = 1024)]
        caller_concurrency: u32,
        /// The largest request accepted, in bytes.
        #[arg(long, env = "SWITCHYARD_MAX_REQUEST_BYTES", default_value_t = 4 * 1024 * 1024)]
        max_request_bytes: usize,
        /// The bound on the repeated-context caches, in MiB.
        #[arg(long, env = "SWITCHYARD_CONTEXT_CACHE_MIB", default_value_t = 64)]
        context_cache_mib: u64,
        /// How long a message's token count is kept, in seconds.
        #[arg(long, env = "SWITCHYARD_CONTEXT_CACHE_TTL_S", default_value_t = 3600)]
        context_cache_ttl_s: u64,
        /// Seconds a budget reservation waits for its ReportUsage before it is released.
        #[arg(long, env = "SWITCHYARD_RESERVATION_TTL_S", default_value_t = 600)]
        reservation_ttl_s: u64,
        /// Seconds to drain calls in flight after SIGTERM.
        #[arg(long, env = "SWITCHYARD_SHUTDOWN_GRACE_S", default_value_t = 10.0)]
        shutdown_grace_s: f64,
        /// Log format: text or json.
        #[arg(long, env = "SWITCHYARD_LOG_FORMAT", default_value = "text")]
        log_format: String,
        /// Start with an empty budget store although the state folder held one that is now missing or
        /// empty (what was there is set aside, and the fresh start is audited).
        #[arg(long, env = "SWITCHYARD_ACCEPT_FRESH_STORE")]
        accept_fresh_store: bool,
        /// The audit log rotates when it reaches this many MiB.
        #[arg(long, env = "SWITCHYARD_AUDIT_MAX_MIB", default_value_t = 64)]
        audit_max_mib: u64,
        /// Rotated audit logs kept (audit.jsonl.1 .. .N); older ones are deleted.
        #[arg(long, env = "SWITCHYARD_AUDIT_KEEP", default_value_t = 5)]
        audit_keep: usize,
        /// The embedded store's write-ahead log is reset once it grows past this many MiB.
        #[arg(long, env = "SWITCHYARD_WAL_LIMIT_MIB", default_value_t = 64)]
        wal_limit_mib: u64,
    },
    /// List, approve or deny budget escalations on a running server.
    Escalations {
        /// The server's gRPC address.
        #[arg(long, env = "SWITCHYARD_SERVER", default_value = "127.0.0.1:50051", global = true)]
        server: String,
        /// An API key, sent as `authorization: Bearer <key>`.
        #[arg(long, env = "SWITCHYARD_API_KEY", global = true)]
        api_key: Option<String>,
        #[command(subcommand)]
        action: EscalationAction,
    },
    /// Cost per accepted outcome, its factors and a diagnosis, per workflow.
    Report {
        /// Read the embedded store in this folder (read beside a running server is safe).
        #[arg(long, env = "SWITCHYARD_STATE_DIR", default_value = "state")]
        state_dir: PathBuf,
        /// Read the fleet store in this Redis instead.
        #[arg(long, env = "SWITCHYARD_REDIS_URL", conflicts_with = "server")]
        redis_url: Option<String>,
        /// The key prefix `serve` uses in Redis.
        #[arg(long, env = "SWITCHYARD_REDIS_KEY_PREFIX", default_value = "sy")]
        redis_key_prefix: String,
        /// Ask a running server (its gRPC address) instead of reading a store.
        #[arg(long)]
        server: Option<String>,
        /// With --server: an admin API key, sent as `authorization: Bearer <key>`.
        #[arg(long, env = "SWITCHYARD_API_KEY")]
        api_key: Option<String>,
        /// The rules, for the workflows and their budgets.
        #[arg(long, default_value = "routing-rules")]
        rules: PathBuf,
        #[arg(long)]
        workflow: Option<String>,
        /// day, week or month (UTC calendar), compared with the one before.
        #[arg(long, default_value = "day")]
        period: String,
        /// key=value: only calls with this label, and outcomes with such calls.
        #[arg(long)]
        label: Option<String>,
        /// table or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Keep model prices current from LiteLLM's public price map.
    Prices {
        #[command(subcommand)]
        action: PricesAction,
    },
    /// Read the audit log (audit.jsonl in the state folder), filtered.
    Audit {
        #[arg(long, env = "SWITCHYARD_STATE_DIR", default_value = "state")]
        state_dir: PathBuf,
        /// Only records of this identity.
        #[arg(long)]
        identity: Option<String>,
        /// Only this action: route, report_usage, resolve_escalation, rules_reload, keys_reload, ...
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        workflow: Option<String>,
        /// Only this result: ok, denied, unauthenticated, permission_denied, limited, ...
        #[arg(long)]
        result: Option<String>,
        /// Only records at or after this RFC 3339 time (e.g. 2026-11-25T00:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// table or json (one JSON object a line).
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Validate rules: exit 0 if valid, else print file:line:col and the key for each problem.
    Check {
        #[arg(long, default_value = "routing-rules")]
        rules: PathBuf,
    },
    /// Evaluate routing on recorded per-prompt outcomes (one JSON row a line):
    /// always-strong, always-weak, random, the rules, the learned router, and
    /// the learned router with a cascade, side by side.
    Replay {
        #[arg(long, default_value = "routing-rules")]
        rules: PathBuf,
        /// The replay data: JSON lines with id, prompt, task_kind and models.<name>.success.
        #[arg(long)]
        data: PathBuf,
        /// The workflow to route as; by default the rows' own, or `replay`.
        #[arg(long)]
        workflow: Option<String>,
        /// Write one JSON line per row: id, score, model, success, cost_usd.
        #[arg(long)]
        scores_out: Option<PathBuf>,
        /// table or json.
        #[arg(long, default_value = "table")]
        format: String,
        /// Seeds exploration and the random policy: the same seed gives the same output.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Print the routing decision for a prompt as JSON, without a server.
    Explain {
        #[arg(long, default_value = "routing-rules")]
        rules: PathBuf,
        /// Where `serve` keeps its state, to show budgets as they stand.
        #[arg(long, env = "SWITCHYARD_STATE_DIR", default_value = "state")]
        state_dir: PathBuf,
        /// Read budgets from this Redis instead, as `serve --redis-url` keeps them.
        #[arg(long, env = "SWITCHYARD_REDIS_URL")]
        redis_url: Option<String>,
        /// The key prefix `serve` uses in Redis.
        #[arg(long, env = "SWITCHYARD_REDIS_KEY_PREFIX", default_value = "sy")]
        redis_key_prefix: String,
        #[arg(long, default_value = "general")]
        workflow: String,
        #[arg(long, default_value = "")]
        task_kind: String,
        /// A system prompt to send before the text.
        #[arg(long)]
        system: Option<String>,
        #[arg(long, default_value_t = 0)]
        max_output_tokens: u32,
        #[arg(long, default_value_t = 1)]
        attempt: u32,
        /// Explain a call under this outcome: with --attempt 2 or more, a retry after a rejection is routed
        /// a tier up, as serve routes it.
        #[arg(long)]
        outcome_id: Option<String>,
        #[arg(long)]
        deferrable: bool,
        /// A capability the call needs (tools, vision, json); repeatable.
        #[arg(long = "capability")]
        capabilities: Vec<String>,
        /// The prompt, or - to read it from stdin.
        text: Option<String>,
    },
}

#[derive(Subcommand)]
enum EscalationAction {
    /// List escalations (pending, approved and denied).
    List {
        #[arg(long)]
        workflow: Option<String>,
        /// Print JSON instead of a line per escalation.
        #[arg(long)]
        json: bool,
    },
    /// Approve an escalation, adding USD to the budget that ran out.
    Approve {
        id: String,
        /// USD to add to the budget that ran out (exact, e.g. 5 or 0.25; at most 1000000).
        #[arg(long)]
        add_usd: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Deny an escalation: calls against that budget are denied until it is raised.
    Deny {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { rules } => ExitCode::from(cli::check(&rules) as u8),
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
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => ExitCode::from(rt.block_on(cli::escalations(&server, api_key.as_deref(), cmd)) as u8),
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    ExitCode::FAILURE
                }
            }
        }
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
            let source = match (server, redis_url) {
                (Some(s), _) => cli::ReportSource::Server(s),
                (None, Some(url)) => cli::ReportSource::Redis(url, redis_key_prefix),
                (None, None) => cli::ReportSource::StateDir(state_dir),
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
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => ExitCode::from(rt.block_on(cli::report(args)) as u8),
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Prices {
            action:
                PricesAction::Import {
                    file,
                    rules,
                    out,
                    dry_run,
                },
        } => ExitCode::from(switchyard::prices::import(&switchyard::prices::ImportArgs {
            map: file,
            rules,
            out,
            dry_run,
        }) as u8),
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
            let filter = switchyard::audit::Filter {
                identity,
                action,
                workflow,
                result,
                since,
            };
            ExitCode::from(switchyard::audit::command(&state_dir, &filter, json) as u8)
        }
        Command::Replay {
            rules,
            data,
            workflow,
            scores_out,
            format,
            seed,
        } => {
            let Some(json) = json_format(&format) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            ExitCode::from(switchyard::outcome::replay::replay(
                switchyard::outcome::replay::ReplayArgs {
                    rules,
                    data,
                    workflow,
                    scores_out,
                    json,
                    seed,
                },
            ))
        }
        Command::Explain {
            rules,
            state_dir,
            redis_url,
            redis_key_prefix,
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
            state_dir: &state_dir,
            redis: redis_url.as_deref().map(|u| (u, redis_key_prefix.as_str())),
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
            shutdown_grace_s,
            log_format,
            accept_fresh_store,
            audit_max_mib,
            audit_keep,
            wal_limit_mib,
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
            let cfg = ServeConfig {
                accept_fresh_store,
                wal_limit_bytes: wal_limit_mib * 1024 * 1024,
                audit: switchyard::audit::Rotation {
                    max_bytes: audit_max_mib * 1024 * 1024,
                    keep: audit_keep,
                },
                api_keys,
                limits: switchyard::grpc::auth::Limits {
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
                redis,
                context_cache: switchyard::estimate::cache::CacheConfig {
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
    if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("redis+unix://")) {
        return Err(format!(
            "--redis-url `{}` must start with redis:// (or rediss://, redis+unix://)",
            switchyard::budget::redis::redact_url(&url)
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
            switchyard::money::budget_usd_to_nanos(usd)
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
