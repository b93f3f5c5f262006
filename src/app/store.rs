//! Opening the budget store `serve` runs on: the embedded store in the state
//! folder, or Redis, each checked for lost or fresh state before serving.

use std::sync::Arc;

use super::*;

/// The store `cfg` names, ready to serve; a fresh start that was accepted is
/// recorded in the audit log.
pub(super) async fn open_store(cfg: &ServeConfig, audit: &Audit) -> anyhow::Result<SharedStore> {
    let store: SharedStore = match &cfg.redis {
        None => {
            let start =
                crate::store::sqlite::prepare_state_dir(&cfg.state_dir, cfg.accept_fresh_store).map_err(ConfigError)?;
            let options = crate::store::sqlite::Options {
                wal_limit_bytes: cfg.wal_limit_bytes,
            };
            let store = SqliteStore::open_with(&cfg.state_dir, options).map_err(|e| {
                ConfigError(format!(
                    "cannot open the budget store in {}: {e}",
                    cfg.state_dir.display()
                ))
            })?;
            if let crate::store::sqlite::StateStart::FreshAccepted(what) = &start {
                tracing::warn!(what = %what, "--accept-fresh-store: the budget store starts empty");
                audit.record(AuditRecord::new(
                    "-",
                    Action::StoreFreshStart,
                    "",
                    &cfg.state_dir.join(crate::store::sqlite::FILE).display().to_string(),
                    Verdict::Ok,
                    what,
                ));
            }
            crate::store::LedgerStore::set_decision_retention(&store, cfg.decision_retention);
            Arc::new(store)
        }
        Some(r) => {
            let mut store = RedisStore::connect(RedisConfig {
                url: r.url.clone(),
                prefix: r.key_prefix.clone(),
                timeout: r.timeout,
                reservation_ttl_ms: cfg.reservation_ttl.as_millis() as i64,
                fail_open_cap_nanos: r.fail_open_cap_nanos,
                journal: cfg.state_dir.join("redis-journal.jsonl"),
                accept_fresh: cfg.accept_fresh_store,
            })
            .await
            .map_err(|e| ConfigError(e.to_string()))?;
            store
                .serve_from_state_dir()
                .await
                .map_err(|e| ConfigError(e.to_string()))?;
            crate::store::LedgerStore::set_decision_retention(&store, cfg.decision_retention);
            // An empty Redis is refused here; an unreachable one is asked
            // again before the first budget is spent from it.
            match store.ensure_known().await {
                Ok(crate::store::redis::FreshStart::FreshAccepted) => {
                    tracing::warn!(redis = %redact_url(&r.url), "--accept-fresh-store: Redis held no budget state; budgets start empty");
                    audit.record(AuditRecord::new(
                        "-",
                        Action::StoreFreshStart,
                        "",
                        &redact_url(&r.url),
                        Verdict::Ok,
                        "Redis held no budget state; --accept-fresh-store started it empty",
                    ));
                }
                Ok(_) => {}
                Err(crate::error::StoreError::StateLost(why)) => return Err(ConfigError(why).into()),
                Err(_) => {}
            }
            // Not fatal: a sidecar that starts before Redis serves (failing
            // closed or open, as configured) and recovers when Redis answers.
            match store.ping().await {
                Ok(()) => tracing::info!(redis = %redact_url(&r.url), "budgets are shared through Redis"),
                Err(e) => {
                    tracing::warn!(redis = %redact_url(&r.url), error = %e, "Redis is not answering yet; budgets fail {} until it does",
                    if r.fail_open_cap_nanos.is_some() { "open, up to the local cap," } else { "closed" })
                }
            }
            Arc::new(store)
        }
    };
    Ok(store)
}
