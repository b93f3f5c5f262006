//! What the budget stores hold, and the four traits they implement, one
//! concern each:
//!
//! - [`BudgetStore`]: scope counters, reservations and their settlement;
//! - [`EscalationStore`]: requests for a person to approve more;
//! - [`LedgerStore`]: outcome and feedback events, and the ledger reports read;
//! - [`LearningStore`]: the labelled calls the learned model is the fold of,
//!   and the rejections a retry cascades past.
//!
//! Each has a conformance suite in `tests` that every backend passes
//! (`sqlite/`, `redis/`). [`Store`] is all four, for wiring; a use case
//! takes only the trait it needs. [`StoreView`] is the read-only part
//! `explain` uses beside a running server.

pub mod lease;
mod open;
pub mod redis;
pub mod sqlite;

pub use open::{open, open_to_serve, open_view, redis_reader, Location, Opened, ServeOptions};

pub use crate::error::StoreError;

use std::sync::Arc;

use crate::ledger::{FeedbackEvent, Ledger, OutcomeEvent};
use crate::rules::{Budget, Prices};

/// Where a reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReservationState {
    /// Holding its estimate against every scope.
    Reserved,
    /// Charged its actual cost (once, whatever the retries).
    Settled,
    /// Released unreported after the reservation TTL; usage may still settle it.
    Expired,
}

/// Where an escalation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EscalationState {
    /// Waiting for a person; calls against its scope get its ID.
    Pending,
    /// A person added to the scope's limit.
    Approved,
    /// A person refused; calls against its scope are denied.
    Denied,
}

/// The names the stores keep and the API shows for a state, and back.
macro_rules! state_names {
    ($t:ty { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$v => $s),+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($s => Some(Self::$v),)+
                    _ => None,
                }
            }
        }
    };
}

state_names!(ReservationState { Reserved => "reserved", Settled => "settled", Expired => "expired" });
state_names!(EscalationState { Pending => "pending", Approved => "approved", Denied => "denied" });

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
    /// Shared with the identity, so a Route does not copy the name.
    #[serde(default = "no_caller")]
    pub caller: std::sync::Arc<str>,
    /// The routed model's prices: the call is settled at these, whatever
    /// the rules say by the time its usage arrives.
    #[serde(default)]
    pub prices: Prices,
    /// The routed model's tier for the request's task class: a rejection
    /// of the call sends the outcome's next attempt above it.
    #[serde(default)]
    pub tier: u8,
    /// The decision as off-policy estimates need it (an encoded
    /// `outcome::whatif::Snapshot`); empty where nothing was logged.
    #[serde(default)]
    pub snapshot: Vec<u8>,
}

/// How long a decision's snapshot is kept for `whatif`, unless the operator
/// says otherwise (`--decision-retention-days`).
pub const DEFAULT_DECISION_RETENTION_MS: i64 = 30 * 24 * 3600 * 1000;

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
    /// All input, cache reads and writes included.
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    /// Written to the prompt cache; not kept in the ledger (its cost is).
    #[serde(default)]
    pub cache_write_input_tokens: u64,
    pub output_tokens: u64,
    pub failed: bool,
}

fn no_caller() -> std::sync::Arc<str> {
    std::sync::Arc::from("")
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
    pub state: ReservationState,
    pub actual_nanos: Option<i64>,
    /// The identity that routed it (empty in records older than this field).
    pub caller: String,
    /// The prices it was routed at (`None` in records older than this field).
    pub prices: Option<Prices>,
    /// The tier it was routed at (`None` in records older than this field).
    pub tier: Option<u8>,
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
    pub state: EscalationState,
    pub created_ms: i64,
    pub resolved_by: String,
    pub resolved_ms: i64,
    pub added_nanos: i64,
    pub reason: String,
}

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
    /// Routes reserved against this sidecar's lease slices (no round trip).
    pub leased_routes_total: u64,
    /// Lease renewals sent, and those that failed.
    pub lease_renewals_total: u64,
    pub lease_renewals_failed_total: u64,
    /// What this sidecar's slices hold, in nano-dollars.
    pub lease_held_nanos: i64,
    /// Workflows whose acknowledged state the store lost, with why:
    /// budgeted calls of these fail closed until reconciled.
    pub state_lost: Vec<(String, String)>,
}

