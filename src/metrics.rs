//! Labelled Prometheus series for the hot path: counters by workflow, model
//! and status, and Route's latency histogram. Labels come only from the
//! rules (workflow and model names, which validation bounds) and from fixed
//! sets (status, token kind): an outcome ID or decision ID is never a label,
//! so cardinality stays bounded.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The series of one family that share a hash of their label values.
type Bucket = Vec<(Vec<String>, Arc<AtomicU64>)>;

/// One counter family, keyed by its label values. Counting an existing
/// series allocates nothing: a hash of the values finds it under a read lock.
pub struct Family {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    /// Keyed by the labels' own hash: the map's hasher only spreads it.
    series: RwLock<crate::hashing::FastMap<u64, Bucket>>,
}

/// Each value hashed in one shot, seeded by the hash so far: the streaming
/// hasher's state costs more to set up than a few short labels to hash.
/// The length goes in with each value, so `["ab", "c"]` and `["a", "bc"]`
/// hash apart.
fn hash(values: &[&str]) -> u64 {
    values.iter().fold(0, |h, v| {
        xxhash_rust::xxh3::xxh3_64_with_seed(v.as_bytes(), h ^ v.len() as u64)
    })
}

fn find<'a>(bucket: &'a Bucket, values: &[&str]) -> Option<&'a Arc<AtomicU64>> {
    bucket
        .iter()
        .find(|(labels, _)| labels.iter().map(String::as_str).eq(values.iter().copied()))
        .map(|(_, c)| c)
}

impl Family {
    fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Family {
        Family {
            name,
            help,
            labels,
            series: RwLock::new(Default::default()),
        }
    }

    /// Adds `v` to the series with these label values (in `labels` order).
    pub fn add(&self, values: &[&str], v: u64) {
        let h = hash(values);
        {
            let series = self.series.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(c) = series.get(&h).and_then(|b| find(b, values)) {
                c.fetch_add(v, Ordering::Relaxed);
                return;
            }
        }
        let mut series = self.series.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = series.entry(h).or_default();
        match find(bucket, values) {
            Some(c) => c.fetch_add(v, Ordering::Relaxed),
            None => {
                bucket.push((
                    values.iter().map(|s| s.to_string()).collect(),
                    Arc::new(AtomicU64::new(v)),
                ));
                0
            }
        };
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}\n# TYPE {} counter", self.name, self.help, self.name);
        let series = self.series.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all: Vec<&(Vec<String>, Arc<AtomicU64>)> = series.values().flatten().collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        for (values, counter) in all {
            let labels: Vec<String> = self
                .labels
                .iter()
                .zip(values)
                .map(|(l, v)| format!("{l}=\"{}\"", escape_label(v)))
                .collect();
            let _ = writeln!(
                out,
                "{}{{{}}} {}",
                self.name,
                labels.join(","),
                counter.load(Ordering::Relaxed)
            );
        }
    }
}

/// A Prometheus label value, escaped.
pub fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Upper bounds of Route's latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Route's decision latency, from request decoded to answer ready.
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        let name = "switchyard_route_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time Route takes to decide, from the decoded request to the answer.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (b, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// The labelled series the gRPC handlers feed and /metrics reads.
pub struct Metrics {
    pub decisions: Family,
    pub estimated_spend: Family,
    pub actual_spend: Family,
    pub tokens: Family,
    pub outcomes: Family,
    pub usage_model_mismatch: Family,
    pub usage_overshoot: Family,
    pub route_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            decisions: Family::new(
                "switchyard_decisions_total",
                "Route answers with a model, by workflow, model and status (routed, downgraded, escalation_required, denied).",
                &["workflow", "model", "status"],
            ),
            estimated_spend: Family::new(
                "switchyard_estimated_spend_nanousd_total",
                "Estimated cost of routed calls, in nano-USD.",
                &["workflow", "model"],
            ),
            actual_spend: Family::new(
                "switchyard_actual_spend_nanousd_total",
                "Actual cost of calls as ReportUsage settled them, in nano-USD.",
                &["workflow", "model"],
            ),
            tokens: Family::new(
                "switchyard_tokens_total",
                "Tokens calls used as ReportUsage reported them, by kind (input, cached_input, output).",
                &["workflow", "model", "kind"],
            ),
            outcomes: Family::new(
                "switchyard_outcomes_total",
                "RecordOutcome calls, by workflow and status.",
                &["workflow", "status"],
            ),
            usage_model_mismatch: Family::new(
                "switchyard_usage_model_mismatch_total",
                "ReportUsage calls charged for a model other than the routed one (other_model_usage = \"charge\"), by workflow.",
                &["workflow"],
            ),
            usage_overshoot: Family::new(
                "switchyard_usage_overshoot_total",
                "Settled calls whose cost went past the workflow's usage_overshoot_factor times the Route estimate, by workflow.",
                &["workflow"],
            ),
            route_latency: Histogram {
                buckets: Default::default(),
                count: AtomicU64::new(0),
                sum_nanos: AtomicU64::new(0),
            },
        }
    }
}

impl Metrics {
    pub fn render(&self, out: &mut String) {
        for f in [
            &self.decisions,
            &self.estimated_spend,
            &self.actual_spend,
            &self.tokens,
            &self.outcomes,
            &self.usage_model_mismatch,
            &self.usage_overshoot,
        ] {
            f.render(out);
        }
        self.route_latency.render(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_counted_by_their_label_values() {
        let f = Family::new("t_total", "test", &["workflow", "model"]);
        f.add(&["w", "m"], 2);
        f.add(&["w", "m"], 3);
        f.add(&["w", "n\"x"], 1);
        // Values that join to the same text stay apart.
        f.add(&["w\u{1f}m", ""], 7);
        let mut out = String::new();
        f.render(&mut out);
        assert!(out.contains("t_total{workflow=\"w\",model=\"m\"} 5\n"), "{out}");
        assert!(out.contains("t_total{workflow=\"w\",model=\"n\\\"x\"} 1\n"), "{out}");
        assert_eq!(out.lines().filter(|l| l.starts_with("t_total{")).count(), 3, "{out}");
    }
}
