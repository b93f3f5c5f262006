//! The map in `src/lib.rs` is checked against the code: every top-level
//! module imports only modules below it in [`LAYERS`] (which lists them in
//! the map's order), there is no import circle, prost and tonic appear only
//! where the map says, and no source file outside tests grows past 600 lines.
//!
//! Imports are read from the text (`crate::name`), leaving out comments and
//! test code (`tests.rs`, `tests/` folders, and a file's trailing
//! `#[cfg(test)] mod tests`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules from the top of the map to its foundations. A module
/// may import only modules in later rows; modules in one row import none of
/// each other.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["app"],
    &["admin"],
    &["grpc"],
    &["sidecar"],
    &["route"],
    &["access"],
    &["outcome"],
    &["decide"],
    &["learn"],
    &["budget"],
    &["store"],
    &["estimate"],
    &["rules"],
    &["understand", "ledger"],
    &["error", "telemetry", "metrics", "listener", "terminal"],
    &["audit", "recent"],
    &["money", "clock", "hashing"],
];

/// Modules outside the map: test support and fuzz targets, which may use
/// anything and which nothing in the map uses.
const OUTSIDE: &[&str] = &["testing", "fuzz"];

/// Where each crate may be named, as `src/` paths (a folder covers its files).
const CONFINED: &[(&str, &[&str])] = &[
    // The wire's types, and the whatif snapshot's own stored message.
    ("prost", &["grpc/", "outcome/whatif/snapshot.rs", "fuzz.rs"]),
    // The gRPC edge, the server's wiring and its connection limits, the
    // CLI's client, the trace context read from gRPC metadata, and each
    // error's status code.
    (
        "tonic",
        &["grpc/", "app/", "listener/", "cli/", "telemetry/", "error.rs"],
    ),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let p = entry.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// A file's path under `src/`, with `/` separators.
fn rel(p: &Path) -> String {
    p.strip_prefix(src())
        .expect("under src")
        .to_string_lossy()
        .replace('\\', "/")
}

fn is_test_file(rel: &str) -> bool {
    rel.ends_with("/tests.rs") || rel.contains("/tests/")
}

/// The file's code: without its trailing test module and without comments.
fn code(p: &Path) -> String {
    let text = std::fs::read_to_string(p).expect("read");
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a file belongs to (`lib`, `main` for the roots).
fn module_of(rel: &str) -> &str {
    let first = rel.split('/').next().unwrap_or(rel);
    first.strip_suffix(".rs").unwrap_or(first)
}

/// The top-level modules each module names as `crate::…`.
fn imports() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for f in files {
        let r = rel(&f);
        let m = module_of(&r).to_string();
        if is_test_file(&r) || m == "lib" || m == "main" {
            continue;
        }
        let code = code(&f);
        let deps = out.entry(m.clone()).or_default();
        for (at, _) in code.match_indices("crate::") {
            let name: String = code[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != m {
                deps.entry(name).or_default().insert(r.clone());
            }
        }
    }
    out
}

#[test]
fn every_module_imports_only_modules_below_it_in_the_map() {
    let rank: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, row)| row.iter().map(move |m| (*m, i)))
        .collect();
    let all = imports();
    let mut wrong = Vec::new();
    for (m, deps) in &all {
        if OUTSIDE.contains(&m.as_str()) {
            continue;
        }
        let Some(&mine) = rank.get(m.as_str()) else {
            wrong.push(format!("`{m}` is not in the map (LAYERS and src/lib.rs)"));
            continue;
        };
        for (d, files) in deps {
            match rank.get(d.as_str()) {
                Some(&theirs) if theirs > mine => {}
                Some(_) => wrong.push(format!(
                    "`{m}` imports `{d}`, which is not below it, in {}",
                    files.iter().cloned().collect::<Vec<_>>().join(", ")
                )),
                None if OUTSIDE.contains(&d.as_str()) => wrong.push(format!("`{m}` imports `{d}` (test support)")),
                None => wrong.push(format!("`{m}` imports `{d}`, which the map does not list")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Every module in the map exists.
    for m in rank.keys() {
        assert!(all.contains_key(*m), "the map lists `{m}`, which src/ does not have");
    }
}

#[test]
fn the_map_in_lib_rs_names_every_module_in_layer_order() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
    let map_end = lib.find("\npub mod ").expect("modules");
    let map = &lib[..map_end];
    let mut last = 0;
    for m in LAYERS.iter().flat_map(|row| row.iter()) {
        let at = map
            .find(&format!("[`{m}`]"))
            .unwrap_or_else(|| panic!("the map in lib.rs does not name [`{m}`]"));
        assert!(at >= last, "the map in lib.rs names `{m}` out of layer order");
        last = at;
    }
}

#[test]
fn prost_and_tonic_appear_only_where_the_map_says() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut wrong = Vec::new();
    for f in files {
        let r = rel(&f);
        if is_test_file(&r) {
            continue;
        }
        let code = code(&f);
        for (krate, allowed) in CONFINED {
            let named = code.contains(&format!("{krate}::")) || code.contains(&format!("use {krate}"));
            if named
                && !allowed
                    .iter()
                    .any(|a| r == *a || (a.ends_with('/') && r.starts_with(a)))
            {
                wrong.push(format!("{r} names {krate}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_source_file_outside_tests_is_over_600_lines() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut long: Vec<String> = files
        .iter()
        .filter(|f| !is_test_file(&rel(f)))
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).expect("read");
            let code_lines = match text.find("#[cfg(test)]\nmod tests") {
                Some(at) => text[..at].lines().count(),
                None => text.lines().count(),
            };
            (code_lines > 600).then(|| format!("{}: {code_lines} lines", rel(f)))
        })
        .collect();
    long.sort();
    assert!(long.is_empty(), "split these:\n{}", long.join("\n"));
}