/// Scope counters and reservations: reserve at Route, settle at ReportUsage.
#[async_trait::async_trait]
pub trait BudgetStore: Send + Sync {
    /// Reserves on every scope, or on none if any would cross its limit.
    async fn reserve(&self, r: &NewReservation) -> Result<Reserved, StoreError>;
    /// Records a decision that no limit applies to (no scopes), without
    /// waiting for it to be durable. It must be ordered before any later
    /// call on the same store, so that its ReportUsage finds it.
    fn record_detached(&self, r: NewReservation);
    /// The store's leased slices, if it leases (`None`: every call
    /// reserves exactly, and the sweep runs every second).
    fn leasing(&self) -> Option<&dyn lease::Leasing> {
        None
    }
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
    fn health(&self) -> StoreHealth {
        StoreHealth::default()
    }
}

/// Escalations: a person approves more, or denies, when a limit is reached.
#[async_trait::async_trait]
pub trait EscalationStore: Send + Sync {
    /// The escalation that applies to `e.scope`, atomically: the newest one
    /// there if it is pending or denied, else `e`, created. So a scope has at
    /// most one pending escalation, however many calls cross its limit at once.
    async fn escalate(&self, e: &Escalation) -> Result<Escalation, StoreError>;
    /// The newest escalation on `scope` if it still applies (pending or
    /// denied), without creating one.
    async fn current_escalation(&self, scope: &str) -> Result<Option<Escalation>, StoreError>;
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
}

/// The identity whose ownership of `r`'s outcome the store records, if any:
/// a keyed caller routing under an outcome. `local` (every caller when no API
/// keys are configured) is an admin and owns nothing, and the operator's own
/// tools (`-`) route nothing real.
pub fn outcome_owner(r: &NewReservation) -> Option<&str> {
    let who: &str = &r.caller;
    (!r.outcome_id.is_empty() && who != crate::audit::LOCAL && who != "-" && !who.is_empty()).then_some(who)
}

/// What an outcome's last record said, when it is recorded again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorOutcome {
    pub status: String,
    /// Who recorded it (empty in records older than this field).
    pub recorded_by: String,
}

/// The ledger: settled calls (from [`BudgetStore::settle`]), outcomes and
/// feedback. Reports are aggregations of it.
#[async_trait::async_trait]
pub trait LedgerStore: Send + Sync {
    /// Appends an outcome event recorded by `recorder` (durable before it
    /// returns), and says what the outcome's last record was, if any.
    async fn record_outcome(&self, o: &OutcomeEvent, recorder: &str) -> Result<Option<PriorOutcome>, StoreError>;
    /// Whether `caller` routed a call under the outcome, among the decisions
    /// the store keeps (their retention).
    async fn outcome_routed_by(&self, workflow: &str, outcome_id: &str, caller: &str) -> Result<bool, StoreError>;
    /// Appends a feedback event (durable before it returns).
    async fn record_feedback(&self, f: &FeedbackEvent) -> Result<(), StoreError>;
    /// Settled calls made at or after `since_ms`, and outcome and feedback
    /// events recorded at or after it, of one workflow or all.
    async fn ledger(&self, workflow: Option<&str>, since_ms: i64) -> Result<Ledger, StoreError>;
    /// How long each decision's snapshot (what `whatif` replays) is kept;
    /// older ones are removed by the store's sweep.
    fn set_decision_retention(&self, retention: std::time::Duration);
}

