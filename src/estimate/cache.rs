//! Repeated context: count it once, and know which prefixes a provider has
//! cached.
//!
//! Agents resend the same system prompt, tool schemas and documents on every
//! call. Two caches make that cheap and priced right:
//!
//! - **Message work**, keyed by a fingerprint of a message's content and the
//!   set of encodings counted: its token counts and complexity signals. A
//!   request whose 6k-token system prompt was seen before costs a hash and a
//!   lookup instead of a count. Bounded by weight, with a TTL.
//! - **Warm prefixes**, keyed by the fingerprint of a chain of messages
//!   (message 1, then 1+2, and so on, with their roles): which models were
//!   routed that exact prefix, and when. A provider serves a repeated prefix
//!   from its prompt cache, at the cached-input price, when the same model saw
//!   it within its cache lifetime (`prefix_cache_ttl_s`) and it is at least
//!   `prefix_cache_min_tokens` long.
//!
//! Fingerprints are xxh3-128 with a per-process random seed, so collisions
//! cannot be precomputed. Only fingerprints, counts and times are kept: never
//! prompt text.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::Instant;

use xxhash_rust::xxh3::xxh3_128_with_seed;

use super::{MessageRef, MessageWork, Role};
use crate::estimate::tokens::PER_MESSAGE_OVERHEAD;
use crate::recent::Recent;
use crate::rules::{Encoding, RuleTable, Workflow};

/// Bytes one message-work entry is charged against the bound: the key (32
/// bytes with padding), the value (56) and the hash table's slack.
const WORK_ENTRY_BYTES: u64 = 128;
/// Bytes one warm-prefix entry is charged: the key (16), the list's header
/// (24), the most models it can hold ([`PREFIX_MAX_MODELS`], 16 bytes each)
/// and the hash table's slack. Charging the most an entry can hold keeps
/// the configured bound a bound, though most prefixes name one or two
/// models.
const PREFIX_ENTRY_BYTES: u64 = 16 + 24 + 16 * PREFIX_MAX_MODELS as u64 + 48;
/// The most models one warm prefix remembers (the most recent ones).
const PREFIX_MAX_MODELS: usize = 8;
/// The warm-prefix store's share of the configured bound.
const PREFIX_SHARE: u64 = 4;
/// Warm prefixes are forgotten after this long whatever the model's TTL.
const PREFIX_MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Settings for the caches.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// The bound on both caches together, in bytes.
    pub max_bytes: u64,
    /// How long a message's work is kept after it was computed.
    pub ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_bytes: 64 * 1024 * 1024,
            ttl: Duration::from_secs(3600),
        }
    }
}

/// Counters for the metrics endpoint.
#[derive(Debug, Default)]
pub struct CacheCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Routes priced with a warm prefix.
    pub prefix_hits: AtomicU64,
}

/// A snapshot of the caches' size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub prefix_hits: u64,
    pub entries: u64,
    pub weight_bytes: u64,
    pub prefix_entries: u64,
}

/// One model that saw a prefix: a hash of its name and when, in ms since the
/// cache was created.
type Seen = (u64, u64);

/// The per-message work cache and the warm-prefix store.
pub struct ContextCache {
    work: Recent<(u128, u8), MessageWork>,
    prefixes: Recent<u128, Vec<Seen>>,
    seed: u64,
    epoch: Instant,
    pub counters: CacheCounters,
}

/// Fingerprints of one request's messages and of its prefix chain.
#[derive(Debug, Clone, Default)]
pub struct Fingerprints {
    /// `chain[k]` identifies messages `0..=k`, roles included.
    pub chain: Vec<u128>,
}

impl ContextCache {
    pub fn new(cfg: CacheConfig) -> ContextCache {
        let prefix_bytes = cfg.max_bytes / PREFIX_SHARE;
        let work = Recent::new((cfg.max_bytes - prefix_bytes) / WORK_ENTRY_BYTES, cfg.ttl);
        let prefixes = Recent::new(prefix_bytes / PREFIX_ENTRY_BYTES, PREFIX_MAX_TTL);
        let seed = crate::hashing::random_seed();
        ContextCache {
            work,
            prefixes,
            seed,
            epoch: Instant::now(),
            counters: CacheCounters::default(),
        }
    }

    fn fingerprint(&self, content: &str) -> u128 {
        xxh3_128_with_seed(content.as_bytes(), self.seed)
    }

