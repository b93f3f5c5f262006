//! `switchyard simulate`: a fleet of sidecars sharing one hot workflow's
//! budget, on a simulated clock, through the real lease book ([`Leases`])
//! over [`MemLeaseStore`].
//!
//! The world, per run (one seed):
//! - `sidecars` sidecars; sidecar *i* gets a share of the fleet's calls
//!   proportional to 1/(i+1) (Zipf), and each switches between bursts (2.5×
//!   its rate, 30% of the time) and lulls (0.36×) every 20 s on average;
//! - each call is estimated at about $0.002 (log-normal, σ 0.5) and costs
//!   0.6 to 1.15 times its estimate, reported 0.5 to 5 s after Route;
//! - the budget is 90% of the period's expected spend, so it runs out near
//!   the end and some calls are refused;
//! - a share of sidecars crash at a random time (their slices are stranded
//!   until they expire, their calls in flight never report), and a share
//!   are cut off from the store for 5 to 60 s (their renewals and exact
//!   reservations fail; they spend their slice until it expires).
//!
//! A renewal and a reservation take no simulated time; each is one store
//! operation. The store's sweep runs once a simulated second (the fleet's
//! sweeps are spread so that about one runs a second; see the Redis store).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::rules::LeaseTerms;
use crate::store::lease::*;
use crate::store::{NewReservation, ScopeCharge, StoreError, Usage};

/// What to simulate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SimConfig {
    pub sidecars: usize,
    pub refresh_s: f64,
    pub max_share: f64,
    pub duration_s: f64,
    pub calls_per_sidecar_s: f64,
    pub crash_share: f64,
    pub cut_off_share: f64,
    /// A store round trip, for the latency figure.
    pub rtt_us: u64,
    /// Leases off: every Route reserves exactly (the baseline).
    pub leases: bool,
}

/// One run's figures.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SimRun {
    pub seed: u64,
    pub calls: u64,
    /// Refused because the budget was used up (not because the sidecar
    /// was cut off from the store).
    pub refused: u64,
    pub store_ops_per_s: f64,
    pub route_round_trips_per_call: f64,
    /// Routes that reserved exactly although their sidecar's slice was
    /// valid and had room for them: none, by construction, and counted to
    /// hold it.
    pub round_trips_with_valid_lease: u64,
    /// Routes that found their slice valid but short, and reserved exactly.
    pub short_slice_routes: u64,
    pub p99_added_latency_us: u64,
    pub stranded_share: f64,
    pub limit_nanousd: i64,
    pub spent_nanousd: i64,
    pub overspend_nanousd: i64,
    pub bound_nanousd: i64,
}

const SCOPE: &str = "hot|day";
const MEAN_ESTIMATE: f64 = 2_000_000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrive(u32),
    Report(u32, u32),
    Renew(u32),
    Sweep,
    Reconnect(u32),
    Crash(u32),
}

struct Sidecar {
    leases: Leases,
    rate: f64,
    burst: f64,
    burst_until: u64,
    crashed: bool,
    cut_off_until: u64,
    renew_at: u64,
    /// What this sidecar's slice held when it was last renewed.
    held: i64,
}

struct Call {
    record: Arc<NewReservation>,
    leased: bool,
    actual: i64,
}

