//! `[dedup]` and `[decisions]`: the two key-value stores (edge dedup claims, remembered callback
//! decisions), their Redis URLs and key namespaces, and the MAC secrets loaded from the config or
//! a file. The decision store follows `[dedup]` unless told otherwise.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::problems::{Problems, Scope};
use super::raw::{DedupBackend, RawDecisions, RawDedup};
use crate::callback::{MIN_SECRET_BYTES, MacKey};
use crate::sink::spec::redact_url;

/// A key-value store: edge dedup (`[dedup]`) and remembered callback decisions (`[decisions]`).
#[derive(Clone)]
pub struct StoreConfig {
    pub backend: DedupBackend,
    /// May carry a password: never logged.
    pub redis_url: Option<String>,
    pub ttl: Duration,
    pub max_entries: u64,
    pub key_prefix: String,
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("backend", &self.backend)
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// `[dedup]`: claims on (source, event ID).
pub type DedupConfig = StoreConfig;

/// `[decisions]`: where callback decisions are remembered.
#[derive(Debug, Clone)]
pub struct DecisionsConfig {
    pub store: StoreConfig,
    /// How long an ask (and its nonce) is remembered.
    pub asked_ttl: Duration,
    /// The MAC key of decisions stored in Redis (required there when approvals exist).
    pub secret: Option<MacKey>,
}

/// Both stores, checked.
pub struct Stores {
    pub dedup: DedupConfig,
    pub decisions: DecisionsConfig,
}

/// How long dedup and the decision store remember, which bounds the default replay window.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    dedup: Duration,
    decisions: Duration,
}

impl Memory {
    /// What a source remembers its events by, and the setting that says how long: an
    /// approval's events are its decisions.
    pub fn of(self, approval: bool) -> (Duration, &'static str) {
        if approval {
            (self.decisions, "decisions.remember_secs")
        } else {
            (self.dedup, "dedup.ttl_secs")
        }
    }
}

impl Stores {
    pub fn memory(&self) -> Memory {
        Memory {
            dedup: self.dedup.ttl,
            decisions: self.decisions.store.ttl,
        }
    }
}

/// Reads and checks `[dedup]`, then `[decisions]` (which defaults to the dedup store).
pub fn load(
    problems: &mut Problems,
    dedup: Option<toml::Value>,
    decisions: Option<toml::Value>,
) -> Stores {
    let raw: RawDedup = problems.section_or_default("dedup", dedup);
    let mut at = problems.at("dedup");
    if raw.backend == DedupBackend::Redis {
        check_redis_url(&mut at, raw.redis_url.as_deref(), "backend = \"redis\"");
    }
    at.check_nonzero("ttl_secs", raw.ttl_secs);
    let dedup = StoreConfig {
        backend: raw.backend,
        redis_url: raw.redis_url,
        ttl: Duration::from_secs(raw.ttl_secs),
        max_entries: raw.max_entries,
        key_prefix: raw.key_prefix,
    };
    let decisions = load_decisions(problems, decisions, &dedup);
    Stores { dedup, decisions }
}

fn load_decisions(
    problems: &mut Problems,
    value: Option<toml::Value>,
    dedup: &DedupConfig,
) -> DecisionsConfig {
    let raw: RawDecisions = problems.section_or_default("decisions", value);
    let mut at = problems.at("decisions");
    let decisions = DecisionsConfig {
        store: StoreConfig {
            backend: raw.store.unwrap_or(dedup.backend),
            redis_url: raw.redis_url.or_else(|| dedup.redis_url.clone()),
            ttl: Duration::from_secs(raw.remember_secs),
            max_entries: raw.max_entries,
            key_prefix: raw.key_prefix,
        },
        asked_ttl: Duration::from_secs(raw.asked_secs),
        secret: load_secret(&mut at, raw.secret, raw.secret_file),
    };
    if decisions.store.backend == DedupBackend::Redis {
        check_redis_url(
            &mut at,
            decisions.store.redis_url.as_deref(),
            "store = \"redis\" (or set dedup.redis_url)",
        );
        let (a, b) = (&dedup.key_prefix, &decisions.store.key_prefix);
        if dedup.backend == DedupBackend::Redis
            && (a.starts_with(b.as_str()) || b.starts_with(a.as_str()))
        {
            at.error("key_prefix", format!(
                "{b:?} and dedup.key_prefix {a:?} overlap; give each its own namespace (neither a prefix of the other)"
            ));
        }
    }
    at.check_nonzero("remember_secs", raw.remember_secs);
    at.check_nonzero("asked_secs", raw.asked_secs);
    decisions
}

/// Decisions remembered in Redis carry a MAC, so with any approval source the store needs its
/// secret. Checked once every source is known.
pub fn check_decision_secret(
    problems: &mut Problems,
    decisions: &DecisionsConfig,
    approvals: bool,
) {
    if approvals && decisions.store.backend == DedupBackend::Redis && decisions.secret.is_none() {
        problems.error("decisions.secret: required when decisions are remembered in Redis (or secret_file): each stored decision carries a MAC, so write access to Redis alone cannot plant an `ok`");
    }
}

/// A Redis URL is present (`needed_for` says why) and has a Redis scheme.
fn check_redis_url(at: &mut Scope<'_>, url: Option<&str>, needed_for: &str) {
    match url {
        Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => {}
        Some(_) => at.error("redis_url", "must start with redis:// or rediss://"),
        None => at.error("redis_url", format!("required for {needed_for}")),
    }
}

/// A MAC secret given inline (`secret = "${VAR}"`) or as a file (`secret_file`); `None` when
/// neither is set or it is unusable (recorded). Its value never appears in an error.
pub fn load_secret(
    at: &mut Scope<'_>,
    inline: Option<String>,
    file: Option<PathBuf>,
) -> Option<MacKey> {
    let secret = match (inline, file) {
        (None, None) => return None,
        (Some(_), Some(_)) => {
            at.error_here("set secret or secret_file, not both");
            return None;
        }
        (Some(s), None) => s,
        (None, Some(f)) => match std::fs::read_to_string(&f) {
            Ok(s) => s.trim_end_matches(['\r', '\n']).to_owned(),
            Err(e) => {
                at.error("secret_file", format!("{}: {e}", f.display()));
                return None;
            }
        },
    };
    if secret.len() < MIN_SECRET_BYTES {
        at.error(
            "secret",
            format!(
                "at least {MIN_SECRET_BYTES} bytes (a random secret, e.g. `openssl rand -hex 32`)"
            ),
        );
        return None;
    }
    Some(MacKey::new(secret.as_bytes()))
}
