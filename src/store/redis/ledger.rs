//! The ledger ([`LedgerStore`]): one stream per workflow, appended to by the
//! settle script and by outcomes and feedback.

use redis::Value;

use super::*;
use crate::ledger::{FeedbackEvent, Ledger, OutcomeEvent, OutcomeStatus};
use crate::store::{LedgerStore, PriorOutcome};

#[async_trait::async_trait]
impl LedgerStore for RedisStore {
    fn set_decision_retention(&self, retention: std::time::Duration) {
        let ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        self.decision_retention_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    async fn record_outcome(&self, o: &OutcomeEvent, recorder: &str) -> Result<Option<PriorOutcome>, StoreError> {
        let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
        // The outcome's last record, swapped atomically for this one.
        let mut c = self.conn.clone();
        let last = format!("{}oo:{}", self.tag(&o.workflow), o.outcome_id);
        let record = format!("{}{SEP}{recorder}", o.status.name());
        let prior: Option<String> = self
            .bounded(async move {
                redis::cmd("SET")
                    .arg(&last)
                    .arg(&record)
                    .arg("GET")
                    .arg("PX")
                    .arg(RETAIN_MS)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        self.append(
            &o.workflow,
            &[
                ("k", "outcome".to_string()),
                ("o", o.outcome_id.clone()),
                ("s", o.status.name().to_string()),
                ("v", opt(o.value_usd)),
                ("h", opt(o.human_minutes)),
                ("at", o.at_ms.to_string()),
                ("by", recorder.to_string()),
            ],
        )
        .await?;
        Ok(prior.map(|p| {
            let (status, by) = p.split_once(SEP).unwrap_or((p.as_str(), ""));
            PriorOutcome {
                status: status.to_string(),
                recorded_by: by.to_string(),
            }
        }))
    }
    async fn outcome_routed_by(&self, workflow: &str, outcome_id: &str, caller: &str) -> Result<bool, StoreError> {
        if self
            .leased_outcomes
            .get(&format!("{workflow}{SEP}{outcome_id}{SEP}{caller}"))
            .is_some()
        {
            return Ok(true);
        }
        let mut c = self.conn.clone();
        let key = self.outcome_callers_key(workflow, outcome_id);
        let caller = caller.to_string();
        self.bounded(async move { redis::cmd("SISMEMBER").arg(&key).arg(&caller).query_async(&mut c).await })
            .await
    }
    async fn record_feedback(&self, f: &FeedbackEvent) -> Result<(), StoreError> {
        self.append(
            &f.workflow,
            &[
                ("k", "feedback".to_string()),
                ("d", f.decision_id.clone()),
                ("m", f.model.clone()),
                ("a", u8::from(f.accepted).to_string()),
                ("at", f.at_ms.to_string()),
            ],
        )
        .await
    }
    async fn ledger(&self, workflow: Option<&str>, since_ms: i64) -> Result<Ledger, StoreError> {
        let workflows = self.workflows(workflow).await?;
        let mut ledger = Ledger::default();
        for wf in workflows {
            // Entry IDs start with the append time in ms: a call made since
            // `since_ms` was settled since then too.
            let first_call = ledger.calls.len();
            self.scan(&format!("{}events", self.tag(&wf)), since_ms, |entry| {
                let Some(f) = &entry_fields(entry) else { return };
                let at = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                match f.get("k").map(String::as_str) {
                    Some("call") => ledger.calls.extend(call_of(f).filter(|c| c.created_ms >= since_ms)),
                    Some("outcome") => ledger
                        .outcomes
                        .extend(
                            f.get("s")
                                .and_then(|s| OutcomeStatus::parse(s))
                                .map(|status| OutcomeEvent {
                                    workflow: wf.clone(),
                                    outcome_id: f.get("o").cloned().unwrap_or_default(),
                                    status,
                                    value_usd: f.get("v").and_then(|v| v.parse().ok()),
                                    human_minutes: f.get("h").and_then(|v| v.parse().ok()),
                                    at_ms: at("at"),
                                }),
                        ),
                    Some("feedback") => ledger.feedback.push(FeedbackEvent {
                        workflow: wf.clone(),
                        decision_id: f.get("d").cloned().unwrap_or_default(),
                        model: f.get("m").cloned().unwrap_or_default(),
                        accepted: f.get("a").map(String::as_str) == Some("1"),
                        at_ms: at("at"),
                    }),
                    _ => {}
                }
            })
            .await?;
            // The decision log's snapshots, for the calls that still have one.
            let mut snapshots = std::collections::HashMap::new();
            self.scan(&format!("{}decisions", self.tag(&wf)), since_ms, |entry| {
                if let (Some(d), Some(snap)) = (entry_bytes(entry, "d"), entry_bytes(entry, "snap")) {
                    snapshots.insert(String::from_utf8_lossy(d).into_owned(), snap.to_vec());
                }
            })
            .await?;
            for call in &mut ledger.calls[first_call..] {
                if let Some(snap) = snapshots.remove(&call.decision_id) {
                    call.snapshot = snap;
                }
            }
            self.resolve_labels(&wf, &mut ledger.calls[first_call..]).await?;
        }
        ledger
            .calls
            .sort_by(|a, b| (a.created_ms, &a.decision_id).cmp(&(b.created_ms, &b.decision_id)));
        Ok(ledger)
    }
}

impl RedisStore {
    /// Every entry of stream `key` appended since `since_ms`, a page at a time.
    async fn scan(&self, key: &str, since_ms: i64, mut each: impl FnMut(&Value)) -> Result<(), StoreError> {
        let mut start = format!("{}", since_ms.max(0));
        loop {
            let (mut c, k, from) = (self.conn.clone(), key.to_string(), start.clone());
            let page: Vec<Value> = self
                .bounded(async move {
                    redis::cmd("XRANGE")
                        .arg(k)
                        .arg(from)
                        .arg("+")
                        .arg("COUNT")
                        .arg(LEDGER_PAGE)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            for entry in &page {
                each(entry);
            }
            let last = page.last().and_then(|e| match e {
                Value::Array(parts) => parts.first().map(text),
                _ => None,
            });
            match last {
                // The next page starts after the last entry read.
                Some(last) if page.len() == LEDGER_PAGE => start = format!("({last}"),
                _ => return Ok(()),
            }
        }
    }
}
