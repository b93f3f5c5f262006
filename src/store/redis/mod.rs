//! The fleet budget store: Redis, shared by every sidecar of a fleet.
//!
//! Every check-and-change is one Lua script, loaded once and called with
//! EVALSHA, so Redis runs it atomically: a reservation checks and increments
//! all of a call's scopes in one step, and a settlement releases and charges in
//! one step, whatever the number of sidecars.
//!
//! All of a workflow's keys carry the workflow's hash tag (`sy:{name}:…`), so a
//! call's scopes and its reservation live in one slot and the scripts work on
//! Redis Cluster. Two small index keys (decision → workflow and scopes,
//! escalation → workflow) are written beside them, outside any script.
//!
//! Nothing is ever reseeded from another source: the counters live only in
//! Redis, so N sidecars never count a budget N times.
//!
//! When Redis is unreachable:
//! - **fail closed** (the default): Route answers UNAVAILABLE and says why;
//! - **fail open** with a local cap: Route admits calls until this sidecar's
//!   estimated spend during the outage reaches the cap, then fails closed;
//! - either way, a ReportUsage that cannot reach Redis is appended to a local
//!   journal in `--state-dir` before it is acknowledged, and replayed when
//!   Redis answers again. Settlements are idempotent by `decision_id`, so a
//!   replay never counts a call twice.
//!
//! The files: `scripts/` (the Lua, one file a script), `journal.rs` (the
//! local journal of settlements waiting for Redis), then one file per store
//! trait: `budgets.rs`, `escalations.rs`, `ledger.rs`, `learning.rs`.

pub mod acks;
mod budgets;
mod escalations;
mod journal;
mod learning;
mod leases;
mod marker;
mod reconcile;
mod remote;
pub use reconcile::{ReconciledScope, ReconciledWorkflow};
mod ledger;
mod wire;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

mod conn;
use conn::Conn;
pub use conn::CLUSTER_SCHEME;
use redis::{RedisError, Script, Value};

use super::{
    extra_after_approval, Escalation, EscalationState, NewReservation, ReservationRecord, ReservationState, Reserved,
    ScopeState, Settled, StoreError,
};
use crate::money::format_usd;
use journal::{Journal, PendingSettle};
use wire::*;

/// Scope names are joined with a byte that cannot appear in a key we build.
const SEP: char = '\u{1f}';

/// How long a reservation's record is kept after it is made or settled: long
/// past any retry of its ReportUsage, so a late retry is still recognised.
const RETAIN_MS: i64 = 7 * 24 * 3600 * 1000;

/// Each workflow's ledger stream is trimmed to about this many entries.
const LEDGER_MAXLEN: u64 = 5_000_000;

/// Ledger entries read per XRANGE.
const LEDGER_PAGE: usize = 10_000;

/// The most expired reservations one script call releases.
const EXPIRE_BATCH: usize = 1000;

/// The scripts, one file each in `scripts/`. Those that add or compare
/// money start with `money.lua`: amounts arrive as decimal strings of up to
/// 19 digits and Lua's numbers are doubles, exact only below 2^53 (about $9
/// million), so it splits each amount into billions and units, both exact,
/// and decides before any write whether a change fits.
const RESERVE: &str = concat!(
    include_str!("scripts/money.lua"),
    include_str!("scripts/epoch.lua"),
    include_str!("scripts/reserve.lua")
);
const SETTLE: &str = concat!(
    include_str!("scripts/money.lua"),
    include_str!("scripts/epoch.lua"),
    include_str!("scripts/settle.lua")
);
/// Reads each expired reservation's scopes from its record. Those keys are
/// not declared, but they carry the same hash tag as KEYS[1], so they are in
/// its slot.
const EXPIRE: &str = include_str!("scripts/expire.lua");
const RESOLVE: &str = concat!(include_str!("scripts/money.lua"), include_str!("scripts/resolve.lua"));
/// The escalation that applies to a scope, or a new one: atomic, so a scope
/// has at most one pending escalation however many sidecars cross its limit.
const ESCALATE: &str = include_str!("scripts/escalate.lua");
/// An outcome's rejected tier, kept at its highest.
const REJECT: &str = include_str!("scripts/reject.lua");

/// What [`RedisStore::ensure_known`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreshStart {
    Known,
    /// State from an older build, given its store record.
    Adopted,
    /// Empty, and a fresh start was accepted.
    FreshAccepted,
}

