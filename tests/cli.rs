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
