//! `check` and `explain`, run as a user would.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{repo_path, BIN, HARD_PROMPT};

#[test]
fn check_accepts_every_shipped_rules_file() {
    for path in [
        "routing-rules",
        "routing-rules/default.toml",
        "routing-rules/examples/routellm.toml",
    ] {
        let out = Command::new(BIN)
            .args(["check", "--rules"])
            .arg(repo_path(path))
            .output()
            .expect("run");
        assert!(out.status.success(), "{path}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: "));
    }
}

#[test]
fn check_names_file_line_column_and_key_for_each_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("broken.toml");
    let text = std::fs::read_to_string(repo_path("routing-rules/default.toml"))
        .expect("read")
        .replacen("output_per_mtok = 10.0", "output_per_mtok = \"ten\"", 1);
    std::fs::write(&bad, text).expect("write");
    let out = Command::new(BIN)
        .args(["check", "--rules"])
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().expect("a diagnostic");
    let prefix = format!("{}:", bad.display());
    assert!(first.starts_with(&prefix), "{first}");
    let loc: Vec<&str> = first[prefix.len()..].splitn(3, ':').collect();
    assert!(
        loc[0].parse::<usize>().is_ok() && loc[1].parse::<usize>().is_ok(),
        "line:col in {first}"
    );
    assert!(first.contains("`models[0].output_per_mtok`"), "{first}");

    // A semantic error is located too.
    std::fs::write(&bad, "[[workflows]]\nname = \"w\"\nquality_floor = 0\n").expect("write");
    let out = Command::new(BIN)
        .args(["check", "--rules"])
        .arg(&bad)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("broken.toml:3:1: `workflows[0].quality_floor`: tier 0 is outside"),
        "{stderr}"
    );
    assert!(stderr.contains("no [[models]]"), "{stderr}");
}

