//! Scope counters and reservations ([`BudgetStore`]).

use rusqlite::{params, Connection, OptionalExtension};

use super::{exec, known, unavailable, Msg, Savepoint, SqliteStore};
use crate::rules::Prices;
use crate::store::{
    BudgetStore, NewReservation, ReservationRecord, ReservationState, Reserved, ScopeState, Settled, StoreError,
    StoreHealth, Usage,
};

/// Who routed a reservation, and the prices and tier it was routed at, as
/// one blob column: three little-endian i64 prices per million tokens
/// (input, cached input, output), the batch discount as a u32, the tier as a
/// byte, then the caller's name. One column binds and stores for a fraction
/// of what six columns cost on every Route.
pub(super) struct Terms;

impl Terms {
    const FIXED: usize = 8 * 3 + 4 + 1;

    /// Set in the tier byte when the cache-write price follows it: rows
    /// written before that price existed lack both (tiers stay below 128).
    const HAS_CACHE_WRITE: u8 = 0x80;

    /// The fixed part with the cache-write price.
    const FIXED_V2: usize = Self::FIXED + 8;

    /// Callers' names up to this long are encoded on the stack.
    const STACK: usize = 128;

    /// Calls `f` with the encoding, which lives only for the call: Route
    /// encodes on every reservation, and a name that fits needs no heap.
    pub(super) fn with_encoded<R>(p: &Prices, tier: u8, caller: &str, f: impl FnOnce(&[u8]) -> R) -> R {
        let len = Self::FIXED_V2 + caller.len();
        let fill = |b: &mut [u8]| {
            b[0..8].copy_from_slice(&p.input_nanos_per_mtok.to_le_bytes());
            b[8..16].copy_from_slice(&p.cached_input_nanos_per_mtok.to_le_bytes());
            b[16..24].copy_from_slice(&p.output_nanos_per_mtok.to_le_bytes());
            b[24..28].copy_from_slice(&p.batch_discount_bp.to_le_bytes());
            b[28] = (tier & !Self::HAS_CACHE_WRITE) | Self::HAS_CACHE_WRITE;
            b[29..37].copy_from_slice(&p.cache_write_input_nanos_per_mtok.to_le_bytes());
            b[Self::FIXED_V2..].copy_from_slice(caller.as_bytes());
        };
        if len <= Self::STACK {
            let mut b = [0u8; Self::STACK];
            fill(&mut b[..len]);
            f(&b[..len])
        } else {
            let mut b = vec![0u8; len];
            fill(&mut b);
            f(&b)
        }
    }

    /// `None` for a blob too short or a caller that is not UTF-8: a row this
    /// build cannot read is priced by the rules in force, as a row older than
    /// the column is, and only an admin may report its usage.
    pub(super) fn decode(b: &[u8]) -> Option<(Prices, u8, String)> {
        let v2 = b.get(28).is_some_and(|t| t & Self::HAS_CACHE_WRITE != 0);
        let (fixed, caller) = b.split_at_checked(if v2 { Self::FIXED_V2 } else { Self::FIXED })?;
        let i64_at = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&fixed[i..i + 8]);
            i64::from_le_bytes(w)
        };
        let mut bp = [0u8; 4];
        bp.copy_from_slice(&fixed[24..28]);
        let input = i64_at(0);
        Some((
            Prices {
                input_nanos_per_mtok: input,
                cached_input_nanos_per_mtok: i64_at(8),
                cache_write_input_nanos_per_mtok: if v2 { i64_at(29) } else { input },
                output_nanos_per_mtok: i64_at(16),
                batch_discount_bp: u32::from_le_bytes(bp),
            },
            fixed[28] & !Self::HAS_CACHE_WRITE,
            String::from_utf8(caller.to_vec()).ok()?,
        ))
    }
}

/// Scope keys are joined with a byte that cannot appear in a key we build.
const SCOPE_SEP: char = '\u{1f}';

