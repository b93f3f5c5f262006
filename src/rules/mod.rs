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
mod validate;
mod workflows;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use locate::{line_col, Diagnostic};
use locate::{read_source, Source};
use schema::RawFile;
pub use validate::ScopeGuard;
use validate::Validator;

use crate::hashing::FastMap;
use crate::money::token_cost;

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

    /// Whether `offered` has every capability in `self`.
    pub fn met_by(self, offered: Capabilities) -> bool {
        offered.contains(self)
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
    /// Ascending, which the decision's walk over the models relies on.
    pub allowed: Vec<usize>,
    /// For each task class, the distinct tiers (ascending) of the allowed
    /// models from `quality_floor` to `max_tier`: where learning and pacing
    /// may move. Worked out once, at load, rather than on every Route.
    pub available: Vec<Vec<u8>>,
    /// Identities that may call it; empty: any caller.
    pub allowed_callers: Vec<String>,
    /// Identities that may record any of its outcomes (graders).
    pub outcome_recorders: Vec<String>,
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
    /// The floor under exploration once labels flow (0 to `exploration`).
    pub min_exploration: f64,
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
            min_exploration: 0.0,
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

/// How a workflow's budget is paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// Spend aims at the elapsed share of the period.
    Even,
    /// Spend aims at the workflow's own traffic shape by hour of the week.
    Traffic,
}

impl Pacing {
    pub fn as_str(self) -> &'static str {
        match self {
            Pacing::Even => "even",
            Pacing::Traffic => "traffic",
        }
    }

    pub fn parse(s: &str) -> Option<Pacing> {
        match s {
            "even" => Some(Pacing::Even),
            "traffic" => Some(Pacing::Traffic),
            _ => None,
        }
    }
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
    /// Spend paced along a target curve over the period; `None`: the soft
    /// threshold steps down, as before.
    pub pacing: Option<Pacing>,
    pub labels: Vec<LabelBudget>,
    /// Leased slices of the period budget (fleet stores only).
    pub lease: Option<LeaseTerms>,
}

/// How a workflow's period budget is leased to sidecars in slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTerms {
    /// Milliseconds between a sidecar's renewals of its slice.
    pub refresh_ms: u64,
    /// The largest share of what remains one slice may take, in basis points.
    pub max_share_bp: u32,
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
    /// Matches the hardest this share of the workflow's traffic: a request
    /// whose complexity quantile is at least `1 - top_share`.
    pub top_share: Option<f64>,
    pub min_attempt: u32,
    pub max_attempt: u32,
    pub requirement: Requirement,
}

impl Rule {
    /// Whether the rule applies. The complexity band is `[min, max)`, except
    /// that a band ending at 1.0 includes 1.0. `quantile` is the request's
    /// complexity quantile within its workflow.
    pub fn matches(
        &self,
        workflow: &str,
        task_kind: &str,
        class: usize,
        (complexity, quantile): (f64, f64),
        attempt: u32,
    ) -> bool {
        self.workflow.as_deref().is_none_or(|w| w == workflow)
            && (self.task_kinds.is_empty() || self.task_kinds.iter().any(|k| k == task_kind))
            && (self.task_classes.is_empty() || self.task_classes.contains(&class))
            && complexity >= self.min_complexity
            && (complexity < self.max_complexity || (self.max_complexity >= 1.0 && complexity <= 1.0))
            && self.top_share.is_none_or(|s| quantile >= 1.0 - s)
            && (self.min_attempt..=self.max_attempt).contains(&attempt)
    }
}

impl RuleTable {
    /// Whether `kind` is a task kind or a class of this table.
    pub fn knows_kind(&self, kind: &str) -> bool {
        self.task_kinds.contains_key(kind) || self.classes.iter().any(|c| c == kind)
    }
}

/// The loaded, validated, immutable rule table. Swapped whole on reload.
#[derive(Debug, Clone)]
pub struct RuleTable {
    pub models: Vec<Model>,
    pub workflows: Vec<Workflow>,
    workflow_index: FastMap<String, usize>,
    pub task_kinds: FastMap<String, TaskKind>,
    /// Task class names; `classes[0]` is always `general`.
    pub classes: Vec<String>,
    pub rules: Vec<Rule>,
    pub default_output_tokens: u64,
    /// Reads a request's task kind and difficulty (the shipped model, or the
    /// file `[settings] understanding_model` names).
    pub understanding: std::sync::Arc<crate::understand::Understanding>,
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

/// Every rules file of `path`, read; each one that cannot be is a diagnostic.
fn read_sources(path: &Path) -> Result<Vec<Source>, RulesError> {
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
    Ok(sources)
}

impl RuleTable {
    /// Loads and validates a rules file or folder.
    pub fn load(path: &Path) -> Result<RuleTable, RulesError> {
        Self::from_sources(read_sources(path)?)
    }

    /// Loads from in-memory text, as if from a file named `name`.
    pub fn from_str(name: &str, text: &str) -> Result<RuleTable, RulesError> {
        Self::from_sources(vec![Source {
            path: PathBuf::from(name),
            text: text.to_string(),
        }])
    }

    /// Loads `path`, refusing (at the key) a budget whose period or time
    /// zone differs from `scopes` unless it allows a reset.
    pub fn load_guarded(path: &Path, scopes: &ScopeGuard) -> Result<RuleTable, RulesError> {
        Self::from_sources_with(read_sources(path)?, Some(scopes))
    }

    fn from_sources(sources: Vec<Source>) -> Result<RuleTable, RulesError> {
        Self::from_sources_with(sources, None)
    }

    fn from_sources_with(sources: Vec<Source>, scopes: Option<&ScopeGuard>) -> Result<RuleTable, RulesError> {
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
            scopes,
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

mod model;
#[cfg(test)]
mod tests;
pub use model::*;

/// Workflow names go into store keys (the Redis hash tag among them), metric
/// labels and span attributes, so they keep to a safe alphabet.
pub fn valid_workflow_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
