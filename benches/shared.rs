//! Inputs shared by the benchmarks.

use switchyard::estimate::tokens;
use switchyard::rules::Encoding;

/// A system context of about 6,000 o200k tokens, varied line by line like
/// real policy text.
pub fn context_6k() -> String {
    let mut s = String::new();
    let mut i = 0;
    while tokens::count(Encoding::O200k, &s) < 6_000 {
        s.push_str(&format!(
            "Policy {i}: when a customer asks about order {i}, check the ledger, cite the clause, and never promise a refund before the review. "
        ));
        i += 1;
    }
    s
}
