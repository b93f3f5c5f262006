//! Budgets: reserve the estimated cost at Route, settle it to the actual cost
//! at ReportUsage, and step down, escalate or deny at the thresholds.
//!
//! Every budget is a set of *scopes*, each a counter of spent and reserved
//! nano-dollars against a limit:
//!
//! - the workflow's period: `budget-demo|day|2026-11-25@UTC`. The period is in
//!   the key, so a new period is a new counter: rollover is never a reset that
//!   could overwrite spend, and concurrent "resets" cannot race;
//! - one outcome ID: `budget-demo|outcome|ticket-4711`, capping a runaway
//!   agent episode over its whole life;
//! - a label value in the period: `budget-demo|label|team=search|day|…`.
//!
//! A reservation is made on all of a call's scopes atomically, or on none: the
//! store checks `spent + reserved + amount <= limit` and increments in one
//! transaction (SQLite) or one script (Redis), so there is no
//! check-then-increment race. Settling is idempotent by `decision_id`.
//! Reservations never settled expire and release their amount.

pub mod redis;
pub mod sqlite;

use std::sync::Arc;

use jiff::civil::Weekday;
use jiff::Timestamp;

use crate::money::format_usd;
use crate::rules::{Budget, OnLimit, Period, Prices, Workflow};

/// One scope a call is charged to, with its limit now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScopeCharge {
    pub key: String,
    pub limit_nanos: i64,
}

/// A reservation to make.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewReservation {
    pub decision_id: String,
    pub workflow: String,
    pub outcome_id: String,
    pub model: String,
    pub deferrable: bool,
    pub amount_nanos: i64,
    pub scopes: Vec<ScopeCharge>,
    pub now_ms: i64,
    pub expires_ms: i64,
    /// Route stepped the tier down for the budget's soft threshold.
    #[serde(default)]
    pub downgraded: bool,
    /// The request's labels, canonical: `k=v` pairs sorted, joined by `\u{1e}`.
    #[serde(default)]
    pub labels: String,
    /// The identity that routed the call: only it (or an admin) may settle it.
    #[serde(default)]
    pub caller: String,
    /// The routed model's prices: the call is settled at these, whatever
    /// the rules say by the time its usage arrives.
    #[serde(default)]
    pub prices: Prices,
}

/// Labels in the canonical form the ledger keeps.
pub fn canonical_labels<'a>(labels: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut pairs: Vec<String> = labels.map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join("\u{1e}")
}

/// A scope's counters. `limit_nanos` includes `extra_nanos`, the amounts
/// added by approvals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScopeState {
    pub limit_nanos: i64,
    pub spent_nanos: i64,
    pub reserved_nanos: i64,
    pub extra_nanos: i64,
}

impl ScopeState {
    /// What is left; negative when an overrun took spend past the limit.
    pub fn remaining(&self) -> i64 {
        self.limit_nanos
            .saturating_sub(self.spent_nanos)
            .saturating_sub(self.reserved_nanos)
    }

    /// Whether reserving `amount` more stays within the limit (in 128 bits:
    /// no sum of stored amounts can wrap here).
    pub fn fits(&self, amount: i64) -> bool {
        self.spent_nanos as i128 + self.reserved_nanos as i128 + amount as i128 <= self.limit_nanos as i128
    }

    /// A period scope as the budget sees it: the rules' limit (which every
    /// reservation writes back to the store) plus what approvals added this
    /// period. A store with no row yet reads as nothing spent.
    pub fn of_period(budget: &Budget, stored: ScopeState) -> ScopeState {
        ScopeState {
            limit_nanos: budget.limit_nanos.saturating_add(stored.extra_nanos),
            ..stored
        }
    }

    /// Whether spent plus reserved has reached the budget's soft threshold.
    pub fn past_soft_threshold(&self, budget: &Budget) -> bool {
        let used = (self.spent_nanos + self.reserved_nanos) as i128;
        budget
            .soft_threshold_bp
            .is_some_and(|bp| used * 10_000 >= self.limit_nanos as i128 * bp as i128)
    }
}

/// The answer to a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    Ok,
    /// Reserving would cross this scope's limit; nothing was reserved.
    OverLimit {
        scope: String,
        state: ScopeState,
    },
}

/// What a call actually used.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub failed: bool,
}

