//! `switchyard escalations`: on a running server.

use serde_json::json;

use super::{authorized, connect, Connect};
use crate::money::{format_usd, nanos_to_usd};

/// What `switchyard escalations` does.
pub enum EscalationCommand {
    List {
        workflow: Option<String>,
        json: bool,
    },
    /// `add_usd` as written: it is parsed exactly, to the nano-dollar.
    Approve {
        id: String,
        add_usd: String,
        reason: String,
    },
    Deny {
        id: String,
        reason: String,
    },
}

/// `switchyard escalations …` against a running server. Returns the exit code.
pub async fn escalations(server: &str, api_key: Option<&str>, cmd: EscalationCommand) -> i32 {
    use crate::grpc::pb;
    let channel = match connect(server).await {
        Ok(ch) => ch,
        Err(Connect::BadAddress(why) | Connect::Unreachable(why)) => {
            eprintln!("{why}");
            return 1;
        }
    };
    let mut client = match authorized(channel, api_key) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("{why}");
            return 64;
        }
    };
    let shown = |e: &pb::Escalation| {
        format!(
            "{}  {:<9} {:<20} outcome={} caller={} amount={} model={} created={}{}",
            e.escalation_id,
            e.state,
            e.workflow,
            e.outcome_id,
            e.caller,
            format_usd(e.amount_nanousd),
            e.model,
            e.created_at,
            if e.resolved_by.is_empty() {
                String::new()
            } else {
                format!(" resolved_by={} at={}", e.resolved_by, e.resolved_at)
            }
        )
    };
    let result = match cmd {
        EscalationCommand::List { workflow, json: as_json } => client
            .list_escalations(pb::ListEscalationsRequest { workflow: workflow.unwrap_or_default() })
            .await
            .map(|r| {
                let list = r.into_inner().escalations;
                if as_json {
                    let rows: Vec<_> = list
                        .iter()
                        .map(|e| {
                            json!({
                                "escalation_id": e.escalation_id, "workflow": e.workflow, "outcome_id": e.outcome_id,
                                "caller": e.caller, "amount_nanousd": e.amount_nanousd, "amount_usd": nanos_to_usd(e.amount_nanousd),
                                "model": e.model, "state": e.state, "created_at": e.created_at,
                                "resolved_by": e.resolved_by, "resolved_at": e.resolved_at,
                            })
                        })
                        .collect();
                    super::print_json(&rows);
                } else if list.is_empty() {
                    super::print_text("no escalations");
                } else {
                    for e in &list {
                        super::print_text(&shown(e));
                    }
                }
            }),
        EscalationCommand::Approve { id, add_usd, reason } => {
            let add = match crate::money::parse_usd(&add_usd) {
                Ok(n) if (1..=crate::money::MAX_APPROVAL_NANOS).contains(&n) => n,
                Ok(_) => {
                    eprintln!(
                        "--add-usd {add_usd} must be above $0 and at most {} (one approval's cap)",
                        crate::money::format_usd_exact(crate::money::MAX_APPROVAL_NANOS)
                    );
                    return 64;
                }
                Err(e) => {
                    eprintln!("--add-usd: {e}");
                    return 64;
                }
            };
            client
                .resolve_escalation(pb::ResolveEscalationRequest { escalation_id: id, approve: true, add_nanousd: add, reason })
                .await
                .map(|r| super::print_text(&format!("approved: {}", shown(&r.into_inner()))))
        }
        EscalationCommand::Deny { id, reason } => client
            .resolve_escalation(pb::ResolveEscalationRequest { escalation_id: id, approve: false, add_nanousd: 0, reason })
            .await
            .map(|r| super::print_text(&format!("denied: {}", shown(&r.into_inner())))),
    };
    match result {
        Ok(()) => 0,
        Err(s) => {
            eprintln!("{:?}: {}", s.code(), s.message());
            1
        }
    }
}
