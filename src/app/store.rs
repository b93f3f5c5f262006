//! The budget store `serve` runs on, opened through `store::open_to_serve`;
//! a fresh start that was accepted is logged and audited here.

use super::*;

/// The store `cfg` names, ready to serve.
pub(super) async fn open_store(cfg: &ServeConfig, audit: &Audit) -> anyhow::Result<SharedStore> {
    let at = match &cfg.redis {
        None => crate::store::Location::Embedded(cfg.state_dir.clone()),
        Some(r) => crate::store::Location::Redis {
            url: r.url.clone(),
            prefix: r.key_prefix.clone(),
        },
    };
    let options = crate::store::ServeOptions {
        state_dir: cfg.state_dir.clone(),
        accept_fresh: cfg.accept_fresh_store,
        wal_limit_bytes: cfg.wal_limit_bytes,
        decision_retention: cfg.decision_retention,
        reservation_ttl: cfg.reservation_ttl,
        redis_timeout: cfg.redis.as_ref().map_or(Duration::from_secs(1), |r| r.timeout),
        fail_open_cap_nanos: cfg.redis.as_ref().and_then(|r| r.fail_open_cap_nanos),
    };
    let opened = crate::store::open_to_serve(&at, &options).await.map_err(ConfigError)?;
    if let Some((target, what)) = &opened.fresh {
        tracing::warn!(store = %target, what = %what, "--accept-fresh-store: the budget store starts empty");
        audit.record(AuditRecord::new(
            "-",
            Action::StoreFreshStart,
            "",
            target,
            Verdict::Ok,
            what,
        ));
    }
    Ok(opened.store)
}
