//! The deployment's marker record in Redis: written once by
//! `switchyard budget init`, so that a sidecar can tell an empty Redis (lost
//! state, or never initialised) from one that holds budgets.

use super::*;

impl RedisStore {
    /// The record that says Redis holds this deployment's budget state.
    pub fn store_key(&self) -> String {
        format!("{}:store", self.cfg.prefix)
    }

    /// Makes sure Redis holds this deployment's state before any budget is
    /// spent from it. A Redis with the store record is known; one without it
    /// but with workflows recorded (a store from a build before the record)
    /// gets the record; an empty one (new, flushed, or restarted without
    /// persistence) is refused unless a fresh start is accepted
    /// (`--accept-fresh-store`, or `switchyard budget init`), so that a
    /// sidecar cannot start a second budget on emptied counters.
    pub async fn ensure_known(&self) -> Result<FreshStart, StoreError> {
        if self.known.load(Ordering::Acquire) {
            return Ok(FreshStart::Known);
        }
        let mut c = self.conn.clone();
        let (store_key, workflows_key) = (self.store_key(), self.workflows_key());
        let (record, workflows): (Option<String>, i64) = self
            .bounded(async move {
                redis::pipe()
                    .cmd("GET")
                    .arg(&store_key)
                    .cmd("SCARD")
                    .arg(&workflows_key)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let start = match (record, workflows) {
            (Some(_), _) => FreshStart::Known,
            (None, n) if n > 0 => {
                self.write_store_record("adopted").await?;
                FreshStart::Adopted
            }
            (None, _) if self.cfg.accept_fresh => {
                self.write_store_record("fresh start accepted").await?;
                FreshStart::FreshAccepted
            }
            (None, _) => {
                let why = format!(
                    "Redis holds no Switchyard budget state (no `{}` record): it is new, was flushed, or restarted \
                     without persistence. Budgets are not started afresh silently: for a new deployment run \
                     `switchyard budget init --redis-url ...` once (or start serve with --accept-fresh-store); if Redis \
                     lost its data, run `switchyard budget reconcile` from the sidecars' journals first",
                    self.store_key()
                );
                self.lost
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert("*".into(), why.clone());
                return Err(StoreError::StateLost(why));
            }
        };
        self.lost
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove("*");
        self.known.store(true, Ordering::Release);
        Ok(start)
    }

    /// Writes the store record, if there is none; whether it wrote it.
    pub async fn write_store_record(&self, how: &str) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let key = self.store_key();
        let value = format!(
            "{how} at {} by {}",
            crate::clock::Clock::now_ms(&crate::clock::SystemClock),
            self.leases.holder()
        );
        self.bounded(async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("NX")
                .query_async::<Option<String>>(&mut c)
                .await
        })
        .await
        .map(|v| v.is_some())
    }
}
