use super::*;
use crate::route::{plan, LearnWith, RawRoute, RouteCall};
use crate::rules::{Learning, RuleTable};

/// The integration tests' rules: a weak and a strong tier, first attempts
/// to the weak one.
const RULES: &str = include_str!("../../tests/fixtures/learning.toml");

fn cx() -> Complexity {
    Complexity::default()
}

#[test]
fn features_are_hashed_counts_not_text_and_round_trip() {
    let f = Features::extract(
        ["Prove that 17 is prime", "earlier message"].into_iter(),
        &Request::new("proof", &cx()),
    );
    // The task kind and ten log buckets of counts.
    assert_eq!(f.ones.len(), 11);
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
    let g = Features::extract(["prove THAT 17, is prime!"].into_iter(), &Request::new("proof", &cx()));
    let h = Features::extract(["Prove that 17 is prime"].into_iter(), &Request::new("proof", &cx()));
    assert_eq!(g.grams, h.grams);
    let k = Features::extract(["prime is 17 that prove"].into_iter(), &Request::new("proof", &cx()));
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
        features: Features::extract(["a b c"].into_iter(), &Request::new("chat", &cx())),
    };
    let body = e.encode_body();
    assert_eq!(LearnEvent::decode_body("w", &body), Some(e));
    let mut bad = body.clone();
    bad[0] = 200; // tier out of range
    assert_eq!(LearnEvent::decode_body("w", &bad), None);
    assert_eq!(LearnEvent::decode_body("w", &body[..3]), None);
}

/// Calls labelled by a build that did not keep the prior end after the
/// grams: they still fold in, with a neutral prior, so an upgraded sidecar
/// rebuilds its model from the store it already has.
#[test]
fn events_stored_before_the_prior_was_kept_still_decode() {
    let cx = cx();
    let mut r = Request::new("chat", &cx);
    r.prior = 0.8;
    let e = LearnEvent {
        workflow: "w".into(),
        tier: 2,
        retry: false,
        label: 1.0,
        features: Features::extract(["an older call"].into_iter(), &r),
    };
    let body = e.encode_body();
    let older = &body[..body.len() - 4];
    let decoded = LearnEvent::decode_body("w", older).expect("an older event");
    assert_eq!(decoded.features.prior, 0.5);
    assert_eq!(decoded.features.grams, e.features.grams);
    // A prior outside 0..1 is damage, not a prior.
    let mut bad = body.clone();
    let n = bad.len();
    bad[n - 4..].copy_from_slice(&2.0f32.to_le_bytes());
    assert_eq!(LearnEvent::decode_body("w", &bad), None);
}

#[test]
fn learning_moves_toward_the_label() {
    let l = Learner::new();
    let f = Features::extract(["hard question"].into_iter(), &Request::new("proof", &cx()));
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
    Some(TierPrediction {
        p,
        p_retry: p,
        sd: 0.1,
        seen,
        doubt: 0.1,
    })
}

fn learned(tiers: &[(u8, Option<TierPrediction>)], gate: f64, explore: f64, draw: f64) -> Learned {
    let mut l = Learned {
        tiers: [None; MAX_TIER as usize + 1],
        gate,
        prior: 0.3,
        explore,
        draw,
    };
    for (t, p) in tiers {
        l.tiers[*t as usize] = *p;
    }
    l
}

#[test]
fn choose_takes_the_cheapest_tier_meeting_the_target_or_near_the_best() {
    let cfg = Learning {
        target: 0.9,
        min_gain: 0.1,
        cold_start: 20,
        ..Learning::default()
    };
    let tier = |l: &Learned| {
        let c = choose(l, &[2, 4], &cfg, 2);
        c.learned.then_some(c.tier)
    };
    let l = learned(&[(2, pred(0.95, 50)), (4, pred(0.99, 50))], 1.0, 0.0, 0.5);
    assert_eq!(tier(&l), Some(2), "the weak tier meets the target");
    let l = learned(&[(2, pred(0.5, 50)), (4, pred(0.95, 50))], 1.0, 0.0, 0.5);
    assert_eq!(tier(&l), Some(4), "only the strong tier meets it");
    let l = learned(&[(2, pred(0.8, 50)), (4, pred(0.85, 50))], 1.0, 0.0, 0.5);
    assert_eq!(tier(&l), Some(2), "none meets it; the weak tier is within 0.1");
    let c = choose(&l, &[2, 4], &cfg, 2);
    let why = c.reason.expect("a reason");
    assert!(why.contains("none meets 0.90"), "{why}");
    assert_eq!(c.propensity, 1.0, "no exploration: the choice is certain");
    let cold = learned(&[(2, pred(0.8, 50)), (4, pred(0.85, 5))], 1.0, 0.0, 0.5);
    assert_eq!(tier(&cold), None, "a cold tier: the rules decide");
    assert_eq!(choose(&cold, &[2, 4], &cfg, 4).tier, 4, "the rule's tier stands");
    let shut = learned(&[(2, pred(0.5, 50)), (4, pred(0.95, 50))], 0.0, 0.0, 0.5);
    assert_eq!(tier(&shut), None, "a shut gate: the rules decide");
}

