//! The rules file as written: serde structs with `deny_unknown_fields`, so that
//! a misspelt key is an error rather than a silently ignored setting.
//! Cross-field checks happen afterwards, in `validate`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One TOML file. Every section is optional so that a folder can split the
/// catalogue, the workflows and the rules across files.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub settings: Option<RawSettings>,
    #[serde(default)]
    pub models: Vec<RawModel>,
    #[serde(default)]
    pub workflows: Vec<RawWorkflow>,
    #[serde(default)]
    pub task_kinds: Vec<RawTaskKind>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    /// Output tokens predicted when neither the request nor its task kind says.
    pub default_output_tokens: Option<u64>,
    /// The understanding model (task kind and difficulty score), relative to
    /// this file; the model the binary ships with when not given.
    pub understanding_model: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub name: String,
    pub provider: String,
    /// The ID the provider's API expects, such as `claude-sonnet-4-5-20250929`;
    /// `name` when not given.
    pub api_model: Option<String>,
    pub description: Option<String>,
    pub input_per_mtok: f64,
    pub cached_input_per_mtok: f64,
    /// Input tokens written to the prompt cache (Anthropic: 1.25 times the
    /// input price for 5 minutes, 2 times for an hour); the input price
    /// when not given.
    pub cache_write_input_per_mtok: Option<f64>,
    pub output_per_mtok: f64,
    /// Fraction off list price through the provider's batch API (0.5 = half price).
    #[serde(default)]
    pub batch_discount: f64,
    pub context_window: u64,
    pub max_output_tokens: u64,
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// `o200k` or `cl100k`.
    pub tokenizer: Option<String>,
    /// Multiplier from the tokenizer's count to the provider's, for providers
    /// whose own tokenizer is not public.
    pub token_scale: Option<f64>,
    /// Quality tier per task class; `general` is required and is the fallback.
    pub tiers: BTreeMap<String, i64>,
    /// How long the provider keeps a repeated prefix cached; 0 = no discount.
    #[serde(default)]
    pub prefix_cache_ttl_s: u64,
    /// The shortest prefix the provider caches (OpenAI and Anthropic: 1024).
    pub prefix_cache_min_tokens: Option<u64>,
    /// A data processing agreement covers this provider's use of the data.
    #[serde(default)]
    pub data_processing_agreement: bool,
    /// Where the provider processes the data, e.g. "eu", "us".
    pub region: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkflow {
    pub name: String,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub default_task_kind: Option<String>,
    /// The lowest tier this workflow may ever be routed to.
    pub quality_floor: Option<i64>,
    #[serde(default)]
    pub allowed_models: Vec<String>,
    #[serde(default)]
    pub allowed_providers: Vec<String>,
    /// Identities (from the API keys file) that may call this workflow; empty: any caller.
    #[serde(default)]
    pub allowed_callers: Vec<String>,
    /// Identities that may record any of this workflow's outcomes, though they
    /// routed none of its calls (a grader); others record only outcomes
    /// they routed under.
    #[serde(default)]
    pub outcome_recorders: Vec<String>,
    /// Only models whose provider has a data processing agreement.
    #[serde(default)]
    pub require_data_processing_agreement: bool,
    /// Only models processing data in these regions; empty: any.
    #[serde(default)]
    pub allowed_regions: Vec<String>,
    /// The highest tier this workflow may be routed to.
    pub max_tier: Option<i64>,
    /// What one outcome is, for people: "resolved ticket", "merged PR".
    pub outcome_unit: Option<String>,
    /// The workflow's spending limits.
    pub budget: Option<RawBudget>,
    /// How routing learns from feedback and outcomes.
    pub learning: Option<RawLearning>,
    /// ReportUsage naming a model other than the routed one: "refuse" (the
    /// default) or "charge" (priced at that model's prices, flagged, audited).
    pub other_model_usage: Option<String>,
    /// A reported cost above this many times the Route estimate is flagged.
    pub usage_overshoot_factor: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLearning {
    pub enabled: Option<bool>,
    /// Predicted acceptance a tier must reach to be chosen, 0 to 1.
    pub target: Option<f64>,
    /// Below the target, a tier within this much of the best is chosen.
    pub min_gain: Option<f64>,
    /// Share of calls sent to a random tier to keep learning, 0 to 0.5.
    pub exploration: Option<f64>,
    /// The least share of calls that explore, however sure the model is,
    /// 0 to `exploration`: what keeps every tier's propensity above zero,
    /// so that `whatif` can weigh any candidate.
    pub min_exploration: Option<f64>,
    /// Labelled calls each tier needs before the model decides.
    pub cold_start: Option<u64>,
    /// Labelled calls kept per workflow; the model is the fold of these.
    pub window: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    /// USD per period.
    pub limit_usd: f64,
    /// `day`, `week` (ISO, from Monday) or `month`.
    pub period: String,
    /// IANA time zone the period is aligned to; UTC by default.
    pub timezone: Option<String>,
    /// USD cap on the calls of one outcome ID.
    pub per_outcome_usd: Option<f64>,
    /// Percent of the limit past which routing steps down a tier.
    pub soft_threshold_pct: Option<f64>,
    /// `escalate` or `deny` at the limit.
    pub on_limit: Option<String>,
    /// `even` or `traffic`: spend along a target curve over the period
    /// (docs/budgets.md, "Pacing").
    pub pacing: Option<String>,
    /// Budgets for requests carrying a label value, e.g. per team.
    #[serde(default)]
    pub labels: Vec<RawLabelBudget>,
    /// Leased slices of the period budget, for a workflow shared by many
    /// sidecars through Redis: `{ refresh_s = 10, max_share = 0.05 }`.
    pub lease: Option<RawLease>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLease {
    /// Seconds between a sidecar's lease renewals (1 to 300).
    pub refresh_s: f64,
    /// The largest share of what remains one sidecar may lease (0 to 0.5).
    pub max_share: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLabelBudget {
    pub label: String,
    pub value: String,
    pub limit_usd: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTaskKind {
    pub name: String,
    /// The task class whose model tiers apply (general, code, reasoning, ...).
    pub class: String,
    /// Predicted output tokens for this kind of task.
    pub output_tokens: Option<u64>,
    /// How hard this kind of task is before reading the prompt, 0 to 1.
    pub complexity_prior: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    /// Workflow name, or omitted / `*` for every workflow.
    pub workflow: Option<String>,
    #[serde(default)]
    pub task_kinds: Vec<String>,
    #[serde(default)]
    pub task_classes: Vec<String>,
    pub min_complexity: Option<f64>,
    pub max_complexity: Option<f64>,
    /// The hardest such share (0 to 1) of the workflow's traffic.
    pub top_share: Option<f64>,
    pub min_attempt: Option<u32>,
    pub max_attempt: Option<u32>,
    /// The tier the request's task class needs.
    pub tier: Option<i64>,
    /// Or a model to pin.
    pub model: Option<String>,
}
