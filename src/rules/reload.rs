//! Hot reload of the rule table.
//!
//! Kubernetes mounts a ConfigMap as a folder of symlinks into a `..data`
//! symlink that it swaps atomically; editors and `mv` replace a file by rename.
//! Both are caught by watching the *folder* (not the file) with `notify`, and a
//! once-a-second poll of the files' bytes backs the watcher up, for file
//! systems that send no events. A change takes effect within about a second.
//!
//! A new table is validated whole, then swapped in with `arc-swap`: requests in
//! flight keep the table they started with, and none is dropped. A broken file
//! keeps the last good table; the error is logged at ERROR once per distinct
//! content and shown on the admin port (`/healthz`, `/metrics`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};

use super::{content_hash, rule_files, RuleTable, RulesError, ScopeGuard};

/// How often the files are re-read even without an event.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Events come in bursts (a ConfigMap swap is several renames): wait this long
/// for the burst to end before reading.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The outcome of the most recent reload attempt, for operators.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    /// The last attempt failed and the table in use is older than the files.
    pub failing: bool,
    /// The failure, with `file:line:col` for each problem.
    pub last_error: Option<String>,
    /// When the table in use was loaded.
    pub loaded_at: Option<SystemTime>,
}

/// The live rule table and its reload state. Shared by every request.
pub struct Rules {
    path: PathBuf,
    current: ArcSwap<RuleTable>,
    status: Mutex<ReloadStatus>,
    /// Successful reloads since start (the initial load is not counted).
    pub reloads_ok: AtomicU64,
    /// Failed reload attempts since start, one per distinct broken content.
    pub reloads_failed: AtomicU64,
    /// Content hash of the last broken files, so a broken file is reported once.
    last_failed_hash: AtomicU64,
    /// Told of every reload: whether it took, and the files' SHA-256 or the error.
    on_reload: std::sync::OnceLock<ReloadHook>,
    /// Where the budget scopes in force are recorded (`serve`'s state
    /// folder), and whether a change of period or time zone may start a
    /// fresh scope.
    scope_file: Option<PathBuf>,
    allow_scope_reset: bool,
    /// Told of each budget scope a load started afresh: workflow, was, now.
    on_scope_reset: std::sync::OnceLock<ScopeHook>,
}

/// Called with (workflow, the scope it had, the scope it has) for each
/// budget whose period or time zone changed with `--allow-scope-reset`.
pub type ScopeHook = Box<dyn Fn(&str, &str, &str) + Send + Sync>;

/// A budget scope started afresh: workflow, the scope it had, the one it has.
pub type ScopeChange = (String, String, String);

/// The file in a state folder that records the budget scopes in force.
pub const SCOPES_FILE: &str = "budget-scopes.json";

/// Called after each reload attempt with `Ok(sha256 of the files)` or `Err(why)`.
pub type ReloadHook = Box<dyn Fn(Result<&str, &str>) + Send + Sync>;

impl Rules {
    /// Loads the table for the first time. A failure here is fatal to `serve`.
    pub fn load(path: &Path) -> Result<Rules, RulesError> {
        Ok(Rules::load_table(path, RuleTable::load(path)?))
    }

    /// Loads the table for `serve`: a budget whose period or time zone
    /// differs from what `state_dir` last served is refused at its key unless
    /// `allow_scope_reset`; returns the rules and the scopes started afresh.
    pub fn load_serving(
        path: &Path,
        state_dir: &Path,
        allow_scope_reset: bool,
    ) -> Result<(Rules, Vec<ScopeChange>), String> {
        let scope_file = state_dir.join(SCOPES_FILE);
        let guard = ScopeGuard::read(&scope_file, allow_scope_reset)?;
        let table = RuleTable::load_guarded(path, &guard).map_err(|e| e.to_string())?;
        let changes = guard.changes(&table);
        ScopeGuard::write(&table, &scope_file)
            .map_err(|e| format!("cannot record the budget scopes in {}: {e}", scope_file.display()))?;
        let mut rules = Rules::load_table(path, table);
        rules.scope_file = Some(scope_file);
        rules.allow_scope_reset = allow_scope_reset;
        Ok((rules, changes))
    }

