//! One error type for everything a request can get wrong. Each variant decides
//! its gRPC status in one exhaustive match (in `grpc`), so a new variant forces
//! that choice; each message says what to fix.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The request is malformed; the message names the field.
    InvalidArgument(String),
    /// The workflow is not in the rules.
    UnknownWorkflow { name: String, known: Vec<String> },
    /// No model can serve the request under the rules.
    NoAdequateModel(String),
    /// The request is bigger than the server accepts.
    TooLarge(String),
    /// The capability exists in the contract but not in this build yet.
    Unimplemented(&'static str),
    /// A decision or escalation that does not exist.
    NotFound(String),
    /// The request is well formed but the state does not allow it.
    FailedPrecondition(String),
    /// The budget store cannot be reached: money fails closed.
    Unavailable(String),
    /// The caller is known but not allowed this.
    PermissionDenied(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(m)
            | Error::NoAdequateModel(m)
            | Error::TooLarge(m)
            | Error::NotFound(m)
            | Error::FailedPrecondition(m)
            | Error::Unavailable(m)
            | Error::PermissionDenied(m) => f.write_str(m),
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
            Error::Unimplemented(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for Error {}

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
