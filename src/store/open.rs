//! The one place a store is opened: where it is ([`Location`]), and
//! [`open_to_serve`] (`serve`, with its options), [`open`] (the store whole,
//! beside a running server: `report`, `whatif`) or [`open_view`] (its
//! read-only part, writing nothing: `explain`).
//!
//! A new backend is a [`Location`] variant, an arm in each function here, and
//! its flags (docs/architecture.md, "Adding a store").

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

/// What `serve` asks of the store it opens.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `serve`'s state folder (the Redis journal lives there too).
    pub state_dir: PathBuf,
    /// Start empty where the store holds no state (`--accept-fresh-store`).
    pub accept_fresh: bool,
    /// The embedded store's write-ahead log bound.
    pub wal_limit_bytes: u64,
    /// How long decision records are kept.
    pub decision_retention: std::time::Duration,
    /// How long an unreported reservation holds its estimate.
    pub reservation_ttl: std::time::Duration,
    /// Redis: each call's deadline.
    pub redis_timeout: std::time::Duration,
    /// Redis: admit calls up to this much while it is unreachable (`None`:
    /// fail closed).
    pub fail_open_cap_nanos: Option<i64>,
}

/// A store ready to serve, and what its opening found.
pub struct Opened {
    pub store: SharedStore,
    /// The store held no state and `accept_fresh` started it empty: what it
    /// is (a file, or Redis's URL without its password) and what was found,
    /// for the audit log.
    pub fresh: Option<(String, String)>,
}

/// The store at `at`, ready to serve. An empty store is refused unless
/// `accept_fresh`; a Redis that lost acknowledged state is refused; an
/// unreachable Redis is not (budgets fail closed or open until it answers).
pub async fn open_to_serve(at: &Location, o: &ServeOptions) -> Result<Opened, String> {
    match at {
        Location::Embedded(dir) => {
            let start = super::sqlite::prepare_state_dir(dir, o.accept_fresh)?;
            let options = super::sqlite::Options {
                wal_limit_bytes: o.wal_limit_bytes,
            };
            let store = super::sqlite::SqliteStore::open_with(dir, options)
                .map_err(|e| format!("cannot open the budget store in {}: {e}", dir.display()))?;
            super::LedgerStore::set_decision_retention(&store, o.decision_retention);
            let fresh = match start {
                super::sqlite::StateStart::FreshAccepted(what) => Some((at.describe(), what)),
                _ => None,
            };
            Ok(Opened {
                store: Arc::new(store),
                fresh,
            })
        }
        Location::Redis { url, prefix } => {
            let mut store = super::redis::RedisStore::connect(super::redis::RedisConfig {
                url: url.clone(),
                prefix: prefix.clone(),
                timeout: o.redis_timeout,
                reservation_ttl_ms: o.reservation_ttl.as_millis() as i64,
                fail_open_cap_nanos: o.fail_open_cap_nanos,
                journal: o.state_dir.join("redis-journal.jsonl"),
                accept_fresh: o.accept_fresh,
            })
            .await
            .map_err(|e| e.to_string())?;
            store.serve_from_state_dir().await.map_err(|e| e.to_string())?;
            super::LedgerStore::set_decision_retention(&store, o.decision_retention);
            let shown = at.describe();
            // An empty Redis is refused here; an unreachable one is asked
            // again before the first budget is spent from it.
            let fresh = match store.ensure_known().await {
                Ok(super::redis::FreshStart::FreshAccepted) => Some((
                    shown.clone(),
                    "Redis held no budget state; --accept-fresh-store started it empty".to_string(),
                )),
                Ok(_) => None,
                Err(StoreError::StateLost(why)) => return Err(why),
                Err(_) => None,
            };
            // Not fatal: a sidecar that starts before Redis serves (failing
            // closed or open, as configured) and recovers when Redis answers.
            match store.ping().await {
                Ok(()) => tracing::info!(redis = %shown, "budgets are shared through Redis"),
                Err(e) => tracing::warn!(
                    redis = %shown,
                    error = %e,
                    "Redis is not answering yet; budgets fail {} until it does",
                    if o.fail_open_cap_nanos.is_some() { "open, up to the local cap," } else { "closed" }
                ),
            }
            Ok(Opened {
                store: Arc::new(store),
                fresh,
            })
        }
    }
}
