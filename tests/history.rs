//! A history checker for the budget core. Many concurrent clients route,
//! settle or abandon calls, and an admin approves or denies the escalations
//! their outcomes' caps raise, while the sidecar is killed with SIGKILL and
//! restarted (and, on Redis, `redis-server` is killed and restarted). Every
//! acknowledged operation is recorded. At the end the store's state must be
//! exactly their fold:
//!
//! - every scope's spend is the sum of the acknowledged settlements charged
//!   to it, each once, and nothing else;
//! - every outcome scope's limit is its cap plus the acknowledged approvals;
//! - every reservation not settled was released (nothing stays reserved);
//! - the ledger holds exactly the acknowledged settlements, at their costs;
//! - every acknowledged denial holds.
//!
//! An operation whose answer was lost in a crash is retried until it is
//! acknowledged (settlements are idempotent by decision ID) or, for a Route,
//! left to expire: unacknowledged, it must leave no trace.

mod common;

#[path = "common/redis.rs"]
mod redis_server;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use redis_server::RedisServer;
use switchyard::grpc::pb;
use switchyard::grpc::pb::router_client::RouterClient;
use switchyard::store::{EscalationState, Store};
use switchyard::testing::{model, RulesBuilder};
use tonic::transport::Channel;
use tonic::Code;

const PER_OUTCOME: i64 = 2_000_000; // $0.002: a few calls each
const OUTCOMES: usize = 24;
const CLIENTS: usize = 12;

fn rules() -> String {
    RulesBuilder::new()
        .model(model("m", 2.0, 8.0, 3))
        .budgeted(
            "h",
            "",
            "limit_usd = 1000.0\nperiod = \"day\"\nper_outcome_usd = 0.002\non_limit = \"escalate\"",
        )
        .build()
}

/// What the clients were told, and so what the store must hold.
#[derive(Default)]
struct History {
    /// decision -> (outcome, acknowledged cost) of every acknowledged settlement.
    settled: HashMap<String, (String, i64)>,
    /// Routed calls whose usage was never reported (left to expire).
    abandoned: HashSet<String>,
    /// escalation -> (outcome, nano-USD added) of every acknowledged approval.
    approved: HashMap<String, (String, i64)>,
    /// Escalations whose denial was acknowledged.
    denied: HashSet<String>,
    /// Outcomes an acknowledged denial closed.
    closed: HashSet<String>,
    /// Routes that got no answer (a crash): whatever they reserved must expire.
    unanswered: u64,
    /// Settlements that had to be retried before they were acknowledged.
    retried: u64,
}

fn route_request(client: usize, i: usize) -> pb::RouteRequest {
    pb::RouteRequest {
        outcome_id: format!("o-{}", (client * 7 + i) % OUTCOMES),
        max_output_tokens: 100,
        ..request(
            "h",
            "Summarise the incident in three bullets and name an owner for each.",
        )
    }
}

async fn connect(addr: &str) -> RouterClient<Channel> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    RouterClient::new(ch)
}

