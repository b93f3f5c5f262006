//! Escalations ([`EscalationStore`]).

use rusqlite::{params, OptionalExtension};

use super::{exec, known, unavailable, Savepoint, SqliteStore};
use crate::store::{extra_after_approval, Escalation, EscalationState, EscalationStore, StoreError};

fn escalation_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Escalation> {
    Ok(Escalation {
        id: r.get(0)?,
        workflow: r.get(1)?,
        scope: r.get(2)?,
        outcome_id: r.get(3)?,
        caller: r.get(4)?,
        amount_nanos: r.get(5)?,
        model: r.get(6)?,
        state: known(7, EscalationState::parse, r.get(7)?)?,
        created_ms: r.get(8)?,
        resolved_by: r.get(9)?,
        resolved_ms: r.get(10)?,
        added_nanos: r.get(11)?,
        reason: r.get(12)?,
    })
}

const ESCALATION_COLUMNS: &str =
    "id, workflow, scope, outcome_id, caller, amount_nanos, model, state, created_ms, resolved_by, resolved_ms, added_nanos, reason";

/// The newest escalation on `scope`, whatever its state.
pub(super) fn newest(conn: &rusqlite::Connection, scope: &str) -> Result<Option<Escalation>, StoreError> {
    conn.query_row(
        &format!("SELECT {ESCALATION_COLUMNS} FROM escalations WHERE scope = ?1 ORDER BY created_ms DESC, rowid DESC LIMIT 1"),
        [scope],
        escalation_row,
    )
    .optional()
    .map_err(unavailable)
}

#[async_trait::async_trait]
impl EscalationStore for SqliteStore {
    async fn current_escalation(&self, scope: &str) -> Result<Option<Escalation>, StoreError> {
        let scope = scope.to_string();
        self.with(move |conn| newest(conn, &scope).map(|e| e.filter(|e| e.state != EscalationState::Approved)))
            .await
    }

    async fn escalate(&self, e: &Escalation) -> Result<Escalation, StoreError> {
        let e = e.clone();
        self.with(move |conn| {
            // One job on the one writer: the look and the insert cannot be
            // interleaved with another Route's (and the partial unique index
            // refuses a second pending escalation on a scope regardless).
            let tx = Savepoint::new(conn)?;
            let newest = newest(&tx, &e.scope)?;
            if let Some(open) = newest.filter(|n| n.state != EscalationState::Approved) {
                return Ok(open);
            }
            tx.execute(
                &format!("INSERT INTO escalations ({ESCALATION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"),
                params![
                    e.id, e.workflow, e.scope, e.outcome_id, e.caller, e.amount_nanos, e.model, e.state.as_str(), e.created_ms,
                    e.resolved_by, e.resolved_ms, e.added_nanos, e.reason
                ],
            )
            .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(e)
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
            let tx = Savepoint::new(conn)?;
            let e = tx
                .query_row(&format!("SELECT {ESCALATION_COLUMNS} FROM escalations WHERE id = ?1"), [&id], escalation_row)
                .optional()
                .map_err(unavailable)?
                .ok_or_else(|| StoreError::UnknownEscalation(id.clone()))?;
            if e.state != EscalationState::Pending {
                return Err(StoreError::AlreadyResolved(id, e.state.as_str()));
            }
            let (state, added) = if approve {
                (EscalationState::Approved, add_nanos)
            } else {
                (EscalationState::Denied, 0)
            };
            if approve {
                if add_nanos <= 0 {
                    return Err(StoreError::InvalidAmount(format!(
                        "an approval must add a positive amount, not {add_nanos} nano-USD"
                    )));
                }
                // The scope's row may not exist yet (the period's first call
                // was over the limit): the approval creates it, and the next
                // reservation writes the rules' limit beside the addition.
                let extra: i64 = tx
                    .query_row("SELECT extra_nanos FROM scopes WHERE key = ?1", [&e.scope], |r| r.get(0))
                    .optional()
                    .map_err(unavailable)?
                    .unwrap_or(0);
                let total = extra_after_approval(&e.scope, extra, add_nanos)?;
                exec(
                    &tx,
                    "INSERT INTO scopes (key, limit_nanos, extra_nanos) VALUES (?1, 0, ?2)
                         ON CONFLICT(key) DO UPDATE SET extra_nanos = excluded.extra_nanos",
                    params![e.scope, total],
                )?;
            }
            exec(&tx, "UPDATE escalations SET state = ?1, resolved_by = ?2, resolved_ms = ?3, added_nanos = ?4, reason = ?5 WHERE id = ?6", params![state.as_str(), by, now_ms, added, reason, id],
            )?;
            tx.commit().map_err(unavailable)?;
            Ok(Escalation {
                state,
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
