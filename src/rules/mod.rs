//! The rule table: models with prices and tiers, workflows, task kinds, and the
//! ordered rules that say which tier a request needs.
//!
//! Loading is two-stage. `schema` parses strictly (unknown keys are errors);
//! [`RuleTable::load`] then validates everything that spans fields or files and
//! builds the immutable table that `decide` reads. Every problem is reported as
//! a [`Diagnostic`] with `file:line:column` and the key to fix.
//!
//! This module has no tokio or tonic in it: `check`, `explain` and `replay`
//! use it without a server.

mod locate;
pub mod reload;
mod schema;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use locate::{line_col, Diagnostic};
use locate::{read_source, Seg, Source};
use schema::{RawFile, RawModel, RawRule, RawTaskKind, RawWorkflow};

use crate::money::{token_cost, usd_to_nanos};

/// The highest quality tier a rules file may give.
pub const MAX_TIER: u8 = 10;
/// The task class every model must rate and every unknown task kind falls back to.
pub const GENERAL_CLASS: &str = "general";
/// Output tokens predicted when nothing else says.
const DEFAULT_OUTPUT_TOKENS: u64 = 512;
/// The shortest prefix providers cache when the rules do not say (OpenAI's and
/// Anthropic's documented minimum for most models).
const DEFAULT_PREFIX_CACHE_MIN_TOKENS: u64 = 1024;
/// Upper bound on any token figure in a rules file: 100M is far past every
/// context window and keeps cost arithmetic far from overflow.
const MAX_TOKENS_SETTING: u64 = 100_000_000;

/// A tokenizer encoding. Non-OpenAI providers publish no offline tokenizer, so
/// their models name the closest encoding and a `token_scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Encoding {
    O200k = 0,
    Cl100k = 1,
}

impl Encoding {
    pub const ALL: [Encoding; 2] = [Encoding::O200k, Encoding::Cl100k];

    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200k => "o200k",
            Encoding::Cl100k => "cl100k",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "o200k" | "o200k_base" => Some(Encoding::O200k),
            "cl100k" | "cl100k_base" => Some(Encoding::Cl100k),
            _ => None,
        }
    }
}

/// Capabilities a request may need and a model may offer, as a bit set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities(pub(crate) u8);

impl Capabilities {
    pub const TOOLS: Capabilities = Capabilities(1);
    pub const VISION: Capabilities = Capabilities(2);
    pub const JSON: Capabilities = Capabilities(4);
    pub const NAMES: [(&'static str, Capabilities); 3] = [
        ("tools", Capabilities::TOOLS),
        ("vision", Capabilities::VISION),
        ("json", Capabilities::JSON),
    ];

    pub fn parse(name: &str) -> Option<Capabilities> {
        Self::NAMES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
    }

    pub fn insert(&mut self, other: Capabilities) {
        self.0 |= other.0;
    }

    pub fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// The names of the capabilities in `self` that `offered` lacks.
    pub fn missing_from(self, offered: Capabilities) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(_, c)| self.contains(*c) && !offered.contains(*c))
            .map(|(n, _)| *n)
            .collect()
    }
}

/// A model that can be routed to, with prices in integer nano-dollars.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub provider: String,
    pub description: String,
    /// Nano-dollars per million input tokens.
    pub input_nanos_per_mtok: i64,
    /// Nano-dollars per million input tokens served from the prompt cache.
    pub cached_input_nanos_per_mtok: i64,
    /// Nano-dollars per million output tokens.
    pub output_nanos_per_mtok: i64,
    /// Batch discount in basis points (5000 = half price).
    pub batch_discount_bp: u32,
    pub context_window: u64,
    pub max_output_tokens: u64,
    pub capabilities: Capabilities,
    pub encoding: Encoding,
    /// Provider tokens per 1000 tokenizer tokens (1000 = exact).
    pub token_scale_permille: u32,
    /// Tier per task class, indexed by `RuleTable::classes`.
    pub tiers: Vec<u8>,
    /// How long the provider keeps a repeated prefix; `None` = no discount.
    pub prefix_cache_ttl: Option<Duration>,
    /// The shortest prefix, in billed tokens, the provider serves from cache.
    pub prefix_cache_min_tokens: u64,
    pub data_processing_agreement: bool,
    /// Empty when not given.
    pub region: String,
}

