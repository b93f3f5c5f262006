use std::path::Path;

use super::*;

#[test]
fn apgr_of_a_perfect_a_reversed_and_a_flat_ranking() {
    // Four rows: the strong model rescues rows 0 and 1 only.
    let strong = [1.0, 1.0, 1.0, 0.0];
    let weak = [0.0, 0.0, 1.0, 0.0];
    let perfect = routellm_metrics(&[0.9, 0.8, 0.1, 0.0], &strong, &weak).expect("a gap");
    // PGR at shares 0..1 in tenths (rows = round(4 * share)): 0, 0, .5, .5, 1, 1, 1, 1, 1, 1, 1.
    let expected = [0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
        .windows(2)
        .map(|w| (w[0] + w[1]) / 20.0)
        .sum::<f64>();
    assert!((perfect.apgr - expected).abs() < 1e-12, "{perfect:?}");
    assert_eq!(perfect.cpt50, 0.25);
    assert_eq!(perfect.cpt80, 0.5);
    let reversed = routellm_metrics(&[0.0, 0.1, 0.8, 0.9], &strong, &weak).expect("a gap");
    assert!(reversed.apgr < 0.5 && reversed.apgr < perfect.apgr, "{reversed:?}");
    assert_eq!(reversed.cpt50, 0.75);
    // Equal models: no gap to recover.
    assert_eq!(routellm_metrics(&[0.5; 4], &weak, &weak), None);
}

const RULES: &str = include_str!("../../../tests/fixtures/unit/replay.toml");

/// Rows where the weak model fails every `trivia` question. The rules'
/// complexity score ranks the algebra rows (math words) above the trivia
/// ones, so the prior is wrong here and only learning can set it right.
fn data() -> String {
    let mut out = String::new();
    for i in 0..300 {
        let (kind, words) = if i % 3 == 0 {
            ("algebra", "Solve for x in the ring of integers")
        } else {
            ("trivia", "Name the capital city of the country")
        };
        let weak_ok = kind == "algebra" && i % 7 != 0;
        let strong_ok = i % 11 != 0;
        let response = if i % 2 == 0 { r#", "response": "B""# } else { "" };
        out.push_str(&format!(
            r#"{{"id": "r{i}", "task_kind": "{kind}", "prompt": "{words} number {i}.\nAnswer:", "models": {{"strong-model": {{"success": {strong_ok}, "score": {}{response}}}, "weak-model": {{"success": {weak_ok}}}}}}}"#,
            u8::from(strong_ok)
        ));
        out.push('\n');
    }
    out
}

fn args(dir: &Path, seed: u64) -> ReplayArgs {
    ReplayArgs {
        rules: dir.join("rules.toml"),
        data: dir.join("data.jsonl"),
        workflow: None,
        scores_out: Some(dir.join(format!("scores-{seed}.jsonl"))),
        json: true,
        seed,
        seeds: 0,
    }
}

#[test]
fn replay_is_deterministic_for_a_seed_and_learns_the_failing_kind() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("rules.toml"), RULES).expect("rules");
    std::fs::write(dir.path().join("data.jsonl"), data()).expect("data");
    let a = run(&args(dir.path(), 7)).expect("replays");
    let scores_a = std::fs::read_to_string(dir.path().join("scores-7.jsonl")).expect("scores");
    let b = run(&args(dir.path(), 7)).expect("replays");
    let scores_b = std::fs::read_to_string(dir.path().join("scores-7.jsonl")).expect("scores");
    assert_eq!(
        serde_json::to_string(&a).expect("json"),
        serde_json::to_string(&b).expect("json")
    );
    assert_eq!(scores_a, scores_b);
    assert_eq!(scores_a.lines().count(), 300);

    let names: Vec<&str> = a.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "always-strong",
            "always-weak",
            "rules",
            "router",
            "router+cascade",
            "random"
        ]
    );
    let by = |n: &str| a.policies.iter().find(|p| p.name == n).expect("policy");
    assert_eq!(by("always-strong").strong_share, 1.0);
    assert_eq!(by("always-weak").strong_share, 0.0);
    let strong_ok = (0..300).filter(|i| i % 11 != 0).count() as f64 / 300.0;
    assert!((by("always-strong").success_rate - strong_ok).abs() < 1e-12);
    // The cascade retries rejected rows one tier up: more tasks than outcomes.
    assert!(by("router+cascade").tasks_per_outcome > 1.0);
    assert!(by("router+cascade").success_rate > by("always-weak").success_rate);
    // The failing kind is learned: its rows score above the others'.
    let lines: Vec<serde_json::Value> = scores_a
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let mean = |kind: usize| {
        let late: Vec<f64> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i >= 150 && (i % 3 == 0) == (kind == 0))
            .map(|(_, v)| v["score"].as_f64().expect("score"))
            .collect();
        late.iter().sum::<f64>() / late.len() as f64
    };
    assert!(mean(1) > mean(0), "trivia {} vs algebra {}", mean(1), mean(0));
    let prior = a.scores.iter().find(|s| s.name == "prior").expect("the prior");
    assert!(
        a.apgr.expect("a gap") > prior.apgr + 0.1,
        "{:?} vs the prior's {}",
        a.apgr,
        prior.apgr
    );
    for key in ["id", "score", "prior", "model", "success", "cost_usd"] {
        assert!(lines[0].get(key).is_some(), "scores line lacks {key}: {}", lines[0]);
    }
}