#[test]
fn explain_prints_the_decision_and_every_candidate() {
    let out = Command::new(BIN)
        .args(["explain", "--rules"])
        .arg(repo_path("routing-rules"))
        .args(["--workflow", "general", "What is 2 + 2?"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let candidates = v["candidates"].as_array().expect("candidates");
    assert!(candidates.len() >= 10);
    let chosen = v["decision"]["model"].as_str().expect("model");
    let cost = v["decision"]["estimated_cost_nanousd"].as_i64().expect("cost");
    // The chosen model is the cheapest adequate candidate.
    let cheapest = candidates
        .iter()
        .filter(|c| c["rejected"].is_null())
        .map(|c| c["estimated_cost_nanousd"].as_i64().expect("cost"))
        .min()
        .expect("an adequate candidate");
    assert_eq!(cost, cheapest);
    assert!(candidates.iter().any(|c| c["model"] == chosen));
    assert!(v["decision"]["reason"]
        .as_str()
        .expect("reason")
        .contains("cheapest of"));
}

#[test]
fn explain_reads_stdin_and_ranks_hard_prompts_higher() {
    let run = |text: &str| -> serde_json::Value {
        let mut child = Command::new(BIN)
            .args(["explain", "--rules"])
            .arg(repo_path("routing-rules"))
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let easy = run("hello");
    let hard = run(HARD_PROMPT);
    assert!(hard["complexity"].as_f64() > easy["complexity"].as_f64());
    assert_ne!(hard["decision"]["model"], easy["decision"]["model"]);
}

/// Rows in the replay format for the shipped RouteLLM models: the weak model
/// fails every `proof` row, both answer the `fact` rows.
fn replay_rows(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        let (kind, prompt) = if i % 4 == 0 {
            (
                "proof",
                format!("Prove that the group of order {i} is abelian.\nA. yes\nB. no\nAnswer:"),
            )
        } else {
            (
                "fact",
                format!("Which river is longest? Item {i}.\nA. Nile\nB. Rhine\nAnswer:"),
            )
        };
        let row = serde_json::json!({
            "id": format!("row-{i}"),
            "workflow": "synthetic",
            "task_kind": kind,
            "prompt": prompt,
            "models": {
                "gpt-4-1106-preview": {"success": i % 13 != 0, "score": if i % 13 != 0 { 1.0 } else { 0.0 }},
                "mixtral-8x7b-instruct-v0.1": {"success": kind == "fact", "score": if kind == "fact" { 1.0 } else { 0.0 }}
            }
        });
        out.push_str(&row.to_string());
        out.push('\n');
    }
    out
}

#[test]
fn replay_reports_every_policy_deterministically_with_progress() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("rows.jsonl");
    std::fs::write(&data, replay_rows(400)).expect("data");
    let run = |scores: &str| {
        Command::new(BIN)
            .arg("replay")
            .arg("--rules")
            .arg(repo_path("routing-rules/examples/routellm.toml"))
            .arg("--data")
            .arg(&data)
            .args(["--format", "json", "--seed", "11", "--scores-out"])
            .arg(dir.path().join(scores))
            .output()
            .expect("run replay")
    };
    let (a, b) = (run("a.jsonl"), run("b.jsonl"));
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(a.stdout, b.stdout, "the same seed gives the same report");
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).expect("scores");
    assert_eq!(read("a.jsonl"), read("b.jsonl"), "and the same scores");
    let stderr = String::from_utf8_lossy(&a.stderr);
    assert!(stderr.contains("replay: 100%"), "progress on stderr: {stderr}");

    let report: serde_json::Value = serde_json::from_slice(&a.stdout).expect("JSON report");
    assert_eq!(
        report["workflow"], "replay",
        "the rows' workflow is not in the rules: `replay` is used"
    );
    let policies = report["policies"].as_array().expect("policies");
    let names: Vec<&str> = policies.iter().filter_map(|p| p["name"].as_str()).collect();
    for want in [
        "always-strong",
        "always-weak",
        "random",
        "rules",
        "router",
        "router+cascade",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for p in policies {
        for key in [
            "success_rate",
            "cost_usd",
            "cost_per_success_usd",
            "strong_share",
            "tasks_per_outcome",
        ] {
            assert!(p[key].is_number(), "{key} in {p}");
        }
    }
    let by = |n: &str| policies.iter().find(|p| p["name"] == n).expect("policy");
    // The weak model fails a quarter of the rows; the cascade retries those.
    assert_eq!(by("always-weak")["success_rate"].as_f64(), Some(0.75));
    assert!(by("router+cascade")["success_rate"].as_f64() > Some(0.9));
    assert!(report["apgr"].as_f64().is_some_and(|a| a > 0.5), "{}", report["apgr"]);
    let lines = read("a.jsonl");
    assert_eq!(lines.lines().count(), 400);
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().expect("a line")).expect("JSON");
    for key in ["id", "score", "model", "success", "cost_usd"] {
        assert!(first.get(key).is_some(), "{key} in {first}");
    }
}

#[test]
fn prices_import_prints_the_diff_and_writes_only_prices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.toml");
    let original = std::fs::read_to_string(repo_path("routing-rules/default.toml"))
        .expect("default rules")
        .replace("input_per_mtok = 1.25\n", "input_per_mtok = 1.5  # stale\n");
    std::fs::write(&rules, &original).expect("write");
    let fixture = repo_path("tests/fixtures/litellm-prices-excerpt.json");
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .args(["prices", "import"])
            .arg(&fixture)
            .arg("--rules")
            .arg(&rules)
            .args(extra)
            .output()
            .expect("run prices import")
    };
    let dry = run(&["--dry-run"]);
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    let out = String::from_utf8_lossy(&dry.stdout);
    assert!(out.contains("gpt-5: input_per_mtok 1.5 -> 1.25"), "{out}");
    assert!(String::from_utf8_lossy(&dry.stderr).contains("gemini-2.5-pro: not in the price map"));
    assert_eq!(
        std::fs::read_to_string(&rules).expect("read"),
        original,
        "--dry-run writes nothing"
    );

    let wrote = run(&[]);
    assert!(wrote.status.success(), "{}", String::from_utf8_lossy(&wrote.stderr));
    let after = std::fs::read_to_string(&rules).expect("read");
    assert!(after.contains("input_per_mtok = 1.25  # stale"), "the comment stays");
    let changed: Vec<(&str, &str)> = original.lines().zip(after.lines()).filter(|(a, b)| a != b).collect();
    assert_eq!(changed.len(), 1, "only the stale price changed: {changed:?}");
    let check = Command::new(BIN)
        .args(["check", "--rules"])
        .arg(&rules)
        .output()
        .expect("check");
    assert!(check.status.success());
}

