//! The decision core, measured with criterion:
//!
//! - `decide`: the pure decision alone, on a precomputed estimate;
//! - `estimate+decide/N`: counting, scanning and deciding a request whose user
//!   message is about N tokens, with nothing cached;
//! - `count-only/N`: Switchyard's o200k token count alone;
//! - `scan-only/N`: the complexity scan alone;
//! - `count-bpe-openai/N`: the same count through `bpe-openai`'s regex
//!   pre-tokenizer, the baseline measured in the same run (equal counts);
//! - `learn-predict/N`: what learning adds to a Route: the request's features
//!   (hashed words and bigrams) and a prediction for each of the workflow's
//!   tiers, on a model that has learned 5,000 calls;
//! - `learn-update`: one labelled call folded into the model (off the hot
//!   path: the learning task does this);
//! - `understand/N`: the task kind and the difficulty score of an N-token
//!   request, from one pass (the shipped understanding model).
//!
//! Prompts are real MMLU questions from `../shared/bench-data/replay/` when
//! that folder is present, otherwise varied generated English.
//!
//! Run: `cargo bench --bench decide`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchyard::decide::{decide, RouteInput};
use switchyard::estimate::{compute_work, estimate, tokens, MessageRef, Role};
use switchyard::rules::{Capabilities, Encoding, RuleTable};

fn corpus() -> String {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench-data/replay/mmlu.jsonl");
    if let Ok(text) = std::fs::read_to_string(&data) {
        let mut out = String::new();
        for line in text.lines().take(3000) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                if let Some(p) = v["prompt"].as_str() {
                    out.push_str(p);
                    out.push_str("\n\n");
                }
            }
        }
        return out;
    }
    (0..20_000)
        .map(|i| {
            format!(
                "Item {i}: explain why the {} reading differs from the expected value. ",
                i * 7 % 13
            )
        })
        .collect()
}

/// A prefix of `corpus` of about `tokens` o200k tokens, cut at a char boundary.
fn prompt_of(corpus: &str, tokens: u64) -> String {
    let mut end = (tokens as usize * 4).min(corpus.len());
    while !corpus.is_char_boundary(end) {
        end -= 1;
    }
    let mut s = corpus[..end].to_string();
    while tokens::count(Encoding::O200k, &s) > tokens && s.len() > 16 {
        let mut cut = s.len() - s.len() / 20;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn bench(c: &mut Criterion) {
    let rules = RuleTable::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("routing-rules")).expect("shipped rules");
    let wf = rules.workflow("general").expect("general workflow");
    let input = RouteInput {
        attempt: 1,
        deferrable: false,
        capabilities: Capabilities::default(),
        downgrade: false,
        learned: None,
        rejected_tier: None,
        paced: None,
    };
    let corpus = corpus();
    tokens::warm_up();

    {
        let text = prompt_of(&corpus, 200);
        let msgs = [MessageRef {
            role: Role::User,
            content: &text,
        }];
        let work = compute_work(&msgs, &wf.encodings);
        let est = estimate(&rules, wf, "", &msgs, &work, 0);
        c.bench_function("decide", |b| {
            b.iter(|| decide(black_box(&rules), wf, &input, black_box(&est), &[], None))
        });
    }

    let mut group = c.benchmark_group("understand");
    for n in [200u64, 1_000, 8_000] {
        let text = prompt_of(&corpus, n);
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, text| {
            b.iter(|| rules.understanding.read(&[black_box(text.as_str())]))
        });
        group.bench_with_input(BenchmarkId::new("extract", n), &text, |b, text| {
            b.iter(|| switchyard::understand::extract(black_box(text.as_str()), &rules.understanding.rarity))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("estimate+decide");
    for n in [200u64, 1_000, 8_000] {
        let text = prompt_of(&corpus, n);
        let system = "You are a careful assistant. Answer concisely.";
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, text| {
            b.iter(|| {
                let msgs = [
                    MessageRef {
                        role: Role::System,
                        content: system,
                    },
                    MessageRef {
                        role: Role::User,
                        content: black_box(text.as_str()),
                    },
                ];
                let work = compute_work(&msgs, &wf.encodings);
                let est = estimate(&rules, wf, "", &msgs, &work, 0);
                decide(&rules, wf, &input, &est, &[], None)
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("count-only");
    for n in [200u64, 1_000, 8_000] {
        let text = prompt_of(&corpus, n);
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, text| {
            b.iter(|| tokens::count(Encoding::O200k, black_box(text)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("scan-only");
    for n in [200u64, 1_000, 8_000] {
        let text = prompt_of(&corpus, n);
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, text| {
            b.iter(|| switchyard::estimate::complexity::scan(black_box(text)))
        });
    }
    group.finish();

    {
        use switchyard::decide::available_tiers;
        use switchyard::learn::{Features, LearnEvent, Learned, Learner, Request};
        let learner = Learner::new();
        let tiers = available_tiers(wf, 0);
        let prompts: Vec<String> = corpus.split("\n\n").take(5_000).map(str::to_string).collect();
        for (i, p) in prompts.iter().enumerate() {
            let f = Features::extract(
                std::iter::once(p.as_str()),
                &Request::new("general", &Default::default()),
            );
            learner.apply(&LearnEvent {
                workflow: wf.name.clone(),
                tier: tiers[i % tiers.len()],
                retry: false,
                label: (i % 3 != 0) as u8 as f32,
                features: f,
            });
        }
        let mut group = c.benchmark_group("learn-predict");
        for n in [200u64, 1_000, 8_000] {
            let text = prompt_of(&corpus, n);
            let msgs = [MessageRef {
                role: Role::User,
                content: &text,
            }];
            let work = compute_work(&msgs, &wf.encodings);
            let est = estimate(&rules, wf, "", &msgs, &work, 0);
            group.throughput(Throughput::Elements(n));
            group.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, text| {
                b.iter(|| {
                    let request = Request {
                        task_kind: "general",
                        complexity: &est.features,
                        prior: est.complexity,
                        tokens: est.input_tokens[0],
                    };
                    let f = Features::extract(std::iter::once(black_box(text.as_str())), &request);
                    Learned::gather(&learner, &wf.name, tiers, &f, &wf.learning, 0.5)
                })
            });
        }
        group.finish();
        let f = Features::extract(
            std::iter::once(prompts[7].as_str()),
            &Request::new("general", &Default::default()),
        );
        let event = LearnEvent {
            workflow: wf.name.clone(),
            tier: tiers[0],
            retry: false,
            label: 1.0,
            features: f,
        };
        c.bench_function("learn-update", |b| b.iter(|| learner.apply(black_box(&event))));
    }

    let mut group = c.benchmark_group("count-bpe-openai");
    for n in [200u64, 1_000, 8_000] {
        let text = prompt_of(&corpus, n);
        assert_eq!(
            tokens::count(Encoding::O200k, &text),
            bpe_openai::o200k_base().count(text.as_str()) as u64
        );
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, text| {
            b.iter(|| bpe_openai::o200k_base().count(black_box(text.as_str())))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
