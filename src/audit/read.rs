//! Reading the audit log back: `switchyard audit`, filtered by identity, action and time.

use super::*;

/// What `switchyard audit` keeps.
#[derive(Debug, Default)]
pub struct Filter {
    pub identity: Option<String>,
    pub action: Option<String>,
    pub workflow: Option<String>,
    pub result: Option<String>,
    /// RFC 3339: records at or after it.
    pub since: Option<jiff::Timestamp>,
}

impl Filter {
    fn keeps(&self, r: &Record) -> bool {
        let eq = |f: &Option<String>, v: &str| f.as_deref().is_none_or(|f| f == v);
        eq(&self.identity, &r.identity)
            && eq(&self.action, &r.action)
            && eq(&self.workflow, &r.workflow)
            && eq(&self.result, &r.result)
            && self
                .since
                .is_none_or(|s| r.at.parse::<jiff::Timestamp>().is_ok_and(|t| t >= s))
    }
}

/// Reads the audit log, rotated files included (oldest first), keeping what
/// `filter` keeps; also returns how many lines could not be read (a torn
/// last line after a crash, say).
pub fn read(state_dir: &Path, filter: &Filter) -> Result<(Vec<Record>, usize), String> {
    let (mut out, mut bad) = (Vec::new(), 0usize);
    for path in files(state_dir) {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        for line in std::io::BufReader::new(file).lines() {
            let Ok(line) = line else {
                bad += 1;
                continue;
            };
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Record>(&line) {
                Ok(r) if filter.keeps(&r) => out.push(r),
                Ok(_) => {}
                Err(_) => bad += 1,
            }
        }
    }
    Ok((out, bad))
}

/// `switchyard audit`: prints the kept records as a table or JSON lines.
pub fn command(state_dir: &Path, filter: &Filter, json: bool) -> i32 {
    let (records, bad) = match read(state_dir, filter) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    if bad > 0 {
        eprintln!("{bad} line(s) of the audit log could not be read and were skipped");
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if json {
        for r in &records {
            let _ = serde_json::to_writer(&mut out, r);
            let _ = out.write_all(b"\n");
        }
    } else if records.is_empty() {
        let _ = writeln!(
            out,
            "no audit records{} in {}",
            if state_dir.join(FILE).exists() { " match" } else { "" },
            state_dir.join(FILE).display()
        );
    } else {
        let _ = writeln!(
            out,
            "{:<27} {:<16} {:<20} {:<16} {:<18} {:>7} {:<38} reason",
            "at", "identity", "action", "workflow", "result", "count", "target"
        );
        for r in &records {
            let _ = writeln!(
                out,
                "{:<27} {:<16} {:<20} {:<16} {:<18} {:>7} {:<38} {}{}",
                r.at,
                r.identity,
                r.action,
                r.workflow,
                r.result,
                r.count,
                r.target,
                r.reason,
                if r.peer.is_empty() {
                    String::new()
                } else {
                    format!(" (from {})", r.peer)
                }
            );
        }
    }
    0
}
