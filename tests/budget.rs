//! Budgets over real gRPC on the embedded store: no overspend under a race,
//! the soft threshold, escalation and approval, durability across kill -9,
//! idempotent settlement and expiry.

mod common;

#[path = "common/redis.rs"]
mod redis_server;

use std::time::Duration;

use common::*;
use redis_server::RedisServer;
use switchyard::grpc::pb;
use switchyard::grpc::pb::router_client::RouterClient;
use switchyard::testing::{model, RulesBuilder};
use tonic::transport::Channel;

const DOLLAR: i64 = 1_000_000_000;

/// One model at $10 / $30 per million tokens, a $1/day budget that denies.
fn race_rules() -> String {
    RulesBuilder::new()
        .model(model("m", 10.0, 30.0, 3).max_output(4000))
        .budgeted("race", "", "limit_usd = 1.0\nperiod = \"day\"\non_limit = \"deny\"")
        .build()
}

fn call(workflow: &str, outcome: &str) -> pb::RouteRequest {
    pb::RouteRequest {
        outcome_id: outcome.into(),
        max_output_tokens: 500,
        ..request(workflow, "Summarise the incident report in three bullet points.")
    }
}

async fn report(c: &mut RouterClient<Channel>, r: &pb::RouteResponse, output: u64) -> i64 {
    c.report_usage(usage_for(r, output))
        .await
        .expect("report usage")
        .into_inner()
        .cost_nanousd
}

