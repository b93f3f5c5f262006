use super::*;

const TERMS: LeaseTerms = LeaseTerms {
    refresh_ms: 10_000,
    max_share_bp: 500,
};

/// A call of workflow `w` whose only scope is its period budget.
fn call(id: &str, amount: i64) -> Arc<NewReservation> {
    let r = crate::store::tests::conformance::reservation(id, amount, &[("w|day", 1_000_000_000)], 0);
    Arc::new(NewReservation {
        outcome_id: String::new(),
        expires_ms: 0,
        ..r
    })
}

async fn renew(leases: &Leases, store: &dyn LeaseStore, mono: u64) -> Vec<Result<LeaseGrant, StoreError>> {
    let mut out = Vec::new();
    for key in leases.due(mono) {
        if let Some(p) = leases.begin(&key, mono, mono as i64, false) {
            let answer = store.renew_lease(&p.renewal).await;
            leases.finish(p, &answer);
            out.push(answer);
        }
    }
    out
}

struct Down;

#[async_trait::async_trait]
impl LeaseStore for Down {
    async fn renew_lease(&self, _: &LeaseRenewal) -> Result<LeaseGrant, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
}

#[tokio::test]
async fn routes_take_from_a_slice_without_the_store_and_renewals_charge_what_they_spent() {
    let store = MemLeaseStore::default();
    let leases = Leases::new("a");
    // No slice yet: the first call reserves exactly, and asks for one.
    assert_eq!(leases.take(&call("d0", 1_000), TERMS, 1), Take::Exact);
    assert_eq!(leases.due(1), vec!["w|day".to_string()]);
    let grants = renew(&leases, &store, 1).await;
    let fresh = grants[0].as_ref().expect("granted").fresh_nanos;
    // The demand seen (1,000, over at least a second) × 10 s × 1.5 headroom.
    assert_eq!(fresh, 15_000);
    assert_eq!(store.ops(), 1);
    // Two calls fit; the third does not, and goes exact.
    assert_eq!(leases.take(&call("d1", 1_000), TERMS, 2), Take::Taken);
    assert_eq!(leases.take(&call("d2", 13_000), TERMS, 3), Take::Taken);
    assert_eq!(leases.take(&call("d3", 2_000), TERMS, 4), Take::Exact);
    assert_eq!(store.ops(), 1, "no store operation while the slice had room");
    // Settling is local, once.
    let u = Usage::default();
    assert_eq!(
        leases.settle("d1", 1_500, &u, 5),
        Some(Settled::Charged { cost_nanos: 1_500 })
    );
    assert_eq!(
        leases.settle("d1", 1_500, &u, 5),
        Some(Settled::AlreadySettled { cost_nanos: 1_500 })
    );
    assert_eq!(leases.settle("nope", 1, &u, 5), None);
    assert_eq!(store.scope("w|day").spent_nanos, 0);
    // The renewal charges it, and keeps d2's estimate held.
    let mono = 10_001;
    renew(&leases, &store, mono).await;
    let st = store.scope("w|day");
    assert_eq!(st.spent_nanos, 1_500);
    let view = leases.view("w|day", mono).expect("slice");
    assert_eq!(view.in_flight, 13_000);
    assert_eq!(
        st.reserved_nanos, view.held,
        "the store holds what the sidecar thinks it holds"
    );
    // d1 is charged; a repeat is answered by the store from then on.
    assert_eq!(leases.settle("d1", 1_500, &u, 5), None);
}

#[tokio::test]
async fn a_slice_that_cannot_be_renewed_is_spent_only_until_it_expires() {
    let store = MemLeaseStore::default();
    let leases = Leases::new("a");
    leases.take(&call("d0", 10), TERMS, 1);
    renew(&leases, &store, 1).await;
    assert_eq!(leases.take(&call("d1", 10), TERMS, 2), Take::Taken);
    leases.settle("d1", 10, &Usage::default(), 2);
    // The store is gone from here on: the renewal fails and puts the
    // settlement back for the next one.
    let failed = renew(&leases, &Down, 10_001).await;
    assert!(failed[0].is_err());
    assert_eq!(leases.take(&call("d2", 1), TERMS, 19_999), Take::Taken);
    assert_eq!(
        leases.take(&call("d3", 1), TERMS, 20_001),
        Take::Exact,
        "valid for 2 × refresh_s from the last renewal sent"
    );
    // The store comes back: the settlement still arrives, once.
    renew(&leases, &store, 20_002).await;
    assert_eq!(store.scope("w|day").spent_nanos, 10);
}

#[tokio::test]
async fn returning_releases_the_slice_and_lets_calls_in_flight_settle_to_spend() {
    let store = MemLeaseStore::default();
    let leases = Leases::new("a");
    leases.take(&call("d0", 100), TERMS, 1);
    renew(&leases, &store, 1).await;
    assert_eq!(leases.take(&call("d1", 100), TERMS, 2), Take::Taken);
    let p = leases.begin("w|day", 3, 3, true).expect("return");
    assert_eq!((p.renewal.keep_nanos, p.renewal.want_nanos), (0, 0));
    assert_eq!(p.renewal.routed.len(), 1, "the call in flight keeps its record");
    let answer = store.renew_lease(&p.renewal).await;
    leases.finish(p, &answer);
    assert_eq!(store.scope("w|day").reserved_nanos, 0);
    assert_eq!(leases.take(&call("d2", 1), TERMS, 4), Take::Exact);
    // d1 left the slice: its usage is the store's to settle.
    assert_eq!(leases.settle("d1", 100, &Usage::default(), 5), None);
}

#[tokio::test]
async fn leasing_stops_when_what_remains_is_less_than_the_slices_hold() {
    let store = MemLeaseStore::default();
    let many: Vec<Leases> = (0..30).map(|i| Leases::new(format!("s{i}"))).collect();
    let small = |id: String| {
        let mut r = (*call(&id, 10_000_000)).clone();
        r.scopes[0].limit_nanos = 200_000_000;
        Arc::new(r)
    };
    for (i, l) in many.iter().enumerate() {
        l.take(&small(format!("x{i}")), TERMS, 1);
        renew(l, &store, 1).await;
    }
    let st = store.scope("w|day");
    // Each slice is at most max_share of what remained when it was cut,
    // and the slices together never exceed the limit.
    assert!(st.reserved_nanos <= 200_000_000, "{st:?}");
    let granted = many
        .iter()
        .filter(|l| l.view("w|day", 2).is_some_and(|v| v.held > 0))
        .count();
    assert!(
        granted < 30,
        "leasing stopped before every sidecar got a slice ({granted})"
    );
}

#[tokio::test]
async fn a_slice_nobody_asks_of_for_three_periods_is_given_back_and_then_forgotten() {
    let store = MemLeaseStore::default();
    let leases = Leases::new("a");
    leases.take(&call("d0", 1_000), TERMS, 1);
    renew(&leases, &store, 1).await;
    assert!(store.scope("w|day").reserved_nanos > 0);
    // No call for three periods (a reload took `lease` away, say): the
    // renewal then returns the slice.
    for mono in [10_001, 20_001] {
        renew(&leases, &store, mono).await;
        assert!(store.scope("w|day").reserved_nanos > 0);
    }
    renew(&leases, &store, 30_001).await;
    assert_eq!(store.scope("w|day").reserved_nanos, 0);
    // Idle past that with nothing held: forgotten, and no more renewals
    // are sent.
    let ops = store.ops();
    assert!(leases.due(40_002).is_empty());
    assert!(leases.keys().is_empty());
    assert_eq!(store.ops(), ops);
}
