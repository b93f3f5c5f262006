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

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script, Value};

use super::{
    BudgetStore, Escalation, NewReservation, ReservationRecord, Reserved, ScopeState, Settled, StoreError, StoreHealth,
    Usage,
};
use crate::money::format_usd;
use crate::outcome::learn::LearnEvent;
use crate::outcome::ledger::{CallRecord, FeedbackEvent, Ledger, OutcomeEvent, OutcomeStatus};

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

/// Exact nano-dollar arithmetic for the scripts. Amounts arrive as decimal
/// strings of up to 19 digits, and Lua's numbers are doubles, exact only
/// below 2^53 (about $9 million): each amount is split into billions and
/// units, both exact, then added and compared in parts. Redis's own HINCRBY
/// is exact and refuses to overflow; these decide, before any write, whether
/// a change fits, so a script never stops half way.
macro_rules! money_lua {
    () => {
        r#"
local function nanos(s)
  s = s or '0'
  if s == '' then s = '0' end
  local neg = string.sub(s, 1, 1) == '-'
  if neg then s = string.sub(s, 2) end
  local n = #s
  local hi, lo = 0, tonumber(s)
  if n > 9 then
    hi, lo = tonumber(string.sub(s, 1, n - 9)), tonumber(string.sub(s, n - 8))
  end
  if neg then hi, lo = -hi, -lo end
  local carry = math.floor(lo / 1e9)
  return {hi + carry, lo - carry * 1e9}
end
local function plus(a, b)
  local hi, lo = a[1] + b[1], a[2] + b[2]
  local carry = math.floor(lo / 1e9)
  return {hi + carry, lo - carry * 1e9}
end
local function above(a, b)
  if a[1] ~= b[1] then return a[1] > b[1] end
  return a[2] > b[2]
end
local I64_MAX = '9223372036854775807'
"#
    };
}

const RESERVE: &str = concat!(
    money_lua!(),
    r#"
-- KEYS: 1 the reservation, 2 the workflow's open reservations, 3.. the scopes
-- ARGV: 1 decision id, 2 amount, 3 expires ms, 4 retain ms, 5 scope names,
--       6 the decision's description (workflow, outcome, model, deferrable, created, expires),
--       7.. each scope's limit from the rules
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'dup'}
end
local amount = nanos(ARGV[2])
for i = 3, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'extra', 'spent', 'reserved', 'limit')
  local limit = plus(nanos(ARGV[i + 4]), nanos(v[1]))
  if above(plus(plus(nanos(v[2]), nanos(v[3])), amount), limit) then
    return {'over', tostring(i - 2), ARGV[i + 4], v[1] or '0', v[2] or '0', v[3] or '0'}
  end
  if v[4] ~= ARGV[i + 4] then
    redis.call('HSET', KEYS[i], 'limit', ARGV[i + 4])
  end
end
for i = 3, #KEYS do
  redis.call('HINCRBY', KEYS[i], 'reserved', ARGV[2])
end
redis.call('HSET', KEYS[1], 'state', 'reserved', 'amount', ARGV[2], 'scopes', ARGV[5], 'meta', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if #KEYS > 2 then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
return {'ok'}
"#
);