    fn load_table(path: &Path, table: RuleTable) -> Rules {
        Rules {
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(table),
            status: Mutex::new(ReloadStatus {
                loaded_at: Some(SystemTime::now()),
                ..ReloadStatus::default()
            }),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_failed_hash: AtomicU64::new(0),
            on_reload: std::sync::OnceLock::new(),
            scope_file: None,
            allow_scope_reset: false,
            on_scope_reset: std::sync::OnceLock::new(),
        }
    }

    /// Sets the function told of each budget scope a reload starts afresh.
    pub fn on_scope_reset(&self, hook: ScopeHook) {
        let _ = self.on_scope_reset.set(hook);
    }

    /// The table in use. Cheap: one atomic load and a reference count.
    pub fn current(&self) -> Arc<RuleTable> {
        self.current.load_full()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the function told of every reload (once; later calls are ignored).
    pub fn on_reload(&self, hook: ReloadHook) {
        let _ = self.on_reload.set(hook);
    }

    fn tell(&self, r: Result<&str, &str>) {
        if let Some(h) = self.on_reload.get() {
            h(r);
        }
    }

    pub fn status(&self) -> ReloadStatus {
        // A poisoned lock only means a panic elsewhere mid-update; the status
        // is plain data and still worth showing.
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the files and swaps in the new table if they changed and are
    /// valid. Returns `true` when a new table was swapped in.
    pub fn reload_if_changed(&self) -> bool {
        let hash = match snapshot(&self.path) {
            Snapshot::Files(h) => h,
            // Something that will not fix itself (the folder emptied, a file
            // unreadable): fingerprint the problem, so it is reported once,
            // through the same path as a broken file.
            Snapshot::Unreadable(why) => content_hash(std::iter::once((Path::new(""), why.as_bytes()))),
            // A file vanished between listing and reading: a swap in progress.
            Snapshot::Transient => return false,
        };
        if hash == self.current.load().content_hash {
            // The files are the table in use again (a broken edit reverted):
            // whatever failed since is over.
            let cleared = {
                let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
                std::mem::replace(&mut s.failing, false).then(|| s.last_error.take())
            };
            if cleared.is_some() {
                self.last_failed_hash.store(0, Ordering::Relaxed);
                tracing::info!(rules = %self.path.display(), "rules files restored to the table in use; reload no longer failing");
                self.tell(Ok(&files_sha256(&self.path).unwrap_or_default()));
            }
            return false;
        }
        if hash == self.last_failed_hash.load(Ordering::Relaxed) {
            return false;
        }
        let guard = ScopeGuard::of(&self.current.load(), self.allow_scope_reset);
        let loaded = if self.scope_file.is_some() {
            RuleTable::load_guarded(&self.path, &guard)
        } else {
            RuleTable::load(&self.path)
        };
        match loaded {
            Ok(table) => {
                for (workflow, was, now) in guard.changes(&table) {
                    tracing::warn!(workflow = %workflow, was = %was, now = %now, "--allow-scope-reset: a budget starts a fresh scope; its spend so far stays in the old one");
                    if let Some(h) = self.on_scope_reset.get() {
                        h(&workflow, &was, &now);
                    }
                }
                if let Some(file) = &self.scope_file {
                    if let Err(e) = ScopeGuard::write(&table, file) {
                        tracing::warn!(file = %file.display(), error = %e, "cannot record the budget scopes in force");
                    }
                }
                tracing::info!(
                    rules = %self.path.display(),
                    summary = %super::summary(&table),
                    "rules reloaded"
                );
                // The status first: whoever routes with the new table also
                // sees the failure cleared on /healthz and /metrics.
                *self.status.lock().unwrap_or_else(|e| e.into_inner()) = ReloadStatus {
                    failing: false,
                    last_error: None,
                    loaded_at: Some(SystemTime::now()),
                };
                self.last_failed_hash.store(0, Ordering::Relaxed);
                self.current.store(Arc::new(table));
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                self.tell(Ok(&files_sha256(&self.path).unwrap_or_default()));
                true
            }
            Err(e) => {
                tracing::error!(
                    rules = %self.path.display(),
                    error = %e,
                    "rules reload FAILED; still serving the last good rules until the files are fixed"
                );
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                self.last_failed_hash.store(hash, Ordering::Relaxed);
                self.tell(Err(&e.to_string()));
                let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
                s.failing = true;
                s.last_error = Some(e.to_string());
                false
            }
        }
    }

    /// Watches the rules path until `shutdown` resolves.
    pub async fn watch(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let wake = Arc::new(tokio::sync::Notify::new());
        let _watcher = {
            let wake = wake.clone();
            let dir = if self.path.is_dir() {
                self.path.clone()
            } else {
                self.path
                    .parent()
                    .map(Path::to_path_buf)
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or_else(|| PathBuf::from("."))
            };
            // The folder may hold other files that change all the time (the
            // store's WAL, when the state dir is the rules folder): only
            // events that may touch the rules wake the reload.
            let file = (!self.path.is_dir())
                .then(|| self.path.file_name().map(|n| n.to_os_string()))
                .flatten();
            let relevant = move |event: &notify::Event| {
                event
                    .paths
                    .iter()
                    .any(|p| may_be_rules(p.file_name().and_then(|n| n.to_str()), file.as_deref()))
            };
            let on_event = move |event: notify::Result<notify::Event>| {
                // A watcher error may mean missed events: check the files.
                if event.as_ref().map_or(true, &relevant) {
                    wake.notify_one();
                }
            };
            match notify::recommended_watcher(on_event) {
                Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
                    Ok(()) => Some(w),
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the rules folder; falling back to polling every second");
                        None
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "no file watcher available; falling back to polling every second");
                    None
                }
            }
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = wake.notified() => tokio::time::sleep(DEBOUNCE).await,
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
            // Reading a few small files is cheap, but it is blocking I/O.
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
        }
    }
}

