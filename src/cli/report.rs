//! `switchyard report`: from the embedded store, a Redis, or a server.

use crate::rules::RuleTable;

use super::{authorized, connect, Connect};
use crate::store::Location;

/// Where `report` and `whatif` read: a store, or (`report`) a running server.
pub enum ReportSource {
    Store(Location),
    Server(String),
}

pub struct ReportArgs {
    pub source: ReportSource,
    pub rules: std::path::PathBuf,
    pub workflow: Option<String>,
    pub period: String,
    pub label: String,
    pub format: String,
    /// With a server: an admin key.
    pub api_key: Option<String>,
}

/// `switchyard report`. Returns the exit code: 0, 1 when the store cannot be
/// read, 64 for bad flags.
pub async fn report(a: ReportArgs) -> i32 {
    if let Err(e) = crate::outcome::report::parse_period(&a.period)
        .and_then(|_| crate::outcome::report::parse_label(&a.label))
        .and_then(|_| match a.format.as_str() {
            "table" | "json" => Ok(None::<String>),
            f => Err(format!("--format `{f}` is not table or json")),
        })
    {
        eprintln!("{e}");
        return 64;
    }
    if let ReportSource::Server(addr) = &a.source {
        let channel = match connect(addr).await {
            Ok(ch) => ch,
            Err(Connect::BadAddress(why)) => {
                eprintln!("{why}");
                return 64;
            }
            Err(Connect::Unreachable(why)) => {
                eprintln!("{why}");
                return 1;
            }
        };
        let mut client = match authorized(channel, a.api_key.as_deref()) {
            Ok(c) => c,
            Err(why) => {
                eprintln!("{why}");
                return 64;
            }
        };
        return match client
            .get_report(crate::grpc::pb::ReportRequest {
                workflow: a.workflow.clone().unwrap_or_default(),
                period: a.period.clone(),
                label: a.label.clone(),
                format: a.format.clone(),
            })
            .await
        {
            Ok(r) => {
                super::print_text(r.into_inner().text.trim_end_matches('\n'));
                0
            }
            Err(s) => {
                eprintln!("the server refused the report: {}", s.message());
                1
            }
        };
    }
    let table = match RuleTable::load(&a.rules) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("the rules at {} are not valid:\n{e}", a.rules.display());
            return 64;
        }
    };
    if let Some(w) = &a.workflow {
        if table.workflow(w).is_none() {
            eprintln!(
                "unknown workflow `{w}`; the rules at {} define: {}",
                a.rules.display(),
                table
                    .workflows
                    .iter()
                    .map(|w| w.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return 64;
        }
    }
    let store = match open_store(&a.source).await {
        Ok(Some(s)) => s,
        Ok(None) => return 0,
        Err(code) => return code,
    };
    let spec = crate::outcome::report::Spec {
        period: crate::outcome::report::parse_period(&a.period).unwrap_or(crate::rules::Period::Day),
        workflow: a.workflow.clone(),
        label: crate::outcome::report::parse_label(&a.label).unwrap_or_default(),
        now: jiff::Timestamp::now(),
    };
    match crate::outcome::report::gather(store.as_ref(), &table, &spec).await {
        Ok(r) => match crate::outcome::report::render(&r, &a.format) {
            Ok(text) => {
                super::print_text(text.trim_end_matches('\n'));
                0
            }
            Err(e) => {
                eprintln!("{e}");
                64
            }
        },
        Err(e) => {
            eprintln!("cannot read the ledger: {e}");
            1
        }
    }
}

/// The store a reading command reads: the embedded store in a folder (safe
/// beside a running server) or Redis. `Ok(None)` when the folder holds no
/// store yet (said on stderr); `Err` is the exit code, the reason said.
pub(crate) async fn open_store(source: &ReportSource) -> Result<Option<crate::store::SharedStore>, i32> {
    let ReportSource::Store(at) = source else { return Err(1) };
    match crate::store::open(at).await {
        Ok(Some(s)) => Ok(Some(s)),
        Ok(None) => {
            if let Location::Embedded(dir) = at {
                eprintln!(
                    "no store in {}: nothing has been recorded there yet. Run `switchyard serve --state-dir {}` and send it calls, or pass the --state-dir serve uses.",
                    dir.display(),
                    dir.display()
                );
            }
            Ok(None)
        }
        Err(e) => {
            eprintln!("cannot read the store at {}: {e}", at.describe());
            Err(1)
        }
    }
}