const SETTLE: &str = concat!(
    money_lua!(),
    r#"
-- KEYS: 1 the reservation, 2 the workflow's open reservations, 3 the workflow's ledger stream, 4.. the scopes
-- ARGV: 1 decision id, 2 cost, 3 retain ms, 4 the usage (tokens, failed, when),
--       5 '1' when 6.. describe the decision (it may never have reached this store),
--       6 amount, 7 scope names, 8 the decision's description, 9 the ledger's approximate length cap
local v = redis.call('HMGET', KEYS[1], 'state', 'amount', 'actual', 'meta')
local release = '0'
local meta = v[4]
if not v[1] then
  if ARGV[5] ~= '1' then
    return {'unknown'}
  end
  meta = ARGV[8]
  redis.call('HSET', KEYS[1], 'amount', ARGV[6], 'scopes', ARGV[7], 'meta', meta)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
elseif v[1] == 'settled' then
  return {'settled', v[3] or '0'}
elseif v[1] == 'reserved' then
  release = v[2]
  redis.call('ZREM', KEYS[2], ARGV[1])
end
local cost, top = nanos(ARGV[2]), nanos(I64_MAX)
for i = 4, #KEYS do
  if release ~= '0' then
    redis.call('HINCRBY', KEYS[i], 'reserved', '-' .. release)
  end
  -- Spend saturates at the top of i64 rather than fail half way.
  if above(plus(nanos(redis.call('HGET', KEYS[i], 'spent')), cost), top) then
    redis.call('HSET', KEYS[i], 'spent', I64_MAX)
  else
    redis.call('HINCRBY', KEYS[i], 'spent', ARGV[2])
  end
end
redis.call('HSET', KEYS[1], 'state', 'settled', 'actual', ARGV[2], 'usage', ARGV[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[9], '*', 'k', 'call', 'd', ARGV[1], 'meta', meta or '',
  'cost', ARGV[2], 'usage', ARGV[4])
return {'charged'}
"#
);

/// Reads each expired reservation's scopes from its record. Those keys are
/// not declared, but they carry the same hash tag as KEYS[1], so they are in
/// its slot.
const EXPIRE: &str = r#"
-- KEYS: 1 the workflow's open reservations
-- ARGV: 1 now ms, 2 the workflow's key prefix, 3 the most to release
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local n = 0
for _, id in ipairs(ids) do
  local r = ARGV[2] .. 'r:' .. id
  local v = redis.call('HMGET', r, 'state', 'amount', 'scopes')
  if v[1] == 'reserved' then
    if v[2] ~= '0' then
      for scope in string.gmatch(v[3], '[^\031]+') do
        redis.call('HINCRBY', ARGV[2] .. 's:' .. scope, 'reserved', '-' .. v[2])
      end
    end
    redis.call('HSET', r, 'state', 'expired')
    n = n + 1
  end
  redis.call('ZREM', KEYS[1], id)
end
return n
"#;

const RESOLVE: &str = concat!(
    money_lua!(),
    r#"
-- KEYS: 1 the escalation, 2 its scope
-- ARGV: 1 '1' to approve, 2 nano-USD to add, 3 by, 4 now ms, 5 reason,
--       6 the most approvals may add to one scope in all
local st = redis.call('HGET', KEYS[1], 'state')
if not st then
  return {'unknown'}
end
if st ~= 'pending' then
  return {'resolved', st}
end
local state, added = 'denied', '0'
if ARGV[1] == '1' then
  state, added = 'approved', ARGV[2]
  local extra = redis.call('HGET', KEYS[2], 'extra') or '0'
  if above(plus(nanos(extra), nanos(added)), nanos(ARGV[6])) then
    return {'cap', extra}
  end
  redis.call('HINCRBY', KEYS[2], 'extra', added)
end
redis.call('HSET', KEYS[1], 'state', state, 'resolved_by', ARGV[3], 'resolved_ms', ARGV[4], 'added', added,
  'reason', ARGV[5])
return {'ok'}
"#
);

/// The escalation that applies to a scope, or a new one: atomic, so a scope
/// has at most one pending escalation however many sidecars cross its limit.
const ESCALATE: &str = r#"
-- KEYS: 1 the scope's newest escalation id, 2 the new escalation, 3 the workflow's escalations by time
-- ARGV: 1 the workflow's key prefix, 2 the new id, 3 created ms, 4.. the new escalation's fields
local cur = redis.call('GET', KEYS[1])
if cur then
  local st = redis.call('HGET', ARGV[1] .. 'e:' .. cur, 'state')
  if st == 'pending' or st == 'denied' then
    return {'open', cur}
  end
end
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('SET', KEYS[1], ARGV[2])
return {'created', ARGV[2]}
"#;

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
}

/// A settlement that could not reach Redis yet.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct PendingSettle {
    decision_id: String,
    cost_nanos: i64,
    usage: Usage,
    now_ms: i64,
    /// The decision as this sidecar made it, when it still knew it.
    record: Option<NewReservation>,
}

/// Settlements waiting for Redis, mirrored in an append-only file so that a
/// crash during an outage loses none of them.
struct Journal {
    path: PathBuf,
    pending: Vec<PendingSettle>,
}

