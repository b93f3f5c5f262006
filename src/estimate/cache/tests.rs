use super::*;
use crate::estimate::tokens;
use crate::rules::RuleTable;
use std::sync::Arc;

fn msg(role: Role, content: &str) -> MessageRef<'_> {
    MessageRef { role, content }
}

/// A system prompt of roughly `n` o200k tokens, varied so BPE cannot merge it away.
fn long_prompt(n: usize) -> String {
    (0..n / 6).map(|i| format!("Rule {i}: cite the source. ")).collect()
}

const RULES: &str = include_str!("../../../tests/fixtures/unit/context-cache.toml");

#[test]
fn repeated_messages_are_counted_once_per_encoding_set() {
    let cache = ContextCache::new(CacheConfig::default());
    let text = long_prompt(600);
    let msgs = [msg(Role::System, &text), msg(Role::User, "short question")];
    let (a, _) = cache.work(&msgs, &[Encoding::O200k]);
    let (b, _) = cache.work(&msgs, &[Encoding::O200k]);
    assert_eq!(cache.stats().misses, 2);
    assert_eq!(cache.stats().hits, 2);
    assert_eq!(a[0].tokens, b[0].tokens);
    assert_eq!(a[0].tokens[0], Some(tokens::count(Encoding::O200k, &text)));
}

#[test]
fn different_encodings_do_not_share_counts() {
    let cache = ContextCache::new(CacheConfig::default());
    let text = "Заплановано на понеділок: 東京 の 会議, and a little English too.";
    let msgs = [msg(Role::User, text)];
    let (o, _) = cache.work(&msgs, &[Encoding::O200k]);
    let (c, _) = cache.work(&msgs, &[Encoding::Cl100k]);
    assert_eq!(cache.stats().misses, 2, "the second encoding is a miss, not a reuse");
    assert_eq!(
        o[0].tokens[Encoding::O200k as usize],
        Some(tokens::count(Encoding::O200k, text))
    );
    assert_eq!(
        c[0].tokens[Encoding::Cl100k as usize],
        Some(tokens::count(Encoding::Cl100k, text))
    );
    assert_eq!(o[0].tokens[Encoding::Cl100k as usize], None);
    assert_ne!(o[0].tokens[0], c[0].tokens[1]);
}

#[test]
fn eviction_keeps_the_cache_under_its_memory_bound() {
    let max_bytes = 1024 * 1024;
    let cache = ContextCache::new(CacheConfig {
        max_bytes,
        ttl: Duration::from_secs(600),
    });
    for i in 0..20_000 {
        let text = format!("message number {i}");
        cache.work(&[msg(Role::User, &text)], &[Encoding::O200k]);
    }
    let stats = cache.stats();
    assert!(stats.weight_bytes <= max_bytes, "{stats:?}");
    let work_capacity = (max_bytes - max_bytes / PREFIX_SHARE) / WORK_ENTRY_BYTES;
    assert!(stats.entries - stats.prefix_entries <= work_capacity, "{stats:?}");
    assert!(stats.entries < 20_000, "entries were evicted: {stats:?}");
}

