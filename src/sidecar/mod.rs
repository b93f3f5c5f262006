//! The sidecar's use cases, one method each, behind the gRPC edge: Route
//! (through [`Router`]), then what follows a call: its usage, its feedback,
//! the outcome it served, and the budgets, escalations and reports about
//! them. The edge converts protobuf to these types and back, and maps
//! [`Error`] to a status; it never touches a store.

use std::sync::Arc;

use crate::access::{Access, Identity};
use crate::audit::{Action, Audit, Record, Verdict};
use crate::budget::{period_scope, Budgets};
use crate::clock::Clock;
use crate::error::Error;
use crate::learn::Online;
use crate::ledger::{FeedbackEvent, OutcomeEvent, OutcomeStatus};
use crate::metrics::Metrics;
use crate::money::format_usd_exact;
use crate::route::{find_workflow, RouteCall, Routed, Router};
use crate::rules::reload::Rules;
use crate::rules::OtherModelUsage;
use crate::store::{Escalation, EscalationState, ScopeState, Settled, Store, Usage};

/// Token counts above this are not plausible usage for one call.
const ABSURD_TOKENS: u64 = 100_000_000;

/// Everything the use cases share.
pub struct Sidecar {
    pub rules: Arc<Rules>,
    pub store: Arc<dyn Store>,
    pub budgets: Arc<Budgets>,
    pub router: Router,
    pub learning: Arc<Online>,
    pub access: Access,
    pub metrics: Arc<Metrics>,
    /// Wall time: periods, reservation times, ledger times.
    pub clock: Arc<dyn Clock>,
}

/// A ReportUsage, as the domain takes it.
#[derive(Debug, Clone, Default)]
pub struct UsageReport {
    pub decision_id: String,
    /// Empty: the model Route chose.
    pub model: String,
    /// All input, cache reads and writes included.
    pub input_tokens: u64,
    /// Read from the provider's prompt cache.
    pub cached_input_tokens: u64,
    /// Written to the provider's prompt cache.
    pub cache_write_input_tokens: u64,
    pub output_tokens: u64,
    pub failed: bool,
    /// The span this report is traced in: the spend counter's exemplar.
    pub trace: Option<crate::metrics::TraceRef>,
}

/// What a ReportUsage came to.
pub struct UsageSettled {
    pub cost_nanos: i64,
    pub workflow: String,
    pub outcome_id: String,
    pub model: String,
    /// Empty when the model is no longer in the rules.
    pub provider: String,
    /// The model's provider ID, when it is still in the rules.
    pub api_model: Option<String>,
    pub usage: Usage,
}

/// A RecordOutcome, as the domain takes it.
#[derive(Debug, Clone)]
pub struct OutcomeReport {
    pub outcome_id: String,
    pub workflow: String,
    /// `None`: the request named no status the API defines.
    pub status: Option<OutcomeStatus>,
    pub value_usd: Option<f64>,
    pub human_minutes: Option<f64>,
}

/// A ResolveEscalation, as the domain takes it.
#[derive(Debug, Clone)]
pub struct Resolution {
    pub escalation_id: String,
    pub approve: bool,
    pub add_nanos: i64,
    pub reason: String,
}

/// What `GetReport` asks for.
pub struct ReportQuery {
    pub workflow: String,
    pub period: String,
    pub label: String,
    pub format: String,
}

impl Sidecar {
    /// The audit log every use case writes to.
    pub fn audit(&self) -> &Audit {
        &self.access.audit
    }

    pub async fn route(&self, who: &Identity, call: RouteCall) -> Result<Routed, Error> {
        self.router.route(Some(who), call, self.clock.now()).await
    }

    /// The decision a report names, or the error that says what is wrong.
    async fn decision(&self, decision_id: &str) -> Result<crate::store::ReservationRecord, Error> {
        if decision_id.is_empty() {
            return Err(Error::InvalidArgument(
                "decision_id is empty: quote the decision_id that Route returned".into(),
            ));
        }
        self.store
            .reservation(decision_id)
            .await?
            .ok_or_else(|| crate::error::StoreError::UnknownDecision(decision_id.to_string()).into())
    }

