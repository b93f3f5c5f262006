//! `switchyard budget reconcile`: after Redis lost state it had
//! acknowledged, rebuild its budget counters from the sidecars' journals.

use std::path::{Path, PathBuf};

use crate::store::redis::acks::{fold_file, Folded};

pub struct ReconcileArgs {
    pub redis_url: String,
    pub prefix: String,
    pub journals: Vec<PathBuf>,
    pub dry_run: bool,
    pub format: String,
}

/// A journal and the sidecar it belongs to, from a state folder or an
/// `acks.jsonl` beside its `sidecar-id`.
fn journal_of(path: &Path) -> Result<(String, Folded), String> {
    let (dir, file) = if path.is_dir() {
        (path.to_path_buf(), path.join("acks.jsonl"))
    } else {
        (
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
            path.to_path_buf(),
        )
    };
    let id_file = dir.join("sidecar-id");
    let holder = std::fs::read_to_string(&id_file)
        .map(|s| s.trim().to_string())
        .map_err(|e| {
            format!(
                "cannot read {} ({e}): pass a sidecar's --state-dir, or its acks.jsonl with sidecar-id beside it",
                id_file.display()
            )
        })?;
    if !file.exists() {
        return Ok((holder, Folded::default()));
    }
    Ok((holder, fold_file(&file)?))
}

/// `switchyard budget init`: marks Redis as this deployment's budget store.
/// Returns 0 (also when it already was), or 1 when Redis cannot be reached.
pub async fn budget_init(redis_url: String, prefix: String) -> i32 {
    let store = match super::redis_reader(&redis_url, &prefix, Path::new("")).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    match store.write_store_record("initialised by switchyard budget init").await {
        Ok(true) => {
            super::print_text(&format!(
                "initialised: {} is now this deployment's budget store",
                store.store_key()
            ));
            0
        }
        Ok(false) => {
            super::print_text(&format!(
                "already initialised: {} exists; nothing changed",
                store.store_key()
            ));
            0
        }
        Err(e) => {
            eprintln!("cannot write {}: {e}", store.store_key());
            1
        }
    }
}

/// Returns the exit code: 0; 1 when Redis cannot be reconciled; 64 for bad
/// flags or journals.
pub async fn reconcile(a: ReconcileArgs) -> i32 {
    if !matches!(a.format.as_str(), "table" | "json") {
        eprintln!("--format `{}` is not table or json", a.format);
        return 64;
    }
    if a.journals.is_empty() {
        eprintln!("name every sidecar's state folder with --journal DIR (repeat it): reconcile rebuilds the counters from what they acknowledged");
        return 64;
    }
    let mut journals = Vec::new();
    for p in &a.journals {
        match journal_of(p) {
            Ok(j) => journals.push(j),
            Err(e) => {
                eprintln!("{e}");
                return 64;
            }
        }
    }
    let store = match super::redis_reader(&a.redis_url, &a.prefix, Path::new("")).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let done = match store.reconcile(&journals, a.dry_run).await {
        Ok(d) => {
            // Rebuilt from the journals: the store holds the deployment's state again.
            if !a.dry_run {
                if let Err(e) = store.write_store_record("reconciled").await {
                    eprintln!("cannot write {}: {e}", store.store_key());
                    return 1;
                }
            }
            d
        }
        Err(e) => {
            eprintln!("cannot reconcile: {e}");
            return 1;
        }
    };
    if a.format == "json" {
        super::print_json(&serde_json::json!({
            "dry_run": a.dry_run,
            "sidecars": journals.len(),
            "workflows": done,
        }));
        return 0;
    }
    use std::fmt::Write as _;
    let usd = crate::money::format_usd_exact;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{} from {} sidecar journals{}",
        if a.dry_run { "would reconcile" } else { "reconciled" },
        journals.len(),
        if a.dry_run { " (dry run: nothing written)" } else { "" }
    );
    for w in &done {
        let _ = writeln!(
            t,
            "\nworkflow {}{}",
            w.workflow,
            w.lost_noticed_by
                .as_deref()
                .map(|by| format!(" (state lost; noticed by sidecar {by})"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            t,
            "  {:<48} {:>16} {:>16} {:>16}",
            "scope", "spent in Redis", "journals", "spent after"
        );
        for s in &w.scopes {
            let _ = writeln!(
                t,
                "  {:<48} {:>16} {:>16} {:>16}",
                s.scope,
                usd(s.spent_before_nanousd),
                usd(s.journals_nanousd),
                usd(s.spent_after_nanousd)
            );
        }
    }
    super::print_text(t.trim_end());
    0
}
