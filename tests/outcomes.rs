//! Outcomes over real gRPC: a scripted day of calls, retries and outcomes
//! (accepted, rejected, corrected, one re-recorded, one recorded before its
//! usage), checked to the nano-dollar against an independent sum, on the
//! embedded store and on Redis; and the report on an empty store.

mod common;

#[path = "common/redis.rs"]
mod redis_server;

use std::time::Duration;

use common::*;
use redis_server::RedisServer;
use switchyard::grpc::pb;
use switchyard::grpc::pb::router_client::RouterClient;
use tonic::transport::Channel;

fn rules() -> std::path::PathBuf {
    repo_path("routing-rules/examples/budgets.toml")
}

async fn route(c: &mut RouterClient<Channel>, outcome: &str, attempt: u32, text: &str) -> pb::RouteResponse {
    let mut req = request("budget-demo", text);
    req.outcome_id = outcome.into();
    req.attempt = attempt;
    req.max_output_tokens = 400;
    req.labels
        .insert("team".into(), if outcome == "t2" { "ads" } else { "search" }.into());
    c.route(req).await.expect("route").into_inner()
}

/// Reports usage; returns (cost, tokens).
async fn usage(
    c: &mut RouterClient<Channel>,
    r: &pb::RouteResponse,
    input: u64,
    cached: u64,
    output: u64,
) -> (i64, u64) {
    let cost = c
        .report_usage(pb::UsageReport {
            decision_id: r.decision_id.clone(),
            model: r.model.clone(),
            input_tokens: input,
            cached_input_tokens: cached,
            cache_write_input_tokens: 0,
            output_tokens: output,
            failed: false,
        })
        .await
        .expect("usage")
        .into_inner()
        .cost_nanousd;
    (cost, input + output)
}

async fn outcome(
    c: &mut RouterClient<Channel>,
    id: &str,
    status: pb::OutcomeStatus,
    value: Option<f64>,
    minutes: Option<f64>,
) {
    c.record_outcome(pb::OutcomeReport {
        outcome_id: id.into(),
        workflow: "budget-demo".into(),
        status: status as i32,
        value_usd: value,
        human_minutes: minutes,
    })
    .await
    .expect("outcome");
}

/// What the script spent, by its own acknowledgements.
struct Expected {
    spend: i64,
    tokens: u64,
    calls: u64,
    cached: u64,
    input: u64,
}

async fn scripted_day(c: &mut RouterClient<Channel>) -> Expected {
    use pb::OutcomeStatus::*;
    let mut e = Expected {
        spend: 0,
        tokens: 0,
        calls: 0,
        cached: 0,
        input: 0,
    };
    let mut add = |(cost, tokens): (i64, u64), input: u64, cached: u64| {
        e.spend += cost;
        e.tokens += tokens;
        e.calls += 1;
        e.input += input;
        e.cached += cached;
    };
    // t1: a first try and a retry, then accepted, worth $5.
    let r = route(c, "t1", 1, "Draft a reply to the customer about the refund.").await;
    add(usage(c, &r, 900, 0, 300).await, 900, 0);
    c.record_feedback(pb::FeedbackReport {
        decision_id: r.decision_id.clone(),
        accepted: false,
    })
    .await
    .expect("feedback");
    let r = route(
        c,
        "t1",
        2,
        "Draft a reply to the customer about the refund, more politely.",
    )
    .await;
    add(usage(c, &r, 1200, 800, 350).await, 1200, 800);
    outcome(c, "t1", Accepted, Some(5.0), None).await;
    // t2: rejected.
    let r = route(c, "t2", 1, "Classify this ticket.").await;
    add(usage(c, &r, 400, 0, 20).await, 400, 0);
    outcome(c, "t2", Rejected, None, None).await;
    // t3: corrected by a person in 12 minutes.
    let r = route(c, "t3", 1, "Summarise the incident for the status page.").await;
    add(usage(c, &r, 2000, 1000, 500).await, 2000, 1000);
    outcome(c, "t3", Corrected, None, Some(12.0)).await;
    // t4: the outcome arrives before the call's usage.
    let r = route(c, "t4", 1, "Write the release note.").await;
    outcome(c, "t4", Accepted, None, None).await;
    add(usage(c, &r, 700, 0, 250).await, 700, 0);
    // t5: accepted, then re-recorded as rejected: the later one counts.
    let r = route(c, "t5", 1, "Translate the FAQ entry.").await;
    add(usage(c, &r, 600, 0, 200).await, 600, 0);
    outcome(c, "t5", Accepted, None, None).await;
    outcome(c, "t5", Rejected, None, None).await;
    e
}