/// A model's list prices, as a call is charged at them. A reservation keeps
/// the prices it was routed at, so that its settlement never depends on a
/// rules table that was reloaded in between.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Prices {
    /// Nano-dollars per million input tokens.
    pub input_nanos_per_mtok: i64,
    /// Nano-dollars per million input tokens served from the prompt cache.
    pub cached_input_nanos_per_mtok: i64,
    /// Nano-dollars per million output tokens.
    pub output_nanos_per_mtok: i64,
    /// Batch discount in basis points (5000 = half price).
    pub batch_discount_bp: u32,
}

impl Prices {
    /// The cost in nano-dollars of a call with these token counts. `cached` is
    /// the part of `input` served from the prompt cache; a deferrable call is
    /// priced at the batch discount. Rounds up: an estimate never under-reserves.
    pub fn cost(&self, input: u64, cached: u64, output: u64, deferrable: bool) -> i64 {
        let cached = cached.min(input);
        let full = token_cost(input - cached, self.input_nanos_per_mtok)
            .saturating_add(token_cost(cached, self.cached_input_nanos_per_mtok))
            .saturating_add(token_cost(output, self.output_nanos_per_mtok));
        if deferrable && self.batch_discount_bp > 0 {
            let kept = 10_000 - self.batch_discount_bp.min(10_000) as i128;
            i64::try_from((full as i128 * kept + 9_999) / 10_000).unwrap_or(i64::MAX)
        } else {
            full
        }
    }
}

impl Model {
    /// The model's prices, as a reservation keeps them.
    pub fn prices(&self) -> Prices {
        Prices {
            input_nanos_per_mtok: self.input_nanos_per_mtok,
            cached_input_nanos_per_mtok: self.cached_input_nanos_per_mtok,
            output_nanos_per_mtok: self.output_nanos_per_mtok,
            batch_discount_bp: self.batch_discount_bp,
        }
    }

    /// The cost in nano-dollars of a call with these token counts at the
    /// model's prices (see [`Prices::cost`]).
    pub fn cost(&self, input: u64, cached: u64, output: u64, deferrable: bool) -> i64 {
        self.prices().cost(input, cached, output, deferrable)
    }

    /// Input tokens as the provider would bill them, from the tokenizer count.
    pub fn billed_tokens(&self, counted: u64) -> u64 {
        if self.token_scale_permille == 1000 {
            counted
        } else {
            (counted * self.token_scale_permille as u64).div_ceil(1000)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Workflow {
    pub name: String,
    pub description: String,
    pub owner: String,
    pub default_task_kind: String,
    pub quality_floor: u8,
    /// The highest tier it may be routed to.
    pub max_tier: u8,
    /// Indexes into `RuleTable::models` that this workflow may use: its
    /// allow-lists, data processing agreement and region requirements met.
    pub allowed: Vec<usize>,
    /// Identities that may call it; empty: any caller.
    pub allowed_callers: Vec<String>,
    pub outcome_unit: String,
    /// Encodings used by the allowed models: only these are counted.
    pub encodings: Vec<Encoding>,
    /// Spending limits, if any.
    pub budget: Option<Budget>,
    pub learning: Learning,
    /// What ReportUsage does with usage for a model other than the routed one.
    pub other_model_usage: OtherModelUsage,
    /// A settled cost above the estimate times this (in basis points,
    /// 20,000 = twice) is flagged in a metric and the audit log.
    pub overshoot_bp: u32,
}

/// What ReportUsage does with usage that names a model other than the one
/// Route chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherModelUsage {
    /// Refused with INVALID_ARGUMENT (and audited): the call is charged only
    /// at the routed model's prices.
    Refuse,
    /// Charged at the reported model's prices, counted in
    /// `switchyard_usage_model_mismatch_total` and audited.
    Charge,
}

/// The overshoot factor when the rules do not give one: twice the estimate.
pub const DEFAULT_OVERSHOOT_FACTOR: f64 = 2.0;

/// How a workflow learns which tier its requests need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Learning {
    pub enabled: bool,
    pub target: f64,
    pub min_gain: f64,
    pub exploration: f64,
    pub cold_start: u64,
    pub window: u64,
}

impl Default for Learning {
    fn default() -> Learning {
        Learning {
            enabled: true,
            target: 0.9,
            min_gain: 0.15,
            exploration: 0.02,
            cold_start: 50,
            window: 20_000,
        }
    }
}

/// How long a budget period lasts; periods align to the calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    /// ISO week, from Monday 00:00.
    Week,
    Month,
}

