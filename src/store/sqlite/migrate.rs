//! What an older store is brought up to when it opens: columns added in
//! place, money an older build could leave unreadable repaired, duplicate
//! pending escalations superseded.

use rusqlite::Connection;

use super::{unavailable, StoreError};

/// Columns added to `reservations` after its first release, with their
/// definitions: added in place to a store an older build created.
const ADDED_COLUMNS: [(&str, &str); 6] = [
    ("downgraded", "INTEGER NOT NULL DEFAULT 0"),
    ("labels", "TEXT NOT NULL DEFAULT ''"),
    // Who routed the call, and the prices and tier it was routed at, packed
    // as one `Terms` blob (NULL in rows older than the column: those are
    // priced by the rules in force).
    ("terms", "BLOB"),
    // The decision as `whatif` needs it (an encoded Snapshot), NULL once
    // past the decision log's retention.
    ("snapshot", "BLOB"),
    // The row's labels as the ID of their one copy in `label_sets` (rows
    // older than the column keep their text in `labels`).
    ("label_set", "INTEGER"),
    // The keyed identity that routed a call under an outcome (NULL without
    // an outcome, or for `local` callers, who are admins): RecordOutcome
    // asks who routed under it, through `reservations_owner`.
    ("owner", "TEXT"),
];

/// Who routed under an outcome. Only the rows that carry an owner pay for
/// it: with no API keys every caller is `local`, and Route writes none.
const OWNER_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS reservations_owner ON reservations (workflow, outcome_id, owner) WHERE owner IS NOT NULL";

/// One pending escalation per scope, enforced by the schema as well as by
/// [`escalate_job`]. Created after [`dedup_pending`] has cleaned up stores
/// an older build let hold several.
const ONE_PENDING: &str =
    "CREATE UNIQUE INDEX IF NOT EXISTS escalations_one_pending ON escalations (scope) WHERE state = 'pending'";

pub(super) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    // An index an earlier build made: every Route paid for it; the ledger
    // reads by the time-ordered primary key instead.
    conn.execute_batch("DROP INDEX IF EXISTS reservations_created")
        .map_err(unavailable)?;
    // Indexed every decision, though only those holding a reservation on a
    // budget ever expire; `reservations_held` indexes just those.
    conn.execute_batch("DROP INDEX IF EXISTS reservations_open")
        .map_err(unavailable)?;
    let have: Vec<String> = {
        let mut st = conn
            .prepare("SELECT name FROM pragma_table_info('reservations')")
            .map_err(unavailable)?;
        let rows = st.query_map([], |r| r.get(0)).map_err(unavailable)?;
        rows.collect::<Result<_, _>>().map_err(unavailable)?
    };
    for (name, def) in ADDED_COLUMNS {
        if !have.iter().any(|h| h == name) {
            conn.execute_batch(&format!("ALTER TABLE reservations ADD COLUMN {name} {def}"))
                .map_err(unavailable)?;
        }
    }
    let outcome_columns: Vec<String> = {
        let mut st = conn
            .prepare("SELECT name FROM pragma_table_info('outcome_events')")
            .map_err(unavailable)?;
        let rows = st.query_map([], |r| r.get(0)).map_err(unavailable)?;
        rows.collect::<Result<_, _>>().map_err(unavailable)?
    };
    if !outcome_columns.iter().any(|h| h == "recorded_by") {
        conn.execute_batch("ALTER TABLE outcome_events ADD COLUMN recorded_by TEXT NOT NULL DEFAULT ''")
            .map_err(unavailable)?;
    }
    if have.iter().any(|h| h == "price_input") {
        carry_terms(conn)?;
    }
    repair_money(conn)?;
    dedup_pending(conn)?;
    conn.execute_batch(ONE_PENDING).map_err(unavailable)?;
    conn.execute_batch(OWNER_INDEX).map_err(unavailable)?;
    Ok(())
}

