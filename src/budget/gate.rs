//! What Route may do with a decision, budget-wise: the [`BudgetGate`] the
//! Route use case asks, and its three implementations.
//!
//! - [`Budgets`]: `serve`'s, over the store: reserves, escalates, denies.
//! - [`DryRun`]: `explain`'s, over a read-only view: the same answer, with
//!   nothing reserved or created.
//! - [`Unlimited`]: `replay`'s: no budget applies.

use std::sync::Arc;

use jiff::Timestamp;

use super::pacing::Pace;
use super::*;
use crate::money::format_usd;
use crate::rules::{OnLimit, Prices, Workflow};
use crate::store::lease::Take;
use crate::store::*;

/// What the budget tells routing before it decides.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BudgetSteer {
    /// Past the soft threshold of an unpaced budget: a tier lower.
    pub downgrade: bool,
    /// A paced budget's pace and price.
    pub pace: Option<Pace>,
}

/// What Route asks of budgets.
#[async_trait::async_trait]
pub trait BudgetGate: Send + Sync {
    /// How the workflow's period budget steers routing: a step down past an
    /// unpaced budget's soft threshold, or a paced budget's price.
    async fn steer(&self, workflow: &Workflow, now: Timestamp) -> Result<BudgetSteer, StoreError>;
    /// Reserves the call's estimated cost on every scope that applies, or
    /// says what happens at the limit.
    async fn admit(&self, call: &Call<'_>, now: Timestamp) -> Result<Admission, StoreError>;
    /// What is left of the workflow's period budget, if known without a
    /// store round trip (for span attributes).
    fn remaining_hint(&self, workflow: &Workflow, now: Timestamp) -> Option<i64>;
}

/// Budget enforcement for Route, over any store.
pub struct Budgets {
    pub store: Arc<dyn Store>,
    /// How long a reservation waits for its ReportUsage before it is released.
    pub reservation_ttl_ms: i64,
    /// The period scopes as last read, plus what this sidecar reserved since:
    /// the soft-threshold check reads this instead of making a store round
    /// trip on every Route.
    view: std::sync::Mutex<crate::hashing::FastMap<String, (ScopeState, crate::clock::Instant)>>,
    /// Each paced workflow's price controller and traffic by hour of the
    /// week (one entry per workflow of the rules, carried across periods).
    pacers: std::sync::Mutex<crate::hashing::FastMap<String, Pacer>>,
}

/// Runs `f` on `workflow`'s pacer, made on its first call: the name is
/// copied only then, not on every Route.
fn with_pacer<T>(
    pacers: &mut crate::hashing::FastMap<String, Pacer>,
    workflow: &str,
    f: impl FnOnce(&mut Pacer) -> T,
) -> T {
    if let Some(p) = pacers.get_mut(workflow) {
        return f(p);
    }
    f(pacers.entry(workflow.to_string()).or_default())
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
    pub caller: &'a std::sync::Arc<str>,
    pub downgraded: bool,
    /// The routed model's prices, kept with the reservation.
    pub prices: Prices,
    /// The routed model's tier for the request's task class.
    pub tier: u8,
    /// The decision as `whatif` needs it (`Snapshot`, encoded); empty for
    /// the operator's own tools.
    pub snapshot: &'a [u8],
}

/// What happens when `call` would cross `scope` (in `state`): the message,
/// and an escalation to ask for when the workflow escalates.
fn at_limit(call: &Call<'_>, scope: String, state: &ScopeState, now_ms: i64) -> (String, Option<Escalation>) {
    let at_limit = format!(
        "budget `{scope}` has {} spent and {} reserved of {}; this call (est. {}) would exceed it",
        format_usd(state.spent_nanos),
        format_usd(state.reserved_nanos),
        format_usd(state.limit_nanos),
        format_usd(call.cost_nanos)
    );
    if !escalates(call) {
        return (format!("{at_limit}; the workflow denies at its limit"), None);
    }
    let fresh = Escalation {
        id: format!("esc-{}", uuid::Uuid::now_v7()),
        workflow: call.workflow.name.clone(),
        scope,
        outcome_id: call.outcome_id.to_string(),
        caller: call.caller.to_string(),
        amount_nanos: call.cost_nanos,
        model: call.model.to_string(),
        state: EscalationState::Pending,
        created_ms: now_ms,
        resolved_by: String::new(),
        resolved_ms: 0,
        added_nanos: 0,
        reason: at_limit.clone(),
    };
    (at_limit, Some(fresh))
}

/// Whether the call's workflow escalates at its limit (rather than deny).
fn escalates(call: &Call<'_>) -> bool {
    call.workflow
        .budget
        .as_ref()
        .is_some_and(|b| b.on_limit == OnLimit::Escalate)
}

/// The answer an escalation in force gives: wait for it, or denied.
fn by_escalation(at_limit: &str, e: Escalation) -> Admission {
    match e.state {
        EscalationState::Pending => Admission::Escalate(Box::new(e)),
        EscalationState::Approved | EscalationState::Denied => Admission::Denied(format!(
            "{at_limit}; escalation {} was {} by {}{}",
            e.id,
            e.state.as_str(),
            e.resolved_by,
            if e.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", e.reason)
            }
        )),
    }
}

