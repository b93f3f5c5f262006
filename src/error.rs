//! The errors Switchyard answers with, in one place.
//!
//! - [`Error`]: everything a request can get wrong, or that can go wrong
//!   while serving it. Each variant decides its gRPC status code, its log
//!   level and its audit verdict in one exhaustive match each, so a new
//!   variant forces all three choices. Every message says what to fix.
//! - [`StoreError`]: what a budget store reports; it becomes an [`Error`]
//!   through one exhaustive `From`.
//! - [`ConfigError`]: a configuration problem found before any port is
//!   bound; `main` exits with [`EXIT_CONFIG`].

use std::fmt;

use crate::audit::Verdict;

/// Exit code for bad configuration (BSD's EX_USAGE), as linkerd and others use.
pub const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The request is malformed; the message names the field.
    InvalidArgument(String),
    /// The workflow is not in the rules.
    UnknownWorkflow { name: String, known: Vec<String> },
    /// A decision or escalation that does not exist.
    NotFound(String),
    /// The request is well formed but the state does not allow it.
    FailedPrecondition(String),
    /// No model can serve the request under the rules.
    NoAdequateModel(String),
    /// No usable credentials.
    Unauthenticated(String),
    /// The caller is known but not allowed this.
    PermissionDenied(String),
    /// Over a per-caller or per-address limit.
    Limited(String),
    /// The budget store cannot serve the call: money fails closed.
    Unavailable(String),
    /// A fault inside the server (a task that panicked); not the caller's.
    Internal(String),
}

impl Error {
    /// The gRPC status code the caller gets.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::UnknownWorkflow { .. } | Error::NotFound(_) => Code::NotFound,
            Error::FailedPrecondition(_) | Error::NoAdequateModel(_) => Code::FailedPrecondition,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Limited(_) => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        }
    }

    /// How loudly the refusal is logged: a client's mistake is the client's
    /// business (DEBUG); a store that cannot serve is the operator's (WARN);
    /// a fault in the server is a bug (ERROR).
    pub fn level(&self) -> tracing::Level {
        match self {
            Error::InvalidArgument(_)
            | Error::UnknownWorkflow { .. }
            | Error::NotFound(_)
            | Error::FailedPrecondition(_)
            | Error::NoAdequateModel(_)
            | Error::Unauthenticated(_)
            | Error::PermissionDenied(_)
            | Error::Limited(_) => tracing::Level::DEBUG,
            Error::Unavailable(_) => tracing::Level::WARN,
            Error::Internal(_) => tracing::Level::ERROR,
        }
    }

    /// What the audit log records for a request refused with this error.
    pub fn verdict(&self) -> Verdict {
        match self {
            Error::InvalidArgument(_) | Error::UnknownWorkflow { .. } | Error::NoAdequateModel(_) => {
                Verdict::InvalidArgument
            }
            Error::NotFound(_) | Error::FailedPrecondition(_) | Error::Unavailable(_) | Error::Internal(_) => {
                Verdict::Failed
            }
            Error::Unauthenticated(_) => Verdict::Unauthenticated,
            Error::PermissionDenied(_) => Verdict::PermissionDenied,
            Error::Limited(_) => Verdict::Limited,
        }
    }

    /// Logs the refusal at its level.
    pub fn log(&self, rpc: &str) {
        match self.level() {
            tracing::Level::ERROR => tracing::error!(rpc, error = %self, "request failed"),
            tracing::Level::WARN => tracing::warn!(rpc, error = %self, "request failed"),
            _ => tracing::debug!(rpc, error = %self, "request refused"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(m)
            | Error::NotFound(m)
            | Error::FailedPrecondition(m)
            | Error::NoAdequateModel(m)
            | Error::Unauthenticated(m)
            | Error::PermissionDenied(m)
            | Error::Limited(m)
            | Error::Unavailable(m)
            | Error::Internal(m) => f.write_str(m),
            Error::UnknownWorkflow { name, known } => {
                let shown: Vec<&str> = known.iter().take(20).map(String::as_str).collect();
                write!(
                    f,
                    "unknown workflow `{}`: the rules define {}{}; add a [[workflows]] entry or fix the name",
                    truncate(name, 128),
                    shown.join(", "),
                    if known.len() > shown.len() { ", ..." } else { "" }
                )
            }
        }
    }
}

impl std::error::Error for Error {}

/// A task that runs part of a request stopped without an answer: it
/// panicked, or the runtime is shutting down. Either way the server's fault.
impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Error {
        Error::Internal(format!("a task serving the request failed: {e}"))
    }
}

/// Why a budget store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the budget store is unavailable: {0}")]
    Unavailable(String),
    #[error("no decision `{0}`: quote the decision_id that Route returned")]
    UnknownDecision(String),
    #[error("no escalation `{0}`; list them with `switchyard escalations list`")]
    UnknownEscalation(String),
    /// The escalation, and the state it is in (`approved` or `denied`).
    #[error("escalation `{0}` is already {1}")]
    AlreadyResolved(String, &'static str),
    /// An amount the store will not take; the message says the bound.
    #[error("{0}")]
    InvalidAmount(String),
    /// The store came back without state it had acknowledged: budgeted
    /// calls fail closed until an operator reconciles it.
    #[error("{0}")]
    StateLost(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        let msg = e.to_string();
        match e {
            StoreError::Unavailable(_) | StoreError::StateLost(_) => Error::Unavailable(msg),
            StoreError::UnknownDecision(id) => {
                Error::NotFound(StoreError::UnknownDecision(truncate(&id, 64).to_string()).to_string())
            }
            StoreError::UnknownEscalation(_) => Error::NotFound(msg),
            StoreError::AlreadyResolved(..) => Error::FailedPrecondition(msg),
            StoreError::InvalidAmount(_) => Error::InvalidArgument(msg),
        }
    }
}

/// A configuration problem found before binding: `main` exits
/// [`EXIT_CONFIG`] for these.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Cuts untrusted text for an error message, on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_statuses_that_say_what_to_fix() {
        let cases = [
            (StoreError::Unavailable("redis: down".into()), tonic::Code::Unavailable),
            (StoreError::UnknownDecision("d".repeat(500)), tonic::Code::NotFound),
            (StoreError::UnknownEscalation("e".into()), tonic::Code::NotFound),
            (
                StoreError::AlreadyResolved("e".into(), "denied"),
                tonic::Code::FailedPrecondition,
            ),
            (
                StoreError::InvalidAmount("too much".into()),
                tonic::Code::InvalidArgument,
            ),
        ];
        for (store, code) in cases {
            let e = Error::from(store);
            assert_eq!(e.code(), code, "{e}");
            assert!(e.to_string().len() < 200, "untrusted IDs are cut: {e}");
        }
        assert!(Error::from(StoreError::AlreadyResolved("e".into(), "denied"))
            .to_string()
            .contains("already denied"));
    }

    #[tokio::test]
    async fn a_panicked_task_is_internal_and_logged_as_an_error() {
        let join = tokio::spawn(async { panic!("boom") }).await.expect_err("panicked");
        let e = Error::from(join);
        assert_eq!((e.code(), e.level()), (tonic::Code::Internal, tracing::Level::ERROR));
    }
}
