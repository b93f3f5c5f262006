//! The `check` and `explain` commands: the rule table and the decision,
//! without a server.

use std::io::Read;
use std::path::Path;

use serde_json::json;

use crate::decide::Candidate;
use crate::error::Error;
use crate::estimate::Role;
use crate::money::{format_usd, nanos_to_usd};
use crate::route::{plan, RawRoute, RouteCall};
use crate::rules::{summary, RuleTable};

/// `switchyard check`: prints a summary and returns 0, or prints every
/// problem as `file:line:col: key: message` and returns 1.
pub fn check(rules: &Path) -> i32 {
    match RuleTable::load(rules) {
        Ok(table) => {
            println!("ok: {}: {}", rules.display(), summary(&table));
            0
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "{}: {} problem(s); fix them and run `switchyard check` again",
                rules.display(),
                e.diagnostics.len()
            );
            1
        }
    }
}

/// Options of `switchyard explain`.
pub struct ExplainArgs<'a> {
    pub rules: &'a Path,
    /// Where `serve` keeps its store, to show the budget as it stands.
    pub state_dir: &'a Path,
    /// Read the budget from this Redis instead (as `serve --redis-url`).
    pub redis: Option<(&'a str, &'a str)>,
    pub workflow: &'a str,
    pub task_kind: &'a str,
    pub text: Option<&'a str>,
    pub system: Option<&'a str>,
    pub max_output_tokens: u32,
    pub attempt: u32,
    pub deferrable: bool,
    pub capabilities: &'a [String],
}