    /// ReportUsage: prices the call at the prices it was routed at, settles
    /// its reservation, and flags what the workflow says to flag.
    pub async fn report_usage(&self, who: &Identity, u: UsageReport) -> Result<UsageSettled, Error> {
        let record = self.decision(&u.decision_id).await?;
        let table = self.rules.current();
        let workflow = table.workflow(&record.workflow);
        self.access.may_report(who, workflow, &record, Action::ReportUsage)?;
        if u.cached_input_tokens > u.input_tokens {
            return Err(Error::InvalidArgument(format!(
                "cached_input_tokens ({}) is more than input_tokens ({}); cached tokens are part of the input",
                u.cached_input_tokens, u.input_tokens
            )));
        }
        if u.cached_input_tokens.saturating_add(u.cache_write_input_tokens) > u.input_tokens {
            return Err(Error::InvalidArgument(format!(
                "cached_input_tokens ({}) plus cache_write_input_tokens ({}) is more than input_tokens ({}); \
                 cache reads and writes are both parts of the input",
                u.cached_input_tokens, u.cache_write_input_tokens, u.input_tokens
            )));
        }
        if u.input_tokens > ABSURD_TOKENS || u.output_tokens > ABSURD_TOKENS {
            return Err(Error::InvalidArgument(format!(
                "token counts above {ABSURD_TOKENS} are not plausible usage"
            )));
        }
        let audit = |verdict: Verdict, why: &str| {
            self.audit().record(Record::new(
                &who.name,
                Action::ReportUsage,
                &record.workflow,
                &record.decision_id,
                verdict,
                why,
            ))
        };
        let routed = record.model.as_str();
        let reported = if u.model.is_empty() { routed } else { u.model.as_str() };
        let current = table.model_index(reported).map(|i| (i, &table.models[i]));
        let prices = if reported == routed {
            // Priced as routed: the reservation keeps the prices, so a reload
            // that renamed or removed the model loses nothing.
            match (record.prices, current) {
                (Some(p), _) => p,
                (None, Some((_, m))) => m.prices(),
                (None, None) => {
                    return Err(Error::FailedPrecondition(format!(
                    "decision {} was routed to `{routed}`, which is no longer in the rules, and its record predates \
                         stored prices; add the model back to [[models]] to settle it",
                    record.decision_id
                )))
                }
            }
        } else {
            let policy = workflow.map_or(OtherModelUsage::Refuse, |w| w.other_model_usage);
            let what = format!(
                "routed to `{routed}`, usage reported for `{}`",
                crate::error::truncate(reported, 128)
            );
            let (Some((index, m)), OtherModelUsage::Charge) = (current, policy) else {
                let why = match policy {
                    OtherModelUsage::Refuse => format!(
                        "decision {} was {what}: report the model Route chose ({routed}); workflow `{}` refuses usage \
                         for other models (other_model_usage = \"charge\" accepts it, flagged)",
                        record.decision_id, record.workflow
                    ),
                    OtherModelUsage::Charge => format!(
                        "model `{}` is not in the rules, so its usage cannot be priced; report the model Route chose \
                         ({routed}) or add it to [[models]]",
                        crate::error::truncate(reported, 128)
                    ),
                };
                audit(Verdict::RefusedOtherModel, &what);
                return Err(Error::InvalidArgument(why));
            };
            let outside = workflow.is_some_and(|w| !w.allowed.contains(&index));
            self.metrics.usage_model_mismatch.add(&[&record.workflow], 1);
            if outside {
                audit(
                    Verdict::OutsidePolicy,
                    &format!("{what}, which the workflow's allowed models exclude; charged at its prices"),
                );
            } else {
                audit(Verdict::OtherModel, &format!("{what}; charged at its prices"));
            }
            m.prices()
        };
        // A failed call is charged for what the provider still bills: the
        // tokens reported (report zeros if the provider billed nothing).
        let cost = prices.cost_with_writes(
            u.input_tokens,
            u.cached_input_tokens,
            u.cache_write_input_tokens,
            u.output_tokens,
            record.deferrable,
        );
        let usage = Usage {
            input_tokens: u.input_tokens,
            cached_input_tokens: u.cached_input_tokens,
            cache_write_input_tokens: u.cache_write_input_tokens,
            output_tokens: u.output_tokens,
            failed: u.failed,
        };
        let settled = self
            .store
            .settle(&u.decision_id, cost, &usage, self.clock.now_ms())
            .await?;
        let cost_nanos = match settled {
            Settled::Charged { cost_nanos } => {
                let factor_bp = workflow.map_or(20_000, |w| w.overshoot_bp);
                if cost_nanos as i128 * 10_000 > record.amount_nanos as i128 * factor_bp as i128 {
                    self.metrics.usage_overshoot.add(&[&record.workflow], 1);
                    audit(
                        Verdict::UsageOvershoot,
                        &format!(
                            "charged {} against an estimate of {}: over {}x the estimate ({} input, {} output tokens)",
                            format_usd_exact(cost_nanos),
                            format_usd_exact(record.amount_nanos),
                            factor_bp as f64 / 10_000.0,
                            u.input_tokens,
                            u.output_tokens
                        ),
                    );
                }
                let labels = [record.workflow.as_str(), reported];
                let m = &self.metrics;
                m.actual_spend
                    .add_traced(&labels, cost_nanos.max(0) as u64, u.trace.as_ref());
                m.input_tokens.add(&labels, u.input_tokens);
                m.cached_input_tokens.add(&labels, u.cached_input_tokens);
                m.cache_write_input_tokens.add(&labels, u.cache_write_input_tokens);
                m.output_tokens.add(&labels, u.output_tokens);
                // The deprecated family, as it always counted: `input` is
                // the part not read from the cache.
                let uncached = u.input_tokens - u.cached_input_tokens;
                for (kind, n) in [
                    ("input", uncached),
                    ("cached_input", u.cached_input_tokens),
                    ("output", u.output_tokens),
                ] {
                    m.tokens.add(&[labels[0], labels[1], kind], n);
                }
                cost_nanos
            }
            Settled::AlreadySettled { cost_nanos } => cost_nanos,
        };
        Ok(UsageSettled {
            cost_nanos,
            provider: current.map_or_else(String::new, |(_, m)| m.provider.clone()),
            api_model: current.map(|(_, m)| m.api_model.clone()),
            model: reported.to_string(),
            workflow: record.workflow,
            outcome_id: record.outcome_id,
            usage,
        })
    }

