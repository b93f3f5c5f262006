use super::*;
use crate::estimate::{compute_work, estimate, MessageRef, Role};
use crate::rules::RuleTable;

const RULES: &str = include_str!("../../tests/fixtures/unit/decide.toml");

fn table() -> RuleTable {
    RuleTable::from_str("t.toml", RULES).expect("valid test rules")
}

fn route(
    t: &RuleTable,
    workflow: &str,
    text: &str,
    kind: &str,
    input: RouteInput,
    max_out: u32,
) -> Result<(Decision, Vec<Candidate>), NoAdequateModel> {
    let wf = t.workflow(workflow).expect("workflow");
    let msgs = [MessageRef {
        role: Role::User,
        content: text,
    }];
    let work = compute_work(&msgs, &wf.encodings);
    let est = estimate(t, wf, kind, &msgs, &work, max_out);
    let mut trace = Vec::new();
    decide(t, wf, &input, &est, &[], Some(&mut trace)).map(|d| (d, trace))
}

const FIRST: RouteInput = RouteInput {
    attempt: 1,
    deferrable: false,
    capabilities: crate::rules::Capabilities(0),
    downgrade: false,
    learned: None,
    rejected_tier: None,
    paced: None,
};

const HARD: &str = "Design a lock-free queue and explain why it is linearizable. First derive the invariants, then \
    prove each step; finally compare it with a locked queue. You must handle ABA exactly, never allocate, and \
    return JSON in this schema. Why is 3*x^2 = 12 solved by x = 2? Analyze the tradeoffs.\n1. push\n2. pop\n3. len";

#[test]
fn easy_prompt_goes_cheap_and_hard_prompt_goes_strong() {
    let t = table();
    // Declared `general`: the classifier would read HARD as code.
    let (easy, _) = route(&t, "w", "What is the capital of France?", "general", FIRST, 0).expect("easy routes");
    assert_eq!(t.models[easy.model].name, "cheap");
    assert_eq!(easy.rule, "easy");
    let (hard, _) = route(&t, "w", HARD, "general", FIRST, 0).expect("hard routes");
    assert_eq!(hard.rule, "hard");
    assert_eq!(hard.required_tier, 4);
    // mid-twin is the only tier-4 general model at the mid price.
    assert_eq!(t.models[hard.model].name, "mid-twin");
    assert!(
        hard.reason
            .starts_with("cheapest of 2 models at tier >= 4 for general: est. $"),
        "{}",
        hard.reason
    );
}

#[test]
fn task_class_selects_the_tiers_that_apply() {
    let t = table();
    let (d, _) = route(&t, "w", HARD, "code", FIRST, 0).expect("routes");
    // For code, `mid` is tier 4 and `mid-twin` only 3.
    assert_eq!(t.models[d.model].name, "mid");
}

#[test]
fn tie_on_cost_goes_to_the_higher_tier() {
    let t = table();
    // Tier 3 for general: mid (3) and mid-twin (4) cost the same; mid-twin wins.
    let input = RouteInput {
        capabilities: crate::rules::Capabilities::TOOLS,
        ..FIRST
    };
    let (d, trace) = route(&t, "w", "hi", "", input, 0).expect("routes");
    assert_eq!(t.models[d.model].name, "mid-twin");
    let costs: Vec<i64> = trace
        .iter()
        .filter(|c| c.model.starts_with("mid"))
        .map(|c| c.estimated_cost_nanousd)
        .collect();
    assert_eq!(costs[0], costs[1]);
}