/// `switchyard explain`: prints the decision and every candidate as JSON.
/// Returns the exit code.
pub fn explain(args: ExplainArgs<'_>) -> i32 {
    let table = match RuleTable::load(args.rules) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let stdin_text;
    let text = match args.text {
        Some("-") | None => {
            let mut s = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut s) {
                eprintln!("cannot read the prompt from stdin: {e}");
                return 1;
            }
            stdin_text = s;
            stdin_text.as_str()
        }
        Some(t) => t,
    };
    let mut messages: Vec<(&str, &str)> = Vec::new();
    if let Some(s) = args.system {
        messages.push(("system", s));
    }
    messages.push(("user", text));
    let mut call = match RouteCall::parse(RawRoute {
        workflow: args.workflow,
        outcome_id: "",
        task_kind: args.task_kind,
        messages: messages.iter().copied(),
        attempt: args.attempt,
        max_output_tokens: args.max_output_tokens,
        deferrable: args.deferrable,
        capabilities: args.capabilities,
        labels: std::iter::empty(),
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let budget = match budget_view(&table, args.workflow, args.state_dir, args.redis) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    // The same step-down serve would make past the soft threshold.
    call.input.downgrade = budget.as_ref().is_some_and(|b| b.past_soft_threshold);
    let mut candidates: Vec<Candidate> = Vec::new();
    let (est, decision) = match plan(&table, &call, None, None, Some(&mut candidates)) {
        Ok(p) => (p.est, p.decision),
        Err(e @ Error::NoAdequateModel(_)) => {
            let out = json!({ "workflow": args.workflow, "error": e.to_string(), "candidates": candidates });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            return 2;
        }
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let model = &table.models[decision.model];
    let mut input_tokens = serde_json::Map::new();
    if let Some(w) = table.workflow(args.workflow) {
        for e in &w.encodings {
            input_tokens.insert(e.name().to_string(), json!(est.input_tokens(*e)));
        }
    }
    let out = json!({
        "workflow": args.workflow,
        "task_kind": est.task_kind,
        "task_class": table.classes[est.class],
        "complexity": est.complexity,
        "features": est.features,
        "input_tokens_by_encoding": input_tokens,
        "estimated_output_tokens": est.output_tokens,
        "messages": call.messages.iter().map(|m| match m.role {
            Role::System => "system", Role::Developer => "developer", Role::User => "user",
            Role::Assistant => "assistant", Role::Tool => "tool",
        }).collect::<Vec<_>>(),
        "decision": {
            "model": model.name,
            "provider": model.provider,
            "rule": decision.rule,
            "required_tier": decision.required_tier,
            "input_tokens": decision.input_tokens,
            "cached_input_tokens": decision.cached_tokens,
            "estimated_cost_nanousd": decision.cost_nanos,
            "estimated_cost_usd": nanos_to_usd(decision.cost_nanos),
            "estimated_cost": format_usd(decision.cost_nanos),
            "reason": decision.reason,
        },
        "budget": budget.map(|b| json!({
            "period_scope": b.scope,
            "limit_nanousd": b.state.limit_nanos,
            "spent_nanousd": b.state.spent_nanos,
            "reserved_nanousd": b.state.reserved_nanos,
            "remaining_nanousd": b.state.remaining(),
            "past_soft_threshold": b.past_soft_threshold,
            "this_call_fits": decision.cost_nanos <= b.state.remaining(),
            "on_limit": b.on_limit,
            "store": b.store,
        })),
        "candidates": candidates,
    });
    match serde_json::to_string_pretty(&out) {
        Ok(s) => {
            println!("{s}");
            0
        }
        Err(e) => {
            eprintln!("cannot render the decision as JSON: {e}");
            1
        }
    }
}

/// A workflow's budget as `explain` shows it.
struct BudgetView {
    scope: String,
    state: crate::budget::ScopeState,
    past_soft_threshold: bool,
    on_limit: &'static str,
    /// Where the figures came from.
    store: String,
}

/// The workflow's current period budget, read from the embedded store in
/// `state_dir` if there is one (otherwise nothing is spent yet).
fn budget_view(
    table: &RuleTable,
    workflow: &str,
    state_dir: &Path,
    redis: Option<(&str, &str)>,
) -> Result<Option<BudgetView>, String> {
    let Some(w) = table.workflow(workflow) else {
        return Ok(None);
    };
    let Some(b) = &w.budget else { return Ok(None) };
    let scope = crate::budget::period_scope(w, b, jiff::Timestamp::now());
    if let Some((url, prefix)) = redis {
        let stored = read_redis_scope(url, prefix, state_dir, &scope)?;
        let state = crate::budget::ScopeState::of_period(b, stored);
        return Ok(Some(BudgetView {
            past_soft_threshold: state.past_soft_threshold(b),
            on_limit: on_limit_name(b.on_limit),
            store: crate::budget::redis::redact_url(url),
            scope,
            state,
        }));
    }
    let stored = crate::budget::sqlite::read_scope(state_dir, &scope).map_err(|e| e.to_string())?;
    let state = crate::budget::ScopeState::of_period(b, stored.unwrap_or_default());
    Ok(Some(BudgetView {
        past_soft_threshold: state.past_soft_threshold(b),
        on_limit: on_limit_name(b.on_limit),
        store: if stored.is_some() {
            state_dir.join("budget.sqlite3").display().to_string()
        } else {
            format!("none in {} (nothing spent yet)", state_dir.display())
        },
        scope,
        state,
    }))
}

fn on_limit_name(o: crate::rules::OnLimit) -> &'static str {
    match o {
        crate::rules::OnLimit::Escalate => "escalate",
        crate::rules::OnLimit::Deny => "deny",
    }
}

/// Reads one scope from Redis (one HMGET; nothing is written).
fn read_redis_scope(
    url: &str,
    prefix: &str,
    state_dir: &Path,
    scope: &str,
) -> Result<crate::budget::ScopeState, String> {
    use crate::budget::BudgetStore;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(async {
        let store = redis_reader(url, prefix, state_dir).await.map_err(|e| e.to_string())?;
        store.scope(scope).await.map_err(|e| e.to_string())
    })
}

/// A Redis store for commands that only read (`explain`, `report`). The
/// journal in `state_dir` is read at connect and never written.
async fn redis_reader(
    url: &str,
    prefix: &str,
    state_dir: &Path,
) -> Result<crate::budget::redis::RedisStore, crate::budget::StoreError> {
    crate::budget::redis::RedisStore::connect(crate::budget::redis::RedisConfig {
        url: url.to_string(),
        prefix: prefix.to_string(),
        timeout: std::time::Duration::from_secs(5),
        reservation_ttl_ms: 1000,
        fail_open_cap_nanos: None,
        journal: state_dir.join("redis-journal.jsonl"),
    })
    .await
}

/// Why `connect` failed, each with a message saying what to fix.
enum Connect {
    BadAddress(String),
    Unreachable(String),
}

/// Connects to a running server's gRPC address (`host:port` or a URL).
async fn connect(server: &str) -> Result<tonic::transport::Channel, Connect> {
    let uri = if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    };
    let endpoint = tonic::transport::Channel::from_shared(uri.clone())
        .map_err(|e| Connect::BadAddress(format!("--server `{server}` is not an address: {e}")))?;
    endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| {
            Connect::Unreachable(format!(
                "cannot reach switchyard at {uri}: {e}; is `switchyard serve` running there? (--server)"
            ))
        })
}

