//! The hashers the hot path uses, in one place.
//!
//! std's default `HashMap` hasher (SipHash-1-3) costs about 200 instructions
//! a lookup on a short string key; Route makes several lookups by workflow,
//! task kind and metric labels. foldhash does the same job for a fraction,
//! and is seeded per map from a per-process random value, so keys still
//! cannot be aimed at one bucket.

use std::collections::HashMap;

/// For maps whose keys a caller may choose (message fingerprints, outcome
/// IDs): foldhash's higher-quality variant.
pub type Quality = foldhash::quality::RandomState;

/// A `HashMap` for keys from the rules or already hashed: foldhash's fast
/// variant. Build one with `FastMap::default()`.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A seed for callers that hash untrusted strings into keys themselves
/// (xxh3) before storing them in a `Recent`: from std's `RandomState`,
/// whose keys come from the OS once per process and differ on every call,
/// so no two maps share a seed and callers cannot aim keys at each other.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u64(0x5157_4954_4348_5944);
    h.finish()
}

/// The hex SHA-256 of `bytes`: API keys, rules files, model files.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}