/// A reservation as stored.
#[derive(Debug, Clone)]
pub struct ReservationRecord {
    pub decision_id: String,
    pub workflow: String,
    pub outcome_id: String,
    pub model: String,
    pub deferrable: bool,
    pub amount_nanos: i64,
    /// `reserved`, `settled` or `expired`.
    pub state: String,
    pub actual_nanos: Option<i64>,
    /// The identity that routed it (empty in records older than this field).
    pub caller: String,
    /// The prices it was routed at (`None` in records older than this field).
    pub prices: Option<Prices>,
}

/// The answer to a settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Charged now.
    Charged { cost_nanos: i64 },
    /// Already settled by an earlier report: nothing charged again.
    AlreadySettled { cost_nanos: i64 },
}

/// An escalation: a call that hit a hard limit and waits for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escalation {
    pub id: String,
    pub workflow: String,
    pub scope: String,
    pub outcome_id: String,
    pub caller: String,
    pub amount_nanos: i64,
    pub model: String,
    /// `pending`, `approved` or `denied`.
    pub state: String,
    pub created_ms: i64,
    pub resolved_by: String,
    pub resolved_ms: i64,
    pub added_nanos: i64,
    pub reason: String,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the budget store is unavailable: {0}")]
    Unavailable(String),
    #[error("no decision `{0}`: quote the decision_id that Route returned")]
    UnknownDecision(String),
    #[error("no escalation `{0}`; list them with `switchyard escalations list`")]
    UnknownEscalation(String),
    #[error("escalation `{0}` is already {1}")]
    AlreadyResolved(String, String),
    /// An amount the store will not take; the message says the bound.
    #[error("{0}")]
    InvalidAmount(String),
}

/// The budget store: embedded SQLite for one sidecar, Redis for a fleet. The
/// conformance tests in `tests` run against every implementation.
#[async_trait::async_trait]
pub trait BudgetStore: Send + Sync {
    /// Reserves on every scope, or on none if any would cross its limit.
    async fn reserve(&self, r: &NewReservation) -> Result<Reserved, StoreError>;
    /// Records a decision that no limit applies to (no scopes), without
    /// waiting for it to be durable. It must be ordered before any later
    /// call on the same store, so that its ReportUsage finds it.
    fn record_detached(&self, r: NewReservation);
    /// Waits until every decision recorded so far is durable (at shutdown).
    async fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Settles a reservation to its actual cost; a repeat is not charged twice.
    async fn settle(
        &self,
        decision_id: &str,
        cost_nanos: i64,
        usage: &Usage,
        now_ms: i64,
    ) -> Result<Settled, StoreError>;
    /// Releases reservations that expired by `now_ms`; returns how many.
    async fn expire(&self, now_ms: i64) -> Result<u64, StoreError>;
    async fn scope(&self, key: &str) -> Result<ScopeState, StoreError>;
    async fn reservation(&self, decision_id: &str) -> Result<Option<ReservationRecord>, StoreError>;
    /// The escalation that applies to `e.scope`, atomically: the newest one
    /// there if it is pending or denied, else `e`, created. So a scope has at
    /// most one pending escalation, however many calls cross its limit at once.
    async fn escalate(&self, e: &Escalation) -> Result<Escalation, StoreError>;
    async fn list_escalations(&self, workflow: Option<&str>) -> Result<Vec<Escalation>, StoreError>;
    /// Approves (adding `add_nanos` to the scope's limit) or denies. An
    /// approval that would take the scope's additions past
    /// [`crate::money::MAX_SCOPE_EXTRA_NANOS`] is refused (`InvalidAmount`).
    async fn resolve_escalation(
        &self,
        id: &str,
        approve: bool,
        add_nanos: i64,
        by: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Escalation, StoreError>;
    /// Appends an outcome event (durable before it returns).
    async fn record_outcome(&self, o: &crate::outcome::ledger::OutcomeEvent) -> Result<(), StoreError>;
    /// Appends a feedback event (durable before it returns).
    async fn record_feedback(&self, f: &crate::outcome::ledger::FeedbackEvent) -> Result<(), StoreError>;
    /// Settled calls made at or after `since_ms`, and outcome and feedback
    /// events recorded at or after it, of one workflow or all.
    async fn ledger(&self, workflow: Option<&str>, since_ms: i64)
        -> Result<crate::outcome::ledger::Ledger, StoreError>;
    /// Appends labelled calls of `workflow` (durable before it returns),
    /// keeping about the newest `window` of them.
    async fn append_learning(
        &self,
        workflow: &str,
        window: u64,
        events: &[&crate::outcome::learn::LearnEvent],
    ) -> Result<(), StoreError>;
    /// Labelled calls of `workflow` after `cursor` (`""`: from the oldest
    /// kept), in append order, at most `max`, each with its own cursor
    /// (`None`: a damaged entry, to skip).
    async fn learning_since(
        &self,
        workflow: &str,
        cursor: &str,
        max: usize,
    ) -> Result<Vec<(String, Option<crate::outcome::learn::LearnEvent>)>, StoreError>;
    fn health(&self) -> StoreHealth {
        StoreHealth::default()
    }
}

pub type SharedStore = Arc<dyn BudgetStore>;

/// How a store has fared, for /metrics and readiness. Stores with nothing to
/// say report zeros.
#[derive(Debug, Clone, Default)]
pub struct StoreHealth {
    /// Store calls that failed because the store could not serve them
    /// (Redis unreachable; SQLite unable to read or write, a full disk say).
    pub unavailable_total: u64,
    /// Why the store cannot serve budgeted calls now, if it cannot: set by a
    /// failed write, cleared by the next write that succeeds.
    pub failing: Option<String>,
    /// Calls admitted under the fail-open cap while the store was unreachable.
    pub fail_open_admitted_total: u64,
    /// Settlements journaled locally, waiting for the store.
    pub journal_pending: u64,
}

/// A scope's approved additions after approving `add` more, or why not: the
/// additions of one scope stay within [`crate::money::MAX_SCOPE_EXTRA_NANOS`]
/// in all, so no limit a store holds can overflow.
pub fn extra_after_approval(scope: &str, extra: i64, add: i64) -> Result<i64, StoreError> {
    use crate::money::{format_usd_exact, MAX_SCOPE_EXTRA_NANOS};
    extra
        .checked_add(add)
        .filter(|t| (0..=MAX_SCOPE_EXTRA_NANOS).contains(t))
        .ok_or_else(|| {
            StoreError::InvalidAmount(format!(
                "approving {} more on `{scope}` would take what approvals added there past {} in all \
                 (already {}); raise the budget in the rules instead",
                format_usd_exact(add),
                format_usd_exact(MAX_SCOPE_EXTRA_NANOS),
                format_usd_exact(extra)
            ))
        })
}

/// The first day of the calendar period containing the date.
fn period_start_date(period: Period, date: jiff::civil::Date) -> jiff::civil::Date {
    match period {
        Period::Day => date,
        Period::Week => {
            let back = date.weekday().since(Weekday::Monday) as i64;
            date.checked_sub(jiff::Span::new().days(back)).unwrap_or(date)
        }
        Period::Month => date.first_of_month(),
    }
}

fn period_name(period: Period) -> &'static str {
    match period {
        Period::Day => "day",
        Period::Week => "week",
        Period::Month => "month",
    }
}

