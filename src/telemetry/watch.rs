//! The OTLP exporter, watched: spans in exports that failed are counted for
//! `/metrics`, and a failing collector is logged at most once a minute (the
//! SDK itself reports failures only through its internal logs).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;

/// The longest a failing collector goes without a log line.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What the exporter has sent and lost, for `/metrics`.
#[derive(Debug, Default)]
pub struct ExportCounts {
    pub exported: AtomicU64,
    pub failed: AtomicU64,
}

#[derive(Debug)]
pub struct Watched<E> {
    inner: E,
    counts: Arc<ExportCounts>,
    /// When the failure last logged, and the spans lost since.
    warned: Mutex<(Option<Instant>, u64)>,
}

impl<E> Watched<E> {
    pub fn new(inner: E, counts: Arc<ExportCounts>) -> Watched<E> {
        Watched {
            inner,
            counts,
            warned: Mutex::new((None, 0)),
        }
    }

    fn note(&self, spans: u64, result: &OTelSdkResult) {
        match result {
            Ok(()) => {
                self.counts.exported.fetch_add(spans, Ordering::Relaxed);
            }
            Err(e) => {
                self.counts.failed.fetch_add(spans, Ordering::Relaxed);
                let mut w = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
                w.1 += spans;
                if w.0.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    tracing::warn!(error = %e, spans_lost = w.1, "exporting spans to the OTLP collector failed; retrying with the next batch");
                    *w = (Some(Instant::now()), 0);
                }
            }
        }
    }
}

impl<E: SpanExporter> SpanExporter for Watched<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.inner.export(batch).await;
        self.note(spans, &result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
