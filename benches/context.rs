//! Repeated context in the estimate stage, measured with criterion: a request
//! with a 6k-token system context that was seen before, against one whose 6k
//! context is new each time (same vocabulary, different bytes, so it misses
//! the message cache). The user message is short and new in both.
//!
//! Run: `cargo bench --bench context`.

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{criterion_group, criterion_main, Criterion};
use switchyard::estimate::cache::{CacheConfig, ContextCache};
use switchyard::estimate::{estimate, MessageRef, Role};
use switchyard::rules::{RuleTable, Workflow};

mod shared;
use shared::context_6k;

/// Estimates one request of a system context and a short, new user message,
/// through the cache, with the warm-prefix lookup that Route does.
fn estimate_with_context(rules: &RuleTable, wf: &Workflow, cache: &ContextCache, system: &str, i: u64) {
    let user = format!("question {i}");
    let msgs = [
        MessageRef {
            role: Role::System,
            content: system,
        },
        MessageRef {
            role: Role::User,
            content: &user,
        },
    ];
    let (work, fps) = cache.work(black_box(&msgs), &wf.encodings);
    let est = estimate(rules, wf, "", &msgs, &work, 0);
    black_box((est, cache.cached_tokens(rules, wf, &fps, &work)));
}

fn bench(c: &mut Criterion) {
    let rules = RuleTable::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("routing-rules")).expect("shipped rules");
    let wf = rules.workflow("general").expect("general");
    let cache = ContextCache::new(CacheConfig::default());
    let context = context_6k();
    let n = AtomicU64::new(0);

    let mut group = c.benchmark_group("context-6k-estimate");
    group.bench_function("repeated", |b| {
        b.iter(|| estimate_with_context(&rules, wf, &cache, &context, n.fetch_add(1, Ordering::Relaxed)))
    });
    group.bench_function("unique", |b| {
        b.iter(|| {
            let i = n.fetch_add(1, Ordering::Relaxed);
            estimate_with_context(&rules, wf, &cache, &format!("Session {i}. {context}"), i)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(4)).warm_up_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