#[test]
fn exploration_is_scaled_by_uncertainty_and_every_choice_has_its_propensity() {
    let cfg = Learning {
        exploration: 0.2,
        ..Learning::default()
    };
    let l = Learner::new();
    let f = Features::extract(
        ["What is the capital of France?"].into_iter(),
        &Request::new("chat", &cx()),
    );
    assert_eq!(
        Learned::gather(&l, "w", &[2, 4], &f, &cfg, 0.0).explore,
        0.0,
        "no feedback yet: no exploration"
    );
    let event = |tier: u8, label: f32| LearnEvent {
        workflow: "w".into(),
        tier,
        retry: false,
        label,
        features: f.clone(),
    };
    l.apply(&event(2, 1.0));
    let unsure = Learned::gather(&l, "w", &[2, 4], &f, &cfg, 0.0);
    assert!(
        (unsure.explore - 0.2).abs() < 1e-9,
        "a tier never tried: explore at the cap, {}",
        unsure.explore
    );
    for _ in 0..300 {
        l.apply(&event(2, 1.0));
        l.apply(&event(4, 1.0));
    }
    let known = Learned::gather(&l, "w", &[2, 4], &f, &cfg, 0.0);
    assert!(
        known.explore < unsure.explore / 2.0,
        "a request like many seen explores less: {} vs {}",
        known.explore,
        unsure.explore
    );
    // The propensities of a call's possible tiers sum to 1, and each is the
    // share of draws that lead to it.
    let tiers = [1u8, 2, 4];
    let mut l3 = learned(
        &[(1, pred(0.3, 50)), (2, pred(0.95, 50)), (4, pred(0.97, 50))],
        1.0,
        0.3,
        0.0,
    );
    l3.tiers[4] = Some(TierPrediction {
        doubt: 0.3,
        ..pred(0.97, 50).expect("a prediction")
    });
    let draws = 100_000;
    let mut counts = [0u32; 5];
    let mut propensity = [0f64; 5];
    for k in 0..draws {
        l3.draw = (k as f64 + 0.5) / draws as f64;
        let c = choose(&l3, &tiers, &cfg, 1);
        counts[c.tier as usize] += 1;
        propensity[c.tier as usize] = c.propensity;
        assert_eq!(
            c.explored,
            c.tier != 2,
            "tier 2 meets the target: others are exploration"
        );
    }
    let total: f64 = tiers.iter().map(|&t| propensity[t as usize]).sum();
    assert!((total - 1.0).abs() < 1e-9, "{propensity:?}");
    for t in tiers {
        let share = counts[t as usize] as f64 / draws as f64;
        assert!(
            (share - propensity[t as usize]).abs() < 1e-3,
            "tier {t}: {share} vs {propensity:?}"
        );
    }
    assert!(
        propensity[4] > propensity[1],
        "the more uncertain tier is explored more: {propensity:?}"
    );
    // What the decision log records: every tier's probability, which is
    // what `choose` gives the tier it lands on.
    let c = choose(&l3, &tiers, &cfg, 1);
    for (t, p) in l3.probabilities(&tiers, c.policy_tier) {
        assert!(
            (p - propensity[t as usize]).abs() < 1e-12,
            "tier {t}: {p} vs {propensity:?}"
        );
    }
    // A floor under exploration keeps a sure model exploring.
    let floored = Learning {
        min_exploration: 0.1,
        ..cfg
    };
    let sure = Learned::gather(&l, "w", &[2, 4], &f, &floored, 0.0);
    assert!(
        (sure.explore - known.explore.max(0.1)).abs() < 1e-12,
        "{} vs {}",
        sure.explore,
        known.explore
    );
}

/// Requests of five kinds whose prior (complexity) differs.
fn varied(i: usize) -> Features {
    let kinds = ["alpha", "beta", "gamma", "delta", "epsilon"];
    let text = format!("request {i} about {} with {} words", kinds[i % 5], i % 13);
    let cx = cx();
    let mut r = Request::new(kinds[i % 5], &cx);
    r.prior = (i % 97) as f64 / 100.0;
    Features::extract([text.as_str()].into_iter(), &r)
}

