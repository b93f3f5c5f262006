//! The calls that go to Redis for one decision: reserve, locate, settle,
//! replay what was journaled while it was away, fail open within the local
//! cap, and read an escalation.

use super::*;

impl RedisStore {
    pub(super) async fn reserve_remote(&self, r: &NewReservation) -> Result<Reserved, StoreError> {
        self.ensure_known().await?;
        debug_assert!(
            r.scopes.iter().all(|s| workflow_of(&s.key) == r.workflow),
            "a call's scopes share its workflow's hash tag"
        );
        let tag = self.tag(&r.workflow);
        let names: Vec<&str> = r.scopes.iter().map(|s| s.key.as_str()).collect();
        let joined = names.join(&SEP.to_string());
        let mut inv = self.reserve.prepare_invoke();
        inv.key(format!("{tag}r:{}", r.decision_id)).key(format!("{tag}open"));
        for s in &r.scopes {
            inv.key(format!("{tag}s:{}", s.key));
        }
        let (epoch, holder, acked) = self.epoch_args(&r.workflow);
        inv.key(epoch);
        let mut pipe = redis::pipe();
        inv.arg(&r.decision_id)
            .arg(r.amount_nanos)
            .arg(r.expires_ms)
            .arg(RETAIN_MS)
            .arg(&joined)
            .arg(self.pack(r, &mut pipe))
            .arg(r.snapshot.as_slice());
        for s in &r.scopes {
            inv.arg(s.limit_nanos);
        }
        inv.arg(holder).arg(acked);
        pipe.cmd("SET")
            .arg(self.index_key(&r.decision_id))
            .arg(format!("{}{SEP}{joined}", r.workflow))
            .arg("PX")
            .arg(RETAIN_MS)
            .ignore();
        // The expiry sweep finds workflows through this set; once per
        // workflow per process is enough (SADD is idempotent anyway).
        let new_workflow = !self.known_workflows().contains(&r.workflow);
        if new_workflow {
            pipe.cmd("SADD").arg(self.workflows_key()).arg(&r.workflow).ignore();
        }
        self.note_outcome_caller(&mut pipe, r);
        pipe.invoke_script(&inv);
        let reply = strings(self.pipeline_with_script(&pipe, &self.reserve).await?);
        if new_workflow {
            self.known_workflows().insert(r.workflow.clone());
        }
        match reply.first().map(String::as_str) {
            Some("lost") => return Err(self.state_lost(&r.workflow, reply.get(1).map_or("", String::as_str))),
            Some(_) => self.state_sound(&r.workflow),
            None => {}
        }
        match reply.first().map(String::as_str) {
            Some("ok") | Some("dup") => Ok(Reserved::Ok),
            Some("over") => {
                let i: usize = reply.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
                let n = |j: usize| reply.get(j).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
                Ok(Reserved::OverLimit {
                    scope: r.scopes.get(i - 1).map(|s| s.key.clone()).unwrap_or_default(),
                    state: ScopeState {
                        limit_nanos: n(2).saturating_add(n(3)),
                        spent_nanos: n(4),
                        reserved_nanos: n(5),
                        extra_nanos: n(3),
                    },
                })
            }
            _ => Err(StoreError::Unavailable(format!("redis: unexpected reply {reply:?}"))),
        }
    }

    /// The workflow and scope names of a decision: from this sidecar's memory
    /// when it made the decision, else from the index in Redis.
    pub(super) async fn locate(&self, decision_id: &str) -> Result<Option<(String, Vec<String>)>, StoreError> {
        let mut c = self.conn.clone();
        let key = self.index_key(decision_id);
        let v: Option<String> = self
            .bounded(async move { redis::cmd("GET").arg(key).query_async(&mut c).await })
            .await?;
        Ok(v.map(|v| {
            let mut parts = v.split(SEP);
            let wf = parts.next().unwrap_or_default().to_string();
            (wf, parts.filter(|s| !s.is_empty()).map(str::to_string).collect())
        }))
    }