impl Budgets {
    pub fn new(store: Arc<dyn Store>, reservation_ttl_ms: i64) -> Budgets {
        Budgets {
            store,
            reservation_ttl_ms,
            view: Default::default(),
            pacers: Default::default(),
        }
    }

    fn pacers(&self) -> std::sync::MutexGuard<'_, crate::hashing::FastMap<String, Pacer>> {
        // Plain numbers: a panic elsewhere cannot leave them torn.
        self.pacers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The target curve of a paced workflow's current period (see
    /// [`super::pacing::target_curve`]) and the elapsed share of it at
    /// `now`; `None` for an unpaced one.
    pub fn target_curve(&self, workflow: &Workflow, now: Timestamp) -> Option<(Vec<(f64, f64)>, f64)> {
        let b = workflow.budget.as_ref()?;
        let pacing = b.pacing?;
        let (start, end) = period_bounds(b.period, &b.timezone, now);
        let shape = self.pacers().get(&workflow.name).and_then(|p| p.shape_for(pacing, now));
        let elapsed = super::pacing::due_share(start, end, now, &b.timezone, None, 0);
        Some((
            super::pacing::target_curve(start, end, &b.timezone, shape.as_ref(), 48),
            elapsed,
        ))
    }

    /// Each paced workflow's last pace, for metrics and `budget status`.
    pub fn paces(&self) -> Vec<(String, Pace)> {
        let mut out: Vec<(String, Pace)> = self
            .pacers()
            .iter()
            .filter_map(|(w, p)| p.last.map(|l| (w.clone(), l)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Writes every paced workflow's controller and traffic counts to `path`
    /// (written beside and renamed over it, so a crash leaves the old file
    /// or the new one, never half of one).
    pub fn save_pacers(&self, path: &std::path::Path) -> std::io::Result<()> {
        let saved: std::collections::BTreeMap<String, SavedPacer> = self
            .pacers()
            .iter()
            .map(|(w, p)| {
                (
                    w.clone(),
                    SavedPacer {
                        integral: p.controller.integral,
                        traffic: p.traffic.clone(),
                        since_ms: p.since_ms,
                        periods: p.periods.clone(),
                        period_start_ms: p.period_start_ms,
                        period_calls: p.period_calls,
                    },
                )
            })
            .collect();
        let body = serde_json::to_vec(&SavedPacers {
            version: 1,
            workflows: saved,
        })
        .map_err(std::io::Error::other)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, body)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// Reads what [`Budgets::save_pacers`] wrote (see [`read_pacers`]) into
    /// these budgets' pacers; how many workflows it held.
    pub fn load_pacers(&self, path: &std::path::Path) -> Result<usize, String> {
        let read = read_pacers(path)?;
        let n = read.len();
        let mut pacers = self.pacers();
        for (w, r) in read {
            // All the file keeps, and of the controller only its carried
            // price: the running one's clock and last pace stay.
            let p = pacers.entry(w).or_default();
            let controller = super::pacing::Controller {
                integral: r.controller.integral,
                ..p.controller
            };
            *p = Pacer {
                controller,
                last: p.last,
                ..r
            };
        }
        Ok(n)
    }

    /// Counts an admitted call of a paced workflow in its traffic shape.
    fn note_traffic(&self, workflow: &Workflow, now: Timestamp) {
        let Some(b) = workflow.budget.as_ref().filter(|b| b.pacing.is_some()) else {
            return;
        };
        with_pacer(&mut self.pacers(), &workflow.name, |p| p.count(b, now));
    }

    fn view(&self) -> std::sync::MutexGuard<'_, crate::hashing::FastMap<String, (ScopeState, crate::clock::Instant)>> {
        // The map holds plain numbers: a panic elsewhere cannot leave it torn.
        self.view.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets every cached scope state (after an approval raises a limit).
    pub fn refresh_view(&self) {
        self.view().clear();
        if let Some(l) = self.store.leasing() {
            l.clear_refusals();
        }
    }

    /// Counts a reservation this sidecar just made in the cached view.
    fn note_reserved(&self, scopes: &[ScopeCharge], amount: i64) {
        let mut view = self.view();
        for s in scopes {
            if let Some((st, _)) = view.get_mut(&s.key) {
                st.reserved_nanos = st.reserved_nanos.saturating_add(amount);
            }
        }
    }
}

#[async_trait::async_trait]
impl BudgetGate for Budgets {
    /// Whether the workflow's period budget is past its soft threshold, so
    /// that routing should step down a tier. Advisory, not a reservation: it
    /// reads the period scope at most every 250 ms and counts this sidecar's
    /// own reservations in between, so another sidecar's spend may show up to
    /// 250 ms late. A store that cannot be read does not step down: the
    /// reservation that follows fails closed (or open) as configured.
    async fn steer(&self, workflow: &Workflow, now: Timestamp) -> Result<BudgetSteer, StoreError> {
        let Some(b) = workflow
            .budget
            .as_ref()
            .filter(|b| b.soft_threshold_bp.is_some() || b.pacing.is_some())
        else {
            return Ok(BudgetSteer::default());
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
                    Err(StoreError::Unavailable(_)) => return Ok(BudgetSteer::default()),
                    Err(e) => return Err(e),
                };
                let st = ScopeState::of_period(b, stored);
                let mut view = self.view();
                if view.len() >= 4096 {
                    view.retain(|_, (_, at)| at.elapsed() < VIEW_FRESH);
                }
                view.insert(key, (st, crate::clock::Instant::now()));
                st
            }
        };
        if b.pacing.is_some() {
            let pace = with_pacer(&mut self.pacers(), &workflow.name, |p| pace_of(b, &state, p, now));
            return Ok(BudgetSteer { downgrade: false, pace });
        }
        Ok(BudgetSteer {
            downgrade: state.past_soft_threshold(b),
            pace: None,
        })
    }

    /// What is left of the workflow's period budget as this sidecar last saw
    /// it (no store round trip), for span attributes.
    fn remaining_hint(&self, workflow: &Workflow, now: Timestamp) -> Option<i64> {
        let b = workflow.budget.as_ref()?;
        let key = period_scope(workflow, b, now);
        self.view().get(&key).map(|(st, _)| st.remaining())
    }

    async fn admit(&self, call: &Call<'_>, now: Timestamp) -> Result<Admission, StoreError> {
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
            caller: call.caller.clone(),
            prices: call.prices,
            tier: call.tier,
            snapshot: call.snapshot.to_vec(),
        };
        if r.scopes.is_empty() {
            // Nothing to enforce: keep the decision for its ReportUsage, but
            // do not make Route wait for the commit.
            self.store.record_detached(r);
            return Ok(Admission::Routed);
        }
        // A leased period budget: against this sidecar's slice, in memory.
        let lease = call
            .workflow
            .budget
            .as_ref()
            .and_then(|b| b.lease)
            .filter(|_| r.scopes.len() == 1);
        if let (Some(terms), Some(leasing)) = (lease, self.store.leasing()) {
            match leasing.reserve_leased(&r, terms) {
                Take::Taken => {
                    self.note_reserved(&r.scopes, r.amount_nanos);
                    self.note_traffic(call.workflow, now);
                    return Ok(Admission::Routed);
                }
                // Found used up lately: a workflow that denies is answered
                // here; one that escalates asks the store for its escalation.
                Take::Refused(state) if !escalates(call) => {
                    let (message, _) = at_limit(call, r.scopes[0].key.clone(), &state, now_ms);
                    return Ok(Admission::Denied(message));
                }
                Take::Refused(_) | Take::Exact => {}
            }
        }
        let (scope, state) = match self.store.reserve(&r).await? {
            Reserved::Ok => {
                self.note_reserved(&r.scopes, r.amount_nanos);
                self.note_traffic(call.workflow, now);
                return Ok(Admission::Routed);
            }
            Reserved::OverLimit { scope, state } => (scope, state),
        };
        if let (Some(_), Some(l)) = (lease, self.store.leasing()) {
            l.note_refused(&scope, state);
        }
        let (message, escalation) = at_limit(call, scope, &state, now_ms);
        let Some(fresh) = escalation else {
            return Ok(Admission::Denied(message));
        };
        let e = self.store.escalate(&fresh).await?;
        if e.id == fresh.id {
            tracing::warn!(escalation = %e.id, workflow = %e.workflow, scope = %e.scope, "budget limit reached: escalation created");
        }
        Ok(by_escalation(&message, e))
    }
}

