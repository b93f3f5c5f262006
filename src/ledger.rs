//! The ledger: what each call cost, how each outcome ended, and what callers
//! said of each call's output. Reports are aggregations of it.
//!
//! The stores keep it: SQLite in the embedded store (settled reservations are
//! the calls; outcomes and feedback are append-only tables), and in fleet
//! mode one Redis stream per workflow, appended to by the same script that
//! settles a call, so a call enters the ledger exactly once. Prompt text is
//! never part of it.

use serde::{Deserialize, Serialize};

/// One settled call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    pub decision_id: String,
    pub workflow: String,
    pub outcome_id: String,
    pub model: String,
    /// When Route made the decision: the call belongs to this time.
    pub created_ms: i64,
    pub settled_ms: i64,
    pub cost_nanos: i64,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub failed: bool,
    pub downgraded: bool,
    /// Canonical `k=v` pairs, sorted, joined by `\u{1e}`.
    pub labels: String,
    /// The decision as logged for `whatif` (an encoded
    /// `outcome::whatif::Snapshot`), while the decision log keeps it; empty
    /// after its retention or for calls made before it was logged.
    #[serde(skip)]
    pub snapshot: Vec<u8>,
}

impl CallRecord {
    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }

    pub fn has_label(&self, kv: &str) -> bool {
        self.labels.split('\u{1e}').any(|p| p == kv)
    }
}

/// How an outcome ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    Accepted,
    Rejected,
    /// Delivered after a person corrected it: accepted, with intervention.
    Corrected,
    Abandoned,
}

impl OutcomeStatus {
    pub fn name(self) -> &'static str {
        match self {
            OutcomeStatus::Accepted => "accepted",
            OutcomeStatus::Rejected => "rejected",
            OutcomeStatus::Corrected => "corrected",
            OutcomeStatus::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<OutcomeStatus> {
        Some(match s {
            "accepted" => OutcomeStatus::Accepted,
            "rejected" => OutcomeStatus::Rejected,
            "corrected" => OutcomeStatus::Corrected,
            "abandoned" => OutcomeStatus::Abandoned,
            _ => return None,
        })
    }

    /// Whether the work was delivered (a corrected outcome was, with help).
    pub fn is_accepted(self) -> bool {
        matches!(self, OutcomeStatus::Accepted | OutcomeStatus::Corrected)
    }
}

/// One RecordOutcome. A later event for the same outcome replaces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeEvent {
    pub workflow: String,
    pub outcome_id: String,
    pub status: OutcomeStatus,
    pub value_usd: Option<f64>,
    pub human_minutes: Option<f64>,
    pub at_ms: i64,
}

/// One RecordFeedback: whether a call's output was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackEvent {
    pub workflow: String,
    pub decision_id: String,
    pub model: String,
    pub accepted: bool,
    pub at_ms: i64,
}

/// The part of the ledger a report reads.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub calls: Vec<CallRecord>,
    /// In the order they were recorded.
    pub outcomes: Vec<OutcomeEvent>,
    pub feedback: Vec<FeedbackEvent>,
}
