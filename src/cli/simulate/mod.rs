//! `switchyard simulate`: the lease code driven over a simulated fleet, with
//! and without leases, and the targets it is held to.

pub mod fleet;

use fleet::{run, SimConfig, SimRun};

/// The figures of one configuration: means over the runs, the worst
/// overspend, and every run.
#[derive(Debug, serde::Serialize)]
pub struct SimSummary {
    pub leases: bool,
    pub store_ops_per_s: f64,
    pub route_round_trips_per_call: f64,
    pub p99_added_latency_us: u64,
    pub stranded_share: f64,
    /// The largest overspend of any run, and that run's bound.
    pub overspend_nanousd: i64,
    pub bound_nanousd: i64,
    /// Runs whose overspend exceeded their bound.
    pub runs_over_bound: usize,
    pub round_trips_with_valid_lease: u64,
    pub runs: Vec<SimRun>,
}

fn summarise(leases: bool, runs: Vec<SimRun>) -> SimSummary {
    let k = runs.len().max(1) as f64;
    let mean = |f: fn(&SimRun) -> f64| runs.iter().map(f).sum::<f64>() / k;
    let worst = runs.iter().max_by_key(|r| r.overspend_nanousd - r.bound_nanousd);
    SimSummary {
        leases,
        store_ops_per_s: mean(|r| r.store_ops_per_s),
        route_round_trips_per_call: mean(|r| r.route_round_trips_per_call),
        p99_added_latency_us: runs.iter().map(|r| r.p99_added_latency_us).max().unwrap_or(0),
        stranded_share: mean(|r| r.stranded_share),
        overspend_nanousd: worst.map_or(0, |r| r.overspend_nanousd),
        bound_nanousd: worst.map_or(0, |r| r.bound_nanousd),
        runs_over_bound: runs.iter().filter(|r| r.overspend_nanousd > r.bound_nanousd).count(),
        round_trips_with_valid_lease: runs.iter().map(|r| r.round_trips_with_valid_lease).sum(),
        runs,
    }
}

/// Runs `seeds` worlds (seed, seed+1, ...) on every core, with progress.
fn run_all(cfg: &SimConfig, first_seed: u64, seeds: u64, bar: &indicatif::ProgressBar) -> Vec<SimRun> {
    let next = std::sync::atomic::AtomicU64::new(0);
    let out = std::sync::Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(seeds as usize)
        .max(1);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
                    return;
                };
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= seeds {
                        return;
                    }
                    let r = rt.block_on(run(cfg, first_seed + i));
                    out.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(r);
                    bar.inc(1);
                }
            });
        }
    });
    let mut runs = out.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    runs.sort_by_key(|r| r.seed);
    runs
}

pub struct SimulateArgs {
    pub cfg: SimConfig,
    pub seeds: u64,
    pub seed: u64,
    pub format: String,
}

/// The targets, as stated for 10,000 sidecars at a 10 s refresh.
const MAX_OPS_PER_S: f64 = 1_500.0;
const MAX_STRANDED: f64 = 0.01;