/// `explain`'s gate: the answer `serve` would give now, read from the store
/// beside it, with nothing reserved and no escalation created.
pub struct DryRun {
    pub view: Arc<dyn StoreView>,
    /// The paced workflows' state as the serving sidecar last saved it
    /// (`pacing.json`); a workflow missing here paces from a fresh one.
    pub pacers: std::collections::BTreeMap<String, Pacer>,
}

#[async_trait::async_trait]
impl BudgetGate for DryRun {
    /// As `serve` would steer now, from the pacer the serving sidecar last
    /// saved (its carried price, traffic and period counts; a fresh one
    /// where it saved none).
    async fn steer(&self, workflow: &Workflow, now: Timestamp) -> Result<BudgetSteer, StoreError> {
        let Some(b) = workflow.budget.as_ref() else {
            return Ok(BudgetSteer::default());
        };
        let stored = self.view.view_scope(&period_scope(workflow, b, now)).await?;
        let state = ScopeState::of_period(b, stored);
        Ok(BudgetSteer {
            downgrade: b.pacing.is_none() && state.past_soft_threshold(b),
            pace: pace_of(
                b,
                &state,
                &mut self.pacers.get(&workflow.name).cloned().unwrap_or_default(),
                now,
            ),
        })
    }

    async fn admit(&self, call: &Call<'_>, now: Timestamp) -> Result<Admission, StoreError> {
        for charge in scopes_for(call.workflow, call.outcome_id, call.labels.iter().copied(), now) {
            let stored = self.view.view_scope(&charge.key).await?;
            // The limit is the rules' (which every reservation writes back)
            // plus what approvals added.
            let state = ScopeState {
                limit_nanos: charge.limit_nanos.saturating_add(stored.extra_nanos),
                ..stored
            };
            if state.fits(call.cost_nanos) {
                continue;
            }
            let (message, escalation) = at_limit(call, charge.key.clone(), &state, now.as_millisecond());
            let Some(mut fresh) = escalation else {
                return Ok(Admission::Denied(message));
            };
            return Ok(match self.view.view_escalation(&charge.key).await? {
                Some(e) => by_escalation(&message, e),
                None => {
                    // serve would create one; the dry run names none.
                    fresh.id.clear();
                    Admission::Escalate(Box::new(fresh))
                }
            });
        }
        Ok(Admission::Routed)
    }

    fn remaining_hint(&self, _: &Workflow, _: Timestamp) -> Option<i64> {
        None
    }
}

/// `replay`'s gate: no budget applies.
pub struct Unlimited;

#[async_trait::async_trait]
impl BudgetGate for Unlimited {
    async fn steer(&self, _: &Workflow, _: Timestamp) -> Result<BudgetSteer, StoreError> {
        Ok(BudgetSteer::default())
    }

    async fn admit(&self, _: &Call<'_>, _: Timestamp) -> Result<Admission, StoreError> {
        Ok(Admission::Routed)
    }

    fn remaining_hint(&self, _: &Workflow, _: Timestamp) -> Option<i64> {
        None
    }
}
