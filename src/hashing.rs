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

/// FNV-1a's starting state: with [`fnv1a_step`], a word is hashed one
/// multiply a byte as it is read (the learner's and the understanding
/// model's grams).
pub const FNV1A_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// One byte into an FNV-1a state.
#[inline(always)]
pub fn fnv1a_step(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
}

/// MurmurHash3's 64-bit finaliser: spreads FNV's weak low bits before a
/// state is cut down to a bucket.
#[inline(always)]
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The hex SHA-256 of `bytes`: API keys, rules files, model files.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}
