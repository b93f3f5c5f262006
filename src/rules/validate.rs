//! The second stage of loading: everything that spans fields or files,
//! checked after the strict parse, each problem a [`Diagnostic`] with
//! `file:line:column` and the key to fix; and the immutable table built
//! from what passed.

use std::collections::HashMap;
use std::time::Duration;

use super::locate::{Seg, Source};
use super::schema::{RawFile, RawModel, RawRule, RawTaskKind};
use super::*;
use crate::hashing::FastMap;
use crate::money::usd_to_nanos;

/// Collects diagnostics while building the table, so that one run reports
/// every problem rather than the first.
pub(super) struct Validator<'a> {
    pub(super) sources: &'a [Source],
    pub(super) diagnostics: Vec<Diagnostic>,
    /// The budget scopes in force before, to refuse a silent reset.
    pub(super) scopes: Option<&'a ScopeGuard>,
}

/// The period and time zone each workflow's budget had in the table in force
/// (or the one a state folder last served), and whether changing them may
/// start a fresh scope. A change is otherwise an error at the key.
#[derive(Debug, Clone, Default)]
pub struct ScopeGuard {
    /// Workflow -> (period, time zone).
    pub previous: std::collections::HashMap<String, (String, String)>,
    pub allow_reset: bool,
}

impl ScopeGuard {
    /// The scopes of `table`'s budgets.
    pub fn of(table: &super::RuleTable, allow_reset: bool) -> ScopeGuard {
        ScopeGuard {
            previous: scopes_of(table),
            allow_reset,
        }
    }

    /// The workflows whose period or time zone differ in `table`, with
    /// what they were and are.
    pub fn changes(&self, table: &super::RuleTable) -> Vec<(String, String, String)> {
        let now = scopes_of(table);
        let mut out: Vec<_> = now
            .iter()
            .filter_map(|(w, (p, tz))| {
                let (wp, wtz) = self.previous.get(w)?;
                (wp != p || wtz != tz).then(|| (w.clone(), format!("{wp} in {wtz}"), format!("{p} in {tz}")))
            })
            .collect();
        out.sort();
        out
    }

    /// Reads the scopes a state folder's `budget-scopes.json` recorded; an
    /// absent file is no scopes, a damaged one an error naming it.
    pub fn read(path: &std::path::Path, allow_reset: bool) -> Result<ScopeGuard, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(|previous| ScopeGuard { previous, allow_reset })
                .map_err(|e| {
                    format!(
                        "{}: not a budget scopes file ({e}); delete it to start over",
                        path.display()
                    )
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ScopeGuard {
                previous: Default::default(),
                allow_reset,
            }),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Records `table`'s scopes in `path` (written whole, then renamed).
    pub fn write(table: &super::RuleTable, path: &std::path::Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(&scopes_of(table)).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }
}

fn scopes_of(table: &super::RuleTable) -> std::collections::HashMap<String, (String, String)> {
    table
        .workflows
        .iter()
        .filter_map(|w| {
            let b = w.budget.as_ref()?;
            let period = match b.period {
                super::Period::Day => "day",
                super::Period::Week => "week",
                super::Period::Month => "month",
            };
            Some((w.name.clone(), (period.to_string(), b.timezone_name.clone())))
        })
        .collect()
}

/// Where an item came from: file index and position in its array.
#[derive(Clone, Copy)]
pub(super) struct Origin {
    pub(super) file: usize,
    pub(super) index: usize,
}

impl Validator<'_> {
    pub(super) fn error(&mut self, origin: Origin, section: &'static str, key: &[&str], message: impl Into<String>) {
        let mut path = vec![Seg::Key(section), Seg::Index(origin.index)];
        path.extend(key.iter().map(|k| Seg::Key(k)));
        let d = self.sources[origin.file].locate(&path, message);
        self.diagnostics.push(d);
    }

    pub(super) fn build(&mut self, parsed: Vec<(usize, RawFile)>) -> RuleTable {
        let mut raw_models = Vec::new();
        let mut raw_workflows = Vec::new();
        let mut raw_kinds = Vec::new();
        let mut raw_rules = Vec::new();
        let mut default_output_tokens = None;
        let mut understanding = None;
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
                if let Some(name) = &s.understanding_model {
                    let dir = self.sources[file].path.parent().unwrap_or(std::path::Path::new("."));
                    match crate::understand::Understanding::load(&dir.join(name)) {
                        Ok(m) => understanding = Some(std::sync::Arc::new(m)),
                        Err(e) => {
                            let d =
                                self.sources[file].locate(&[Seg::Key("settings"), Seg::Key("understanding_model")], e);
                            self.diagnostics.push(d);
                        }
                    }
                }
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
        let understanding = match understanding {
            Some(m) => m,
            None => crate::understand::Understanding::shipped().unwrap_or_else(|e| {
                // Only a build whose embedded model is damaged gets here; its
                // own test catches that before it ships.
                let d = self.sources[0].locate(&[], format!("the shipped understanding model: {e}"));
                self.diagnostics.push(d);
                std::sync::Arc::new(crate::understand::Understanding::empty())
            }),
        };
        RuleTable {
            models,
            workflows,
            workflow_index,
            task_kinds,
            classes,
            rules,
            default_output_tokens: default_output_tokens.unwrap_or(DEFAULT_OUTPUT_TOKENS),
            understanding,
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
            let cache_write = match m.cache_write_input_per_mtok {
                Some(usd) => price(self, "cache_write_input_per_mtok", usd),
                None => input,
            };
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
            if let Some(id) = &m.api_model {
                if id.trim().is_empty() || id.len() > 256 || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    e(
                        self,
                        &["api_model"],
                        "the provider's model ID: 1 to 256 characters without spaces or control characters, \
                         e.g. \"claude-sonnet-4-5-20250929\"; omit it to send `name`"
                            .into(),
                    );
                }
            }
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
                api_model: m.api_model.clone().unwrap_or_else(|| m.name.clone()),
                description: m.description.clone().unwrap_or_default(),
                input_nanos_per_mtok: input,
                cached_input_nanos_per_mtok: cached,
                cache_write_input_nanos_per_mtok: cache_write,
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

    fn task_kinds(&mut self, raw: &[(Origin, RawTaskKind)], classes: &[String]) -> FastMap<String, TaskKind> {
        let mut out = FastMap::default();
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
            if let Some(s) = r.top_share {
                if !(s > 0.0 && s <= 1.0) {
                    self.error(
                        o,
                        "rules",
                        &["top_share"],
                        format!("top_share {s} must be above 0 and at most 1 (0.2: the hardest 20% of the workflow's traffic)"),
                    );
                }
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
                top_share: r.top_share,
                min_attempt: min_a,
                max_attempt: max_a,
                requirement,
            });
        }
        out
    }
}