fn scores(l: &Learner, n: usize) -> Vec<(f64, f64)> {
    (0..n)
        .map(|i| {
            let f = varied(i);
            let g = Learned::gather(l, "w", &[2, 4], &f, &Learning::default(), 0.5);
            (g.score(&[2, 4]).expect("a score"), f64::from(f.prior))
        })
        .collect()
}

fn ranks_as_the_prior(s: &[(f64, f64)]) -> bool {
    s.iter()
        .all(|a| s.iter().all(|b| a.1.total_cmp(&b.1) == a.0.total_cmp(&b.0)))
}

#[test]
fn with_no_labels_or_noise_for_labels_the_score_ranks_as_the_prior() {
    let l = Learner::new();
    assert!(ranks_as_the_prior(&scores(&l, 200)), "no labels: the prior itself");
    // Labels that are coin flips, whatever the request: nothing to learn.
    let mut rng = fastrand::Rng::with_seed(5);
    for i in 0..3000 {
        l.apply(&LearnEvent {
            workflow: "w".into(),
            tier: if rng.bool() { 2 } else { 4 },
            retry: false,
            label: f32::from(u8::from(rng.f64() < 0.7)),
            features: varied(i),
        });
    }
    assert_eq!(l.gate("w"), 0.0, "noise does not open the gate");
    assert!(
        ranks_as_the_prior(&scores(&l, 200)),
        "noise: the score stays at the prior"
    );
    // Labels that follow the kind open it.
    let m = Learner::new();
    for i in 0..3000 {
        let hard = i % 5 < 2;
        m.apply(&LearnEvent {
            workflow: "w".into(),
            tier: 2,
            retry: false,
            label: f32::from(u8::from(!hard)),
            features: varied(i),
        });
    }
    assert_eq!(m.gate("w"), 1.0, "labels that carry signal open the gate");
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
        // The prior scores these chat lines at about 0.16 (a cheap model
        // fails one in six), and the learner stays anchored to it: its P for
        // the weak tier settles near 0.85, where the chat's 0.95 would take
        // thousands of labels. A target of 0.8 asks what the test is about,
        // that labels move proofs up and leave chat where it is.
        w.learning.target = 0.8;
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
                Default::default(),
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
    let big = Features::extract(std::iter::once(long.as_str()), &Request::new("k", &cx()));
    let f = Features::extract(std::iter::once("Is order 7 late?"), &Request::new("k", &cx()));
    assert_eq!(f.grams.len(), 7, "4 words and 3 bigrams: {:?}", f.grams);
    assert_eq!(f.grams.capacity(), f.grams.len());
    assert_eq!(big.grams.capacity(), big.grams.len());
}

#[test]
fn the_shape_of_a_prompt_is_counted_in_log_buckets() {
    let shaped = "Compute 3 + 4 * 5 = ? Then 10 / 2.\n- first item\n- second item\n1. numbered\n```\ncode\n```\nIs it done? Yes!";
    let plain =
        "compute three plus four times five then ten over two first item second item numbered code is it done yes";
    let r = Request {
        task_kind: "k",
        complexity: &cx(),
        prior: 0.5,
        tokens: 40,
    };
    let a = Features::extract([shaped].into_iter(), &r);
    let b = Features::extract([plain].into_iter(), &r);
    let bucket = |prefix: &[u8; 3], n: u32| numbered(6, prefix, n);
    // 3, 4, 5, 10, 2 and 1: six numbers (log2 bucket 3); `+ * = /` and two
    // list dashes: six operators; `?` twice; three list items; two fences.
    for (name, want) in [
        (b"num", bucket(b"num", 3)),
        (b"ops", bucket(b"ops", 3)),
        (b"qst", bucket(b"qst", 2)),
        (b"lst", bucket(b"lst", 2)),
        (b"fen", bucket(b"fen", 2)),
        (b"tok", bucket(b"tok", 6)),
    ] {
        assert!(
            a.ones.contains(&want),
            "{}: {:?}",
            String::from_utf8_lossy(name),
            a.ones
        );
    }
    for prefix in [b"num", b"ops", b"qst", b"lst", b"fen"] {
        assert!(
            b.ones.contains(&bucket(prefix, 0)),
            "no {}",
            String::from_utf8_lossy(prefix)
        );
    }
    assert_eq!(b.ones.len(), a.ones.len());
    assert_eq!(a.prior, 0.5);
}
