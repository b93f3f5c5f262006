//! Turns byte offsets and key paths into `file:line:column` for people.
//!
//! serde tells us *that* a value is wrong; toml's spanned tree tells us *where*.
//! Every diagnostic Switchyard prints for a rules file goes through here.

use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One problem in a rules file, located for the person who must fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file, as given on the command line or found in the rules folder.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The dotted key path, e.g. `models[2].tiers.code`.
    pub key: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: `{}`: {}",
            self.file.display(),
            self.line,
            self.column,
            self.key,
            self.message
        )
    }
}

/// One step in a key path.
#[derive(Debug, Clone, Copy)]
pub enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// 1-based (line, column) of a byte offset in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

/// The text of one rules file and its spanned parse tree.
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    /// 1-based (line, column) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        line_col(&self.text, offset)
    }

    /// Locates `path` in the file: the value's span if it exists, otherwise the
    /// nearest enclosing table (where the missing key should be added).
    pub fn locate(&self, path: &[Seg<'_>], message: impl Into<String>) -> Diagnostic {
        let offset = match DeTable::parse(&self.text) {
            Ok(root) => span_of(&root, path),
            Err(_) => 0,
        };
        let (line, column) = self.line_col(offset);
        Diagnostic {
            file: self.path.clone(),
            line,
            column,
            key: render_path(path),
            message: message.into(),
        }
    }

    /// A diagnostic for a serde/parse error from the toml crate.
    pub fn toml_error(&self, err: &toml::de::Error) -> Diagnostic {
        let offset = err.span().map_or(0, |s| s.start);
        let (line, column) = self.line_col(offset);
        let key = DeTable::parse(&self.text)
            .ok()
            .map(|root| path_at(&root, offset))
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| "(syntax)".to_string());
        Diagnostic {
            file: self.path.clone(),
            line,
            column,
            key,
            message: err.message().trim().to_string(),
        }
    }
}

/// Renders `[Key("models"), Index(2), Key("tiers")]` as `models[2].tiers`.
pub fn render_path(path: &[Seg<'_>]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

fn span_of(root: &Spanned<DeTable<'_>>, path: &[Seg<'_>]) -> usize {
    let mut best = root.span().start;
    let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
    let mut value: Option<&Spanned<DeValue<'_>>> = None;
    for seg in path {
        let next = match (seg, table, value) {
            (Seg::Key(k), Some(t), _) => t.get(*k).map(|v| (v, key_span(t, k))),
            (Seg::Index(i), _, Some(v)) => v.get_ref().get(*i).map(|v| (v, None)),
            _ => None,
        };
        let Some((v, kspan)) = next else { break };
        // Point at the key for scalars (where a person reads the name), at the
        // value otherwise.
        best = kspan.unwrap_or(v.span().start);
        value = Some(v);
        table = v.get_ref().as_table();
    }
    best
}

fn key_span(table: &DeTable<'_>, key: &str) -> Option<usize> {
    table
        .keys()
        .find(|k| k.get_ref().as_ref() == key)
        .map(|k| k.span().start)
        .filter(|&s| s > 0 || key.is_empty())
}

/// The dotted path of the innermost key whose key or value contains `offset`.
fn path_at(root: &Spanned<DeTable<'_>>, offset: usize) -> String {
    let mut out = String::new();
    walk_table(root.get_ref(), offset, &mut out);
    out
}

fn walk_table(table: &DeTable<'_>, offset: usize, out: &mut String) {
    for (k, v) in table.iter() {
        if k.span().contains(&offset) || v.span().contains(&offset) || v.span().start == offset {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(k.get_ref());
            walk_value(v, offset, out);
            return;
        }
    }
    // Inside an array-of-tables element the value span can miss the offset of
    // an unknown key; fall back to searching every child.
    for (k, v) in table.iter() {
        let mut sub = String::new();
        walk_value(v, offset, &mut sub);
        if !sub.is_empty() {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(k.get_ref());
            out.push_str(&sub);
            return;
        }
    }
}

fn walk_value(v: &Spanned<DeValue<'_>>, offset: usize, out: &mut String) {
    match v.get_ref() {
        DeValue::Table(t) => {
            let mut sub = String::new();
            walk_table(t, offset, &mut sub);
            if !sub.is_empty() {
                out.push('.');
                out.push_str(&sub);
            }
        }
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let mut sub = String::new();
                walk_value(item, offset, &mut sub);
                if item.span().contains(&offset) || !sub.is_empty() {
                    out.push_str(&format!("[{i}]"));
                    out.push_str(&sub);
                    return;
                }
            }
        }
        _ => {}
    }
}

/// Reads a file for the rules loader, naming the path on failure.
pub fn read_source(path: &Path) -> Result<Source, Diagnostic> {
    let at = |line: usize, column: usize, message: String| Diagnostic {
        file: path.to_path_buf(),
        line,
        column,
        key: "(file)".to_string(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| at(1, 1, format!("cannot read the rules file: {e}")))?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Source {
            path: path.to_path_buf(),
            text,
        }),
        Err(e) => {
            let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            // The valid prefix is text: the position of the bad byte in it.
            let prefix = std::str::from_utf8(good).unwrap_or_default();
            let (line, column) = line_col(prefix, prefix.len());
            Err(at(
                line,
                column,
                format!(
                    "the file is not UTF-8 text (byte {} is not valid UTF-8); save it as UTF-8",
                    good.len()
                ),
            ))
        }
    }
}