#[test]
fn capabilities_context_and_output_limits_filter_candidates() {
    let t = table();
    let vision = RouteInput {
        capabilities: crate::rules::Capabilities::VISION,
        ..FIRST
    };
    let (d, trace) = route(&t, "w", "describe this", "", vision, 0).expect("routes");
    assert_eq!(t.models[d.model].name, "strong");
    assert!(matches!(trace[0].rejected, Some(Rejection::MissingCapabilities { .. })));

    let long = "lorem ipsum dolor ".repeat(600);
    let (d, trace) = route(&t, "w", &long, "", FIRST, 0).expect("routes");
    assert_ne!(t.models[d.model].name, "cheap");
    assert!(
        matches!(trace[0].rejected, Some(Rejection::ContextTooSmall { .. })),
        "{:?}",
        trace[0]
    );

    let (d, trace) = route(&t, "w", "hi", "", FIRST, 5000).expect("routes");
    assert_ne!(t.models[d.model].name, "cheap");
    assert!(matches!(trace[0].rejected, Some(Rejection::OutputTooLong { .. })));
}

#[test]
fn no_adequate_model_says_what_to_change() {
    let t = table();
    let err = route(&t, "w", "hi", "", FIRST, 100_000).expect_err("nothing has 100k output");
    assert!(
        err.message.contains("no model allowed in workflow `w`"),
        "{}",
        err.message
    );
    assert!(err.message.contains("lower max_output_tokens"), "{}", err.message);
}

#[test]
fn deferrable_is_priced_at_the_batch_discount() {
    let t = table();
    let retry = RouteInput { attempt: 2, ..FIRST };
    let (full, _) = route(&t, "w", "hi", "", retry, 100).expect("routes");
    let (batch, _) = route(
        &t,
        "w",
        "hi",
        "",
        RouteInput {
            deferrable: true,
            ..retry
        },
        100,
    )
    .expect("routes");
    assert_eq!(t.models[full.model].name, "strong");
    assert_eq!(batch.cost_nanos, (full.cost_nanos + 9) / 10);
    assert!(batch.reason.ends_with("at batch price"), "{}", batch.reason);
}

#[test]
fn attempts_floor_and_pins_apply() {
    let t = table();
    let (d, _) = route(&t, "w", "hi", "", RouteInput { attempt: 2, ..FIRST }, 0).expect("routes");
    assert_eq!((d.rule.as_str(), d.required_tier), ("retry", 5));

    let (d, _) = route(&t, "floor4", "hi", "", FIRST, 0).expect("routes");
    assert_eq!(d.required_tier, 4, "the floor lifts the easy rule's tier 2");

    let (d, _) = route(&t, "pinned", "hi", "", FIRST, 0).expect("routes");
    assert_eq!(
        (t.models[d.model].name.as_str(), d.rule.as_str()),
        ("cheap", "pin-cheap")
    );
    // The pinned model cannot take vision: the next matching rule decides.
    let vision = RouteInput {
        capabilities: crate::rules::Capabilities::VISION,
        ..FIRST
    };
    let (d, _) = route(&t, "pinned", "hi", "", vision, 0).expect("routes");
    assert_eq!(t.models[d.model].name, "strong");
    assert!(d.reason.contains("pin rule(s) pin-cheap skipped"), "{}", d.reason);
}

#[test]
fn a_downgrade_steps_one_tier_down_but_never_below_the_floor() {
    let t = table();
    let (d, _) = route(
        &t,
        "w",
        HARD,
        "",
        RouteInput {
            downgrade: true,
            ..FIRST
        },
        0,
    )
    .expect("routes");
    assert_eq!((d.required_tier, d.downgraded_from), (3, Some(4)));
    assert!(
        d.reason
            .starts_with("budget past its soft threshold: tier 4 stepped down to 3;"),
        "{}",
        d.reason
    );
    // floor4's floor is 4: the hard rule's tier 4 cannot step down.
    let (d, _) = route(
        &t,
        "floor4",
        HARD,
        "",
        RouteInput {
            downgrade: true,
            ..FIRST
        },
        0,
    )
    .expect("routes");
    assert_eq!((d.required_tier, d.downgraded_from), (4, None));
}

