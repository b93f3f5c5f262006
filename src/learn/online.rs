//! Learning inside `serve`: remember what each routed call looked like, turn
//! feedback and outcomes into labelled calls, keep those in the store, and
//! fold the store's labelled calls into the model, off the Route path.
//!
//! The store is the source of truth: a sidecar appends its labelled calls,
//! then applies every labelled call the store holds after its cursor, its
//! own included, in the store's order. So a restarted sidecar rebuilds the
//! same model, and sidecars sharing Redis share one model.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::{Features, LearnEvent, Learner, LearningGate};
use crate::ledger::OutcomeStatus;
use crate::recent::Recent;
use crate::rules::reload::Rules;
use crate::store::{LearningStore, SharedStore, StoreError, StoreView};

/// Routed calls remembered for labelling, and for how long.
const PENDING_CAPACITY: u64 = 200_000;
const PENDING_TTL: Duration = Duration::from_secs(24 * 3600);
/// Labelled calls waiting to be stored; past this they are dropped and counted.
const QUEUE: usize = 10_000;
/// Labelled calls read from the store at a time.
const PAGE: usize = 1024;
/// How often the store is read for other sidecars' labelled calls.
const POLL: Duration = Duration::from_millis(250);

/// A routed call, as learning needs it.
struct Example {
    workflow: String,
    tier: u8,
    retry: bool,
    features: Features,
    /// Labelled by RecordFeedback: a later outcome does not relabel it.
    labelled: AtomicBool,
}

/// A routed call, as Route hands it over.
pub struct RoutedCall<'a> {
    pub decision_id: &'a str,
    pub workflow: &'a str,
    pub outcome_id: &'a str,
    /// The chosen model's tier for the request's task class.
    pub tier: u8,
    /// It came after a rejected attempt.
    pub retry: bool,
    /// It was sent to a random tier.
    pub explored: bool,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct LearnCounters {
    /// Labelled calls sent to the store.
    pub labelled: AtomicU64,
    /// Feedback or outcomes for calls this sidecar no longer remembers.
    pub unmatched: AtomicU64,
    /// Feedback for a call already labelled, not learned again.
    pub repeated: AtomicU64,
    /// Labelled calls dropped because the store was behind.
    pub dropped: AtomicU64,
    /// Labelled calls folded into the model (this sidecar's and others').
    pub applied: AtomicU64,
    /// Routed calls sent to a random tier.
    pub explored: AtomicU64,
    /// Store reads or writes that failed.
    pub store_errors: AtomicU64,
}

/// One key for a workflow's outcome: names cannot hold the separator (rules
/// names are checked, and outcome IDs have no control characters).
/// What the maps below are keyed by: a 128-bit hash, under a seed chosen at
/// start, of a decision ID or of a workflow and outcome ID. Every Route
/// remembers its call; with the strings themselves as keys that was seven
/// allocations a Route, and 60 bytes more for each of the 200,000 calls held.
type Key = u128;

pub struct Online {
    pub learner: Arc<Learner>,
    pub counters: LearnCounters,
    /// [`Online::decision_key`] -> the call.
    pending: Recent<Key, Arc<Example>>,
    /// [`Online::outcome_key`] -> the decisions routed under it.
    by_outcome: Recent<Key, Vec<Key>>,
    /// Where rejections are kept, for whichever sidecar routes the retry.
    store: Arc<dyn LearningStore>,
    /// The keys' hash seed.
    seed: u64,
    tx: tokio::sync::mpsc::Sender<LearnEvent>,
    rx: Mutex<Option<tokio::sync::mpsc::Receiver<LearnEvent>>>,
}