/// `switchyard … | head`: a reader that stops reading ends the output
/// quietly, with the command's own exit status and no panic.
#[test]
fn a_closed_stdout_ends_each_command_quietly() {
    let rules = repo_path("routing-rules");
    let cases: [Vec<std::ffi::OsString>; 3] = [
        vec!["check".into(), "--rules".into(), rules.clone().into()],
        vec![
            "explain".into(),
            "--rules".into(),
            rules.clone().into(),
            "hello there".into(),
        ],
        vec!["completions".into(), "bash".into()],
    ];
    for args in cases {
        // A pipe whose reading end is closed before the command writes.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(BIN)
            .args(&args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn completions_cover_every_command_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN).args(["completions", shell]).output().expect("run");
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for command in [
            "serve",
            "check",
            "explain",
            "replay",
            "report",
            "escalations",
            "completions",
        ] {
            assert!(script.contains(command), "{shell} completions lack {command}");
        }
    }
    let out = Command::new(BIN).args(["completions", "tcsh"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bash"),
        "the error lists the shells"
    );
}

#[test]
fn simulate_runs_the_lease_code_over_a_fleet_and_holds_every_run_to_the_bound() {
    let out = Command::new(BIN)
        .args([
            "simulate",
            "--sidecars",
            "200",
            "--seeds",
            "3",
            "--duration-s",
            "300",
            "--format",
            "json",
        ])
        .output()
        .expect("run");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let runs = json["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 3);
    for r in runs {
        let (over, bound) = (
            r["overspend_nanousd"].as_i64().expect("overspend"),
            r["bound_nanousd"].as_i64().expect("bound"),
        );
        assert!(over <= bound, "{r}");
        assert!(r["calls"].as_u64().expect("calls") > 10_000, "{r}");
        assert_eq!(r["round_trips_with_valid_lease"], 0, "{r}");
    }
    // Leases take most round trips off the Route path, and most operations
    // off the store.
    let leased = json["store_ops_per_s"].as_f64().expect("ops");
    let exact = json["without_leases"]["store_ops_per_s"].as_f64().expect("ops");
    assert!(leased * 2.0 < exact, "{leased} against {exact}");
    assert!(
        json["route_round_trips_per_call"].as_f64().expect("trips") < 0.5,
        "{json}"
    );
    assert_eq!(json["without_leases"]["route_round_trips_per_call"].as_f64(), Some(1.0));
    for key in [
        "stranded_share",
        "overspend_nanousd",
        "bound_nanousd",
        "p99_added_latency_us",
        "targets_met",
    ] {
        assert!(json.get(key).is_some(), "no {key}: {json}");
    }
    // The exit code says whether the targets were met.
    let met = json["targets_met"]
        .as_object()
        .expect("targets")
        .values()
        .all(|v| v == true);
    assert_eq!(out.status.success(), met, "{json}");
}

#[test]
fn simulate_refuses_flags_out_of_range_with_the_range() {
    for (flag, value, says) in [
        ("--sidecars", "0", "1 to 100,000"),
        ("--refresh-s", "0.5", "1 to 300"),
        ("--max-share", "0.9", "at most 0.5"),
        ("--format", "yaml", "table or json"),
    ] {
        let out = Command::new(BIN).args(["simulate", flag, value]).output().expect("run");
        assert_eq!(out.status.code(), Some(64), "{flag} {value}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A rules file may name its own understanding model; a missing or damaged
/// one is an error at its key, and so is a `top_share` outside 0 to 1.
#[test]
fn check_refuses_a_missing_or_damaged_model_and_a_bad_top_share() {
    let dir = tempfile::tempdir().expect("tmp");
    let rules = dir.path().join("rules.toml");
    let shipped = std::fs::read_to_string(repo_path("routing-rules/default.toml")).expect("read");
    let check = |text: &str| {
        std::fs::write(&rules, text).expect("write");
        let out = Command::new(BIN)
            .args(["check", "--rules"])
            .arg(&rules)
            .output()
            .expect("run");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let naming = |file: &str| {
        shipped.replacen(
            "[settings]\n",
            &format!("[settings]\nunderstanding_model = \"{file}\"\n"),
            1,
        )
    };

    let (ok, err) = check(&naming("missing.json"));
    assert!(!ok);
    let prefix = format!("{}:", rules.display());
    let loc: Vec<&str> = err
        .strip_prefix(&prefix)
        .expect("the file first")
        .splitn(3, ':')
        .collect();
    assert!(
        loc[0].parse::<usize>().is_ok() && loc[1].parse::<usize>().is_ok(),
        "{err}"
    );
    assert!(loc[2].contains("`settings.understanding_model`"), "{err}");
    assert!(
        err.contains("missing.json") && err.contains("train-understanding"),
        "{err}"
    );

    // A copy of the shipped model loads; one edited byte is refused.
    let model = std::fs::read_to_string(repo_path("models/understanding.json")).expect("model");
    std::fs::write(dir.path().join("copy.json"), &model).expect("write");
    let (ok, err) = check(&naming("copy.json"));
    assert!(ok, "{err}");
    std::fs::write(
        dir.path().join("damaged.json"),
        model.replacen("\"kinds\"", "\"kindz\"", 1),
    )
    .expect("write");
    let (ok, err) = check(&naming("damaged.json"));
    assert!(!ok && err.contains("SHA-256") && err.contains("damaged.json"), "{err}");

    let (ok, err) = check(&shipped.replacen("top_share = 0.10", "top_share = 1.5", 1));
    assert!(!ok && err.contains("top_share 1.5") && err.contains("`rules["), "{err}");
}

/// `explain` says where the kind came from and how sure the classifier is,
/// where the score falls in the workflow, and what moved it.
#[test]
fn explain_shows_the_inferred_kind_its_confidence_and_the_scores_drivers() {
    let run = |args: &[&str]| -> serde_json::Value {
        let out = Command::new(BIN)
            .args(["explain", "--rules"])
            .arg(repo_path("routing-rules"))
            .args(args)
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let v = run(&["Design a lock-free queue in Rust and prove it linearizable"]);
    assert_eq!(v["task_kind"], "code");
    assert_eq!(v["task_kind_source"], "inferred");
    assert!(v["task_kind_confidence"].as_f64().expect("confidence") > 0.5);
    assert!(v["decision"]["tier"].as_u64().expect("tier") >= 4, "{v}");
    let q = v["complexity_quantile"].as_f64().expect("quantile");
    assert!((0.0..=1.0).contains(&q));
    let drivers = v["complexity_drivers"].as_array().expect("drivers");
    assert!(!drivers.is_empty() && drivers.len() <= 6);
    assert!(drivers.iter().all(|d| d["feature"].is_string() && d["effect"].is_f64()));

    let easy = run(&["What is the capital of France?"]);
    assert!(easy["decision"]["tier"].as_u64().expect("tier") <= 2, "{easy}");
    assert!(easy["complexity_quantile"].as_f64() < Some(q));

    let declared = run(&["--task-kind", "translation", "Design a lock-free queue"]);
    assert_eq!(
        (declared["task_kind"].as_str(), declared["task_kind_source"].as_str()),
        (Some("translation"), Some("declared"))
    );
    assert_eq!(declared["task_kind_confidence"], 1.0);
}

/// `simulate pacing` plays bursty periods of replay rows against budgets:
/// its JSON names every policy at every budget with the promised fields, a
/// paced budget never ends above its budget, and the same seeds give the
/// same report. A bad share is refused with what to pass.
#[test]
fn simulate_pacing_compares_threshold_with_each_pacing_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("rows.jsonl");
    std::fs::write(&data, replay_rows(600)).expect("data");
    let run = |share: &str| {
        Command::new(BIN)
            .arg("simulate")
            .arg("pacing")
            .arg("--rules")
            .arg(repo_path("routing-rules/examples/routellm.toml"))
            .arg("--data")
            .arg(&data)
            .args([
                "--workflow",
                "replay",
                "--budget-share",
                share,
                "--seeds",
                "6",
                "--format",
                "json",
            ])
            .output()
            .expect("run simulate pacing")
    };
    let (a, b) = (run("0.3,0.6"), run("0.3,0.6"));
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(a.stdout, b.stdout, "the same seeds give the same report");
    let report: serde_json::Value = serde_json::from_slice(&a.stdout).expect("JSON report");
    let policies = report["policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 6, "three policies at two budgets");
    for p in policies {
        for key in [
            "name",
            "budget_share",
            "accepted_mean",
            "accepted_sd",
            "spend_share_mean",
            "seeds_within_95_100",
            "overspend_max_share",
        ] {
            assert!(!p[key].is_null(), "{key} missing from {p}");
        }
        assert!(["threshold", "even", "traffic"].contains(&p["name"].as_str().expect("name")));
        assert!(p["overspend_max_share"].as_f64().expect("overspend") <= 0.0, "{p}");
    }
    // Pacing spends what threshold step-down leaves unspent, on the hard rows.
    let at = |name: &str, share: f64| {
        policies
            .iter()
            .find(|p| p["name"] == name && p["budget_share"].as_f64() == Some(share))
            .expect("policy")
    };
    for share in [0.3, 0.6] {
        let (t, e) = (at("threshold", share), at("traffic", share));
        assert!(
            e["spend_share_mean"].as_f64() > t["spend_share_mean"].as_f64(),
            "{e} against {t}"
        );
        assert!(
            e["accepted_mean"].as_f64() >= t["accepted_mean"].as_f64(),
            "{e} against {t}"
        );
    }
    let bad = run("1.5");
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--budget-share"));
}

/// `report` shows a paced budget's pace: its mode, the target so far and
/// the forecast, read from the store as a fresh controller would.
#[test]
fn report_shows_a_paced_budgets_pace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = paced_rules(dir.path());
    // A state folder with its (empty) store, as a serve leaves it.
    std::fs::create_dir(dir.path().join("state")).expect("state folder");
    drop(switchyard::store::sqlite::SqliteStore::open(&dir.path().join("state")).expect("store"));
    let out = Command::new(BIN)
        .args(["report", "--format", "json", "--rules"])
        .arg(&rules)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .expect("run report");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let pace = &report["workflows"][0]["budget"]["pace"];
    assert_eq!(pace["pacing"], "traffic", "{report}");
    assert!(
        pace["target_usd"].as_f64().is_some_and(|t| (0.0..=9.8).contains(&t)),
        "{pace}"
    );
    assert!(pace["spend_price_per_usd"].as_f64().is_some_and(|p| p > 0.0), "{pace}");
}

#[test]
fn budget_status_shows_each_budget_and_the_serving_controllers_price() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = paced_rules(dir.path());
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state folder");
    drop(switchyard::store::sqlite::SqliteStore::open(&state).expect("store"));
    let status = || {
        let out = Command::new(BIN)
            .args(["budget", "status", "--format", "json", "--rules"])
            .arg(&rules)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .expect("run budget status");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        v["workflows"][0].clone()
    };
    let fresh = status();
    assert_eq!(fresh["limit_usd"], 10.0, "{fresh}");
    assert_eq!(fresh["spent_usd"], 0.0, "{fresh}");
    assert_eq!(fresh["pace"]["pacing"], "traffic", "{fresh}");
    let fresh_price = fresh["pace"]["spend_price_per_usd"].as_f64().expect("price");
    // The serving sidecar saved a controller that has raised the price.
    let workflow = fresh["workflow"].as_str().expect("workflow").to_string();
    let saved = serde_json::json!({
        "version": 1,
        "workflows": { workflow: { "integral": 3.0, "traffic": vec![0u64; 168], "since_ms": null } },
    });
    std::fs::write(state.join("pacing.json"), saved.to_string()).expect("pacing.json");
    let served = status();
    let served_price = served["pace"]["spend_price_per_usd"].as_f64().expect("price");
    assert!(
        served_price > fresh_price * 10.0,
        "the saved controller's price {served_price} against a fresh one's {fresh_price}"
    );
    // A damaged file is named, not used.
    std::fs::write(state.join("pacing.json"), "{ not json").expect("damage");
    let out = Command::new(BIN)
        .args(["budget", "status", "--rules"])
        .arg(&rules)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pacing.json:1:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// routellm.toml with its workflow's budget paced by traffic ($10 a week),
/// written into `dir`.
fn paced_rules(dir: &std::path::Path) -> std::path::PathBuf {
    let rules = dir.join("rules.toml");
    let text = std::fs::read_to_string(repo_path("routing-rules/examples/routellm.toml"))
        .expect("rules")
        .replace(
            "outcome_unit = \"answered question\"\n",
            "outcome_unit = \"answered question\"\n[workflows.budget]\nlimit_usd = 10.0\nperiod = \"week\"\npacing = \"traffic\"\n",
        );
    std::fs::write(&rules, text).expect("write rules");
    rules
}

/// The README's first call and its `check` line are what this build prints:
/// a user who copies them sees the same.
#[test]
fn the_readme_shows_what_this_build_prints() {
    let readme = std::fs::read_to_string(repo_path("README.md")).expect("README.md");
    let check = Command::new(BIN)
        .args(["check", "--rules", "routing-rules"])
        .current_dir(repo_path("."))
        .output()
        .expect("run check");
    let printed = String::from_utf8_lossy(&check.stdout);
    let shown = readme
        .lines()
        .find_map(|l| l.strip_prefix("# ok: "))
        .expect("the README shows check's output");
    assert_eq!(printed.trim(), format!("ok: {shown}"), "README's check line is stale");

    let state = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["explain", "--rules"])
        .arg(repo_path("routing-rules"))
        .arg("--state-dir")
        .arg(state.path())
        .arg("What is the capital of France?")
        .output()
        .expect("run explain");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("explain prints JSON");
    let d = &v["decision"];
    let shown = |field: &str| -> String {
        let line = readme
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("\"{field}\":")))
            .unwrap_or_else(|| panic!("the README's first call shows {field}"));
        let value = line.split_once(':').map(|(_, v)| v).unwrap_or_default();
        value.trim().trim_end_matches(',').trim_matches('"').to_string()
    };
    assert_eq!(shown("model"), d["model"].as_str().unwrap_or_default());
    assert_eq!(shown("rule"), d["rule"].as_str().unwrap_or_default());
    assert_eq!(shown("reason"), d["reason"].as_str().unwrap_or_default());
    assert_eq!(shown("estimatedCostNanousd"), d["estimated_cost_nanousd"].to_string());
    assert_eq!(shown("taskKind"), v["task_kind"].as_str().unwrap_or_default());
    assert_eq!(
        shown("taskKindSource"),
        v["task_kind_source"].as_str().unwrap_or_default()
    );
    assert_eq!(shown("estimatedOutputTokens"), v["estimated_output_tokens"].to_string());
    let complexity: f64 = shown("complexity").parse().expect("a number");
    let scored = v["complexity"].as_f64().unwrap_or(-1.0);
    assert!(
        (complexity - scored).abs() < 5e-5,
        "README shows complexity {complexity}, explain {scored:.4}"
    );
}
