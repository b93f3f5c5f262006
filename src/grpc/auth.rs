//! Who is calling, and what they may do.
//!
//! - With an API keys file (`--api-keys`), callers send
//!   `authorization: Bearer <key>`. The file holds only each key's SHA-256;
//!   a presented key is hashed and compared with every entry in constant
//!   time. The file is re-read when it changes; a broken file keeps the last
//!   good keys.
//! - Without one, only loopback callers are accepted, as the identity
//!   `local` with both roles: the pod-local default.
//! - Roles: `caller` (Route, ReportUsage, RecordOutcome, RecordFeedback,
//!   GetBudget, for the workflows that allow it) and `admin` (escalations,
//!   reports). gRPC health and the admin port stay open.
//! - Limits per identity: a rate (governor's GCRA) and calls in flight.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use crate::access::{Identity, LOCAL};
use crate::error::Error;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeysFile {
    #[serde(default)]
    keys: Vec<RawKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    identity: String,
    sha256: String,
    roles: Vec<String>,
}

#[derive(Debug, Clone)]
struct Key {
    sha256: [u8; 32],
    identity: Identity,
}

/// The parsed keys file.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    keys: Vec<Key>,
    /// SHA-256 of the file's bytes, for the audit log.
    pub file_sha256: String,
}

pub use crate::hashing::sha256_hex;

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Equality that takes the same time wherever the first difference is.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    subtle::ConstantTimeEq::ct_eq(&a[..], &b[..]).into()
}

impl Keys {
    /// Parses a keys file; errors name `file:line:col` and what to fix.
    pub fn parse(name: &str, text: &str) -> Result<Keys, String> {
        let raw: RawKeysFile = toml::from_str(text).map_err(|e| {
            let (line, col) = e
                .span()
                .map(|s| crate::rules::line_col(text, s.start))
                .unwrap_or((1, 1));
            format!("{name}:{line}:{col}: {}", e.message())
        })?;
        let mut keys = Vec::with_capacity(raw.keys.len());
        for (i, k) in raw.keys.iter().enumerate() {
            let at = format!("{name}: keys[{i}] (`{}`)", k.identity);
            if k.identity.is_empty() || k.identity.len() > 128 || k.identity.chars().any(char::is_control) {
                return Err(format!("{at}: identity must be 1 to 128 printable characters"));
            }
            let sha256 = unhex32(&k.sha256.to_ascii_lowercase()).ok_or_else(|| {
                format!("{at}: sha256 must be the 64 hex digits of the key's SHA-256 (printf %s KEY | sha256sum)")
            })?;
            let mut identity = Identity {
                name: Arc::from(k.identity.as_str()),
                caller: false,
                admin: false,
            };
            for r in &k.roles {
                match r.as_str() {
                    "caller" => identity.caller = true,
                    "admin" => identity.admin = true,
                    other => return Err(format!("{at}: unknown role `{other}`; use \"caller\" or \"admin\"")),
                }
            }
            if !(identity.caller || identity.admin) {
                return Err(format!("{at}: give at least one role, \"caller\" or \"admin\""));
            }
            if keys.iter().any(|x: &Key| ct_eq(&x.sha256, &sha256)) {
                return Err(format!("{at}: the same key is listed twice"));
            }
            keys.push(Key { sha256, identity });
        }
        Ok(Keys {
            keys,
            file_sha256: sha256_hex(text.as_bytes()),
        })
    }