/// The calendar period containing `now`, in the budget's time zone, as a key
/// fragment such as `day|2026-11-25@Europe/Berlin`.
pub fn period_key(budget: &Budget, now: Timestamp) -> String {
    let start = period_start_date(budget.period, budget.timezone.to_datetime(now).date());
    format!("{}|{start}@{}", period_name(budget.period), budget.timezone_name)
}

/// The start and end of the calendar period containing `now` in `tz`.
pub fn period_bounds(period: Period, tz: &jiff::tz::TimeZone, now: Timestamp) -> (Timestamp, Timestamp) {
    let start = period_start_date(period, tz.to_datetime(now).date());
    let next = match period {
        Period::Day => start.checked_add(jiff::Span::new().days(1)),
        Period::Week => start.checked_add(jiff::Span::new().days(7)),
        Period::Month => start.checked_add(jiff::Span::new().months(1)),
    }
    .unwrap_or(start);
    let at = |d: jiff::civil::Date| {
        tz.to_timestamp(d.to_datetime(jiff::civil::Time::midnight()))
            .unwrap_or(now)
    };
    (at(start), at(next))
}

/// The key of a workflow's current period scope.
pub fn period_scope(workflow: &Workflow, budget: &Budget, now: Timestamp) -> String {
    format!("{}|{}", workflow.name, period_key(budget, now))
}

/// Every scope a call of `workflow` is charged to now.
pub fn scopes_for<'a>(
    workflow: &Workflow,
    outcome_id: &str,
    labels: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    now: Timestamp,
) -> Vec<ScopeCharge> {
    let Some(b) = &workflow.budget else { return Vec::new() };
    let period = period_key(b, now);
    let mut out = vec![ScopeCharge {
        key: format!("{}|{period}", workflow.name),
        limit_nanos: b.limit_nanos,
    }];
    if let (Some(limit), false) = (b.per_outcome_nanos, outcome_id.is_empty()) {
        out.push(ScopeCharge {
            key: format!("{}|outcome|{outcome_id}", workflow.name),
            limit_nanos: limit,
        });
    }
    for lb in &b.labels {
        if labels.clone().any(|(k, v)| k == lb.label && v == lb.value) {
            out.push(ScopeCharge {
                key: format!("{}|label|{}={}|{period}", workflow.name, lb.label, lb.value),
                limit_nanos: lb.limit_nanos,
            });
        }
    }
    out
}

