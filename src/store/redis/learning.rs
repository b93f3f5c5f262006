//! What learning keeps ([`LearningStore`]): a stream of labelled calls per
//! workflow, and each outcome's rejected tier under a TTL.

use redis::Value;

use super::*;
use crate::store::{LearningStore, REJECTION_TTL_MS};

#[async_trait::async_trait]
impl LearningStore for RedisStore {
    async fn merge_score_counts(&self, workflow: &str, model: &str, counts: &[u32]) -> Result<Vec<u64>, StoreError> {
        // One hash per workflow and model, bin -> Routes; every sidecar adds
        // its counts into it, so each reads the fleet's histogram.
        let key = format!("{}score:{model}", self.tag(workflow));
        // Each HINCRBY is atomic by itself; in order on the key's node, the
        // HGETALL after them sees them (a cluster refuses MULTI here).
        let mut pipe = redis::pipe();
        for (bin, &n) in counts.iter().enumerate().filter(|(_, &n)| n > 0) {
            pipe.cmd("HINCRBY").arg(&key).arg(bin).arg(n).ignore();
        }
        pipe.cmd("HGETALL").arg(&key);
        let mut c = self.conn.clone();
        let (all,): (Vec<(u32, u64)>,) = self.bounded(async move { pipe.query_async(&mut c).await }).await?;
        let mut out = vec![0u64; crate::understand::SCORE_BINS];
        for (bin, n) in all {
            if let Some(slot) = out.get_mut(bin as usize) {
                *slot = n;
            }
        }
        Ok(out)
    }

    async fn append_learning(&self, workflow: &str, window: u64, bodies: &[Vec<u8>]) -> Result<(), StoreError> {
        let key = format!("{}learn", self.tag(workflow));
        let mut pipe = redis::pipe();
        for body in bodies {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(window)
                .arg("*")
                .arg("b")
                .arg(body.as_slice())
                .ignore();
        }
        let mut c = self.conn.clone();
        self.bounded(async move { pipe.query_async::<()>(&mut c).await }).await
    }
    async fn learning_since(
        &self,
        workflow: &str,
        cursor: &str,
        max: usize,
    ) -> Result<crate::store::LearnPage, StoreError> {
        let key = format!("{}learn", self.tag(workflow));
        let from = if cursor.is_empty() {
            "-".to_string()
        } else {
            format!("({cursor}")
        };
        let mut c = self.conn.clone();
        let page: Vec<Value> = self
            .bounded(async move {
                redis::cmd("XRANGE")
                    .arg(key)
                    .arg(from)
                    .arg("+")
                    .arg("COUNT")
                    .arg(max)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let mut out = Vec::with_capacity(page.len());
        for entry in &page {
            let Value::Array(parts) = entry else { continue };
            let (Some(id), Some(Value::Array(kv))) = (parts.first(), parts.get(1)) else {
                continue;
            };
            let id = text(id);
            let body = kv.chunks(2).find_map(|p| match p {
                [k, Value::BulkString(b)] if text(k) == "b" => Some(b.as_slice()),
                _ => None,
            });
            out.push((id, body.map(<[u8]>::to_vec)));
        }
        Ok(out)
    }

    async fn note_rejection(&self, workflow: &str, outcome_id: &str, tier: u8, _now_ms: i64) -> Result<(), StoreError> {
        let mut inv = self.reject.prepare_invoke();
        inv.key(format!("{}rej:{outcome_id}", self.tag(workflow)))
            .arg(tier)
            .arg(REJECTION_TTL_MS);
        let mut pipe = redis::pipe();
        pipe.invoke_script(&inv);
        self.pipeline_with_script(&pipe, &self.reject).await.map(drop)
    }

    async fn rejected_tier(&self, workflow: &str, outcome_id: &str) -> Result<Option<u8>, StoreError> {
        let key = format!("{}rej:{outcome_id}", self.tag(workflow));
        let mut c = self.conn.clone();
        self.bounded(async move { redis::cmd("GET").arg(key).query_async(&mut c).await })
            .await
    }
}
