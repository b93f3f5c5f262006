//! Evaluates the shipped understanding model and rules as a new user meets
//! them: the shipped `routing-rules/`, no task_kind from the caller. Every
//! set it reads is kept apart from training (scripts/eval-understanding).
//!
//! - the development pairs (`data/understanding/dev_pairs.jsonl`): hard
//!   above easy, also with the easy one padded with chatter to the hard
//!   one's length; the tiers each needs; the kind of both;
//! - the RouterBench subset (licence unverified, evaluation only): AUC of
//!   the score for a cheap model's failures, and MBPP's prompts as `code`;
//! - ALMA's WMT prompts (research use, evaluation only) as `translation`;
//! - the spread of tiers over a mix of all of them and RouteLLM's MMLU
//!   prompts, routed in turn through one workflow (its histogram learning
//!   the mix as a server's would; its first 300 requests too), and each
//!   routed with no history at all.
//!
//! - the open questions of eight categories (`data/understanding/dev_open.jsonl`)
//!   and the math word problems (`dev_word_problems.jsonl`): the kind of each.
//!
//! usage: eval_understanding --rules DIR --dev-pairs F [--dev-open F] [--dev-word-problems F]
//!        [--routerbench F] [--alma F] [--mmlu F]

use std::collections::BTreeMap;
use std::path::Path;

use switchyard::route::sketch::ScoreSketches;
use switchyard::route::{plan, Across, RawRoute, RouteCall};
use switchyard::rules::reload::Rules;
use switchyard::understand::auc;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn rows(path: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON row"))
        .collect()
}

/// What routing one prompt came to.
struct Seen {
    kind: String,
    score: f64,
    tier: u8,
}

fn route(rules: &Rules, sketches: Option<&ScoreSketches>, text: &str) -> Seen {
    let table = rules.current();
    let workflow = table.workflow("general").expect("the shipped rules have `general`");
    let call = RouteCall::new(RawRoute {
        workflow: "general".into(),
        outcome_id: String::new(),
        task_kind: String::new(),
        messages: vec![("user".to_string(), text.to_string())].into_iter(),
        attempt: 1,
        max_output_tokens: 0,
        deferrable: false,
        capabilities: std::iter::empty(),
        labels: std::iter::empty(),
    })
    .expect("a valid call");
    let across = Across { cache: None, sketches };
    let p = plan(&table, workflow, &call, Default::default(), across, None, None).expect("routes");
    if let Some(s) = sketches {
        s.observe(&table.understanding, "general", p.est.complexity);
    }
    Seen {
        // The tier the request needs (the rule's), as RouteResponse's
        // required_tier says: a class with no model at tier 2 serves an
        // easy request at tier 3, but it still needed only tier 2.
        tier: p.decision.required_tier,
        kind: p.est.task_kind,
        score: p.est.complexity,
    }
}

/// Prints how many of `all`'s prompts, each routed with no history, read as `kind`.
fn print_read_as(rules: &Rules, all: &[serde_json::Value], kind: &str, label: &str) {
    let right = all
        .iter()
        .filter(|v| route(rules, None, v["prompt"].as_str().unwrap_or_default()).kind == kind)
        .count();
    println!("{label}: {kind} {} of {}", pct(right, all.len()), all.len());
}

fn pct(n: usize, of: usize) -> String {
    format!("{:.0}%", 100.0 * n as f64 / of.max(1) as f64)
}

