//! `Recent`: a bounded map of recently used entries, cheap enough for the
//! Route path.
//!
//! Every Route inserts into several such maps (a new message's work, its
//! prefix chain, the call learning waits to label), so inserts must cost
//! about what a `HashMap` insert costs. `Recent` keeps two generations per
//! shard: entries go into the current one; when it is full, or older than half
//! the time-to-idle, it becomes the previous one and the old previous one is
//! dropped. A hit in the previous generation moves the entry back into the
//! current one. So:
//!
//! - at most `capacity` entries are held (two generations of
//!   `capacity / 2`, split over the shards);
//! - an entry not used for `ttl` is gone, and one used within `ttl / 2` of its
//!   last use is still there unless `capacity / 2` newer entries in its shard
//!   pushed it out;
//! - eviction is a generation at a time, without per-entry bookkeeping.
//!
//! Keys are hashed with a per-map random seed, so callers cannot aim their
//! keys at one shard or bucket.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::clock::Instant;

type Hasher = crate::hashing::Quality;

/// Shards: enough that the runtime's workers rarely meet on one lock.
const SHARDS: usize = 16;

pub struct Recent<K, V> {
    shards: Box<[Mutex<Shard<K, V>>]>,
    hasher: Hasher,
    /// Entries one shard's current generation holds before it rotates.
    generation_len: usize,
    /// How long one generation lasts before it rotates.
    generation_age: Duration,
}

struct Shard<K, V> {
    current: HashMap<K, V, Hasher>,
    previous: HashMap<K, V, Hasher>,
    started: Instant,
}

/// A generation rotated out, dropped after its shard's lock is released.
type Retired<K, V> = Option<HashMap<K, V, Hasher>>;

impl<K: Hash + Eq, V> Shard<K, V> {
    /// Rotates if the current generation is full or old; returns what to drop.
    fn age(&mut self, len: usize, age: Duration, now: Instant) -> Retired<K, V> {
        let elapsed = now.saturating_duration_since(self.started);
        if self.current.len() < len && elapsed < age {
            return None;
        }
        self.started = now;
        let hasher = self.current.hasher().clone();
        let current = std::mem::replace(&mut self.current, HashMap::with_hasher(hasher.clone()));
        if elapsed >= age * 2 {
            // Idle for two generations: nothing in either is still live.
            drop(current);
            return Some(std::mem::replace(&mut self.previous, HashMap::with_hasher(hasher)));
        }
        Some(std::mem::replace(&mut self.previous, current))
    }

    /// The entry for `k`, moved into the current generation if it was in
    /// the previous one.
    fn find<Q>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.current.contains_key(k) {
            let (key, value) = self.previous.remove_entry(k)?;
            self.current.insert(key, value);
        }
        self.current.get_mut(k)
    }
}

impl<K: Hash + Eq, V> Recent<K, V> {
    /// Holds at most `capacity` entries; an entry unused for `ttl` is dropped.
    pub fn new(capacity: u64, ttl: Duration) -> Recent<K, V> {
        let hasher = Hasher::default();
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    current: HashMap::with_hasher(hasher.clone()),
                    previous: HashMap::with_hasher(hasher.clone()),
                    started: Instant::now(),
                })
            })
            .collect();
        Recent {
            shards,
            hasher,
            generation_len: (capacity as usize / SHARDS / 2).max(1),
            generation_age: (ttl / 2).max(Duration::from_millis(1)),
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, k: &Q) -> std::sync::MutexGuard<'_, Shard<K, V>> {
        let i = (self.hasher.hash_one(k) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the entry for `k`, if there is one.
    pub fn read<Q, R>(&self, k: &Q, f: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut shard = self.shard(k);
        let retired = shard.age(self.generation_len, self.generation_age, Instant::now());
        let out = shard.find(k).map(|v| f(v));
        drop(shard);
        drop(retired);
        out
    }

    /// A copy of the entry for `k`.
    pub fn get<Q>(&self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        self.read(k, V::clone)
    }

    pub fn insert(&self, k: K, v: V) {
        let mut shard = self.shard(&k);
        let retired = shard.age(self.generation_len, self.generation_age, Instant::now());
        shard.previous.remove(&k);
        shard.current.insert(k, v);
        drop(shard);
        drop(retired);
    }

    /// Runs `f` on the entry for `k`, made from `V::default()` if there is
    /// none, and keeps the result.
    pub fn update<R>(&self, k: K, f: impl FnOnce(&mut V) -> R) -> R
    where
        V: Default,
    {
        let mut shard = self.shard(&k);
        let retired = shard.age(self.generation_len, self.generation_age, Instant::now());
        let out = match shard.find(&k) {
            Some(v) => f(v),
            None => f(shard.current.entry(k).or_default()),
        };
        drop(shard);
        drop(retired);
        out
    }

    /// Entries held (some may be past their time and not yet dropped).
    pub fn len(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                (s.current.len() + s.previous.len()) as u64
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_its_capacity_and_keeps_the_newest() {
        let r: Recent<u64, u64> = Recent::new(1_000, Duration::from_secs(3600));
        for i in 0..100_000u64 {
            r.insert(i, i * 2);
        }
        assert!(r.len() <= 1_000, "{}", r.len());
        assert!(r.len() >= 400, "a generation's worth is kept: {}", r.len());
        assert_eq!(r.get(&99_999), Some(199_998));
        assert_eq!(r.get(&0), None);
    }

    #[test]
    fn an_entry_in_use_survives_rotations() {
        let r: Recent<u64, u64> = Recent::new(64, Duration::from_secs(3600));
        r.insert(u64::MAX, 7);
        for i in 0..10_000u64 {
            r.insert(i, i);
            assert_eq!(r.get(&u64::MAX), Some(7), "lost after {i} inserts");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_entries_expire() {
        let r: Recent<String, u8> = Recent::new(1_000, Duration::from_millis(40));
        r.insert("a".to_string(), 1);
        assert_eq!(r.get("a"), Some(1));
        tokio::time::advance(Duration::from_millis(39)).await;
        assert_eq!(r.get("a"), Some(1), "still young: read, so kept");
        tokio::time::advance(Duration::from_millis(120)).await;
        assert_eq!(r.get("a"), None);
        assert!(r.is_empty());
    }

    #[test]
    fn update_creates_then_changes_in_place() {
        let r: Recent<String, Vec<u32>> = Recent::new(1_000, Duration::from_secs(60));
        r.update("k".to_string(), |v| v.push(1));
        r.update("k".to_string(), |v| v.push(2));
        assert_eq!(r.get("k"), Some(vec![1, 2]));
        assert_eq!(r.read("k", Vec::len), Some(2));
        assert_eq!(r.read("missing", Vec::len), None);
    }

    #[test]
    fn concurrent_inserts_and_reads_agree() {
        let r = std::sync::Arc::new(Recent::<u64, u64>::new(1 << 20, Duration::from_secs(60)));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        let k = t << 32 | i;
                        r.insert(k, k + 1);
                        assert_eq!(r.get(&k), Some(k + 1));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(r.len(), 40_000);
    }
}
