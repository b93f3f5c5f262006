//! Test support: rules files built from parts, so that a test states the
//! models and workflows it needs in a line each instead of repeating a
//! `[[models]]` table. Used by the unit tests and by `tests/`; not part of
//! the sidecar.

use std::fmt::Write as _;

/// A rules file under construction.
#[derive(Debug, Clone, Default)]
pub struct RulesBuilder {
    text: String,
}

/// A `[[models]]` entry: prices in USD per million tokens (cached input at
/// the input price unless set), one `general` tier, a 100k context window.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub provider: String,
    pub input: f64,
    pub cached: Option<f64>,
    pub output: f64,
    pub tier: u8,
    pub max_output_tokens: u64,
}

/// A model named `name` at `input`/`output` USD per million tokens, tier `tier`.
pub fn model(name: &str, input: f64, output: f64, tier: u8) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        provider: "p".into(),
        input,
        cached: None,
        output,
        tier,
        max_output_tokens: 100_000,
    }
}

impl ModelSpec {
    pub fn provider(mut self, p: &str) -> Self {
        self.provider = p.into();
        self
    }

    pub fn cached(mut self, usd: f64) -> Self {
        self.cached = Some(usd);
        self
    }

    pub fn max_output(mut self, tokens: u64) -> Self {
        self.max_output_tokens = tokens;
        self
    }
}

impl RulesBuilder {
    pub fn new() -> RulesBuilder {
        RulesBuilder::default()
    }

    pub fn model(mut self, m: ModelSpec) -> Self {
        let _ = write!(
            self.text,
            "[[models]]\nname = \"{}\"\nprovider = \"{}\"\ninput_per_mtok = {:?}\ncached_input_per_mtok = {:?}\n\
             output_per_mtok = {:?}\ncontext_window = 100000\nmax_output_tokens = {}\ntiers = {{ general = {} }}\n\n",
            m.name,
            m.provider,
            m.input,
            m.cached.unwrap_or(m.input),
            m.output,
            m.max_output_tokens,
            m.tier
        );
        self
    }

    /// A `[[workflows]]` table named `name`, with `body` (TOML lines, such as
    /// `learning = { enabled = false }`) after its name.
    pub fn workflow(mut self, name: &str, body: &str) -> Self {
        let _ = write!(self.text, "[[workflows]]\nname = \"{name}\"\n{}\n\n", body.trim());
        self
    }

    /// A workflow with a `[workflows.budget]` table: `budget` holds its keys.
    pub fn budgeted(mut self, name: &str, body: &str, budget: &str) -> Self {
        let _ = write!(
            self.text,
            "[[workflows]]\nname = \"{name}\"\n{}\n[workflows.budget]\n{}\n\n",
            body.trim(),
            budget.trim()
        );
        self
    }

    /// Any other TOML, as is (`[[rules]]`, `[[task_kinds]]`).
    pub fn raw(mut self, toml: &str) -> Self {
        self.text.push_str(toml.trim());
        self.text.push_str("\n\n");
        self
    }

    pub fn build(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::RuleTable;

    #[test]
    fn built_rules_load_as_written() {
        let text = RulesBuilder::new()
            .model(model("cheap", 0.1, 0.4, 2).cached(0.01))
            .model(model("big", 3.0, 15.0, 5).provider("q").max_output(4000))
            .budgeted(
                "w",
                "quality_floor = 2",
                "limit_usd = 1.0\nperiod = \"day\"\non_limit = \"deny\"",
            )
            .raw("[[rules]]\nname = \"r\"\ntier = 5")
            .build();
        let t = RuleTable::from_str("built.toml", &text).expect("valid");
        assert_eq!((t.models.len(), t.workflows.len(), t.rules.len()), (2, 1, 1));
        assert_eq!(t.models[0].cached_input_nanos_per_mtok, 10_000_000);
        assert_eq!(
            (t.models[1].provider.as_str(), t.models[1].max_output_tokens),
            ("q", 4000)
        );
        assert_eq!(
            t.workflow("w").and_then(|w| w.budget.as_ref()).map(|b| b.limit_nanos),
            Some(1_000_000_000)
        );
    }
}
