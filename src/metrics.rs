//! Labelled series for the hot path, kept in `prometheus-client` metrics:
//! counters by workflow, model and status, and Route's latency histogram
//! with the trace of a recent call in each bucket (an OpenMetrics exemplar),
//! so a latency panel links to a trace. Labels come only from the rules
//! (workflow and model names, which validation bounds) and from fixed sets
//! (status, token kind): an outcome ID or decision ID is never a label, so
//! cardinality stays bounded.
//!
//! `/metrics` (admin.rs) registers these with the values read at scrape
//! time and encodes them as OpenMetrics text.

use std::fmt::Write as _;
use std::sync::RwLock;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Atomic as _;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::exemplar::{CounterWithExemplar, HistogramWithExemplars};
use prometheus_client::metrics::family::Family as Series;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// A series' labels: each label's name and value, in the family's order.
pub type Labels = Vec<(&'static str, String)>;

/// A counter that can carry the trace of its latest traced increment.
type Count = CounterWithExemplar<Labels>;

/// The series of one family that share a hash of their label values.
type Bucket = Vec<(Vec<String>, Count)>;

/// The span a sample came from, as an exemplar names it: OpenTelemetry's
/// Prometheus mapping reads `trace_id` and `span_id` (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceRef {
    pub trace_id: String,
    pub span_id: String,
}

impl TraceRef {
    fn labels(&self) -> Labels {
        vec![("trace_id", self.trace_id.clone()), ("span_id", self.span_id.clone())]
    }
}

/// One counter family. The series live in a `prometheus-client` family;
/// counting an existing series allocates nothing: a hash of the label values
/// finds its counter under a read lock, where the family itself would need
/// its label set built (a `String` per label) to look it up.
pub struct Family {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Series<Labels, Count>,
    /// Keyed by the labels' own hash: the map's hasher only spreads it.
    handles: RwLock<crate::hashing::FastMap<u64, Bucket>>,
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

fn find<'a>(bucket: &'a Bucket, values: &[&str]) -> Option<&'a Count> {
    bucket
        .iter()
        .find(|(labels, _)| labels.iter().map(String::as_str).eq(values.iter().copied()))
        .map(|(_, c)| c)
}

/// `registry.register` appends the period itself.
fn help_text(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
}