#[test]
fn bad_rows_name_file_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("rules.toml"), RULES).expect("rules");
    let mut d = data();
    d.push_str("{\"id\": \"broken\", \"prompt\": 3}\n");
    std::fs::write(dir.path().join("data.jsonl"), &d).expect("data");
    let Err(e) = run(&args(dir.path(), 1)) else {
        panic!("a bad row must be refused")
    };
    assert!(e.contains("data.jsonl:301:"), "{e}");
    let unknown = data().replace("weak-model", "mystery-model");
    std::fs::write(dir.path().join("data.jsonl"), unknown).expect("data");
    let Err(e) = run(&args(dir.path(), 1)) else {
        panic!("an unknown model must be refused")
    };
    assert!(e.contains("mystery-model") && e.contains("data.jsonl:1"), "{e}");
}

#[test]
fn the_prior_and_the_learned_scores_are_shown_side_by_side_by_fifth() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("rules.toml"), RULES).expect("rules");
    std::fs::write(dir.path().join("data.jsonl"), data()).expect("data");
    let r = run(&args(dir.path(), 7)).expect("replays");
    assert_eq!(r.order, "file");
    let names: Vec<&str> = r.scores.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["prior", "router", "router+cascade"]);
    for s in &r.scores {
        assert_eq!(s.fifths.len(), 5, "{s:?}");
    }
    let cascade = &r.scores[2];
    assert_eq!(Some(cascade.apgr), r.apgr, "the headline is the cascade's scores");
    // Learning shows over time: the last fifth ranks better than the first,
    // when the first fifth's scores were mostly the cold model's prior.
    let (first, last) = (cascade.fifths[0].expect("a gap"), cascade.fifths[4].expect("a gap"));
    assert!(last > first, "fifths {:?}", cascade.fifths);
    let text = super::show::table(&r);
    assert!(text.contains("APGR by fifth"), "{text}");
}

#[test]
fn seeds_replay_shuffles_of_the_rows_and_summarise_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("rules.toml"), RULES).expect("rules");
    std::fs::write(dir.path().join("data.jsonl"), data()).expect("data");
    let a = ReplayArgs {
        seeds: 3,
        ..args(dir.path(), 5)
    };
    let r = run_seeds(&a).expect("replays");
    assert_eq!(r.seeds, [5, 6, 7]);
    assert_eq!(r.runs.len(), 3);
    assert!(r.runs.iter().all(|run| run.order == "shuffled" && run.rows == 300));
    let again = run_seeds(&a).expect("replays");
    assert_eq!(
        serde_json::to_string(&r).expect("json"),
        serde_json::to_string(&again).expect("json"),
        "the same seeds give the same report"
    );
    let router = r.scores.iter().find(|s| s.name == "router").expect("router");
    let each: Vec<f64> = r
        .runs
        .iter()
        .map(|run| run.scores.iter().find(|s| s.name == "router").expect("router").apgr)
        .collect();
    let mean = each.iter().sum::<f64>() / 3.0;
    assert!((router.apgr.mean - mean).abs() < 1e-12, "{router:?} {each:?}");
    assert_eq!(router.apgr.min, each.iter().copied().fold(f64::INFINITY, f64::min));
    // Fixed policies do not depend on the order.
    let strong = r
        .policies
        .iter()
        .find(|p| p.name == "always-strong")
        .expect("always-strong");
    assert_eq!(strong.success_rate.sd, 0.0);
    let text = super::show::seeds_table(&r);
    assert!(
        text.contains("3 shuffles") && text.contains("below the prior's in"),
        "{text}"
    );
    // The first run's scores were written, one line per row.
    let scores = std::fs::read_to_string(dir.path().join("scores-5.jsonl")).expect("scores");
    assert_eq!(scores.lines().count(), 300);
}