/// Budget enforcement for Route, over any store.
pub struct Budgets {
    pub store: SharedStore,
    /// How long a reservation waits for its ReportUsage before it is released.
    pub reservation_ttl_ms: i64,
    /// The period scopes as last read, plus what this sidecar reserved since:
    /// the soft-threshold check reads this instead of making a store round
    /// trip on every Route.
    view: std::sync::Mutex<std::collections::HashMap<String, (ScopeState, std::time::Instant)>>,
}

/// How long a period scope's state is trusted before it is read again. Other
/// sidecars' spend shows in the soft-threshold check within this time; this
/// sidecar's own reservations show at once.
const VIEW_FRESH: std::time::Duration = std::time::Duration::from_millis(250);

/// What Route may do with a decision, budget-wise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Reserved on every scope: route it.
    Routed,
    /// At a hard limit and the workflow escalates: a person must approve.
    Escalate(Box<Escalation>),
    /// At a hard limit and the workflow denies (or a person denied).
    Denied(String),
}

/// The call Route is about to admit.
pub struct Call<'a> {
    pub decision_id: &'a str,
    pub workflow: &'a Workflow,
    pub outcome_id: &'a str,
    pub labels: Vec<(&'a str, &'a str)>,
    pub model: &'a str,
    pub deferrable: bool,
    pub cost_nanos: i64,
    pub caller: &'a str,
    pub downgraded: bool,
    /// The routed model's prices, kept with the reservation.
    pub prices: Prices,
}

impl Budgets {
    pub fn new(store: SharedStore, reservation_ttl_ms: i64) -> Budgets {
        Budgets {
            store,
            reservation_ttl_ms,
            view: Default::default(),
        }
    }