/// OpenMetrics names a counter's family without the `_total` its samples carry.
fn counter_family(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

impl Family {
    fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Family {
        Family {
            name,
            help,
            labels,
            series: Series::default(),
            handles: RwLock::new(Default::default()),
        }
    }

    /// Adds `v` to the series with these label values (in `labels` order).
    pub fn add(&self, values: &[&str], v: u64) {
        self.add_traced(values, v, None);
    }

    /// Adds `v`, and when `trace` is given makes it the series' exemplar.
    /// An untraced add keeps the exemplar a traced one left.
    pub fn add_traced(&self, values: &[&str], v: u64, trace: Option<&TraceRef>) {
        let count = |c: &Count| match trace {
            Some(t) => {
                c.inc_by(v, Some(t.labels()), None);
            }
            None => {
                c.inner().inc_by(v);
            }
        };
        let h = hash(values);
        {
            let handles = self.handles.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(c) = handles.get(&h).and_then(|b| find(b, values)) {
                count(c);
                return;
            }
        }
        let mut handles = self.handles.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = handles.entry(h).or_default();
        let counter = match find(bucket, values) {
            Some(c) => c.clone(),
            None => {
                let labels: Labels = self
                    .labels
                    .iter()
                    .copied()
                    .zip(values.iter().map(|s| s.to_string()))
                    .collect();
                let c = self.series.get_or_create_owned(&labels);
                bucket.push((values.iter().map(|s| s.to_string()).collect(), c.clone()));
                c
            }
        };
        count(&counter);
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(counter_family(self.name), help_text(self.help), self.series.clone());
    }
}

/// Upper bounds of Route's latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Route's decision latency, from request decoded to answer ready, with the
/// trace ID of the latest traced call in each bucket.
pub struct Latency(HistogramWithExemplars<Labels>);

impl Latency {
    /// Records one Route, with its span when the span is recorded.
    pub fn observe(&self, d: Duration, trace: Option<&TraceRef>) {
        self.0.observe(d.as_secs_f64(), trace.map(TraceRef::labels), None);
    }
}

/// The labelled series the gRPC handlers feed and /metrics reads.
pub struct Metrics {
    pub decisions: Family,
    pub estimated_spend: Family,
    pub actual_spend: Family,
    /// Deprecated: `input` there is the uncached part. Kept for one release.
    pub tokens: Family,
    pub input_tokens: Family,
    pub cached_input_tokens: Family,
    pub cache_write_input_tokens: Family,
    pub output_tokens: Family,
    pub outcomes: Family,
    pub usage_model_mismatch: Family,
    pub usage_overshoot: Family,
    pub route_latency: Latency,
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
                "Estimated cost of routed calls, in nano-USD; the exemplar is the latest traced Route.",
                &["workflow", "model"],
            ),
            actual_spend: Family::new(
                "switchyard_actual_spend_nanousd_total",
                "Actual cost of calls as ReportUsage settled them, in nano-USD; the exemplar is the latest traced ReportUsage.",
                &["workflow", "model"],
            ),
            tokens: Family::new(
                "switchyard_tokens_total",
                "Deprecated, removed in the next release: use switchyard_input_tokens_total, switchyard_cached_input_tokens_total and switchyard_output_tokens_total. Tokens by kind (input = the uncached part, cached_input, output).",
                &["workflow", "model", "kind"],
            ),
            input_tokens: Family::new(
                "switchyard_input_tokens_total",
                "Input tokens of settled calls, cache reads and writes included, as ReportUsage reported them.",
                &["workflow", "model"],
            ),
            cached_input_tokens: Family::new(
                "switchyard_cached_input_tokens_total",
                "Input tokens served from the provider's prompt cache (a part of switchyard_input_tokens_total).",
                &["workflow", "model"],
            ),
            cache_write_input_tokens: Family::new(
                "switchyard_cache_write_input_tokens_total",
                "Input tokens written to the provider's prompt cache (a part of switchyard_input_tokens_total).",
                &["workflow", "model"],
            ),
            output_tokens: Family::new(
                "switchyard_output_tokens_total",
                "Output tokens of settled calls, as ReportUsage reported them.",
                &["workflow", "model"],
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
            route_latency: Latency(HistogramWithExemplars::new(BUCKETS.into_iter())),
        }
    }
}

impl Metrics {
    /// Adds every series to `registry`: the families are shared, not copied.
    pub fn register(&self, registry: &mut Registry) {
        for f in [
            &self.decisions,
            &self.estimated_spend,
            &self.actual_spend,
            &self.tokens,
            &self.input_tokens,
            &self.cached_input_tokens,
            &self.cache_write_input_tokens,
            &self.output_tokens,
            &self.outcomes,
            &self.usage_model_mismatch,
            &self.usage_overshoot,
        ] {
            f.register(registry);
        }
        registry.register_with_unit(
            "switchyard_route_latency",
            "Time Route takes to decide, from the decoded request to the answer",
            Unit::Seconds,
            self.route_latency.0.clone(),
        );
    }
}

/// A value read at scrape time, or by the task that reads the store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reading {
    Count(u64),
    Int(i64),
    Real(f64),
}

/// A family of readings: a counter or gauge whose values live elsewhere
/// (atomics, the store), encoded as they are when `/metrics` is scraped.
#[derive(Debug, Clone)]
pub struct Readings {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    pub series: Vec<(Labels, Reading)>,
}

impl Readings {
    /// One unlabelled series.
    pub fn one(name: &'static str, kind: MetricType, help: &'static str, value: Reading) -> Readings {
        Readings {
            name,
            help,
            kind,
            series: vec![(Vec::new(), value)],
        }
    }

    /// A labelled family, empty until `push`.
    pub fn family(name: &'static str, kind: MetricType, help: &'static str) -> Readings {
        Readings {
            name,
            help,
            kind,
            series: Vec::new(),
        }
    }