    /// The work for each message, from the cache where it has been seen with
    /// the same encodings, and the fingerprints of the prefix chain.
    pub fn work(&self, messages: &[MessageRef<'_>], encodings: &[Encoding]) -> (Vec<MessageWork>, Fingerprints) {
        let mask = encodings.iter().fold(0u8, |m, e| m | 1 << (*e as u8));
        let mut work = Vec::with_capacity(messages.len());
        let mut chain = Vec::with_capacity(messages.len());
        let mut prev = 0u128;
        for m in messages {
            let fp = self.fingerprint(m.content);
            let w = match self.work.get(&(fp, mask)) {
                Some(w) => {
                    self.counters.hits.fetch_add(1, Ordering::Relaxed);
                    w
                }
                None => {
                    self.counters.misses.fetch_add(1, Ordering::Relaxed);
                    let w = MessageWork::compute(m.content, encodings);
                    self.work.insert((fp, mask), w);
                    w
                }
            };
            work.push(w);
            let mut link = [0u8; 33];
            link[..16].copy_from_slice(&prev.to_le_bytes());
            link[16..32].copy_from_slice(&fp.to_le_bytes());
            link[32] = role_byte(m.role);
            prev = xxh3_128_with_seed(&link, self.seed);
            chain.push(prev);
        }
        (work, Fingerprints { chain })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// For each model of `table`, the input tokens the provider would serve
    /// from its prompt cache for this request (0 for cold ones), as billed.
    ///
    /// Looks up prefixes from the longest down, so each model gets its
    /// longest warm prefix.
    pub fn cached_tokens(
        &self,
        table: &RuleTable,
        workflow: &Workflow,
        fps: &Fingerprints,
        work: &[MessageWork],
    ) -> Vec<u64> {
        let mut out = vec![0u64; table.models.len()];
        // Each model that may be warm, with its key and cache lifetime (ms),
        // worked out once rather than at every prefix.
        let warmable: Vec<(usize, u64, u64)> = workflow
            .allowed
            .iter()
            .filter_map(|&i| {
                let m = &table.models[i];
                m.prefix_cache_ttl
                    .map(|t| (i, model_key(&m.name), t.as_millis() as u64))
            })
            .collect();
        if warmable.is_empty() || fps.chain.is_empty() {
            return out;
        }
        let now = self.now_ms();
        let mut done = 0usize;
        for k in (0..fps.chain.len()).rev() {
            // A copy (at most eight pairs), so the shard's lock is not held
            // while prices are worked out.
            let Some(seen) = self.prefixes.read(&fps.chain[k], |s| {
                let mut copy = [(0u64, 0u64); PREFIX_MAX_MODELS];
                let n = s.len().min(PREFIX_MAX_MODELS);
                copy[..n].copy_from_slice(&s[..n]);
                (copy, n)
            }) else {
                continue;
            };
            let seen = &seen.0[..seen.1];
            for &(i, key, ttl) in &warmable {
                if out[i] > 0 {
                    continue;
                }
                let m = &table.models[i];
                if seen.iter().any(|&(mk, at)| mk == key && now.saturating_sub(at) < ttl) {
                    let counted: u64 = work[..=k]
                        .iter()
                        .map(|w| w.tokens[m.encoding as usize].unwrap_or(0) + PER_MESSAGE_OVERHEAD)
                        .sum();
                    let billed = m.billed_tokens(counted);
                    if billed >= m.prefix_cache_min_tokens {
                        out[i] = billed;
                        done += 1;
                    }
                }
            }
            if done == warmable.len() {
                break;
            }
        }
        out
    }

    /// Records that `model` is about to be sent this request: every prefix of
    /// it is now warm on that model.
    pub fn record(&self, model: &str, fps: &Fingerprints) {
        let key = model_key(model);
        let now = self.now_ms();
        for &h in &fps.chain {
            self.prefixes.update(h, |v| {
                if let Some(slot) = v.iter_mut().find(|(k, _)| *k == key) {
                    slot.1 = now;
                } else if v.len() < PREFIX_MAX_MODELS {
                    v.push((key, now));
                } else if let Some(oldest) = v.iter_mut().min_by_key(|s| s.1) {
                    // A prefix shared by many models keeps only the most recent few.
                    *oldest = (key, now);
                }
            });
        }
    }

    pub fn stats(&self) -> CacheStats {
        let (work, prefixes) = (self.work.len(), self.prefixes.len());
        CacheStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            prefix_hits: self.counters.prefix_hits.load(Ordering::Relaxed),
            entries: work + prefixes,
            weight_bytes: work * WORK_ENTRY_BYTES + prefixes * PREFIX_ENTRY_BYTES,
            prefix_entries: prefixes,
        }
    }
}

fn role_byte(r: Role) -> u8 {
    match r {
        Role::System => 1,
        Role::Developer => 2,
        Role::User => 3,
        Role::Assistant => 4,
        Role::Tool => 5,
    }
}

/// A stable key for a model name (names survive reloads; indexes do not).
fn model_key(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

#[cfg(test)]
mod tests;