/// The reservation as a job for the store thread.
fn reserve_job(r: NewReservation) -> impl FnOnce(&mut Connection) -> Result<Reserved, StoreError> + Send + 'static {
    move |conn: &mut Connection| {
        if r.scopes.is_empty() {
            // No limit applies: one INSERT, atomic on its own, needs no
            // savepoint (this is every Route of a workflow without a budget).
            insert_reservation(conn, &r, "")?;
            return Ok(Reserved::Ok);
        }
        if r.amount_nanos < 0 {
            return Err(StoreError::InvalidAmount(format!(
                "a reservation of {} nano-USD is negative",
                r.amount_nanos
            )));
        }
        let tx = Savepoint::new(conn)?;
        for s in &r.scopes {
            exec(
                &tx,
                "INSERT INTO scopes (key, limit_nanos) VALUES (?1, ?2)
                     ON CONFLICT(key) DO UPDATE SET limit_nanos = excluded.limit_nanos",
                params![s.key, s.limit_nanos],
            )?;
            let state = scope_state(&tx, &s.key)?;
            if !state.fits(r.amount_nanos) {
                // Dropping the savepoint rolls back the limit upserts too.
                return Ok(Reserved::OverLimit {
                    scope: s.key.clone(),
                    state,
                });
            }
        }
        // Each scope fits the amount, so reserved + amount stays below its
        // limit (at most about 2e18): the sum cannot overflow.
        for s in &r.scopes {
            exec(
                &tx,
                "UPDATE scopes SET reserved_nanos = reserved_nanos + ?1 WHERE key = ?2",
                params![r.amount_nanos, s.key],
            )?;
        }
        let keys: Vec<&str> = r.scopes.iter().map(|s| s.key.as_str()).collect();
        insert_reservation(&tx, &r, &keys.join(&SCOPE_SEP.to_string()))?;
        tx.commit().map_err(unavailable)?;
        Ok(Reserved::Ok)
    }
}

/// The most reservations one sweep clears the snapshot of.
const TRIM_BATCH: i64 = 10_000;

/// The reservation's row, `scopes` joined by [`SCOPE_SEP`].
pub(super) const INSERT_RESERVATION: &str =
    "INSERT INTO reservations (decision_id, workflow, outcome_id, model, is_deferrable, amount_nanos, scopes,
                               created_ms, expires_ms, state, downgraded, labels, terms, snapshot, label_set, owner)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'reserved', ?10, '', ?11, ?12, ?13, ?14)";

fn insert_reservation(conn: &Connection, r: &NewReservation, scopes: &str) -> Result<(), StoreError> {
    let mut insert = conn.prepare_cached(INSERT_RESERVATION).map_err(unavailable)?;
    bind_reservation(conn, &mut insert, r, scopes)
}

/// The ID of a label set's one stored copy, stored now if it is new: a
/// decision row holds the ID, not the labels' text.
fn label_set(conn: &Connection, labels: &str) -> Result<Option<i64>, StoreError> {
    if labels.is_empty() {
        return Ok(None);
    }
    conn.prepare_cached("INSERT OR IGNORE INTO label_sets (text) VALUES (?1)")
        .and_then(|mut st| st.execute([labels]))
        .map_err(unavailable)?;
    conn.prepare_cached("SELECT id FROM label_sets WHERE text = ?1")
        .and_then(|mut st| st.query_row([labels], |r| r.get(0)))
        .map(Some)
        .map_err(unavailable)
}

pub(super) fn bind_reservation(
    conn: &Connection,
    insert: &mut rusqlite::Statement<'_>,
    r: &NewReservation,
    scopes: &str,
) -> Result<(), StoreError> {
    let set = label_set(conn, &r.labels)?;
    Terms::with_encoded(&r.prices, r.tier, &r.caller, |terms| {
        insert.execute(params![
            r.decision_id,
            r.workflow,
            r.outcome_id,
            r.model,
            r.deferrable,
            r.amount_nanos,
            scopes,
            r.now_ms,
            r.expires_ms,
            r.downgraded,
            terms,
            (!r.snapshot.is_empty()).then_some(r.snapshot.as_slice()),
            set,
            crate::store::outcome_owner(r)
        ])
    })
    .map(drop)
    .map_err(unavailable)
}

pub(super) fn scope_state(tx: &Connection, key: &str) -> Result<ScopeState, StoreError> {
    // The limit and the additions are summed here, not in SQL, where an
    // overflowing sum would turn into a REAL.
    let mut st = tx
        .prepare_cached("SELECT limit_nanos, extra_nanos, spent_nanos, reserved_nanos FROM scopes WHERE key = ?1")
        .map_err(unavailable)?;
    st.query_row([key], |r| {
        let extra: i64 = r.get(1)?;
        Ok(ScopeState {
            limit_nanos: r.get::<_, i64>(0)?.saturating_add(extra),
            spent_nanos: r.get(2)?,
            reserved_nanos: r.get(3)?,
            extra_nanos: extra,
        })
    })
    .optional()
    .map_err(unavailable)
    .map(Option::unwrap_or_default)
}

