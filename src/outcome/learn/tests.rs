use super::*;
use crate::route::{plan, LearnWith, RawRoute, RouteCall};
use crate::rules::RuleTable;

/// The integration tests' rules: a weak and a strong tier, first attempts
/// to the weak one.
const RULES: &str = include_str!("../../../tests/fixtures/learning.toml");

fn cx() -> Complexity {
    Complexity::default()
}

#[test]
fn features_are_hashed_counts_not_text_and_round_trip() {
    let f = Features::extract(
        ["Prove that 17 is prime", "earlier message"].into_iter(),
        "proof",
        &cx(),
    );
    assert_eq!(f.ones.len(), 3);
    // Five words and four bigrams from the first text, two words and one bigram from the second.
    assert_eq!(f.grams.len(), 12);
    assert!(f.grams.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
    assert!(f
        .grams
        .iter()
        .chain(&f.ones)
        .all(|&i| (i as u64) >= FIXED && (i as usize) < BUCKETS));
    let mut bytes = Vec::new();
    f.encode(&mut bytes);
    assert_eq!(Features::decode(&bytes), Some(f.clone()));
    // Case and punctuation do not matter; order of words does.
    let g = Features::extract(["prove THAT 17, is prime!"].into_iter(), "proof", &cx());
    let h = Features::extract(["Prove that 17 is prime"].into_iter(), "proof", &cx());
    assert_eq!(g, h);
    let k = Features::extract(["prime is 17 that prove"].into_iter(), "proof", &cx());
    assert_ne!(k.grams, h.grams);
    // Damaged bytes are refused, not misread.
    assert_eq!(Features::decode(&bytes[..bytes.len() - 1]), None);
    let mut bad = bytes.clone();
    bad.push(0);
    assert_eq!(Features::decode(&bad), None);
}

#[test]
fn events_round_trip_and_damaged_ones_are_refused() {
    let e = LearnEvent {
        workflow: "w".into(),
        tier: 4,
        retry: true,
        label: 0.5,
        features: Features::extract(["a b c"].into_iter(), "chat", &cx()),
    };
    let body = e.encode_body();
    assert_eq!(LearnEvent::decode_body("w", &body), Some(e));
    let mut bad = body.clone();
    bad[0] = 200; // tier out of range
    assert_eq!(LearnEvent::decode_body("w", &bad), None);
    assert_eq!(LearnEvent::decode_body("w", &body[..3]), None);
}

#[test]
fn learning_moves_toward_the_label() {
    let l = Learner::new();
    let f = Features::extract(["hard question"].into_iter(), "proof", &cx());
    assert_eq!(l.predict("w", 2, &f), None, "nothing learned: cold");
    for _ in 0..30 {
        l.apply(&LearnEvent {
            workflow: "w".into(),
            tier: 2,
            retry: false,
            label: 0.0,
            features: f.clone(),
        });
    }
    let p = l.predict("w", 2, &f).expect("learned");
    assert!(p.p < 0.1, "{p:?}");
    assert_eq!(p.seen, 30);
    assert_eq!(l.predict("w", 4, &f), None, "another tier learned nothing");
    assert_eq!(l.predict("other", 2, &f), None, "another workflow learned nothing");
}

fn pred(p: f64, seen: u64) -> Option<TierPrediction> {
    Some(TierPrediction { p, p_retry: p, seen })
}

#[test]
fn choose_takes_the_cheapest_tier_meeting_the_target_or_near_the_best() {
    let cfg = Learning {
        target: 0.9,
        min_gain: 0.2,
        cold_start: 10,
        ..Learning::default()
    };
    let mut l = Learned::default();
    l.tiers[2] = pred(0.95, 50);
    l.tiers[4] = pred(0.97, 50);
    assert_eq!(
        choose(&l, &[2, 4], &cfg).map(|c| c.0),
        Some(2),
        "both meet: the cheaper"
    );
    l.tiers[2] = pred(0.5, 50);
    assert_eq!(
        choose(&l, &[2, 4], &cfg).map(|c| c.0),
        Some(4),
        "only the strong one meets"
    );
    l.tiers[4] = pred(0.6, 50);
    assert_eq!(
        choose(&l, &[2, 4], &cfg).map(|c| c.0),
        Some(2),
        "none meets; 0.1 gain is not worth it"
    );
    l.tiers[4] = pred(0.8, 50);
    let (t, why) = choose(&l, &[2, 4], &cfg).expect("warm");
    assert_eq!(t, 4, "none meets; a 0.3 gain is");
    assert!(why.contains("tier 2 0.50, tier 4 0.80"), "{why}");
    l.tiers[4] = pred(0.8, 5);
    assert_eq!(choose(&l, &[2, 4], &cfg), None, "a cold tier: the rules decide");
    l.explore = Some(4);
    assert_eq!(
        choose(&l, &[2, 4], &cfg).map(|c| c.0),
        Some(4),
        "exploring works even when cold"
    );
}

#[test]
fn gather_explores_at_the_configured_rate() {
    let cfg = Learning {
        exploration: 0.1,
        ..Learning::default()
    };
    let l = Learner::new();
    let f = Features::default();
    assert_eq!(
        Learned::gather(&l, "w", &[2, 4], &f, &cfg, 0.01).explore,
        None,
        "no feedback yet: no exploration"
    );
    l.apply(&LearnEvent {
        workflow: "w".into(),
        tier: 2,
        retry: false,
        label: 1.0,
        features: f.clone(),
    });
    assert_eq!(Learned::gather(&l, "w", &[2, 4], &f, &cfg, 0.5).explore, None);
    assert_eq!(Learned::gather(&l, "w", &[2, 4], &f, &cfg, 0.01).explore, Some(2));
    assert_eq!(Learned::gather(&l, "w", &[2, 4], &f, &cfg, 0.09).explore, Some(4));
    assert_eq!(
        Learned::gather(&l, "w", &[4], &f, &cfg, 0.01).explore,
        None,
        "nothing to explore"
    );
}

/// Synthetic traffic: the weak model always fails proofs and nearly always
/// answers chat; the strong one nearly always answers both. Routed through
/// `plan`, learning only the outcome of the model called, the router moves
/// proofs to the strong tier and keeps chat on the weak one.
#[test]
fn learning_moves_decisions_the_right_way_on_synthetic_traffic() {
    let mut table = RuleTable::from_str("rules.toml", RULES).expect("valid rules");
    // Explore enough that the strong tier is seen without retries.
    for w in &mut table.workflows {
        w.learning.exploration = 0.2;
        w.learning.cold_start = 10;
    }
    let learner = Learner::new();
    let mut draw = 0.37f64;
    let mut next = || {
        draw = (draw * 9301.0 + 0.4929).fract();
        draw
    };
    let topics = [
        "graphs", "primes", "groups", "sets", "limits", "series", "rings", "fields",
    ];
    let mut late = [[0u32; 2]; 2]; // [kind][weak=0 / strong=1] over the last rounds
    for round in 0..400 {
        for (k, kind) in ["proof", "chat"].into_iter().enumerate() {
            let topic = topics[round % topics.len()];
            let text = if kind == "proof" {
                format!("Prove that every finite {topic} structure of order {round} has the stated property.")
            } else {
                format!("Hi! Could you tell me something nice about {topic}? Number {round}.")
            };
            let call = RouteCall::new(RawRoute {
                workflow: "learn".into(),
                outcome_id: String::new(),
                task_kind: kind.into(),
                messages: std::iter::once(("user".to_string(), text.clone())),
                attempt: 1,
                max_output_tokens: 0,
                deferrable: false,
                capabilities: std::iter::empty(),
                labels: std::iter::empty(),
            })
            .expect("valid call");
            let learn = LearnWith {
                learner: &learner,
                draw: next(),
            };
            let planned = plan(
                &table,
                &table.workflows[0],
                &call,
                Default::default(),
                None,
                Some(learn),
                None,
            )
            .expect("routes");
            let model = &table.models[planned.decision.model];
            let strong = model.name == "strong";
            if round < 5 {
                assert!(!strong, "cold start: the rule sends {kind} to the weak tier");
            }
            if round >= 300 && !planned.decision.explored {
                late[k][usize::from(strong)] += 1;
            }
            let noise = next() < 0.05;
            let accepted = match (kind, strong) {
                ("proof", false) => false,
                _ => !noise,
            };
            learner.apply(&LearnEvent {
                workflow: "learn".into(),
                tier: model.tiers[0],
                retry: false,
                label: if accepted { 1.0 } else { 0.0 },
                features: planned.features.expect("the workflow learns"),
            });
        }
    }
    let [proof, chat] = late;
    assert!(
        proof[1] >= 9 * proof[0],
        "proofs go to the strong tier once learned: {proof:?}"
    );
    assert!(chat[0] >= 9 * chat[1], "chat stays on the weak tier: {chat:?}");
}

#[test]
fn the_radix_sort_orders_buckets_like_a_comparison_sort() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for len in [0usize, 1, 5, 32, 33, 100, 511, 2_000] {
        let mut v: Vec<u32> = (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Some repeats, and the extremes of the range.
                match i % 7 {
                    0 => (BUCKETS - 1) as u32,
                    1 => FIXED as u32,
                    _ => (state % BUCKETS as u64) as u32,
                }
            })
            .collect();
        let mut want = v.clone();
        want.sort_unstable();
        sort_buckets(&mut v, &mut Vec::new());
        assert_eq!(v, want, "{len} buckets");
    }
}

#[test]
fn numbered_features_hash_like_their_names() {
    for n in [0, 1, 9, 10, 42, 64, 99] {
        assert_eq!(numbered(4, b"len", n), named(4, &format!("len{n}")), "{n}");
        assert_eq!(numbered(5, b"dig", n), named(5, &format!("dig{n}")), "{n}");
    }
}

#[test]
fn features_hold_only_their_own_buckets() {
    // Learning keeps a call's features for up to a day: a short request's
    // must not keep the buffer a long one needed.
    let long = "many different words ".repeat(200);
    let big = Features::extract(std::iter::once(long.as_str()), "k", &cx());
    let f = Features::extract(std::iter::once("Is order 7 late?"), "k", &cx());
    assert_eq!(f.grams.len(), 7, "4 words and 3 bigrams: {:?}", f.grams);
    assert_eq!(f.grams.capacity(), f.grams.len());
    assert_eq!(big.grams.capacity(), big.grams.len());
}
