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
mod reconcile;
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
    leases: crate::budget::lease::Leases,
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
            decision_retention_ms: std::sync::atomic::AtomicI64::new(crate::budget::DEFAULT_DECISION_RETENTION_MS),
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
            leases: crate::budget::lease::Leases::new(uuid::Uuid::now_v7().simple().to_string()),
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
        self.leases = crate::budget::lease::Leases::new(holder_id(&dir));
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
        let Some(owner) = crate::budget::outcome_owner(r) else {
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

    /// The record that says Redis holds this deployment's budget state.
    pub fn store_key(&self) -> String {
        format!("{}:store", self.cfg.prefix)
    }

    /// Makes sure Redis holds this deployment's state before any budget is
    /// spent from it. A Redis with the store record is known; one without it
    /// but with workflows recorded (a store from a build before the record)
    /// gets the record; an empty one (new, flushed, or restarted without
    /// persistence) is refused unless a fresh start is accepted
    /// (`--accept-fresh-store`, or `switchyard budget init`), so that a
    /// sidecar cannot start a second budget on emptied counters.
    pub async fn ensure_known(&self) -> Result<FreshStart, StoreError> {
        if self.known.load(Ordering::Acquire) {
            return Ok(FreshStart::Known);
        }
        let mut c = self.conn.clone();
        let (store_key, workflows_key) = (self.store_key(), self.workflows_key());
        let (record, workflows): (Option<String>, i64) = self
            .bounded(async move {
                redis::pipe()
                    .cmd("GET")
                    .arg(&store_key)
                    .cmd("SCARD")
                    .arg(&workflows_key)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let start = match (record, workflows) {
            (Some(_), _) => FreshStart::Known,
            (None, n) if n > 0 => {
                self.write_store_record("adopted").await?;
                FreshStart::Adopted
            }
            (None, _) if self.cfg.accept_fresh => {
                self.write_store_record("fresh start accepted").await?;
                FreshStart::FreshAccepted
            }
            (None, _) => {
                let why = format!(
                    "Redis holds no Switchyard budget state (no `{}` record): it is new, was flushed, or restarted \
                     without persistence. Budgets are not started afresh silently: for a new deployment run \
                     `switchyard budget init --redis-url ...` once (or start serve with --accept-fresh-store); if Redis \
                     lost its data, run `switchyard budget reconcile` from the sidecars' journals first",
                    self.store_key()
                );
                self.lost
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert("*".into(), why.clone());
                return Err(StoreError::StateLost(why));
            }
        };
        self.lost
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove("*");
        self.known.store(true, Ordering::Release);
        Ok(start)
    }

    /// Writes the store record, if there is none; whether it wrote it.
    pub async fn write_store_record(&self, how: &str) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let key = self.store_key();
        let value = format!(
            "{how} at {} by {}",
            crate::clock::Clock::now_ms(&crate::clock::SystemClock),
            self.leases.holder()
        );
        self.bounded(async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("NX")
                .query_async::<Option<String>>(&mut c)
                .await
        })
        .await
        .map(|v| v.is_some())
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

    async fn reserve_remote(&self, r: &NewReservation) -> Result<Reserved, StoreError> {
        self.ensure_known().await?;
        debug_assert!(
            r.scopes.iter().all(|s| workflow_of(&s.key) == r.workflow),
            "a call's scopes share its workflow's hash tag"
        );
        let tag = self.tag(&r.workflow);
        let names: Vec<&str> = r.scopes.iter().map(|s| s.key.as_str()).collect();
        let joined = names.join(&SEP.to_string());
        let mut inv = self.reserve.prepare_invoke();
        inv.key(format!("{tag}r:{}", r.decision_id)).key(format!("{tag}open"));
        for s in &r.scopes {
            inv.key(format!("{tag}s:{}", s.key));
        }
        let (epoch, holder, acked) = self.epoch_args(&r.workflow);
        inv.key(epoch);
        let mut pipe = redis::pipe();
        inv.arg(&r.decision_id)
            .arg(r.amount_nanos)
            .arg(r.expires_ms)
            .arg(RETAIN_MS)
            .arg(&joined)
            .arg(self.pack(r, &mut pipe))
            .arg(r.snapshot.as_slice());
        for s in &r.scopes {
            inv.arg(s.limit_nanos);
        }
        inv.arg(holder).arg(acked);
        pipe.cmd("SET")
            .arg(self.index_key(&r.decision_id))
            .arg(format!("{}{SEP}{joined}", r.workflow))
            .arg("PX")
            .arg(RETAIN_MS)
            .ignore();
        // The expiry sweep finds workflows through this set; once per
        // workflow per process is enough (SADD is idempotent anyway).
        let new_workflow = !self.known_workflows().contains(&r.workflow);
        if new_workflow {
            pipe.cmd("SADD").arg(self.workflows_key()).arg(&r.workflow).ignore();
        }
        self.note_outcome_caller(&mut pipe, r);
        pipe.invoke_script(&inv);
        let reply = strings(self.pipeline_with_script(&pipe, &self.reserve).await?);
        if new_workflow {
            self.known_workflows().insert(r.workflow.clone());
        }
        match reply.first().map(String::as_str) {
            Some("lost") => return Err(self.state_lost(&r.workflow, reply.get(1).map_or("", String::as_str))),
            Some(_) => self.state_sound(&r.workflow),
            None => {}
        }
        match reply.first().map(String::as_str) {
            Some("ok") | Some("dup") => Ok(Reserved::Ok),
            Some("over") => {
                let i: usize = reply.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
                let n = |j: usize| reply.get(j).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
                Ok(Reserved::OverLimit {
                    scope: r.scopes.get(i - 1).map(|s| s.key.clone()).unwrap_or_default(),
                    state: ScopeState {
                        limit_nanos: n(2).saturating_add(n(3)),
                        spent_nanos: n(4),
                        reserved_nanos: n(5),
                        extra_nanos: n(3),
                    },
                })
            }
            _ => Err(StoreError::Unavailable(format!("redis: unexpected reply {reply:?}"))),
        }
    }

    /// The workflow and scope names of a decision: from this sidecar's memory
    /// when it made the decision, else from the index in Redis.
    async fn locate(&self, decision_id: &str) -> Result<Option<(String, Vec<String>)>, StoreError> {
        let mut c = self.conn.clone();
        let key = self.index_key(decision_id);
        let v: Option<String> = self
            .bounded(async move { redis::cmd("GET").arg(key).query_async(&mut c).await })
            .await?;
        Ok(v.map(|v| {
            let mut parts = v.split(SEP);
            let wf = parts.next().unwrap_or_default().to_string();
            (wf, parts.filter(|s| !s.is_empty()).map(str::to_string).collect())
        }))
    }

    async fn settle_remote(&self, p: &PendingSettle) -> Result<Settled, StoreError> {
        let (workflow, scopes) = match &p.record {
            Some(r) => (r.workflow.clone(), r.scopes.iter().map(|s| s.key.clone()).collect()),
            None => self
                .locate(&p.decision_id)
                .await?
                .ok_or_else(|| StoreError::UnknownDecision(p.decision_id.clone()))?,
        };
        let tag = self.tag(&workflow);
        let mut inv = self.settle.prepare_invoke();
        inv.key(format!("{tag}r:{}", p.decision_id))
            .key(format!("{tag}open"))
            .key(format!("{tag}events"))
            .key(format!("{tag}decisions"));
        for s in &scopes {
            inv.key(format!("{tag}s:{s}"));
        }
        let (epoch, holder, acked) = self.epoch_args(&workflow);
        inv.key(epoch);
        let usage = usage_field(&p.usage, p.now_ms);
        let mut pipe = redis::pipe();
        inv.arg(&p.decision_id).arg(p.cost_nanos).arg(RETAIN_MS).arg(usage);
        match &p.record {
            Some(r) => {
                inv.arg("1")
                    .arg(r.amount_nanos)
                    .arg(scopes.join(&SEP.to_string()))
                    .arg(self.pack(r, &mut pipe));
            }
            None => {
                inv.arg("0").arg("0").arg("").arg("");
            }
        }
        inv.arg(LEDGER_MAXLEN)
            .arg(p.record.as_ref().map_or(&[][..], |r| r.snapshot.as_slice()))
            .arg(
                p.now_ms
                    .saturating_sub(self.decision_retention_ms.load(Ordering::Relaxed)),
            )
            .arg(holder)
            .arg(acked);
        pipe.invoke_script(&inv);
        let reply = strings(self.pipeline_with_script(&pipe, &self.settle).await?);
        if reply.first().map(String::as_str) == Some("lost") {
            return Err(self.state_lost(&workflow, reply.get(1).map_or("", String::as_str)));
        }
        self.state_sound(&workflow);
        match reply.first().map(String::as_str) {
            Some("charged") => {
                self.acked().record(&workflow, &scopes, p.cost_nanos, 1, p.now_ms);
                Ok(Settled::Charged {
                    cost_nanos: p.cost_nanos,
                })
            }
            Some("settled") => Ok(Settled::AlreadySettled {
                cost_nanos: reply.get(1).and_then(|s| s.parse().ok()).unwrap_or(0),
            }),
            Some("unknown") => Err(StoreError::UnknownDecision(p.decision_id.clone())),
            _ => Err(StoreError::Unavailable(format!("redis: unexpected reply {reply:?}"))),
        }
    }

    /// Replays journaled settlements, oldest first, until Redis fails again.
    async fn replay(&self) -> Result<u64, StoreError> {
        let mut j = self.journal.lock().await;
        if j.pending.is_empty() {
            return Ok(0);
        }
        let mut done = 0;
        let mut result = Ok(());
        while let Some(p) = j.pending.first().cloned() {
            match self.settle_remote(&p).await {
                Ok(_) => {}
                Err(StoreError::UnknownDecision(id)) => {
                    tracing::warn!(decision = %id, "a journaled ReportUsage names a decision Redis does not know; dropped");
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            j.pending.remove(0);
            done += 1;
        }
        if done > 0 {
            self.journal_pending.store(j.pending.len() as u64, Ordering::Relaxed);
            if let Err(e) = j.rewrite() {
                tracing::warn!(file = %j.path.display(), error = %e, "cannot rewrite the Redis journal; replays are idempotent, so the next pass repeats them harmlessly");
            }
            tracing::info!(
                replayed = done,
                waiting = j.pending.len(),
                "replayed settlements to Redis"
            );
        }
        result.map(|_| done)
    }

    fn fail_open(&self, r: &NewReservation, why: String) -> Result<Reserved, StoreError> {
        let Some(cap) = self.cfg.fail_open_cap_nanos else {
            return Err(StoreError::Unavailable(format!(
                "{why}; budgets are enforced in Redis and Switchyard fails closed while it is unreachable \
                 (serve --redis-fail-open-usd N admits calls up to a local cap instead)"
            )));
        };
        let admitted = self
            .open_admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(r.amount_nanos).filter(|n| *n <= cap)
            });
        match admitted {
            Ok(used) => {
                self.fail_open_total.fetch_add(1, Ordering::Relaxed);
                self.recent.insert(r.decision_id.clone(), Arc::new(r.clone()));
                tracing::warn!(
                    decision = %r.decision_id,
                    workflow = %r.workflow,
                    admitted = %format_usd(used.saturating_add(r.amount_nanos)),
                    cap = %format_usd(cap),
                    "Redis unreachable: admitted under the local fail-open cap"
                );
                Ok(Reserved::Ok)
            }
            Err(used) => Err(StoreError::Unavailable(format!(
                "{why}; this sidecar's fail-open cap ({}) is used up ({} admitted since Redis was last reachable)",
                format_usd(cap),
                format_usd(used)
            ))),
        }
    }

    async fn escalation_at(&self, workflow: &str, id: &str) -> Result<Option<Escalation>, StoreError> {
        let key = format!("{}e:{id}", self.tag(workflow));
        let mut c = self.conn.clone();
        let v: Value = self
            .bounded(async move { redis::cmd("HGETALL").arg(key).query_async(&mut c).await })
            .await?;
        let f = fields(v);
        if f.is_empty() {
            return Ok(None);
        }
        let s = |k: &str| f.get(k).cloned().unwrap_or_default();
        let n = |k: &str| f.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Some(Escalation {
            id: id.to_string(),
            workflow: s("workflow"),
            scope: s("scope"),
            outcome_id: s("outcome"),
            caller: s("caller"),
            amount_nanos: n("amount"),
            model: s("model"),
            state: EscalationState::parse(&s("state"))
                .ok_or_else(|| StoreError::Unavailable(format!("redis: escalation {id} has no known state")))?,
            created_ms: n("created"),
            resolved_by: s("resolved_by"),
            resolved_ms: n("resolved_ms"),
            added_nanos: n("added"),
            reason: s("reason"),
        }))
    }
}

/// A Redis URL without its password, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}