/// 32 clients spread over `clients` race for the "race" workflow's $1 until
/// it denies; the spend must stay within the dollar and equal the sum of the
/// acknowledged costs.
async fn race_for_a_dollar(clients: &[RouterClient<Channel>]) {
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let mut c = clients[i % clients.len()].clone();
            tokio::spawn(async move {
                let mut acked = 0i64;
                for j in 0..20 {
                    let r = c
                        .route(call("race", &format!("t-{i}-{j}")))
                        .await
                        .expect("route")
                        .into_inner();
                    if r.status == pb::RouteStatus::Denied as i32 {
                        assert!(r.reason.contains("would exceed"), "{}", r.reason);
                        break;
                    }
                    assert_eq!(r.status, pb::RouteStatus::Routed as i32);
                    // Actual output is below the 500-token estimate.
                    acked += report(&mut c, &r, 300 + (i * 7 + j) as u64 % 200).await;
                }
                acked
            })
        })
        .collect();
    let mut acked = 0;
    for t in tasks {
        acked += t.await.expect("client");
    }
    for c in clients {
        let b = budget(&mut c.clone(), "race").await;
        assert_eq!(b.limit_nanousd, DOLLAR);
        assert!(b.spent_nanousd <= DOLLAR, "overspent: {b:?}");
        assert_eq!(b.spent_nanousd, acked, "spend is exactly the sum of acknowledged costs");
        assert_eq!(b.reserved_nanousd, 0);
        assert!(b.spent_nanousd > DOLLAR * 8 / 10, "the budget was used: {b:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_never_overspend_a_dollar() {
    let dir = rules_dir(&race_rules());
    let server = Server::start(&dir.path().join("rules.toml"), &[]);
    race_for_a_dollar(&[server.client().await]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_sharing_one_redis_never_overspend_a_dollar() {
    let redis = RedisServer::start();
    let dir = rules_dir(&race_rules());
    let url = redis.url();
    let a = Server::start(
        &dir.path().join("rules.toml"),
        &["--redis-url", &url, "--redis-timeout-ms", "5000"],
    );
    let b = Server::start(
        &dir.path().join("rules.toml"),
        &["--redis-url", &url, "--redis-timeout-ms", "5000"],
    );
    race_for_a_dollar(&[a.client().await, b.client().await]).await;
    // explain reads the same figures from Redis, without a server.
    let out = std::process::Command::new(BIN)
        .args(["explain", "--workflow", "race", "--redis-url", &url, "--rules"])
        .arg(dir.path().join("rules.toml"))
        .arg("Summarise the incident report.")
        .output()
        .expect("explain");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let spent = budget(&mut a.client().await, "race").await.spent_nanousd;
    assert_eq!(json["budget"]["spent_nanousd"].as_i64(), Some(spent), "{json}");
    assert_eq!(json["budget"]["store"], url.as_str());
}

/// Reports one routed call's usage, expecting it to be acknowledged.
async fn route_and_report(c: &mut RouterClient<Channel>, outcome: &str) -> (pb::RouteResponse, i64) {
    let r = c.route(call("race", outcome)).await.expect("route").into_inner();
    assert_eq!(r.status, pb::RouteStatus::Routed as i32, "{r:?}");
    let cost = report(c, &r, 250).await;
    (r, cost)
}

/// Waits (up to 10 s) for the "race" budget's spend to reach `acked` once
/// Redis is back and the journal replayed.
async fn assert_spend_becomes(c: &RouterClient<Channel>, acked: i64) {
    let replayed = eventually(Duration::from_secs(10), || {
        let mut c = c.clone();
        async move {
            c.get_budget(pb::GetBudgetRequest {
                workflow: "race".into(),
            })
            .await
            .is_ok_and(|b| b.into_inner().spent_nanousd == acked)
        }
    })
    .await;
    assert!(
        replayed,
        "spend after recovery: {:?}",
        budget(&mut c.clone(), "race").await
    );
}

/// `switchyard report --workflow race --format json` on the Redis at `url`.
fn race_report(url: &str, rules: &std::path::Path) -> serde_json::Value {
    let out = std::process::Command::new(BIN)
        .args([
            "report",
            "--workflow",
            "race",
            "--format",
            "json",
            "--redis-url",
            url,
            "--rules",
        ])
        .arg(rules.join("rules.toml"))
        .output()
        .expect("report");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// A state folder for a server the test restarts on it, and its path as
/// a flag value.
fn state_folder() -> (tempfile::TempDir, String) {
    let state = tempfile::tempdir().expect("state");
    let path = state.path().to_str().expect("utf-8 path").to_string();
    (state, path)
}

fn metric(server: &Server, name: &str) -> u64 {
    let (_, body) = server.admin_get("/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_sharing_a_redis_cluster_never_overspend_a_dollar() {
    let cluster = redis_server::RedisCluster::start();
    let dir = rules_dir(&race_rules());
    let url = cluster.url();
    let flags = ["--redis-url", url.as_str(), "--redis-timeout-ms", "5000"];
    let a = Server::start(&dir.path().join("rules.toml"), &flags);
    let b = Server::start(&dir.path().join("rules.toml"), &flags);
    race_for_a_dollar(&[a.client().await, b.client().await]).await;
    // The report reads the cluster too.
    let json = race_report(&url, dir.path());
    let spent = budget(&mut a.client().await, "race").await.spent_nanousd;
    assert_eq!(json["workflows"][0]["spend_nanousd"].as_i64(), Some(spent), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_fails_closed_and_counts_nothing_twice_after_it_returns() {
    let mut redis = RedisServer::start();
    let dir = rules_dir(&race_rules());
    let server = Server::start(
        &dir.path().join("rules.toml"),
        &["--redis-url", &redis.url(), "--redis-timeout-ms", "5000"],
    );
    let mut c = server.client().await;
    let mut acked = 0;
    for i in 0..5 {
        acked += route_and_report(&mut c, &format!("before-{i}")).await.1;
    }
    // Routed before the outage, reported during it.
    let in_flight = c.route(call("race", "in-flight")).await.expect("route").into_inner();

    redis.kill9();
    let err = c.route(call("race", "during")).await.expect_err("fails closed");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("fails closed"), "{}", err.message());
    // The usage is acknowledged (journaled), twice, as a client retry would.
    let cost = report(&mut c, &in_flight, 250).await;
    assert_eq!(report(&mut c, &in_flight, 250).await, cost);
    acked += cost;
    assert_eq!(metric(&server, "switchyard_budget_journal_pending"), 2);
    assert!(metric(&server, "switchyard_budget_store_unavailable_total") > 0);

    // Let the sweep meet the outage before Redis returns.
    let noticed = eventually(Duration::from_secs(10), || {
        let log = server.stderr();
        async move { log.contains("the reservation sweep is failing") }
    })
    .await;
    assert!(noticed, "{}", server.stderr());
    redis.restart();
    assert_spend_becomes(&c, acked).await;
    // Redis shows the spend a moment before the sweep drops the replayed
    // entry from the local journal.
    let drained = eventually(Duration::from_secs(10), || {
        let pending = metric(&server, "switchyard_budget_journal_pending");
        async move { pending == 0 }
    })
    .await;
    assert!(
        drained,
        "journal pending: {}",
        metric(&server, "switchyard_budget_journal_pending")
    );
    let b = budget(&mut c, "race").await;
    assert_eq!(
        (b.spent_nanousd, b.reserved_nanousd),
        (acked, 0),
        "each call counted once"
    );
    // Routing resumes.
    route_and_report(&mut c, "after").await;
    // The outage is logged once, not every second, and so is the recovery.
    let recovered = eventually(Duration::from_secs(10), || {
        let log = server.stderr();
        async move { log.contains("the reservation sweep works again") }
    })
    .await;
    let log = server.stderr();
    assert!(recovered, "{log}");
    assert_eq!(log.matches("the reservation sweep is failing").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_fails_open_up_to_the_local_cap_when_configured() {
    let mut redis = RedisServer::start();
    let dir = rules_dir(&race_rules());
    // Each call is estimated at about 1.5 cents: the 4-cent cap admits two.
    let server = Server::start(
        &dir.path().join("rules.toml"),
        &[
            "--redis-url",
            &redis.url(),
            "--redis-fail-open-usd",
            "0.04",
            "--redis-timeout-ms",
            "5000",
        ],
    );
    let mut c = server.client().await;
    let mut acked = route_and_report(&mut c, "before").await.1;
    redis.kill9();
    let mut admitted = 0;
    loop {
        match c.route(call("race", &format!("open-{admitted}"))).await {
            Ok(r) => {
                acked += report(&mut c, &r.into_inner(), 250).await;
                admitted += 1;
            }
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable);
                assert!(e.message().contains("fail-open cap"), "{}", e.message());
                break;
            }
        }
        assert!(admitted < 10, "the fail-open cap did not hold");
    }
    assert!(admitted >= 1, "fail-open admitted nothing");
    assert_eq!(metric(&server, "switchyard_budget_fail_open_admitted_total"), admitted);
    redis.restart();
    assert_spend_becomes(&c, acked).await;
}

#[tokio::test]
async fn soft_threshold_downgrades_then_the_limit_escalates_and_approval_resumes() {
    soft_threshold_then_escalation(&[]).await;
}

#[tokio::test]
async fn soft_threshold_and_escalation_work_the_same_on_redis() {
    let redis = RedisServer::start();
    soft_threshold_then_escalation(&["--redis-url", &redis.url(), "--redis-timeout-ms", "5000"]).await;
}

async fn soft_threshold_then_escalation(args: &[&str]) {
    let server = Server::start(&repo_path("routing-rules/examples/budgets.toml"), args);
    let mut c = server.client().await;
    let mut statuses = Vec::new();
    // Each call reserves ~$0.05 on gpt-5-mini (tier 4) and settles at the estimate.
    let escalation = loop {
        let mut req = call("budget-demo", "ticket-9");
        req.max_output_tokens = 25_000;
        let r = c.route(req).await.expect("route").into_inner();
        statuses.push((r.status, r.model.clone()));
        if r.status == pb::RouteStatus::EscalationRequired as i32 {
            assert!(!r.escalation_id.is_empty());
            assert!(!r.model.is_empty(), "the model it would have chosen");
            break r;
        }
        assert!(statuses.len() < 200, "never reached the limit");
        report(&mut c, &r, r.estimated_output_tokens).await;
    };
    let first_downgrade = statuses
        .iter()
        .position(|s| s.0 == pb::RouteStatus::Downgraded as i32)
        .expect("a downgrade");
    assert!(statuses[..first_downgrade]
        .iter()
        .all(|s| s.0 == pb::RouteStatus::Routed as i32 && s.1 == "gpt-5-mini"));
    assert_eq!(statuses[first_downgrade].1, "gpt-5-nano", "stepped down a tier");

    // The same call again finds the same pending escalation.
    let again = c
        .route(call("budget-demo", "ticket-9"))
        .await
        .expect("route")
        .into_inner();
    if again.status == pb::RouteStatus::EscalationRequired as i32 {
        assert_eq!(again.escalation_id, escalation.escalation_id);
    }

    let listed = c
        .list_escalations(pb::ListEscalationsRequest {
            workflow: "budget-demo".into(),
        })
        .await
        .expect("list");
    let e = listed
        .into_inner()
        .escalations
        .into_iter()
        .find(|e| e.escalation_id == escalation.escalation_id)
        .expect("listed");
    assert_eq!(
        (
            e.state.as_str(),
            e.workflow.as_str(),
            e.outcome_id.as_str(),
            e.caller.as_str()
        ),
        ("pending", "budget-demo", "ticket-9", "local")
    );
    assert!(e.amount_nanousd > 0);

    // An approval without an amount is refused; with one, routing resumes.
    let err = c
        .resolve_escalation(pb::ResolveEscalationRequest {
            escalation_id: e.escalation_id.clone(),
            approve: true,
            add_nanousd: 0,
            reason: String::new(),
        })
        .await
        .expect_err("needs an amount");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let resolved = c
        .resolve_escalation(pb::ResolveEscalationRequest {
            escalation_id: e.escalation_id.clone(),
            approve: true,
            add_nanousd: DOLLAR / 2,
            reason: "end of quarter".into(),
        })
        .await
        .expect("approve")
        .into_inner();
    assert_eq!(
        (resolved.state.as_str(), resolved.resolved_by.as_str()),
        ("approved", "local"),
        "resolved by the caller's identity (loopback without keys: `local`)"
    );
    assert!(!resolved.resolved_at.is_empty());
    let b = budget(&mut c, "budget-demo").await;
    assert_eq!(b.limit_nanousd, DOLLAR + DOLLAR / 2);
    let resumed = c
        .route(call("budget-demo", "ticket-9"))
        .await
        .expect("route")
        .into_inner();
    assert_ne!(
        resumed.status,
        pb::RouteStatus::EscalationRequired as i32,
        "{resumed:?}"
    );
    assert_ne!(resumed.status, pb::RouteStatus::Denied as i32, "{resumed:?}");
}

#[tokio::test]
async fn kill_9_and_restart_keep_every_acknowledged_cent() {
    let dir = rules_dir(&race_rules());
    let rules = dir.path().join("rules.toml");
    let (_state, state_arg) = state_folder();
    let mut acked = 0i64;
    let decision;
    {
        let server = Server::start(&rules, &["--state-dir", &state_arg]);
        let mut c = server.client().await;
        let mut last = None;
        for i in 0..10 {
            let r = c
                .route(call("race", &format!("k-{i}")))
                .await
                .expect("route")
                .into_inner();
            acked += report(&mut c, &r, 250).await;
            last = Some(r);
        }
        decision = last.expect("routed");
        server.kill9();
    }
    let server = Server::start(&rules, &["--state-dir", &state_arg]);
    let mut c = server.client().await;
    let b = budget(&mut c, "race").await;
    assert_eq!(
        b.spent_nanousd, acked,
        "every acknowledged nano-dollar survived kill -9"
    );
    // A retried report after the restart is not charged again.
    assert_eq!(report(&mut c, &decision, 250).await, acked / 10);
    assert_eq!(budget(&mut c, "race").await.spent_nanousd, acked);
}

#[tokio::test]
async fn repeated_reports_are_charged_once_and_unknown_decisions_are_not_found() {
    let dir = rules_dir(&race_rules());
    let server = Server::start(&dir.path().join("rules.toml"), &[]);
    let mut c = server.client().await;
    let r = c.route(call("race", "o")).await.expect("route").into_inner();
    let first = report(&mut c, &r, 400).await;
    let second = report(&mut c, &r, 400).await;
    assert_eq!(first, second);
    assert_eq!(budget(&mut c, "race").await.spent_nanousd, first);
    let err = c
        .report_usage(pb::UsageReport {
            decision_id: "no-such-decision".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = c
        .get_budget(pb::GetBudgetRequest {
            workflow: "nope".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn unreported_reservations_expire_and_release_the_budget() {
    let dir = rules_dir(&race_rules());
    let server = Server::start(&dir.path().join("rules.toml"), &["--reservation-ttl-s", "1"]);
    let mut c = server.client().await;
    let r = c.route(call("race", "o")).await.expect("route").into_inner();
    assert_eq!(budget(&mut c, "race").await.reserved_nanousd, r.estimated_cost_nanousd);
    let released = eventually(Duration::from_secs(5), || {
        let mut c = c.clone();
        async move { budget(&mut c, "race").await.reserved_nanousd == 0 }
    })
    .await;
    assert!(released, "the reservation leaked");
    // Usage that arrives late is still charged.
    let cost = report(&mut c, &r, 400).await;
    assert_eq!(budget(&mut c, "race").await.spent_nanousd, cost);
}

#[tokio::test]
async fn the_escalations_cli_lists_approves_and_denies() {
    let rules = &race_rules()
        .replace("limit_usd = 1.0", "limit_usd = 0.03")
        .replace("on_limit = \"deny\"", "on_limit = \"escalate\"");
    let dir = rules_dir(rules);
    let server = Server::start(&dir.path().join("rules.toml"), &[]);
    let mut c = server.client().await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .arg("escalations")
            .args(args)
            .args(["--server", &server.grpc])
            .output()
            .expect("run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert_eq!(cli(&["list"]).1.trim(), "no escalations");
    // The first call fits; the second escalates.
    let r = c.route(call("race", "case-1")).await.expect("route").into_inner();
    report(&mut c, &r, 500).await;
    let esc = c.route(call("race", "case-1")).await.expect("route").into_inner();
    assert_eq!(esc.status, pb::RouteStatus::EscalationRequired as i32, "{esc:?}");

    let (ok, out, _) = cli(&["list", "--json"]);
    assert!(ok);
    let rows: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(rows[0]["escalation_id"], esc.escalation_id.as_str());
    assert_eq!(rows[0]["state"], "pending");

    let (ok, out, err) = cli(&["deny", &esc.escalation_id, "--reason", "not this month"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("denied: "), "{out}");
    let denied = c.route(call("race", "case-1")).await.expect("route").into_inner();
    assert_eq!(denied.status, pb::RouteStatus::Denied as i32);
    assert!(
        denied.reason.contains("was denied by local: not this month"),
        "{}",
        denied.reason
    );

    let (ok, _, err) = cli(&["approve", &esc.escalation_id, "--add-usd", "1"]);
    assert!(!ok, "an escalation is resolved once");
    assert!(err.contains("already denied"), "{err}");
    let (ok, _, err) = cli(&["approve", "esc-nope", "--add-usd", "1"]);
    assert!(!ok && err.contains("NotFound"), "{err}");

    // Each step is in the audit log: the escalation, its denial, the refused approvals.
    // (The writer syncs in the background: wait for the last refusal.)
    let read = || {
        let out = std::process::Command::new(BIN)
            .args(["audit", "--format", "json", "--state-dir"])
            .arg(server.state.path())
            .output()
            .expect("audit");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("record"))
            .collect::<Vec<serde_json::Value>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut records = read();
    while records.iter().filter(|r| r["result"] == "failed").count() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        records = read();
    }
    let find = |action: &str, result: &str| {
        records
            .iter()
            .filter(|r| r["action"] == action && r["result"] == result)
            .count()
    };
    assert!(find("route", "escalation_required") >= 1, "{records:#?}");
    assert_eq!(find("resolve_escalation", "denied"), 1);
    assert_eq!(find("resolve_escalation", "failed"), 2);
    assert!(records
        .iter()
        .any(|r| r["action"] == "resolve_escalation" && r["target"] == esc.escalation_id.as_str()));
}

#[tokio::test]
async fn per_outcome_and_label_caps_stop_their_own_calls_only() {
    let rules = &race_rules().replace(
        "on_limit = \"deny\"",
        "on_limit = \"deny\"\nper_outcome_usd = 0.05\nlabels = [{ label = \"team\", value = \"search\", limit_usd = 0.08 }]",
    );
    let dir = rules_dir(rules);
    let server = Server::start(&dir.path().join("rules.toml"), &[]);
    let mut c = server.client().await;
    // Each call reserves about $0.015 and settles at its estimate.
    let route = |outcome: &str, team: &str| {
        let mut req = call("race", outcome);
        req.labels.insert("team".into(), team.into());
        let mut c = c.clone();
        async move {
            let r = c.route(req).await.expect("route").into_inner();
            if r.status == pb::RouteStatus::Routed as i32 {
                report(&mut c, &r, r.estimated_output_tokens).await;
            }
            r
        }
    };
    // One runaway outcome stops at its $0.05 cap...
    let mut n = 0;
    let stopped = loop {
        let r = route("runaway", "ads").await;
        if r.status == pb::RouteStatus::Denied as i32 {
            break r;
        }
        n += 1;
        assert!(n < 10, "the outcome cap never applied");
    };
    assert!(stopped.reason.contains("race|outcome|runaway"), "{}", stopped.reason);
    // ...while another outcome of the same workflow still routes.
    assert_eq!(route("fresh", "ads").await.status, pb::RouteStatus::Routed as i32);

    // The search team's $0.08 runs out across different outcomes; ads goes on.
    let mut i = 0;
    let stopped = loop {
        let r = route(&format!("search-{i}"), "search").await;
        if r.status == pb::RouteStatus::Denied as i32 {
            break r;
        }
        i += 1;
        assert!(i < 10, "the label budget never applied");
    };
    assert!(stopped.reason.contains("race|label|team=search"), "{}", stopped.reason);
    assert_eq!(route("ads-1", "ads").await.status, pb::RouteStatus::Routed as i32);
    let b = budget(&mut c, "race").await;
    assert!(
        b.spent_nanousd < DOLLAR,
        "the workflow's own budget was not what stopped them: {b:?}"
    );
}

#[tokio::test]
async fn explain_shows_the_budget_as_it_stands() {
    let dir = rules_dir(&race_rules());
    let rules = dir.path().join("rules.toml");
    let (_state, state_arg) = state_folder();
    let explain = || {
        let out = std::process::Command::new(BIN)
            .args(["explain", "--workflow", "race", "--max-output-tokens", "500", "--rules"])
            .arg(&rules)
            .args(["--state-dir", &state_arg, "Summarise the incident report."])
            .output()
            .expect("explain");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    // Before any server ran: nothing spent, and it says so.
    let before = explain();
    assert_eq!(before["budget"]["spent_nanousd"], 0);
    assert_eq!(before["budget"]["limit_nanousd"], DOLLAR);
    assert!(before["budget"]["store"]
        .as_str()
        .expect("store")
        .starts_with("none in"));

    let server = Server::start(&rules, &["--state-dir", &state_arg]);
    let mut c = server.client().await;
    for i in 0..3 {
        let r = c
            .route(call("race", &format!("e-{i}")))
            .await
            .expect("route")
            .into_inner();
        report(&mut c, &r, 400).await;
    }
    let b = budget(&mut c, "race").await;
    let now = explain();
    assert_eq!(now["budget"]["spent_nanousd"].as_i64(), Some(b.spent_nanousd));
    assert_eq!(now["budget"]["remaining_nanousd"].as_i64(), Some(b.remaining_nanousd));
    assert_eq!(now["budget"]["this_call_fits"], true);
    assert!(now["budget"]["period_scope"]
        .as_str()
        .expect("scope")
        .starts_with("race|day|"));
}

/// `explain` paces from the pacer the serving sidecar saved, as `budget
/// status` does: its carried price and its traffic. With a week of traffic
/// and no call yet this period, nothing is due, so the price is the carried
/// one alone: e^5 over a carried 0. A damaged `pacing.json` is refused with
/// its place.
#[test]
fn explain_paces_from_the_saved_pacer() {
    let dir = rules_dir(
        &RulesBuilder::new()
            .model(model("m", 10.0, 30.0, 3).max_output(4000))
            .budgeted("paced", "", "limit_usd = 1.0\nperiod = \"day\"\npacing = \"traffic\"")
            .build(),
    );
    let rules = dir.path().join("rules.toml");
    let (state, state_arg) = state_folder();
    let file = state.path().join("pacing.json");
    let explain = || {
        std::process::Command::new(BIN)
            .args(["explain", "--workflow", "paced", "--rules"])
            .arg(&rules)
            .args(["--state-dir", &state_arg, "Summarise the incident report."])
            .output()
            .expect("explain")
    };
    let price_with = |integral: f64| {
        let week_ago = jiff::Timestamp::now().as_millisecond() - 8 * 86_400_000;
        let traffic = serde_json::to_string(&vec![10u64; 168]).expect("json");
        std::fs::write(
            &file,
            format!(
                "{{\"version\": 1, \"workflows\": {{\"paced\": {{\"integral\": {integral}, \"traffic\": {traffic}, \"since_ms\": {week_ago}}}}}}}"
            ),
        )
        .expect("write");
        let out = explain();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["budget"]["pace"]["target_nanousd"], 0, "nothing is due: {v}");
        v["budget"]["pace"]["spend_price_per_usd"]
            .as_f64()
            .expect("a paced budget's price")
    };
    let (zero, five) = (price_with(0.0), price_with(5.0));
    assert!(
        ((five / zero).ln() - 5.0).abs() < 1e-6,
        "carried e^5: {five} against {zero}"
    );
    std::fs::write(&file, b"{\"version\": 1,\n  \"workflows\": 7}").expect("damage");
    let out = explain();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pacing.json:2:") && err.contains("not a pacing state file"),
        "{err}"
    );
}

/// `race_rules` with the budget leased in slices renewed every second, and
/// a "steady" workflow with room for everything sent to it.
fn leased_race_rules() -> String {
    let lease = "lease = { refresh_s = 1, max_share = 0.5 }";
    RulesBuilder::new()
        .model(model("m", 10.0, 30.0, 3).max_output(4000))
        .budgeted(
            "race",
            "",
            &format!("limit_usd = 1.0\nperiod = \"day\"\non_limit = \"deny\"\n{lease}"),
        )
        .budgeted(
            "steady",
            "",
            &format!("limit_usd = 1000.0\nperiod = \"day\"\non_limit = \"deny\"\n{lease}"),
        )
        .build()
}

/// Requests Redis has read from its clients, from INFO: a pipeline or a
/// script is one, however many commands it runs (those count as commands).
fn redis_requests(redis: &RedisServer) -> u64 {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "INFO", "stats"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("total_reads_processed:")?.trim().parse().ok())
        .expect("total_reads_processed")
}

/// Waits for the servers to have charged what they acknowledged and
/// returned what their slices held.
async fn assert_settles_to(c: &RouterClient<Channel>, workflow: &str, acked: i64) -> pb::BudgetStatus {
    let done = eventually(Duration::from_secs(15), || {
        let mut c = c.clone();
        async move {
            let b = budget(&mut c, workflow).await;
            b.spent_nanousd == acked && b.reserved_nanousd == 0
        }
    })
    .await;
    let b = budget(&mut c.clone(), workflow).await;
    assert!(done, "acknowledged {acked}, store has {b:?}");
    b
}

/// `clients` callers on `servers` route and report `calls` calls each of
/// `workflow`, until denied; returns (acknowledged cost, calls routed).
async fn callers(
    servers: &[RouterClient<Channel>],
    workflow: &'static str,
    clients: usize,
    calls: usize,
    pause: Duration,
) -> (i64, u64) {
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let mut c = servers[i % servers.len()].clone();
            tokio::spawn(async move {
                let (mut acked, mut routed) = (0i64, 0u64);
                for j in 0..calls {
                    let r = c
                        .route(call(workflow, &format!("t-{i}-{j}")))
                        .await
                        .expect("route")
                        .into_inner();
                    if r.status == pb::RouteStatus::Denied as i32 {
                        assert!(r.reason.contains("would exceed"), "{}", r.reason);
                        break;
                    }
                    assert_eq!(r.status, pb::RouteStatus::Routed as i32, "{r:?}");
                    routed += 1;
                    // Below the 500-token estimate: the bound on overspend is zero.
                    acked += report(&mut c, &r, 300 + (i * 7 + j) as u64 % 200).await;
                    tokio::time::sleep(pause).await;
                }
                (acked, routed)
            })
        })
        .collect();
    sum_pairs(tasks).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_leasing_slices_mostly_skip_redis_and_never_overspend() {
    let redis = RedisServer::start();
    let dir = rules_dir(&leased_race_rules());
    let url = redis.url();
    let flags = ["--redis-url", url.as_str(), "--redis-timeout-ms", "5000"];
    let a = Server::start(&dir.path().join("rules.toml"), &flags);
    let b = Server::start(&dir.path().join("rules.toml"), &flags);
    let servers = [a.client().await, b.client().await];

    // Steady traffic for about three refresh periods: most Routes take from
    // a slice, and Redis reads fewer requests than there are calls, where
    // exact reservations need two or more a call (reserve, settle).
    let requests_before = redis_requests(&redis);
    let (acked, routed) = callers(&servers, "steady", 8, 60, Duration::from_millis(40)).await;
    let requests = redis_requests(&redis) - requests_before;
    let leased = metric(&a, "switchyard_lease_routes_total") + metric(&b, "switchyard_lease_routes_total");
    assert!(
        leased * 10 >= routed * 8,
        "{leased} of {routed} Routes took from a slice"
    );
    assert!(
        requests < routed,
        "{requests} requests to Redis for {routed} calls, {leased} of them from a slice"
    );
    assert!(metric(&a, "switchyard_lease_renewals_total") > 0);
    // Acknowledged spend reaches Redis with the next renewals.
    let spent = eventually(Duration::from_secs(10), || {
        let mut c = servers[0].clone();
        async move { budget(&mut c, "steady").await.spent_nanousd == acked }
    })
    .await;
    assert!(
        spent,
        "{:?} against {acked} acknowledged",
        budget(&mut servers[0].clone(), "steady").await
    );

    // 32 callers race for a dollar: never more than the dollar, and little
    // of it left stranded in slices.
    let (acked, routed) = callers(&servers, "race", 32, 40, Duration::ZERO).await;
    let st = assert_settles_to(&servers[0], "race", acked).await;
    assert!(st.spent_nanousd <= DOLLAR, "overspent: {st:?}");
    assert!(
        st.spent_nanousd > DOLLAR * 8 / 10,
        "the budget was used, not stranded in slices: {st:?}"
    );
    // Every call is in the ledger once.
    let json = race_report(&url, dir.path());
    assert_eq!(json["workflows"][0]["spend_nanousd"].as_i64(), Some(acked), "{json}");
    assert_eq!(json["workflows"][0]["calls"].as_u64(), Some(routed), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_holding_a_slice_loses_no_spend_and_strands_it_only_until_it_expires() {
    let redis = RedisServer::start();
    let dir = rules_dir(&leased_race_rules());
    let url = redis.url();
    let (_state, state_dir) = state_folder();
    let flags = [
        "--redis-url",
        url.as_str(),
        "--redis-timeout-ms",
        "5000",
        "--state-dir",
        &state_dir,
    ];
    let a = Server::start(&dir.path().join("rules.toml"), &flags);
    let mut c = a.client().await;
    let mut acked = route_and_report(&mut c, "first").await.1;
    assert!(
        eventually(Duration::from_secs(5), || {
            let a = &a;
            async move { metric(a, "switchyard_lease_held_nanousd") > 0 }
        })
        .await,
        "a slice was leased"
    );
    // Routed and reported against the slice: acknowledged, not yet in Redis.
    for i in 0..5 {
        acked += route_and_report(&mut c, &format!("leased-{i}")).await.1;
    }
    assert!(metric(&a, "switchyard_lease_routes_total") >= 1);
    a.kill9();
    // The slice is still held in Redis, until it expires (3 × refresh_s).
    let observer = Server::start(&dir.path().join("rules.toml"), &["--redis-url", url.as_str()]);
    let mut o = observer.client().await;
    // The killed server's acknowledged settlements come back with it, from
    // its journal, once each.
    let back = Server::start(&dir.path().join("rules.toml"), &flags);
    let st = assert_settles_to(&back.client().await, "race", acked).await;
    assert_eq!(st.spent_nanousd, acked);
    // And routing goes on.
    acked += route_and_report(&mut o, "after").await.1;
    assert_settles_to(&o, "race", acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_that_lost_acknowledged_state_fails_closed_until_reconciled_from_the_journals() {
    let redis = RedisServer::start();
    let dir = rules_dir(&race_rules());
    let url = redis.url();
    let (state, state_dir) = state_folder();
    let a = Server::start(
        &dir.path().join("rules.toml"),
        &[
            "--redis-url",
            url.as_str(),
            "--redis-timeout-ms",
            "5000",
            "--state-dir",
            &state_dir,
        ],
    );
    let b = Server::start(&dir.path().join("rules.toml"), &["--redis-url", url.as_str()]);
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let mut acked = 0;
    for i in 0..5 {
        acked += route_and_report(&mut ca, &format!("before-{i}")).await.1;
    }
    let before = acked;
    let in_flight = ca.route(call("race", "in-flight")).await.expect("route").into_inner();

    // Redis restarts empty, as one without persistence would.
    let flushed = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "FLUSHALL"])
        .output()
        .expect("redis-cli");
    assert!(flushed.status.success());
    // The sidecar that was acknowledged settlements notices, and refuses.
    let err = ca.route(call("race", "after-loss")).await.expect_err("fails closed");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("switchyard budget reconcile"),
        "{}",
        err.message()
    );
    // So does every other sidecar, through the mark it left.
    let err = cb.route(call("race", "other")).await.expect_err("fails closed too");
    assert!(err.message().contains("lost budget state"), "{}", err.message());
    assert_eq!(metric(&a, "switchyard_budget_state_lost"), 1);
    let (status, _) = a.admin_get("/readyz");
    assert_eq!(status, 503);
    // Usage still arrives and is kept (journaled), not lost.
    acked += report(&mut ca, &in_flight, 250).await;
    let audited = eventually(Duration::from_secs(10), || {
        let path = state.path().to_path_buf();
        async move { !audit(&path, &["--action", "store_state_lost"]).is_empty() }
    })
    .await;
    assert!(audited, "the loss is in the audit log");

    // Reconcile from the journal: a dry run first changes nothing.
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(["budget", "reconcile", "--redis-url", &url, "--journal", &state_dir])
            .args(extra)
            .output()
            .expect("reconcile");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let table = std::process::Command::new(BIN)
        .args([
            "budget",
            "reconcile",
            "--redis-url",
            &url,
            "--journal",
            &state_dir,
            "--dry-run",
        ])
        .output()
        .expect("reconcile");
    let table = String::from_utf8_lossy(&table.stdout);
    eprintln!("{table}");
    assert!(
        table.contains("would reconcile from 1 sidecar journals (dry run: nothing written)"),
        "{table}"
    );
    assert!(table.contains("(state lost; noticed by sidecar "), "{table}");
    let dry = run(&["--dry-run", "--format", "json"]);
    assert_eq!(dry["workflows"][0]["scopes"][0]["spent_before_nanousd"], 0, "{dry}");
    assert!(ca.route(call("race", "still-lost")).await.is_err());
    let done = run(&["--format", "json"]);
    let scope = &done["workflows"][0]["scopes"][0];
    assert_eq!(
        done["workflows"][0]["lost_noticed_by"].as_str().map(str::len),
        Some(32),
        "{done}"
    );
    // The journal holds what Redis acknowledged before it lost it.
    assert_eq!(scope["journals_nanousd"].as_i64(), Some(before), "{done}");
    assert_eq!(scope["spent_after_nanousd"].as_i64(), Some(before), "{done}");
    // Routing resumes, and the counters hold everything acknowledged: the
    // journaled report is replayed on top of what reconcile restored.
    acked += route_and_report(&mut ca, "after-reconcile").await.1;
    assert_spend_becomes(&ca, acked).await;
    route_and_report(&mut cb, "b-after").await;
    assert_eq!(metric(&a, "switchyard_budget_state_lost"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_takes_lease_away_mid_flight_loses_nothing_and_returns_the_slices() {
    let redis = RedisServer::start();
    let dir = rules_dir(&leased_race_rules());
    let rules = dir.path().join("rules.toml");
    let url = redis.url();
    let server = Server::start(&rules, &["--redis-url", url.as_str(), "--redis-timeout-ms", "5000"]);
    let c = server.client().await;
    // Steady calls, and half a second in, the rules lose `lease`.
    let reload = {
        let (rules, text) = (rules.clone(), leased_race_rules());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let tmp = rules.with_extension("tmp");
            std::fs::write(&tmp, text.replace("lease = { refresh_s = 1, max_share = 0.5 }", "")).expect("write");
            std::fs::rename(&tmp, &rules).expect("rename");
        })
    };
    let (acked, _) = callers(std::slice::from_ref(&c), "steady", 4, 40, Duration::from_millis(25)).await;
    reload.await.expect("reload");
    let leased = metric(&server, "switchyard_lease_routes_total");
    assert!(leased > 0, "some calls took from a slice before the reload");
    // Everything acknowledged is charged, and once idle for three refresh
    // periods the slice is given back.
    assert_settles_to(&c, "steady", acked).await;
    // From now on the workflow reserves exactly.
    let (more, routed) = callers(std::slice::from_ref(&c), "steady", 2, 10, Duration::ZERO).await;
    assert_eq!(routed, 20);
    assert_eq!(metric(&server, "switchyard_lease_routes_total"), leased);
    assert_settles_to(&c, "steady", acked + more).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_concurrent_reports_of_a_leased_call_are_charged_once() {
    let redis = RedisServer::start();
    let dir = rules_dir(&leased_race_rules());
    let url = redis.url();
    let server = Server::start(&dir.path().join("rules.toml"), &["--redis-url", url.as_str()]);
    let mut c = server.client().await;
    let mut acked = route_and_report(&mut c, "first").await.1;
    let leased = eventually(Duration::from_secs(5), || {
        let s = &server;
        async move { metric(s, "switchyard_lease_held_nanousd") > 0 }
    })
    .await;
    assert!(leased, "a slice was leased");
    let before = metric(&server, "switchyard_lease_routes_total");
    let r = c.route(call("race", "dup")).await.expect("route").into_inner();
    assert_eq!(
        metric(&server, "switchyard_lease_routes_total"),
        before + 1,
        "routed from the slice"
    );
    // Eight reports of the same call at once, as retries racing would.
    let reports: Vec<_> = (0..8)
        .map(|_| {
            let (mut c, r) = (c.clone(), r.clone());
            tokio::spawn(async move { report(&mut c, &r, 300).await })
        })
        .collect();
    let mut costs = Vec::new();
    for t in reports {
        costs.push(t.await.expect("report"));
    }
    assert!(costs.iter().all(|&x| x == costs[0]), "{costs:?}");
    acked += costs[0];
    assert_settles_to(&c, "race", acked).await;
}

/// A paced budget's gauge `family` on `server` for `workflow`, as its
/// /metrics shows it.
fn pace_gauge(server: &Server, family: &str, workflow: &str) -> Option<f64> {
    let (_, body) = server.admin_get("/metrics");
    let prefix = format!("{family}{{workflow=\"{workflow}\"}}");
    body.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

/// Two sidecars pacing one workflow through a shared Redis read the same
/// spend, so they set nearly the same price; and a call reports that
/// pacing decided it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_sharing_a_paced_budget_agree_on_its_price() {
    let redis = RedisServer::start();
    let rules = RulesBuilder::new()
        .model(model("small", 0.1, 0.4, 3).max_output(4000))
        .model(model("large", 10.0, 30.0, 4).max_output(4000))
        .budgeted(
            "paced",
            "",
            "limit_usd = 1.0\nperiod = \"day\"\npacing = \"even\"\non_limit = \"deny\"",
        )
        .build();
    let dir = rules_dir(&rules);
    let url = redis.url();
    let flags = ["--redis-url", url.as_str()];
    let a = Server::start(&dir.path().join("rules.toml"), &flags);
    let b = Server::start(&dir.path().join("rules.toml"), &flags);
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    // Only sidecar A spends; B must still see it.
    for i in 0..40 {
        let r = ca
            .route(call("paced", &format!("o-{i}")))
            .await
            .expect("route")
            .into_inner();
        assert!(r.reason.starts_with("paced ("), "{}", r.reason);
    }
    // Past the 250 ms view, one more call each reads the shared spend. The
    // second of them also sees the first's reservation; near the target a
    // 500-token reservation (1.5% of the budget) moves the price by e^1.2,
    // so these reserve next to nothing and the two views are the same spend.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for c in [&mut ca, &mut cb] {
        let mut last = call("paced", "last");
        last.max_output_tokens = 1;
        c.route(last).await.expect("route");
    }
    // The gauges are read anew every 5 s while someone scrapes.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (pa, pb) = loop {
        let price = |s: &Server| pace_gauge(s, "switchyard_budget_spend_price", "paced");
        if let (Some(x), Some(y)) = (price(&a), price(&b)) {
            break (x, y);
        }
        assert!(std::time::Instant::now() < deadline, "both sidecars export the price");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(pa > 0.0 && pb > 0.0, "{pa} {pb}");
    assert!(
        (pa.ln() - pb.ln()).abs() < 0.5,
        "sidecars disagree on the price: {pa} and {pb}"
    );
    // Late in the day the target is far above 40 calls' spend and both prices
    // sit at the floor, so the spend each read is checked as well, as a share
    // of the budget: B's is A's (at least 40 small calls, 0.8%), not its own
    // one call (0.02%).
    let due = {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock");
        (now.as_secs_f64() % 86_400.0) / 86_400.0
    };
    let read = |s: &Server| {
        let ratio = pace_gauge(s, "switchyard_budget_pace_ratio", "paced").expect("pace ratio");
        ratio * switchyard::budget::pacing::AIM * due
    };
    let (sa, sb) = (read(&a), read(&b));
    assert!(
        sb > 0.005 && (sa - sb).abs() < 0.002,
        "the spend each sidecar paced by, as a share of the budget: A {sa}, B {sb}"
    );
    // The dashboard marks the target on the spend bar and states the pace.
    let (status, page) = a.admin_get("/");
    assert_eq!(status, 200);
    assert!(page.contains("<title>paced target</title>"), "{page}");
    assert!(page.contains("id=\"pace-paced\">paced (even): target so far"), "{page}");
    // And plots the period's target curve: even pacing, a straight line from
    // nothing at the day's start to 98% of the limit at its end.
    let chart = page
        .split("id=\"pace-curve-paced\"")
        .nth(1)
        .expect("the pace chart")
        .split("</svg>")
        .next()
        .unwrap_or_default();
    let points: Vec<(f64, f64)> = chart
        .split("<polyline points=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the target curve")
        .split(' ')
        .map(|p| {
            let (x, y) = p.split_once(',').expect("x,y");
            (x.parse().expect("x"), y.parse().expect("y"))
        })
        .collect();
    assert_eq!(points.len(), 49, "{chart}");
    assert_eq!(points[0], (4.0, 86.0), "the curve starts at nothing spent");
    let (last_x, last_y) = points[48];
    assert_eq!(last_x, 296.0);
    assert!(
        (last_y - (86.0 - 0.98 / 1.1 * 82.0)).abs() < 0.11,
        "ends at 98% of the limit: {last_y}"
    );
    // Drawn to a tenth of a unit, every point lies on the line.
    let on_line = |&(x, _): &(f64, f64)| 86.0 + (x - 4.0) * (last_y - 86.0) / (last_x - 4.0);
    assert!(
        points.iter().all(|p| (p.1 - on_line(p)).abs() < 0.15),
        "even pacing is a straight line: {points:?}"
    );
    assert!(chart.contains("<title>spent and reserved $"), "{chart}");
}
