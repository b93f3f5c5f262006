//! Leased slices on Redis ([`LeaseStore`]): the renewal script, and the
//! sidecar's side of it: taking from the slice at Route, settling against it
//! at ReportUsage, renewing on schedule, returning at shutdown.
//!
//! A settlement made against a slice is acknowledged before Redis has it, so
//! it is first appended to `lease-journal.jsonl` in `--state-dir`. The
//! journal is rewritten once a renewal carried it to Redis; left by a crash,
//! it is replayed at start like any journaled settlement (once each, by
//! decision ID).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::*;
use crate::rules::LeaseTerms;
use crate::store::lease::{LeaseGrant, LeaseRenewal, LeaseStore, Take};
use crate::store::{Settled, Usage};

/// The script: `scripts/lease.lua`, after the money and epoch helpers.
pub(super) const LEASE: &str = concat!(
    include_str!("scripts/money.lua"),
    include_str!("scripts/epoch.lua"),
    include_str!("scripts/lease.lua")
);

impl RedisStore {
    /// Milliseconds on the monotonic clock since this store was made.
    pub(super) fn mono_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Route under this sidecar's slice, with no round trip, or refused
    /// without one; `Exact`: reserve exactly.
    pub(super) fn take_leased(&self, r: &NewReservation, terms: LeaseTerms) -> Take {
        // Not yet seen Redis hold this deployment's state: the exact path asks.
        if !self.known.load(Ordering::Acquire) {
            return Take::Exact;
        }
        let r = Arc::new(r.clone());
        let take = self.leases.take(&r, terms, self.mono_ms());
        if take == Take::Taken {
            if let Some(owner) = crate::store::outcome_owner(&r) {
                self.leased_outcomes
                    .insert(format!("{}{SEP}{}{SEP}{owner}", r.workflow, r.outcome_id), ());
            }
            self.recent.insert(r.decision_id.clone(), r);
            self.leased_routes.fetch_add(1, Ordering::Relaxed);
        }
        take
    }

    /// ReportUsage for a call routed under a slice: settled against it, and
    /// journaled until a renewal carries it to Redis. `None`: not such a call.
    pub(super) async fn settle_leased(
        &self,
        decision_id: &str,
        cost: i64,
        usage: &Usage,
        now_ms: i64,
    ) -> Option<Result<Settled, StoreError>> {
        let record = self.leases.record(decision_id);
        let settled = self.leases.settle(decision_id, cost, usage, now_ms)?;
        if let (Settled::Charged { .. }, Some(record)) = (settled, record) {
            let p = PendingSettle {
                decision_id: decision_id.to_string(),
                cost_nanos: cost,
                usage: *usage,
                now_ms,
                record: Some((*record).clone()),
            };
            if let Err(e) = self.lease_journal.lock().await.append(p) {
                // The settlement is in the slice's batch and goes to Redis
                // with the next renewal; only a crash before then loses it.
                tracing::warn!(decision = %decision_id, error = %e, "cannot journal a settlement made against a lease slice");
            }
        }
        Some(Ok(settled))
    }

    /// Renews the slices that are due (or, `returning`, gives every slice
    /// back); returns how many milliseconds until the next is due.
    pub(super) async fn renew_due(&self, returning: bool) -> Result<Option<u64>, StoreError> {
        let now = self.mono_ms();
        let keys = if returning {
            self.leases.keys()
        } else {
            self.leases.due(now)
        };
        let mut first_err = None;
        for key in keys {
            let Some(p) = self.leases.begin(&key, now, crate::store::now_ms(), returning) else {
                continue;
            };
            let answer = self.renew_lease(&p.renewal).await;
            self.lease_renewals.fetch_add(1, Ordering::Relaxed);
            match &answer {
                Ok(_) if !p.renewal.settled.is_empty() => self.forget_journaled(&p.renewal).await,
                Ok(_) => {}
                Err(e) => {
                    self.lease_renewals_failed.fetch_add(1, Ordering::Relaxed);
                    if let StoreError::StateLost(_) = e {
                        self.leases.invalidate(&key);
                    }
                    tracing::warn!(scope = %key, error = %e, "renewing a lease slice failed; it is spent only until it expires");
                    first_err.get_or_insert_with(|| e.clone());
                }
            }
            self.leases.finish(p, &answer);
        }
        let (held, _) = self.leases.totals();
        self.lease_held.store(held, Ordering::Relaxed);
        match first_err {
            Some(e) => Err(e),
            None => Ok(self.leases.next_due().map(|at| at.saturating_sub(self.mono_ms()))),
        }
    }

    /// Drops from the lease journal what a renewal carried to Redis.
    async fn forget_journaled(&self, sent: &LeaseRenewal) {
        let ids: std::collections::HashSet<&str> = sent.settled.iter().map(|s| s.record.decision_id.as_str()).collect();
        let mut j = self.lease_journal.lock().await;
        j.pending.retain(|p| !ids.contains(p.decision_id.as_str()));
        if let Err(e) = j.rewrite() {
            tracing::warn!(file = %j.path.display(), error = %e, "cannot rewrite the lease journal; a restart replays it harmlessly (once each, by decision ID)");
        }
    }

    /// Hands settlements a crash left in the lease journal to the main
    /// journal, which replays them to Redis.
    pub(super) async fn adopt_lease_journal(&self) -> Result<(), StoreError> {
        let mut lj = self.lease_journal.lock().await;
        if lj.pending.is_empty() {
            return Ok(());
        }
        let mut j = self.journal.lock().await;
        tracing::warn!(
            settlements = lj.pending.len(),
            file = %lj.path.display(),
            "settlements made against a lease slice before a crash are replayed to Redis"
        );
        for p in std::mem::take(&mut lj.pending) {
            j.append(p)?;
        }
        self.journal_pending.store(j.pending.len() as u64, Ordering::Relaxed);
        lj.rewrite()
            .map_err(|e| StoreError::Unavailable(format!("cannot clear {}: {e}", lj.path.display())))
    }
}