    pub fn push(&mut self, labels: Labels, value: Reading) {
        self.series.push((labels, value));
    }

    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = self.kind == MetricType::Counter;
        let name = if counter { counter_family(self.name) } else { self.name };
        let mut family = encoder.encode_descriptor(name, self.help, None, self.kind)?;
        for (labels, value) in &self.series {
            let series = family.encode_family(labels)?;
            match (*value, counter) {
                (Reading::Count(n), true) => ConstCounter::new(n).encode(series)?,
                (Reading::Real(x), true) => ConstCounter::new(x).encode(series)?,
                (Reading::Int(i), true) => ConstCounter::new(i.max(0).unsigned_abs()).encode(series)?,
                (Reading::Count(n), false) => ConstGauge::new(n).encode(series)?,
                (Reading::Int(i), false) => ConstGauge::new(i).encode(series)?,
                (Reading::Real(x), false) => ConstGauge::new(x).encode(series)?,
            }
        }
        Ok(())
    }
}

/// Families of readings, as a `prometheus-client` collector.
#[derive(Debug, Clone, Default)]
pub struct ReadingsCollector(pub std::sync::Arc<Vec<Readings>>);

impl Collector for ReadingsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for r in self.0.iter() {
            r.encode(&mut encoder)?;
        }
        Ok(())
    }
}

/// The OpenMetrics text of `registry`, ending in `# EOF`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(8192);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        // Writing to a String does not fail; say so if it ever does.
        let _ = writeln!(out, "# encoding failed: {e}");
    }
    out
}

/// The media types `/metrics` answers with.
pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a scraper's `Accept` asks for the Prometheus text format
/// (0.0.4) rather than OpenMetrics: it names `text/plain` and not
/// OpenMetrics. Prometheus itself asks for OpenMetrics first, which is the
/// one format that carries exemplars; `promtool check metrics` and older
/// scrapers read the text format.
pub fn wants_prometheus_text(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("text/plain") && !a.contains("application/openmetrics-text"))
}

/// The same exposition in the Prometheus text format (0.0.4), from the
/// OpenMetrics text `encode` made. The two differ in a few places only: a
/// counter's family is named with its `_total`; `# UNIT`, `# EOF` and
/// exemplars are not part of it; HELP escapes only `\\` and newlines.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's HELP comes before its TYPE, which says whether the name
    // takes `_total`: it waits for its TYPE.
    let mut help: Option<(&str, String)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text.replace("\\\"", "\"")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{family}_total"), "counter"),
                "gauge" | "histogram" | "summary" => (family.to_string(), kind),
                _ => (family.to_string(), "untyped"),
            };
            if let Some((_, text)) = help.take().filter(|(n, _)| *n == family) {
                let _ = writeln!(out, "# HELP {name} {text}");
            }
            let _ = writeln!(out, "# TYPE {name} {kind}");
            continue;
        }
        let sample = strip_exemplar(line);
        let name_end = sample.find(['{', ' ']).unwrap_or(sample.len());
        if sample[..name_end].ends_with("_created") {
            continue;
        }
        out.push_str(sample);
        out.push('\n');
    }
    out
}

