//! The replay data: rows of a replay file, checked against the rules, with
//! each model's answer priced.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;

use crate::estimate::tokens;
use crate::rules::{RuleTable, Workflow};

/// One row of a replay file (`../shared/bench-data/replay/SOURCE.md`).
#[derive(Debug, Deserialize)]
pub(super) struct Row {
    pub(super) id: String,
    #[serde(default)]
    pub(super) workflow: Option<String>,
    #[serde(default)]
    pub(super) task_kind: Option<String>,
    pub(super) prompt: String,
    pub(super) models: BTreeMap<String, RowModel>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RowModel {
    pub(super) success: bool,
    pub(super) score: Option<f64>,
    pub(super) response: Option<String>,
}

/// A row ready to replay: its outcomes and costs by model index.
#[derive(Clone)]
pub(super) struct Case {
    /// The row's place in the file.
    pub(super) index: usize,
    pub(super) id: String,
    pub(super) task_kind: String,
    pub(super) prompt: String,
    /// Per model of the table: (accepted, quality 0..1, cost in nano-USD),
    /// `None` where the row has no answer from that model.
    pub(super) outcome: Vec<Option<(bool, f64, i64)>>,
}

pub(super) fn outcome_of(table: &RuleTable, c: &Case, m: usize) -> Result<(bool, f64, i64), String> {
    c.outcome[m].ok_or_else(|| {
        format!(
            "row `{}` has no answer from {}, which the rules chose; limit the workflow's allowed_models to the data's models",
            c.id, table.models[m].name
        )
    })
}

pub(super) fn read_rows(path: &Path) -> Result<Vec<(usize, Row)>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read --data {}: {e}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("{}:{}: cannot read: {e}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(&line).map_err(|e| {
            format!(
                "{}:{}:{}: not a replay row ({e}); each line needs id, prompt and models.<name>.success",
                path.display(),
                i + 1,
                e.column()
            )
        })?;
        rows.push((i + 1, row));
    }
    Ok(rows)
}

/// Checks the rows against the rules and prices each model's answer.
pub(super) fn cases(
    table: &RuleTable,
    workflow: &Workflow,
    data: &Path,
    rows: Vec<(usize, Row)>,
) -> Result<Vec<Case>, String> {
    let mut out = Vec::with_capacity(rows.len());
    for (line, row) in rows {
        let at = format!("{}:{line}", data.display());
        if let Some(unknown) = row.models.keys().find(|m| table.models.iter().all(|x| &x.name != *m)) {
            return Err(format!(
                "{at}: model `{unknown}` is not in the rules' [[models]]; add it with its prices, or drop it from the data"
            ));
        }
        let task_kind = row.task_kind.clone().unwrap_or_default();
        // Input tokens as the estimate counts them: the prompt as one user message.
        let mut outcome = vec![None; table.models.len()];
        for (i, model) in table.models.iter().enumerate() {
            let Some(r) = row.models.get(&model.name) else { continue };
            let input = model.billed_tokens(
                tokens::count(model.encoding, &row.prompt) + tokens::PER_MESSAGE_OVERHEAD + tokens::REPLY_PRIMING,
            );
            let output = match &r.response {
                Some(text) => model.billed_tokens(tokens::count(model.encoding, text)),
                None => crate::estimate::predicted_output_tokens(table, workflow, &task_kind, 0),
            };
            let quality = r.score.unwrap_or(if r.success { 1.0 } else { 0.0 });
            if !(0.0..=1.0).contains(&quality) {
                return Err(format!("{at}: models.{}.score is {quality}; give 0 to 1", model.name));
            }
            outcome[i] = Some((r.success, quality, model.cost(input, 0, output, false)));
        }
        out.push(Case {
            index: out.len(),
            id: row.id,
            task_kind,
            prompt: row.prompt,
            outcome,
        });
    }
    Ok(out)
}

/// The strong model (highest tier among the workflow's models the data
/// covers; the dearer on a tie) and the weak one (the cheapest).
pub(super) fn poles(table: &RuleTable, workflow: &Workflow, cases: &[Case]) -> Result<(usize, usize), String> {
    let covered: Vec<usize> = workflow
        .allowed
        .iter()
        .copied()
        .filter(|&m| cases.iter().all(|c| c.outcome[m].is_some()))
        .collect();
    if covered.len() < 2 {
        return Err(format!(
            "workflow `{}` needs at least two of its models answered on every row; the data covers {}",
            workflow.name,
            covered.len()
        ));
    }
    let price = |m: usize| {
        let x = &table.models[m];
        x.input_nanos_per_mtok + x.output_nanos_per_mtok
    };
    let class = table.class_of(&workflow.default_task_kind);
    let tier = |m: usize| table.models[m].tiers[class];
    let strong = *covered
        .iter()
        .max_by_key(|&&m| (tier(m), price(m)))
        .unwrap_or(&covered[0]);
    let weak = *covered
        .iter()
        .min_by_key(|&&m| (price(m), tier(m)))
        .unwrap_or(&covered[0]);
    Ok((strong, weak))
}