    pub fn load(path: &Path) -> Result<Keys, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Keys::parse(&path.display().to_string(), &text)
    }

    /// The identity a presented key belongs to. Every entry is compared, in
    /// constant time, whether or not an earlier one matched.
    pub fn find(&self, presented: &str) -> Option<&Identity> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for k in &self.keys {
            if ct_eq(&k.sha256, &digest) {
                found = Some(&k.identity);
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Per-identity limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Calls a second per identity (0: no limit).
    pub rate_per_s: u32,
    /// Calls above the rate allowed in a burst.
    pub burst: u32,
    /// Calls in flight per identity (0: no limit).
    pub concurrency: u32,
}

type RateLimiter = governor::DefaultKeyedRateLimiter<Arc<str>>;

/// Calls with bad credentials a peer address may make a second, and in a
/// burst, before the rest are refused as limited without a word more.
pub const REFUSED_PER_PEER_RPS: u32 = 20;
pub const REFUSED_PER_PEER_BURST: u32 = 100;

/// Identity and limits for the gRPC service.
pub struct Auth {
    path: Option<PathBuf>,
    keys: Option<ArcSwap<Keys>>,
    rate: Option<RateLimiter>,
    /// Refusals before authentication, per peer address.
    refused: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    limits: Limits,
    in_flight: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Semaphore>>>,
}

/// Held while a call is in flight; releases its slot when dropped.
pub struct Admitted {
    pub identity: Identity,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Auth {
    /// With `path`, the keys file must load; without, loopback only.
    pub fn new(path: Option<&Path>, limits: Limits) -> Result<Auth, String> {
        let keys = match path {
            Some(p) => Some(ArcSwap::from_pointee(Keys::load(p)?)),
            None => None,
        };
        let rate = NonZeroU32::new(limits.rate_per_s).map(|r| {
            let burst = NonZeroU32::new(limits.burst.max(1)).unwrap_or(NonZeroU32::MIN);
            governor::RateLimiter::keyed(governor::Quota::per_second(r).allow_burst(burst))
        });
        Ok(Auth {
            path: path.map(Path::to_path_buf),
            keys,
            rate,
            refused: refused_limiter(),
            limits,
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// Open to loopback callers as `local` (tests, benchmarks, `explain`).
    pub fn local() -> Auth {
        Auth {
            path: None,
            keys: None,
            rate: None,
            refused: refused_limiter(),
            limits: Limits {
                rate_per_s: 0,
                burst: 0,
                concurrency: 0,
            },
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets the rate state of identities and peers not seen lately, so
    /// that many addresses cost no memory (call it about once a second).
    pub fn forget_idle(&self) {
        self.refused.retain_recent();
        if let Some(r) = &self.rate {
            r.retain_recent();
        }
    }

    pub fn keys_path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The keys in use (`None` without a keys file).
    pub fn keys(&self) -> Option<Arc<Keys>> {
        self.keys.as_ref().map(ArcSwap::load_full)
    }

    /// Re-reads the keys file if its bytes changed. `Some(Ok(sha))` when new
    /// keys were swapped in, `Some(Err)` when the file is broken (the last good
    /// keys stay), `None` when nothing changed.
    pub fn reload_if_changed(&self) -> Option<Result<String, String>> {
        let (path, keys) = (self.path.as_ref()?, self.keys.as_ref()?);
        let text = std::fs::read(path).ok()?;
        let sha = sha256_hex(&text);
        if sha == keys.load().file_sha256 {
            return None;
        }
        let parsed = std::str::from_utf8(&text)
            .map_err(|_| format!("{}: not UTF-8 text", path.display()))
            .and_then(|t| Keys::parse(&path.display().to_string(), t));
        Some(match parsed {
            Ok(k) => {
                keys.store(Arc::new(k));
                Ok(sha)
            }
            Err(e) => Err(e),
        })
    }

    /// Establishes who is calling, from the metadata and the peer address.
    pub fn identify(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        peer: Option<SocketAddr>,
    ) -> Result<Identity, Error> {
        let Some(keys) = &self.keys else {
            return match peer {
                // `[::]` listeners see IPv4 peers as IPv4-mapped addresses
                // (::ffff:127.0.0.1): the canonical form is what is loopback.
                Some(a) if !a.ip().to_canonical().is_loopback() => Err(Error::Unauthenticated(format!(
                    "no API keys are configured, so only loopback callers are accepted (this call came from {}); start serve with --api-keys",
                    a.ip()
                ))),
                _ => Ok(Identity::local()),
            };
        };
        // A key made once: looking one up by `&str` parses the name every call.
        static AUTHORIZATION: std::sync::LazyLock<tonic::metadata::MetadataKey<tonic::metadata::Ascii>> =
            std::sync::LazyLock::new(|| tonic::metadata::MetadataKey::from_static("authorization"));
        let header = metadata
            .get(&*AUTHORIZATION)
            .ok_or_else(|| Error::Unauthenticated("send `authorization: Bearer <key>`".into()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Unauthenticated("the authorization header must be `Bearer <key>`".into()))?;
        keys.load().find(token).cloned().ok_or_else(|| {
            Error::Unauthenticated("unknown API key; ask an admin to add its SHA-256 to the keys file".into())
        })
    }

    /// Identifies the caller and applies its limits; the permit holds its
    /// slot until the call ends.
    pub fn admit(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        peer: Option<SocketAddr>,
    ) -> Result<Admitted, (Option<Identity>, Error)> {
        let identity = match self.identify(metadata, peer) {
            Ok(i) => i,
            Err(refusal) => {
                let ip = peer.map(|p| p.ip().to_canonical());
                let over = ip.is_some_and(|ip| self.refused.check_key(&ip).is_err());
                return Err((
                    None,
                    if over {
                        Error::Limited(format!(
                            "{} has sent too many calls with bad credentials (over {REFUSED_PER_PEER_RPS} a second); \
                             wait, then send a valid `authorization: Bearer <key>`",
                            ip.map_or_else(|| "this peer".to_string(), |ip| ip.to_string())
                        ))
                    } else {
                        refusal
                    },
                ));
            }
        };
        if let Some(rate) = &self.rate {
            if rate.check_key(&identity.name).is_err() {
                let why = format!(
                    "`{}` is over its rate of {} calls a second (burst {}); slow down or raise --caller-rps",
                    identity.name, self.limits.rate_per_s, self.limits.burst
                );
                return Err((Some(identity), Error::Limited(why)));
            }
        }
        let slot = if self.limits.concurrency > 0 {
            let sem = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(identity.name.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.limits.concurrency as usize)))
                .clone();
            match sem.try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    let why = format!(
                        "`{}` already has {} calls in flight; wait for some to finish or raise --caller-concurrency",
                        identity.name, self.limits.concurrency
                    );
                    return Err((Some(identity), Error::Limited(why)));
                }
            }
        } else {
            None
        };
        Ok(Admitted { identity, _slot: slot })
    }
}

fn refused_limiter() -> governor::DefaultKeyedRateLimiter<std::net::IpAddr> {
    let rate = NonZeroU32::new(REFUSED_PER_PEER_RPS).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(REFUSED_PER_PEER_BURST).unwrap_or(NonZeroU32::MIN);
    governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> String {
        format!(
            "[[keys]]\nidentity = \"agent-a\"\nsha256 = \"{}\"\nroles = [\"caller\"]\n\n[[keys]]\nidentity = \"ops\"\nsha256 = \"{}\"\nroles = [\"admin\"]\n",
            sha256_hex(b"key-a"),
            sha256_hex(b"key-ops").to_uppercase()
        )
    }

    #[test]
    fn keys_are_found_by_their_hash_only() {
        let k = Keys::parse("keys.toml", &file()).expect("valid");
        assert_eq!(k.len(), 2);
        let a = k.find("key-a").expect("known");
        assert_eq!((&*a.name, a.caller, a.admin), ("agent-a", true, false));
        assert_eq!(
            k.find("key-ops").map(|i| &*i.name),
            Some("ops"),
            "hex case does not matter"
        );
        assert_eq!(k.find("key-b"), None);
        assert_eq!(k.find(""), None);
        assert!(!file().contains("key-a\""), "the file never holds a key");
    }

    #[test]
    fn constant_time_equality_is_equality() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(ct_eq(&a, &b));
        for i in [0, 15, 31] {
            b = a;
            b[i] ^= 1;
            assert!(!ct_eq(&a, &b), "differs at {i}");
        }
    }

    #[test]
    fn bad_files_say_where_and_what_to_fix() {
        let e = Keys::parse(
            "k.toml",
            "[[keys]]\nidentity = \"x\"\nsha256 = \"abc\"\nroles = [\"caller\"]\n",
        )
        .expect_err("short hash");
        assert!(e.contains("64 hex digits"), "{e}");
        let e = Keys::parse("k.toml", "[[keys]]\nidentity = \"x\"\nsha = 1\n").expect_err("unknown key");
        assert!(e.starts_with("k.toml:3:1:"), "{e}");
        let text = file().replace("[\"admin\"]", "[\"root\"]");
        assert!(Keys::parse("k.toml", &text)
            .expect_err("role")
            .contains("unknown role `root`"));
        let twice = format!(
            "{}{}",
            file(),
            file().replace("agent-a", "agent-c").replace("ops", "ops2")
        );
        assert!(Keys::parse("k.toml", &twice).expect_err("dup").contains("listed twice"));
    }

    #[test]
    fn without_keys_only_loopback_is_accepted_as_local() {
        let auth = Auth::local();
        let md = tonic::metadata::MetadataMap::new();
        let lo: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let far: SocketAddr = "10.1.2.3:5000".parse().expect("addr");
        assert_eq!(auth.identify(&md, Some(lo)).map(|i| i.name), Ok(Arc::from(LOCAL)));
        // What a `[::]` listener sees for 127.0.0.1 and ::1.
        for peer in ["[::ffff:127.0.0.1]:5000", "[::1]:5000"] {
            let a: SocketAddr = peer.parse().expect("addr");
            assert_eq!(
                auth.identify(&md, Some(a)).map(|i| i.name),
                Ok(Arc::from(LOCAL)),
                "{peer}"
            );
        }
        let mapped_far: SocketAddr = "[::ffff:10.1.2.3]:5000".parse().expect("addr");
        assert!(auth.identify(&md, Some(mapped_far)).is_err());
        assert!(matches!(auth.identify(&md, Some(far)), Err(Error::Unauthenticated(_))));
    }
}
