//! WAL soak: the embedded store driven as fast as it goes (closed loop,
//! reserve + settle pairs on one budget scope from 16 clients), with the
//! write-ahead log's size sampled every 10 ms.
//!
//! It prints, for the store as `serve` runs it (the WAL reset past
//! `--wal-limit-mib`, 64 by default):
//! - pairs a second and the WAL's size, every 5 s;
//! - the WAL's peak over the run, its size at the end of the load, after
//!   2 s idle, and after the shutdown sync.
//!
//! With `--compare S`, it then alternates S-second rounds of the bounded
//! store and of a store that never resets its WAL (how it ran before the
//! bound), each on a fresh folder, and prints the throughput ratio: the cost
//! of keeping the WAL bounded, measured in one run.
//!
//! ```sh
//! cargo bench --bench wal_soak                      # 60 s
//! cargo bench --bench wal_soak -- --seconds 300 --compare 5
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::store::sqlite::{Options, SqliteStore};
use switchyard::store::{BudgetStore, NewReservation, Reserved, ScopeCharge, Usage};

const CLIENTS: usize = 16;
const MIB: f64 = 1024.0 * 1024.0;

struct Args {
    seconds: u64,
    wal_limit_mib: u64,
    compare: Option<u64>,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 60,
        wal_limit_mib: 64,
        compare: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a whole number"))
        };
        match flag.as_str() {
            "--seconds" => a.seconds = num("--seconds"),
            "--wal-limit-mib" => a.wal_limit_mib = num("--wal-limit-mib"),
            "--compare" => a.compare = Some(num("--compare")),
            // cargo bench passes --bench to every harness-less bench.
            "--bench" => {}
            other => panic!("unknown flag {other}; see the file's header"),
        }
    }
    a
}

fn reservation(id: String) -> NewReservation {
    NewReservation {
        decision_id: id,
        workflow: "soak".into(),
        outcome_id: "ticket-1".into(),
        model: "m".into(),
        deferrable: false,
        amount_nanos: 1_000,
        scopes: vec![ScopeCharge {
            key: "soak|day|2026-12-01@UTC".into(),
            limit_nanos: i64::MAX / 4,
        }],
        now_ms: 0,
        expires_ms: i64::MAX / 4,
        downgraded: false,
        labels: String::new(),
        caller: "agent".into(),
        prices: Default::default(),
        tier: 0,
        snapshot: Vec::new(),
    }
}

/// Drives `store` for `run`, calling `sample` every 10 ms with the pairs so
/// far; returns the pairs done.
async fn drive(store: Arc<SqliteStore>, run: Duration, mut sample: impl FnMut(u64, u64)) -> u64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (store, done, stop) = (store.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("soak-{c}-{i}");
                    assert_eq!(
                        store.reserve(&reservation(id.clone())).await.expect("reserve"),
                        Reserved::Ok
                    );
                    store.settle(&id, 900, &Usage::default(), 1).await.expect("settle");
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    let started = Instant::now();
    while started.elapsed() < run {
        tokio::time::sleep(Duration::from_millis(10)).await;
        sample(done.load(Ordering::Relaxed), store.wal_bytes());
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("client");
    }
    done.load(Ordering::Relaxed)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let limit = a.wal_limit_mib * 1024 * 1024;
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(SqliteStore::open_with(dir.path(), Options { wal_limit_bytes: limit }).expect("open"));
    println!(
        "WAL soak: {CLIENTS} clients, reserve + settle pairs, {} s, WAL limit {} MiB",
        a.seconds, a.wal_limit_mib
    );
    let (mut peak, mut last_print, mut last_pairs) = (0u64, Instant::now(), 0u64);
    let started = Instant::now();
    let pairs = drive(store.clone(), Duration::from_secs(a.seconds), |pairs, wal| {
        peak = peak.max(wal);
        if last_print.elapsed() >= Duration::from_secs(5) {
            let rate = (pairs - last_pairs) as f64 / last_print.elapsed().as_secs_f64();
            println!(
                "  t={:>4.0}s  {rate:>8.0} pairs/s  WAL {:>7.1} MiB  peak {:>7.1} MiB",
                started.elapsed().as_secs_f64(),
                wal as f64 / MIB,
                peak as f64 / MIB
            );
            (last_print, last_pairs) = (Instant::now(), pairs);
        }
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    let end = store.wal_bytes();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = store.wal_bytes();
    store.sync().await.expect("sync");
    let after_sync = store.wal_bytes();
    let db = std::fs::metadata(dir.path().join("budget.sqlite3")).map_or(0, |m| m.len());
    println!(
        "pairs {pairs} ({:.0}/s)  WAL peak {:.1} MiB, at end of load {:.1} MiB, after 2 s idle {:.1} MiB, after shutdown sync {:.1} MiB; database {:.1} MiB",
        pairs as f64 / secs,
        peak as f64 / MIB,
        end as f64 / MIB,
        idle as f64 / MIB,
        after_sync as f64 / MIB,
        db as f64 / MIB
    );
    drop(store);

    let Some(round) = a.compare else { return };
    // The cost of the bound: alternating rounds, bounded and never reset.
    let (mut bounded, mut unbounded) = (Vec::new(), Vec::new());
    for i in 0..4 {
        for reset in [true, false] {
            let dir = tempfile::tempdir().expect("tmp");
            let wal_limit_bytes = if reset { limit } else { u64::MAX / 2 };
            let store = Arc::new(SqliteStore::open_with(dir.path(), Options { wal_limit_bytes }).expect("open"));
            let mut peak = 0;
            let t = Instant::now();
            let n = drive(store.clone(), Duration::from_secs(round), |_, wal| peak = peak.max(wal)).await;
            let rate = n as f64 / t.elapsed().as_secs_f64();
            println!(
                "  round {i} {:<9} {rate:>8.0} pairs/s  WAL peak {:>8.1} MiB",
                if reset { "bounded" } else { "unbounded" },
                peak as f64 / MIB
            );
            if reset { &mut bounded } else { &mut unbounded }.push(rate);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "bounded ÷ unbounded throughput: {:.3} (means {:.0} and {:.0} pairs/s over 4 alternating rounds of {round} s)",
        mean(&bounded) / mean(&unbounded),
        mean(&bounded),
        mean(&unbounded)
    );
}
