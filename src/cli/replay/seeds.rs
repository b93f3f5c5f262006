//! `--seeds N`: each policy's and each score set's mean and spread over the seeds.

use super::*;

/// `--seeds N`: each policy's and each score set's mean and spread.
#[derive(Debug, Serialize)]
pub struct SeedsReport {
    pub workflow: String,
    pub rows: usize,
    pub seeds: Vec<u64>,
    pub strong_model: String,
    pub weak_model: String,
    pub policies: Vec<PolicySpread>,
    pub scores: Vec<ScoreSpread>,
    /// Runs in which the router's scores ranked below the prior's (APGR).
    pub router_below_prior: usize,
    pub runs: Vec<Report>,
}

/// Mean, standard deviation, least and greatest of one figure over the runs.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Spread {
    pub mean: f64,
    pub sd: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub(crate) fn of(v: impl IntoIterator<Item = f64>) -> Spread {
        let v: Vec<f64> = v.into_iter().collect();
        let n = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        Spread {
            mean,
            sd: var.sqrt(),
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PolicySpread {
    pub name: String,
    pub success_rate: Spread,
    pub cost_per_success_usd: Spread,
    pub strong_share: Spread,
}

#[derive(Debug, Serialize)]
pub struct ScoreSpread {
    pub name: String,
    pub apgr: Spread,
}

impl SeedsReport {
    pub(crate) fn of(runs: &[Report]) -> SeedsReport {
        let first = &runs[0];
        let policies = first
            .policies
            .iter()
            .map(|p| {
                let each = |f: &dyn Fn(&PolicyResult) -> f64| {
                    Spread::of(
                        runs.iter()
                            .filter_map(|r| r.policies.iter().find(|q| q.name == p.name))
                            .map(f),
                    )
                };
                PolicySpread {
                    name: p.name.clone(),
                    success_rate: each(&|q| q.success_rate),
                    cost_per_success_usd: each(&|q| q.cost_per_success_usd.unwrap_or(f64::NAN)),
                    strong_share: each(&|q| q.strong_share),
                }
            })
            .collect();
        let apgr = |r: &Report, name: &str| r.scores.iter().find(|s| s.name == name).map(|s| s.apgr);
        let scores = first
            .scores
            .iter()
            .map(|s| ScoreSpread {
                name: s.name.clone(),
                apgr: Spread::of(runs.iter().filter_map(|r| apgr(r, &s.name))),
            })
            .collect();
        let router_below_prior = runs
            .iter()
            .filter(|r| matches!((apgr(r, "router"), apgr(r, "prior")), (Some(a), Some(p)) if a < p))
            .count();
        SeedsReport {
            workflow: first.workflow.clone(),
            rows: first.rows,
            seeds: runs.iter().map(|r| r.seed).collect(),
            strong_model: first.strong_model.clone(),
            weak_model: first.weak_model.clone(),
            policies,
            scores,
            router_below_prior,
            runs: runs.to_vec(),
        }
    }
}
