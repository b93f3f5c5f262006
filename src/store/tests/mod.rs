//! The stores' conformance suite, run against both backends, and the
//! embedded store's own tests.

pub(crate) mod conformance;
mod embedded;

/// One dollar in nano-dollars.
pub(crate) const DOLLAR: i64 = 1_000_000_000;
