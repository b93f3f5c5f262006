//! Who is calling and what they may do: the identity a request carries
//! (established at the edge by `grpc::auth`) and the checks each use case
//! makes of it. Every refusal is audited, aggregated like every refusal.

use std::sync::Arc;

use crate::audit::{Action, Audit, Record, Verdict};
use crate::error::Error;
use crate::rules::Workflow;
use crate::store::ReservationRecord;

/// The identity of callers on loopback when no keys file is configured
/// (defined with the audit log's names, which the stores read too).
pub use crate::audit::LOCAL;

/// A caller, as established for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: Arc<str>,
    /// May call workflows (Route, ReportUsage, RecordOutcome, RecordFeedback, GetBudget).
    pub caller: bool,
    /// May resolve escalations and read reports; may settle any decision.
    pub admin: bool,
}

impl Identity {
    /// Loopback callers without a keys file: the pod-local default.
    pub fn local() -> Identity {
        // One name shared by every local call: a clone is a count, not a copy.
        static LOCAL_IDENTITY: std::sync::LazyLock<Identity> = std::sync::LazyLock::new(|| Identity {
            name: Arc::from(LOCAL),
            caller: true,
            admin: true,
        });
        LOCAL_IDENTITY.clone()
    }
}

/// The checks, with the audit log they write refusals to.
pub struct Access {
    pub audit: Arc<Audit>,
}

impl Access {
    fn refuse(&self, who: &Identity, action: Action, workflow: &str, target: &str, why: String) -> Error {
        self.audit.refusal(Record::new(
            &who.name,
            action,
            workflow,
            target,
            Verdict::PermissionDenied,
            &why,
        ));
        Error::PermissionDenied(why)
    }

    /// A caller RPC on `workflow`: the identity needs the caller role and the
    /// workflow's permission.
    pub fn may_call(&self, who: &Identity, workflow: &Workflow, action: Action, target: &str) -> Result<(), Error> {
        if !who.caller {
            let why = format!("`{}` has no caller role; give its key the role \"caller\"", who.name);
            return Err(self.refuse(who, action, &workflow.name, target, why));
        }
        if !workflow.allowed_callers.is_empty() && !workflow.allowed_callers.iter().any(|c| **c == *who.name) {
            let why = format!(
                "`{}` may not call workflow `{}`; add it to the workflow's allowed_callers",
                who.name, workflow.name
            );
            return Err(self.refuse(who, action, &workflow.name, target, why));
        }
        Ok(())
    }

    /// Whether `who` may record any of `workflow`'s outcomes, routed under
    /// them or not: an admin, or one of the workflow's `outcome_recorders`.
    pub fn records_any_outcome(who: &Identity, workflow: &Workflow) -> bool {
        who.admin || workflow.outcome_recorders.iter().any(|c| **c == *who.name)
    }

    /// RecordOutcome on an outcome `routed` says whether `who` routed under:
    /// an outcome belongs to the identities that routed its calls, and to
    /// those [`Access::records_any_outcome`] names.
    pub fn may_record_outcome(
        &self,
        who: &Identity,
        workflow: &Workflow,
        outcome_id: &str,
        routed: bool,
    ) -> Result<(), Error> {
        if routed || Self::records_any_outcome(who, workflow) {
            return Ok(());
        }
        let why = format!(
            "`{}` routed no call under outcome `{}` of workflow `{}`; only the identities that routed it, \
             the workflow's outcome_recorders, or an admin may record its outcome",
            who.name,
            crate::error::truncate(outcome_id, 128),
            workflow.name
        );
        Err(self.refuse(who, Action::RecordOutcome, &workflow.name, outcome_id, why))
    }

    /// An admin RPC: the identity needs the admin role.
    pub fn must_admin(&self, who: &Identity, action: Action, target: &str) -> Result<(), Error> {
        if who.admin {
            return Ok(());
        }
        let why = format!(
            "`{}` has no admin role; {} needs an admin key",
            who.name,
            action.as_str()
        );
        Err(self.refuse(who, action, "", target, why))
    }

    /// A report on a decision: only the identity that routed it, or an
    /// admin. Otherwise one caller could settle another's call at zero and
    /// have the real report acknowledged as a repeat. An admin needs no
    /// caller role for it (settling a stuck agent's call, say); a caller
    /// also needs the workflow's permission, if the workflow still exists.
    pub fn may_report(
        &self,
        who: &Identity,
        workflow: Option<&Workflow>,
        record: &ReservationRecord,
        action: Action,
    ) -> Result<(), Error> {
        if who.admin {
            return Ok(());
        }
        if let Some(wf) = workflow {
            self.may_call(who, wf, action, &record.decision_id)?;
        }
        if record.caller.is_empty() || *record.caller == *who.name {
            return Ok(());
        }
        let why = format!(
            "decision {} was routed by another identity; only the identity that routed a call (or an admin) may report on it",
            record.decision_id
        );
        Err(self.refuse(who, action, &record.workflow, &record.decision_id, why))
    }
}