/// What learning keeps: labelled calls, and the tier each outcome's
/// attempts were rejected at, so that any sidecar (and `explain`) cascades a
/// retry past it.
#[async_trait::async_trait]
pub trait LearningStore: Send + Sync {
    /// Appends labelled calls of `workflow`, each encoded by the learner
    /// (`LearnEvent::encode_body`), durable before it returns, keeping about
    /// the newest `window` of them. The store keeps the bodies as they are.
    async fn append_learning(&self, workflow: &str, window: u64, bodies: &[Vec<u8>]) -> Result<(), StoreError>;
    /// The bodies of labelled calls of `workflow` after `cursor` (`""`: from
    /// the oldest kept), in append order, at most `max`, each with its own
    /// cursor (`None`: an entry without a body, to skip).
    async fn learning_since(&self, workflow: &str, cursor: &str, max: usize) -> Result<LearnPage, StoreError>;
    /// Records that an attempt of the outcome was rejected at `tier`; the
    /// outcome keeps the highest such tier for a week.
    async fn note_rejection(&self, workflow: &str, outcome_id: &str, tier: u8, now_ms: i64) -> Result<(), StoreError>;
    /// The highest tier an attempt of the outcome was rejected at.
    async fn rejected_tier(&self, workflow: &str, outcome_id: &str) -> Result<Option<u8>, StoreError>;
    /// Adds `counts` (Routes per complexity bin; empty adds nothing) to
    /// `workflow`'s histogram under understanding model `model`, and returns
    /// its totals: every sidecar's, where the store is shared.
    async fn merge_score_counts(&self, workflow: &str, model: &str, counts: &[u32]) -> Result<Vec<u64>, StoreError>;
}

/// A page of labelled calls: each entry's cursor and its encoded body
/// (`None`: an entry without one, to skip).
pub type LearnPage = Vec<(String, Option<Vec<u8>>)>;

/// How long an outcome's rejected tier is kept.
pub const REJECTION_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

/// A whole store: what `serve` wires up.
pub trait Store: BudgetStore + EscalationStore + LedgerStore + LearningStore {}

impl<T: BudgetStore + EscalationStore + LedgerStore + LearningStore> Store for T {}

pub type SharedStore = Arc<dyn Store>;

/// What `explain` reads from a store beside a running server, without
/// writing: the budget as it stands, the escalation in force, the labelled
/// calls the learned model folds, and the outcome's rejected tier.
#[async_trait::async_trait]
pub trait StoreView: Send + Sync {
    async fn view_scope(&self, key: &str) -> Result<ScopeState, StoreError>;
    async fn view_escalation(&self, scope: &str) -> Result<Option<Escalation>, StoreError>;
    async fn view_learning(&self, workflow: &str, cursor: &str, max: usize) -> Result<LearnPage, StoreError>;
    async fn view_rejected_tier(&self, workflow: &str, outcome_id: &str) -> Result<Option<u8>, StoreError>;
    /// A workflow's complexity histogram under `model` (zeros: none yet).
    async fn view_score_counts(&self, workflow: &str, model: &str) -> Result<Vec<u64>, StoreError>;
}

/// Every store can be viewed.
#[async_trait::async_trait]
impl<T: Store + ?Sized> StoreView for T {
    async fn view_scope(&self, key: &str) -> Result<ScopeState, StoreError> {
        self.scope(key).await
    }
    async fn view_escalation(&self, scope: &str) -> Result<Option<Escalation>, StoreError> {
        self.current_escalation(scope).await
    }
    async fn view_learning(&self, workflow: &str, cursor: &str, max: usize) -> Result<LearnPage, StoreError> {
        self.learning_since(workflow, cursor, max).await
    }
    async fn view_rejected_tier(&self, workflow: &str, outcome_id: &str) -> Result<Option<u8>, StoreError> {
        self.rejected_tier(workflow, outcome_id).await
    }
    async fn view_score_counts(&self, workflow: &str, model: &str) -> Result<Vec<u64>, StoreError> {
        self.merge_score_counts(workflow, model, &[]).await
    }
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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// A new decision ID: a UUIDv7, time-ordered (the ledger reads by it), from
/// uuid's generator: a counter keeps the IDs of one process in order within
/// a millisecond, and its random bits come from a thread-local generator
/// seeded by the OS (uuid's `fast-rng`), so a Route makes no system call.
pub fn new_decision_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
pub(crate) mod tests;