fn normal(rng: &mut fastrand::Rng) -> f64 {
    let (u1, u2) = (rng.f64().max(1e-12), rng.f64());
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn exp_ms(rng: &mut fastrand::Rng, rate_per_s: f64) -> u64 {
    if rate_per_s <= 0.0 {
        return u64::MAX / 4;
    }
    ((-rng.f64().max(1e-12).ln() / rate_per_s) * 1000.0).ceil().max(1.0) as u64
}

/// Runs the world once.
pub async fn run(cfg: &SimConfig, seed: u64) -> SimRun {
    let mut rng = fastrand::Rng::with_seed(seed);
    let n = cfg.sidecars.max(1);
    let period_ms = (cfg.duration_s * 1000.0) as u64;
    let terms = LeaseTerms {
        refresh_ms: (cfg.refresh_s * 1000.0) as u64,
        max_share_bp: ((cfg.max_share * 10_000.0).round() as u32).max(1),
    };
    let harmonic: f64 = (1..=n).map(|i| 1.0 / i as f64).sum();
    let fleet_rate = cfg.calls_per_sidecar_s * n as f64;
    let expected_spend = fleet_rate * cfg.duration_s * MEAN_ESTIMATE * (0.5f64 * 0.5 / 2.0).exp() * 0.875;
    let limit = (expected_spend * 0.9) as i64;
    let scope = ScopeCharge {
        key: SCOPE.into(),
        limit_nanos: limit,
    };
    let store = MemLeaseStore::default();
    let mut sidecars: Vec<Sidecar> = (0..n)
        .map(|i| Sidecar {
            leases: Leases::new(format!("s{i}")),
            rate: fleet_rate / (i + 1) as f64 / harmonic,
            burst: 1.0,
            burst_until: 0,
            crashed: false,
            cut_off_until: 0,
            renew_at: u64::MAX,
            held: 0,
        })
        .collect();
    let mut queue: BinaryHeap<Reverse<(u64, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |q: &mut BinaryHeap<Reverse<(u64, u64, Event)>>, at: u64, e: Event| {
        seq += 1;
        q.push(Reverse((at, seq, e)));
    };
    for (i, s) in sidecars.iter().enumerate() {
        let first = exp_ms(&mut rng, s.rate);
        push(&mut queue, first, Event::Arrive(i as u32));
        if rng.f64() < cfg.crash_share {
            push(&mut queue, rng.u64(1..period_ms.max(2)), Event::Crash(i as u32));
        } else if rng.f64() < cfg.cut_off_share {
            push(
                &mut queue,
                rng.u64(1..period_ms.max(2)),
                Event::Reconnect(i as u32 | 1 << 31),
            );
        }
    }
    push(&mut queue, 1000, Event::Sweep);
    let mut calls: Vec<Option<Call>> = Vec::new();
    let mut out = SimRun {
        seed,
        limit_nanousd: limit,
        ..SimRun::default()
    };
    let (mut exact_routes, mut ops_at_end, mut overrun, mut cut_off_held) = (0u64, None, 0i64, 0i64);
    while let Some(Reverse((now, _, event))) = queue.pop() {
        if now >= period_ms && ops_at_end.is_none() {
            ops_at_end = Some(store.ops());
        }
        match event {
            Event::Sweep => {
                store.expire(now as i64);
                if now < period_ms + 10 * terms.refresh_ms {
                    push(&mut queue, now + 1000, Event::Sweep);
                }
            }
            Event::Crash(i) => sidecars[i as usize].crashed = true,
            Event::Reconnect(raw) => {
                let i = (raw & !(1 << 31)) as usize;
                if raw & 1 << 31 != 0 {
                    // Cut off from now, for 5 to 60 s.
                    let s = &mut sidecars[i];
                    s.cut_off_until = now + rng.u64(5_000..60_000);
                    cut_off_held += s.held;
                    push(&mut queue, s.cut_off_until, Event::Reconnect(i as u32));
                } else {
                    sidecars[i].renew_at = now;
                    push(&mut queue, now, Event::Renew(i as u32));
                }
            }
            Event::Arrive(i) => {
                let s = &mut sidecars[i as usize];
                if s.crashed || now >= period_ms {
                    continue;
                }
                if now >= s.burst_until {
                    s.burst = if rng.f64() < 0.3 { 2.5 } else { 0.25 / 0.7 };
                    s.burst_until = now + exp_ms(&mut rng, 1.0 / 20.0);
                }
                let next = now + exp_ms(&mut rng, s.rate * s.burst);
                push(&mut queue, next, Event::Arrive(i));
                out.calls += 1;
                let estimate = (MEAN_ESTIMATE * (0.5 * normal(&mut rng)).exp()).max(1.0) as i64;
                let actual = (estimate as f64 * (0.6 + 0.55 * rng.f64())) as i64;
                let record = Arc::new(NewReservation {
                    decision_id: format!("{i}-{}", out.calls),
                    workflow: "hot".into(),
                    outcome_id: String::new(),
                    model: String::new(),
                    deferrable: false,
                    amount_nanos: estimate,
                    scopes: vec![scope.clone()],
                    now_ms: now as i64,
                    expires_ms: 0,
                    downgraded: false,
                    labels: String::new(),
                    caller: Arc::from(""),
                    prices: Default::default(),
                    tier: 0,
                    snapshot: Vec::new(),
                });
                let cut_off = now < s.cut_off_until;
                let take = if cfg.leases {
                    s.leases.take(&record, terms, now)
                } else {
                    Take::Exact
                };
                if let Take::Refused(_) = take {
                    out.refused += 1;
                    continue;
                }
                let leased = take == Take::Taken;
                let admitted = if leased {
                    true
                } else {
                    exact_routes += 1;
                    if let Some(v) = s.leases.view(SCOPE, now).filter(|v| cfg.leases && v.valid) {
                        if v.held - v.in_flight - v.spent >= estimate {
                            out.round_trips_with_valid_lease += 1;
                        } else {
                            out.short_slice_routes += 1;
                        }
                    }
                    // Cut off: the exact reservation fails, and money fails closed.
                    if cut_off {
                        false
                    } else {
                        let ok = store.reserve(&record.decision_id, &scope, estimate);
                        if !ok {
                            out.refused += 1;
                            s.leases.note_refused(SCOPE, store.scope(SCOPE), now);
                        }
                        ok
                    }
                };
                if cfg.leases {
                    if let Some(at) = s.leases.next_due() {
                        if at < s.renew_at {
                            s.renew_at = at.max(now);
                            push(&mut queue, s.renew_at, Event::Renew(i));
                        }
                    }
                }
                if !admitted {
                    continue;
                }
                overrun += (actual - estimate).max(0);
                calls.push(Some(Call { record, leased, actual }));
                let report = now + rng.u64(500..5_000);
                push(&mut queue, report, Event::Report(i, (calls.len() - 1) as u32));
            }
            Event::Report(i, c) => {
                let s = &mut sidecars[i as usize];
                let Some(call) = calls[c as usize].take() else { continue };
                if s.crashed {
                    continue;
                }
                let id = &call.record.decision_id;
                let usage = Usage::default();
                if call.leased && s.leases.settle(id, call.actual, &usage, now as i64).is_some() {
                    continue;
                }
                if now < s.cut_off_until {
                    // Journaled, replayed at reconnection.
                    calls[c as usize] = Some(call);
                    push(&mut queue, s.cut_off_until, Event::Report(i, c));
                    continue;
                }
                if call.leased {
                    // Returned with its slice: settles straight to spend,
                    // as the store's settle does for a `leased` record.
                    store.settle_orphan(id, SCOPE, call.actual);
                } else {
                    store.settle(id, call.actual);
                }
            }
            Event::Renew(i) => {
                let s = &mut sidecars[i as usize];
                if s.crashed || s.renew_at > now && now < period_ms + 8_000 {
                    continue;
                }
                s.renew_at = u64::MAX;
                // After the period: give every slice back, once the calls
                // in flight have reported.
                let returning = now >= period_ms + 6_000;
                let keys = if returning { s.leases.keys() } else { s.leases.due(now) };
                for key in keys {
                    let Some(p) = s.leases.begin(&key, now, now as i64, returning) else {
                        continue;
                    };
                    let answer = if now < s.cut_off_until {
                        Err(StoreError::Unavailable("cut off".into()))
                    } else {
                        store.renew_lease(&p.renewal).await
                    };
                    s.leases.finish(p, &answer);
                }
                s.held = s.leases.totals().0;
                if returning {
                    continue;
                }
                let at = s.leases.next_due().unwrap_or(u64::MAX);
                let at = if now >= period_ms {
                    at.max(period_ms + 6_000)
                } else {
                    at
                };
                if at < u64::MAX {
                    s.renew_at = at.max(now + 1);
                    push(&mut queue, s.renew_at, Event::Renew(i));
                }
            }
        }
    }
    let period_s = cfg.duration_s.max(1e-9);
    let ops = ops_at_end.unwrap_or_else(|| store.ops()) as f64;
    out.store_ops_per_s = ops / period_s;
    out.route_round_trips_per_call = exact_routes as f64 / out.calls.max(1) as f64;
    out.p99_added_latency_us = if out.route_round_trips_per_call > 0.01 {
        cfg.rtt_us
    } else {
        1
    };
    let st = store.scope(SCOPE);
    out.spent_nanousd = st.spent_nanos;
    out.overspend_nanousd = (st.spent_nanos - limit).max(0);
    out.stranded_share = if out.refused > 0 {
        (limit - st.spent_nanos).max(0) as f64 / limit.max(1) as f64
    } else {
        0.0
    };
    out.bound_nanousd = overrun + cut_off_held;
    out
}