/// How the Redis store is set up.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Every key starts with this; several deployments (or test runs) can
    /// share one Redis under different prefixes.
    pub prefix: String,
    /// The longest a store call waits for Redis before it counts as down.
    pub timeout: Duration,
    /// How long a reservation waits for its ReportUsage (the local record of
    /// a decision is kept as long).
    pub reservation_ttl_ms: i64,
    /// Fail open with this cap on this sidecar's estimated spend while Redis
    /// is unreachable; `None` fails closed.
    pub fail_open_cap_nanos: Option<i64>,
    /// The journal of settlements waiting for Redis (JSON lines).
    pub journal: PathBuf,
    /// Accept a Redis that holds no budget state as a fresh start
    /// (`--accept-fresh-store`); otherwise it is refused.
    pub accept_fresh: bool,
}

pub struct RedisStore {
    conn: Conn,
    /// How long the decision log keeps a decision's snapshot (what-if).
    decision_retention_ms: std::sync::atomic::AtomicI64,
    cfg: RedisConfig,
    reserve: Script,
    settle: Script,
    expire: Script,
    resolve: Script,
    escalate: Script,
    reject: Script,
    /// Why the last call that found Redis unreachable failed, for readiness.
    last_error: std::sync::Mutex<Option<String>>,
    /// Decisions this sidecar made recently, so that a ReportUsage can be
    /// priced and settled even if Redis never saw the decision (fail-open,
    /// or a record written in the background) or is down right now.
    recent: crate::recent::Recent<String, Arc<NewReservation>>,
    /// `workflow \x1f outcome \x1f caller` of calls routed under a lease
    /// slice whose renewal has not yet told Redis who routed them.
    leased_outcomes: crate::recent::Recent<String, ()>,
    journal: tokio::sync::Mutex<Journal>,
    /// Set when a call found Redis unreachable; cleared by the next
    /// successful maintenance pass.
    degraded: AtomicBool,
    /// Estimated spend admitted while failing open since Redis was last seen.
    open_admitted: AtomicI64,
    unavailable_total: AtomicU64,
    fail_open_total: AtomicU64,
    journal_pending: AtomicU64,
    /// Workflows already added to the workflows set by this process.
    workflows_seen: std::sync::Mutex<std::collections::HashSet<String>>,
    /// This sidecar's slices of leased budgets.
    leases: crate::store::lease::Leases,
    lease: Script,
    /// Settlements made against a slice and not yet carried to Redis.
    lease_journal: tokio::sync::Mutex<Journal>,
    /// The origin of [`RedisStore::mono_ms`].
    started: crate::clock::Instant,
    leased_routes: AtomicU64,
    lease_renewals: AtomicU64,
    lease_renewals_failed: AtomicU64,
    lease_held: AtomicI64,
    /// How often this sidecar sweeps (see [`RedisStore::pace_sweeps`]).
    sweep_every_ms: AtomicU64,
    /// Settlements Redis acknowledged to this sidecar (`acks.jsonl`).
    acks: std::sync::Mutex<acks::Acks>,
    /// Workflows whose state Redis lost, as last found, with why.
    lost: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    /// Whether Redis was seen to hold this deployment's state (its store
    /// record, `<prefix>:store`), or a fresh start was accepted: until then
    /// budgeted calls ask, and an empty Redis fails them closed.
    known: AtomicBool,
}

/// This sidecar's name as a lease holder: kept in `--state-dir`, so that a
/// restart renews (and replaces) the slices it held, rather than stranding
/// them until they expire. Where the folder cannot keep it (the read-only
/// tools), a fresh name serves: they never lease.
fn holder_id(dir: &std::path::Path) -> String {
    let path = dir.join("sidecar-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() && id.len() <= 64 {
            return id.to_string();
        }
    }
    let id = uuid::Uuid::now_v7().simple().to_string();
    if let Err(e) = std::fs::write(&path, format!("{id}\n")) {
        tracing::debug!(file = %path.display(), error = %e, "the lease holder name is not kept");
    }
    id
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

