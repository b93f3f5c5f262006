//! What learning keeps ([`LearningStore`]): labelled calls, and each
//! outcome's rejected tier.

use rusqlite::{params, OptionalExtension};

use super::{exec, unavailable, SqliteStore};
use crate::store::{LearningStore, StoreError, REJECTION_TTL_MS};
use crate::understand::SCORE_BINS;

/// Labelled calls of `workflow` after `cursor` (a sequence number; `""`:
/// from the start), at most `max`.
pub(super) fn since(
    conn: &rusqlite::Connection,
    workflow: &str,
    cursor: &str,
    max: usize,
) -> Result<crate::store::LearnPage, StoreError> {
    let after: i64 = if cursor.is_empty() {
        0
    } else {
        cursor
            .parse()
            .map_err(|_| unavailable(format!("bad learning cursor `{cursor}`")))?
    };
    let mut st = conn
        .prepare_cached("SELECT seq, body FROM learn_events WHERE workflow = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3")
        .map_err(unavailable)?;
    let rows = st
        .query_map(params![workflow, after, max as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .map_err(unavailable)?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, body) = row.map_err(unavailable)?;
        out.push((seq.to_string(), Some(body)));
    }
    Ok(out)
}

/// A workflow's complexity histogram under `model`, one count per bin.
pub(super) fn score_counts(conn: &rusqlite::Connection, workflow: &str, model: &str) -> Result<Vec<u64>, StoreError> {
    let mut out = vec![0u64; SCORE_BINS];
    let mut st = conn
        .prepare_cached("SELECT bin, n FROM score_counts WHERE workflow = ?1 AND model = ?2")
        .map_err(unavailable)?;
    let rows = st
        .query_map(params![workflow, model], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
        .map_err(unavailable)?;
    for row in rows {
        let (bin, n) = row.map_err(unavailable)?;
        if let Some(slot) = usize::try_from(bin).ok().and_then(|b| out.get_mut(b)) {
            *slot = n.max(0) as u64;
        }
    }
    Ok(out)
}

#[async_trait::async_trait]
impl LearningStore for SqliteStore {
    async fn merge_score_counts(&self, workflow: &str, model: &str, counts: &[u32]) -> Result<Vec<u64>, StoreError> {
        let (workflow, model, counts) = (workflow.to_string(), model.to_string(), counts.to_vec());
        self.with(move |conn| {
            for (bin, &n) in counts.iter().enumerate().filter(|(_, &n)| n > 0) {
                exec(
                    conn,
                    "INSERT INTO score_counts (workflow, model, bin, n) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (workflow, model, bin) DO UPDATE SET n = n + excluded.n",
                    params![workflow, model, bin as i64, i64::from(n)],
                )?;
            }
            score_counts(conn, &workflow, &model)
        })
        .await
    }

    async fn append_learning(&self, workflow: &str, window: u64, bodies: &[Vec<u8>]) -> Result<(), StoreError> {
        let (workflow, bodies) = (workflow.to_string(), bodies.to_vec());
        self.with(move |conn| {
            for b in &bodies {
                exec(
                    conn,
                    "INSERT INTO learn_events (workflow, body) VALUES (?1, ?2)",
                    params![workflow, b],
                )?;
            }
            // Keep the newest `window`: the model is the fold of these.
            exec(
                conn,
                "DELETE FROM learn_events WHERE workflow = ?1 AND seq <= (
                     SELECT seq FROM learn_events WHERE workflow = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
                params![workflow, window as i64],
            )
            .map(drop)
        })
        .await
    }
    async fn learning_since(
        &self,
        workflow: &str,
        cursor: &str,
        max: usize,
    ) -> Result<crate::store::LearnPage, StoreError> {
        let (workflow, cursor) = (workflow.to_string(), cursor.to_string());
        self.with(move |conn| since(conn, &workflow, &cursor, max)).await
    }

    async fn note_rejection(&self, workflow: &str, outcome_id: &str, tier: u8, now_ms: i64) -> Result<(), StoreError> {
        let (workflow, outcome_id) = (workflow.to_string(), outcome_id.to_string());
        self.with(move |conn| {
            exec(
                conn,
                "INSERT INTO rejections (workflow, outcome_id, tier, at_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (workflow, outcome_id) DO UPDATE SET tier = MAX(tier, excluded.tier), at_ms = excluded.at_ms",
                params![workflow, outcome_id, tier, now_ms],
            )?;
            // Rejections older than their TTL are of no further use to a retry.
            exec(conn, "DELETE FROM rejections WHERE at_ms < ?1", [now_ms - REJECTION_TTL_MS]).map(drop)
        })
        .await
    }

    async fn rejected_tier(&self, workflow: &str, outcome_id: &str) -> Result<Option<u8>, StoreError> {
        let (workflow, outcome_id) = (workflow.to_string(), outcome_id.to_string());
        self.with(move |conn| {
            conn.prepare_cached("SELECT tier FROM rejections WHERE workflow = ?1 AND outcome_id = ?2")
                .and_then(|mut st| st.query_row(params![workflow, outcome_id], |r| r.get(0)).optional())
                .map_err(unavailable)
        })
        .await
    }
}
