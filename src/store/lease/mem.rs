//! An in-memory store of scopes and slices, with the real stores' renewal semantics: what `switchyard simulate` drives the lease code against.

use super::*;

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
