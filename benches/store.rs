//! Budget store throughput: reserve + settle pairs per second with 16
//! concurrent clients, each pair two committed transactions on one scope
//! shared by every client (the contended case a busy workflow produces).
//!
//! Stores: the embedded SQLite store, and Redis (a `redis-server` started
//! here on a free port, append-only file with `appendfsync everysec`, its
//! usual production setting).
//!
//! Run: `cargo bench --bench store` (bounded: 3 s of load per store).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::store::redis::{RedisConfig, RedisStore};
use switchyard::store::sqlite::SqliteStore;
use switchyard::store::{NewReservation, Reserved, ScopeCharge, SharedStore, Usage};

const CLIENTS: usize = 16;
const RUN: Duration = Duration::from_secs(3);

async fn load(store: SharedStore, name: &str) {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (store, done) = (store.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while start.elapsed() < RUN {
                    let id = format!("bench-{c}-{i}");
                    let r = NewReservation {
                        decision_id: id.clone(),
                        workflow: "bench".into(),
                        outcome_id: format!("o-{c}"),
                        model: "m".into(),
                        deferrable: false,
                        amount_nanos: 1_000,
                        scopes: vec![ScopeCharge {
                            key: "bench|day".into(),
                            limit_nanos: i64::MAX / 4,
                        }],
                        now_ms: 0,
                        expires_ms: i64::MAX / 4,
                        downgraded: false,
                        labels: String::new(),
                        caller: "bench".into(),
                        prices: Default::default(),
                        tier: 0,
                        snapshot: Vec::new(),
                    };
                    assert_eq!(store.reserve(&r).await.expect("reserve"), Reserved::Ok);
                    store.settle(&id, 900, &Usage::default(), 1).await.expect("settle");
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client");
    }
    let secs = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "{name:<10} {:>8.0} reserve+settle/s  ({n} pairs, {CLIENTS} clients, {secs:.1} s)",
        n as f64 / secs
    );
}

#[path = "../tests/common/redis.rs"]
mod redis_server;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("tmp");
    let store: SharedStore = Arc::new(SqliteStore::open(dir.path()).expect("open"));
    load(store, "sqlite").await;

    let server = redis_server::RedisServer::start_with(&["--appendfsync", "everysec"]);
    let store = RedisStore::connect(RedisConfig {
        url: server.url(),
        prefix: "bench".into(),
        timeout: Duration::from_secs(2),
        reservation_ttl_ms: 600_000,
        fail_open_cap_nanos: None,
        journal: dir.path().join("redis-journal.jsonl"),
        accept_fresh: true,
    })
    .await
    .expect("connect");
    store.ping().await.expect("redis answers");
    load(Arc::new(store), "redis").await;
}
