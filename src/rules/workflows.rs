//! Validation of `[[workflows]]`: names, policy (models, providers,
//! regions, callers, tiers), budgets and learning settings.

use super::schema::{self, RawWorkflow};
use super::validate::{Origin, Validator};
use super::*;

impl Validator<'_> {
    pub(super) fn workflows(&mut self, raw: &[(Origin, RawWorkflow)], models: &[Model]) -> Vec<Workflow> {
        let mut out: Vec<Workflow> = Vec::with_capacity(raw.len());
        for &(o, ref w) in raw {
            if w.name.trim().is_empty() {
                self.error(o, "workflows", &["name"], "a workflow needs a non-empty name");
            } else if !valid_workflow_name(&w.name) {
                self.error(
                    o,
                    "workflows",
                    &["name"],
                    format!(
                        "workflow name `{}` may use only letters, digits, `.`, `_` and `-` (at most 64): it becomes part of budget store keys, metric labels and span attributes",
                        w.name.chars().take(80).collect::<String>()
                    ),
                );
            }
            if out.iter().any(|x| x.name == w.name) {
                self.error(
                    o,
                    "workflows",
                    &["name"],
                    format!("workflow `{}` is defined twice; names must be unique", w.name),
                );
            }
            let floor = w.quality_floor.unwrap_or(1);
            if !(1..=MAX_TIER as i64).contains(&floor) {
                self.error(
                    o,
                    "workflows",
                    &["quality_floor"],
                    format!("tier {floor} is outside 1 to {MAX_TIER}"),
                );
            }
            for name in &w.allowed_models {
                if !models.iter().any(|m| &m.name == name) {
                    self.error(
                        o,
                        "workflows",
                        &["allowed_models"],
                        format!("model `{name}` is not in [[models]]"),
                    );
                }
            }
            for p in &w.allowed_providers {
                if !models.iter().any(|m| &m.provider == p) {
                    self.error(
                        o,
                        "workflows",
                        &["allowed_providers"],
                        format!("no model in [[models]] has provider `{p}`"),
                    );
                }
            }
            let max_tier = w.max_tier.unwrap_or(MAX_TIER as i64);
            if !(1..=MAX_TIER as i64).contains(&max_tier) || max_tier < floor {
                self.error(
                    o,
                    "workflows",
                    &["max_tier"],
                    format!("max_tier {max_tier} must be from quality_floor ({floor}) to {MAX_TIER}"),
                );
            }
            for r in &w.allowed_regions {
                if !models.iter().any(|m| &m.region == r) {
                    self.error(
                        o,
                        "workflows",
                        &["allowed_regions"],
                        format!("no model in [[models]] has region `{r}`"),
                    );
                }
            }
            for (key, list) in [
                ("allowed_callers", &w.allowed_callers),
                ("outcome_recorders", &w.outcome_recorders),
            ] {
                for c in list {
                    if c.is_empty() || c.chars().any(char::is_control) {
                        self.error(
                            o,
                            "workflows",
                            &[key],
                            "a caller identity must be printable, non-empty text",
                        );
                    }
                }
            }
            let allowed: Vec<usize> = models
                .iter()
                .enumerate()
                .filter(|(_, m)| w.allowed_models.is_empty() || w.allowed_models.contains(&m.name))
                .filter(|(_, m)| w.allowed_providers.is_empty() || w.allowed_providers.contains(&m.provider))
                .filter(|(_, m)| !w.require_data_processing_agreement || m.data_processing_agreement)
                .filter(|(_, m)| w.allowed_regions.is_empty() || w.allowed_regions.contains(&m.region))
                .map(|(i, _)| i)
                .collect();
            if allowed.is_empty() && !models.is_empty() {
                self.error(
                    o,
                    "workflows",
                    &["allowed_models"],
                    "no model meets allowed_models, allowed_providers, require_data_processing_agreement and allowed_regions together; the workflow could never route",
                );
            }
            let mut encodings: Vec<Encoding> = allowed.iter().map(|&i| models[i].encoding).collect();
            encodings.sort();
            encodings.dedup();
            let budget = w.budget.as_ref().and_then(|b| self.budget(o, &w.name, b));
            let learning = self.learning(o, w.learning.as_ref());
            let other_model_usage = match w.other_model_usage.as_deref() {
                None | Some("refuse") => OtherModelUsage::Refuse,
                Some("charge") => OtherModelUsage::Charge,
                Some(other) => {
                    self.error(
                        o,
                        "workflows",
                        &["other_model_usage"],
                        format!("`{other}` is not a choice: use \"refuse\" or \"charge\""),
                    );
                    OtherModelUsage::Refuse
                }
            };
            let factor = w.usage_overshoot_factor.unwrap_or(DEFAULT_OVERSHOOT_FACTOR);
            if !(factor.is_finite() && (1.0..=100.0).contains(&factor)) {
                self.error(
                    o,
                    "workflows",
                    &["usage_overshoot_factor"],
                    format!("{factor} is outside 1 to 100: it is how many times the estimate a cost may reach before it is flagged"),
                );
            }
            let (quality_floor, max_tier) = (
                floor.clamp(1, MAX_TIER as i64) as u8,
                max_tier.clamp(1, MAX_TIER as i64) as u8,
            );
            let classes = models.first().map_or(0, |m| m.tiers.len());
            let available = (0..classes)
                .map(|class| tiers_within(models, &allowed, class, quality_floor, max_tier))
                .collect();
            out.push(Workflow {
                budget,
                learning,
                other_model_usage,
                overshoot_bp: (factor.clamp(1.0, 100.0) * 10_000.0).round() as u32,
                name: w.name.clone(),
                description: w.description.clone().unwrap_or_default(),
                owner: w.owner.clone().unwrap_or_default(),
                default_task_kind: w.default_task_kind.clone().unwrap_or_else(|| GENERAL_CLASS.to_string()),
                quality_floor,
                max_tier,
                allowed,
                available,
                allowed_callers: w.allowed_callers.clone(),
                outcome_recorders: w.outcome_recorders.clone(),
                outcome_unit: w.outcome_unit.clone().unwrap_or_else(|| "outcome".to_string()),
                encodings,
            });
        }
        out
    }

    fn learning(&mut self, o: Origin, raw: Option<&schema::RawLearning>) -> Learning {
        let mut l = Learning::default();
        let Some(r) = raw else { return l };
        let share = |v: &mut Self, key: &'static str, x: Option<f64>, max: f64, into: &mut f64| {
            if let Some(x) = x {
                if x.is_finite() && (0.0..=max).contains(&x) {
                    *into = x;
                } else {
                    v.error(o, "workflows", &["learning", key], format!("{x} is outside 0 to {max}"));
                }
            }
        };
        share(self, "target", r.target, 1.0, &mut l.target);
        share(self, "min_gain", r.min_gain, 1.0, &mut l.min_gain);
        share(self, "exploration", r.exploration, 0.5, &mut l.exploration);
        share(
            self,
            "min_exploration",
            r.min_exploration,
            l.exploration,
            &mut l.min_exploration,
        );
        l.enabled = r.enabled.unwrap_or(true);
        l.cold_start = r.cold_start.unwrap_or(l.cold_start);
        match r.window {
            Some(w) if !(100..=1_000_000).contains(&w) => self.error(
                o,
                "workflows",
                &["learning", "window"],
                format!("{w} is outside 100 to 1000000"),
            ),
            Some(w) => l.window = w,
            None => {}
        }
        l
    }

    fn budget(&mut self, o: Origin, workflow: &str, b: &schema::RawBudget) -> Option<Budget> {
        let before = self.diagnostics.len();
        let usd = |v: &mut Self, key: &'static str, x: f64| -> i64 {
            match crate::money::budget_usd_to_nanos(x) {
                Some(n) => n,
                None => {
                    v.error(
                        o,
                        "workflows",
                        &["budget", key],
                        format!(
                            "{x} is not a budget: give USD above 0, at most {}",
                            crate::money::MAX_BUDGET_USD
                        ),
                    );
                    0
                }
            }
        };
        let limit_nanos = usd(self, "limit_usd", b.limit_usd);
        let period = match b.period.as_str() {
            "day" => Period::Day,
            "week" => Period::Week,
            "month" => Period::Month,
            p => {
                self.error(
                    o,
                    "workflows",
                    &["budget", "period"],
                    format!("unknown period `{p}`; use \"day\", \"week\" or \"month\""),
                );
                Period::Day
            }
        };
        let timezone_name = b.timezone.clone().unwrap_or_else(|| "UTC".to_string());
        let timezone = match jiff::tz::TimeZone::get(&timezone_name) {
            Ok(tz) => tz,
            Err(_) => {
                self.error(
                    o,
                    "workflows",
                    &["budget", "timezone"],
                    format!(
                        "unknown time zone `{timezone_name}`; use an IANA name such as \"UTC\" or \"Europe/Berlin\""
                    ),
                );
                jiff::tz::TimeZone::UTC
            }
        };
        if let Some(guard) = self.scopes {
            if let Some((was_period, was_tz)) = guard.previous.get(workflow) {
                let now_period = b.period.as_str();
                let key = if was_period != now_period { "period" } else { "timezone" };
                if (was_period != now_period || *was_tz != timezone_name) && !guard.allow_reset {
                    self.error(
                        o,
                        "workflows",
                        &["budget", key],
                        format!(
                            "the budget's period or time zone changed (was {was_period} in {was_tz}, now {now_period} in \
                             {timezone_name}): its spend so far would stay behind in the old scope and the new one \
                             start at $0; keep the old values, or start serve with --allow-scope-reset to accept a \
                             fresh scope (audited)"
                        ),
                    );
                }
            }
        }
        let per_outcome_nanos = b.per_outcome_usd.map(|x| usd(self, "per_outcome_usd", x));
        let soft_threshold_bp = match b.soft_threshold_pct {
            None => None,
            Some(p) if p.is_finite() && p > 0.0 && p < 100.0 => Some((p * 100.0).round() as u32),
            Some(p) => {
                self.error(
                    o,
                    "workflows",
                    &["budget", "soft_threshold_pct"],
                    format!("{p} is not a percentage between 0 and 100 (exclusive)"),
                );
                None
            }
        };
        let on_limit = match b.on_limit.as_deref() {
            None | Some("deny") => OnLimit::Deny,
            Some("escalate") => OnLimit::Escalate,
            Some(x) => {
                self.error(
                    o,
                    "workflows",
                    &["budget", "on_limit"],
                    format!("unknown action `{x}`; use \"escalate\" or \"deny\""),
                );
                OnLimit::Deny
            }
        };
        let pacing = match b.pacing.as_deref() {
            None => None,
            Some(x) => match super::Pacing::parse(x) {
                Some(p) => Some(p),
                None => {
                    self.error(
                        o,
                        "workflows",
                        &["budget", "pacing"],
                        format!(
                            "unknown pacing `{x}`; use \"even\" (spend at the elapsed share of the period) or \
                             \"traffic\" (at the workflow's own traffic by hour of the week)"
                        ),
                    );
                    None
                }
            },
        };
        let mut labels: Vec<LabelBudget> = Vec::new();
        for l in &b.labels {
            if l.label.is_empty() || l.value.is_empty() {
                self.error(
                    o,
                    "workflows",
                    &["budget", "labels"],
                    "a label budget needs a non-empty `label` and `value`",
                );
            }
            if labels.iter().any(|x| x.label == l.label && x.value == l.value) {
                self.error(
                    o,
                    "workflows",
                    &["budget", "labels"],
                    format!("the budget for {} = {} is given twice", l.label, l.value),
                );
            }
            let limit_nanos = usd(self, "labels", l.limit_usd);
            labels.push(LabelBudget {
                label: l.label.clone(),
                value: l.value.clone(),
                limit_nanos,
            });
        }
        let lease = b.lease.as_ref().and_then(|l| {
            let mut ok = true;
            if !(l.refresh_s.is_finite() && (1.0..=300.0).contains(&l.refresh_s)) {
                self.error(
                    o,
                    "workflows",
                    &["budget", "lease"],
                    format!(
                        "refresh_s = {} is not between 1 and 300 seconds; 10 suits most fleets",
                        l.refresh_s
                    ),
                );
                ok = false;
            }
            if !(l.max_share.is_finite() && l.max_share > 0.0 && l.max_share <= 0.5) {
                self.error(
                    o,
                    "workflows",
                    &["budget", "lease"],
                    format!(
                        "max_share = {} is not a share above 0 and at most 0.5 of what remains; 0.05 suits most fleets",
                        l.max_share
                    ),
                );
                ok = false;
            }
            ok.then(|| LeaseTerms {
                refresh_ms: (l.refresh_s * 1000.0).round() as u64,
                max_share_bp: ((l.max_share * 10_000.0).round() as u32).max(1),
            })
        });
        (self.diagnostics.len() == before).then_some(Budget {
            limit_nanos,
            period,
            timezone,
            timezone_name,
            per_outcome_nanos,
            soft_threshold_bp,
            on_limit,
            pacing,
            labels,
            lease,
        })
    }
}

/// The distinct tiers, ascending, of the `allowed` models for task class
/// `class`, from `floor` to `max` ([`Workflow::available`]).
fn tiers_within(models: &[Model], allowed: &[usize], class: usize, floor: u8, max: u8) -> Vec<u8> {
    // A bit per tier: sorted and distinct without a sort.
    const _: () = assert!(MAX_TIER < 32);
    let seen = allowed
        .iter()
        .filter_map(|&i| models.get(i)?.tiers.get(class).copied())
        .filter(|&t| t >= floor && t <= max)
        .fold(0u32, |seen, t| seen | 1 << t);
    (0..=MAX_TIER).filter(|&t| seen >> t & 1 == 1).collect()
}