/// A sample line without its exemplar (` # {…} value`): the exemplar starts
/// after the labels' closing brace, found past quoted label values.
fn strip_exemplar(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut i = line.find(['{', ' ']).unwrap_or(line.len());
    if bytes.get(i) == Some(&b'{') {
        let mut quoted = false;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b'}' if !quoted => break,
                _ => {}
            }
            i += 1;
        }
    }
    match line[i.min(line.len())..].find(" # ") {
        Some(at) => &line[..i + at],
        None => line,
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
        let mut registry = Registry::default();
        f.register(&mut registry);
        let out = encode(&registry);
        assert!(out.contains("# TYPE t counter\n"), "{out}");
        assert!(out.contains("t_total{workflow=\"w\",model=\"m\"} 5\n"), "{out}");
        assert!(out.contains("t_total{workflow=\"w\",model=\"n\\\"x\"} 1\n"), "{out}");
        assert_eq!(out.lines().filter(|l| l.starts_with("t_total{")).count(), 3, "{out}");
        assert!(out.ends_with("# EOF\n"), "{out}");
    }

    #[test]
    fn latency_buckets_carry_the_trace_of_a_traced_call() {
        let m = Metrics::default();
        let trace = TraceRef {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
        };
        m.route_latency.observe(Duration::from_micros(300), Some(&trace));
        m.route_latency.observe(Duration::from_micros(80), None);
        let mut registry = Registry::default();
        m.register(&mut registry);
        let out = encode(&registry);
        assert!(
            out.contains("# TYPE switchyard_route_latency_seconds histogram\n"),
            "{out}"
        );
        assert!(
            out.contains("# UNIT switchyard_route_latency_seconds seconds\n"),
            "{out}"
        );
        let bucket = out
            .lines()
            .find(|l| l.starts_with("switchyard_route_latency_seconds_bucket{le=\"0.0005\"}"))
            .expect("the 0.5 ms bucket");
        assert!(
            bucket
                .ends_with("} 2 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\",span_id=\"00f067aa0ba902b7\"} 0.0003"),
            "{bucket}"
        );
        assert!(out.contains("switchyard_route_latency_seconds_count 2\n"), "{out}");
    }

    #[test]
    fn a_counter_keeps_the_exemplar_of_its_latest_traced_add() {
        let f = Family::new("spend_total", "test", &["workflow"]);
        let first = TraceRef {
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "b7ad6b7169203331".into(),
        };
        f.add_traced(&["w"], 5, Some(&first));
        f.add(&["w"], 2);
        let mut registry = Registry::default();
        f.register(&mut registry);
        let out = encode(&registry);
        assert!(
            out.contains(
                "spend_total{workflow=\"w\"} 7 # {trace_id=\"0af7651916cd43dd8448eb211c80319c\",span_id=\"b7ad6b7169203331\"} 5.0\n"
            ),
            "{out}"
        );
        // Untraced series carry none.
        f.add(&["v"], 1);
        let mut registry = Registry::default();
        f.register(&mut registry);
        assert!(encode(&registry).contains("spend_total{workflow=\"v\"} 1\n"));
    }

    #[test]
    fn the_text_format_names_counters_with_their_total_and_drops_what_it_lacks() {
        let f = Family::new("c_total", "Calls (\"quoted\").", &["workflow"]);
        let trace = TraceRef {
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "b7ad6b7169203331".into(),
        };
        f.add_traced(&["a # {b}"], 3, Some(&trace));
        let m = Metrics::default();
        m.route_latency.observe(Duration::from_micros(300), Some(&trace));
        let mut registry = Registry::default();
        f.register(&mut registry);
        m.register(&mut registry);
        let text = to_prometheus_text(&encode(&registry));
        assert!(
            text.contains("# HELP c_total Calls (\"quoted\").\n# TYPE c_total counter\n"),
            "{text}"
        );
        // A label value that looks like an exemplar stays; the exemplar goes.
        assert!(text.contains("c_total{workflow=\"a # {b}\"} 3\n"), "{text}");
        assert!(
            text.contains("# TYPE switchyard_route_latency_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_route_latency_seconds_bucket{le=\"0.0005\"} 1\n"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT") && !text.contains("trace_id"),
            "{text}"
        );
    }

    #[test]
    fn only_a_scraper_that_asks_for_text_and_not_openmetrics_gets_text() {
        assert!(!wants_prometheus_text(None));
        assert!(!wants_prometheus_text(Some("*/*")));
        assert!(wants_prometheus_text(Some("text/plain; version=0.0.4")));
        assert!(!wants_prometheus_text(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
    }

    #[test]
    fn readings_encode_as_counters_and_gauges_with_their_labels() {
        let mut budgets = Readings::family("b_remaining", MetricType::Gauge, "Left");
        budgets.push(vec![("workflow", "a\"b".into())], Reading::Int(-5));
        budgets.push(vec![("workflow", "c".into())], Reading::Real(f64::INFINITY));
        let all = vec![
            Readings::one("x_total", MetricType::Counter, "Xs", Reading::Count(3)),
            budgets,
        ];
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ReadingsCollector(std::sync::Arc::new(all))));
        let out = encode(&registry);
        assert!(out.contains("# TYPE x counter\nx_total 3\n"), "{out}");
        assert!(out.contains("b_remaining{workflow=\"a\\\"b\"} -5\n"), "{out}");
        // OpenMetrics spells infinity case-insensitively, with the sign optional.
        assert!(out.contains("b_remaining{workflow=\"c\"} inf\n"), "{out}");
    }
}