#[test]
fn decision_is_deterministic() {
    let t = table();
    let a = route(&t, "w", HARD, "", FIRST, 0).expect("routes").0;
    let b = route(&t, "w", HARD, "", FIRST, 0).expect("routes").0;
    assert_eq!((a.model, a.cost_nanos, a.reason), (b.model, b.cost_nanos, b.reason));
}

#[test]
fn available_tiers_are_the_allowed_models_distinct_tiers_from_the_floor_up() {
    let t = table();
    let general = t.classes.iter().position(|c| c == "general").expect("general");
    let code = t.classes.iter().position(|c| c == "code").expect("code");
    let w = t.workflow("w").expect("w");
    let want = |class: usize, floor: u8, max: u8| {
        let mut v: Vec<u8> = w
            .allowed
            .iter()
            .map(|&i| t.models[i].tiers[class])
            .filter(|&x| x >= floor && x <= max)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    for class in [general, code] {
        assert_eq!(available_tiers(w, class), want(class, w.quality_floor, w.max_tier));
    }
    let floor4 = t.workflow("floor4").expect("floor4");
    assert!(available_tiers(floor4, general).iter().all(|&x| x >= 4));
    assert_eq!(available_tiers(w, code).windows(2).filter(|p| p[0] >= p[1]).count(), 0);
}

/// Pacing with the learner's evidence: two requests whose cluster the
/// learner rates alike still part by how hard each is. At every price the
/// harder one gets a tier at least as strong, and at some prices a stronger
/// one, even though it costs more.
#[test]
fn a_paced_pick_with_the_learner_still_reads_the_requests_difficulty() {
    let rules = crate::testing::RulesBuilder::new()
        .model(crate::testing::model("weak", 0.5, 0.5, 3))
        .model(crate::testing::model("strong", 10.0, 30.0, 5))
        .workflow(
            "p",
            "quality_floor = 3\nlearning = { target = 0.99, min_gain = 0.2, cold_start = 20 }",
        )
        .build();
    let t = RuleTable::from_str("paced.toml", &rules).expect("rules");
    let wf = t.workflow("p").expect("workflow");
    assert!(wf.learning.enabled, "the learner's values are read");
    let mut learned = crate::learn::Learned {
        tiers: [None; crate::rules::MAX_TIER as usize + 1],
        gate: 1.0,
        prior: 0.3,
        explore: 0.0,
        draw: 0.5,
    };
    let pred = |p: f64| {
        Some(crate::learn::TierPrediction {
            p,
            p_retry: p,
            sd: 0.05,
            seen: 500,
            doubt: 0.05,
        })
    };
    (learned.tiers[3], learned.tiers[5]) = (pred(0.7), pred(0.8));
    let tier_at = |text: &str, price: f64| {
        let msgs = [MessageRef {
            role: Role::User,
            content: text,
        }];
        let work = compute_work(&msgs, &wf.encodings);
        let est = estimate(&t, wf, "general", &msgs, &work, 16);
        let input = RouteInput {
            learned: Some(learned),
            paced: Some(Paced {
                price_per_nano: price,
                ratio: Some(1.0),
            }),
            ..FIRST
        };
        let d = decide(&t, wf, &input, &est, &[], None).expect("routes");
        (t.models[d.model].tiers[est.class], est.complexity)
    };
    let (easy, hard) = ("What is the capital of France?", HARD);
    assert!(
        tier_at(hard, 0.0).1 > tier_at(easy, 0.0).1 + 0.2,
        "the score tells them apart"
    );
    let mut parted = false;
    for k in 0..60 {
        let price = 1e-9 * 10f64.powf(f64::from(k) / 6.0);
        let (e, h) = (tier_at(easy, price).0, tier_at(hard, price).0);
        assert!(h >= e, "at λ {price:e} the hard request got tier {h}, the easy one {e}");
        parted |= h > e;
    }
    assert!(parted, "some price sends the hard request strong and the easy one weak");
}