    pub(super) async fn settle_remote(&self, p: &PendingSettle) -> Result<Settled, StoreError> {
        let (workflow, scopes) = match &p.record {
            Some(r) => (r.workflow.clone(), r.scopes.iter().map(|s| s.key.clone()).collect()),
            None => self
                .locate(&p.decision_id)
                .await?
                .ok_or_else(|| StoreError::UnknownDecision(p.decision_id.clone()))?,
        };
        let tag = self.tag(&workflow);
        let mut inv = self.settle.prepare_invoke();
        inv.key(format!("{tag}r:{}", p.decision_id))
            .key(format!("{tag}open"))
            .key(format!("{tag}events"))
            .key(format!("{tag}decisions"));
        for s in &scopes {
            inv.key(format!("{tag}s:{s}"));
        }
        let (epoch, holder, acked) = self.epoch_args(&workflow);
        inv.key(epoch);
        let usage = usage_field(&p.usage, p.now_ms);
        let mut pipe = redis::pipe();
        inv.arg(&p.decision_id).arg(p.cost_nanos).arg(RETAIN_MS).arg(usage);
        match &p.record {
            Some(r) => {
                inv.arg("1")
                    .arg(r.amount_nanos)
                    .arg(scopes.join(&SEP.to_string()))
                    .arg(self.pack(r, &mut pipe));
            }
            None => {
                inv.arg("0").arg("0").arg("").arg("");
            }
        }
        inv.arg(LEDGER_MAXLEN)
            .arg(p.record.as_ref().map_or(&[][..], |r| r.snapshot.as_slice()))
            .arg(
                p.now_ms
                    .saturating_sub(self.decision_retention_ms.load(Ordering::Relaxed)),
            )
            .arg(holder)
            .arg(acked);
        pipe.invoke_script(&inv);
        let reply = strings(self.pipeline_with_script(&pipe, &self.settle).await?);
        if reply.first().map(String::as_str) == Some("lost") {
            return Err(self.state_lost(&workflow, reply.get(1).map_or("", String::as_str)));
        }
        self.state_sound(&workflow);
        match reply.first().map(String::as_str) {
            Some("charged") => {
                self.acked().record(&workflow, &scopes, p.cost_nanos, 1, p.now_ms);
                Ok(Settled::Charged {
                    cost_nanos: p.cost_nanos,
                })
            }
            Some("settled") => Ok(Settled::AlreadySettled {
                cost_nanos: reply.get(1).and_then(|s| s.parse().ok()).unwrap_or(0),
            }),
            Some("unknown") => Err(StoreError::UnknownDecision(p.decision_id.clone())),
            _ => Err(StoreError::Unavailable(format!("redis: unexpected reply {reply:?}"))),
        }
    }

    /// Replays journaled settlements, oldest first, until Redis fails again.
    pub(super) async fn replay(&self) -> Result<u64, StoreError> {
        let mut j = self.journal.lock().await;
        if j.pending.is_empty() {
            return Ok(0);
        }
        let mut done = 0;
        let mut result = Ok(());
        while let Some(p) = j.pending.first().cloned() {
            match self.settle_remote(&p).await {
                Ok(_) => {}
                Err(StoreError::UnknownDecision(id)) => {
                    tracing::warn!(decision = %id, "a journaled ReportUsage names a decision Redis does not know; dropped");
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            j.pending.remove(0);
            // The gauge follows each entry, so it never counts one that
            // Redis already holds.
            self.journal_pending.store(j.pending.len() as u64, Ordering::Relaxed);
            done += 1;
        }
        if done > 0 {
            if let Err(e) = j.rewrite() {
                tracing::warn!(file = %j.path.display(), error = %e, "cannot rewrite the Redis journal; replays are idempotent, so the next pass repeats them harmlessly");
            }
            tracing::info!(
                replayed = done,
                waiting = j.pending.len(),
                "replayed settlements to Redis"
            );
        }
        result.map(|_| done)
    }

    pub(super) fn fail_open(&self, r: &NewReservation, why: String) -> Result<Reserved, StoreError> {
        let Some(cap) = self.cfg.fail_open_cap_nanos else {
            return Err(StoreError::Unavailable(format!(
                "{why}; budgets are enforced in Redis and Switchyard fails closed while it is unreachable \
                 (serve --redis-fail-open-usd N admits calls up to a local cap instead)"
            )));
        };
        let admitted = self
            .open_admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(r.amount_nanos).filter(|n| *n <= cap)
            });
        match admitted {
            Ok(used) => {
                self.fail_open_total.fetch_add(1, Ordering::Relaxed);
                self.recent.insert(r.decision_id.clone(), Arc::new(r.clone()));
                tracing::warn!(
                    decision = %r.decision_id,
                    workflow = %r.workflow,
                    admitted = %format_usd(used.saturating_add(r.amount_nanos)),
                    cap = %format_usd(cap),
                    "Redis unreachable: admitted under the local fail-open cap"
                );
                Ok(Reserved::Ok)
            }
            Err(used) => Err(StoreError::Unavailable(format!(
                "{why}; this sidecar's fail-open cap ({}) is used up ({} admitted since Redis was last reachable)",
                format_usd(cap),
                format_usd(used)
            ))),
        }
    }

    pub(super) async fn escalation_at(&self, workflow: &str, id: &str) -> Result<Option<Escalation>, StoreError> {
        let key = format!("{}e:{id}", self.tag(workflow));
        let mut c = self.conn.clone();
        let v: Value = self
            .bounded(async move { redis::cmd("HGETALL").arg(key).query_async(&mut c).await })
            .await?;
        let f = fields(v);
        if f.is_empty() {
            return Ok(None);
        }
        let s = |k: &str| f.get(k).cloned().unwrap_or_default();
        let n = |k: &str| f.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Some(Escalation {
            id: id.to_string(),
            workflow: s("workflow"),
            scope: s("scope"),
            outcome_id: s("outcome"),
            caller: s("caller"),
            amount_nanos: n("amount"),
            model: s("model"),
            state: EscalationState::parse(&s("state"))
                .ok_or_else(|| StoreError::Unavailable(format!("redis: escalation {id} has no known state")))?,
            created_ms: n("created"),
            resolved_by: s("resolved_by"),
            resolved_ms: n("resolved_ms"),
            added_nanos: n("added"),
            reason: s("reason"),
        }))
    }
}
