//! Scope counters and reservations ([`BudgetStore`]), in Lua scripts.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use redis::Value;

use super::*;
use crate::store::{BudgetStore, Reserved, ScopeState, Settled, StoreHealth, Usage};

#[async_trait::async_trait]
impl BudgetStore for RedisStore {
    async fn reserve(&self, r: &NewReservation) -> Result<Reserved, StoreError> {
        match self.reserve_remote(r).await {
            Ok(Reserved::Ok) => {
                self.recent.insert(r.decision_id.clone(), Arc::new(r.clone()));
                Ok(Reserved::Ok)
            }
            Err(StoreError::Unavailable(why)) => self.fail_open(r, why),
            other => other,
        }
    }
    fn record_detached(&self, r: NewReservation) {
        // Remembered here first, so a ReportUsage that overtakes the write
        // still settles (the settle script creates the record if needed).
        let r = Arc::new(r);
        self.recent.insert(r.decision_id.clone(), r.clone());
        let (conn, reserve, tag, index) = (
            self.conn.clone(),
            self.reserve.clone(),
            self.tag(&r.workflow),
            self.index_key(&r.decision_id),
        );
        // Reports and the sweep find workflows through this set; a workflow
        // without a budget is added by its first decision, as one with a
        // budget is by its first reservation.
        let new_workflow = self.known_workflows().insert(r.workflow.clone());
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&index)
            .arg(&r.workflow)
            .arg("PX")
            .arg(RETAIN_MS)
            .ignore();
        if new_workflow {
            pipe.cmd("SADD").arg(self.workflows_key()).arg(&r.workflow).ignore();
        }
        self.note_outcome_caller(&mut pipe, &r);
        let packed = self.pack(&r, &mut pipe);
        tokio::spawn(async move {
            let mut c = conn;
            let mut inv = reserve.prepare_invoke();
            // No budget, no counters: no epoch check ('' as the sidecar).
            inv.key(format!("{tag}r:{}", r.decision_id))
                .key(format!("{tag}open"))
                .key(format!("{tag}epoch"))
                .arg(&r.decision_id)
                .arg(r.amount_nanos)
                .arg(r.expires_ms)
                .arg(RETAIN_MS)
                .arg("")
                .arg(packed)
                .arg(r.snapshot.as_slice())
                .arg("")
                .arg(0);
            let set = pipe.query_async::<()>(&mut c).await;
            let run = match set {
                Ok(()) => inv.invoke_async::<Value>(&mut c).await.map(drop),
                Err(e) => Err(e),
            };
            if let Err(e) = run {
                tracing::debug!(error = %e, decision = %r.decision_id, "recording a decision without a budget in Redis failed; its ReportUsage will create it");
            }
        });
    }
    fn leasing(&self) -> Option<&dyn crate::store::lease::Leasing> {
        Some(self)
    }
    async fn settle(&self, decision_id: &str, cost: i64, usage: &Usage, now_ms: i64) -> Result<Settled, StoreError> {
        if let Some(settled) = self.settle_leased(decision_id, cost, usage, now_ms).await {
            return settled;
        }
        let p = PendingSettle {
            decision_id: decision_id.to_string(),
            cost_nanos: cost,
            usage: *usage,
            now_ms,
            record: self.recent.get(decision_id).map(|r| (*r).clone()),
        };
        // Settlements keep their order behind any that wait in the journal.
        if self.journal.lock().await.pending.is_empty() {
            match self.settle_remote(&p).await {
                Err(StoreError::Unavailable(why) | StoreError::StateLost(why)) => {
                    tracing::warn!(decision = %decision_id, error = %why, "Redis unreachable: ReportUsage journaled for replay");
                }
                other => return other,
            }
        }
        let mut j = self.journal.lock().await;
        j.append(p)?;
        self.journal_pending.store(j.pending.len() as u64, Ordering::Relaxed);
        Ok(Settled::Charged { cost_nanos: cost })
    }
    async fn expire(&self, now_ms: i64) -> Result<u64, StoreError> {
        // Maintenance: replay what waits in the journal, then release
        // expired reservations workflow by workflow.
        self.replay().await?;
        // Re-add workflows to the set on the next reservation, in case Redis
        // lost it (a restart without persistence): one SADD per workflow per
        // sweep.
        self.known_workflows().clear();
        let mut c = self.conn.clone();
        let key = self.workflows_key();
        // Count this sweep in the fleet's ten-second window, and read the
        // last window's count: the fleet paces its sweeps from it.
        let window = now_ms.div_euclid(10_000);
        let counter = |w: i64| format!("{}:sweeps:{w}", self.cfg.prefix);
        let mut pipe = redis::pipe();
        pipe.cmd("SMEMBERS")
            .arg(key)
            .cmd("INCR")
            .arg(counter(window))
            .ignore()
            .cmd("PEXPIRE")
            .arg(counter(window))
            .arg(60_000)
            .ignore()
            .cmd("GET")
            .arg(counter(window - 1));
        let (workflows, last_window): (Vec<String>, Option<u64>) =
            self.bounded(async move { pipe.query_async(&mut c).await }).await?;
        self.pace_sweeps(last_window.unwrap_or(0));
        let mut released = 0u64;
        for wf in workflows {
            let tag = self.tag(&wf);
            let mut inv = self.expire.prepare_invoke();
            inv.key(format!("{tag}open"))
                .key(format!("{tag}leases"))
                .arg(now_ms)
                .arg(&tag)
                .arg(EXPIRE_BATCH);
            let mut pipe = redis::pipe();
            // The decision log's retention, enforced whether or not calls
            // are still being settled.
            pipe.cmd("XTRIM")
                .arg(format!("{tag}decisions"))
                .arg("MINID")
                .arg(
                    now_ms
                        .saturating_sub(self.decision_retention_ms.load(Ordering::Relaxed))
                        .max(0),
                )
                .ignore();
            pipe.invoke_script(&inv);
            released += int(Some(&self.pipeline_with_script(&pipe, &self.expire).await?)) as u64;
        }
        if self.degraded.swap(false, Ordering::Relaxed) {
            let admitted = self.open_admitted.swap(0, Ordering::AcqRel);
            tracing::info!(admitted_while_open = %format_usd(admitted), "Redis is reachable again; budgets are enforced there");
        }
        Ok(released)
    }
    async fn scope(&self, key: &str) -> Result<ScopeState, StoreError> {
        let k = format!("{}s:{key}", self.tag(workflow_of(key)));
        let mut c = self.conn.clone();
        let v: Vec<Option<i64>> = self
            .bounded(async move {
                redis::cmd("HMGET")
                    .arg(k)
                    .arg("limit")
                    .arg("extra")
                    .arg("spent")
                    .arg("reserved")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let n = |i: usize| v.get(i).copied().flatten().unwrap_or(0);
        Ok(ScopeState {
            limit_nanos: n(0).saturating_add(n(1)),
            spent_nanos: n(2),
            reserved_nanos: n(3),
            extra_nanos: n(1),
        })
    }
    async fn reservation(&self, decision_id: &str) -> Result<Option<ReservationRecord>, StoreError> {
        // Routed under a slice and not settled: Redis has not seen it yet.
        if let Some(r) = self.leases.record(decision_id) {
            return Ok(Some(unconfirmed(&r)));
        }
        let local = self.recent.get(decision_id);
        let workflow = match &local {
            Some(r) => Some(r.workflow.clone()),
            None => self.locate(decision_id).await?.map(|(wf, _)| wf),
        };
        let Some(workflow) = workflow else { return Ok(None) };
        let key = format!("{}r:{decision_id}", self.tag(&workflow));
        let mut c = self.conn.clone();
        let got = self
            .bounded(async move { redis::cmd("HGETALL").arg(key).query_async::<Value>(&mut c).await })
            .await;
        let f = match (got, &local) {
            (Ok(v), _) => fields(v),
            // Down, but this sidecar made the decision: its record is enough
            // to price the usage (which is then journaled).
            (Err(StoreError::Unavailable(_)), Some(r)) => return Ok(Some(unconfirmed(r))),
            (Err(e), _) => return Err(e),
        };
        if f.is_empty() {
            // Not (yet) in Redis, but made here: a detached record in flight
            // or a fail-open admission.
            return Ok(local.as_deref().map(unconfirmed));
        }
        let n = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok());
        let meta = f.get("meta").map(String::as_str).unwrap_or_default();
        let (caller, prices, tier) = meta_caller_prices(meta);
        let mut m = meta.split(SEP);
        let mut next = || m.next().unwrap_or_default().to_string();
        Ok(Some(ReservationRecord {
            decision_id: decision_id.to_string(),
            workflow: next(),
            outcome_id: next(),
            model: next(),
            deferrable: next() == "1",
            amount_nanos: n("amount").unwrap_or(0),
            // Routed under a lease slice that has since been renewed or
            // returned: reserved, for its usage to settle.
            state: f
                .get("state")
                .and_then(|s| {
                    if s == "leased" {
                        Some(ReservationState::Reserved)
                    } else {
                        ReservationState::parse(s)
                    }
                })
                .ok_or_else(|| {
                    StoreError::Unavailable(format!("redis: reservation {decision_id} has no known state"))
                })?,
            actual_nanos: n("actual"),
            caller,
            prices,
            tier,
        }))
    }
    fn health(&self) -> StoreHealth {
        // Failing open, the sidecar still serves budgeted calls (up to its
        // cap): only a sidecar that fails closed cannot.
        let lost = self
            .lost
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let failing = (self.degraded.load(Ordering::Relaxed) && self.cfg.fail_open_cap_nanos.is_none()).then(|| {
            self.last_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
                .unwrap_or_else(|| "Redis is unreachable".into())
        });
        let failing = failing.or_else(|| lost.values().next().cloned());
        StoreHealth {
            failing,
            unavailable_total: self.unavailable_total.load(Ordering::Relaxed),
            fail_open_admitted_total: self.fail_open_total.load(Ordering::Relaxed),
            journal_pending: self.journal_pending.load(Ordering::Relaxed),
            leased_routes_total: self.leased_routes.load(Ordering::Relaxed),
            lease_renewals_total: self.lease_renewals.load(Ordering::Relaxed),
            lease_renewals_failed_total: self.lease_renewals_failed.load(Ordering::Relaxed),
            lease_held_nanos: self.lease_held.load(Ordering::Relaxed),
            state_lost: lost.into_iter().collect(),
        }
    }
}

#[async_trait::async_trait]
impl crate::store::lease::Leasing for RedisStore {
    fn reserve_leased(&self, r: &NewReservation, terms: crate::rules::LeaseTerms) -> crate::store::lease::Take {
        self.take_leased(r, terms)
    }
    fn note_refused(&self, scope: &str, state: ScopeState) {
        self.leases.note_refused(scope, state, self.mono_ms());
    }
    fn clear_refusals(&self) {
        self.leases.clear_refusals();
    }
    async fn renew_leases(&self, returning: bool) -> Result<Option<u64>, StoreError> {
        self.renew_due(returning).await
    }
    fn lease_wake(&self) -> &tokio::sync::Notify {
        &self.leases.wake
    }
    fn sweep_every(&self) -> std::time::Duration {
        if self.journal_pending.load(Ordering::Relaxed) > 0 || self.degraded.load(Ordering::Relaxed) {
            return std::time::Duration::from_secs(1);
        }
        std::time::Duration::from_millis(self.sweep_every_ms.load(Ordering::Relaxed))
    }
}
