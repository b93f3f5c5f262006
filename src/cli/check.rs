//! `switchyard check`.

use std::path::Path;

use crate::rules::{summary, RuleTable, ScopeGuard};

/// `switchyard check`: prints a summary and returns 0, or prints every
/// problem as `file:line:col: key: message` and returns 1. With a state
/// folder, a budget whose period or time zone differs from what it serves is
/// a problem too, unless `allow_scope_reset`.
pub fn check(rules: &Path, state_dir: Option<&Path>, allow_scope_reset: bool) -> i32 {
    let loaded = match state_dir {
        None => RuleTable::load(rules),
        Some(dir) => {
            let file = dir.join(crate::rules::reload::SCOPES_FILE);
            match ScopeGuard::read(&file, allow_scope_reset) {
                Ok(guard) => RuleTable::load_guarded(rules, &guard).inspect(|table| {
                    for (w, was, now) in guard.changes(table) {
                        eprintln!(
                            "note: workflow `{w}`: the budget's scope changes from {was} to {now} (a fresh scope)"
                        );
                    }
                }),
                Err(e) => {
                    eprintln!("{e}");
                    return 1;
                }
            }
        }
    };
    match loaded {
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