/// Settles `r` until the settlement is acknowledged, across crashes; also
/// says whether it took more than one try.
async fn settle(c: &mut RouterClient<Channel>, r: &pb::RouteResponse, output: u64) -> (i64, bool) {
    for attempt in 0.. {
        let report = usage_for(r, output);
        match c.report_usage(report).await {
            Ok(ack) => return (ack.into_inner().cost_nanousd, attempt > 0),
            Err(e)
                if matches!(
                    e.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("a settlement was refused: {e:?}"),
        }
    }
    unreachable!("the loop returns")
}

async fn client_loop(addr: String, n: usize, done: Arc<AtomicBool>, history: Arc<Mutex<History>>) {
    let mut c = connect(&addr).await;
    let mut i = 0;
    while !done.load(Ordering::Relaxed) {
        i += 1;
        // Paced, so that the run spans the crashes.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let req = route_request(n, i);
        let outcome = req.outcome_id.clone();
        let r = match c.route(req).await {
            Ok(r) => r.into_inner(),
            // Unacknowledged: whatever it reserved must expire.
            Err(_) => {
                history.lock().expect("history").unanswered += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if r.status != pb::RouteStatus::Routed as i32 {
            continue;
        }
        if (n + i).is_multiple_of(5) {
            history.lock().expect("history").abandoned.insert(r.decision_id);
            continue;
        }
        let (cost, retried) = settle(&mut c, &r, 20 + (n * 13 + i * 7) as u64 % 80).await;
        let mut h = history.lock().expect("history");
        h.retried += u64::from(retried);
        h.settled.insert(r.decision_id.clone(), (outcome, cost));
    }
}

/// Records what a resolution did, as the store reports it.
fn record_resolution(h: &mut History, e: &pb::Escalation, add: i64) {
    match e.state.as_str() {
        "approved" => {
            h.approved.insert(e.escalation_id.clone(), (e.outcome_id.clone(), add));
        }
        "denied" => {
            h.denied.insert(e.escalation_id.clone());
            h.closed.insert(e.outcome_id.clone());
        }
        other => panic!("resolved to {other}"),
    }
}

/// Resolves pending escalations as they appear: most approved, some denied.
/// A resolution whose answer was lost (a crash, perhaps after it was
/// applied) stays unknown until the store's list says what became of it:
/// only what the store acknowledges is counted.
async fn admin_loop(addr: String, stop: Arc<AtomicBool>, history: Arc<Mutex<History>>) {
    let mut c = connect(&addr).await;
    let mut turn = 0u64;
    // escalation -> nano-USD asked to add (0: a denial), answer lost.
    let mut unknown: HashMap<String, i64> = HashMap::new();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && unknown.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(list) = c
            .list_escalations(pb::ListEscalationsRequest { workflow: "h".into() })
            .await
        else {
            continue;
        };
        let list = list.into_inner().escalations;
        for e in &list {
            if let Some(add) = unknown.get(&e.escalation_id).copied() {
                if e.state != "pending" {
                    unknown.remove(&e.escalation_id);
                    record_resolution(&mut history.lock().expect("history"), e, add);
                }
            }
        }
        for e in list.iter().filter(|e| e.state == "pending" && !stopping) {
            let add = match unknown.get(&e.escalation_id) {
                // Still pending: the lost attempt was not applied; ask again.
                Some(&add) => add,
                None => {
                    turn += 1;
                    if turn.is_multiple_of(4) {
                        0
                    } else {
                        PER_OUTCOME * (1 + (turn % 3) as i64)
                    }
                }
            };
            let asked = pb::ResolveEscalationRequest {
                escalation_id: e.escalation_id.clone(),
                approve: add > 0,
                add_nanousd: add,
                reason: "history".into(),
            };
            match c.resolve_escalation(asked).await {
                Ok(done) => {
                    unknown.remove(&e.escalation_id);
                    record_resolution(&mut history.lock().expect("history"), &done.into_inner(), add);
                }
                Err(s) if s.code() == Code::FailedPrecondition => {
                    // Already resolved: by the lost attempt. The next list says how.
                }
                Err(_) => {
                    unknown.insert(e.escalation_id.clone(), add);
                }
            }
        }
    }
}

/// The store as the fold must see it, read after the sidecar has stopped.
struct Final {
    period: switchyard::store::ScopeState,
    outcomes: BTreeMap<String, switchyard::store::ScopeState>,
    ledger: switchyard::ledger::Ledger,
    escalations: Vec<switchyard::store::Escalation>,
}

async fn read_final(store: &dyn Store) -> Final {
    let day = jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();
    let period = store.scope(&format!("h|day|{day}@UTC")).await.expect("period scope");
    let mut outcomes = BTreeMap::new();
    for o in 0..OUTCOMES {
        let key = format!("h|outcome|o-{o}");
        outcomes.insert(format!("o-{o}"), store.scope(&key).await.expect("outcome scope"));
    }
    Final {
        period,
        outcomes,
        ledger: store.ledger(Some("h"), 0).await.expect("ledger"),
        escalations: store.list_escalations(Some("h")).await.expect("escalations"),
    }
}

fn check(h: &History, f: &Final) {
    eprintln!(
        "history: {} settled ({} after a retry), {} abandoned, {} unanswered routes, {} approvals, {} denials",
        h.settled.len(),
        h.retried,
        h.abandoned.len(),
        h.unanswered,
        h.approved.len(),
        h.denied.len()
    );
    assert!(
        h.settled.len() > 100,
        "the run did work: {} settlements",
        h.settled.len()
    );
    assert!(h.unanswered > 0 || h.retried > 0, "the crashes hit calls in flight");
    assert!(
        !h.abandoned.is_empty() && !h.approved.is_empty() && !h.denied.is_empty(),
        "every kind of operation happened"
    );
    // The ledger is exactly the acknowledged settlements, each once.
    let mut in_ledger: HashMap<&str, i64> = HashMap::new();
    for call in &f.ledger.calls {
        assert!(
            in_ledger.insert(&call.decision_id, call.cost_nanos).is_none(),
            "{} is in the ledger twice",
            call.decision_id
        );
    }
    assert_eq!(
        in_ledger.len(),
        h.settled.len(),
        "the ledger holds what was acknowledged, and nothing else"
    );
    for (id, (_, cost)) in &h.settled {
        assert_eq!(in_ledger.get(id.as_str()), Some(cost), "{id}");
    }
    for id in &h.abandoned {
        assert!(
            !in_ledger.contains_key(id.as_str()),
            "an abandoned call was charged: {id}"
        );
    }
    // Spend is the fold of the settlements, scope by scope; nothing stays
    // reserved once every reservation not settled has expired.
    let total: i64 = h.settled.values().map(|(_, c)| c).sum();
    assert_eq!(
        (f.period.spent_nanos, f.period.reserved_nanos),
        (total, 0),
        "the period scope"
    );
    for (outcome, st) in &f.outcomes {
        let spent: i64 = h.settled.values().filter(|(o, _)| o == outcome).map(|(_, c)| c).sum();
        let added: i64 = h.approved.values().filter(|(o, _)| o == outcome).map(|(_, a)| a).sum();
        assert_eq!(st.spent_nanos, spent, "spend of {outcome}");
        assert_eq!(st.reserved_nanos, 0, "reserved on {outcome}");
        assert_eq!(st.extra_nanos, added, "approvals on {outcome}");
    }
    // Every acknowledged resolution is what the store holds.
    let state: HashMap<&str, (&str, i64)> = f
        .escalations
        .iter()
        .map(|e| (e.id.as_str(), (e.state.as_str(), e.added_nanos)))
        .collect();
    for (id, (_, add)) in &h.approved {
        assert_eq!(state.get(id.as_str()), Some(&("approved", *add)), "{id}");
    }
    for id in &h.denied {
        assert_eq!(state.get(id.as_str()).map(|s| s.0), Some("denied"), "{id}");
    }
    // At most one pending escalation per scope, ever.
    let mut pending: HashMap<&str, usize> = HashMap::new();
    for e in f.escalations.iter().filter(|e| e.state == EscalationState::Pending) {
        *pending.entry(e.scope.as_str()).or_default() += 1;
    }
    assert!(pending.values().all(|&n| n == 1), "{pending:?}");
}

/// Waits until the clients have had `more` settlements acknowledged since
/// the call: the chaos strikes after so much traffic, not after so long.
async fn after_settlements(history: &Arc<Mutex<History>>, more: usize) {
    let start = history.lock().expect("history").settled.len();
    let came = eventually(Duration::from_secs(30), || {
        let n = history.lock().expect("history").settled.len();
        async move { n >= start + more }
    })
    .await;
    assert!(
        came,
        "fewer than {more} settlements in 30 s: the clients are not getting through"
    );
}

/// Runs the clients and the admin against `addr` while `chaos` breaks
/// things (given the history, to pace itself by the traffic); then waits
/// for every unsettled reservation to expire.
async fn run<F: std::future::Future<Output = ()>>(
    addr: &str,
    chaos: impl FnOnce(Arc<Mutex<History>>) -> F,
) -> Arc<Mutex<History>> {
    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let admin = tokio::spawn(admin_loop(addr.to_string(), stop.clone(), history.clone()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(client_loop(addr.to_string(), n, done.clone(), history.clone())))
        .collect();
    chaos(history.clone()).await;
    // A last stretch of traffic on the recovered stores.
    after_settlements(&history, 60).await;
    done.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    // Let the admin resolve what the last calls raised.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    admin.await.expect("admin");
    // Reservations live 2 s; the sweep runs every second.
    tokio::time::sleep(Duration::from_secs(4)).await;
    history
}

fn flags<'a>(listen: &'a str, state: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut f = vec!["--listen", listen, "--state-dir", state, "--reservation-ttl-s", "2"];
    f.extend_from_slice(extra);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_is_the_fold_of_what_it_acknowledged_across_kill_9() {
    let rules = rules_dir(&rules());
    let state = tempfile::tempdir().expect("state");
    let listen = format!("127.0.0.1:{}", free_port());
    let dir = state.path().to_str().expect("utf-8").to_string();
    let server = Arc::new(Mutex::new(Some(Server::start(
        rules.path(),
        &flags(&listen, &dir, &[]),
    ))));
    let chaos = {
        let (server, rules, listen, dir) = (server.clone(), rules.path().to_path_buf(), listen.clone(), dir.clone());
        move |history| async move {
            for _ in 0..2 {
                after_settlements(&history, 60).await;
                let s = server.lock().expect("server").take().expect("running");
                s.kill9();
                *server.lock().expect("server") = Some(Server::start(&rules, &flags(&listen, &dir, &[])));
            }
        }
    };
    let history = run(&listen, chaos).await;
    let s = server.lock().expect("server").take().expect("running");
    s.terminate();
    let store = switchyard::store::sqlite::SqliteStore::open(state.path()).expect("open");
    let f = read_final(&store).await;
    check(&history.lock().expect("history"), &f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_store_is_the_fold_of_what_it_acknowledged_across_kills_of_both() {
    let redis = Arc::new(Mutex::new(RedisServer::start()));
    let url = redis.lock().expect("redis").url();
    let rules = rules_dir(&rules());
    let state = tempfile::tempdir().expect("state");
    let listen = format!("127.0.0.1:{}", free_port());
    let dir = state.path().to_str().expect("utf-8").to_string();
    let extra = ["--redis-url", url.as_str(), "--redis-timeout-ms", "300"];
    let server = Arc::new(Mutex::new(Some(Server::start(
        rules.path(),
        &flags(&listen, &dir, &extra),
    ))));
    let chaos = {
        let (server, rules, listen, dir, url) = (
            server.clone(),
            rules.path().to_path_buf(),
            listen.clone(),
            dir.clone(),
            url.clone(),
        );
        let redis = redis.clone();
        move |history| async move {
            after_settlements(&history, 60).await;
            // Redis dies for a second; settlements are journaled meanwhile.
            redis.lock().expect("redis").kill9();
            tokio::time::sleep(Duration::from_millis(1000)).await;
            redis.lock().expect("redis").restart();
            after_settlements(&history, 30).await;
            // Then the sidecar dies, with whatever its journal holds.
            let extra = ["--redis-url", url.as_str(), "--redis-timeout-ms", "300"];
            let s = server.lock().expect("server").take().expect("running");
            s.kill9();
            *server.lock().expect("server") = Some(Server::start(&rules, &flags(&listen, &dir, &extra)));
        }
    };
    let history = run(&listen, chaos).await;
    let s = server.lock().expect("server").take().expect("running");
    s.terminate();
    let store = switchyard::store::redis::RedisStore::connect(switchyard::store::redis::RedisConfig {
        url,
        prefix: "sy".into(),
        timeout: Duration::from_secs(5),
        reservation_ttl_ms: 2000,
        fail_open_cap_nanos: None,
        journal: state.path().join("redis-journal.jsonl"),
        accept_fresh: false,
    })
    .await
    .expect("connect");
    assert_eq!(store.pending_settlements().await, 0, "the journal was replayed");
    let f = read_final(&store).await;
    check(&history.lock().expect("history"), &f);
}
