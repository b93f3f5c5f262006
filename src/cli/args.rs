//! The command line: every command and flag, parsed by clap. The binary
//! parses these and hands each command to the library; `completions` prints
//! shell completions from the same definitions.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Routes each model call to the cheapest adequate model."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum PricesAction {
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
pub enum Command {
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
        /// Share budgets across a fleet through this Redis (redis://host:port, or a Redis Cluster as redis+cluster://host:port,host:port) instead of the embedded store.
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
        /// Days each decision's snapshot (what `switchyard whatif` replays) is kept, in either store.
        #[arg(long, env = "SWITCHYARD_DECISION_RETENTION_DAYS", default_value_t = 30,
              value_parser = clap::value_parser!(u32).range(1..=3650))]
        decision_retention_days: u32,
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
        #[command(flatten)]
        limits: LimitFlags,
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
    /// What a candidate rule table would have cost and delivered on the decisions the store logged.
    Whatif {
        /// The candidate rules (a file or folder); they must pass `switchyard check`.
        #[arg(long)]
        rules: PathBuf,
        #[command(flatten)]
        store: StoreFlags,
        /// Only this workflow's decisions.
        #[arg(long)]
        workflow: Option<String>,
        /// Only decisions made since this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// table or json.
        #[arg(long, default_value = "table")]
        format: String,
        /// The bootstrap's seed: the same seed, the same intervals.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Budgets kept in a fleet store (Redis).
    Budget {
        #[command(subcommand)]
        action: BudgetAction,
    },
    /// Simulations: `simulate fleet` (the bare `simulate` runs it too) and `simulate pacing`.
    #[command(args_conflicts_with_subcommands = true)]
    Simulate {
        #[command(subcommand)]
        what: Option<SimulateWhat>,
        #[command(flatten)]
        fleet: FleetArgs,
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
        /// Also check the rules against the budget scopes the server with this state folder serves:
        /// a changed period or time zone is an error unless --allow-scope-reset.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// With --state-dir: accept a changed budget period or time zone (a fresh scope).
        #[arg(long, requires = "state_dir")]
        allow_scope_reset: bool,
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
        /// Replay N shuffles of the row order (seeds SEED to SEED+N-1) and report
        /// each figure's mean and spread; without it, one run in file order.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
        seeds: u32,
    },
    /// Print the routing decision for a prompt as JSON, without a server.
    Explain {
        #[arg(long, default_value = "routing-rules")]
        rules: PathBuf,
        #[command(flatten)]
        store: StoreFlags,
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
    /// Print a shell completion script: `switchyard completions bash > /etc/bash_completion.d/switchyard`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
pub enum EscalationAction {
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

#[derive(Debug, Subcommand)]
pub enum BudgetAction {
    /// After Redis lost acknowledged state (a failover, a restart without persistence), rebuild its budget counters from the sidecars' journals.
    Reconcile {
        #[arg(long, env = "SWITCHYARD_REDIS_URL")]
        redis_url: String,
        #[arg(long, env = "SWITCHYARD_REDIS_KEY_PREFIX", default_value = "sy")]
        redis_key_prefix: String,
        /// A sidecar's --state-dir (or its acks.jsonl); repeat for every sidecar of the fleet.
        #[arg(long = "journal", required = true)]
        journals: Vec<PathBuf>,
        /// Show what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// table or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Each budgeted workflow's period budget as the store holds it, and a paced budget's pace:
    /// target so far, forecast at the period's end, and the price of spend the serving sidecar's
    /// controller last saved.
    Status {
        /// The rules `serve` runs (a file or folder).
        #[arg(long, env = "SWITCHYARD_RULES", default_value = "routing-rules")]
        rules: PathBuf,
        #[command(flatten)]
        store: StoreFlags,
        /// Only this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// table or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Mark a new Redis as this deployment's budget store, so that sidecars trust it; they refuse an
    /// empty Redis otherwise (it may have lost its data).
    Init {
        #[arg(long, env = "SWITCHYARD_REDIS_URL")]
        redis_url: String,
        #[arg(long, env = "SWITCHYARD_REDIS_KEY_PREFIX", default_value = "sy")]
        redis_key_prefix: String,
    },
}

/// The store a command reads, as `serve` keeps it: the embedded store in a
/// folder (safe to read beside a running server), or Redis.
#[derive(clap::Args, Debug)]
pub struct StoreFlags {
    /// The folder `serve` keeps its state in.
    #[arg(long, env = "SWITCHYARD_STATE_DIR", default_value = "state")]
    pub state_dir: PathBuf,
    /// Read the fleet store in this Redis instead, as `serve --redis-url` keeps it.
    #[arg(long, env = "SWITCHYARD_REDIS_URL")]
    pub redis_url: Option<String>,
    /// The key prefix `serve` uses in Redis.
    #[arg(long, env = "SWITCHYARD_REDIS_KEY_PREFIX", default_value = "sy")]
    pub redis_key_prefix: String,
}

impl StoreFlags {
    /// The store these flags name: Redis when `--redis-url` is given.
    pub fn location(&self) -> crate::store::Location {
        match &self.redis_url {
            Some(url) => crate::store::Location::Redis {
                url: url.clone(),
                prefix: self.redis_key_prefix.clone(),
            },
            None => crate::store::Location::Embedded(self.state_dir.clone()),
        }
    }
}

/// The limits that keep the process bounded: connections and calls per
/// port, the tokenizer pool, the learned state in memory (docs/operations.md).
#[derive(clap::Args, Debug, Clone)]
pub struct LimitFlags {
    /// Open gRPC connections at most; one more is closed at accept. Lowered at start to leave
    /// file descriptors for the store and the rest when the descriptor limit is lower.
    #[arg(long, env = "SWITCHYARD_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// gRPC calls running at once on the port; more are answered RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "SWITCHYARD_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,
    /// gRPC calls running at once on one connection; more are answered RESOURCE_EXHAUSTED.
    #[arg(long, env = "SWITCHYARD_PER_CONNECTION_CONCURRENCY", default_value_t = 256)]
    pub per_connection_concurrency: usize,
    /// HTTP/2 streams a client may open at once on one connection (advertised in SETTINGS).
    #[arg(long, env = "SWITCHYARD_HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 streams reset by the client and not yet accepted, before the connection is closed.
    #[arg(long, env = "SWITCHYARD_HTTP2_MAX_PENDING_RESET_STREAMS", default_value_t = 32)]
    pub http2_max_pending_reset_streams: usize,
    /// The largest header list (metadata) a request may carry, in bytes, on both ports.
    #[arg(long, env = "SWITCHYARD_MAX_HEADER_LIST_BYTES", default_value_t = 16 * 1024)]
    pub max_header_list_bytes: u32,
    /// Seconds a new connection has to complete its first request before it is closed.
    #[arg(long, env = "SWITCHYARD_HEADER_READ_TIMEOUT_S", default_value_t = 10)]
    pub header_read_timeout_s: u64,
    /// Seconds a connection with no call in flight stays open (clients reconnect on demand).
    #[arg(long, env = "SWITCHYARD_IDLE_TIMEOUT_S", default_value_t = 300)]
    pub idle_timeout_s: u64,
    /// Seconds between HTTP/2 keepalive pings on a gRPC connection.
    #[arg(long, env = "SWITCHYARD_KEEPALIVE_INTERVAL_S", default_value_t = 30)]
    pub keepalive_interval_s: u64,
    /// Seconds to wait for a keepalive ping's answer before the connection is closed.
    #[arg(long, env = "SWITCHYARD_KEEPALIVE_TIMEOUT_S", default_value_t = 10)]
    pub keepalive_timeout_s: u64,
    /// Seconds one call may take, from its headers to its answer (DEADLINE_EXCEEDED after).
    #[arg(long, env = "SWITCHYARD_REQUEST_TIMEOUT_S", default_value_t = 30)]
    pub request_timeout_s: u64,
    /// Open admin-port connections at most (probes and scrapes).
    #[arg(long, env = "SWITCHYARD_ADMIN_MAX_CONNECTIONS", default_value_t = 64)]
    pub admin_max_connections: usize,
    /// Large prompts (over 64 KiB) estimated at once, each on a blocking thread; the rest wait their
    /// turn, so small Routes keep a core. 0: half the cores, at least one.
    #[arg(long, env = "SWITCHYARD_TOKENIZE_THREADS", default_value_t = 0)]
    pub tokenize_threads: usize,
    /// The most learned routing state held in memory, in MiB; past it, the workflows used least
    /// lately are evicted (their labels stay in the store) and reloaded when next routed.
    #[arg(long, env = "SWITCHYARD_LEARNING_MEMORY_MIB", default_value_t = 256)]
    pub learning_memory_mib: u64,
    /// Accept rules that change a budget's period or time zone: its new scope starts at $0 spent
    /// (audited as budget_scope_reset). Without it such rules are refused at the key.
    #[arg(long, env = "SWITCHYARD_ALLOW_SCOPE_RESET")]
    pub allow_scope_reset: bool,
}

impl LimitFlags {
    /// The two ports' limits, checked.
    pub fn limits(&self) -> Result<(crate::listener::Limits, crate::listener::Limits), String> {
        let secs = std::time::Duration::from_secs;
        let grpc = crate::listener::Limits {
            max_connections: self.max_connections,
            max_in_flight: self.max_in_flight,
            per_connection_concurrency: self.per_connection_concurrency,
            max_concurrent_streams: self.http2_max_concurrent_streams,
            max_pending_reset_streams: self.http2_max_pending_reset_streams,
            max_header_list_bytes: self.max_header_list_bytes,
            header_read_timeout: secs(self.header_read_timeout_s),
            idle_timeout: secs(self.idle_timeout_s),
            keepalive_interval: secs(self.keepalive_interval_s),
            keepalive_timeout: secs(self.keepalive_timeout_s),
            request_timeout: secs(self.request_timeout_s),
        };
        grpc.validate("")?;
        let admin = crate::listener::Limits {
            max_connections: self.admin_max_connections,
            max_header_list_bytes: self.max_header_list_bytes,
            header_read_timeout: secs(self.header_read_timeout_s.min(5)),
            ..crate::listener::Limits::admin()
        };
        admin.validate("admin-")?;
        if self.learning_memory_mib == 0 {
            return Err("--learning-memory-mib must be at least 1".into());
        }
        if self.tokenize_threads > 64 {
            return Err(format!(
                "--tokenize-threads {} must be 0 (half the cores) to 64",
                self.tokenize_threads
            ));
        }
        Ok((grpc, admin))
    }
}

/// What `simulate` simulates.
#[derive(Debug, Subcommand)]
pub enum SimulateWhat {
    /// A fleet sharing one hot workflow's budget, simulated with the real lease code, with and without leases.
    Fleet(FleetArgs),
    /// A period of bursty replay traffic against a budget: threshold step-down against each pacing mode.
    Pacing {
        /// The rules (a file or folder) with the workflow and its models.
        #[arg(long)]
        rules: PathBuf,
        /// Replay rows (id, prompt, models.<name>.success), as `replay` reads them.
        #[arg(long)]
        data: PathBuf,
        /// The workflow (default: the rows' own, else `replay`).
        #[arg(long)]
        workflow: Option<String>,
        /// Budgets as shares of always-strong's cost over the period, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0.3,0.5,0.7")]
        budget_share: Vec<f64>,
        /// Periods simulated per budget, one world each (seeds --seed, --seed + 1, ...).
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The threshold policy's soft threshold when the workflow's budget sets none, in percent.
        #[arg(long, default_value_t = 80.0)]
        soft_threshold_pct: f64,
        /// Decide with the difficulty score alone, without the learner's predictions.
        #[arg(long)]
        no_learner: bool,
        /// table or json.
        #[arg(long, default_value = "table")]
        format: String,
    },
}

/// The fleet simulation's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// Sidecars in the fleet (1 to 100,000).
    #[arg(long, default_value_t = 1000)]
    pub sidecars: usize,
    /// Seconds between a sidecar's lease renewals.
    #[arg(long, default_value_t = 10.0)]
    pub refresh_s: f64,
    /// The largest share of what remains one slice may take.
    #[arg(long, default_value_t = 0.05)]
    pub max_share: f64,
    /// Runs, one world each (seeds --seed, --seed + 1, ...).
    #[arg(long, default_value_t = 10)]
    pub seeds: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The budget period simulated, in seconds.
    #[arg(long, default_value_t = 600.0)]
    pub duration_s: f64,
    /// Calls a second per sidecar, on average over the fleet.
    #[arg(long, default_value_t = 0.5)]
    pub calls_per_sidecar_s: f64,
    /// The share of sidecars that crash during the period.
    #[arg(long, default_value_t = 0.01)]
    pub crash_share: f64,
    /// The share of sidecars cut off from the store for 5 to 60 s.
    #[arg(long, default_value_t = 0.01)]
    pub cut_off_share: f64,
    /// A store round trip in microseconds, for the latency figure.
    #[arg(long, default_value_t = 500)]
    pub rtt_us: u64,
    /// table or json.
    #[arg(long, default_value = "table")]
    pub format: String,
}