/// What happens when a call would cross a hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLimit {
    /// A person must approve more (ESCALATION_REQUIRED).
    Escalate,
    /// The call is refused (DENIED).
    Deny,
}

/// A workflow's budget, in nano-dollars.
#[derive(Debug, Clone)]
pub struct Budget {
    pub limit_nanos: i64,
    pub period: Period,
    pub timezone: jiff::tz::TimeZone,
    /// The time zone's name, for keys and people.
    pub timezone_name: String,
    pub per_outcome_nanos: Option<i64>,
    /// Basis points of the limit past which routing steps down a tier.
    pub soft_threshold_bp: Option<u32>,
    pub on_limit: OnLimit,
    pub labels: Vec<LabelBudget>,
}

/// A budget for the requests of a workflow that carry `label = value`.
#[derive(Debug, Clone)]
pub struct LabelBudget {
    pub label: String,
    pub value: String,
    pub limit_nanos: i64,
}

#[derive(Debug, Clone)]
pub struct TaskKind {
    pub name: String,
    pub class: usize,
    pub output_tokens: Option<u64>,
    pub complexity_prior: f64,
}

/// What a matching rule asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// At least this tier for the request's task class.
    Tier(u8),
    /// This model (index into `RuleTable::models`).
    Pin(usize),
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    /// `None` matches every workflow.
    pub workflow: Option<String>,
    pub task_kinds: Vec<String>,
    /// Class indexes.
    pub task_classes: Vec<usize>,
    pub min_complexity: f64,
    pub max_complexity: f64,
    pub min_attempt: u32,
    pub max_attempt: u32,
    pub requirement: Requirement,
}

impl Rule {
    /// Whether the rule applies. The complexity band is `[min, max)`, except
    /// that a band ending at 1.0 includes 1.0.
    pub fn matches(&self, workflow: &str, task_kind: &str, class: usize, complexity: f64, attempt: u32) -> bool {
        self.workflow.as_deref().is_none_or(|w| w == workflow)
            && (self.task_kinds.is_empty() || self.task_kinds.iter().any(|k| k == task_kind))
            && (self.task_classes.is_empty() || self.task_classes.contains(&class))
            && complexity >= self.min_complexity
            && (complexity < self.max_complexity || (self.max_complexity >= 1.0 && complexity <= 1.0))
            && (self.min_attempt..=self.max_attempt).contains(&attempt)
    }
}

/// The loaded, validated, immutable rule table. Swapped whole on reload.
#[derive(Debug, Clone)]
pub struct RuleTable {
    pub models: Vec<Model>,
    pub workflows: Vec<Workflow>,
    workflow_index: HashMap<String, usize>,
    pub task_kinds: HashMap<String, TaskKind>,
    /// Task class names; `classes[0]` is always `general`.
    pub classes: Vec<String>,
    pub rules: Vec<Rule>,
    pub default_output_tokens: u64,
    /// The files it was loaded from, in load order.
    pub files: Vec<PathBuf>,
    /// A fingerprint of the files' bytes, to tell a real change from a touch.
    pub content_hash: u64,
}

/// Why a rule table could not be loaded: every problem found, located.
#[derive(Debug, Clone)]
pub struct RulesError {
    pub diagnostics: Vec<Diagnostic>,
}

impl std::fmt::Display for RulesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RulesError {}

/// The `*.toml` files a `--rules` path names: the file itself, or every
/// `*.toml` directly inside a folder (sorted, so load order is stable).
/// Hidden entries are skipped, which also skips Kubernetes ConfigMap internals
/// (`..data`, `..2024_...`).
pub fn rule_files(path: &Path) -> Result<Vec<PathBuf>, RulesError> {
    let err = |message: String| RulesError {
        diagnostics: vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            column: 1,
            key: "(file)".to_string(),
            message,
        }],
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        err(format!(
            "cannot open the rules path: {e}; pass --rules with a TOML file or a folder of them"
        ))
    })?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|e| err(format!("cannot list the rules folder: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && name.ends_with(".toml") && p.is_file()
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(err("the rules folder has no *.toml file directly inside it".to_string()));
    }
    Ok(files)
}