/// Where `switchyard report` reads from.
/// Sends `authorization: Bearer <key>` on every call, when a key is given.
#[derive(Clone)]
pub struct BearerKey(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Client = crate::grpc::pb::router_client::RouterClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerKey>,
>;

/// A client that authenticates with `api_key`, if given.
fn authorized(channel: tonic::transport::Channel, api_key: Option<&str>) -> Result<Client, String> {
    let key = match api_key {
        None => None,
        Some(k) => Some(
            format!("Bearer {k}")
                .parse()
                .map_err(|_| "the API key is not valid header text; pass the key as issued".to_string())?,
        ),
    };
    Ok(crate::grpc::pb::router_client::RouterClient::with_interceptor(
        channel,
        BearerKey(key),
    ))
}

pub enum ReportSource {
    StateDir(std::path::PathBuf),
    Redis(String, String),
    Server(String),
}

pub struct ReportArgs {
    pub source: ReportSource,
    pub rules: std::path::PathBuf,
    pub workflow: Option<String>,
    pub period: String,
    pub label: String,
    pub format: String,
    /// With a server: an admin key.
    pub api_key: Option<String>,
}

/// `switchyard report`. Returns the exit code: 0, 1 when the store cannot be
/// read, 64 for bad flags.
pub async fn report(a: ReportArgs) -> i32 {
    if let Err(e) = crate::outcome::report::parse_period(&a.period)
        .and_then(|_| crate::outcome::report::parse_label(&a.label))
        .and_then(|_| match a.format.as_str() {
            "table" | "json" => Ok(None::<String>),
            f => Err(format!("--format `{f}` is not table or json")),
        })
    {
        eprintln!("{e}");
        return 64;
    }
    if let ReportSource::Server(addr) = &a.source {
        let channel = match connect(addr).await {
            Ok(ch) => ch,
            Err(Connect::BadAddress(why)) => {
                eprintln!("{why}");
                return 64;
            }
            Err(Connect::Unreachable(why)) => {
                eprintln!("{why}");
                return 1;
            }
        };
        let mut client = match authorized(channel, a.api_key.as_deref()) {
            Ok(c) => c,
            Err(why) => {
                eprintln!("{why}");
                return 64;
            }
        };
        return match client
            .get_report(crate::grpc::pb::ReportRequest {
                workflow: a.workflow.clone().unwrap_or_default(),
                period: a.period.clone(),
                label: a.label.clone(),
                format: a.format.clone(),
            })
            .await
        {
            Ok(r) => {
                print!("{}", r.into_inner().text);
                0
            }
            Err(s) => {
                eprintln!("the server refused the report: {}", s.message());
                1
            }
        };
    }
    let table = match RuleTable::load(&a.rules) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("the rules at {} are not valid:\n{e}", a.rules.display());
            return 64;
        }
    };
    if let Some(w) = &a.workflow {
        if table.workflow(w).is_none() {
            eprintln!(
                "unknown workflow `{w}`; the rules at {} define: {}",
                a.rules.display(),
                table
                    .workflows
                    .iter()
                    .map(|w| w.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return 64;
        }
    }
    let store: crate::budget::SharedStore = match &a.source {
        ReportSource::StateDir(dir) => {
            if !dir.join("budget.sqlite3").exists() {
                eprintln!(
                    "no store in {}: nothing has been recorded there yet. Run `switchyard serve --state-dir {}` and send it calls, or pass the --state-dir serve uses.",
                    dir.display(),
                    dir.display()
                );
                return 0;
            }
            match crate::budget::sqlite::SqliteStore::open(dir) {
                Ok(s) => std::sync::Arc::new(s),
                Err(e) => {
                    eprintln!("cannot read the store in {}: {e}", dir.display());
                    return 1;
                }
            }
        }
        ReportSource::Redis(url, prefix) => match redis_reader(url, prefix, &std::env::temp_dir()).await {
            Ok(s) => std::sync::Arc::new(s),
            Err(e) => {
                eprintln!("{e}");
                return 1;
            }
        },
        ReportSource::Server(_) => return 1,
    };
    let spec = crate::outcome::report::Spec {
        period: crate::outcome::report::parse_period(&a.period).unwrap_or(crate::rules::Period::Day),
        workflow: a.workflow.clone(),
        label: crate::outcome::report::parse_label(&a.label).unwrap_or_default(),
        now: jiff::Timestamp::now(),
    };
    match crate::outcome::report::gather(store.as_ref(), &table, &spec).await {
        Ok(r) => match crate::outcome::report::render(&r, &a.format) {
            Ok(text) => {
                print!("{text}");
                if a.format == "json" {
                    println!();
                }
                0
            }
            Err(e) => {
                eprintln!("{e}");
                64
            }
        },
        Err(e) => {
            eprintln!("cannot read the ledger: {e}");
            1
        }
    }
}

/// What `switchyard escalations` does.
pub enum EscalationCommand {
    List {
        workflow: Option<String>,
        json: bool,
    },
    /// `add_usd` as written: it is parsed exactly, to the nano-dollar.
    Approve {
        id: String,
        add_usd: String,
        reason: String,
    },
    Deny {
        id: String,
        reason: String,
    },
}

/// `switchyard escalations …` against a running server. Returns the exit code.
pub async fn escalations(server: &str, api_key: Option<&str>, cmd: EscalationCommand) -> i32 {
    use crate::grpc::pb;
    let channel = match connect(server).await {
        Ok(ch) => ch,
        Err(Connect::BadAddress(why) | Connect::Unreachable(why)) => {
            eprintln!("{why}");
            return 1;
        }
    };
    let mut client = match authorized(channel, api_key) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("{why}");
            return 64;
        }
    };
    let shown = |e: &pb::Escalation| {
        format!(
            "{}  {:<9} {:<20} outcome={} caller={} amount={} model={} created={}{}",
            e.escalation_id,
            e.state,
            e.workflow,
            e.outcome_id,
            e.caller,
            format_usd(e.amount_nanousd),
            e.model,
            e.created_at,
            if e.resolved_by.is_empty() {
                String::new()
            } else {
                format!(" resolved_by={} at={}", e.resolved_by, e.resolved_at)
            }
        )
    };
    let result = match cmd {
        EscalationCommand::List { workflow, json: as_json } => client
            .list_escalations(pb::ListEscalationsRequest { workflow: workflow.unwrap_or_default() })
            .await
            .map(|r| {
                let list = r.into_inner().escalations;
                if as_json {
                    let rows: Vec<_> = list
                        .iter()
                        .map(|e| {
                            json!({
                                "escalation_id": e.escalation_id, "workflow": e.workflow, "outcome_id": e.outcome_id,
                                "caller": e.caller, "amount_nanousd": e.amount_nanousd, "amount_usd": nanos_to_usd(e.amount_nanousd),
                                "model": e.model, "state": e.state, "created_at": e.created_at,
                                "resolved_by": e.resolved_by, "resolved_at": e.resolved_at,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
                } else if list.is_empty() {
                    println!("no escalations");
                } else {
                    for e in &list {
                        println!("{}", shown(e));
                    }
                }
            }),
        EscalationCommand::Approve { id, add_usd, reason } => {
            let add = match crate::money::parse_usd(&add_usd) {
                Ok(n) if (1..=crate::money::MAX_APPROVAL_NANOS).contains(&n) => n,
                Ok(_) => {
                    eprintln!(
                        "--add-usd {add_usd} must be above $0 and at most {} (one approval's cap)",
                        crate::money::format_usd_exact(crate::money::MAX_APPROVAL_NANOS)
                    );
                    return 64;
                }
                Err(e) => {
                    eprintln!("--add-usd: {e}");
                    return 64;
                }
            };
            client
                .resolve_escalation(pb::ResolveEscalationRequest { escalation_id: id, approve: true, add_nanousd: add, reason })
                .await
                .map(|r| println!("approved: {}", shown(&r.into_inner())))
        }
        EscalationCommand::Deny { id, reason } => client
            .resolve_escalation(pb::ResolveEscalationRequest { escalation_id: id, approve: false, add_nanousd: 0, reason })
            .await
            .map(|r| println!("denied: {}", shown(&r.into_inner()))),
    };
    match result {
        Ok(()) => 0,
        Err(s) => {
            eprintln!("{:?}: {}", s.code(), s.message());
            1
        }
    }
}
