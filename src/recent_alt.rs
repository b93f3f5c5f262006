//! Measurement harness only (`--features cache-moka` or `cache-quick`):
//! `Recent`'s interface over moka or quick_cache, so that the three can be
//! compared in one sitting on the real server (docs/benchmarks.md). Not
//! part of any shipped build.

use std::borrow::Borrow;
use std::hash::Hash;
use std::time::Duration;

#[cfg(feature = "cache-moka")]
pub struct Recent<K, V>(moka::sync::Cache<K, V>);

#[cfg(feature = "cache-moka")]
impl<K: Hash + Eq + Send + Sync + 'static, V: Clone + Send + Sync + 'static> Recent<K, V> {
    pub fn new(capacity: u64, ttl: Duration) -> Recent<K, V> {
        Recent(
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(ttl)
                .build(),
        )
    }

    pub fn read<Q, R>(&self, k: &Q, f: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.get(k).map(|v| f(&v))
    }

    pub fn get<Q>(&self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.get(k)
    }

    pub fn insert(&self, k: K, v: V) {
        self.0.insert(k, v);
    }

    pub fn update<R>(&self, k: K, f: impl FnOnce(&mut V) -> R) -> R
    where
        V: Default,
    {
        let mut out = None;
        self.0.entry(k).and_upsert_with(|e| {
            let mut v = e.map(|e| e.into_value()).unwrap_or_default();
            out = Some(f(&mut v));
            v
        });
        out.expect("the closure ran")
    }

    pub fn len(&self) -> u64 {
        self.0.run_pending_tasks();
        self.0.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// quick_cache has no time-to-idle: entries leave by capacity only.
#[cfg(feature = "cache-quick")]
pub struct Recent<K, V>(quick_cache::sync::Cache<K, V>);

#[cfg(feature = "cache-quick")]
impl<K: Hash + Eq + Clone + Send + Sync + 'static, V: Clone + Send + Sync + 'static> Recent<K, V> {
    pub fn new(capacity: u64, _ttl: Duration) -> Recent<K, V> {
        Recent(quick_cache::sync::Cache::new(capacity.max(1) as usize))
    }

    pub fn read<Q, R>(&self, k: &Q, f: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + quick_cache::Equivalent<K>,
    {
        self.0.get(k).map(|v| f(&v))
    }

    pub fn get<Q>(&self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + quick_cache::Equivalent<K>,
    {
        self.0.get(k)
    }

    pub fn insert(&self, k: K, v: V) {
        self.0.insert(k, v);
    }

    pub fn update<R>(&self, k: K, f: impl FnOnce(&mut V) -> R) -> R
    where
        V: Default,
    {
        let mut v = self.0.get(&k).unwrap_or_default();
        let out = f(&mut v);
        self.0.insert(k, v);
        out
    }

    pub fn len(&self) -> u64 {
        self.0.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
