//! Rebuilding a Redis store's counters from the sidecars' journals of
//! acknowledged settlements (`switchyard budget reconcile`).

use super::*;

const RECONCILE: &str = concat!(include_str!("scripts/money.lua"), include_str!("scripts/reconcile.lua"));

/// A workflow's journal sums per scope, and counts per sidecar.
type Plan<'a> = (Vec<(&'a str, i64)>, Vec<(&'a str, u64)>);

/// One scope, before and after.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReconciledScope {
    pub workflow: String,
    pub scope: String,
    pub spent_before_nanousd: i64,
    pub journals_nanousd: i64,
    pub spent_after_nanousd: i64,
}

/// What reconcile found for one workflow.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReconciledWorkflow {
    pub workflow: String,
    /// The sidecar that found the state lost, if one did.
    pub lost_noticed_by: Option<String>,
    pub scopes: Vec<ReconciledScope>,
}

impl RedisStore {
    /// For each workflow the journals name: raises each scope's spend to
    /// the journals' sum (never lowers it), each sidecar's acknowledged
    /// count to its journal's, and clears the lost mark (unless `dry_run`).
    pub async fn reconcile(
        &self,
        journals: &[(String, acks::Folded)],
        dry_run: bool,
    ) -> Result<Vec<ReconciledWorkflow>, StoreError> {
        let mut workflows: std::collections::BTreeMap<&str, Plan<'_>> = Default::default();
        for (holder, f) in journals {
            for (w, n) in &f.counts {
                workflows.entry(w).or_default().1.push((holder, *n));
            }
            for (scope, (sum, w, _)) in &f.sums {
                let e = workflows.entry(w).or_default();
                match e.0.iter_mut().find(|(s, _)| s == scope) {
                    Some((_, total)) => *total = total.saturating_add(*sum),
                    None => e.0.push((scope, *sum)),
                }
            }
        }
        let script = Script::new(RECONCILE);
        let mut out = Vec::new();
        for (w, (scopes, holders)) in workflows {
            let tag = self.tag(w);
            let mut inv = script.prepare_invoke();
            inv.key(format!("{tag}epoch"));
            for (s, _) in &scopes {
                inv.key(format!("{tag}s:{s}"));
            }
            inv.arg(if dry_run { "0" } else { "1" });
            for (_, sum) in &scopes {
                inv.arg(*sum);
            }
            for (h, n) in &holders {
                inv.arg(*h).arg(*n);
            }
            let mut pipe = redis::pipe();
            pipe.invoke_script(&inv);
            let reply = strings(self.pipeline_with_script(&pipe, &script).await?);
            let n = |i: usize| reply.get(i).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
            out.push(ReconciledWorkflow {
                workflow: w.to_string(),
                lost_noticed_by: reply.last().filter(|s| !s.is_empty()).cloned(),
                scopes: scopes
                    .iter()
                    .enumerate()
                    .map(|(i, (s, sum))| ReconciledScope {
                        workflow: w.to_string(),
                        scope: s.to_string(),
                        spent_before_nanousd: n(2 * i),
                        journals_nanousd: *sum,
                        spent_after_nanousd: n(2 * i + 1),
                    })
                    .collect(),
            });
        }
        Ok(out)
    }
}