#[async_trait::async_trait]
impl BudgetStore for SqliteStore {
    async fn reserve(&self, r: &NewReservation) -> Result<Reserved, StoreError> {
        self.with(reserve_job(r.clone())).await
    }
    fn record_detached(&self, r: NewReservation) {
        debug_assert!(
            r.scopes.is_empty(),
            "a decision with a budget is reserved, not recorded"
        );
        // Queued now, before any later job; nobody awaits the answer, so the
        // store thread logs a failure. Only the first record into an empty
        // queue wakes it: the rest ride along without a syscall.
        let first = {
            let mut records = self.records.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            records.push(r);
            records.len() == 1
        };
        if first && self.send(Msg::Records).is_err() {
            tracing::warn!("recording a decision without a budget failed: the store thread has stopped");
        }
    }
    async fn sync(&self) -> Result<(), StoreError> {
        self.with(|_| Ok(())).await?;
        // At shutdown the WAL is emptied into the database, so a stopped
        // sidecar leaves a zero-length WAL behind.
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Msg::Checkpoint(tx))?;
        match rx.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unavailable(format!("resetting the WAL: {e}"))),
            Err(_) => Err(unavailable("the store thread dropped a request")),
        }
    }
    fn health(&self) -> StoreHealth {
        StoreHealth {
            unavailable_total: self.health.unavailable_total.load(std::sync::atomic::Ordering::Relaxed),
            failing: self.health.failing().clone(),
            ..Default::default()
        }
    }
    async fn settle(&self, decision_id: &str, cost: i64, usage: &Usage, now_ms: i64) -> Result<Settled, StoreError> {
        let (id, usage) = (decision_id.to_string(), *usage);
        if cost < 0 {
            return Err(StoreError::InvalidAmount(format!(
                "a cost of {cost} nano-USD is negative"
            )));
        }
        self.with(move |conn| {
            let tx = Savepoint::new(conn)?;
            let row: Option<(String, i64, String, Option<i64>)> = tx
                .prepare_cached("SELECT state, amount_nanos, scopes, actual_nanos FROM reservations WHERE decision_id = ?1")
                .and_then(|mut st| {
                    st.query_row([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                        .optional()
                })
                .map_err(unavailable)?;
            let Some((state, amount, scopes, actual)) = row else {
                return Err(StoreError::UnknownDecision(id));
            };
            // An expired reservation was already released: charge only the cost.
            let release = match ReservationState::parse(&state) {
                Some(ReservationState::Settled) => {
                    return Ok(Settled::AlreadySettled {
                        cost_nanos: actual.unwrap_or(0),
                    })
                }
                Some(ReservationState::Reserved) => amount,
                Some(ReservationState::Expired) => 0,
                None => return Err(unavailable(format!("reservation {id} is in an unknown state `{state}`"))),
            };
            for key in scopes.split(SCOPE_SEP).filter(|k| !k.is_empty()) {
                // Spend saturates at the top of i64 rather than overflow into
                // a REAL that no later read could take.
                exec(
                    &tx,
                    "UPDATE scopes SET reserved_nanos = reserved_nanos - ?1,
                         spent_nanos = CASE WHEN spent_nanos > 9223372036854775807 - ?2 THEN 9223372036854775807
                                            ELSE spent_nanos + ?2 END
                     WHERE key = ?3",
                    params![release, cost, key],
                )?;
            }
            exec(&tx, "UPDATE reservations SET state = 'settled', actual_nanos = ?1, input_tokens = ?2, cached_input_tokens = ?3,
                        output_tokens = ?4, failed = ?5, settled_ms = ?6 WHERE decision_id = ?7", params![
                    cost,
                    usage.input_tokens as i64,
                    usage.cached_input_tokens as i64,
                    usage.output_tokens as i64,
                    usage.failed,
                    now_ms,
                    id
                ],
            )?;
            tx.commit().map_err(unavailable)?;
            Ok(Settled::Charged { cost_nanos: cost })
        })
        .await
    }
    async fn expire(&self, now_ms: i64) -> Result<u64, StoreError> {
        let retention_ms = self.decision_retention_ms.load(std::sync::atomic::Ordering::Relaxed);
        let trimmed = self.snapshots_trimmed_to.clone();
        self.with(move |conn| {
            let tx = Savepoint::new(conn)?;
            let expired: Vec<(String, i64, String)> = {
                let mut stmt = tx
                    .prepare(
                        "SELECT decision_id, amount_nanos, scopes FROM reservations
                         WHERE state = 'reserved' AND scopes != '' AND expires_ms <= ?1",
                    )
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .map_err(unavailable)?;
                rows.collect::<Result<_, _>>().map_err(unavailable)?
            };
            for (id, amount, scopes) in &expired {
                for key in scopes.split(SCOPE_SEP).filter(|k| !k.is_empty()) {
                    exec(
                        &tx,
                        "UPDATE scopes SET reserved_nanos = reserved_nanos - ?1 WHERE key = ?2",
                        params![amount, key],
                    )?;
                }
                exec(
                    &tx,
                    "UPDATE reservations SET state = 'expired' WHERE decision_id = ?1",
                    [id],
                )?;
            }
            // The decision log's retention: snapshots older than it go, by
            // the time-ordered primary key, from where the last sweep
            // stopped and at most a batch a sweep, so a store opened with
            // months to clear never holds Routes up for long.
            let until = super::ledger::uuid_v7_floor(now_ms.saturating_sub(retention_ms));
            let from = trimmed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if from < until {
                let last: Option<String> = tx
                    .query_row(
                        "SELECT max(decision_id) FROM (SELECT decision_id FROM reservations
                         WHERE decision_id >= ?1 AND decision_id < ?2 ORDER BY decision_id LIMIT ?3)",
                        params![from, until, TRIM_BATCH],
                        |r| r.get(0),
                    )
                    .map_err(unavailable)?;
                let next = match last {
                    Some(last) => {
                        exec(
                            &tx,
                            "UPDATE reservations SET snapshot = NULL
                             WHERE decision_id >= ?1 AND decision_id <= ?2 AND snapshot IS NOT NULL",
                            params![from, last],
                        )?;
                        // Past the last row cleared (IDs are unique).
                        format!("{last}\u{0}")
                    }
                    None => until,
                };
                *trimmed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = next;
            }
            tx.commit().map_err(unavailable)?;
            Ok(expired.len() as u64)
        })
        .await
    }
    async fn scope(&self, key: &str) -> Result<ScopeState, StoreError> {
        let key = key.to_string();
        self.with(move |conn| {
            let tx = Savepoint::new(conn)?;
            scope_state(&tx, &key)
        })
        .await
    }
    async fn reservation(&self, decision_id: &str) -> Result<Option<ReservationRecord>, StoreError> {
        let id = decision_id.to_string();
        self.with(move |conn| {
            let mut st = conn
                .prepare_cached(
                    "SELECT decision_id, workflow, outcome_id, model, is_deferrable, amount_nanos, state, actual_nanos,
                            terms
                     FROM reservations WHERE decision_id = ?1",
                )
                .map_err(unavailable)?;
            st.query_row([&id], |r| {
                let (prices, tier, caller) = match r.get_ref(8)?.as_blob_or_null()?.and_then(Terms::decode) {
                    Some((p, t, c)) => (Some(p), Some(t), c),
                    None => (None, None, String::new()),
                };
                Ok(ReservationRecord {
                    decision_id: r.get(0)?,
                    workflow: r.get(1)?,
                    outcome_id: r.get(2)?,
                    model: r.get(3)?,
                    deferrable: r.get(4)?,
                    amount_nanos: r.get(5)?,
                    state: known(6, ReservationState::parse, r.get(6)?)?,
                    actual_nanos: r.get(7)?,
                    caller,
                    prices,
                    tier,
                })
            })
            .optional()
            .map_err(unavailable)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_round_trip_and_refuse_what_they_cannot_read() {
        let p = Prices {
            input_nanos_per_mtok: i64::MAX,
            cached_input_nanos_per_mtok: 0,
            cache_write_input_nanos_per_mtok: 3_750_000_000,
            output_nanos_per_mtok: 15_000_000_000,
            batch_discount_bp: 5000,
        };
        let b = Terms::with_encoded(&p, 7, "agent-é", <[u8]>::to_vec);
        assert_eq!(Terms::decode(&b), Some((p, 7, "agent-é".to_string())));
        let empty = Terms::with_encoded(&p, 0, "", <[u8]>::to_vec);
        assert_eq!(Terms::decode(&empty), Some((p, 0, String::new())));
        // A name too long for the stack goes through the heap, the same.
        let long = "a".repeat(Terms::STACK);
        let b_long = Terms::with_encoded(&p, 1, &long, <[u8]>::to_vec);
        assert_eq!(Terms::decode(&b_long), Some((p, 1, long)));
        assert_eq!(Terms::decode(&b[..28]), None);
        // A caller cut inside a character is not a caller.
        assert_eq!(Terms::decode(&b[..b.len() - 1]), None);
        // A row from before the cache-write price: 29 fixed bytes, a tier
        // below 128, then the caller. Its cache writes are priced as input.
        let mut old = b[..28].to_vec();
        old.push(3);
        old.extend_from_slice(b"agent");
        let read = Prices {
            cache_write_input_nanos_per_mtok: i64::MAX,
            ..p
        };
        assert_eq!(Terms::decode(&old), Some((read, 3, "agent".to_string())));
    }
}
