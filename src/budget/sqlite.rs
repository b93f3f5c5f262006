//! The embedded budget store: SQLite in WAL mode in `--state-dir`.
//!
//! One connection serves the sidecar; each operation is one `IMMEDIATE`
//! transaction, so a reservation's check and increments are atomic with
//! respect to every other operation. With WAL and `synchronous = NORMAL`, a
//! committed transaction is in the WAL file before the call returns, so a
//! `kill -9` of the process loses nothing acknowledged (a power cut may lose
//! the last transactions; `synchronous = FULL` closes that at the cost of an
//! fsync per commit). Calls run on tokio's blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{
    BudgetStore, Escalation, NewReservation, ReservationRecord, Reserved, ScopeState, Settled, StoreError, Usage,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS scopes (
    key TEXT PRIMARY KEY,
    limit_nanos INTEGER NOT NULL,
    extra_nanos INTEGER NOT NULL DEFAULT 0,
    spent_nanos INTEGER NOT NULL DEFAULT 0,
    reserved_nanos INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS reservations (
    decision_id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    outcome_id TEXT NOT NULL,
    model TEXT NOT NULL,
    is_deferrable INTEGER NOT NULL,
    amount_nanos INTEGER NOT NULL,
    scopes TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    state TEXT NOT NULL,
    actual_nanos INTEGER,
    input_tokens INTEGER,
    cached_input_tokens INTEGER,
    output_tokens INTEGER,
    failed INTEGER,
    settled_ms INTEGER
);
CREATE INDEX IF NOT EXISTS reservations_open ON reservations (state, expires_ms);
CREATE TABLE IF NOT EXISTS escalations (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    scope TEXT NOT NULL,
    outcome_id TEXT NOT NULL,
    caller TEXT NOT NULL,
    amount_nanos INTEGER NOT NULL,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    resolved_by TEXT NOT NULL DEFAULT '',
    resolved_ms INTEGER NOT NULL DEFAULT 0,
    added_nanos INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS escalations_scope ON escalations (scope, created_ms);
";

/// Scope keys are joined with a byte that cannot appear in a key we build.
const SCOPE_SEP: char = '\u{1f}';

pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

impl SqliteStore {
    /// Opens (creating if needed) `budget.sqlite3` in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<SqliteStore, StoreError> {
        let path = state_dir.join("budget.sqlite3");
        let conn = Connection::open(&path).map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;",
        )
        .map_err(unavailable)?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves SQLite consistent (the
            // transaction rolls back on drop), so a poisoned lock is usable.
            let mut guard = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| unavailable(format!("store task failed: {e}")))?
    }
}

fn scope_state(tx: &rusqlite::Transaction<'_>, key: &str) -> Result<ScopeState, StoreError> {
    tx.query_row(
        "SELECT limit_nanos + extra_nanos, spent_nanos, reserved_nanos FROM scopes WHERE key = ?1",
        [key],
        |r| {
            Ok(ScopeState {
                limit_nanos: r.get(0)?,
                spent_nanos: r.get(1)?,
                reserved_nanos: r.get(2)?,
            })
        },
    )
    .optional()
    .map_err(unavailable)
    .map(Option::unwrap_or_default)
}

fn escalation_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Escalation> {
    Ok(Escalation {
        id: r.get(0)?,
        workflow: r.get(1)?,
        scope: r.get(2)?,
        outcome_id: r.get(3)?,
        caller: r.get(4)?,
        amount_nanos: r.get(5)?,
        model: r.get(6)?,
        state: r.get(7)?,
        created_ms: r.get(8)?,
        resolved_by: r.get(9)?,
        resolved_ms: r.get(10)?,
        added_nanos: r.get(11)?,
        reason: r.get(12)?,
    })
}

const ESCALATION_COLUMNS: &str =
    "id, workflow, scope, outcome_id, caller, amount_nanos, model, state, created_ms, resolved_by, resolved_ms, added_nanos, reason";

