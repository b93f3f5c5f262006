//! What the embedded store's decision row costs per Route, against one row
//! per batch of decisions: the measurement behind docs/benchmarks.md's
//! "the decision row" (run under callgrind, two sizes, and take the
//! difference per decision).
//!
//! The schema is the store's own: a real `SqliteStore` creates it (with its
//! migrations) in a temporary folder first. Each commit holds 14 decisions,
//! as the store thread's batches do at 4 Routes in flight. Decisions are of
//! a workflow without a budget (`scopes` empty), as `route-repeated-1k`'s.
//!
//! usage: decision_row row|batch|narrow DECISIONS
//!   row     one `reservations` row a decision, as `serve` writes it today
//!   batch   one row a commit, holding every decision's fields encoded
//!   narrow  the row without its what-if snapshot, the snapshots of a
//!           commit in one row of their own

use rusqlite::{params, Connection};

const PER_COMMIT: usize = 14;
/// Every run builds this many decisions' fields up front, whatever it
/// writes, so that the difference between two runs is the writing alone.
const PREPARED: usize = 28_000;

const ROW: &str = "INSERT INTO reservations (decision_id, workflow, outcome_id, model, is_deferrable, amount_nanos,
    scopes, created_ms, expires_ms, state, downgraded, labels, terms, snapshot, label_set, owner)
    VALUES (?1, 'general', ?2, 'gpt-5-nano', 0, ?3, '', ?4, ?5, 'reserved', 0, '', ?6, ?7, NULL, NULL)";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("row", String::as_str).to_string();
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(14_000).min(PREPARED);
    let dir = tempfile::tempdir().expect("a temporary folder");
    drop(switchyard::store::sqlite::SqliteStore::open(dir.path()).expect("the store's schema"));
    let conn = Connection::open(dir.path().join("budget.sqlite3")).expect("the store's file");
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         CREATE TABLE decision_batches (id INTEGER PRIMARY KEY, first_id TEXT NOT NULL, body BLOB NOT NULL);
         CREATE INDEX decision_batches_first ON decision_batches (first_id);",
    )
    .expect("the batch table");

    // A logged decision's sizes: a 36-byte ID, a 40-byte terms column and
    // a 546-byte what-if snapshot, as `route-repeated-1k` writes them.
    let ids: Vec<String> = (0..PREPARED).map(|_| switchyard::store::new_decision_id()).collect();
    let outcomes: Vec<String> = (0..PREPARED).map(|i| format!("o-{i}")).collect();
    let terms = vec![7u8; 40];
    let snapshot: Vec<u8> = (0..546u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let now = 1_800_000_000_000i64;

    for start in (0..n).step_by(PER_COMMIT) {
        let batch = start..(start + PER_COMMIT).min(n);
        let tx = conn.unchecked_transaction().expect("a transaction");
        match mode.as_str() {
            "row" | "narrow" => {
                let mut insert = tx.prepare_cached(ROW).expect("the row's insert");
                let mut body = Vec::new();
                for i in batch.clone() {
                    let kept: Option<&[u8]> = (mode == "row").then_some(&snapshot[..]);
                    let t = now + i as i64;
                    insert
                        .execute(params![
                            ids[i],
                            outcomes[i],
                            1234 + i as i64,
                            t,
                            t + 600_000,
                            terms,
                            kept
                        ])
                        .expect("a row");
                    if mode == "narrow" {
                        body.extend_from_slice(ids[i].as_bytes());
                        body.extend_from_slice(&snapshot);
                    }
                }
                if mode == "narrow" {
                    tx.execute(
                        "INSERT INTO decision_batches (first_id, body) VALUES (?1, ?2)",
                        params![ids[batch.start], body],
                    )
                    .expect("the snapshots' row");
                }
            }
            "batch" => {
                let mut body = Vec::with_capacity(700 * PER_COMMIT);
                for i in batch.clone() {
                    body.extend_from_slice(ids[i].as_bytes());
                    body.extend_from_slice(b"general");
                    body.extend_from_slice(outcomes[i].as_bytes());
                    body.extend_from_slice(b"gpt-5-nano");
                    body.extend_from_slice(&(1234 + i as u64).to_le_bytes());
                    body.extend_from_slice(&(now + i as i64).to_le_bytes());
                    body.extend_from_slice(&terms);
                    body.extend_from_slice(&snapshot);
                }
                tx.execute(
                    "INSERT INTO decision_batches (first_id, body) VALUES (?1, ?2)",
                    params![ids[batch.start], body],
                )
                .expect("the batch's row");
            }
            other => panic!("unknown mode {other}: row, batch or narrow"),
        }
        tx.commit().expect("a commit");
    }
    eprintln!("{mode}: {n} decisions written");
}
