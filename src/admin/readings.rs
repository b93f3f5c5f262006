//! The readings `/metrics` takes from the process at scrape time: one row
//! per series, its name, type, help and where its value is read.

use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use prometheus_client::metrics::MetricType;

use super::AdminState;
use crate::metrics::{Reading, Readings};

/// What one scrape reads once, for every row to read from.
pub(super) struct Now<'a> {
    s: &'a AdminState,
    st: crate::rules::reload::ReloadStatus,
    table: std::sync::Arc<crate::rules::RuleTable>,
    cache: crate::estimate::cache::CacheStats,
    store: crate::store::StoreHealth,
    held: crate::learn::model::Held,
    loaded: u64,
}

impl<'a> Now<'a> {
    pub(super) fn read(s: &'a AdminState) -> Now<'a> {
        let st = s.rules.status();
        let loaded = st
            .loaded_at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        Now {
            s,
            st,
            table: s.rules.current(),
            cache: s.cache.stats(),
            store: s.store.health(),
            held: s.learning.learner.held(),
            loaded,
        }
    }

    /// Every row's reading.
    pub(super) fn readings(&self) -> Vec<Readings> {
        ROWS.iter()
            .map(|&(name, kind, help, read)| Readings::one(name, kind, help, read(self)))
            .collect()
    }
}

type Row = (&'static str, MetricType, &'static str, fn(&Now<'_>) -> Reading);

const ROWS: &[Row] = &[
    (
        "switchyard_learning_store_errors_total",
        MetricType::Counter,
        "Rounds of the learning loop whose store read or write failed (labelled calls are held and retried).",
        |n| Reading::Count(n.s.learning.counters.store_errors.load(Ordering::Relaxed)),
    ),
    (
        "switchyard_audit_records_total",
        MetricType::Counter,
        "Records written (and fsync'd) to audit.jsonl.",
        |n| Reading::Count(n.s.audit.written.load(Ordering::Relaxed)),
    ),
    (
        "switchyard_audit_dropped_total",
        MetricType::Counter,
        "Audit records dropped because the writer fell behind or the file was not writable.",
        |n| Reading::Count(n.s.audit.dropped.load(Ordering::Relaxed)),
    ),
    (
        "switchyard_learning_labelled_total",
        MetricType::Counter,
        "Routed calls labelled by feedback or an outcome and sent to the store for learning.",
        |n| Reading::Count(n.s.learning.counters.labelled.load(Ordering::Relaxed)),
    ),
    (
        "switchyard_learning_applied_total",
        MetricType::Counter,
        "Labelled calls folded into the learned model (from this sidecar and others sharing the store).",
        |n| Reading::Count(n.s.learning.counters.applied.load(Ordering::Relaxed)),
    ),
    (
        "switchyard_learning_explorations_total",
        MetricType::Counter,
        "Routed calls sent to another tier than the model's choice, where the model doubts it, so that learning keeps seeing every tier.",
        |n| Reading::Count(n.s.learning.counters.explored.load(Ordering::Relaxed)),
    ),
    (
        "switchyard_learning_repeated_feedback_total",
        MetricType::Counter,
        "Feedback for a call that was already labelled: recorded, not learned again.",
        |n| Reading::Count(n.s.learning.counters.repeated.load(Ordering::Relaxed)),
    ),
    (
        "switchyard_learning_unmatched_total",
        MetricType::Counter,
        "Feedback or outcomes for calls this sidecar no longer remembers (not learned from).",
        |n| Reading::Count(n.s.learning.counters.unmatched.load(Ordering::Relaxed)),
    ),
    (
        "switchyard_learning_dropped_total",
        MetricType::Counter,
        "Labelled calls dropped because the store fell behind.",
        |n| Reading::Count(n.s.learning.counters.dropped.load(Ordering::Relaxed)),
    ),
    (
        "switchyard_budget_store_unavailable_total",
        MetricType::Counter,
        "Budget store calls that failed because the store could not serve them (Redis unreachable; SQLite unable to read or write).",
        |n| Reading::Count(n.store.unavailable_total),
    ),
    (
        "switchyard_budget_fail_open_admitted_total",
        MetricType::Counter,
        "Calls admitted under the local fail-open cap while the budget store was unreachable.",
        |n| Reading::Count(n.store.fail_open_admitted_total),
    ),
    (
        "switchyard_budget_journal_pending",
        MetricType::Gauge,
        "ReportUsage settlements journaled locally, waiting for the budget store.",
        |n| Reading::Count(n.store.journal_pending),
    ),
    (
        "switchyard_budget_state_lost",
        MetricType::Gauge,
        "Workflows whose acknowledged budget state the store lost (Redis failover or restart without persistence); their budgeted calls fail closed until `switchyard budget reconcile`.",
        |n| Reading::Count(n.store.state_lost.len() as u64),
    ),
    (
        "switchyard_lease_routes_total",
        MetricType::Counter,
        "Budgeted Routes reserved against this sidecar's lease slice, with no store round trip.",
        |n| Reading::Count(n.store.leased_routes_total),
    ),
    (
        "switchyard_lease_renewals_total",
        MetricType::Counter,
        "Lease slice renewals sent to the budget store (each one store operation).",
        |n| Reading::Count(n.store.lease_renewals_total),
    ),
    (
        "switchyard_lease_renewals_failed_total",
        MetricType::Counter,
        "Lease slice renewals that failed; a slice is spent only until it expires.",
        |n| Reading::Count(n.store.lease_renewals_failed_total),
    ),
    (
        "switchyard_lease_held_nanousd",
        MetricType::Gauge,
        "What this sidecar's lease slices hold of their budgets, in nano-dollars.",
        |n| Reading::Int(n.store.lease_held_nanos),
    ),
    (
        "switchyard_budget_store_failing",
        MetricType::Gauge,
        "1 while the budget store cannot serve budgeted calls (they fail closed); /readyz answers 503.",
        |n| Reading::Count(u64::from(n.store.failing.is_some())),
    ),
    (
        "switchyard_route_decisions_total",
        MetricType::Counter,
        "Route calls answered with a model.",
        |n| Reading::Count(n.s.counters.routed.load(Ordering::Relaxed)),
    ),
    (
        "switchyard_route_rejections_total",
        MetricType::Counter,
        "Route calls refused with an error status.",
        |n| Reading::Count(n.s.counters.rejected.load(Ordering::Relaxed)),
    ),
    (
        "switchyard_rules_reload_failing",
        MetricType::Gauge,
        "1 while the rules files are broken and the last good rules are in use.",
        |n| Reading::Count(u64::from(n.st.failing)),
    ),
    (
        "switchyard_rules_reloads_total",
        MetricType::Counter,
        "Successful rules reloads since start.",
        |n| Reading::Count(n.s.rules.reloads_ok.load(Ordering::Relaxed)),
    ),
    (
        "switchyard_rules_reload_failures_total",
        MetricType::Counter,
        "Failed rules reloads since start (one per distinct broken content).",
        |n| Reading::Count(n.s.rules.reloads_failed.load(Ordering::Relaxed)),
    ),
    (
        "switchyard_rules_loaded_timestamp_seconds",
        MetricType::Gauge,
        "When the rules in use were loaded.",
        |n| Reading::Count(n.loaded),
    ),
    (
        "switchyard_rules_models",
        MetricType::Gauge,
        "Models in the rules in use.",
        |n| Reading::Count(n.table.models.len() as u64),
    ),
    (
        "switchyard_context_cache_hits_total",
        MetricType::Counter,
        "Messages whose token counts and features came from the context cache.",
        |n| Reading::Count(n.cache.hits),
    ),
    (
        "switchyard_context_cache_misses_total",
        MetricType::Counter,
        "Messages counted and scanned afresh.",
        |n| Reading::Count(n.cache.misses),
    ),
    (
        "switchyard_context_cache_entries",
        MetricType::Gauge,
        "Entries in the context caches (message work and warm prefixes).",
        |n| Reading::Count(n.cache.entries),
    ),
    (
        "switchyard_context_cache_weight_bytes",
        MetricType::Gauge,
        "Bytes the context caches are charged against --context-cache-mib.",
        |n| Reading::Count(n.cache.weight_bytes),
    ),
    (
        "switchyard_spans_exported_total",
        MetricType::Counter,
        "Spans the OTLP collector accepted.",
        |n| Reading::Count(n.s.spans.exported.load(Ordering::Relaxed)),
    ),
    (
        "switchyard_spans_export_failed_total",
        MetricType::Counter,
        "Spans in OTLP exports that failed after the exporter's retries (lost; logged at most once a minute).",
        |n| Reading::Count(n.s.spans.failed.load(Ordering::Relaxed)),
    ),
    (
        "switchyard_prefix_cache_hits_total",
        MetricType::Counter,
        "Routes priced with a prefix warm on the chosen model.",
        |n| Reading::Count(n.cache.prefix_hits),
    ),
    (
        "switchyard_learning_memory_bytes",
        MetricType::Gauge,
        "Learned routing state held in memory (weights kept, about 16 bytes each).",
        |n| Reading::Count(n.held.bytes),
    ),
    (
        "switchyard_learning_memory_ceiling_bytes",
        MetricType::Gauge,
        "The most learned routing state held in memory (--learning-memory-mib).",
        |n| Reading::Count(n.held.ceiling_bytes),
    ),
    (
        "switchyard_learning_evicted_workflows",
        MetricType::Gauge,
        "Workflows whose learned state was evicted from memory to stay under the ceiling; reloaded from the store when next routed.",
        |n| Reading::Count(n.held.evicted_workflows),
    ),
    (
        "switchyard_learning_evictions_total",
        MetricType::Counter,
        "Workflow models evicted from memory to stay under the ceiling.",
        |n| Reading::Count(n.held.evictions_total),
    ),
];