/// `switchyard simulate`. Returns the exit code: 0; 1 when a target is
/// missed; 64 for bad flags.
pub fn simulate(a: SimulateArgs) -> i32 {
    let c = &a.cfg;
    let problems: Vec<String> = [
        (!(1..=100_000).contains(&c.sidecars)).then(|| format!("--sidecars {} is not 1 to 100,000", c.sidecars)),
        (!(1.0..=300.0).contains(&c.refresh_s)).then(|| format!("--refresh-s {} is not 1 to 300", c.refresh_s)),
        (!(c.max_share > 0.0 && c.max_share <= 0.5))
            .then(|| format!("--max-share {} is not above 0 and at most 0.5", c.max_share)),
        (!(10.0..=86_400.0).contains(&c.duration_s))
            .then(|| format!("--duration-s {} is not 10 to 86,400", c.duration_s)),
        (!(c.calls_per_sidecar_s > 0.0 && c.calls_per_sidecar_s <= 100.0)).then(|| {
            format!(
                "--calls-per-sidecar-s {} is not above 0 and at most 100",
                c.calls_per_sidecar_s
            )
        }),
        (!(1..=10_000).contains(&a.seeds)).then(|| format!("--seeds {} is not 1 to 10,000", a.seeds)),
        (!matches!(a.format.as_str(), "table" | "json"))
            .then(|| format!("--format `{}` is not table or json", a.format)),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !problems.is_empty() {
        for p in problems {
            eprintln!("{p}");
        }
        return 64;
    }
    let bar = indicatif::ProgressBar::new(a.seeds * 2).with_message("simulating");
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} runs, {eta} left") {
        bar.set_style(style);
    }
    let leased = summarise(
        true,
        run_all(
            &SimConfig {
                leases: true,
                ..c.clone()
            },
            a.seed,
            a.seeds,
            &bar,
        ),
    );
    let exact = summarise(
        false,
        run_all(
            &SimConfig {
                leases: false,
                ..c.clone()
            },
            a.seed,
            a.seeds,
            &bar,
        ),
    );
    bar.finish_and_clear();
    let targets = [
        (
            "store operations per second <= 1,500",
            leased.store_ops_per_s <= MAX_OPS_PER_S,
        ),
        (
            "stranded capacity <= 1% of the budget",
            leased.stranded_share <= MAX_STRANDED,
        ),
        ("overspend within the bound in every run", leased.runs_over_bound == 0),
        (
            "no round trip while a lease is valid",
            leased.round_trips_with_valid_lease == 0,
        ),
    ];
    let met = targets.iter().all(|(_, ok)| *ok);
    if a.format == "json" {
        let targets: serde_json::Map<String, serde_json::Value> =
            targets.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
        super::print_json(&serde_json::json!({
            "config": c,
            "seeds": a.seeds,
            "store_ops_per_s": leased.store_ops_per_s,
            "route_round_trips_per_call": leased.route_round_trips_per_call,
            "p99_added_latency_us": leased.p99_added_latency_us,
            "stranded_share": leased.stranded_share,
            "overspend_nanousd": leased.overspend_nanousd,
            "bound_nanousd": leased.bound_nanousd,
            "runs_over_bound": leased.runs_over_bound,
            "runs": leased.runs,
            "without_leases": exact,
            "targets_met": targets,
        }));
    } else {
        super::print_text(&render(&a, &leased, &exact, &targets));
    }
    if met {
        0
    } else {
        1
    }
}

fn render(a: &SimulateArgs, leased: &SimSummary, exact: &SimSummary, targets: &[(&str, bool)]) -> String {
    use std::fmt::Write as _;
    let c = &a.cfg;
    let usd = |n: i64| crate::money::format_usd(n);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{} sidecars, {} calls/s each on average (Zipf, bursty), refresh {} s, max share {}, {} s period, {} seeds",
        c.sidecars, c.calls_per_sidecar_s, c.refresh_s, c.max_share, c.duration_s, a.seeds
    );
    let _ = writeln!(t, "{:<44} {:>14} {:>14}", "", "leases", "exact (today)");
    let row = |t: &mut String, name: &str, l: String, e: String| {
        let _ = writeln!(t, "{name:<44} {l:>14} {e:>14}");
    };
    row(
        &mut t,
        "store operations per second",
        format!("{:.0}", leased.store_ops_per_s),
        format!("{:.0}", exact.store_ops_per_s),
    );
    row(
        &mut t,
        "store round trips per Route",
        format!("{:.4}", leased.route_round_trips_per_call),
        format!("{:.4}", exact.route_round_trips_per_call),
    );
    row(
        &mut t,
        "p99 added latency of a Route (modelled)",
        format!("{} µs", leased.p99_added_latency_us),
        format!("{} µs", exact.p99_added_latency_us),
    );
    row(
        &mut t,
        "stranded at period end (share of budget)",
        format!("{:.3}%", leased.stranded_share * 100.0),
        format!("{:.3}%", exact.stranded_share * 100.0),
    );
    row(
        &mut t,
        "worst overspend",
        usd(leased.overspend_nanousd),
        usd(exact.overspend_nanousd),
    );
    row(
        &mut t,
        "  its bound",
        usd(leased.bound_nanousd),
        usd(exact.bound_nanousd),
    );
    row(
        &mut t,
        "runs over the bound",
        leased.runs_over_bound.to_string(),
        exact.runs_over_bound.to_string(),
    );
    let _ = writeln!(t, "\ntargets (as stated for 10,000 sidecars at a 10 s refresh):");
    for (name, ok) in targets {
        let _ = writeln!(t, "  {} {name}", if *ok { "met   " } else { "MISSED" });
    }
    t
}

/// `simulate pacing`: prints the table or the JSON; 0 on success, 64 for
/// bad flags or files, 1 when the simulation fails.
pub fn simulate_pacing(a: crate::cli::replay::pacing::PacingArgs, format: &str) -> u8 {
    use crate::cli::replay::pacing;
    if format != "table" && format != "json" {
        eprintln!("--format takes table or json, not `{format}`");
        return 64;
    }
    match pacing::simulate_pacing(&a) {
        Ok(r) => {
            let out = if a.json {
                serde_json::to_string_pretty(&r).unwrap_or_default()
            } else {
                pacing::table(&r)
            };
            crate::cli::print_text(out.trim_end());
            0
        }
        Err(e) => {
            eprintln!("{e}");
            64
        }
    }
}
