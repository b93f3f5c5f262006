//! Hostile connections and careless tenants, each finding of the last
//! adversarial pass tried again against the real server on loopback:
//! stream floods, idle and half-sent connections, another caller's outcome,
//! many learning workflows, oversized labels, a budget scope changed under
//! load, an emptied Redis, and big prompts beside small ones. Every loop is
//! bounded in count and time.

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use common::*;
use redis_server::RedisServer;
use switchyard::grpc::pb;

/// The server's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

const BUDGETED: &str = r#"
[[models]]
name = "small"
provider = "openai"
input_per_mtok = 1.0
cached_input_per_mtok = 0.1
output_per_mtok = 1.0
context_window = 400000
max_output_tokens = 128000
tiers = { general = 2 }

[[workflows]]
name = "w"
[workflows.budget]
limit_usd = 1.0
period = "day"
on_limit = "deny"

[[workflows]]
name = "open"
"#;

/// Opens `streams` Route streams on one raw HTTP/2 connection, each with
/// headers and no body, and returns the grpc-status each one is answered with.
async fn stuck_streams(addr: &str, streams: usize) -> (usize, Vec<String>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("ready");
    let mut answers = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..streams {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}/switchyard.v1.Router/Route"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let (resp, body) = client.send_request(req, false).expect("send");
        bodies.push(body);
        answers.push(resp);
    }
    // The server's SETTINGS have arrived by the time anything is answered.
    let mut codes = Vec::new();
    let mut max = 0;
    for a in answers {
        let resp = match tokio::time::timeout(Duration::from_secs(30), a)
            .await
            .expect("answered within 30 s")
        {
            Ok(r) => r,
            // Streams past the cap that were opened before the server's
            // SETTINGS arrived are refused, as HTTP/2 says.
            Err(e) if e.reason() == Some(h2::Reason::REFUSED_STREAM) => {
                codes.push("refused_stream".to_string());
                continue;
            }
            Err(e) => panic!("stream failed: {e}"),
        };
        max = max.max(client.current_max_send_streams());
        let code = resp
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap_or("?").to_string())
            .unwrap_or_else(|| "none".into());
        codes.push(code);
    }
    drop(bodies);
    (max, codes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_flood_is_capped_answered_and_gives_its_memory_back() {
    let rules = rules_dir(BUDGETED);
    let server = Server::start(
        &rules.path().join("rules.toml"),
        &["--request-timeout-s", "2", "--max-in-flight", "400"],
    );
    let mut c = server.client().await;
    for _ in 0..50 {
        c.route(request("open", "warm up the tokenizer and caches"))
            .await
            .expect("route");
    }
    let before = rss_kib(server.pid());
    // Four connections, 300 streams each with headers and no body.
    let flood: Vec<_> = (0..4)
        .map(|_| {
            let addr = server.grpc.clone();
            tokio::spawn(async move { stuck_streams(&addr, 300).await })
        })
        .collect();
    let mut codes = Vec::new();
    for f in flood {
        let (max, c) = f.await.expect("flood");
        assert_eq!(max, 256, "the server advertises its stream cap");
        codes.extend(c);
    }
    let count = |code: &str| codes.iter().filter(|c| c.as_str() == code).count();
    assert_eq!(codes.len(), 1200);
    assert!(
        count("8") > 0,
        "over the port's 400 in flight, RESOURCE_EXHAUSTED at once: {codes:?}"
    );
    assert!(count("4") >= 400, "stuck streams time out with DEADLINE_EXCEEDED");
    assert_eq!(
        count("8") + count("4") + count("refused_stream"),
        1200,
        "every stream answered with a status or refused over the cap: {codes:?}"
    );
    let refused = |reason: &str| {
        metric_at(
            &server.admin,
            &format!("switchyard_connection_refusals_total{{port=\"grpc\",reason=\"{reason}\"}}"),
        )
    };
    assert!(refused("max_in_flight") > 0 && refused("request_timeout") >= 400);
    // Serving again, and the memory back.
    c.route(request("open", "after the flood"))
        .await
        .expect("route after the flood");
    let mut after = rss_kib(server.pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    while after > before * 12 / 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = rss_kib(server.pid());
    }
    assert!(
        after <= before * 12 / 10,
        "RSS went from {before} KiB to {after} KiB after the flood"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_are_closed_and_the_cap_keeps_fds_for_the_rest() {
    let rules = rules_dir(BUDGETED);
    let server = Server::start(
        &rules.path().join("rules.toml"),
        &[
            "--header-read-timeout-s",
            "1",
            "--idle-timeout-s",
            "2",
            "--max-connections",
            "100",
            "--admin-max-connections",
            "20",
        ],
    );
    // 150 idle gRPC connections (over the cap of 100) and 30 half-sent admin requests.
    let mut idle = Vec::new();
    for _ in 0..150 {
        idle.push(std::net::TcpStream::connect(&server.grpc).expect("connect"));
    }
    let admin_addr = server.admin.trim_start_matches("http://").to_string();
    let mut half = Vec::new();
    for _ in 0..30 {
        let mut s = std::net::TcpStream::connect(&admin_addr).expect("connect admin");
        std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nHost: x\r\n").expect("half a request");
        half.push(s);
    }
    let all_closed = |socks: &mut Vec<std::net::TcpStream>| {
        socks.iter_mut().all(|s| {
            s.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
            let mut buf = [0u8; 512];
            loop {
                match std::io::Read::read(s, &mut buf) {
                    Ok(0) => return true,
                    Ok(_) => continue,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        return false
                    }
                    Err(_) => return true,
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(all_closed(&mut idle) && all_closed(&mut half)) {
        assert!(
            Instant::now() < deadline,
            "idle and half-sent connections still open after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Readiness is answerable, and a real client gets through, once the
    // idle ones are closed.
    let ready = server.admin_get_until("/readyz", Duration::from_secs(10), |b| b.contains("ready"));
    assert!(ready.contains("ready"));
    let mut c = server.client().await;
    c.route(request("open", "a real call after the flood of idle connections"))
        .await
        .expect("route");
    let refused = |port: &str, reason: &str| {
        metric_at(
            &server.admin,
            &format!("switchyard_connection_refusals_total{{port=\"{port}\",reason=\"{reason}\"}}"),
        )
    };
    assert!(
        refused("grpc", "max_connections") >= 50,
        "over the cap, closed at accept"
    );
    assert!(
        refused("grpc", "header_read_timeout") >= 90,
        "idle before any request, closed"
    );
    assert!(refused("admin", "max_connections") >= 10);
    assert!(metric_at(&server.admin, "switchyard_connections_max{port=\"grpc\"}") <= 100);
    // The server is not spinning on accept: a few seconds of this cost well
    // under a second of CPU.
    let cpu = server.cpu_time();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        server.cpu_time() - cpu < Duration::from_millis(500),
        "idle server burns CPU"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_belongs_to_the_callers_that_routed_under_it() {
    let rules = rules_dir(&format!(
        "{BUDGETED}\n[[workflows]]\nname = \"graded\"\noutcome_recorders = [\"grader\"]\n"
    ));
    let dir = tempfile::tempdir().expect("tmp");
    let keys = keys_file(dir.path(), &key_entry("grader", "key-g", "\"caller\""));
    let server = Server::start(
        &rules.path().join("rules.toml"),
        &["--api-keys", keys.to_str().expect("utf-8")],
    );
    let mut c = server.client().await;
    for wf in ["open", "graded"] {
        let mut r = request(wf, "summarise the ticket");
        r.outcome_id = "ticket-1".into();
        c.route(keyed(r, "key-a")).await.expect("agent-a routes");
    }
    let outcome = |wf: &str, status: pb::OutcomeStatus| pb::OutcomeReport {
        outcome_id: "ticket-1".into(),
        workflow: wf.into(),
        status: status as i32,
        ..Default::default()
    };
    c.record_outcome(keyed(outcome("open", pb::OutcomeStatus::Accepted), "key-a"))
        .await
        .expect("the caller that routed records its outcome");
    let err = c
        .record_outcome(keyed(outcome("open", pb::OutcomeStatus::Rejected), "key-b"))
        .await
        .expect_err("another caller may not");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("outcome_recorders"), "{}", err.message());
    c.record_outcome(keyed(outcome("graded", pb::OutcomeStatus::Rejected), "key-g"))
        .await
        .expect("a named grader may");
    c.record_outcome(keyed(outcome("open", pb::OutcomeStatus::Corrected), "key-ops"))
        .await
        .expect("an admin may, and overwrites");
    let overwritten = |state: &std::path::Path| -> Vec<serde_json::Value> {
        audit(state, &[])
            .into_iter()
            .filter(|r| r["result"] == "overwritten")
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while overwritten(server.state.path()).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = overwritten(server.state.path());
    assert_eq!(records.len(), 1, "{records:?}");
    let why = records[0]["reason"].as_str().unwrap_or_default();
    assert!(why.contains("agent-a") && why.contains("ops"), "both identities: {why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_over_their_limits_are_refused_naming_the_limit() {
    let rules = rules_dir(BUDGETED);
    let state = tempfile::tempdir().expect("state");
    let state_dir = state.path().to_str().expect("utf-8").to_string();
    let server = Server::start(&rules.path().join("rules.toml"), &["--state-dir", &state_dir]);
    let mut c = server.client().await;
    let with = |labels: Vec<(String, String)>| {
        let mut r = request("open", "hello");
        r.labels = labels.into_iter().collect();
        r
    };
    let many = (0..17).map(|i| (format!("k{i}"), "v".to_string())).collect();
    let err = c.route(with(many)).await.expect_err("17 labels");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("at most 16 labels"), "{}", err.message());
    let err = c
        .route(with(vec![("k".repeat(65), "v".into())]))
        .await
        .expect_err("long key");
    assert!(err.message().contains("1 to 64 bytes"), "{}", err.message());
    let err = c
        .route(with(vec![("k".into(), "v".repeat(257))]))
        .await
        .expect_err("long value");
    assert!(err.message().contains("at most 256 bytes"), "{}", err.message());
    // At the limits, fine; the same label set is stored once however many
    // Routes carry it.
    let full: Vec<_> = (0..16).map(|i| (format!("{i:0>64}"), "v".repeat(256))).collect();
    for _ in 0..200 {
        c.route(with(full.clone())).await.expect("at the limits");
    }
    server.terminate();
    assert_eq!(
        rusqlite_count(state.path(), "SELECT COUNT(*) FROM label_sets"),
        1,
        "one stored copy of the label set"
    );
    assert_eq!(
        rusqlite_count(
            state.path(),
            "SELECT COUNT(*) FROM reservations WHERE label_set IS NOT NULL"
        ),
        200
    );
}

/// `switchyard serve` on free ports with `rules`, `state` and `extra` flags.
fn serve_command(rules: &std::path::Path, state: &std::path::Path, extra: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(BIN);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--rules",
    ])
    .arg(rules)
    .arg("--state-dir")
    .arg(state)
    .args(extra);
    cmd
}

/// Runs a command that should exit by itself, killing it after 20 s (a
/// server that started when it should have refused fails the test, not CI).
fn briefly(cmd: &mut std::process::Command) -> std::process::Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .arg("-9")
                .arg(pid.to_string())
                .status();
            panic!("the command was still running after 20 s: it should have refused to start")
        }
    }
}

/// A count from the embedded store, read after the server stopped.
fn rusqlite_count(state: &std::path::Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(state.join(switchyard::store::sqlite::FILE)).expect("open the store");
    conn.query_row(sql, [], |r| r.get(0)).expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_scope_change_is_refused_at_its_key_unless_allowed_and_audited() {
    let rules = rules_dir(BUDGETED);
    let path = rules.path().join("rules.toml");
    let state_dir = tempfile::tempdir().expect("state");
    let state = state_dir.path().to_path_buf();
    let server = Server::start(&path, &["--state-dir", state.to_str().expect("utf-8")]);
    let mut c = server.client().await;
    c.route(request("w", "spend a little")).await.expect("route");
    // Switch the period under the running server: the reload is refused at the key.
    std::fs::write(&path, BUDGETED.replace("period = \"day\"", "period = \"week\"")).expect("edit");
    let health = server.admin_get_until("/healthz", Duration::from_secs(10), |b| b.contains("allow-scope-reset"));
    assert!(health.contains("rules.toml:"), "file:line:col in {health}");
    assert!(health.contains("--allow-scope-reset"), "{health}");
    let status = c
        .get_budget(pb::GetBudgetRequest { workflow: "w".into() })
        .await
        .expect("budget")
        .into_inner();
    assert!(
        status.spent_nanousd + status.reserved_nanousd > 0,
        "still the day's scope"
    );
    // `check` against the state folder says the same before a deploy.
    let out = std::process::Command::new(BIN)
        .args(["check", "--rules"])
        .arg(&path)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .expect("check");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rules.toml:") && err.contains("--allow-scope-reset"),
        "{err}"
    );
    server.terminate();
    // Restarted on the changed rules, it refuses to start.
    let out = briefly(&mut serve_command(&path, &state, &[]));
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-scope-reset"));
    // With the flag it starts, and the fresh scope is audited.
    let mut again = serve_command(&path, &state, &["--allow-scope-reset"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut found = false;
    while Instant::now() < deadline && !found {
        tokio::time::sleep(Duration::from_millis(200)).await;
        found = audit(&state, &[]).iter().any(|r| r["action"] == "budget_scope_reset");
    }
    let _ = again.kill();
    let _ = again.wait();
    assert!(found, "the fresh scope is audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_redis_is_not_trusted() {
    let redis = RedisServer::start();
    let url = redis.url();
    let rules = rules_dir(BUDGETED);
    let path = rules.path().join("rules.toml");
    let server = Server::start(&path, &["--redis-url", &url, "--redis-timeout-ms", "5000"]);
    let mut c = server.client().await;
    c.route(request("w", "spend a little")).await.expect("route");
    let decision_id = c
        .route(request("w", "and a little more"))
        .await
        .expect("route")
        .into_inner()
        .decision_id;
    c.report_usage(pb::UsageReport {
        decision_id,
        input_tokens: 1000,
        output_tokens: 1000,
        ..Default::default()
    })
    .await
    .expect("usage acknowledged");
    // Redis emptied while serving.
    let flushed = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "FLUSHALL"])
        .status()
        .expect("redis-cli");
    assert!(flushed.success());
    // Route notices (the acks no longer match), and GetBudget answers
    // UNAVAILABLE rather than a whole limit remaining.
    let _ = c.route(request("w", "after the flush")).await;
    let err = c
        .get_budget(pb::GetBudgetRequest { workflow: "w".into() })
        .await
        .expect_err("no budget from an emptied store");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("budget reconcile"), "{}", err.message());
    // A sidecar that never saw this Redis refuses to start on it ...
    let fresh_state = tempfile::tempdir().expect("tmp");
    let out = briefly(&mut serve_command(&path, fresh_state.path(), &["--redis-url", &url]));
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("budget init") && err.contains("--accept-fresh-store"),
        "{err}"
    );
    // ... until an operator says the store is new.
    let init = std::process::Command::new(BIN)
        .args(["budget", "init", "--redis-url", &url])
        .output()
        .expect("budget init");
    assert!(init.status.success());
    assert!(String::from_utf8_lossy(&init.stdout).contains("initialised"));
    let fresh = Server::start(&path, &["--redis-url", &url, "--redis-timeout-ms", "5000"]);
    fresh
        .client()
        .await
        .route(request("open", "hello"))
        .await
        .expect("serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_learning_workflows_cost_memory_in_proportion_and_stop_in_time() {
    let mut text = String::from(BUDGETED);
    // 2,000 in CI; SWITCHYARD_HOSTILE_WORKFLOWS=10000 tries the finding's size.
    let n: usize = std::env::var("SWITCHYARD_HOSTILE_WORKFLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    for i in 0..n {
        text.push_str(&format!(
            "\n[[workflows]]\nname = \"wf{i}\"\n[workflows.learning]\nenabled = true\n"
        ));
    }
    let rules = rules_dir(&text);
    let server = Server::start(&rules.path().join("rules.toml"), &["--learning-memory-mib", "1"]);
    let mut c = server.client().await;
    let before = rss_kib(server.pid());
    for i in 0..n {
        let wf = format!("wf{i}");
        let mut r = request(
            &wf,
            &format!(
                "design a plan for step {i} of the migration, with numbers {i} and {}",
                i * 7
            ),
        );
        r.outcome_id = format!("o{i}");
        c.route(r).await.expect("route");
        c.record_outcome(pb::OutcomeReport {
            outcome_id: format!("o{i}"),
            workflow: wf,
            status: pb::OutcomeStatus::Accepted as i32,
            ..Default::default()
        })
        .await
        .expect("outcome");
    }
    let applied = |s: &Server| metric_at(&s.admin, "switchyard_learning_applied_total");
    assert!(
        eventually(Duration::from_secs(120), || async { applied(&server) >= n as u64 }).await,
        "every label folded in"
    );
    let held = metric_at(&server.admin, "switchyard_learning_memory_bytes");
    assert!(held > 0 && held <= 1024 * 1024, "held {held} bytes, ceiling 1 MiB");
    assert!(
        metric_at(&server.admin, "switchyard_learning_evictions_total") > 0,
        "evicted past the ceiling"
    );
    let grown = rss_kib(server.pid()).saturating_sub(before);
    assert!(grown < 200 * 1024, "{n} one-label workflows grew RSS by {grown} KiB");
    let started = Instant::now();
    let status = server.terminate();
    assert!(status.success());
    eprintln!(
        "{n} learning workflows: RSS +{grown} KiB, learned state {held} bytes, SIGTERM took {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "SIGTERM took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_prompts_wait_their_turn_and_small_routes_keep_their_latency() {
    let rules = rules_dir(BUDGETED);
    let server = Server::start(&rules.path().join("rules.toml"), &["--tokenize-threads", "1"]);
    let mut c = server.client().await;
    let small = |c: &mut pb::router_client::RouterClient<tonic::transport::Channel>| {
        let mut c = c.clone();
        async move {
            let t = Instant::now();
            c.route(request("open", "what is the capital of France?"))
                .await
                .expect("small");
            t.elapsed()
        }
    };
    // The small Route's latency alone.
    let mut alone = Vec::new();
    for _ in 0..20 {
        alone.push(small(&mut c).await);
    }
    alone.sort();
    // Sixteen 1.7 MB prompts at once, on their own connections.
    let big = "lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(30_000);
    let mut flood = Vec::new();
    for _ in 0..16 {
        let mut bc = server.client().await;
        let text = big.clone();
        flood.push(tokio::spawn(async move {
            bc.route(request("open", &text)).await.map(|_| ())
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut during = Vec::new();
    for _ in 0..20 {
        during.push(small(&mut c).await);
    }
    during.sort();
    for f in flood {
        f.await.expect("join").expect("big route answered");
    }
    let p90 = during[17];
    assert!(
        p90 < Duration::from_millis(500),
        "small Routes beside 16 big ones: p90 {p90:?} (alone {:?})",
        alone[17]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_low_descriptor_limit_the_caps_leave_room_and_the_server_keeps_serving() {
    // The server under `ulimit -n 320`, through a wrapper script.
    let dir = tempfile::tempdir().expect("tmp");
    let wrapper = dir.path().join("low-fds.sh");
    std::fs::write(&wrapper, format!("#!/bin/sh\nulimit -n 320\nexec {BIN} \"$@\"\n")).expect("wrapper");
    let status = std::process::Command::new("chmod")
        .arg("+x")
        .arg(&wrapper)
        .status()
        .expect("chmod");
    assert!(status.success());
    let rules = rules_dir(BUDGETED);
    let server = Server::start_bin(
        wrapper.to_str().expect("utf-8"),
        &rules.path().join("rules.toml"),
        &["--header-read-timeout-s", "30"],
        &[],
    );
    let cap = metric_at(&server.admin, "switchyard_connections_max{port=\"grpc\"}");
    let admin_cap = metric_at(&server.admin, "switchyard_connections_max{port=\"admin\"}");
    assert!(
        cap > 0 && cap + admin_cap + 128 <= 320,
        "caps {cap} + {admin_cap} leave 128 of 320 descriptors"
    );
    // More connections than the descriptor limit allows: the ones over the
    // cap are closed at accept, and the server neither spins nor stops.
    let mut held = Vec::new();
    for _ in 0..400 {
        if let Ok(s) = std::net::TcpStream::connect(&server.grpc) {
            held.push(s);
        }
    }
    let cpu = server.cpu_time();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        server.cpu_time() - cpu < Duration::from_millis(500),
        "the server spins at the limit"
    );
    let ready = server.admin_get_until("/readyz", Duration::from_secs(10), |b| b.contains("ready"));
    assert!(
        ready.contains("ready"),
        "/readyz answers beside {} held connections",
        held.len()
    );
    assert!(
        metric_at(
            &server.admin,
            "switchyard_connection_refusals_total{port=\"grpc\",reason=\"max_connections\"}"
        ) > 0
    );
    // Once the flood lets go, calls are served again.
    drop(held);
    let mut c = server.client().await;
    c.route(request("open", "after the descriptor flood"))
        .await
        .expect("route");
}