#[test]
fn a_shuffle_is_a_permutation_and_depends_on_its_seed() {
    let mut a: Vec<u32> = (0..100).collect();
    let mut b = a.clone();
    shuffle(&mut a, 1);
    shuffle(&mut b, 2);
    assert_ne!(a, b);
    assert_ne!(a, (0..100).collect::<Vec<_>>());
    a.sort_unstable();
    assert_eq!(a, (0..100).collect::<Vec<_>>());
}

/// Three models, and three kinds of request whose acceptance at each tier
/// is known: `easy` is answered well by the cheapest tier, `medium` needs
/// the middle one and `hard` the strongest. The learned router, seeing only
/// the answer of the model it called, must recover the cheapest tier that
/// meets the target for each kind.
#[test]
fn the_learned_router_recovers_the_best_of_three_tiers_for_each_kind() {
    use crate::testing::{model, RulesBuilder};
    let three = RulesBuilder::new()
        .model(model("small", 0.1, 0.1, 1))
        .model(model("medium", 1.0, 2.0, 2))
        .model(model("large", 10.0, 30.0, 3))
        .workflow(
            "replay",
            "quality_floor = 1\nlearning = { cold_start = 20, exploration = 0.3, target = 0.8, min_gain = 0.15 }",
        )
        .raw("[[rules]]\nname = \"retry-up\"\nworkflow = \"replay\"\nmin_attempt = 2\ntier = 3")
        .raw("[[rules]]\nname = \"rest\"\nworkflow = \"replay\"\ntier = 1")
        .build();
    // P(accepted) by kind at tiers 1, 2 and 3, and the tier that should win:
    // the cheapest whose acceptance meets the target of 0.8.
    let kinds = [
        ("easy", "Name the colour of the sky", [0.95, 0.97, 0.98], "small"),
        (
            "medium",
            "Summarise the argument of the essay below",
            [0.3, 0.9, 0.93],
            "medium",
        ),
        (
            "hard",
            "Prove the conjecture about prime gaps",
            [0.1, 0.3, 0.92],
            "large",
        ),
    ];
    let mut rng = fastrand::Rng::with_seed(19);
    let mut data = String::new();
    let rows = 3000;
    for i in 0..rows {
        let (kind, words, p, _) = kinds[i % 3];
        let ok: Vec<bool> = p.iter().map(|&p| rng.f64() < p).collect();
        data.push_str(&format!(
            r#"{{"id": "r{i}", "task_kind": "{kind}", "prompt": "{words}, case {i}.", "models": {{"small": {{"success": {}}}, "medium": {{"success": {}}}, "large": {{"success": {}}}}}}}"#,
            ok[0], ok[1], ok[2]
        ));
        data.push('\n');
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("rules.toml"), three).expect("rules");
    std::fs::write(dir.path().join("data.jsonl"), data).expect("data");
    let report = run(&args(dir.path(), 3)).expect("replays");
    assert_eq!(report.strong_model, "large");
    assert_eq!(report.weak_model, "small");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("scores-3.jsonl"))
        .expect("scores")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    // Over the last third of the rows, each kind's first attempt goes to its
    // best tier, but for exploration.
    for (k, (kind, _, _, best)) in kinds.iter().enumerate() {
        let late: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i >= rows * 2 / 3 && i % 3 == k)
            .map(|(_, v)| v["model"].as_str().expect("model"))
            .collect();
        let share = |name: &str| late.iter().filter(|m| **m == name).count() as f64 / late.len() as f64;
        let modal = ["small", "medium", "large"]
            .into_iter()
            .max_by(|a, b| share(a).total_cmp(&share(b)))
            .expect("three models");
        assert_eq!(modal, *best, "{kind}: {late:?}");
        assert!(
            share(best) >= 0.8,
            "{kind}: {best} on {:.0}% of late rows",
            share(best) * 100.0
        );
    }
}