    /// RecordOutcome: appends the event, and labels the outcome's calls.
    pub async fn record_outcome(&self, who: &Identity, o: OutcomeReport) -> Result<OutcomeEvent, Error> {
        if o.outcome_id.is_empty() || o.outcome_id.len() > 256 || o.outcome_id.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(
                "outcome_id must be 1 to 256 bytes of printable text: the ID the calls carried in Route".into(),
            ));
        }
        let table = self.rules.current();
        let workflow = find_workflow(&table, &o.workflow)?;
        if !who.admin {
            self.access
                .may_call(who, workflow, Action::RecordOutcome, &o.outcome_id)?;
        }
        // Only those who may not record any outcome are looked up.
        let routed = Access::records_any_outcome(who, workflow)
            || self
                .store
                .outcome_routed_by(&workflow.name, &o.outcome_id, &who.name)
                .await?;
        self.access.may_record_outcome(who, workflow, &o.outcome_id, routed)?;
        let status = o.status.ok_or_else(|| {
            Error::InvalidArgument(
                "status is not an outcome: use OUTCOME_STATUS_ACCEPTED, _REJECTED, _CORRECTED or _ABANDONED".into(),
            )
        })?;
        let check = |name: &str, v: Option<f64>| match v {
            Some(x) if !(x.is_finite() && (0.0..=1e12).contains(&x)) => Err(Error::InvalidArgument(format!(
                "{name} is {x}; give a finite amount from 0 to 1e12, or leave it unset"
            ))),
            _ => Ok(v),
        };
        let event = OutcomeEvent {
            workflow: workflow.name.clone(),
            outcome_id: o.outcome_id,
            status,
            value_usd: check("value_usd", o.value_usd)?,
            human_minutes: check("human_minutes", o.human_minutes)?,
            at_ms: self.clock.now_ms(),
        };
        if let Some(prior) = self.store.record_outcome(&event, &who.name).await? {
            let by = if prior.recorded_by.is_empty() {
                "an earlier build"
            } else {
                prior.recorded_by.as_str()
            };
            self.audit().record(Record::new(
                &who.name,
                Action::RecordOutcome,
                &event.workflow,
                &event.outcome_id,
                Verdict::Overwritten,
                &format!(
                    "outcome was {} (recorded by {by}); now {} (recorded by {})",
                    prior.status,
                    event.status.name(),
                    who.name
                ),
            ));
        }
        self.learning.outcome(&event.workflow, &event.outcome_id, event.status);
        self.metrics.outcomes.add(&[&event.workflow, event.status.name()], 1);
        tracing::debug!(workflow = %event.workflow, outcome = %event.outcome_id, status = event.status.name(), "outcome recorded");
        Ok(event)
    }

    /// RecordFeedback: appends the event, labels the call, and notes a
    /// rejection for the outcome's next attempt.
    pub async fn record_feedback(
        &self,
        who: &Identity,
        decision_id: String,
        accepted: bool,
    ) -> Result<FeedbackEvent, Error> {
        let record = self.decision(&decision_id).await?;
        let table = self.rules.current();
        self.access
            .may_report(who, table.workflow(&record.workflow), &record, Action::RecordFeedback)?;
        let event = FeedbackEvent {
            workflow: record.workflow,
            decision_id,
            model: record.model,
            accepted,
            at_ms: self.clock.now_ms(),
        };
        self.store.record_feedback(&event).await?;
        self.learning.feedback(&event.decision_id, accepted);
        // A rejection sends the outcome's next attempt, on whichever sidecar
        // it lands, a tier above this one. It is stored before the feedback
        // is acknowledged, so a retry sent right after it sees it.
        if let (false, false, Some(tier)) = (accepted, record.outcome_id.is_empty(), record.tier) {
            self.store
                .note_rejection(&event.workflow, &record.outcome_id, tier, event.at_ms)
                .await?;
        }
        Ok(event)
    }

    /// GetBudget: the workflow's current period scope.
    pub async fn budget(&self, who: &Identity, workflow: &str) -> Result<(String, ScopeState), Error> {
        let table = self.rules.current();
        let workflow = find_workflow(&table, workflow)?;
        self.access.may_call(who, workflow, Action::GetBudget, "")?;
        let Some(b) = &workflow.budget else {
            return Err(Error::FailedPrecondition(format!(
                "workflow `{}` has no budget; add a [workflows.budget] table to enforce and report one",
                workflow.name
            )));
        };
        // A store that lost this workflow's state would report its counters
        // emptied: the whole limit remaining. Refuse, as Route does.
        if let Some((_, why)) = self
            .store
            .health()
            .state_lost
            .into_iter()
            .find(|(w, _)| *w == workflow.name || w == "*")
        {
            return Err(crate::error::StoreError::StateLost(why).into());
        }
        let stored = self.store.scope(&period_scope(workflow, b, self.clock.now())).await?;
        Ok((workflow.name.clone(), ScopeState::of_period(b, stored)))
    }

    /// ListEscalations (admins).
    pub async fn list_escalations(&self, who: &Identity, workflow: &str) -> Result<Vec<Escalation>, Error> {
        self.access.must_admin(who, Action::ListEscalations, "")?;
        self.audit().record(Record::new(
            &who.name,
            Action::ListEscalations,
            workflow,
            "",
            Verdict::Ok,
            "",
        ));
        let workflow = (!workflow.is_empty()).then_some(workflow);
        Ok(self.store.list_escalations(workflow).await?)
    }

    /// ResolveEscalation (admins): an approval adds at most
    /// [`crate::money::MAX_APPROVAL_NANOS`].
    pub async fn resolve_escalation(&self, who: &Identity, r: Resolution) -> Result<Escalation, Error> {
        self.access
            .must_admin(who, Action::ResolveEscalation, &r.escalation_id)?;
        let audit = |workflow: &str, verdict: Verdict, why: &str| {
            self.audit().record(Record::new(
                &who.name,
                Action::ResolveEscalation,
                workflow,
                &r.escalation_id,
                verdict,
                why,
            ))
        };
        if r.escalation_id.is_empty() {
            return Err(Error::InvalidArgument(
                "escalation_id is empty; list them with `switchyard escalations list`".into(),
            ));
        }
        if r.approve && !(1..=crate::money::MAX_APPROVAL_NANOS).contains(&r.add_nanos) {
            let why = if r.add_nanos <= 0 {
                "an approval must add an amount: set add_nanousd above 0 (`--add-usd` on the command line)".to_string()
            } else {
                format!(
                    "add_nanousd {} is over the {} one approval may add; approve a smaller amount, or raise the \
                     budget in the rules",
                    r.add_nanos,
                    format_usd_exact(crate::money::MAX_APPROVAL_NANOS)
                )
            };
            audit("", Verdict::InvalidArgument, &why);
            return Err(Error::InvalidArgument(why));
        }
        let resolved = self
            .store
            .resolve_escalation(
                &r.escalation_id,
                r.approve,
                r.add_nanos,
                &who.name,
                &r.reason,
                self.clock.now_ms(),
            )
            .await
            .map_err(Error::from);
        let e = match resolved {
            Ok(e) => e,
            Err(e) => {
                audit("", e.verdict(), &e.to_string());
                return Err(e);
            }
        };
        let verdict = match e.state {
            EscalationState::Approved => Verdict::Approved,
            EscalationState::Denied => Verdict::Denied,
            EscalationState::Pending => Verdict::Failed,
        };
        let why = if r.approve {
            format!("added {}; {}", format_usd_exact(r.add_nanos), r.reason)
        } else {
            r.reason.clone()
        };
        audit(&e.workflow, verdict, &why);
        self.budgets.refresh_view();
        tracing::info!(escalation = %e.id, state = e.state.as_str(), added = e.added_nanos, "escalation resolved");
        Ok(e)
    }

    /// GetReport (admins): the report, rendered.
    pub async fn report(&self, who: &Identity, q: ReportQuery) -> Result<String, Error> {
        self.access.must_admin(who, Action::GetReport, "")?;
        self.audit().record(Record::new(
            &who.name,
            Action::GetReport,
            &q.workflow,
            "",
            Verdict::Ok,
            "",
        ));
        let table = self.rules.current();
        let workflow = if q.workflow.is_empty() {
            None
        } else {
            Some(find_workflow(&table, &q.workflow)?.name.clone())
        };
        let spec = crate::outcome::report::Spec {
            period: crate::outcome::report::parse_period(&q.period).map_err(Error::InvalidArgument)?,
            workflow,
            label: crate::outcome::report::parse_label(&q.label).map_err(Error::InvalidArgument)?,
            now: self.clock.now(),
        };
        let report = crate::outcome::report::gather(self.store.as_ref(), &table, &spec).await?;
        crate::outcome::report::render(&report, &q.format).map_err(Error::InvalidArgument)
    }
}

#[cfg(test)]
mod tests;
