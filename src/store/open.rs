//! The one place a reading command opens a store: where it is
//! ([`Location`]), and [`open`] (the store whole, beside a running server:
//! `report`, `whatif`) or [`open_view`] (its read-only part, writing nothing:
//! `explain`). `serve` opens its store with its own options in `app::store`.
//!
//! A new backend is a [`Location`] variant, an arm in each function here and
//! in `app::store`, and its flags (docs/architecture.md, "Adding a store").

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{SharedStore, StoreError, StoreView};

/// Where a store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The embedded store in `serve`'s state folder.
    Embedded(PathBuf),
    /// The fleet store, as `serve --redis-url --redis-key-prefix` keeps it.
    Redis { url: String, prefix: String },
}

impl Location {
    /// What to name in messages: the store's file, or the URL without its
    /// password.
    pub fn describe(&self) -> String {
        match self {
            Location::Embedded(dir) => dir.join(super::sqlite::FILE).display().to_string(),
            Location::Redis { url, .. } => super::redis::redact_url(url),
        }
    }
}

/// A Redis store for commands that only read, or that repair without
/// serving (`budget init`, `budget reconcile`). The journal in `state_dir`
/// is read at connect and never written.
pub async fn redis_reader(url: &str, prefix: &str, state_dir: &Path) -> Result<super::redis::RedisStore, StoreError> {
    super::redis::RedisStore::connect(super::redis::RedisConfig {
        url: url.to_string(),
        prefix: prefix.to_string(),
        timeout: std::time::Duration::from_secs(5),
        reservation_ttl_ms: 1000,
        fail_open_cap_nanos: None,
        journal: state_dir.join("redis-journal.jsonl"),
        accept_fresh: false,
    })
    .await
}

/// The store at `at`, safe to open beside a running server. `Ok(None)`: the
/// folder holds no store yet (nothing has been recorded there).
pub async fn open(at: &Location) -> Result<Option<SharedStore>, StoreError> {
    match at {
        Location::Embedded(dir) => {
            if !dir.join(super::sqlite::FILE).exists() {
                return Ok(None);
            }
            Ok(Some(Arc::new(super::sqlite::SqliteStore::open(dir)?)))
        }
        Location::Redis { url, prefix } => Ok(Some(Arc::new(redis_reader(url, prefix, &std::env::temp_dir()).await?))),
    }
}

/// The read-only part of the store at `at`, which writes nothing, not even
/// a migration. `Ok(None)`: the folder holds no store yet. A Redis reader
/// reads the journal in `state_dir`.
pub async fn open_view(at: &Location, state_dir: &Path) -> Result<Option<Arc<dyn StoreView>>, StoreError> {
    match at {
        Location::Embedded(dir) => Ok(super::sqlite::Reader::open(dir)?.map(|r| Arc::new(r) as Arc<dyn StoreView>)),
        Location::Redis { url, prefix } => Ok(Some(Arc::new(redis_reader(url, prefix, state_dir).await?))),
    }
}
