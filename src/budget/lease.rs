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

/// How a Route fared against the slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Reserved against this sidecar's slice: no round trip.
    Taken,
    /// No valid slice with room: reserve exactly.
    Exact,
    /// The budget was found used up within the last refresh period and this
    /// call does not fit what was left: refuse it without asking again
    /// (the state the store last gave).
    Refused(ScopeState),
}

/// This sidecar's slices, one per leased period scope.
pub struct Leases {
    holder: String,
    book: Mutex<Book>,
    /// Woken when a slice is wanted sooner than its schedule.
    pub wake: tokio::sync::Notify,
}

#[derive(Default)]
struct Book {
    leases: FastMap<String, Lease>,
    /// Calls routed under a slice and not yet settled: decision → scope.
    open: FastMap<String, (String, Arc<NewReservation>)>,
    /// Calls settled under a slice whose settlement the store has not
    /// acknowledged yet: decision → cost, for a repeated report.
    settled: FastMap<String, i64>,
}

struct Lease {
    workflow: String,
    scope: ScopeCharge,
    terms: LeaseTerms,
    /// What the store holds for this sidecar (as far as it knows).
    held: i64,
    /// Estimates of the calls routed under the slice and not settled.
    in_flight: i64,
    /// Actual cost of calls settled under the slice, not yet charged.
    spent: i64,
    /// The slice may be spent until then (monotonic ms).
    valid_until: u64,
    next_renewal: u64,
    renewing: bool,
    stopped: bool,
    routed: Vec<Arc<NewReservation>>,
    settled: Vec<LeasedSettlement>,
    /// Demand since the last renewal was sent (estimates, nano-dollars),
    /// and when that was.
    demand: i64,
    demand_since: u64,
    /// Smoothed demand, nano-dollars a second.
    rate: f64,
    /// The largest estimate seen lately: a slice holds at least two.
    largest: i64,
    last_demand: u64,
    /// The store refused a call for the budget at this state; calls that do
    /// not fit it are refused here until `refused_until` (monotonic ms).
    refused: Option<(ScopeState, u64)>,
}

impl Lease {
    fn available(&self) -> i64 {
        self.held - self.in_flight - self.spent
    }

    /// What this sidecar would like available after a renewal. Demand is
    /// averaged over at least a second: a first slice sized from one call's
    /// milliseconds would lease a quiet sidecar far more than it spends.
    fn target(&self, mono_ms: u64) -> i64 {
        let elapsed_s = (mono_ms.saturating_sub(self.demand_since) as f64 / 1000.0).max(1.0);
        let observed = self.demand as f64 / elapsed_s;
        let rate = if self.rate == 0.0 {
            observed
        } else {
            0.5 * self.rate + 0.5 * observed
        };
        let refresh_s = self.terms.refresh_ms as f64 / 1000.0;
        // Headroom for a burst within the period, and room for two calls.
        ((rate * refresh_s * 1.5) as i64).max(self.largest.saturating_mul(2))
    }
}

/// What the sidecar sent, to apply the answer against.
#[derive(Debug)]
pub struct Pending {
    pub renewal: LeaseRenewal,
    key: String,
    sent_mono: u64,
    spent_sent: i64,
    held_before: i64,
    rate: f64,
    returning: bool,
}

/// A slice's state, for metrics and the simulation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SliceView {
    pub held: i64,
    pub in_flight: i64,
    pub spent: i64,
    pub valid: bool,
}

