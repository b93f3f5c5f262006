//! `switchyard whatif`: what a candidate rule table would have cost and
//! delivered on the decisions the store logged.

use crate::rules::RuleTable;

use super::report::{open_store, ReportSource};

pub struct WhatifArgs {
    pub source: ReportSource,
    pub rules: std::path::PathBuf,
    pub workflow: Option<String>,
    pub since: Option<String>,
    pub format: String,
    pub seed: u64,
}

/// `switchyard whatif`. Returns the exit code: 0, 1 when nothing can be
/// estimated or the store cannot be read, 64 for bad flags or rules.
pub async fn whatif(a: WhatifArgs) -> i32 {
    if !matches!(a.format.as_str(), "table" | "json") {
        eprintln!("--format `{}` is not table or json", a.format);
        return 64;
    }
    let since_ms = match a.since.as_deref().map(str::parse::<jiff::Timestamp>) {
        None => 0,
        Some(Ok(t)) => t.as_millisecond(),
        Some(Err(e)) => {
            eprintln!("--since: {e}; write an RFC 3339 time such as 2026-11-25T00:00:00Z");
            return 64;
        }
    };
    let table = match RuleTable::load(&a.rules) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "the candidate rules at {} fail `switchyard check`; fix them first:\n{e}",
                a.rules.display()
            );
            return 64;
        }
    };
    if let Some(w) = &a.workflow {
        if table.workflow(w).is_none() {
            eprintln!(
                "the candidate rules at {} do not define workflow `{w}`",
                a.rules.display()
            );
            return 64;
        }
    }
    let store = match open_store(&a.source).await {
        Ok(Some(s)) => s,
        Ok(None) => return 1,
        Err(code) => return code,
    };
    let ledger = match store.ledger(a.workflow.as_deref(), since_ms).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot read the logged decisions: {e}");
            return 1;
        }
    };
    let progress = indicatif::ProgressBar::new_spinner().with_message(format!(
        "deciding {} logged calls again and bootstrapping",
        ledger.calls.len()
    ));
    progress.enable_steady_tick(std::time::Duration::from_millis(200));
    let seed = a.seed;
    let estimate = tokio::task::spawn_blocking(move || crate::outcome::whatif::run(&table, &ledger, seed)).await;
    progress.finish_and_clear();
    match estimate {
        Ok(Ok(w)) => {
            let text = match a.format.as_str() {
                "json" => serde_json::to_string_pretty(&w).unwrap_or_default(),
                _ => crate::outcome::whatif::render_table(&w),
            };
            super::print_text(text.trim_end_matches('\n'));
            0
        }
        Ok(Err(nothing)) => {
            eprintln!("{nothing}");
            1
        }
        Err(e) => {
            eprintln!("the estimate failed: {e}");
            1
        }
    }
}
