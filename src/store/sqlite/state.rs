//! What the state folder must hold before the store opens: a store that
//! went missing beside the record of one is refused, not silently replaced.

use std::path::Path;

use super::{file_len, StoreError, FILE, MARKER};

/// What `serve` found in the state folder before opening the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateStart {
    /// A store is there: open it.
    Existing,
    /// No store and no sign of one: a new state folder.
    New,
    /// A store was there and is gone or empty, and `--accept-fresh-store`
    /// says to begin again; what was found is in the text, for the audit.
    FreshAccepted(String),
}

/// The state folder knows it had a store: [`MARKER`] is written when the
/// store is created. A store that is missing or empty beside that record
/// (or beside its own WAL) would start with nothing spent and make the
/// period's whole budget available again, so it is refused with a message
/// that says what happened, unless `accept_fresh` (whose fresh start is
/// then set aside in files and audited by the caller).
pub fn prepare_state_dir(state_dir: &Path, accept_fresh: bool) -> Result<StateStart, String> {
    let db = state_dir.join(FILE);
    let wal = state_dir.join(format!("{FILE}-wal"));
    let marker = state_dir.join(MARKER);
    let size = std::fs::metadata(&db).map(|m| m.len()).ok();
    if size.is_some_and(|n| n > 0) {
        return Ok(StateStart::Existing);
    }
    let created = std::fs::read_to_string(&marker).ok().map(|t| {
        serde_json::from_str::<serde_json::Value>(&t)
            .ok()
            .and_then(|v| v.get("created").and_then(|c| c.as_str()).map(str::to_string))
            .unwrap_or_else(|| "at an unknown time".into())
    });
    let orphan_wal = file_len(&wal) > 0;
    if created.is_none() && !orphan_wal {
        return Ok(StateStart::New);
    }
    let what = match size {
        None => format!("{} is missing", db.display()),
        Some(_) => format!("{} is empty (0 bytes)", db.display()),
    };
    let evidence = match &created {
        Some(at) => format!("{} records a store created {at}", marker.display()),
        None => format!("its write-ahead log {} is still there", wal.display()),
    };
    if !accept_fresh {
        return Err(format!(
            "{what}, but this state folder held a budget store ({evidence}). Starting now would forget every \
             reservation and all the spend recorded there, and make each period's whole budget available again. \
             Restore {FILE} from a backup, or start serve with --accept-fresh-store to begin again with nothing \
             spent (the fresh start is audited)."
        ));
    }
    // Nothing is deleted: what was there is set aside beside it.
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
    for name in [FILE.to_string(), format!("{FILE}-wal"), format!("{FILE}-shm")] {
        let from = state_dir.join(&name);
        if from.exists() {
            let to = state_dir.join(format!("{name}.discarded-{stamp}"));
            std::fs::rename(&from, &to)
                .map_err(|e| format!("cannot set {} aside as {}: {e}", from.display(), to.display()))?;
        }
    }
    Ok(StateStart::FreshAccepted(format!(
        "{what} ({evidence}); started with an empty store, anything left was set aside as *.discarded-{stamp}"
    )))
}

/// Why opening failed, in words that say what to do.
pub(super) fn open_error(path: &Path, e: &rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{CannotOpen, DatabaseCorrupt, NotADatabase, PermissionDenied, ReadOnly};
    let hint = match e.sqlite_error_code() {
        Some(NotADatabase | DatabaseCorrupt) => format!(
            "it is not a SQLite database or it is damaged; restore {FILE} from a backup, or move it aside and \
             start with --accept-fresh-store to begin again with nothing spent"
        ),
        Some(CannotOpen | PermissionDenied | ReadOnly) => {
            "pass --state-dir with a folder this process can write".to_string()
        }
        _ => "see the error above".to_string(),
    };
    StoreError::Unavailable(format!("{}: {e}; {hint}", path.display()))
}
