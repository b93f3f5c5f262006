//! The book of slices each sidecar keeps: what it holds, what its calls took and settled, and when to renew.

use super::*;

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