impl RuleTable {
    /// Loads and validates a rules file or folder.
    pub fn load(path: &Path) -> Result<RuleTable, RulesError> {
        let files = rule_files(path)?;
        let mut sources = Vec::with_capacity(files.len());
        let mut diagnostics = Vec::new();
        for file in &files {
            match read_source(file) {
                Ok(s) => sources.push(s),
                Err(d) => diagnostics.push(d),
            }
        }
        if !diagnostics.is_empty() {
            return Err(RulesError { diagnostics });
        }
        Self::from_sources(sources)
    }

    /// Loads from in-memory text, as if from a file named `name`.
    pub fn from_str(name: &str, text: &str) -> Result<RuleTable, RulesError> {
        Self::from_sources(vec![Source {
            path: PathBuf::from(name),
            text: text.to_string(),
        }])
    }

    fn from_sources(sources: Vec<Source>) -> Result<RuleTable, RulesError> {
        let mut diagnostics = Vec::new();
        let mut parsed = Vec::with_capacity(sources.len());
        for (i, src) in sources.iter().enumerate() {
            match toml::from_str::<RawFile>(&src.text) {
                Ok(raw) => parsed.push((i, raw)),
                Err(e) => diagnostics.push(src.toml_error(&e)),
            }
        }
        if !diagnostics.is_empty() {
            return Err(RulesError { diagnostics });
        }
        let mut v = Validator {
            sources: &sources,
            diagnostics: Vec::new(),
        };
        let table = v.build(parsed);
        if v.diagnostics.is_empty() {
            Ok(table)
        } else {
            Err(RulesError {
                diagnostics: v.diagnostics,
            })
        }
    }

    pub fn workflow(&self, name: &str) -> Option<&Workflow> {
        self.workflow_index.get(name).map(|&i| &self.workflows[i])
    }

    pub fn model_index(&self, name: &str) -> Option<usize> {
        self.models.iter().position(|m| m.name == name)
    }

    /// The task kind's settings, or `None` if it is not declared.
    pub fn task_kind(&self, name: &str) -> Option<&TaskKind> {
        self.task_kinds.get(name)
    }

    /// The class a task kind is priced as: its declared class, the class of the
    /// same name, or `general`.
    pub fn class_of(&self, task_kind: &str) -> usize {
        if let Some(k) = self.task_kinds.get(task_kind) {
            return k.class;
        }
        self.classes.iter().position(|c| c == task_kind).unwrap_or(0)
    }
}

/// Collects diagnostics while building the table, so that one run reports
/// every problem rather than the first.
struct Validator<'a> {
    sources: &'a [Source],
    diagnostics: Vec<Diagnostic>,
}

/// Where an item came from: file index and position in its array.
#[derive(Clone, Copy)]
struct Origin {
    file: usize,
    index: usize,
}

