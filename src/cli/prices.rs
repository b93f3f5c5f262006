//! `switchyard prices import`: updates a rules file's model prices and limits
//! from LiteLLM's public price map (`model_prices_and_context_window.json`,
//! shipped in the `litellm` PyPI package).
//!
//! Only the models the rules file names are touched, and only these keys:
//! `input_per_mtok`, `cached_input_per_mtok`, `output_per_mtok`,
//! `batch_discount`, `context_window`, `max_output_tokens`. Comments, order
//! and every other key are kept (toml_edit). A model is found under its own
//! name, or `<provider>/<name>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml_edit::{DocumentMut, Item, Value};

/// One entry of the price map; unknown fields are ignored.
#[derive(Debug, Deserialize, Default)]
struct Entry {
    input_cost_per_token: Option<f64>,
    output_cost_per_token: Option<f64>,
    cache_read_input_token_cost: Option<f64>,
    input_cost_per_token_batches: Option<f64>,
    max_input_tokens: Option<serde_json::Value>,
    max_output_tokens: Option<serde_json::Value>,
}

/// One changed value.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub model: String,
    pub key: &'static str,
    pub old: Option<String>,
    pub new: String,
}

pub struct ImportArgs {
    pub map: PathBuf,
    pub rules: PathBuf,
    /// Write here instead of in place.
    pub out: Option<PathBuf>,
    /// Print the diff, write nothing.
    pub dry_run: bool,
}

/// Per-token USD as USD per million, rounded to a tenth of a micro-dollar so
/// that binary floating point does not show through (1.25e-06 -> 1.25).
fn per_mtok(x: f64) -> f64 {
    (x * 1e6 * 1e7).round() / 1e7
}

fn count(v: &Option<serde_json::Value>) -> Option<i64> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_i64().filter(|n| *n > 0),
        Some(serde_json::Value::String(s)) => s.parse().ok().filter(|n: &i64| *n > 0),
        _ => None,
    }
}

/// Applies the price map to the rules text; returns the new text and what changed.
/// The map's entry for a model: under its name, `provider/name`, or else
/// the newest dated ID of it (`name-YYYYMMDD`, as Anthropic names models),
/// with the ID the provider's API takes.
fn lookup(map: &BTreeMap<String, serde_json::Value>, name: &str, provider: &str) -> Option<(String, Entry)> {
    let entry = |v: &serde_json::Value| serde_json::from_value::<Entry>(v.clone()).ok();
    if let Some(e) = map
        .get(name)
        .or_else(|| map.get(&format!("{provider}/{name}")))
        .and_then(entry)
    {
        return Some((name.to_string(), e));
    }
    let prefixed = format!("{provider}/");
    let dated = |key: &str| {
        let id = key.strip_prefix(&prefixed).unwrap_or(key);
        let date = id.strip_prefix(name)?.strip_prefix('-')?;
        (date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit())).then(|| id.to_string())
    };
    map.iter()
        .filter_map(|(k, v)| Some((dated(k)?, v)))
        .max_by(|a, b| a.0.cmp(&b.0))
        .and_then(|(id, v)| Some((id, entry(v)?)))
}