#[async_trait::async_trait]
impl BudgetStore for SqliteStore {
    async fn reserve(&self, r: &NewReservation) -> Result<Reserved, StoreError> {
        let r = r.clone();
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
            for s in &r.scopes {
                tx.execute(
                    "INSERT INTO scopes (key, limit_nanos) VALUES (?1, ?2)
                     ON CONFLICT(key) DO UPDATE SET limit_nanos = excluded.limit_nanos",
                    params![s.key, s.limit_nanos],
                )
                .map_err(unavailable)?;
                let state = scope_state(&tx, &s.key)?;
                if state.spent_nanos + state.reserved_nanos + r.amount_nanos > state.limit_nanos {
                    // Dropping the transaction rolls back the limit upserts too.
                    return Ok(Reserved::OverLimit { scope: s.key.clone(), state });
                }
            }
            for s in &r.scopes {
                tx.execute(
                    "UPDATE scopes SET reserved_nanos = reserved_nanos + ?1 WHERE key = ?2",
                    params![r.amount_nanos, s.key],
                )
                .map_err(unavailable)?;
            }
            let keys: Vec<&str> = r.scopes.iter().map(|s| s.key.as_str()).collect();
            tx.execute(
                "INSERT INTO reservations (decision_id, workflow, outcome_id, model, is_deferrable, amount_nanos, scopes,
                                           created_ms, expires_ms, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'reserved')",
                params![
                    r.decision_id,
                    r.workflow,
                    r.outcome_id,
                    r.model,
                    r.deferrable,
                    r.amount_nanos,
                    keys.join(&SCOPE_SEP.to_string()),
                    r.now_ms,
                    r.expires_ms
                ],
            )
            .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(Reserved::Ok)
        })
        .await
    }

    async fn settle(&self, decision_id: &str, cost: i64, usage: &Usage, now_ms: i64) -> Result<Settled, StoreError> {
        let (id, usage) = (decision_id.to_string(), *usage);
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
            let row: Option<(String, i64, String, Option<i64>)> = tx
                .query_row(
                    "SELECT state, amount_nanos, scopes, actual_nanos FROM reservations WHERE decision_id = ?1",
                    [&id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()
                .map_err(unavailable)?;
            let Some((state, amount, scopes, actual)) = row else {
                return Err(StoreError::UnknownDecision(id));
            };
            if state == "settled" {
                return Ok(Settled::AlreadySettled { cost_nanos: actual.unwrap_or(0) });
            }
            // An expired reservation was already released: charge only the cost.
            let release = if state == "reserved" { amount } else { 0 };
            for key in scopes.split(SCOPE_SEP).filter(|k| !k.is_empty()) {
                tx.execute(
                    "UPDATE scopes SET reserved_nanos = reserved_nanos - ?1, spent_nanos = spent_nanos + ?2 WHERE key = ?3",
                    params![release, cost, key],
                )
                .map_err(unavailable)?;
            }
            tx.execute(
                "UPDATE reservations SET state = 'settled', actual_nanos = ?1, input_tokens = ?2, cached_input_tokens = ?3,
                        output_tokens = ?4, failed = ?5, settled_ms = ?6 WHERE decision_id = ?7",
                params![
                    cost,
                    usage.input_tokens as i64,
                    usage.cached_input_tokens as i64,
                    usage.output_tokens as i64,
                    usage.failed,
                    now_ms,
                    id
                ],
            )
            .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(Settled::Charged { cost_nanos: cost })
        })
        .await
    }

    async fn expire(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.with(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let expired: Vec<(String, i64, String)> = {
                let mut stmt = tx
                    .prepare(
                        "SELECT decision_id, amount_nanos, scopes FROM reservations
                         WHERE state = 'reserved' AND expires_ms <= ?1",
                    )
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .map_err(unavailable)?;
                rows.collect::<Result<_, _>>().map_err(unavailable)?
            };
            for (id, amount, scopes) in &expired {
                for key in scopes.split(SCOPE_SEP).filter(|k| !k.is_empty()) {
                    tx.execute(
                        "UPDATE scopes SET reserved_nanos = reserved_nanos - ?1 WHERE key = ?2",
                        params![amount, key],
                    )
                    .map_err(unavailable)?;
                }
                tx.execute("UPDATE reservations SET state = 'expired' WHERE decision_id = ?1", [id])
                    .map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)?;
            Ok(expired.len() as u64)
        })
        .await
    }

    async fn scope(&self, key: &str) -> Result<ScopeState, StoreError> {
        let key = key.to_string();
        self.with(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            scope_state(&tx, &key)
        })
        .await
    }

    async fn reservation(&self, decision_id: &str) -> Result<Option<ReservationRecord>, StoreError> {
        let id = decision_id.to_string();
        self.with(move |conn| {
            conn.query_row(
                "SELECT decision_id, workflow, outcome_id, model, is_deferrable, amount_nanos, state, actual_nanos
                 FROM reservations WHERE decision_id = ?1",
                [&id],
                |r| {
                    Ok(ReservationRecord {
                        decision_id: r.get(0)?,
                        workflow: r.get(1)?,
                        outcome_id: r.get(2)?,
                        model: r.get(3)?,
                        deferrable: r.get(4)?,
                        amount_nanos: r.get(5)?,
                        state: r.get(6)?,
                        actual_nanos: r.get(7)?,
                    })
                },
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn open_escalation(&self, scope: &str) -> Result<Option<Escalation>, StoreError> {
        let scope = scope.to_string();
        self.with(move |conn| {
            conn.query_row(
                &format!(
                    "SELECT {ESCALATION_COLUMNS} FROM escalations WHERE scope = ?1 ORDER BY created_ms DESC, rowid DESC LIMIT 1"
                ),
                [&scope],
                escalation_row,
            )
            .optional()
            .map_err(unavailable)
            .map(|e| e.filter(|e| e.state != "approved"))
        })
        .await
    }

    async fn create_escalation(&self, e: &Escalation) -> Result<(), StoreError> {
        let e = e.clone();
        self.with(move |conn| {
            conn.execute(
                &format!("INSERT INTO escalations ({ESCALATION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
                params![
                    e.id, e.workflow, e.scope, e.outcome_id, e.caller, e.amount_nanos, e.model, e.state, e.created_ms,
                    e.resolved_by, e.resolved_ms, e.added_nanos, e.reason
                ],
            )
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn list_escalations(&self, workflow: Option<&str>) -> Result<Vec<Escalation>, StoreError> {
        let workflow = workflow.map(str::to_string);
        self.with(move |conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {ESCALATION_COLUMNS} FROM escalations WHERE ?1 IS NULL OR workflow = ?1 ORDER BY created_ms, rowid"
                ))
                .map_err(unavailable)?;
            let rows = stmt.query_map([workflow], escalation_row).map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
        .await
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
        let (id, by, reason) = (id.to_string(), by.to_string(), reason.to_string());
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
            let e = tx
                .query_row(&format!("SELECT {ESCALATION_COLUMNS} FROM escalations WHERE id = ?1"), [&id], escalation_row)
                .optional()
                .map_err(unavailable)?
                .ok_or_else(|| StoreError::UnknownEscalation(id.clone()))?;
            if e.state != "pending" {
                return Err(StoreError::AlreadyResolved(id, e.state));
            }
            let (state, added) = if approve { ("approved", add_nanos) } else { ("denied", 0) };
            if approve {
                tx.execute("UPDATE scopes SET extra_nanos = extra_nanos + ?1 WHERE key = ?2", params![added, e.scope])
                    .map_err(unavailable)?;
            }
            tx.execute(
                "UPDATE escalations SET state = ?1, resolved_by = ?2, resolved_ms = ?3, added_nanos = ?4, reason = ?5 WHERE id = ?6",
                params![state, by, now_ms, added, reason, id],
            )
            .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(Escalation {
                state: state.to_string(),
                resolved_by: by,
                resolved_ms: now_ms,
                added_nanos: added,
                reason,
                ..e
            })
        })
        .await
    }
}