impl Leases {
    pub fn new(holder: impl Into<String>) -> Leases {
        Leases {
            holder: holder.into(),
            book: Mutex::default(),
            wake: tokio::sync::Notify::new(),
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        // Plain numbers and lists: a panic elsewhere cannot leave them torn
        // in a way that matters more than refusing every Route would.
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves `r` (whose only scope is its workflow's period budget)
    /// against this sidecar's slice, if one is valid and has room.
    pub fn take(&self, r: &Arc<NewReservation>, terms: LeaseTerms, mono_ms: u64) -> Take {
        let Some(scope) = r.scopes.first().filter(|_| r.scopes.len() == 1) else {
            return Take::Exact;
        };
        let mut book = self.book();
        let lease = book.leases.entry(scope.key.clone()).or_insert_with(|| Lease {
            workflow: r.workflow.clone(),
            scope: scope.clone(),
            terms,
            held: 0,
            in_flight: 0,
            spent: 0,
            valid_until: 0,
            next_renewal: mono_ms,
            renewing: false,
            stopped: false,
            routed: Vec::new(),
            settled: Vec::new(),
            demand: 0,
            demand_since: mono_ms,
            rate: 0.0,
            largest: 0,
            last_demand: mono_ms,
            refused: None,
        });
        lease.terms = terms;
        lease.scope.limit_nanos = scope.limit_nanos;
        lease.demand = lease.demand.saturating_add(r.amount_nanos);
        lease.largest = lease.largest.max(r.amount_nanos);
        lease.last_demand = mono_ms;
        if mono_ms < lease.valid_until && lease.available() >= r.amount_nanos {
            lease.in_flight += r.amount_nanos;
            lease.routed.push(r.clone());
            book.open.insert(r.decision_id.clone(), (scope.key.clone(), r.clone()));
            return Take::Taken;
        }
        if let Some((state, until)) = lease.refused {
            if mono_ms < until && !state.fits(r.amount_nanos) {
                return Take::Refused(state);
            }
        }
        // Out of room or not yet leased: ask sooner, but not more than four
        // times a refresh period, and not while leasing has stopped.
        if !lease.renewing && !lease.stopped {
            let soonest = lease.demand_since + lease.terms.refresh_ms / 4;
            let at = if lease.valid_until == 0 {
                mono_ms
            } else {
                soonest.max(mono_ms)
            };
            if at < lease.next_renewal {
                lease.next_renewal = at;
                self.wake.notify_one();
            }
        }
        Take::Exact
    }

    /// The store refused a call of this leased scope for its budget: calls
    /// that do not fit `state` are refused without a round trip for one
    /// refresh period (an approval on this sidecar clears it sooner).
    pub fn note_refused(&self, key: &str, state: ScopeState, mono_ms: u64) {
        if let Some(l) = self.book().leases.get_mut(key) {
            l.refused = Some((state, mono_ms + l.terms.refresh_ms));
        }
    }

    /// Stops spending the slice of `key` at once (the store lost state): its
    /// calls reserve exactly, and fail closed, until it is renewed.
    pub fn invalidate(&self, key: &str) {
        if let Some(l) = self.book().leases.get_mut(key) {
            l.valid_until = 0;
        }
    }

    /// Forgets every refusal (an approval raised a limit).
    pub fn clear_refusals(&self) {
        for l in self.book().leases.values_mut() {
            l.refused = None;
        }
    }

    /// The record of a call routed under a slice and not yet settled.
    pub fn record(&self, decision_id: &str) -> Option<Arc<NewReservation>> {
        self.book().open.get(decision_id).map(|(_, r)| r.clone())
    }

    /// Settles a call routed under a slice; `None` if it was not.
    pub fn settle(&self, decision_id: &str, cost_nanos: i64, usage: &Usage, now_ms: i64) -> Option<Settled> {
        let mut book = self.book();
        if let Some(&cost) = book.settled.get(decision_id) {
            return Some(Settled::AlreadySettled { cost_nanos: cost });
        }
        let (key, record) = book.open.remove(decision_id)?;
        book.settled.insert(decision_id.to_string(), cost_nanos);
        if let Some(lease) = book.leases.get_mut(&key) {
            lease.in_flight -= record.amount_nanos;
            lease.spent = lease.spent.saturating_add(cost_nanos);
            lease.settled.push(LeasedSettlement {
                record,
                cost_nanos,
                usage: *usage,
                now_ms,
            });
            // Keep a store script's batch bounded.
            if lease.settled.len() >= BATCH && !lease.renewing {
                lease.next_renewal = 0;
                self.wake.notify_one();
            }
        }
        Some(Settled::Charged { cost_nanos })
    }

    /// The slices due for renewal at `mono_ms`, earliest first; slices idle
    /// for three periods with nothing held or pending are forgotten.
    pub fn due(&self, mono_ms: u64) -> Vec<String> {
        let mut book = self.book();
        book.leases.retain(|_, l| {
            let idle = mono_ms.saturating_sub(l.last_demand) > 3 * l.terms.refresh_ms;
            !(idle && l.held == 0 && l.in_flight == 0 && l.settled.is_empty() && l.routed.is_empty() && !l.renewing)
        });
        let mut due: Vec<(u64, String)> = book
            .leases
            .iter()
            .filter(|(_, l)| !l.renewing && l.next_renewal <= mono_ms)
            .map(|(k, l)| (l.next_renewal, k.clone()))
            .collect();
        due.sort();
        due.into_iter().map(|(_, k)| k).collect()
    }

    /// Every slice's key (for returning them all).
    pub fn keys(&self) -> Vec<String> {
        self.book().leases.keys().cloned().collect()
    }

    /// The earliest scheduled renewal, if any.
    pub fn next_due(&self) -> Option<u64> {
        self.book()
            .leases
            .values()
            .filter(|l| !l.renewing)
            .map(|l| l.next_renewal)
            .min()
    }

    /// Starts a renewal of the slice of `key`: what to send. With
    /// `returning`, asks for nothing and keeps nothing held (shutdown): calls
    /// still in flight then settle straight to spend. `None` if a renewal
    /// of it is already in flight.
    pub fn begin(&self, key: &str, mono_ms: u64, now_ms: i64, returning: bool) -> Option<Pending> {
        let mut book = self.book();
        let holder = self.holder.clone();
        let lease = book.leases.get_mut(key)?;
        if lease.renewing {
            return None;
        }
        // Nothing asked of the slice for three periods (the workflow went
        // quiet, its period ended, or a reload took `lease` away): give it
        // back rather than hold budget nobody spends. (Sooner would cost a
        // sidecar with a call every few periods a return and a new lease
        // each time.)
        let idle = mono_ms.saturating_sub(lease.last_demand) >= 3 * lease.terms.refresh_ms;
        let target = if returning || idle || lease.stopped && lease.valid_until > 0 {
            0
        } else {
            lease.target(mono_ms)
        };
        let unused = lease.available().max(0);
        let carry = unused.min(target);
        let keep = if returning { 0 } else { lease.in_flight + carry };
        let spent_sent = lease.spent;
        let renewal = LeaseRenewal {
            workflow: lease.workflow.clone(),
            scope: lease.scope.clone(),
            holder,
            keep_nanos: keep.max(0),
            want_nanos: (target - carry).max(0),
            max_share_bp: lease.terms.max_share_bp,
            settled: std::mem::take(&mut lease.settled),
            routed: std::mem::take(&mut lease.routed),
            now_ms,
            expires_ms: now_ms + 3 * lease.terms.refresh_ms as i64,
        };
        let held_before = lease.held;
        // While the renewal is out, only the carried part may be spent: the
        // store will hold exactly that (plus the calls in flight).
        lease.held = keep + spent_sent;
        lease.renewing = true;
        let rate = lease.rate;
        if returning {
            // The calls in flight leave the slice: their records go with
            // this renewal, and their usage settles straight to spend.
            lease.valid_until = 0;
            lease.in_flight = 0;
            book.open.retain(|_, (k, _)| k != key);
        }
        Some(Pending {
            key: key.to_string(),
            renewal,
            sent_mono: mono_ms,
            spent_sent,
            held_before,
            rate,
            returning,
        })
    }

    /// Applies the store's answer to a renewal begun with [`Leases::begin`].
    pub fn finish(&self, p: Pending, answer: &Result<LeaseGrant, StoreError>) {
        let mut book = self.book();
        let Book { leases, settled, .. } = &mut *book;
        let Some(lease) = leases.get_mut(&p.key) else { return };
        lease.renewing = false;
        match answer {
            Ok(grant) => {
                for s in &p.renewal.settled {
                    settled.remove(&s.record.decision_id);
                }
                let elapsed_s = (p.sent_mono.saturating_sub(lease.demand_since) as f64 / 1000.0).max(1.0);
                let observed = lease.demand as f64 / elapsed_s;
                lease.rate = if p.rate == 0.0 {
                    observed
                } else {
                    0.5 * p.rate + 0.5 * observed
                };
                lease.demand = 0;
                lease.demand_since = p.sent_mono;
                lease.spent -= p.spent_sent;
                lease.held = p.renewal.keep_nanos + grant.fresh_nanos;
                lease.stopped = grant.stopped;
                let refresh = lease.terms.refresh_ms;
                lease.valid_until = if p.returning { 0 } else { p.sent_mono + 2 * refresh };
                // Stopped with something still held: return it soon.
                lease.next_renewal = if grant.stopped && lease.available() > 0 {
                    p.sent_mono + refresh / 4
                } else {
                    p.sent_mono + refresh
                };
            }
            Err(_) => {
                // Nothing was applied (or it was, and the next renewal
                // repeats it harmlessly): put it all back, and keep spending
                // only until the last good renewal's validity runs out.
                lease.held = p.held_before;
                let mut s = p.renewal.settled;
                s.append(&mut lease.settled);
                lease.settled = s;
                let mut r = p.renewal.routed;
                r.append(&mut lease.routed);
                lease.routed = r;
                lease.next_renewal = p.sent_mono + (lease.terms.refresh_ms / 10).max(200);
            }
        }
    }

    /// A slice's state (the simulation reads it; so do tests).
    pub fn view(&self, key: &str, mono_ms: u64) -> Option<SliceView> {
        self.book().leases.get(key).map(|l| SliceView {
            held: l.held,
            in_flight: l.in_flight,
            spent: l.spent,
            valid: mono_ms < l.valid_until,
        })
    }

    /// What this sidecar holds over every slice, and how many calls wait
    /// to be charged.
    pub fn totals(&self) -> (i64, usize) {
        let book = self.book();
        let held = book.leases.values().map(|l| l.held).sum();
        let waiting = book.leases.values().map(|l| l.settled.len()).sum();
        (held, waiting)
    }
}

/// A store of period scopes and slices in memory, with the semantics of the
/// real stores' renewal (through [`renewal_arithmetic`]) and exact
/// reservations: what `switchyard simulate` drives the lease code against.
#[derive(Default)]
pub struct MemLeaseStore {
    inner: Mutex<MemInner>,
}

#[derive(Default)]
struct MemInner {
    scopes: FastMap<String, (ScopeState, i64)>,
    /// (scope, holder) → (held, expires_ms).
    holds: FastMap<(String, String), (i64, i64)>,
    /// Exact reservations: decision → (scope, amount).
    reservations: FastMap<String, (String, i64)>,
    /// Decisions charged, for idempotency.
    charged: std::collections::HashSet<String>,
    pub ops: u64,
}

impl MemLeaseStore {
    fn inner(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A scope as it stands.
    pub fn scope(&self, key: &str) -> ScopeState {
        self.inner().scopes.get(key).map(|s| s.0).unwrap_or_default()
    }

    /// Store operations so far.
    pub fn ops(&self) -> u64 {
        self.inner().ops
    }

    /// An exact reservation, as `BudgetStore::reserve` makes on one scope.
    pub fn reserve(&self, decision_id: &str, scope: &ScopeCharge, amount: i64) -> bool {
        let mut m = self.inner();
        m.ops += 1;
        let (st, _) = m.scopes.entry(scope.key.clone()).or_default();
        st.limit_nanos = scope.limit_nanos;
        if !st.fits(amount) {
            return false;
        }
        st.reserved_nanos += amount;
        m.reservations
            .insert(decision_id.to_string(), (scope.key.clone(), amount));
        true
    }

    /// Settles an exact reservation, as `BudgetStore::settle` does.
    pub fn settle(&self, decision_id: &str, cost: i64) {
        let mut m = self.inner();
        m.ops += 1;
        if !m.charged.insert(decision_id.to_string()) {
            return;
        }
        if let Some((key, amount)) = m.reservations.remove(decision_id) {
            if let Some((st, _)) = m.scopes.get_mut(&key) {
                st.reserved_nanos -= amount;
                st.spent_nanos += cost;
            }
        }
    }

    /// Settles a call whose slice was returned before its usage came:
    /// straight to the spend of `scope`, once, as the store's settlement
    /// does for a `leased` record.
    pub fn settle_orphan(&self, decision_id: &str, scope: &str, cost: i64) {
        let mut m = self.inner();
        m.ops += 1;
        if m.charged.insert(decision_id.to_string()) {
            if let Some((st, _)) = m.scopes.get_mut(scope) {
                st.spent_nanos += cost;
            }
        }
    }

    /// Releases the holds that expired by `now_ms`, as the sweep does.
    pub fn expire(&self, now_ms: i64) {
        let mut m = self.inner();
        let expired: Vec<((String, String), i64)> = m
            .holds
            .iter()
            .filter(|(_, (_, exp))| *exp <= now_ms)
            .map(|(k, (held, _))| (k.clone(), *held))
            .collect();
        for (k, held) in expired {
            m.holds.remove(&k);
            if let Some((st, leased)) = m.scopes.get_mut(&k.0) {
                st.reserved_nanos -= held;
                *leased -= held;
            }
        }
    }

    /// What every slice of `key` holds.
    pub fn leased(&self, key: &str) -> i64 {
        self.inner().scopes.get(key).map(|s| s.1).unwrap_or(0)
    }
}

#[async_trait::async_trait]
impl LeaseStore for MemLeaseStore {
    async fn renew_lease(&self, r: &LeaseRenewal) -> Result<LeaseGrant, StoreError> {
        let mut m = self.inner();
        m.ops += 1;
        let mut charged = 0i64;
        for s in &r.settled {
            if m.charged.insert(s.record.decision_id.clone()) {
                charged = charged.saturating_add(s.cost_nanos);
            }
        }
        let hk = (r.scope.key.clone(), r.holder.clone());
        let held_before = m.holds.get(&hk).map_or(0, |h| h.0);
        let (st, leased) = m.scopes.get(&r.scope.key).copied().unwrap_or_default();
        let st = ScopeState {
            limit_nanos: r.scope.limit_nanos,
            ..st
        };
        let (st, leased, hold, grant) = renewal_arithmetic(st, leased, held_before, r, charged);
        m.scopes.insert(r.scope.key.clone(), (st, leased));
        if hold == 0 {
            m.holds.remove(&hk);
        } else {
            m.holds.insert(hk, (hold, r.expires_ms));
        }
        Ok(grant)
    }
}

pub mod sim;
#[cfg(test)]
mod tests;