pub fn apply(rules_text: &str, rules_name: &str, map_json: &str) -> Result<(String, Vec<Change>, Vec<String>), String> {
    let map: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(map_json).map_err(|e| format!("the price map is not JSON: {e} (line {})", e.line()))?;
    let mut doc: DocumentMut = rules_text.parse().map_err(|e: toml_edit::TomlError| {
        let (line, col) = e
            .span()
            .map(|s| crate::rules::line_col(rules_text, s.start))
            .unwrap_or((1, 1));
        format!("{rules_name}:{line}:{col}: {}", e.message())
    })?;
    let mut changes = Vec::new();
    let mut missing = Vec::new();
    let Some(models) = doc.get_mut("models").and_then(Item::as_array_of_tables_mut) else {
        return Ok((doc.to_string(), changes, missing));
    };
    for table in models.iter_mut() {
        let name = table.get("name").and_then(Item::as_str).unwrap_or_default().to_string();
        let provider = table
            .get("provider")
            .and_then(Item::as_str)
            .unwrap_or_default()
            .to_string();
        let Some((api_id, e)) = lookup(&map, &name, &provider) else {
            missing.push(name);
            continue;
        };
        let mut set = |key: &'static str, new: Value| {
            let old = table.get(key).and_then(Item::as_value).map(|v| {
                let mut bare = v.clone();
                bare.decor_mut().clear();
                bare.to_string()
            });
            let shown = new.to_string().trim().to_string();
            let same = match (table.get(key).and_then(Item::as_value), &new) {
                (Some(Value::Float(a)), Value::Float(b)) => (a.value() - b.value()).abs() < 1e-12,
                (Some(Value::Integer(a)), Value::Integer(b)) => a.value() == b.value(),
                (Some(Value::Integer(a)), Value::Float(b)) => (*a.value() as f64 - b.value()).abs() < 1e-12,
                (Some(Value::String(a)), Value::String(b)) => a.value() == b.value(),
                _ => false,
            };
            if !same {
                // Keep the key's own decoration (a trailing comment, say).
                let decor = table.get(key).and_then(Item::as_value).map(|v| v.decor().clone());
                let mut new = new;
                if let Some(d) = decor {
                    *new.decor_mut() = d;
                }
                table.insert(key, Item::Value(new));
                changes.push(Change {
                    model: name.clone(),
                    key,
                    old,
                    new: shown,
                });
            }
        };
        // The map knows the model only by a dated ID: that is the ID its
        // provider's API expects.
        if api_id != name {
            set("api_model", Value::from(api_id));
        }
        if let Some(x) = e.input_cost_per_token {
            set("input_per_mtok", Value::from(per_mtok(x)));
            if let Some(b) = e.input_cost_per_token_batches.filter(|b| *b > 0.0 && x > 0.0 && *b < x) {
                set("batch_discount", Value::from(((1.0 - b / x) * 1e4).round() / 1e4));
            }
        }
        if let Some(x) = e.cache_read_input_token_cost {
            set("cached_input_per_mtok", Value::from(per_mtok(x)));
        }
        if let Some(x) = e.output_cost_per_token {
            set("output_per_mtok", Value::from(per_mtok(x)));
        }
        if let Some(n) = count(&e.max_input_tokens) {
            set("context_window", Value::from(n));
        }
        if let Some(n) = count(&e.max_output_tokens) {
            set("max_output_tokens", Value::from(n));
        }
    }
    Ok((doc.to_string(), changes, missing))
}

