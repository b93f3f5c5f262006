//! Leased slices of a hot period budget: how thousands of sidecars share one
//! workflow's budget without a store round trip per call.
//!
//! A workflow with `lease = { refresh_s, max_share }` in its budget lets each
//! sidecar hold a slice of what remains of its period budget:
//!
//! - the slice is sized to this sidecar's own recent demand × the refresh
//!   period (with headroom), and the store caps what it adds at `max_share`
//!   of what remains;
//! - a Route whose only scope is the period budget reserves against the slice
//!   in memory ([`Leases::take`]); its usage is settled against the slice too
//!   ([`Leases::settle`]) and sent to the store with the next renewal;
//! - every `refresh_s` the sidecar renews: in one atomic store operation it
//!   charges what its calls spent, keeps held what its calls in flight and
//!   the part it carries over need, and asks for more ([`LeaseRenewal`]);
//! - when what remains falls below what the fleet's slices hold, the store
//!   stops adding to slices, sidecars return what they hold at their next
//!   renewal, and calls reserve exactly, one round trip each, as without
//!   leases;
//! - a sidecar that cannot renew spends its slice only until
//!   `2 × refresh_s` after it sent the last renewal that succeeded, on the
//!   monotonic clock; the store releases an unrenewed slice only after
//!   `3 × refresh_s` on its own clock, so the sidecar has stopped long before.
//!
//! The bookkeeping here is the same code for `serve` (over Redis) and for
//! `switchyard simulate` (over [`MemLeaseStore`], on a simulated clock). Time
//! comes in as arguments: `mono_ms` on a monotonic clock for validity and
//! scheduling, `now_ms` on the wall clock for what the store keeps.

use std::sync::{Arc, Mutex, PoisonError};

use super::{NewReservation, ScopeCharge, ScopeState, Settled, StoreError, Usage};
use crate::hashing::FastMap;
use crate::rules::LeaseTerms;

/// Settlements that make a sidecar renew at once rather than on schedule:
/// a renewal script runs each settlement's writes (a few commands each), so
/// this bounds how long one script holds Redis (about 8 ms on this
/// project's machine).
const BATCH: usize = 256;

/// A call settled under a lease, charged to the store at the next renewal.
#[derive(Debug, Clone)]
pub struct LeasedSettlement {
    pub record: Arc<NewReservation>,
    pub cost_nanos: i64,
    pub usage: Usage,
    pub now_ms: i64,
}

/// One renewal, which the store applies atomically.
#[derive(Debug, Clone)]
pub struct LeaseRenewal {
    pub workflow: String,
    /// The period scope, with the rules' limit.
    pub scope: ScopeCharge,
    /// The sidecar holding the slice.
    pub holder: String,
    /// What the store holds for this holder after the renewal, before
    /// anything new: the estimates of its calls in flight plus the unused
    /// part it carries over. It replaces whatever the store held for it, so
    /// a renewal repeated after a lost reply changes nothing more.
    pub keep_nanos: i64,
    /// More asked for on top of `keep_nanos`.
    pub want_nanos: i64,
    /// The most the store adds, as a share of what remains (basis points).
    pub max_share_bp: u32,
    /// Calls settled under the slice since the last renewal: charged now,
    /// once each (by decision ID), with their ledger entries.
    pub settled: Vec<LeasedSettlement>,
    /// Calls routed under the slice since the last renewal: their records
    /// are kept, so that their usage settles even after a restart.
    pub routed: Vec<Arc<NewReservation>>,
    pub now_ms: i64,
    /// When the store releases the hold unless renewed (wall clock).
    pub expires_ms: i64,
}

/// What a renewal gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// Added on top of `keep_nanos`; 0 when leasing has stopped.
    pub fresh_nanos: i64,
    /// Too little remains for the fleet's slices: return what is held.
    pub stopped: bool,
    /// The period scope after the renewal.
    pub state: ScopeState,
}

/// What a store that leases slices of period budgets does beside reserving:
/// the calls the gate and `serve`'s tasks make of it. Only a store whose
/// [`crate::store::BudgetStore::leasing`] answers has them.
#[async_trait::async_trait]
pub trait Leasing: Send + Sync {
    /// Reserves against this sidecar's slice of the call's leased period
    /// budget, with no round trip, if one is valid and has room (`r` has that
    /// one scope); or refuses it, if the budget was found used up lately.
    /// `Exact`: reserve exactly.
    fn reserve_leased(&self, r: &NewReservation, terms: LeaseTerms) -> Take;
    /// The store refused a call of a leased scope for its budget (`state`):
    /// calls that do not fit it may be refused without asking for a while.
    fn note_refused(&self, scope: &str, state: ScopeState);
    /// An approval raised a limit: forget what [`Leasing::note_refused`] noted.
    fn clear_refusals(&self);
    /// Renews the slices that are due, or gives them all back (`returning`,
    /// at shutdown); the milliseconds until the next is due, if any.
    async fn renew_leases(&self, returning: bool) -> Result<Option<u64>, StoreError>;
    /// How long the sweep waits before its next pass (the fleet paces it).
    fn sweep_every(&self) -> std::time::Duration;
    /// Woken when a slice is wanted before its schedule.
    fn lease_wake(&self) -> &tokio::sync::Notify;
}

/// The store's side of leasing.
#[async_trait::async_trait]
pub trait LeaseStore: Send + Sync {
    async fn renew_lease(&self, r: &LeaseRenewal) -> Result<LeaseGrant, StoreError>;
}

/// The store's arithmetic for a renewal, given the scope as it stands (its
/// `reserved` including every slice), what all slices hold (`leased`), and
/// what it held for this holder. Returns the new scope, the new `leased`,
/// the holder's new hold, and the grant. Redis's `lease.lua` is this in Lua;
/// [`MemLeaseStore`] calls it; a conformance test holds the two equal.
pub fn renewal_arithmetic(
    mut scope: ScopeState,
    mut leased: i64,
    held_before: i64,
    r: &LeaseRenewal,
    charged: i64,
) -> (ScopeState, i64, i64, LeaseGrant) {
    scope.reserved_nanos = scope.reserved_nanos - held_before + r.keep_nanos;
    leased = leased - held_before + r.keep_nanos;
    scope.spent_nanos = scope.spent_nanos.saturating_add(charged);
    let free = scope.remaining();
    // Leasing stops when what is free no longer covers what the slices
    // could strand: then every sidecar returns its unused part.
    let stopped = free < leased;
    let cap = (free.max(0) as i128 * r.max_share_bp as i128 / 10_000) as i64;
    let fresh = if stopped { 0 } else { r.want_nanos.clamp(0, cap) };
    scope.reserved_nanos += fresh;
    leased += fresh;
    let grant = LeaseGrant {
        fresh_nanos: fresh,
        stopped,
        state: scope,
    };
    (scope, leased, r.keep_nanos + fresh, grant)
}

mod book;
mod mem;
#[cfg(test)]
mod tests;
pub use book::*;
pub use mem::*;