impl Journal {
    fn load(path: PathBuf) -> Result<Journal, StoreError> {
        let mut pending = Vec::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                    match serde_json::from_str::<PendingSettle>(line) {
                        Ok(p) => pending.push(p),
                        // A torn last line from a crash mid-append: that
                        // report was never acknowledged.
                        Err(e) => {
                            tracing::warn!(file = %path.display(), line = i + 1, error = %e, "skipping an unreadable journal line")
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot read the Redis journal {}: {e}",
                    path.display()
                )))
            }
        }
        Ok(Journal { path, pending })
    }

    /// Appends one settlement; it is in the file before this returns.
    fn append(&mut self, p: PendingSettle) -> Result<(), StoreError> {
        let fail = |e: std::io::Error| {
            StoreError::Unavailable(format!(
                "Redis is unreachable and the journal {} cannot be written: {e}",
                self.path.display()
            ))
        };
        let mut line = serde_json::to_string(&p).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        line.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(fail)?;
        f.write_all(line.as_bytes()).map_err(fail)?;
        self.pending.push(p);
        Ok(())
    }

    /// Rewrites the file to hold exactly `pending` (atomically, by rename).
    fn rewrite(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut text = String::new();
        for p in &self.pending {
            text.push_str(&serde_json::to_string(p).map_err(std::io::Error::other)?);
            text.push('\n');
        }
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }
}

pub struct RedisStore {
    conn: ConnectionManager,
    cfg: RedisConfig,
    reserve: Script,
    settle: Script,
    expire: Script,
    resolve: Script,
    escalate: Script,
    /// Why the last call that found Redis unreachable failed, for readiness.
    last_error: std::sync::Mutex<Option<String>>,
    /// Decisions this sidecar made recently, so that a ReportUsage can be
    /// priced and settled even if Redis never saw the decision (fail-open,
    /// or a record written in the background) or is down right now.
    recent: crate::recent::Recent<String, Arc<NewReservation>>,
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
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

fn int(v: Option<&Value>) -> i64 {
    v.map(text).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A script's reply as strings.
fn strings(v: Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().map(text).collect(),
        other => vec![text(&other)],
    }
}

/// The field map of an HGETALL reply.
fn fields(v: Value) -> std::collections::HashMap<String, String> {
    match v {
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (text(k), text(v))).collect(),
        Value::Array(items) => items
            .chunks(2)
            .map(|c| (text(&c[0]), c.get(1).map(text).unwrap_or_default()))
            .collect(),
        _ => Default::default(),
    }
}

/// The record of a decision this sidecar made that Redis has not confirmed:
/// enough to price its usage.
fn unconfirmed(r: &NewReservation) -> ReservationRecord {
    ReservationRecord {
        decision_id: r.decision_id.clone(),
        workflow: r.workflow.clone(),
        outcome_id: r.outcome_id.clone(),
        model: r.model.clone(),
        deferrable: r.deferrable,
        amount_nanos: r.amount_nanos,
        state: "reserved".into(),
        actual_nanos: None,
        caller: r.caller.clone(),
        prices: Some(r.prices),
    }
}

/// A decision's description, packed into one field of its record:
/// workflow, outcome, model, deferrable, created and expiry times.
fn meta(r: &NewReservation) -> String {
    let p = &r.prices;
    format!(
        "{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}",
        r.workflow,
        r.outcome_id,
        r.model,
        u8::from(r.deferrable),
        r.now_ms,
        r.expires_ms,
        u8::from(r.downgraded),
        r.labels,
        r.caller,
        p.input_nanos_per_mtok,
        p.cached_input_nanos_per_mtok,
        p.output_nanos_per_mtok,
        p.batch_discount_bp
    )
}

/// The caller and prices in a decision's description (fields 8 to 12),
/// `None` for prices in records older than them.
fn meta_caller_prices(meta: &str) -> (String, Option<crate::rules::Prices>) {
    let f: Vec<&str> = meta.split(SEP).collect();
    let caller = f.get(8).copied().unwrap_or_default().to_string();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
    let prices = match (n(9), n(10), n(11), f.get(12).and_then(|v| v.parse::<u32>().ok())) {
        (Some(input), Some(cached), Some(output), Some(bp)) => Some(crate::rules::Prices {
            input_nanos_per_mtok: input,
            cached_input_nanos_per_mtok: cached,
            output_nanos_per_mtok: output,
            batch_discount_bp: bp,
        }),
        _ => None,
    };
    (caller, prices)
}

/// A ledger stream entry's fields.
fn entry_fields(v: &Value) -> Option<std::collections::HashMap<String, String>> {
    match v {
        Value::Array(parts) if parts.len() == 2 => Some(fields(parts[1].clone())),
        _ => None,
    }
}