/// `switchyard prices import`. Exit 0 when written (or nothing to change), 1
/// when the result would not be valid rules or a file cannot be read or
/// written, 64 for bad arguments.
pub fn import(a: &ImportArgs) -> i32 {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let (rules_text, map_text) = match (read(&a.rules), read(&a.map)) {
        (Ok(r), Ok(m)) => (r, m),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return 1;
        }
    };
    if a.rules.is_dir() {
        eprintln!("--rules must be one TOML file for prices import; name the file that holds the [[models]]");
        return 64;
    }
    let name = a.rules.display().to_string();
    let (text, changes, missing) = match apply(&rules_text, &name, &map_text) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    for c in &changes {
        super::print_text(&format!(
            "{}: {} {} -> {}",
            c.model,
            c.key,
            c.old.as_deref().unwrap_or("(unset)"),
            c.new
        ));
    }
    for m in &missing {
        eprintln!("{m}: not in the price map; left as it is");
    }
    if changes.is_empty() {
        super::print_text(&format!(
            "no changes: {} already matches the price map",
            a.rules.display()
        ));
        return 0;
    }
    // The result must still be valid rules on its own (a model now below its
    // cached price, say, is refused here rather than at the next reload).
    if let Err(e) = crate::rules::RuleTable::from_str(&name, &text) {
        eprintln!("the updated rules would not be valid, so nothing was written:\n{e}");
        return 1;
    }
    if a.dry_run {
        super::print_text(&format!("{} change(s); --dry-run: nothing written", changes.len()));
        return 0;
    }
    let target = a.out.as_deref().unwrap_or(&a.rules);
    // Write beside the target and rename, so a reader (the hot reload) never
    // sees half a file.
    let tmp = target.with_extension("toml.tmp");
    let written = std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, target));
    match written {
        Ok(()) => {
            super::print_text(&format!("{} change(s) written to {}", changes.len(), target.display()));
            0
        }
        Err(e) => {
            eprintln!("cannot write {}: {e}", target.display());
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"# Catalogue, with comments that must survive.

[[models]]
name = "gpt-5"
provider = "openai"
input_per_mtok = 1.0   # old price
cached_input_per_mtok = 0.1
output_per_mtok = 8.0
batch_discount = 0.5
context_window = 200000
max_output_tokens = 64000
tiers = { general = 5 }

[[models]]
name = "claude-haiku-4-5"
provider = "anthropic"
input_per_mtok = 1.0
cached_input_per_mtok = 0.1
output_per_mtok = 5.0
context_window = 200000
max_output_tokens = 64000
tiers = { general = 3 }

[[models]]
name = "claude-sonnet-4-5"
provider = "anthropic"
input_per_mtok = 3.0
cached_input_per_mtok = 0.3
output_per_mtok = 15.0
context_window = 200000
max_output_tokens = 64000
tiers = { general = 4 }

[[models]]
name = "in-house"
provider = "self"
input_per_mtok = 0.0
cached_input_per_mtok = 0.0
output_per_mtok = 0.0
context_window = 8000
max_output_tokens = 1000
tiers = { general = 1 }

[[workflows]]
name = "general"
"#;

    #[test]
    fn only_named_models_and_price_keys_change_and_comments_stay() {
        let map = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/litellm-prices-excerpt.json"),
        )
        .expect("fixture");
        let (text, changes, missing) = apply(RULES, "rules.toml", &map).expect("applies");
        assert!(text.starts_with("# Catalogue, with comments that must survive."));
        assert!(text.contains("input_per_mtok = 1.25   # old price"), "{text}");
        assert!(text.contains("tiers = { general = 5 }"));
        let got: Vec<(&str, &str, &str)> = changes
            .iter()
            .map(|c| (c.model.as_str(), c.key, c.new.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("gpt-5", "input_per_mtok", "1.25"),
                ("gpt-5", "cached_input_per_mtok", "0.125"),
                ("gpt-5", "output_per_mtok", "10.0"),
                ("gpt-5", "context_window", "272000"),
                ("gpt-5", "max_output_tokens", "128000"),
                ("claude-haiku-4-5", "batch_discount", "0.5"),
                // Known to the map only by its dated IDs: the newest one is
                // the ID to send, and its prices match the rules already.
                ("claude-sonnet-4-5", "api_model", "\"claude-sonnet-4-5-20250929\""),
            ]
        );
        assert_eq!(changes[0].old.as_deref(), Some("1.0"));
        assert_eq!(missing, ["in-house"]);
        // The result is valid rules, and applying again changes nothing.
        crate::rules::RuleTable::from_str("rules.toml", &text).expect("still valid");
        let (again, none, _) = apply(&text, "rules.toml", &map).expect("applies");
        assert!(none.is_empty(), "{none:?}");
        assert_eq!(again, text);
    }

    #[test]
    fn bad_inputs_say_where() {
        let e = apply("[[models]\nname = 1", "r.toml", "{}").expect_err("bad toml");
        assert!(e.starts_with("r.toml:1:"), "{e}");
        let e = apply(RULES, "r.toml", "{ nope").expect_err("bad json");
        assert!(e.contains("not JSON"), "{e}");
    }
}