fn main() {
    let rules = Rules::load(Path::new(&arg("--rules").expect("--rules DIR"))).unwrap_or_else(|e| panic!("{e}"));
    let dev = rows(&arg("--dev-pairs").expect("--dev-pairs F"));
    // Other chatter than the trainer pads with.
    const PAD: [&str; 4] = [
        "Hey! Hope everything is good on your side and the weather is nicer than here.",
        "Sorry if this is a silly one, I have been going back and forth on it all afternoon.",
        "Many thanks, I owe you a coffee, really appreciate you taking the time.",
        "Quick question before my next meeting starts, thanks a lot for bearing with me.",
    ];
    let mut mix: Vec<String> = Vec::new();
    let (mut above, mut above_padded, mut hard_up, mut easy_down, mut padded_down, mut kinds) = (0, 0, 0, 0, 0, 0);
    let mut missed: BTreeMap<String, usize> = BTreeMap::new();
    for (i, v) in dev.iter().enumerate() {
        let kind = v["kind"].as_str().unwrap_or_default();
        let (easy, hard) = (
            v["easy"].as_str().unwrap_or_default(),
            v["hard"].as_str().unwrap_or_default(),
        );
        let mut padded = format!("{} {} {easy}", PAD[i % 4], PAD[(i + 1) % 4]);
        while padded.len() < hard.len() {
            padded = format!("{padded} {}", PAD[(i + 2) % 4]);
        }
        let (e, h, p) = (
            route(&rules, None, easy),
            route(&rules, None, hard),
            route(&rules, None, &padded),
        );
        above += usize::from(h.score > e.score);
        above_padded += usize::from(h.score > p.score);
        hard_up += usize::from(h.tier >= 3);
        easy_down += usize::from(e.tier <= 2);
        padded_down += usize::from(p.tier <= 2);
        for s in [&e, &h] {
            kinds += usize::from(s.kind == kind);
            if s.kind != kind {
                *missed.entry(format!("{kind}->{}", s.kind)).or_default() += 1;
            }
        }
        mix.extend([easy.to_string(), hard.to_string()]);
    }
    let n = dev.len();
    println!("| development pairs ({n}, never trained on) | |");
    println!("|---|---|");
    println!("| hard scores above easy | {} |", pct(above, n));
    println!(
        "| hard scores above the easy padded to its length | {} |",
        pct(above_padded, n)
    );
    println!("| hard needs tier 3 or more | {} |", pct(hard_up, n));
    println!("| easy needs tier 2 or less | {} |", pct(easy_down, n));
    println!("| padded easy needs tier 2 or less | {} |", pct(padded_down, n));
    println!("| kind inferred right (of {}) | {} |", 2 * n, pct(kinds, 2 * n));
    println!();
    println!("kinds missed: {missed:?}");

    if let Some(path) = arg("--routerbench") {
        let (mut by_score, mut by_len) = (Vec::new(), Vec::new());
        let mut by_part: BTreeMap<String, Vec<(f64, bool)>> = BTreeMap::new();
        let (mut code, mut code_right) = (0, 0);
        for (i, v) in rows(&path).iter().enumerate() {
            let Some(cheap) = v["score"]["mistralai/mistral-7b-chat"].as_f64() else {
                continue;
            };
            let text = v["prompt"].as_str().unwrap_or_default();
            let s = route(&rules, None, text);
            by_score.push((s.score, cheap < 0.5));
            by_len.push((text.len() as f64, cheap < 0.5));
            let id = v["id"].as_str().unwrap_or_default();
            let part = id.split(['/', '.']).nth(1).unwrap_or("other").to_string();
            by_part.entry(part).or_default().push((s.score, cheap < 0.5));
            if id.contains("mbpp") {
                code += 1;
                code_right += usize::from(s.kind == "code");
            }
            if i % 8 == 0 {
                mix.push(text.to_string());
            }
        }
        println!();
        println!(
            "RouterBench subset (evaluation only, {} rows): AUC for mistral-7b's failures {:.3} (length alone {:.3}); MBPP as code {} of {code}",
            by_score.len(),
            auc(&mut by_score),
            auc(&mut by_len),
            pct(code_right, code)
        );
        for (part, mut scores) in by_part {
            let failed = scores.iter().filter(|(_, f)| *f).count();
            let mean = scores.iter().map(|(s, _)| s).sum::<f64>() / scores.len() as f64;
            println!(
                "  {part}: {} rows, mistral-7b fails {}, mean score {mean:.3}, AUC within {:.3}",
                scores.len(),
                pct(failed, scores.len()),
                auc(&mut scores)
            );
        }
    }
    if let Some(path) = arg("--dev-open") {
        // Open questions of eight categories; each category has one right
        // kind (role-play is `chat`, science and humanities are `qa`).
        let mut by: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let mut tiers = [0usize; 6];
        let all = rows(&path);
        for v in &all {
            let text = v["prompt"].as_str().unwrap_or_default();
            let s = route(&rules, None, text);
            let e = by
                .entry(v["category"].as_str().unwrap_or_default().to_string())
                .or_default();
            e.1 += 1;
            e.0 += usize::from(s.kind == v["kind"].as_str().unwrap_or_default());
            tiers[usize::from(s.tier.min(5))] += 1;
        }
        let right: usize = by.values().map(|v| v.0).sum();
        let parts: Vec<String> = by.iter().map(|(c, (r, n))| format!("{c} {}", pct(*r, *n))).collect();
        println!();
        println!(
            "open questions by category (development set, never trained on): kind right {} of {} ({}); tiers 2/3/4/5 with no history {}/{}/{}/{}",
            pct(right, all.len()),
            all.len(),
            parts.join(", "),
            pct(tiers[2], all.len()),
            pct(tiers[3], all.len()),
            pct(tiers[4], all.len()),
            pct(tiers[5], all.len())
        );
    }
    if let Some(path) = arg("--dev-word-problems") {
        let all = rows(&path);
        print_read_as(
            &rules,
            &all,
            "math",
            "math word problems (development set, never trained on)",
        );
    }
    if let Some(path) = arg("--alma") {
        let all = rows(&path);
        print_read_as(&rules, &all, "translation", "ALMA WMT prompts (evaluation only)");
        mix.extend(
            all.iter()
                .step_by(20)
                .map(|v| v["prompt"].as_str().unwrap_or_default().to_string()),
        );
    }
    if let Some(path) = arg("--mmlu") {
        mix.extend(
            rows(&path)
                .iter()
                .step_by(40)
                .map(|v| v["prompt"].as_str().unwrap_or_default().to_string()),
        );
    }
    // The mix in a fixed interleaved order, as traffic would arrive.
    let mut order: Vec<usize> = (0..mix.len()).collect();
    order.sort_by_key(|&i| (i * 7919) % mix.len());
    let sketches = ScoreSketches::new();
    let (mut served, mut fresh) = ([0usize; 6], [0usize; 6]);
    // A short run as well: the first requests of a new workflow, while its
    // calibration still weighs as much as its own traffic.
    const EARLY: usize = 300;
    let mut early = [0usize; 6];
    for (n, &i) in order.iter().enumerate() {
        let t = route(&rules, Some(&sketches), &mix[i]).tier as usize;
        served[t] += 1;
        if n < EARLY {
            early[t] += 1;
        }
        fresh[route(&rules, None, &mix[i]).tier as usize] += 1;
    }
    println!();
    println!(
        "tiers over a mix of {} requests (pairs, RouterBench, ALMA, MMLU):",
        mix.len()
    );
    println!("| | tier 2 | tier 3 | tier 4 | tier 5 |");
    println!("|---|---|---|---|---|");
    for (name, t, n) in [
        ("one workflow, learning its mix", served, mix.len()),
        ("its first 300 requests", early, EARLY.min(mix.len())),
        ("each request with no history", fresh, mix.len()),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} |",
            pct(t[2] + t[1], n),
            pct(t[3], n),
            pct(t[4], n),
            pct(t[5], n)
        );
    }
}
