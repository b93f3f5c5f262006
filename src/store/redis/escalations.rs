//! Escalations ([`EscalationStore`]): the escalate and resolve scripts.

use super::*;
use crate::store::{Escalation, EscalationState, EscalationStore};

#[async_trait::async_trait]
impl EscalationStore for RedisStore {
    async fn escalate(&self, e: &Escalation) -> Result<Escalation, StoreError> {
        let tag = self.tag(&e.workflow);
        let fields: [(&str, String); 13] = [
            ("workflow", e.workflow.clone()),
            ("scope", e.scope.clone()),
            ("outcome", e.outcome_id.clone()),
            ("caller", e.caller.clone()),
            ("amount", e.amount_nanos.to_string()),
            ("model", e.model.clone()),
            ("state", e.state.as_str().to_string()),
            ("created", e.created_ms.to_string()),
            ("resolved_by", e.resolved_by.clone()),
            ("resolved_ms", e.resolved_ms.to_string()),
            ("added", e.added_nanos.to_string()),
            ("reason", e.reason.clone()),
            ("id", e.id.clone()),
        ];
        let mut inv = self.escalate.prepare_invoke();
        inv.key(format!("{tag}el:{}", e.scope))
            .key(format!("{tag}e:{}", e.id))
            .key(format!("{tag}esc"))
            .arg(&tag)
            .arg(&e.id)
            .arg(e.created_ms);
        for (k, v) in &fields {
            inv.arg(*k).arg(v);
        }
        let mut pipe = redis::pipe();
        pipe.invoke_script(&inv);
        let reply = strings(self.pipeline_with_script(&pipe, &self.escalate).await?);
        match (reply.first().map(String::as_str), reply.get(1)) {
            (Some("created"), _) => {
                // The index outside the workflow's slot, for resolving by id
                // alone (resolve also finds it without, by the workflows set).
                let mut pipe = redis::pipe();
                pipe.cmd("SET")
                    .arg(self.escalation_index(&e.id))
                    .arg(&e.workflow)
                    .ignore()
                    .cmd("SADD")
                    .arg(self.workflows_key())
                    .arg(&e.workflow)
                    .ignore();
                let mut c = self.conn.clone();
                self.bounded(async move { pipe.query_async::<()>(&mut c).await })
                    .await?;
                Ok(e.clone())
            }
            (Some("open"), Some(id)) => self
                .escalation_at(&e.workflow, id)
                .await?
                .ok_or_else(|| StoreError::UnknownEscalation(id.clone())),
            _ => Err(StoreError::Unavailable(format!("redis: unexpected reply {reply:?}"))),
        }
    }
    async fn list_escalations(&self, workflow: Option<&str>) -> Result<Vec<Escalation>, StoreError> {
        let workflows = self.workflows(workflow).await?;
        let mut out = Vec::new();
        for wf in workflows {
            let key = format!("{}esc", self.tag(&wf));
            let mut c = self.conn.clone();
            let ids: Vec<String> = self
                .bounded(async move { redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).query_async(&mut c).await })
                .await?;
            for id in ids {
                out.extend(self.escalation_at(&wf, &id).await?);
            }
        }
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(out)
    }
    async fn resolve_escalation(
        &self,
        id: &str,
        approve: bool,
        add_nanos: i64,
        by: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Escalation, StoreError> {
        let mut c = self.conn.clone();
        let key = self.escalation_index(id);
        let wf: Option<String> = self
            .bounded(async move { redis::cmd("GET").arg(key).query_async(&mut c).await })
            .await?;
        let wf = match wf {
            Some(wf) => wf,
            // The index is written just after the escalation; a sidecar that
            // died in between left none, so look in every workflow.
            None => {
                let mut found = None;
                for wf in self.workflows(None).await? {
                    if self.escalation_at(&wf, id).await?.is_some() {
                        found = Some(wf);
                        break;
                    }
                }
                found.ok_or_else(|| StoreError::UnknownEscalation(id.to_string()))?
            }
        };
        let e = self
            .escalation_at(&wf, id)
            .await?
            .ok_or_else(|| StoreError::UnknownEscalation(id.to_string()))?;
        let tag = self.tag(&wf);
        let mut inv = self.resolve.prepare_invoke();
        inv.key(format!("{tag}e:{id}"))
            .key(format!("{tag}s:{}", e.scope))
            .arg(if approve { "1" } else { "0" })
            .arg(add_nanos)
            .arg(by)
            .arg(now_ms)
            .arg(reason)
            .arg(crate::money::MAX_SCOPE_EXTRA_NANOS);
        if approve && add_nanos <= 0 {
            return Err(StoreError::InvalidAmount(format!(
                "an approval must add a positive amount, not {add_nanos} nano-USD"
            )));
        }
        let mut pipe = redis::pipe();
        pipe.invoke_script(&inv);
        let reply = strings(self.pipeline_with_script(&pipe, &self.resolve).await?);
        match reply.first().map(String::as_str) {
            Some("ok") => {}
            Some("cap") => {
                let extra = reply.get(1).and_then(|s| s.parse().ok()).unwrap_or(i64::MAX);
                return Err(extra_after_approval(&e.scope, extra, add_nanos)
                    .err()
                    .unwrap_or_else(|| StoreError::InvalidAmount("the approval is over the cap".into())));
            }
            Some("resolved") => {
                return Err(StoreError::AlreadyResolved(
                    id.to_string(),
                    reply
                        .get(1)
                        .and_then(|s| EscalationState::parse(s))
                        .unwrap_or(EscalationState::Denied)
                        .as_str(),
                ))
            }
            _ => return Err(StoreError::UnknownEscalation(id.to_string())),
        }
        self.escalation_at(&wf, id)
            .await?
            .ok_or_else(|| StoreError::UnknownEscalation(id.to_string()))
    }

    async fn current_escalation(&self, scope: &str) -> Result<Option<Escalation>, StoreError> {
        let wf = workflow_of(scope).to_string();
        let key = format!("{}el:{scope}", self.tag(&wf));
        let mut c = self.conn.clone();
        let id: Option<String> = self
            .bounded(async move { redis::cmd("GET").arg(key).query_async(&mut c).await })
            .await?;
        let Some(id) = id else { return Ok(None) };
        Ok(self
            .escalation_at(&wf, &id)
            .await?
            .filter(|e| e.state != EscalationState::Approved))
    }
}
