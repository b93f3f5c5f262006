//! A read-only view of the store in a state folder, for `explain` beside a
//! running server: one read-only connection, no store thread, no writes.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use super::budgets::scope_state;
use super::escalations::newest;
use super::{open_read_only, unavailable};
use crate::store::{Escalation, EscalationState, ScopeState, StoreError, StoreView};

pub struct Reader {
    conn: Mutex<Connection>,
}

impl Reader {
    /// The store in `state_dir`, read-only; `None` when there is none yet.
    pub fn open(state_dir: &Path) -> Result<Option<Reader>, StoreError> {
        Ok(open_read_only(state_dir)?.map(|conn| Reader { conn: Mutex::new(conn) }))
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl StoreView for Reader {
    async fn view_scope(&self, key: &str) -> Result<ScopeState, StoreError> {
        scope_state(&self.conn(), key)
    }

    async fn view_escalation(&self, scope: &str) -> Result<Option<Escalation>, StoreError> {
        Ok(newest(&self.conn(), scope)?.filter(|e| e.state != EscalationState::Approved))
    }

    async fn view_learning(
        &self,
        workflow: &str,
        cursor: &str,
        max: usize,
    ) -> Result<crate::store::LearnPage, StoreError> {
        super::learning::since(&self.conn(), workflow, cursor, max)
    }

    async fn view_score_counts(&self, workflow: &str, model: &str) -> Result<Vec<u64>, StoreError> {
        match super::learning::score_counts(&self.conn(), workflow, model) {
            // A store an older build wrote has no histogram yet.
            Err(e) if e.to_string().contains("no such table") => Ok(vec![0; crate::understand::SCORE_BINS]),
            other => other,
        }
    }

    async fn view_rejected_tier(&self, workflow: &str, outcome_id: &str) -> Result<Option<u8>, StoreError> {
        self.conn()
            .query_row(
                "SELECT tier FROM rejections WHERE workflow = ?1 AND outcome_id = ?2",
                params![workflow, outcome_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(unavailable)
    }
}