impl RedisStore {
    /// Writes index entries on a cluster: sixteen streams of commands at
    /// once, since no pipeline spans their slots. A failure is logged: the
    /// entries only let another sidecar (or this one after a restart) find
    /// a call whose usage it is sent.
    async fn write_index(&self, index: Vec<redis::Cmd>) {
        let mut streams = tokio::task::JoinSet::new();
        let per = index.len().div_ceil(16).max(1);
        let mut index = index.into_iter().peekable();
        while index.peek().is_some() {
            let chunk: Vec<redis::Cmd> = index.by_ref().take(per).collect();
            let mut c = self.conn.clone();
            streams.spawn(async move {
                for set in chunk {
                    set.query_async::<()>(&mut c).await?;
                }
                Ok::<(), RedisError>(())
            });
        }
        while let Some(done) = streams.join_next().await {
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "writing decision index entries after a lease renewal failed; those calls' usage settles only on this sidecar until it restarts");
            }
        }
    }
}

#[async_trait::async_trait]
impl LeaseStore for RedisStore {
    async fn renew_lease(&self, r: &LeaseRenewal) -> Result<LeaseGrant, StoreError> {
        let tag = self.tag(&r.workflow);
        let member = format!("{}{SEP}{}", r.holder, r.scope.key);
        let mut inv = self.lease.prepare_invoke();
        inv.key(format!("{tag}s:{}", r.scope.key))
            .key(format!("{tag}l:{member}"))
            .key(format!("{tag}leases"))
            .key(format!("{tag}events"))
            .key(format!("{tag}decisions"));
        let (epoch, holder, acked) = self.epoch_args(&r.workflow);
        inv.key(epoch);
        inv.arg(&member)
            .arg(r.scope.limit_nanos)
            .arg(r.keep_nanos)
            .arg(r.want_nanos)
            .arg(r.max_share_bp)
            .arg(r.expires_ms)
            .arg(RETAIN_MS)
            .arg(LEDGER_MAXLEN)
            .arg(
                r.now_ms
                    .saturating_sub(self.decision_retention_ms.load(Ordering::Relaxed))
                    .max(0),
            )
            .arg(&tag)
            .arg(r.settled.len())
            .arg(r.routed.len())
            .arg(holder)
            .arg(acked);
        let mut pipe = redis::pipe();
        for d in &r.routed {
            inv.arg(&d.decision_id)
                .arg(d.amount_nanos)
                .arg(&r.scope.key)
                .arg(self.pack(d, &mut pipe))
                .arg(d.snapshot.as_slice());
        }
        for s in &r.settled {
            let d = &s.record;
            inv.arg(&d.decision_id)
                .arg(s.cost_nanos)
                .arg(usage_field(&s.usage, s.now_ms))
                .arg(d.amount_nanos)
                .arg(&r.scope.key)
                .arg(self.pack(d, &mut pipe))
                .arg(d.snapshot.as_slice());
        }
        // Each call's index entry, so that its usage settles on any sidecar
        // (or this one after a restart), as for an exact reservation. On a
        // single Redis they ride in the script's pipeline; a cluster keeps
        // them in other slots, so they go after it, many at once.
        let index: Vec<redis::Cmd> = r
            .routed
            .iter()
            .chain(r.settled.iter().map(|s| &s.record))
            .map(|d| {
                let mut set = redis::cmd("SET");
                set.arg(self.index_key(&d.decision_id))
                    .arg(format!("{}{SEP}{}", r.workflow, r.scope.key))
                    .arg("PX")
                    .arg(RETAIN_MS);
                set
            })
            .collect();
        let cluster = self.conn.is_cluster();
        if !cluster {
            for set in &index {
                pipe.add_command(set.clone()).ignore();
            }
        }
        if !self.known_workflows().contains(&r.workflow) {
            pipe.cmd("SADD").arg(self.workflows_key()).arg(&r.workflow).ignore();
        }
        // Who routed under each outcome: in the workflow's slot, so these
        // ride the script's pipeline on a cluster too.
        for d in &r.routed {
            self.note_outcome_caller(&mut pipe, d);
        }
        pipe.invoke_script(&inv);
        let reply = strings(self.pipeline_with_script(&pipe, &self.lease).await?);
        if cluster {
            self.write_index(index).await;
        }
        self.known_workflows().insert(r.workflow.clone());
        let n = |i: usize| reply.get(i).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
        if reply.first().map(String::as_str) == Some("lost") {
            return Err(self.state_lost(&r.workflow, reply.get(1).map_or("", String::as_str)));
        }
        self.state_sound(&r.workflow);
        if n(7) > 0 {
            self.acked().record(
                &r.workflow,
                std::slice::from_ref(&r.scope.key),
                n(8),
                n(7) as u64,
                r.now_ms,
            );
        }
        match reply.first().map(String::as_str) {
            Some("ok") => Ok(LeaseGrant {
                fresh_nanos: n(1),
                stopped: n(2) == 1,
                state: ScopeState {
                    limit_nanos: n(3).saturating_add(n(4)),
                    extra_nanos: n(4),
                    spent_nanos: n(5),
                    reserved_nanos: n(6),
                },
            }),
            _ => Err(StoreError::Unavailable(format!("redis: unexpected reply {reply:?}"))),
        }
    }
}
