//! `switchyard check`.

use std::path::Path;

use crate::rules::{summary, RuleTable};

/// `switchyard check`: prints a summary and returns 0, or prints every
/// problem as `file:line:col: key: message` and returns 1.
pub fn check(rules: &Path) -> i32 {
    match RuleTable::load(rules) {
        Ok(table) => {
            super::print_text(&format!("ok: {}: {}", rules.display(), summary(&table)));
            0
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "{}: {} problem(s); fix them and run `switchyard check` again",
                rules.display(),
                e.diagnostics.len()
            );
            1
        }
    }
}
