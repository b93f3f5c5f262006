//! The ledger ([`LedgerStore`]): settled calls are the reservations'
//! settled rows; outcomes and feedback are append-only tables.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::{exec, open_read_only, unavailable, SqliteStore};
use crate::ledger::{CallRecord, FeedbackEvent, Ledger, OutcomeEvent, OutcomeStatus};
use crate::store::{LedgerStore, PriorOutcome, StoreError};

/// The ledger's calls: ?1 since (ms), ?2 the workflow or NULL, ?3 the
/// UUIDv7 floor of ?1 (see `uuid_v7_floor`). `+state` keeps the planner on
/// the primary key.
pub const LEDGER_CALLS: &str =
    "SELECT decision_id, workflow, outcome_id, model, created_ms, settled_ms, actual_nanos, input_tokens,
            cached_input_tokens, output_tokens, failed, downgraded,
            COALESCE((SELECT text FROM label_sets WHERE id = label_set), labels), snapshot
     FROM reservations
     WHERE decision_id >= ?3 AND +state = 'settled' AND created_ms >= ?1 AND (?2 IS NULL OR workflow = ?2)
     ORDER BY created_ms, decision_id";

fn ledger_of(conn: &Connection, workflow: Option<&str>, since_ms: i64) -> rusqlite::Result<Ledger> {
    let mut calls = Vec::new();
    let mut st = conn.prepare_cached(LEDGER_CALLS)?;
    for row in st.query_map(params![since_ms, workflow, uuid_v7_floor(since_ms)], |r| {
        Ok(CallRecord {
            decision_id: r.get(0)?,
            workflow: r.get(1)?,
            outcome_id: r.get(2)?,
            model: r.get(3)?,
            created_ms: r.get(4)?,
            settled_ms: r.get::<_, Option<i64>>(5)?.unwrap_or_default(),
            cost_nanos: r.get::<_, Option<i64>>(6)?.unwrap_or_default(),
            input_tokens: r.get::<_, Option<i64>>(7)?.unwrap_or_default() as u64,
            cached_input_tokens: r.get::<_, Option<i64>>(8)?.unwrap_or_default() as u64,
            output_tokens: r.get::<_, Option<i64>>(9)?.unwrap_or_default() as u64,
            failed: r.get::<_, Option<bool>>(10)?.unwrap_or_default(),
            downgraded: r.get(11)?,
            labels: r.get(12)?,
            snapshot: r.get::<_, Option<Vec<u8>>>(13)?.unwrap_or_default(),
        })
    })? {
        calls.push(row?);
    }
    let mut outcomes = Vec::new();
    let mut st = conn.prepare_cached(
        "SELECT workflow, outcome_id, status, value_usd, human_minutes, at_ms FROM outcome_events
         WHERE at_ms >= ?1 AND (?2 IS NULL OR workflow = ?2) ORDER BY id",
    )?;
    for row in st.query_map(params![since_ms, workflow], |r| {
        let status: String = r.get(2)?;
        Ok(OutcomeEvent {
            workflow: r.get(0)?,
            outcome_id: r.get(1)?,
            status: OutcomeStatus::parse(&status).unwrap_or(OutcomeStatus::Abandoned),
            value_usd: r.get(3)?,
            human_minutes: r.get(4)?,
            at_ms: r.get(5)?,
        })
    })? {
        outcomes.push(row?);
    }
    let mut feedback = Vec::new();
    let mut st = conn.prepare_cached(
        "SELECT workflow, decision_id, model, accepted, at_ms FROM feedback_events
         WHERE at_ms >= ?1 AND (?2 IS NULL OR workflow = ?2) ORDER BY id",
    )?;
    for row in st.query_map(params![since_ms, workflow], |r| {
        Ok(FeedbackEvent {
            workflow: r.get(0)?,
            decision_id: r.get(1)?,
            model: r.get(2)?,
            accepted: r.get(3)?,
            at_ms: r.get(4)?,
        })
    })? {
        feedback.push(row?);
    }
    Ok(Ledger {
        calls,
        outcomes,
        feedback,
    })
}

/// The smallest UUIDv7 string made at or after `ms`. Decision IDs are
/// UUIDv7, whose text sorts by creation time, so the primary key serves the
/// ledger's time range and Route pays for no extra index.
pub fn uuid_v7_floor(ms: i64) -> String {
    let ms = ms.clamp(0, (1 << 48) - 1) as u64;
    format!("{:08x}-{:04x}", ms >> 16, ms & 0xffff)
}

/// Reads the ledger from the store in `state_dir` without opening it for
/// writing (for `report`, beside a running server). `None` when there is no
/// store there yet.
pub fn read_ledger(state_dir: &Path, workflow: Option<&str>, since_ms: i64) -> Result<Option<Ledger>, StoreError> {
    let Some(conn) = open_read_only(state_dir)? else {
        return Ok(None);
    };
    ledger_of(&conn, workflow, since_ms).map(Some).map_err(unavailable)
}

#[async_trait::async_trait]
impl LedgerStore for SqliteStore {
    fn set_decision_retention(&self, retention: std::time::Duration) {
        let ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        self.decision_retention_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    async fn record_outcome(&self, o: &OutcomeEvent, recorder: &str) -> Result<Option<PriorOutcome>, StoreError> {
        let (o, recorder) = (o.clone(), recorder.to_string());
        // Jobs run inside the store thread's batch transaction: the read and
        // the insert are atomic together.
        self.with(move |conn| {
            let prior = conn
                .query_row(
                    "SELECT status, recorded_by FROM outcome_events WHERE workflow = ?1 AND outcome_id = ?2
                     ORDER BY id DESC LIMIT 1",
                    params![o.workflow, o.outcome_id],
                    |r| {
                        Ok(PriorOutcome {
                            status: r.get(0)?,
                            recorded_by: r.get(1)?,
                        })
                    },
                )
                .optional()
                .map_err(unavailable)?;
            exec(
                conn,
                "INSERT INTO outcome_events (workflow, outcome_id, status, value_usd, human_minutes, at_ms, recorded_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    o.workflow,
                    o.outcome_id,
                    o.status.name(),
                    o.value_usd,
                    o.human_minutes,
                    o.at_ms,
                    recorder
                ],
            )?;
            Ok(prior)
        })
        .await
    }
    async fn outcome_routed_by(&self, workflow: &str, outcome_id: &str, caller: &str) -> Result<bool, StoreError> {
        let (workflow, outcome_id, caller) = (workflow.to_string(), outcome_id.to_string(), caller.to_string());
        self.with(move |conn| {
            conn.prepare_cached(
                "SELECT 1 FROM reservations WHERE workflow = ?1 AND outcome_id = ?2 AND owner = ?3 AND owner IS NOT NULL LIMIT 1",
            )
            .and_then(|mut st| st.exists(params![workflow, outcome_id, caller]))
            .map_err(unavailable)
        })
        .await
    }
    async fn record_feedback(&self, f: &FeedbackEvent) -> Result<(), StoreError> {
        let f = f.clone();
        self.with(move |conn| {
            exec(
                conn,
                "INSERT INTO feedback_events (workflow, decision_id, model, accepted, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![f.workflow, f.decision_id, f.model, f.accepted, f.at_ms],
            )
            .map(drop)
        })
        .await
    }
    async fn ledger(&self, workflow: Option<&str>, since_ms: i64) -> Result<Ledger, StoreError> {
        let workflow = workflow.map(str::to_string);
        self.with(move |conn| ledger_of(conn, workflow.as_deref(), since_ms).map_err(unavailable))
            .await
    }
}