impl RedisStore {
    /// Connects (lazily: a Redis that is down at start is retried on every
    /// call) and loads the journal left by an earlier run.
    pub async fn connect(cfg: RedisConfig) -> Result<RedisStore, StoreError> {
        let bad_url = |e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!(
                "--redis-url `{}` is not a Redis URL ({e}); use redis://host:port, or \
                 redis+cluster://host:port,host:port for a Redis Cluster",
                redact_url(&cfg.url)
            ))
        };
        let conn = if cfg.url.starts_with(CLUSTER_SCHEME) {
            let nodes = conn::cluster_nodes(&cfg.url).ok_or_else(|| bad_url(&"no host:port after the scheme"))?;
            Conn::cluster(nodes, cfg.timeout).map_err(|e| bad_url(&e))?
        } else {
            let client = redis::Client::open(cfg.url.as_str()).map_err(|e| bad_url(&e))?;
            let mc = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(cfg.timeout))
                .set_response_timeout(Some(cfg.timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            Conn::Single(ConnectionManager::new_lazy_with_config(client, mc).map_err(unavailable)?)
        };
        let journal = Journal::load(cfg.journal.clone())?;
        let dir = cfg
            .journal
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let lease_journal = Journal::load(dir.join("lease-journal.jsonl"))?;

        let pending = journal.pending.len();
        if !journal.pending.is_empty() {
            tracing::warn!(
                pending = journal.pending.len(),
                file = %cfg.journal.display(),
                "settlements from an earlier run are waiting for Redis; they will be replayed"
            );
        }
        // Kept for at least the reservation's lifetime (Recent keeps an
        // unused entry for between half its ttl and its ttl).
        let recent = crate::recent::Recent::new(
            200_000,
            Duration::from_millis(cfg.reservation_ttl_ms.max(1000) as u64) * 2,
        );
        let store = RedisStore {
            conn,
            decision_retention_ms: std::sync::atomic::AtomicI64::new(crate::store::DEFAULT_DECISION_RETENTION_MS),
            reserve: Script::new(RESERVE),
            settle: Script::new(SETTLE),
            expire: Script::new(EXPIRE),
            resolve: Script::new(RESOLVE),
            escalate: Script::new(ESCALATE),
            reject: Script::new(REJECT),
            last_error: std::sync::Mutex::new(None),
            recent,
            leased_outcomes: crate::recent::Recent::new(100_000, std::time::Duration::from_secs(3600)),
            journal: tokio::sync::Mutex::new(journal),
            degraded: AtomicBool::new(false),
            open_admitted: AtomicI64::new(0),
            unavailable_total: AtomicU64::new(0),
            fail_open_total: AtomicU64::new(0),
            journal_pending: AtomicU64::new(pending as u64),
            workflows_seen: Default::default(),
            leases: crate::store::lease::Leases::new(uuid::Uuid::now_v7().simple().to_string()),
            lease: Script::new(leases::LEASE),
            lease_journal: tokio::sync::Mutex::new(lease_journal),
            started: crate::clock::Instant::now(),
            leased_routes: AtomicU64::new(0),
            lease_renewals: AtomicU64::new(0),
            lease_renewals_failed: AtomicU64::new(0),
            lease_held: AtomicI64::new(0),
            sweep_every_ms: AtomicU64::new(1_000),
            acks: std::sync::Mutex::new(acks::Acks::none()),
            lost: Default::default(),
            known: AtomicBool::new(false),
            cfg,
        };
        Ok(store)
    }

    /// Makes this store a serving sidecar's (the read-only tools skip this):
    /// takes the lease holder name kept in `--state-dir`, and hands
    /// settlements a crash left in the lease journal to the replay.
    pub async fn serve_from_state_dir(&mut self) -> Result<(), StoreError> {
        let dir = self
            .cfg
            .journal
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        self.leases = crate::store::lease::Leases::new(holder_id(&dir));
        *self.acks.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner) =
            acks::Acks::load(dir.join("acks.jsonl"))?;
        self.adopt_lease_journal().await
    }

    /// Sets how often this sidecar sweeps, from how many sweeps the whole
    /// fleet made in the last ten seconds: about two a second in all,
    /// however many sidecars share the Redis, so a fleet of thousands does
    /// not sweep each workflow thousands of times a second. Each sidecar
    /// sweeps at least every ten minutes, and every second while it has
    /// settlements to replay.
    fn pace_sweeps(&self, fleet_sweeps_last_10s: u64) {
        const FLEET_SWEEPS_PER_10S: u64 = 20;
        let every = self.sweep_every_ms.load(Ordering::Relaxed);
        let next = (every as u128 * fleet_sweeps_last_10s.max(1) as u128 / FLEET_SWEEPS_PER_10S as u128)
            .clamp(1_000, 600_000) as u64;
        // Jitter, so that sidecars started together spread out.
        let next = next - next / 10 + fastrand::u64(0..=next / 5);
        self.sweep_every_ms.store(next, Ordering::Relaxed);
    }

    fn acked(&self) -> std::sync::MutexGuard<'_, acks::Acks> {
        self.acks.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The epoch record's key, this sidecar's name, and the settlements of
    /// `workflow` Redis acknowledged to it: what every script checks.
    fn epoch_args(&self, workflow: &str) -> (String, String, u64) {
        (
            format!("{}epoch", self.tag(workflow)),
            self.leases.holder().to_string(),
            self.acked().count(workflow),
        )
    }

    /// A script found the workflow's state lost (`by`: the sidecar that
    /// noticed first): remembered for readiness and metrics, logged once.
    fn state_lost(&self, workflow: &str, by: &str) -> StoreError {
        let why = format!(
            "Redis lost budget state of workflow `{workflow}` that it had acknowledged (a failover or a restart \
             without persistence; sidecar {by} noticed its settlements missing); budgeted calls fail closed until an \
             operator runs `switchyard budget reconcile`, which rebuilds the counters from the sidecars' journals"
        );
        let mut lost = self.lost.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if lost.insert(workflow.to_string(), why.clone()).is_none() {
            tracing::error!(
                workflow,
                noticed_by = by,
                "Redis lost acknowledged budget state; budgeted calls fail closed until `switchyard budget reconcile`"
            );
        }
        StoreError::StateLost(why)
    }

    /// A script ran for `workflow` without finding its state lost.
    fn state_sound(&self, workflow: &str) {
        let mut lost = self.lost.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !lost.is_empty() && lost.remove(workflow).is_some() {
            tracing::info!(workflow, "the workflow's budget state is sound again");
        }
    }

    /// Sends one PING; for start-up diagnostics.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        self.bounded(async move { redis::cmd("PING").query_async::<()>(&mut c).await })
            .await
    }

    /// Settlements waiting in the journal for Redis.
    pub async fn pending_settlements(&self) -> usize {
        self.journal.lock().await.pending.len()
    }

    /// Runs `cmd` and adds `workflow` to the set the sweep and reports
    /// iterate, in one round trip.
    async fn sadd_workflow(&self, workflow: &str, cmd: redis::Cmd) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.add_command(cmd)
            .ignore()
            .cmd("SADD")
            .arg(self.workflows_key())
            .arg(workflow)
            .ignore();
        let mut c = self.conn.clone();
        self.bounded(async move { pipe.query_async::<()>(&mut c).await }).await
    }

    /// `workflow`, or every workflow this store has seen.
    async fn workflows(&self, workflow: Option<&str>) -> Result<Vec<String>, StoreError> {
        if let Some(w) = workflow {
            return Ok(vec![w.to_string()]);
        }
        let mut c = self.conn.clone();
        let key = self.workflows_key();
        self.bounded(async move { redis::cmd("SMEMBERS").arg(key).query_async(&mut c).await })
            .await
    }

    /// Appends an entry to the workflow's ledger stream.
    async fn append(&self, workflow: &str, entry: &[(&str, String)]) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(format!("{}events", self.tag(workflow)))
            .arg("MAXLEN")
            .arg("~")
            .arg(LEDGER_MAXLEN)
            .arg("*")
            .arg(entry);
        self.sadd_workflow(workflow, cmd).await
    }

    fn known_workflows(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.workflows_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn tag(&self, workflow: &str) -> String {
        format!("{}:{{{workflow}}}:", self.cfg.prefix)
    }

    /// A decision's description for a script, with `pipe` keeping its label
    /// set's one copy (in the workflow's `labels` hash, renewed while used).
    fn pack(&self, r: &NewReservation, pipe: &mut redis::Pipeline) -> String {
        if !r.labels.is_empty() {
            let key = format!("{}labels", self.tag(&r.workflow));
            let id = label_ref(&r.labels);
            pipe.cmd("HSETNX")
                .arg(&key)
                .arg(id.trim_start_matches(LABEL_REF))
                .arg(&r.labels)
                .ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(RETAIN_MS).ignore();
        }
        meta(r)
    }

    /// Replaces label references in `calls` (of `workflow`) by their text.
    async fn resolve_labels(&self, workflow: &str, calls: &mut [crate::ledger::CallRecord]) -> Result<(), StoreError> {
        let mut ids: Vec<String> = calls
            .iter()
            .filter_map(|c| c.labels.strip_prefix(LABEL_REF).map(str::to_string))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        ids.sort();
        ids.dedup();
        let mut c = self.conn.clone();
        let key = format!("{}labels", self.tag(workflow));
        let ids_q = ids.clone();
        let texts: Vec<Option<String>> = self
            .bounded(async move { redis::cmd("HMGET").arg(&key).arg(&ids_q).query_async(&mut c).await })
            .await?;
        let found: std::collections::HashMap<String, String> = ids
            .into_iter()
            .zip(texts)
            .filter_map(|(id, t)| t.map(|t| (id, t)))
            .collect();
        for call in calls {
            if let Some(id) = call.labels.strip_prefix(LABEL_REF) {
                // A set past its retention is gone with its calls' records.
                call.labels = found.get(id).cloned().unwrap_or_default();
            }
        }
        Ok(())
    }

    /// The identities that routed under an outcome (RecordOutcome's check),
    /// in the workflow's hash slot.
    fn outcome_callers_key(&self, workflow: &str, outcome_id: &str) -> String {
        format!("{}oc:{outcome_id}", self.tag(workflow))
    }

    /// Adds to `pipe` the note that `r`'s caller routed under its outcome.
    fn note_outcome_caller(&self, pipe: &mut redis::Pipeline, r: &NewReservation) {
        let Some(owner) = crate::store::outcome_owner(r) else {
            return;
        };
        let key = self.outcome_callers_key(&r.workflow, &r.outcome_id);
        pipe.cmd("SADD").arg(&key).arg(owner).ignore();
        pipe.cmd("PEXPIRE").arg(&key).arg(RETAIN_MS).ignore();
    }

    fn index_key(&self, decision_id: &str) -> String {
        format!("{}:d:{decision_id}", self.cfg.prefix)
    }

    fn escalation_index(&self, id: &str) -> String {
        format!("{}:ei:{id}", self.cfg.prefix)
    }

    fn workflows_key(&self) -> String {
        format!("{}:workflows", self.cfg.prefix)
    }

    /// Runs one Redis exchange with the store's timeout; marks the store
    /// degraded when Redis does not answer.
    async fn bounded<T>(&self, f: impl std::future::Future<Output = Result<T, RedisError>>) -> Result<T, StoreError> {
        let out = match tokio::time::timeout(self.cfg.timeout, f).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                return Err(StoreError::Unavailable(format!("redis: NOSCRIPT {e}")))
            }
            Ok(Err(e))
                if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() =>
            {
                unavailable(e)
            }
            Ok(Err(e)) => return Err(unavailable(e)),
            Err(_) => StoreError::Unavailable(format!("redis: no answer within {} ms", self.cfg.timeout.as_millis())),
        };
        self.degraded.store(true, Ordering::Relaxed);
        self.unavailable_total.fetch_add(1, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(out.to_string());
        Err(out)
    }

    /// Runs a pipeline that ends in a script call; if Redis lost its scripts
    /// (a restart), loads them and tries once more.
    async fn pipeline_with_script(&self, pipe: &redis::Pipeline, script: &Script) -> Result<Value, StoreError> {
        for attempt in 0..2 {
            let mut c = self.conn.clone();
            let res = self
                .bounded(async {
                    let v: Vec<Value> = pipe.query_async(&mut c).await?;
                    Ok(v)
                })
                .await;
            match res {
                Ok(mut v) => {
                    return v
                        .pop()
                        .ok_or_else(|| StoreError::Unavailable("redis: empty reply".into()))
                }
                Err(StoreError::Unavailable(m)) if attempt == 0 && m.to_ascii_uppercase().contains("NOSCRIPT") => {
                    let mut c = self.conn.clone();
                    self.bounded(script.prepare_invoke().load_async(&mut c)).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Unavailable("redis: script could not be loaded".into()))
    }
}

/// A Redis URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}