impl Online {
    pub fn new(learner: Arc<Learner>, store: Arc<dyn LearningStore>) -> Online {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        Online {
            learner,
            counters: LearnCounters::default(),
            pending: Recent::new(PENDING_CAPACITY, PENDING_TTL),
            by_outcome: Recent::new(PENDING_CAPACITY, PENDING_TTL),
            store,
            seed: crate::hashing::random_seed(),
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    fn decision_key(&self, decision_id: &str) -> Key {
        xxhash_rust::xxh3::xxh3_128_with_seed(decision_id.as_bytes(), self.seed)
    }

    /// The workflow's hash seeds the outcome ID's, so that the pair is
    /// unambiguous without joining the strings.
    fn outcome_key(&self, workflow: &str, outcome_id: &str) -> Key {
        let workflow = xxhash_rust::xxh3::xxh3_64_with_seed(workflow.as_bytes(), self.seed);
        xxhash_rust::xxh3::xxh3_128_with_seed(outcome_id.as_bytes(), workflow)
    }

    /// A uniform draw in 0..1 (fastrand's per-thread generator).
    pub fn draw(&self) -> f64 {
        fastrand::f64()
    }

    /// Remembers a routed call so that its feedback or outcome can label it.
    fn remember_call(&self, call: RoutedCall<'_>, features: Features) {
        let RoutedCall {
            decision_id,
            workflow,
            outcome_id,
            tier,
            retry,
            explored,
        } = call;
        if explored {
            self.counters.explored.fetch_add(1, Ordering::Relaxed);
        }
        let id = self.decision_key(decision_id);
        let outcome = (!outcome_id.is_empty()).then(|| self.outcome_key(workflow, outcome_id));
        self.pending.insert(
            id,
            Arc::new(Example {
                workflow: workflow.to_string(),
                tier,
                retry,
                features,
                labelled: AtomicBool::new(false),
            }),
        );
        if let Some(outcome) = outcome {
            self.by_outcome.update(outcome, |ids| ids.push(id));
        }
    }

    /// RecordFeedback: labels one call, once; the first feedback stands.
    pub fn feedback(&self, decision_id: &str, accepted: bool) {
        let Some(ex) = self.pending.get(&self.decision_key(decision_id)) else {
            self.counters.unmatched.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // One label per call: feedback sent again (a client's retry, or a
        // caller leaning on the model) is recorded in the ledger but does
        // not teach the model twice.
        if ex.labelled.swap(true, Ordering::Relaxed) {
            self.counters.repeated.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.send(&ex, if accepted { 1.0 } else { 0.0 });
    }

    /// RecordOutcome: labels every call of the outcome that feedback did not.
    pub fn outcome(&self, workflow: &str, outcome_id: &str, status: OutcomeStatus) {
        let label = match status {
            OutcomeStatus::Accepted => 1.0,
            OutcomeStatus::Corrected => 0.5,
            OutcomeStatus::Rejected => 0.0,
            OutcomeStatus::Abandoned => return,
        };
        let Some(ids) = self.by_outcome.get(&self.outcome_key(workflow, outcome_id)) else {
            self.counters.unmatched.fetch_add(1, Ordering::Relaxed);
            return;
        };
        for id in ids {
            if let Some(ex) = self.pending.get(&id) {
                if !ex.labelled.swap(true, Ordering::Relaxed) {
                    self.send(&ex, label);
                }
            }
        }
    }

    fn send(&self, ex: &Example, label: f32) {
        let event = LearnEvent {
            workflow: ex.workflow.clone(),
            tier: ex.tier,
            retry: ex.retry,
            label,
            features: ex.features.clone(),
        };
        match self.tx.try_send(event) {
            Ok(()) => self.counters.labelled.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.counters.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// Folds in every labelled call the store holds for the rules'
    /// learning workflows after `cursors`; returns how many.
    pub async fn catch_up(
        &self,
        store: &SharedStore,
        rules: &Rules,
        cursors: &mut HashMap<String, String>,
    ) -> Result<u64, StoreError> {
        let table = rules.current();
        let mut n = 0u64;
        for wf in table.workflows.iter().filter(|w| w.learning.enabled) {
            let cursor = cursors.entry(wf.name.clone()).or_default();
            match self.learner.skip_evicted(&wf.name) {
                super::model::Skip::Yes => continue,
                super::model::Skip::Refold => cursor.clear(),
                super::model::Skip::No => {}
            }
            loop {
                let page = store.learning_since(&wf.name, cursor, PAGE).await?;
                let full = page.len() == PAGE;
                for (at, body) in page {
                    match body.and_then(|b| LearnEvent::decode_body(&wf.name, &b)) {
                        Some(e) => {
                            self.learner.apply(&e);
                            n += 1;
                        }
                        // A damaged entry is skipped, not fatal: the cursor moves past it.
                        None => {
                            tracing::warn!(workflow = %wf.name, at = %at, "learning: skipped a damaged labelled call")
                        }
                    }
                    *cursor = at;
                }
                if !full {
                    break;
                }
            }
        }
        self.counters.applied.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }

    /// The learning loop: store labelled calls, then fold in what the store
    /// holds, until `stop` fires (after a last round).
    pub async fn run(
        self: Arc<Self>,
        store: SharedStore,
        rules: Arc<Rules>,
        mut cursors: HashMap<String, String>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(PoisonError::into_inner).take() else {
            return;
        };
        let mut failing = false;
        let mut backlog: Vec<LearnEvent> = Vec::new();
        loop {
            let stopping = tokio::select! {
                _ = stop.changed() => true,
                _ = tokio::time::sleep(POLL) => false,
                n = rx.recv_many(&mut backlog, PAGE), if backlog.len() < QUEUE => n == 0,
            };
            while let Ok(e) = rx.try_recv() {
                backlog.push(e);
            }
            let result = async {
                if !backlog.is_empty() {
                    let table = rules.current();
                    let mut groups: HashMap<&str, Vec<Vec<u8>>> = HashMap::new();
                    for e in &backlog {
                        groups.entry(e.workflow.as_str()).or_default().push(e.encode_body());
                    }
                    for (wf, events) in groups {
                        let window = table.workflow(wf).map_or(20_000, |w| w.learning.window);
                        store.append_learning(wf, window, &events).await?;
                    }
                    backlog.clear();
                }
                self.catch_up(&store, &rules, &mut cursors).await
            }
            .await;
            match result {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("learning: the store answers again; labelled calls are stored and applied");
                }
                Ok(_) => {}
                Err(e) => {
                    self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        failing = true;
                        tracing::warn!(error = %e, held = backlog.len(), "learning: the store failed; labelled calls are held and retried");
                    }
                }
            }
            if stopping {
                return;
            }
        }
    }
}

#[async_trait::async_trait]
impl LearningGate for Online {
    fn learner(&self) -> &Learner {
        &self.learner
    }

    fn draw(&self) -> f64 {
        Online::draw(self)
    }

    async fn rejected_tier(&self, workflow: &str, outcome_id: &str) -> Result<Option<u8>, StoreError> {
        self.store.rejected_tier(workflow, outcome_id).await
    }

    fn remember(&self, call: RoutedCall<'_>, features: Features) {
        self.remember_call(call, features)
    }
}

/// `explain`'s learning: the model folded from a store's labelled calls, in
/// the store's order, as `serve` folds them, with the outcome's rejected
/// tier from the same store. It explores nothing (a draw of 1) and keeps
/// nothing.
pub struct Folded {
    learner: Learner,
    view: Arc<dyn StoreView>,
}

impl Folded {
    /// Folds every labelled call `view` holds for the workflows given.
    pub async fn from_view(view: Arc<dyn StoreView>, workflows: &[&str]) -> Result<(Folded, u64), StoreError> {
        let learner = Learner::new();
        let mut n = 0;
        for wf in workflows {
            let mut cursor = String::new();
            loop {
                let page = view.view_learning(wf, &cursor, PAGE).await?;
                let full = page.len() == PAGE;
                for (at, body) in page {
                    if let Some(e) = body.and_then(|b| LearnEvent::decode_body(wf, &b)) {
                        learner.apply(&e);
                        n += 1;
                    }
                    cursor = at;
                }
                if !full {
                    break;
                }
            }
        }
        Ok((Folded { learner, view }, n))
    }
}

#[async_trait::async_trait]
impl LearningGate for Folded {
    fn learner(&self) -> &Learner {
        &self.learner
    }

    fn draw(&self) -> f64 {
        1.0
    }

    async fn rejected_tier(&self, workflow: &str, outcome_id: &str) -> Result<Option<u8>, StoreError> {
        self.view.view_rejected_tier(workflow, outcome_id).await
    }

    fn remember(&self, _: RoutedCall<'_>, _: Features) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    /// A caller that sends feedback for one call many times, at once, teaches
    /// the model once: the first label stands.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn repeated_feedback_for_a_call_labels_it_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(SqliteStore::open(dir.path()).expect("store"));
        let online = Arc::new(Online::new(Arc::new(Learner::new()), store));
        online.remember_call(
            RoutedCall {
                decision_id: "d-1",
                workflow: "w",
                outcome_id: "o-1",
                tier: 2,
                retry: false,
                explored: false,
            },
            Features::default(),
        );
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let online = online.clone();
                tokio::spawn(async move { online.feedback("d-1", i % 2 == 0) })
            })
            .collect();
        for t in tasks {
            t.await.expect("feedback");
        }
        online.outcome("w", "o-1", OutcomeStatus::Rejected);
        let c = &online.counters;
        assert_eq!(c.labelled.load(Ordering::Relaxed), 1);
        assert_eq!(c.repeated.load(Ordering::Relaxed), 31);
        assert_eq!(c.unmatched.load(Ordering::Relaxed), 0);
    }
}