impl Validator<'_> {
    fn error(&mut self, origin: Origin, section: &'static str, key: &[&str], message: impl Into<String>) {
        let mut path = vec![Seg::Key(section), Seg::Index(origin.index)];
        path.extend(key.iter().map(|k| Seg::Key(k)));
        let d = self.sources[origin.file].locate(&path, message);
        self.diagnostics.push(d);
    }

    fn build(&mut self, parsed: Vec<(usize, RawFile)>) -> RuleTable {
        let mut raw_models = Vec::new();
        let mut raw_workflows = Vec::new();
        let mut raw_kinds = Vec::new();
        let mut raw_rules = Vec::new();
        let mut default_output_tokens = None;
        let mut settings_origin: Option<usize> = None;
        for (file, raw) in parsed {
            if let Some(s) = raw.settings {
                if let Some(prev) = settings_origin {
                    let d = self.sources[file].locate(
                        &[Seg::Key("settings")],
                        format!(
                            "[settings] is already set in {}; keep one [settings] table per rules folder",
                            self.sources[prev].path.display()
                        ),
                    );
                    self.diagnostics.push(d);
                }
                settings_origin = Some(file);
                default_output_tokens = s.default_output_tokens;
                if let Some(n) = s.default_output_tokens {
                    if n == 0 || n > MAX_TOKENS_SETTING {
                        let d = self.sources[file].locate(
                            &[Seg::Key("settings"), Seg::Key("default_output_tokens")],
                            format!("must be between 1 and {MAX_TOKENS_SETTING}"),
                        );
                        self.diagnostics.push(d);
                    }
                }
            }
            let at = |index| Origin { file, index };
            raw_models.extend(raw.models.into_iter().enumerate().map(|(i, m)| (at(i), m)));
            raw_workflows.extend(raw.workflows.into_iter().enumerate().map(|(i, w)| (at(i), w)));
            raw_kinds.extend(raw.task_kinds.into_iter().enumerate().map(|(i, k)| (at(i), k)));
            raw_rules.extend(raw.rules.into_iter().enumerate().map(|(i, r)| (at(i), r)));
        }

        if raw_models.is_empty() {
            let d = self.sources[0].locate(
                &[],
                "no [[models]] in the rules: add at least one model with its prices",
            );
            self.diagnostics.push(d);
        }
        if raw_workflows.is_empty() {
            let d = self.sources[0].locate(
                &[],
                "no [[workflows]] in the rules: add at least one, e.g. name = \"general\"",
            );
            self.diagnostics.push(d);
        }

        // Task classes: `general` first, then every class named by a model or task kind.
        let mut classes = vec![GENERAL_CLASS.to_string()];
        for (_, m) in &raw_models {
            for c in m.tiers.keys() {
                if !classes.contains(c) {
                    classes.push(c.clone());
                }
            }
        }

        let models = self.models(&raw_models, &classes);
        let task_kinds = self.task_kinds(&raw_kinds, &classes);
        let workflows = self.workflows(&raw_workflows, &models);
        let rules = self.rules(&raw_rules, &models, &workflows, &classes);

        let workflow_index = workflows.iter().enumerate().map(|(i, w)| (w.name.clone(), i)).collect();
        RuleTable {
            models,
            workflows,
            workflow_index,
            task_kinds,
            classes,
            rules,
            default_output_tokens: default_output_tokens.unwrap_or(DEFAULT_OUTPUT_TOKENS),
            files: self.sources.iter().map(|s| s.path.clone()).collect(),
            content_hash: content_hash(self.sources.iter().map(|s| (s.path.as_path(), s.text.as_bytes()))),
        }
    }

    fn models(&mut self, raw: &[(Origin, RawModel)], classes: &[String]) -> Vec<Model> {
        let mut out = Vec::with_capacity(raw.len());
        let mut seen: HashMap<&str, Origin> = HashMap::new();
        for &(o, ref m) in raw {
            let e = |v: &mut Self, key: &[&str], msg: String| v.error(o, "models", key, msg);
            if m.name.trim().is_empty() {
                e(self, &["name"], "a model needs a non-empty name".into());
            }
            if let Some(prev) = seen.insert(&m.name, o) {
                let prev_file = self.sources[prev.file].path.display().to_string();
                e(
                    self,
                    &["name"],
                    format!(
                        "model `{}` is defined twice (also in {prev_file}); model names must be unique",
                        m.name
                    ),
                );
            }
            if m.provider.trim().is_empty() {
                e(self, &["provider"], "a model needs a provider, e.g. \"openai\"".into());
            }
            let price = |v: &mut Self, key: &'static str, usd: f64| {
                usd_to_nanos(usd).unwrap_or_else(|| {
                    e(
                        v,
                        &[key],
                        format!(
                            "{usd} is not a price: give USD per million tokens, from 0 to {}",
                            crate::money::MAX_PRICE_PER_MTOK_USD
                        ),
                    );
                    0
                })
            };
            let input = price(self, "input_per_mtok", m.input_per_mtok);
            let cached = price(self, "cached_input_per_mtok", m.cached_input_per_mtok);
            let output = price(self, "output_per_mtok", m.output_per_mtok);
            if usd_to_nanos(m.input_per_mtok).is_some()
                && usd_to_nanos(m.cached_input_per_mtok).is_some()
                && cached > input
            {
                e(
                    self,
                    &["cached_input_per_mtok"],
                    format!(
                        "the cached input price ({}) is above the input price ({}); providers discount cached tokens",
                        m.cached_input_per_mtok, m.input_per_mtok
                    ),
                );
            }
            if !(0.0..1.0).contains(&m.batch_discount) || !m.batch_discount.is_finite() {
                e(self, &["batch_discount"], format!("{} is not a discount: give the fraction off list price, from 0 (none) to below 1 (0.5 = half price)", m.batch_discount));
            }
            if m.context_window == 0 || m.context_window > MAX_TOKENS_SETTING {
                e(
                    self,
                    &["context_window"],
                    format!("must be between 1 and {MAX_TOKENS_SETTING} tokens"),
                );
            }
            if m.max_output_tokens == 0 || m.max_output_tokens > m.context_window.max(1) {
                e(
                    self,
                    &["max_output_tokens"],
                    format!("must be between 1 and the context window ({})", m.context_window),
                );
            }
            let mut caps = Capabilities::default();
            for c in &m.capabilities {
                match Capabilities::parse(c) {
                    Some(cap) => caps.insert(cap),
                    None => e(
                        self,
                        &["capabilities"],
                        format!("unknown capability `{c}`; use \"tools\", \"vision\" or \"json\""),
                    ),
                }
            }
            let encoding = match m.tokenizer.as_deref() {
                None => Encoding::O200k,
                Some(t) => Encoding::parse(t).unwrap_or_else(|| {
                    e(
                        self,
                        &["tokenizer"],
                        format!("unknown tokenizer `{t}`; use \"o200k\" or \"cl100k\""),
                    );
                    Encoding::O200k
                }),
            };
            let scale = m.token_scale.unwrap_or(1.0);
            if m.prefix_cache_ttl_s > 7 * 24 * 3600 {
                e(
                    self,
                    &["prefix_cache_ttl_s"],
                    "at most 604800 (a week); providers keep prefixes minutes to hours".into(),
                );
            }
            if m.prefix_cache_min_tokens.is_some_and(|n| n > MAX_TOKENS_SETTING) {
                e(
                    self,
                    &["prefix_cache_min_tokens"],
                    format!("at most {MAX_TOKENS_SETTING}"),
                );
            }
            if !(0.1..=10.0).contains(&scale) {
                e(self, &["token_scale"], format!("{scale} is outside 0.1 to 10; it multiplies the tokenizer's count to approximate the provider's"));
            }
            let mut tiers = vec![0u8; classes.len()];
            if !m.tiers.contains_key(GENERAL_CLASS) {
                e(
                    self,
                    &["tiers"],
                    "tiers must rate the `general` class, e.g. tiers = { general = 3 }".into(),
                );
            }
            for (class, &tier) in &m.tiers {
                if !(1..=MAX_TIER as i64).contains(&tier) {
                    e(
                        self,
                        &["tiers", class],
                        format!("tier {tier} is outside 1 to {MAX_TIER}"),
                    );
                }
                if let Some(ci) = classes.iter().position(|c| c == class) {
                    tiers[ci] = tier.clamp(0, MAX_TIER as i64) as u8;
                }
            }
            // Classes this model does not rate fall back to its general tier.
            let general = tiers[0];
            for t in tiers.iter_mut() {
                if *t == 0 {
                    *t = general;
                }
            }
            out.push(Model {
                name: m.name.clone(),
                provider: m.provider.clone(),
                description: m.description.clone().unwrap_or_default(),
                input_nanos_per_mtok: input,
                cached_input_nanos_per_mtok: cached,
                output_nanos_per_mtok: output,
                batch_discount_bp: (m.batch_discount.clamp(0.0, 0.9999) * 10_000.0).round() as u32,
                context_window: m.context_window,
                max_output_tokens: m.max_output_tokens,
                capabilities: caps,
                encoding,
                token_scale_permille: (scale.clamp(0.1, 10.0) * 1000.0).round() as u32,
                tiers,
                prefix_cache_ttl: (m.prefix_cache_ttl_s > 0).then(|| Duration::from_secs(m.prefix_cache_ttl_s)),
                prefix_cache_min_tokens: m.prefix_cache_min_tokens.unwrap_or(DEFAULT_PREFIX_CACHE_MIN_TOKENS),
                data_processing_agreement: m.data_processing_agreement,
                region: m.region.clone().unwrap_or_default(),
            });
        }
        out
    }

    fn task_kinds(&mut self, raw: &[(Origin, RawTaskKind)], classes: &[String]) -> HashMap<String, TaskKind> {
        let mut out = HashMap::new();
        for &(o, ref k) in raw {
            let class = classes.iter().position(|c| *c == k.class);
            if class.is_none() {
                self.error(
                    o,
                    "task_kinds",
                    &["class"],
                    format!(
                        "class `{}` is not rated by any model's tiers; known classes: {}",
                        k.class,
                        classes.join(", ")
                    ),
                );
            }
            if let Some(n) = k.output_tokens {
                if n == 0 || n > MAX_TOKENS_SETTING {
                    self.error(
                        o,
                        "task_kinds",
                        &["output_tokens"],
                        format!("must be between 1 and {MAX_TOKENS_SETTING}"),
                    );
                }
            }
            let prior = k.complexity_prior.unwrap_or(0.0);
            if !(0.0..=1.0).contains(&prior) {
                self.error(
                    o,
                    "task_kinds",
                    &["complexity_prior"],
                    format!("{prior} is outside 0 to 1"),
                );
            }
            if out.contains_key(&k.name) {
                self.error(
                    o,
                    "task_kinds",
                    &["name"],
                    format!("task kind `{}` is defined twice", k.name),
                );
            }
            out.insert(
                k.name.clone(),
                TaskKind {
                    name: k.name.clone(),
                    class: class.unwrap_or(0),
                    output_tokens: k.output_tokens,
                    complexity_prior: prior.clamp(0.0, 1.0),
                },
            );
        }
        out
    }

    fn workflows(&mut self, raw: &[(Origin, RawWorkflow)], models: &[Model]) -> Vec<Workflow> {
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
            for c in &w.allowed_callers {
                if c.is_empty() || c.chars().any(char::is_control) {
                    self.error(
                        o,
                        "workflows",
                        &["allowed_callers"],
                        "a caller identity must be printable, non-empty text",
                    );
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
            let budget = w.budget.as_ref().and_then(|b| self.budget(o, b));
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
            out.push(Workflow {
                budget,
                learning,
                other_model_usage,
                overshoot_bp: (factor.clamp(1.0, 100.0) * 10_000.0).round() as u32,
                name: w.name.clone(),
                description: w.description.clone().unwrap_or_default(),
                owner: w.owner.clone().unwrap_or_default(),
                default_task_kind: w.default_task_kind.clone().unwrap_or_else(|| GENERAL_CLASS.to_string()),
                quality_floor: floor.clamp(1, MAX_TIER as i64) as u8,
                max_tier: max_tier.clamp(1, MAX_TIER as i64) as u8,
                allowed,
                allowed_callers: w.allowed_callers.clone(),
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

    fn budget(&mut self, o: Origin, b: &schema::RawBudget) -> Option<Budget> {
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
        (self.diagnostics.len() == before).then_some(Budget {
            limit_nanos,
            period,
            timezone,
            timezone_name,
            per_outcome_nanos,
            soft_threshold_bp,
            on_limit,
            labels,
        })
    }

    fn rules(
        &mut self,
        raw: &[(Origin, RawRule)],
        models: &[Model],
        workflows: &[Workflow],
        classes: &[String],
    ) -> Vec<Rule> {
        let mut out: Vec<Rule> = Vec::with_capacity(raw.len());
        for &(o, ref r) in raw {
            if r.name.trim().is_empty() {
                self.error(
                    o,
                    "rules",
                    &["name"],
                    "a rule needs a name; it is reported in every decision",
                );
            }
            if out.iter().any(|x| x.name == r.name) {
                self.error(
                    o,
                    "rules",
                    &["name"],
                    format!("rule `{}` is defined twice; names must be unique", r.name),
                );
            }
            let workflow = r.workflow.clone().filter(|w| w != "*");
            if let Some(w) = &workflow {
                if !workflows.iter().any(|x| &x.name == w) {
                    self.error(
                        o,
                        "rules",
                        &["workflow"],
                        format!("workflow `{w}` is not in [[workflows]]; use \"*\" or omit it for every workflow"),
                    );
                }
            }
            let mut task_classes = Vec::new();
            for c in &r.task_classes {
                match classes.iter().position(|x| x == c) {
                    Some(i) => task_classes.push(i),
                    None => self.error(
                        o,
                        "rules",
                        &["task_classes"],
                        format!(
                            "class `{c}` is not rated by any model; known classes: {}",
                            classes.join(", ")
                        ),
                    ),
                }
            }
            let min_c = r.min_complexity.unwrap_or(0.0);
            let max_c = r.max_complexity.unwrap_or(1.0);
            if !(0.0..=1.0).contains(&min_c) || !(0.0..=1.0).contains(&max_c) || min_c > max_c {
                self.error(
                    o,
                    "rules",
                    &["min_complexity"],
                    format!("the complexity band [{min_c}, {max_c}] must lie within 0 to 1 with min <= max"),
                );
            }
            let min_a = r.min_attempt.unwrap_or(1);
            let max_a = r.max_attempt.unwrap_or(u32::MAX);
            if min_a > max_a {
                self.error(
                    o,
                    "rules",
                    &["min_attempt"],
                    format!("min_attempt {min_a} is above max_attempt {max_a}"),
                );
            }
            let requirement = match (r.tier, &r.model) {
                (Some(t), None) => {
                    if !(1..=MAX_TIER as i64).contains(&t) {
                        self.error(o, "rules", &["tier"], format!("tier {t} is outside 1 to {MAX_TIER}"));
                    }
                    Requirement::Tier(t.clamp(1, MAX_TIER as i64) as u8)
                }
                (None, Some(name)) => match models.iter().position(|m| &m.name == name) {
                    Some(i) => Requirement::Pin(i),
                    None => {
                        self.error(o, "rules", &["model"], format!("model `{name}` is not in [[models]]"));
                        Requirement::Tier(1)
                    }
                },
                (Some(_), Some(_)) => {
                    self.error(o, "rules", &["model"], "give either `tier` or `model`, not both");
                    Requirement::Tier(1)
                }
                (None, None) => {
                    self.error(
                        o,
                        "rules",
                        &["name"],
                        "a rule must give a `tier` to require or a `model` to pin",
                    );
                    Requirement::Tier(1)
                }
            };
            if let (Requirement::Pin(i), Some(w)) = (
                requirement,
                workflow.as_ref().and_then(|w| workflows.iter().find(|x| &x.name == w)),
            ) {
                if !w.allowed.contains(&i) {
                    self.error(
                        o,
                        "rules",
                        &["model"],
                        format!("model `{}` is not allowed in workflow `{}`", models[i].name, w.name),
                    );
                }
            }
            out.push(Rule {
                name: r.name.clone(),
                workflow,
                task_kinds: r.task_kinds.clone(),
                task_classes,
                min_complexity: min_c,
                max_complexity: max_c,
                min_attempt: min_a,
                max_attempt: max_a,
                requirement,
            });
        }
        out
    }
}

/// A fingerprint of rules files' paths and bytes, in load order: the table
/// keeps it, and reload compares the files on disk with it.
pub fn content_hash<'a>(files: impl Iterator<Item = (&'a Path, &'a [u8])>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    for (path, bytes) in files {
        bytes.hash(&mut hasher);
        path.hash(&mut hasher);
    }
    hasher.finish()
}

/// Summary counts for `check` and the startup log.
pub fn summary(t: &RuleTable) -> String {
    let providers: BTreeMap<&str, ()> = t.models.iter().map(|m| (m.provider.as_str(), ())).collect();
    format!(
        "{} models from {} providers, {} workflows, {} task kinds, {} rules, from {} file(s)",
        t.models.len(),
        providers.len(),
        t.workflows.len(),
        t.task_kinds.len(),
        t.rules.len(),
        t.files.len()
    )
}

#[cfg(test)]
mod tests;

/// Workflow names go into store keys (the Redis hash tag among them), metric
/// labels and span attributes, so they keep to a safe alphabet.
pub fn valid_workflow_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