#[test]
fn concurrent_callers_with_the_same_prefix_get_exact_counts() {
    let cache = Arc::new(ContextCache::new(CacheConfig::default()));
    let system = Arc::new(long_prompt(3000));
    let expected = tokens::count(Encoding::O200k, &system);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (cache, system) = (cache.clone(), system.clone());
            std::thread::spawn(move || {
                for i in 0..200 {
                    let user = format!("question {t}-{i}");
                    let (work, fps) = cache.work(
                        &[msg(Role::System, &system), msg(Role::User, &user)],
                        &[Encoding::O200k],
                    );
                    assert_eq!(work[0].tokens[0], Some(expected));
                    assert_eq!(work[1].tokens[0], Some(tokens::count(Encoding::O200k, &user)));
                    assert_eq!(fps.chain.len(), 2);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let s = cache.stats();
    assert_eq!(s.hits + s.misses, 8 * 200 * 2);
    assert!(s.hits >= 8 * 200 - 8, "the system prompt is counted about once: {s:?}");
}

#[tokio::test(start_paused = true)]
async fn warm_prefixes_are_priced_per_model_ttl_and_minimum() {
    let table = RuleTable::from_str("t.toml", RULES).expect("rules");
    let wf = table.workflow("w").expect("w");
    let cache = ContextCache::new(CacheConfig::default());
    let system = long_prompt(1500);
    let first = [msg(Role::System, &system), msg(Role::User, "first question")];
    let second = [msg(Role::System, &system), msg(Role::User, "second question")];

    let (work, fps) = cache.work(&first, &wf.encodings);
    assert_eq!(cache.cached_tokens(&table, wf, &fps, &work), vec![0, 0, 0], "cold");
    for m in ["warmable", "forgetful", "legacy"] {
        cache.record(m, &fps);
    }

    let (work, fps) = cache.work(&second, &wf.encodings);
    let cached = cache.cached_tokens(&table, wf, &fps, &work);
    let system_o200k = tokens::count(Encoding::O200k, &system) + PER_MESSAGE_OVERHEAD;
    let system_cl100k = tokens::count(Encoding::Cl100k, &system) + PER_MESSAGE_OVERHEAD;
    // Only the shared system message is warm; the user message differs.
    assert_eq!(cached[0], system_o200k);
    assert_eq!(cached[1], 0, "no prefix cache on this model");
    if system_cl100k >= 2048 {
        assert_eq!(cached[2], system_cl100k);
    } else {
        assert_eq!(cached[2], 0, "under the model's minimum");
    }

    // The same full request again: the whole chain is warm.
    cache.record("warmable", &fps);
    let (work, fps) = cache.work(&second, &wf.encodings);
    let all: u64 = work
        .iter()
        .map(|w| w.tokens[0].unwrap_or(0) + PER_MESSAGE_OVERHEAD)
        .sum();
    assert_eq!(cache.cached_tokens(&table, wf, &fps, &work)[0], all);

    // A different role for the same text is a different prefix.
    let as_user = [msg(Role::User, &system), msg(Role::User, "second question")];
    let (work, fps) = cache.work(&as_user, &wf.encodings);
    assert_eq!(cache.cached_tokens(&table, wf, &fps, &work)[0], 0);

    // After the provider's TTL (1 s here) the prefix is cold again.
    tokio::time::advance(Duration::from_millis(1100)).await;
    let (work, fps) = cache.work(&second, &wf.encodings);
    assert_eq!(cache.cached_tokens(&table, wf, &fps, &work)[0], 0);
}

#[test]
fn short_prefixes_are_not_cached() {
    let table = RuleTable::from_str("t.toml", RULES).expect("rules");
    let wf = table.workflow("w").expect("w");
    let cache = ContextCache::new(CacheConfig::default());
    let msgs = [msg(Role::System, "You are terse."), msg(Role::User, "hi")];
    let (work, fps) = cache.work(&msgs, &wf.encodings);
    cache.record("warmable", &fps);
    assert_eq!(cache.cached_tokens(&table, wf, &fps, &work)[0], 0, "under 1024 tokens");
}

/// The bound is in bytes: each entry is charged at least what it can hold,
/// the map's slack included, so the caches never outgrow `--context-cache-mib`.
#[test]
fn entries_are_charged_at_least_their_size() {
    use std::mem::size_of;
    let work = size_of::<((u128, u8), MessageWork)>() as u64;
    assert!(WORK_ENTRY_BYTES >= work + 16, "{WORK_ENTRY_BYTES} < {work} + slack");
    let prefix = (size_of::<u128>() + size_of::<Vec<Seen>>() + PREFIX_MAX_MODELS * size_of::<Seen>()) as u64;
    assert!(
        PREFIX_ENTRY_BYTES >= prefix + 16,
        "{PREFIX_ENTRY_BYTES} < {prefix} + slack"
    );
}