fn report_json(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(BIN)
        .args(["report", "--format", "json", "--rules"])
        .arg(rules())
        .args(args)
        .output()
        .expect("report");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn check(json: &serde_json::Value, e: &Expected) {
    let w = &json["workflows"][0];
    assert_eq!(w["workflow"], "budget-demo", "{json}");
    assert_eq!(w["spend_nanousd"].as_i64(), Some(e.spend), "to the nano-dollar: {w}");
    assert_eq!(w["calls"].as_u64(), Some(e.calls));
    assert_eq!(w["outcomes"], 5);
    assert_eq!(
        w["accepted_outcomes"], 3,
        "t1, t3 (corrected) and t4; t5 was re-recorded as rejected"
    );
    assert_eq!(w["outcome_changes"], 1);
    let close = |key: &str, want: f64| {
        let got = w[key].as_f64().unwrap_or_else(|| panic!("{key} missing: {w}"));
        assert!((got - want).abs() <= want.abs() * 1e-12, "{key}: {got} != {want}");
    };
    let spend = e.spend as f64 / 1e9;
    close("spend_usd", spend);
    close("acceptance_rate", 0.6);
    close("cost_per_accepted_outcome_usd", spend / 3.0);
    close("cost_per_token_usd", spend / e.tokens as f64);
    close("tokens_per_task", e.tokens as f64 / e.calls as f64);
    close("tasks_per_outcome", e.calls as f64 / 5.0);
    close("cached_token_share", e.cached as f64 / e.input as f64);
    close("human_intervention_rate", 0.2);
    close("human_minutes", 12.0);
    close("value_usd", 5.0);
    close("value_per_dollar", 5.0 / spend);
    // The four factors multiply back to the headline figure.
    let product = w["cost_per_token_usd"].as_f64().unwrap_or(0.0)
        * w["tokens_per_task"].as_f64().unwrap_or(0.0)
        * w["tasks_per_outcome"].as_f64().unwrap_or(0.0)
        / w["acceptance_rate"].as_f64().unwrap_or(1.0);
    close("cost_per_accepted_outcome_usd", product);
    assert!(w["median_cycle_time_s"].as_f64().is_some_and(|s| s >= 0.0), "{w}");
    assert_eq!(w["maturity"]["rung"], "optimized", "{w}");
    let budget = &w["budget"];
    let spent = budget["spent_usd"].as_f64().unwrap_or(-1.0);
    assert!((spent - spend).abs() < 1e-12, "{budget}");
    assert!(budget["burn_rate_usd_per_hour"].as_f64().is_some_and(|r| r > 0.0));
    let mix: u64 = w["model_mix"]
        .as_array()
        .expect("mix")
        .iter()
        .map(|m| m["calls"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(mix, e.calls);
    let recent = w["recent_outcomes"].as_array().expect("recent");
    assert_eq!(recent.len(), 5);
    let t1 = recent.iter().find(|o| o["outcome_id"] == "t1").expect("t1");
    assert_eq!(t1["calls"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_day_reports_to_the_nano_dollar_on_the_embedded_store() {
    let server = Server::start(&rules(), &[]);
    let mut c = server.client().await;
    let e = scripted_day(&mut c).await;
    let state = server.state.path().to_str().expect("utf-8").to_string();
    // Beside the running server, from its state folder.
    check(&report_json(&["--state-dir", &state]), &e);
    // From the server itself.
    check(&report_json(&["--server", &server.grpc]), &e);
    // Filtered by label: t2 was the only `team=ads` call.
    let ads = report_json(&["--state-dir", &state, "--label", "team=ads"]);
    assert_eq!(ads["workflows"][0]["calls"], 1, "{ads}");
    assert_eq!(ads["workflows"][0]["outcomes"], 1);
    // The table for people says the same.
    let out = std::process::Command::new(BIN)
        .args(["report", "--state-dir", &state, "--rules"])
        .arg(rules())
        .output()
        .expect("report");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cost per accepted outcome"), "{text}");
    assert!(text.contains("maturity: optimized"), "{text}");
    assert!(text.contains("acceptance 60.0%"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_day_reports_to_the_nano_dollar_on_redis() {
    let redis = RedisServer::start();
    let server = Server::start(&rules(), &["--redis-url", &redis.url(), "--redis-timeout-ms", "5000"]);
    let mut c = server.client().await;
    let e = scripted_day(&mut c).await;
    check(&report_json(&["--redis-url", &redis.url()]), &e);
}

/// A scrape serves the gauges the store gave at its last reading, taken off
/// the scrape path: with Redis frozen, `/metrics` still answers at once (it
/// used to wait on the store for each scrape, up to the Redis timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_answers_at_once_while_the_store_hangs() {
    let redis = RedisServer::start();
    let server = Server::start(&rules(), &["--redis-url", &redis.url(), "--redis-timeout-ms", "5000"]);
    let gauge = "switchyard_budget_remaining_nanousd{workflow=\"budget-demo\"}";
    let first = server.admin_get_until("/metrics", Duration::from_secs(15), |m| m.contains(gauge));
    assert!(first.contains(gauge), "{first}");
    redis.signal("STOP");
    // Past the next reading, which now hangs on the frozen store.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let started = std::time::Instant::now();
    let (code, text) = server.admin_get("/metrics");
    let took = started.elapsed();
    redis.signal("CONT");
    assert_eq!(code, 200);
    assert!(
        took < Duration::from_secs(1),
        "a scrape took {took:?} with the store frozen"
    );
    assert!(text.contains(gauge), "the last reading is still served:\n{text}");
    let age = text
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_store_gauges_age_seconds "))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("the reading's age");
    assert!(age >= 1.0, "the reading is older than the freeze's start: {age}");
}

#[test]
fn a_report_on_an_empty_store_says_so() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = std::process::Command::new(BIN)
        .args(["report", "--rules"])
        .arg(rules())
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .expect("report");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing has been recorded there yet"), "{err}");
    // A store that exists but holds nothing.
    drop(Server::start(
        &rules(),
        &["--state-dir", dir.path().to_str().expect("utf-8")],
    ));
    let json = report_json(&["--state-dir", dir.path().to_str().expect("utf-8")]);
    assert!(
        json["message"]
            .as_str()
            .is_some_and(|m| m.contains("No calls or outcomes")),
        "{json}"
    );
}

/// Headless Chromium, or a clear failure saying how to get it.
fn chromium() -> &'static str {
    for bin in ["chromium", "chromium-browser", "google-chrome"] {
        if std::process::Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return bin;
        }
    }
    panic!("headless Chromium is needed for the dashboard test: `apt-get install chromium` (.ci/run does this)")
}

fn browse(url: &str, profile: &std::path::Path, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_seeded_workflow_in_a_real_browser() {
    let server = Server::start(&rules(), &[]);
    let mut c = server.client().await;
    let e = scripted_day(&mut c).await;
    let url = format!("{}/", server.admin.trim_end_matches('/'));
    assert!(url.starts_with("http://"), "{url}");
    let profile = tempfile::tempdir().expect("profile");

    let dom = browse(&url, profile.path(), &["--dump-dom"]);
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.status.success() && html.contains("data-workflow=\"budget-demo\""),
        "{html}\n{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    // The headline figure, from the script's own acknowledgements.
    let cpo = switchyard::money::format_dollars(e.spend as f64 / 1e9 / 3.0, 2);
    assert!(
        html.contains(&format!("id=\"cpo-budget-demo\">{cpo}<")),
        "cost per accepted outcome {cpo} not shown:\n{html}"
    );
    assert!(html.contains("id=\"accepted-budget-demo\">3 of 5<"), "{html}");
    assert!(html.contains(&format!("{} calls", e.calls)), "{html}");
    for section in [
        "Cost per accepted outcome, by day",
        "The four factors",
        "Spend against budget",
        "Model mix",
        "Recent outcomes",
        "gpt-5-mini",
        "t5",
    ] {
        assert!(html.contains(section), "{section} missing:\n{html}");
    }
    assert!(
        html.contains("<polyline") || html.contains("<circle"),
        "no chart drawn:\n{html}"
    );

    // The forecast as a metric: infinity (OpenMetrics `inf`) when the budget lasts the (UTC) day at
    // this rate. Early in the day the rate is extrapolated from a few minutes
    // of spend, and then it must run out before the day ends. The gauges
    // read from the store are recomputed every few seconds off the scrape
    // path: wait for a reading that includes the spend.
    let remaining = format!(
        "switchyard_budget_remaining_nanousd{{workflow=\"budget-demo\"}} {}",
        1_000_000_000 - e.spend
    );
    let metrics = server.admin_get_until("/metrics", Duration::from_secs(15), |m| m.contains(&remaining));
    let forecast = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_budget_exhausted_in_seconds{workflow=\"budget-demo\"} "))
        .unwrap_or_else(|| panic!("no forecast for budget-demo:\n{metrics}"));
    let day_left = 86_400
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            % 86_400;
    assert!(
        forecast == "inf"
            || forecast
                .parse::<f64>()
                .is_ok_and(|s| s > 0.0 && s <= day_left as f64 + 5.0),
        "forecast {forecast} s with {day_left} s of the day left:\n{metrics}"
    );
    assert!(metrics.contains(&remaining), "{remaining} not in\n{metrics}");

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = browse(
        &url,
        profile.path(),
        &["--window-size=1280,2200", &format!("--screenshot={}", shot.display())],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "not a real screenshot"
    );
    println!("dashboard screenshot: {}", shot.display());
}