/// Whether an event on the file `name` in the watched folder may change the
/// rules: the rules file itself (`file`, when the path is one file), any
/// `.toml` file when it is a folder, and Kubernetes' `..data` and
/// timestamped `..` folders that a ConfigMap swap renames. An event without
/// a name may be anything.
fn may_be_rules(name: Option<&str>, file: Option<&std::ffi::OsStr>) -> bool {
    let Some(name) = name else { return true };
    if name.starts_with("..") {
        return true;
    }
    match file {
        Some(f) => f == name,
        None => name.ends_with(".toml"),
    }
}

/// The SHA-256 of the rules files' bytes, in load order, for the audit log.
pub fn files_sha256(path: &Path) -> Option<String> {
    let mut all = Vec::new();
    for f in rule_files(path).ok()? {
        all.extend_from_slice(f.to_string_lossy().as_bytes());
        all.push(0);
        all.extend_from_slice(&std::fs::read(&f).ok()?);
    }
    Some(crate::hashing::sha256_hex(&all))
}

/// What the rules path holds now, as reload sees it.
enum Snapshot {
    /// The fingerprint of every rules file's path and bytes.
    Files(u64),
    /// A problem that stays until someone fixes it.
    Unreadable(String),
    /// A file vanished between listing and reading: try at the next tick.
    Transient,
}

fn snapshot(path: &Path) -> Snapshot {
    let files = match rule_files(path) {
        Ok(f) => f,
        Err(e) => return Snapshot::Unreadable(e.to_string()),
    };
    let mut read = Vec::with_capacity(files.len());
    for f in files {
        match std::fs::read(&f) {
            Ok(bytes) => read.push((f, bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Snapshot::Transient,
            Err(e) => return Snapshot::Unreadable(format!("{}: {e}", f.display())),
        }
    }
    Snapshot::Files(content_hash(read.iter().map(|(p, b)| (p.as_path(), b.as_slice()))))
}

#[cfg(test)]
mod tests {
    use super::may_be_rules;
    use std::ffi::OsStr;

    #[test]
    fn only_events_that_may_touch_the_rules_wake_a_reload() {
        let file = Some(OsStr::new("rules.toml"));
        assert!(may_be_rules(Some("rules.toml"), file));
        assert!(may_be_rules(Some("..data"), file), "a ConfigMap swap");
        assert!(may_be_rules(Some("..2026_12_01_10_00_00.123"), file));
        assert!(may_be_rules(None, file), "an event without a name may be anything");
        assert!(!may_be_rules(Some("budget.db-wal"), file), "the store beside the rules");
        assert!(
            !may_be_rules(Some("other.toml"), file),
            "another file when the path is one file"
        );
        // A folder of rules: any TOML file in it.
        assert!(may_be_rules(Some("20-models.toml"), None));
        assert!(!may_be_rules(Some("audit.jsonl"), None));
    }
}