/// A store from the build that kept the caller, the prices and the tier in
/// columns of their own: reservations still open are given the same terms as
/// one `terms` blob, so that usage reported after the upgrade is charged at
/// the prices it was routed at and only its caller may report it. Settled
/// rows are left as they are: nothing reads their terms again.
fn carry_terms(conn: &Connection) -> Result<(), StoreError> {
    let rows: Vec<(i64, crate::rules::Prices, u8, String)> = {
        let mut st = conn
            .prepare(
                "SELECT rowid, price_input, price_cached, price_output, batch_bp, tier, caller FROM reservations
                 WHERE terms IS NULL AND state = 'reserved' AND price_input IS NOT NULL",
            )
            .map_err(unavailable)?;
        let rows = st
            .query_map([], |r| {
                let input: i64 = r.get(1)?;
                let prices = crate::rules::Prices {
                    input_nanos_per_mtok: input,
                    cache_write_input_nanos_per_mtok: input,
                    cached_input_nanos_per_mtok: r.get::<_, Option<i64>>(2)?.unwrap_or_default(),
                    output_nanos_per_mtok: r.get::<_, Option<i64>>(3)?.unwrap_or_default(),
                    batch_discount_bp: r.get::<_, Option<u32>>(4)?.unwrap_or_default(),
                };
                Ok((
                    r.get(0)?,
                    prices,
                    r.get::<_, Option<u8>>(5)?.unwrap_or_default(),
                    r.get(6)?,
                ))
            })
            .map_err(unavailable)?;
        rows.collect::<Result<_, _>>().map_err(unavailable)?
    };
    if rows.is_empty() {
        return Ok(());
    }
    let tx = conn.unchecked_transaction().map_err(unavailable)?;
    {
        let mut update = tx
            .prepare("UPDATE reservations SET terms = ?1 WHERE rowid = ?2")
            .map_err(unavailable)?;
        for (rowid, prices, tier, caller) in &rows {
            super::budgets::Terms::with_encoded(prices, *tier, caller, |terms| {
                update.execute(rusqlite::params![terms, rowid])
            })
            .map_err(unavailable)?;
        }
    }
    tx.commit().map_err(unavailable)?;
    tracing::info!(
        reservations = rows.len(),
        "budget store: open reservations carried over to this build's terms column"
    );
    Ok(())
}

/// Money columns an older build could leave unreadable: SQLite turns an
/// integer sum that overflows into a REAL, and one such approval made every
/// read of the scope fail. Each is brought back into range (approvals to the
/// cap, counters saturated at the top of i64), loudly.
fn repair_money(conn: &Connection) -> Result<(), StoreError> {
    let cap = crate::money::MAX_SCOPE_EXTRA_NANOS;
    let fixes = [
        (
            "approved additions",
            "UPDATE scopes SET extra_nanos = ?1 WHERE typeof(extra_nanos) != 'integer' OR extra_nanos > ?1",
        ),
        (
            "limits",
            "UPDATE scopes SET limit_nanos = MIN(CAST(limit_nanos AS INTEGER), ?1) WHERE typeof(limit_nanos) != 'integer' OR limit_nanos > ?1",
        ),
        (
            "spend",
            "UPDATE scopes SET spent_nanos = CAST(spent_nanos AS INTEGER) WHERE typeof(spent_nanos) != 'integer'",
        ),
        (
            "reservations",
            "UPDATE scopes SET reserved_nanos = CAST(reserved_nanos AS INTEGER) WHERE typeof(reserved_nanos) != 'integer'",
        ),
    ];
    for (what, sql) in fixes {
        let n = if sql.contains("?1") {
            conn.execute(sql, [cap])
        } else {
            conn.execute(sql, [])
        }
        .map_err(unavailable)?;
        if n > 0 {
            tracing::error!(
                scopes = n,
                column = what,
                "budget store: repaired money columns an older build left out of range (see docs/budgets.md)"
            );
        }
    }
    Ok(())
}

/// Keeps the newest pending escalation of each scope and denies the older
/// duplicates an older build could create under concurrent Routes.
fn dedup_pending(conn: &Connection) -> Result<(), StoreError> {
    let n = conn
        .execute(
            "UPDATE escalations SET state = 'denied', resolved_by = '-', reason = 'superseded: a scope keeps one pending escalation'
             WHERE state = 'pending' AND rowid NOT IN (
                 SELECT rowid FROM escalations AS e WHERE e.state = 'pending' AND NOT EXISTS (
                     SELECT 1 FROM escalations AS n WHERE n.scope = e.scope AND n.state = 'pending'
                       AND (n.created_ms > e.created_ms OR (n.created_ms = e.created_ms AND n.rowid > e.rowid))))",
            [],
        )
        .map_err(unavailable)?;
    if n > 0 {
        tracing::warn!(
            escalations = n,
            "budget store: older duplicate pending escalations were superseded by the newest of their scope"
        );
    }
    Ok(())
}