    fn view(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (ScopeState, std::time::Instant)>> {
        // The map holds plain numbers: a panic elsewhere cannot leave it torn.
        self.view.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets every cached scope state (after an approval raises a limit).
    pub fn refresh_view(&self) {
        self.view().clear();
    }

    /// Whether the workflow's period budget is past its soft threshold, so
    /// that routing should step down a tier. Advisory, not a reservation: it
    /// reads the period scope at most every 250 ms and counts this sidecar's
    /// own reservations in between, so another sidecar's spend may show up to
    /// 250 ms late. A store that cannot be read does not step down: the
    /// reservation that follows fails closed (or open) as configured.
    pub async fn past_soft_threshold(&self, workflow: &Workflow, now: Timestamp) -> Result<bool, StoreError> {
        let Some(b) = workflow.budget.as_ref().filter(|b| b.soft_threshold_bp.is_some()) else {
            return Ok(false);
        };
        let key = period_scope(workflow, b, now);
        let cached = self
            .view()
            .get(&key)
            .filter(|(_, at)| at.elapsed() < VIEW_FRESH)
            .map(|(st, _)| *st);
        let state = match cached {
            Some(st) => st,
            None => {
                let stored = match self.store.scope(&key).await {
                    Ok(st) => st,
                    Err(StoreError::Unavailable(_)) => return Ok(false),
                    Err(e) => return Err(e),
                };
                let st = ScopeState::of_period(b, stored);
                let mut view = self.view();
                if view.len() >= 4096 {
                    view.retain(|_, (_, at)| at.elapsed() < VIEW_FRESH);
                }
                view.insert(key, (st, std::time::Instant::now()));
                st
            }
        };
        Ok(state.past_soft_threshold(b))
    }

    /// What is left of the workflow's period budget as this sidecar last saw
    /// it (no store round trip), for span attributes.
    pub fn remaining_hint(&self, workflow: &Workflow, now: Timestamp) -> Option<i64> {
        let b = workflow.budget.as_ref()?;
        let key = period_scope(workflow, b, now);
        self.view().get(&key).map(|(st, _)| st.remaining())
    }

    /// Counts a reservation this sidecar just made in the cached view.
    fn note_reserved(&self, scopes: &[ScopeCharge], amount: i64) {
        let mut view = self.view();
        for s in scopes {
            if let Some((st, _)) = view.get_mut(&s.key) {
                st.reserved_nanos += amount;
            }
        }
    }

    /// Reserves the call's estimated cost on every scope that applies, or
    /// decides what happens at the limit.
    pub async fn admit(&self, call: &Call<'_>, now: Timestamp) -> Result<Admission, StoreError> {
        let now_ms = now.as_millisecond();
        let scopes = scopes_for(call.workflow, call.outcome_id, call.labels.iter().copied(), now);
        let r = NewReservation {
            decision_id: call.decision_id.to_string(),
            workflow: call.workflow.name.clone(),
            outcome_id: call.outcome_id.to_string(),
            model: call.model.to_string(),
            deferrable: call.deferrable,
            amount_nanos: call.cost_nanos,
            scopes,
            now_ms,
            expires_ms: now_ms + self.reservation_ttl_ms,
            downgraded: call.downgraded,
            labels: canonical_labels(call.labels.iter().copied()),
            caller: call.caller.to_string(),
            prices: call.prices,
        };
        if r.scopes.is_empty() {
            // Nothing to enforce: keep the decision for its ReportUsage, but
            // do not make Route wait for the commit.
            self.store.record_detached(r);
            return Ok(Admission::Routed);
        }
        let (scope, state) = match self.store.reserve(&r).await? {
            Reserved::Ok => {
                self.note_reserved(&r.scopes, r.amount_nanos);
                return Ok(Admission::Routed);
            }
            Reserved::OverLimit { scope, state } => (scope, state),
        };
        let at_limit = format!(
            "budget `{scope}` has {} spent and {} reserved of {}; this call (est. {}) would exceed it",
            format_usd(state.spent_nanos),
            format_usd(state.reserved_nanos),
            format_usd(state.limit_nanos),
            format_usd(call.cost_nanos)
        );
        let escalate = call
            .workflow
            .budget
            .as_ref()
            .is_some_and(|b| b.on_limit == OnLimit::Escalate);
        if !escalate {
            return Ok(Admission::Denied(format!(
                "{at_limit}; the workflow denies at its limit"
            )));
        }
        let fresh = Escalation {
            id: format!("esc-{}", uuid::Uuid::now_v7()),
            workflow: call.workflow.name.clone(),
            scope,
            outcome_id: call.outcome_id.to_string(),
            caller: call.caller.to_string(),
            amount_nanos: call.cost_nanos,
            model: call.model.to_string(),
            state: "pending".into(),
            created_ms: now_ms,
            resolved_by: String::new(),
            resolved_ms: 0,
            added_nanos: 0,
            reason: at_limit.clone(),
        };
        let e = self.store.escalate(&fresh).await?;
        match e.state.as_str() {
            "pending" => {
                if e.id == fresh.id {
                    tracing::warn!(escalation = %e.id, workflow = %e.workflow, scope = %e.scope, "budget limit reached: escalation created");
                }
                Ok(Admission::Escalate(Box::new(e)))
            }
            _ => Ok(Admission::Denied(format!(
                "{at_limit}; escalation {} was denied by {}{}",
                e.id,
                e.resolved_by,
                if e.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", e.reason)
                }
            ))),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// Random bytes for this many decision IDs are drawn from the OS at a time.
const IDS_PER_DRAW: usize = 32;

thread_local! {
    /// OS randomness not yet used, and how much of it is.
    static ID_RANDOM: std::cell::RefCell<([u8; 10 * IDS_PER_DRAW], usize)> =
        const { std::cell::RefCell::new(([0; 10 * IDS_PER_DRAW], 10 * IDS_PER_DRAW)) };
}

/// A new decision ID: a UUIDv7, time-ordered (the ledger reads by it) with 74
/// bits from the OS's random source, which is asked once per 32 IDs instead
/// of once per Route.
pub fn new_decision_id() -> String {
    let ms = now_ms().max(0) as u64;
    ID_RANDOM.with(|cell| {
        let (pool, used) = &mut *cell.borrow_mut();
        if *used == pool.len() {
            if getrandom::fill(pool).is_err() {
                return uuid::Uuid::now_v7().to_string();
            }
            *used = 0;
        }
        let mut bytes = [0u8; 10];
        bytes.copy_from_slice(&pool[*used..*used + 10]);
        // Used bytes are wiped: an ID's randomness is never handed out twice.
        pool[*used..*used + 10].fill(0);
        *used += 10;
        uuid::Builder::from_unix_timestamp_millis(ms, &bytes)
            .into_uuid()
            .to_string()
    })
}

#[cfg(test)]
mod tests;