/// The call a ledger entry records, if it is one.
fn call_of(f: &std::collections::HashMap<String, String>) -> Option<CallRecord> {
    if f.get("k").map(String::as_str) != Some("call") {
        return None;
    }
    let meta: Vec<&str> = f.get("meta")?.split(SEP).collect();
    let usage: Vec<&str> = f.get("usage")?.split(SEP).collect();
    let m = |i: usize| meta.get(i).copied().unwrap_or_default();
    let u = |i: usize| usage.get(i).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
    Some(CallRecord {
        decision_id: f.get("d")?.clone(),
        workflow: m(0).to_string(),
        outcome_id: m(1).to_string(),
        model: m(2).to_string(),
        created_ms: m(4).parse().ok()?,
        settled_ms: u(4),
        cost_nanos: f.get("cost")?.parse().ok()?,
        input_tokens: u(0) as u64,
        cached_input_tokens: u(1) as u64,
        output_tokens: u(2) as u64,
        failed: u(3) == 1,
        downgraded: m(6) == "1",
        labels: m(7).to_string(),
    })
}

/// The workflow a scope key belongs to: keys are `<workflow>|…`.
fn workflow_of(scope: &str) -> &str {
    scope.split('|').next().unwrap_or(scope)
}

impl RedisStore {
    /// Connects (lazily: a Redis that is down at start is retried on every
    /// call) and loads the journal left by an earlier run.
    pub async fn connect(cfg: RedisConfig) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(cfg.url.as_str()).map_err(|e| {
            StoreError::Unavailable(format!(
                "--redis-url `{}` is not a Redis URL ({e}); use redis://host:port",
                redact_url(&cfg.url)
            ))
        })?;
        let mc = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, mc).map_err(unavailable)?;
        let journal = Journal::load(cfg.journal.clone())?;
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
        Ok(RedisStore {
            conn,
            reserve: Script::new(RESERVE),
            settle: Script::new(SETTLE),
            expire: Script::new(EXPIRE),
            resolve: Script::new(RESOLVE),
            escalate: Script::new(ESCALATE),
            last_error: std::sync::Mutex::new(None),
            recent,
            journal: tokio::sync::Mutex::new(journal),
            degraded: AtomicBool::new(false),
            open_admitted: AtomicI64::new(0),
            unavailable_total: AtomicU64::new(0),
            fail_open_total: AtomicU64::new(0),
            journal_pending: AtomicU64::new(pending as u64),
            workflows_seen: Default::default(),
            cfg,
        })
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
                Err(StoreError::Unavailable(m)) if attempt == 0 && m.contains("NOSCRIPT") => {
                    let mut c = self.conn.clone();
                    self.bounded(script.prepare_invoke().load_async(&mut c)).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Unavailable("redis: script could not be loaded".into()))
    }

    async fn reserve_remote(&self, r: &NewReservation) -> Result<Reserved, StoreError> {
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
        inv.arg(&r.decision_id)
            .arg(r.amount_nanos)
            .arg(r.expires_ms)
            .arg(RETAIN_MS)
            .arg(&joined)
            .arg(meta(r));
        for s in &r.scopes {
            inv.arg(s.limit_nanos);
        }
        let mut pipe = redis::pipe();
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
        pipe.invoke_script(&inv);
        let reply = strings(self.pipeline_with_script(&pipe, &self.reserve).await?);
        if new_workflow {
            self.known_workflows().insert(r.workflow.clone());
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
            .key(format!("{tag}events"));
        for s in &scopes {
            inv.key(format!("{tag}s:{s}"));
        }
        let u = &p.usage;
        let usage = format!(
            "{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}",
            u.input_tokens,
            u.cached_input_tokens,
            u.output_tokens,
            u8::from(u.failed),
            p.now_ms
        );
        inv.arg(&p.decision_id).arg(p.cost_nanos).arg(RETAIN_MS).arg(usage);
        match &p.record {
            Some(r) => {
                inv.arg("1")
                    .arg(r.amount_nanos)
                    .arg(scopes.join(&SEP.to_string()))
                    .arg(meta(r));
            }
            None => {
                inv.arg("0").arg("0").arg("").arg("");
            }
        }
        inv.arg(LEDGER_MAXLEN);
        let mut pipe = redis::pipe();
        pipe.invoke_script(&inv);
        let reply = strings(self.pipeline_with_script(&pipe, &self.settle).await?);
        match reply.first().map(String::as_str) {
            Some("charged") => Ok(Settled::Charged {
                cost_nanos: p.cost_nanos,
            }),
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
            state: s("state"),
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

#[async_trait::async_trait]
impl BudgetStore for RedisStore {
    async fn reserve(&self, r: &NewReservation) -> Result<Reserved, StoreError> {
        match self.reserve_remote(r).await {
            Ok(Reserved::Ok) => {
                self.recent.insert(r.decision_id.clone(), Arc::new(r.clone()));
                Ok(Reserved::Ok)
            }
            Err(StoreError::Unavailable(why)) => self.fail_open(r, why),
            other => other,
        }
    }

    fn record_detached(&self, r: NewReservation) {
        // Remembered here first, so a ReportUsage that overtakes the write
        // still settles (the settle script creates the record if needed).
        let r = Arc::new(r);
        self.recent.insert(r.decision_id.clone(), r.clone());
        let (conn, reserve, tag, index) = (
            self.conn.clone(),
            self.reserve.clone(),
            self.tag(&r.workflow),
            self.index_key(&r.decision_id),
        );
        tokio::spawn(async move {
            let mut c = conn;
            let mut inv = reserve.prepare_invoke();
            inv.key(format!("{tag}r:{}", r.decision_id))
                .key(format!("{tag}open"))
                .arg(&r.decision_id)
                .arg(r.amount_nanos)
                .arg(r.expires_ms)
                .arg(RETAIN_MS)
                .arg("")
                .arg(meta(&r));
            let set = redis::cmd("SET")
                .arg(&index)
                .arg(&r.workflow)
                .arg("PX")
                .arg(RETAIN_MS)
                .query_async::<()>(&mut c)
                .await;
            let run = match set {
                Ok(()) => inv.invoke_async::<Value>(&mut c).await.map(drop),
                Err(e) => Err(e),
            };
            if let Err(e) = run {
                tracing::debug!(error = %e, decision = %r.decision_id, "recording a decision without a budget in Redis failed; its ReportUsage will create it");
            }
        });
    }

    async fn settle(&self, decision_id: &str, cost: i64, usage: &Usage, now_ms: i64) -> Result<Settled, StoreError> {
        let p = PendingSettle {
            decision_id: decision_id.to_string(),
            cost_nanos: cost,
            usage: *usage,
            now_ms,
            record: self.recent.get(decision_id).map(|r| (*r).clone()),
        };
        // Settlements keep their order behind any that wait in the journal.
        if self.journal.lock().await.pending.is_empty() {
            match self.settle_remote(&p).await {
                Err(StoreError::Unavailable(why)) => {
                    tracing::warn!(decision = %decision_id, error = %why, "Redis unreachable: ReportUsage journaled for replay");
                }
                other => return other,
            }
        }
        let mut j = self.journal.lock().await;
        j.append(p)?;
        self.journal_pending.store(j.pending.len() as u64, Ordering::Relaxed);
        Ok(Settled::Charged { cost_nanos: cost })
    }

    async fn expire(&self, now_ms: i64) -> Result<u64, StoreError> {
        // Maintenance: replay what waits in the journal, then release
        // expired reservations workflow by workflow.
        self.replay().await?;
        // Re-add workflows to the set on the next reservation, in case Redis
        // lost it (a restart without persistence): one SADD per workflow per
        // sweep.
        self.known_workflows().clear();
        let mut c = self.conn.clone();
        let key = self.workflows_key();
        let workflows: Vec<String> = self
            .bounded(async move { redis::cmd("SMEMBERS").arg(key).query_async(&mut c).await })
            .await?;
        let mut released = 0u64;
        for wf in workflows {
            let tag = self.tag(&wf);
            let mut inv = self.expire.prepare_invoke();
            inv.key(format!("{tag}open")).arg(now_ms).arg(&tag).arg(EXPIRE_BATCH);
            let mut pipe = redis::pipe();
            pipe.invoke_script(&inv);
            released += int(Some(&self.pipeline_with_script(&pipe, &self.expire).await?)) as u64;
        }
        if self.degraded.swap(false, Ordering::Relaxed) {
            let admitted = self.open_admitted.swap(0, Ordering::AcqRel);
            tracing::info!(admitted_while_open = %format_usd(admitted), "Redis is reachable again; budgets are enforced there");
        }
        Ok(released)
    }

    async fn scope(&self, key: &str) -> Result<ScopeState, StoreError> {
        let k = format!("{}s:{key}", self.tag(workflow_of(key)));
        let mut c = self.conn.clone();
        let v: Vec<Option<i64>> = self
            .bounded(async move {
                redis::cmd("HMGET")
                    .arg(k)
                    .arg("limit")
                    .arg("extra")
                    .arg("spent")
                    .arg("reserved")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let n = |i: usize| v.get(i).copied().flatten().unwrap_or(0);
        Ok(ScopeState {
            limit_nanos: n(0).saturating_add(n(1)),
            spent_nanos: n(2),
            reserved_nanos: n(3),
            extra_nanos: n(1),
        })
    }

    async fn reservation(&self, decision_id: &str) -> Result<Option<ReservationRecord>, StoreError> {
        let local = self.recent.get(decision_id);
        let workflow = match &local {
            Some(r) => Some(r.workflow.clone()),
            None => self.locate(decision_id).await?.map(|(wf, _)| wf),
        };
        let Some(workflow) = workflow else { return Ok(None) };
        let key = format!("{}r:{decision_id}", self.tag(&workflow));
        let mut c = self.conn.clone();
        let got = self
            .bounded(async move { redis::cmd("HGETALL").arg(key).query_async::<Value>(&mut c).await })
            .await;
        let f = match (got, &local) {
            (Ok(v), _) => fields(v),
            // Down, but this sidecar made the decision: its record is enough
            // to price the usage (which is then journaled).
            (Err(StoreError::Unavailable(_)), Some(r)) => return Ok(Some(unconfirmed(r))),
            (Err(e), _) => return Err(e),
        };
        if f.is_empty() {
            // Not (yet) in Redis, but made here: a detached record in flight
            // or a fail-open admission.
            return Ok(local.as_deref().map(unconfirmed));
        }
        let n = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok());
        let meta = f.get("meta").map(String::as_str).unwrap_or_default();
        let (caller, prices) = meta_caller_prices(meta);
        let mut m = meta.split(SEP);
        let mut next = || m.next().unwrap_or_default().to_string();
        Ok(Some(ReservationRecord {
            decision_id: decision_id.to_string(),
            workflow: next(),
            outcome_id: next(),
            model: next(),
            deferrable: next() == "1",
            amount_nanos: n("amount").unwrap_or(0),
            state: f.get("state").cloned().unwrap_or_default(),
            actual_nanos: n("actual"),
            caller,
            prices,
        }))
    }

    async fn escalate(&self, e: &Escalation) -> Result<Escalation, StoreError> {
        let tag = self.tag(&e.workflow);
        let fields: [(&str, String); 13] = [
            ("workflow", e.workflow.clone()),
            ("scope", e.scope.clone()),
            ("outcome", e.outcome_id.clone()),
            ("caller", e.caller.clone()),
            ("amount", e.amount_nanos.to_string()),
            ("model", e.model.clone()),
            ("state", e.state.clone()),
            ("created", e.created_ms.to_string()),
            ("resolved_by", e.resolved_by.clone()),
            ("resolved_ms", e.resolved_ms.to_string()),
            ("added", e.added_nanos.to_string()),
            ("reason", e.reason.clone()),
            ("id", e.id.clone()),
        ];
        let mut inv = self.escalate.prepare_invoke();
        inv.key(format!("{tag}el:{}", e.scope))
            .key(format!("{tag}e:{}", e.id))
            .key(format!("{tag}esc"))
            .arg(&tag)
            .arg(&e.id)
            .arg(e.created_ms);
        for (k, v) in &fields {
            inv.arg(*k).arg(v);
        }
        let mut pipe = redis::pipe();
        pipe.invoke_script(&inv);
        let reply = strings(self.pipeline_with_script(&pipe, &self.escalate).await?);
        match (reply.first().map(String::as_str), reply.get(1)) {
            (Some("created"), _) => {
                // The index outside the workflow's slot, for resolving by id
                // alone (resolve also finds it without, by the workflows set).
                let mut pipe = redis::pipe();
                pipe.cmd("SET")
                    .arg(self.escalation_index(&e.id))
                    .arg(&e.workflow)
                    .ignore()
                    .cmd("SADD")
                    .arg(self.workflows_key())
                    .arg(&e.workflow)
                    .ignore();
                let mut c = self.conn.clone();
                self.bounded(async move { pipe.query_async::<()>(&mut c).await })
                    .await?;
                Ok(e.clone())
            }
            (Some("open"), Some(id)) => self
                .escalation_at(&e.workflow, id)
                .await?
                .ok_or_else(|| StoreError::UnknownEscalation(id.clone())),
            _ => Err(StoreError::Unavailable(format!("redis: unexpected reply {reply:?}"))),
        }
    }

    async fn record_outcome(&self, o: &OutcomeEvent) -> Result<(), StoreError> {
        let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
        self.append(
            &o.workflow,
            &[
                ("k", "outcome".to_string()),
                ("o", o.outcome_id.clone()),
                ("s", o.status.name().to_string()),
                ("v", opt(o.value_usd)),
                ("h", opt(o.human_minutes)),
                ("at", o.at_ms.to_string()),
            ],
        )
        .await
    }

    async fn record_feedback(&self, f: &FeedbackEvent) -> Result<(), StoreError> {
        self.append(
            &f.workflow,
            &[
                ("k", "feedback".to_string()),
                ("d", f.decision_id.clone()),
                ("m", f.model.clone()),
                ("a", u8::from(f.accepted).to_string()),
                ("at", f.at_ms.to_string()),
            ],
        )
        .await
    }

    async fn ledger(&self, workflow: Option<&str>, since_ms: i64) -> Result<Ledger, StoreError> {
        let workflows = self.workflows(workflow).await?;
        let mut ledger = Ledger::default();
        for wf in workflows {
            let key = format!("{}events", self.tag(&wf));
            // Entry IDs start with the append time in ms: a call made since
            // `since_ms` was settled since then too.
            let mut start = format!("{}", since_ms.max(0));
            loop {
                let (mut c, k, from) = (self.conn.clone(), key.clone(), start.clone());
                let page: Vec<Value> = self
                    .bounded(async move {
                        redis::cmd("XRANGE")
                            .arg(k)
                            .arg(from)
                            .arg("+")
                            .arg("COUNT")
                            .arg(LEDGER_PAGE)
                            .query_async(&mut c)
                            .await
                    })
                    .await?;
                for entry in &page {
                    let Some(f) = entry_fields(entry) else { continue };
                    let at = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                    match f.get("k").map(String::as_str) {
                        Some("call") => ledger.calls.extend(call_of(&f).filter(|c| c.created_ms >= since_ms)),
                        Some("outcome") => {
                            ledger
                                .outcomes
                                .extend(
                                    f.get("s")
                                        .and_then(|s| OutcomeStatus::parse(s))
                                        .map(|status| OutcomeEvent {
                                            workflow: wf.clone(),
                                            outcome_id: f.get("o").cloned().unwrap_or_default(),
                                            status,
                                            value_usd: f.get("v").and_then(|v| v.parse().ok()),
                                            human_minutes: f.get("h").and_then(|v| v.parse().ok()),
                                            at_ms: at("at"),
                                        }),
                                )
                        }
                        Some("feedback") => ledger.feedback.push(FeedbackEvent {
                            workflow: wf.clone(),
                            decision_id: f.get("d").cloned().unwrap_or_default(),
                            model: f.get("m").cloned().unwrap_or_default(),
                            accepted: f.get("a").map(String::as_str) == Some("1"),
                            at_ms: at("at"),
                        }),
                        _ => {}
                    }
                }
                let last = page.last().and_then(|e| match e {
                    Value::Array(parts) => parts.first().map(text),
                    _ => None,
                });
                match last {
                    // The next page starts after the last entry read.
                    Some(last) if page.len() == LEDGER_PAGE => start = format!("({last}"),
                    _ => break,
                }
            }
        }
        ledger
            .calls
            .sort_by(|a, b| (a.created_ms, &a.decision_id).cmp(&(b.created_ms, &b.decision_id)));
        Ok(ledger)
    }

    async fn append_learning(&self, workflow: &str, window: u64, events: &[&LearnEvent]) -> Result<(), StoreError> {
        let key = format!("{}learn", self.tag(workflow));
        let mut pipe = redis::pipe();
        for e in events {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(window)
                .arg("*")
                .arg("b")
                .arg(e.encode_body())
                .ignore();
        }
        let mut c = self.conn.clone();
        self.bounded(async move { pipe.query_async::<()>(&mut c).await }).await
    }

    async fn learning_since(
        &self,
        workflow: &str,
        cursor: &str,
        max: usize,
    ) -> Result<Vec<(String, Option<LearnEvent>)>, StoreError> {
        let key = format!("{}learn", self.tag(workflow));
        let from = if cursor.is_empty() {
            "-".to_string()
        } else {
            format!("({cursor}")
        };
        let mut c = self.conn.clone();
        let page: Vec<Value> = self
            .bounded(async move {
                redis::cmd("XRANGE")
                    .arg(key)
                    .arg(from)
                    .arg("+")
                    .arg("COUNT")
                    .arg(max)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let mut out = Vec::with_capacity(page.len());
        for entry in &page {
            let Value::Array(parts) = entry else { continue };
            let (Some(id), Some(Value::Array(kv))) = (parts.first(), parts.get(1)) else {
                continue;
            };
            let id = text(id);
            let body = kv.chunks(2).find_map(|p| match p {
                [k, Value::BulkString(b)] if text(k) == "b" => Some(b.as_slice()),
                _ => None,
            });
            out.push((id, body.and_then(|b| LearnEvent::decode_body(workflow, b))));
        }
        Ok(out)
    }

    async fn list_escalations(&self, workflow: Option<&str>) -> Result<Vec<Escalation>, StoreError> {
        let workflows = self.workflows(workflow).await?;
        let mut out = Vec::new();
        for wf in workflows {
            let key = format!("{}esc", self.tag(&wf));
            let mut c = self.conn.clone();
            let ids: Vec<String> = self
                .bounded(async move { redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).query_async(&mut c).await })
                .await?;
            for id in ids {
                out.extend(self.escalation_at(&wf, &id).await?);
            }
        }
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(out)
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
        let mut c = self.conn.clone();
        let key = self.escalation_index(id);
        let wf: Option<String> = self
            .bounded(async move { redis::cmd("GET").arg(key).query_async(&mut c).await })
            .await?;
        let wf = match wf {
            Some(wf) => wf,
            // The index is written just after the escalation; a sidecar that
            // died in between left none, so look in every workflow.
            None => {
                let mut found = None;
                for wf in self.workflows(None).await? {
                    if self.escalation_at(&wf, id).await?.is_some() {
                        found = Some(wf);
                        break;
                    }
                }
                found.ok_or_else(|| StoreError::UnknownEscalation(id.to_string()))?
            }
        };
        let e = self
            .escalation_at(&wf, id)
            .await?
            .ok_or_else(|| StoreError::UnknownEscalation(id.to_string()))?;
        let tag = self.tag(&wf);
        let mut inv = self.resolve.prepare_invoke();
        inv.key(format!("{tag}e:{id}"))
            .key(format!("{tag}s:{}", e.scope))
            .arg(if approve { "1" } else { "0" })
            .arg(add_nanos)
            .arg(by)
            .arg(now_ms)
            .arg(reason)
            .arg(crate::money::MAX_SCOPE_EXTRA_NANOS);
        if approve && add_nanos <= 0 {
            return Err(StoreError::InvalidAmount(format!(
                "an approval must add a positive amount, not {add_nanos} nano-USD"
            )));
        }
        let mut pipe = redis::pipe();
        pipe.invoke_script(&inv);
        let reply = strings(self.pipeline_with_script(&pipe, &self.resolve).await?);
        match reply.first().map(String::as_str) {
            Some("ok") => {}
            Some("cap") => {
                let extra = reply.get(1).and_then(|s| s.parse().ok()).unwrap_or(i64::MAX);
                return Err(super::extra_after_approval(&e.scope, extra, add_nanos)
                    .err()
                    .unwrap_or_else(|| StoreError::InvalidAmount("the approval is over the cap".into())));
            }
            Some("resolved") => {
                return Err(StoreError::AlreadyResolved(
                    id.to_string(),
                    reply.get(1).cloned().unwrap_or_default(),
                ))
            }
            _ => return Err(StoreError::UnknownEscalation(id.to_string())),
        }
        self.escalation_at(&wf, id)
            .await?
            .ok_or_else(|| StoreError::UnknownEscalation(id.to_string()))
    }

    fn health(&self) -> StoreHealth {
        // Failing open, the sidecar still serves budgeted calls (up to its
        // cap): only a sidecar that fails closed cannot.
        let failing = (self.degraded.load(Ordering::Relaxed) && self.cfg.fail_open_cap_nanos.is_none()).then(|| {
            self.last_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
                .unwrap_or_else(|| "Redis is unreachable".into())
        });
        StoreHealth {
            failing,
            unavailable_total: self.unavailable_total.load(Ordering::Relaxed),
            fail_open_admitted_total: self.fail_open_total.load(Ordering::Relaxed),
            journal_pending: self.journal_pending.load(Ordering::Relaxed),
        }
    }
}
