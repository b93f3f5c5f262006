//! Entry points for the fuzz targets in `fuzz/` (cargo fuzz), kept in the
//! library so that `cargo test` also runs them over the seed corpus.
//!
//! Each must return, whatever the bytes: an error is fine, a panic, a hang
//! or an abort is a bug.

use std::sync::OnceLock;

use prost::Message;

use crate::grpc::pb;
use crate::route::plan;
use crate::rules::RuleTable;

/// A rules file as an operator might write it: parsed and validated.
pub fn rules(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = RuleTable::from_str("fuzz.toml", text) {
        // Every diagnostic must render (file:line:col) without panicking.
        let _ = e.to_string();
    }
}

/// A Route request off the wire: decoded, converted to the domain types and,
/// if valid, estimated and decided against the shipped rules.
pub fn route_request(data: &[u8]) {
    static TABLE: OnceLock<Option<RuleTable>> = OnceLock::new();
    let Ok(req) = pb::RouteRequest::decode(data) else {
        return;
    };
    let Ok(call) = crate::route::RouteCall::try_from(req) else {
        return;
    };
    let table =
        TABLE.get_or_init(|| RuleTable::from_str("default.toml", include_str!("../routing-rules/default.toml")).ok());
    if let Some(t) = table {
        if let Ok(w) = crate::route::find_workflow(t, &call.workflow) {
            let _ = plan(t, w, &call, Default::default(), Default::default(), None, None);
        }
    }
}

/// Tokens that rules files and protobuf are made of, for the mutator.
const DICTIONARY: &[&[u8]] = &[
    b"[[models]]\n",
    b"[[workflows]]\n",
    b"[[rules]]\n",
    b"[[task_kinds]]\n",
    b"[settings]\n",
    b"[workflows.budget]\n",
    b"[workflows.learning]\n",
    b"name = \"",
    b"tiers = { general = ",
    b" = ",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\n",
    b"1e309",
    b"-1",
    b"nan",
    b"18446744073709551616",
    b"\xff\xff\xff\xff\x0f",
    b"\x1a\x00",
    b"\x22\x05",
];

/// A small mutation fuzzer over `seeds`, for `duration`: bit flips, byte
/// changes, inserted and deleted ranges, splices and dictionary tokens. It
/// runs the targets in CI on the stable toolchain without libFuzzer's
/// coverage guidance; `cargo fuzz` (see `fuzz/`) is the thorough run.
/// Returns how many inputs it ran. A panic is reported with the input saved
/// to `fuzz-crash-<name>.bin` in the temp folder.
pub fn smoke(name: &str, target: fn(&[u8]), seeds: &[Vec<u8>], duration: std::time::Duration, seed: u64) -> u64 {
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let started = std::time::Instant::now();
    let mut runs = 0u64;
    while started.elapsed() < duration {
        let base = &seeds[(next() % seeds.len() as u64) as usize];
        let mut input = base.clone();
        for _ in 0..1 + next() % 4 {
            let at = if input.is_empty() {
                0
            } else {
                (next() % input.len() as u64) as usize
            };
            match next() % 7 {
                0 if !input.is_empty() => input[at] ^= 1 << (next() % 8),
                1 if !input.is_empty() => input[at] = next() as u8,
                2 => {
                    let n = (next() % 8) as usize;
                    let bytes: Vec<u8> = (0..n).map(|_| next() as u8).collect();
                    input.splice(at..at, bytes);
                }
                3 if !input.is_empty() => {
                    let end = (at + 1 + (next() % 16) as usize).min(input.len());
                    input.drain(at..end);
                }
                4 => {
                    let other = &seeds[(next() % seeds.len() as u64) as usize];
                    if !other.is_empty() {
                        let from = (next() % other.len() as u64) as usize;
                        let end = (from + 1 + (next() % 64) as usize).min(other.len());
                        input.splice(at..at, other[from..end].iter().copied());
                    }
                }
                5 if !input.is_empty() => {
                    let end = (at + 1 + (next() % 32) as usize).min(input.len());
                    let copy = input[at..end].to_vec();
                    input.splice(at..at, copy);
                }
                _ => {
                    let token = DICTIONARY[(next() % DICTIONARY.len() as u64) as usize];
                    input.splice(at..at, token.iter().copied());
                }
            }
        }
        if std::panic::catch_unwind(|| target(&input)).is_err() {
            let path = std::env::temp_dir().join(format!("fuzz-crash-{name}.bin"));
            let _ = std::fs::write(&path, &input);
            panic!(
                "fuzz target `{name}` panicked; the input is saved in {} (add it to fuzz/corpus/{name}/ once fixed)",
                path.display()
            );
        }
        runs += 1;
    }
    runs
}

#[cfg(test)]
mod tests {
    /// The seed corpus (and any crash inputs saved beside it) runs on every
    /// `cargo test`, so a fixed crash stays fixed.
    #[test]
    fn the_fuzz_corpus_runs_clean() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let mut n = 0;
        for (target, f) in [
            ("rules", super::rules as fn(&[u8])),
            ("route_request", super::route_request),
        ] {
            let dir = root.join(target);
            for e in std::fs::read_dir(&dir).expect("corpus folder").flatten() {
                f(&std::fs::read(e.path()).expect("corpus file"));
                n += 1;
            }
        }
        assert!(n >= 4, "the corpus has seeds ({n})");
    }

    fn seeds(target: &str) -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        std::fs::read_dir(dir)
            .expect("corpus folder")
            .flatten()
            .map(|e| std::fs::read(e.path()).expect("corpus file"))
            .collect()
    }

    /// `SWITCHYARD_FUZZ_SECONDS` (default 2; CI runs 60) of mutation per target.
    fn budget() -> std::time::Duration {
        let s = std::env::var("SWITCHYARD_FUZZ_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2u64);
        std::time::Duration::from_secs(s)
    }

    #[test]
    fn fuzz_smoke_rules() {
        let runs = super::smoke("rules", super::rules, &seeds("rules"), budget(), 0x5eed_0001);
        eprintln!("fuzz smoke: rules ran {runs} inputs");
        assert!(runs > 0);
    }

    #[test]
    fn fuzz_smoke_route_request() {
        let runs = super::smoke(
            "route_request",
            super::route_request,
            &seeds("route_request"),
            budget(),
            0x5eed_0002,
        );
        eprintln!("fuzz smoke: route_request ran {runs} inputs");
        assert!(runs > 0);
    }
}
