//! Edge deduplication by (source, event ID): an atomic claim before publishing, so a provider's
//! retry of an event already made durable gets the same 200 without a second publish.
//!
//! A claim is `pending` while its request publishes and `done` once the event is durable. A
//! retry that finds `pending` gets 503 (the first attempt may still fail, and a 200 then would
//! lose the event); one that finds `done` gets 200. A failed publish releases the claim so the
//! next retry can succeed. `pending` claims expire after [`pending_ttl`], so a replica that died
//! mid-request cannot block an event for long ([`pending_ttl`]).
//!
//! Backends: in-process memory (moka, bounded, TTL) for one replica; Redis (`SET NX PX`) shared by
//! all replicas. If Redis is unreachable the request proceeds without dedup (and the error is
//! counted): a possible duplicate is better than refusing events. Consumers still deduplicate by
//! key; at-least-once is the contract.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::ops::compute::Op;
use redis::aio::ConnectionManager;
use tokio::sync::RwLock;

use crate::metrics;
use crate::normalize::EventId;

/// How long a claim may stay pending: well past the longest ack deadline plus a spool write,
/// short enough that an event claimed by a replica that died is retried soon.
pub fn pending_ttl(longest_ack_deadline: Duration) -> Duration {
    longest_ack_deadline * 2 + Duration::from_secs(5)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending(u64),
    Done,
}

/// The outcome of a claim.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// First time seen: publish, then [`Dedup::complete`] or [`Dedup::release`].
    New(Token),
    /// Already durable: answer as before, publish nothing.
    Done,
    /// Another request for the same event is publishing right now.
    InFlight,
}

/// Proof of a claim, needed to complete or release it.
#[derive(Debug, PartialEq, Eq)]
pub struct Token {
    key: String,
    value: u64,
    /// Claims made while the store was unreachable are not recorded anywhere.
    recorded: bool,
}

/// The claim store; see the module docs.
pub struct Dedup(Backend);

enum Backend {
    /// Keyed by a 128-bit digest of (source, event ID): a fixed 16 bytes per remembered event
    /// instead of the strings.
    Memory(moka::sync::Cache<u128, State>),
    Redis(RedisDedup),
}

struct RedisDedup {
    conn: Arc<RwLock<Option<ConnectionManager>>>,
    ttl: Duration,
    pending_ttl: Duration,
    prefix: String,
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

fn token_value() -> u64 {
    // Unique per process; with Redis the key also carries the instance id.
    NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
}

impl Dedup {
    pub fn memory(ttl: Duration, max_entries: u64) -> Self {
        Self(Backend::Memory(
            moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .time_to_live(ttl)
                .build(),
        ))
    }

    /// Connects in the background: hookbridge starts (without dedup) when Redis is down.
    ///
    /// # Errors
    /// When the URL is not a Redis URL.
    pub fn redis(
        url: &str,
        ttl: Duration,
        pending_ttl: Duration,
        prefix: String,
    ) -> anyhow::Result<Self> {
        let conn = connect_redis(url, "dedup")?;
        Ok(Self(Backend::Redis(RedisDedup {
            conn,
            ttl,
            pending_ttl,
            prefix,
        })))
    }

    pub fn backend(&self) -> &'static str {
        match &self.0 {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    pub async fn claim(&self, source: &str, id: &EventId) -> Claim {
        let value = token_value();
        match &self.0 {
            Backend::Memory(cache) => {
                let key = format!("{source}\u{0}{id}");
                let mut outcome = Claim::InFlight;
                cache.entry(digest(&key)).and_compute_with(|existing| {
                    match existing.map(|e| e.into_value()) {
                        None => {
                            outcome = Claim::New(Token {
                                key,
                                value,
                                recorded: true,
                            });
                            Op::Put(State::Pending(value))
                        }
                        Some(State::Done) => {
                            outcome = Claim::Done;
                            Op::Nop
                        }
                        Some(State::Pending(_)) => Op::Nop,
                    }
                });
                outcome
            }
            Backend::Redis(r) => r.claim(source, id, value).await,
        }
    }

    /// The event is durable: later copies are duplicates.
    pub async fn complete(&self, token: Token) {
        if !token.recorded {
            return;
        }
        match &self.0 {
            Backend::Memory(cache) => cache.insert(digest(&token.key), State::Done),
            Backend::Redis(r) => r.complete(&token).await,
        }
    }

    /// Publishing failed: forget the claim so the provider's retry can succeed.
    pub async fn release(&self, token: Token) {
        if !token.recorded {
            return;
        }
        match &self.0 {
            Backend::Memory(cache) => {
                cache
                    .entry(digest(&token.key))
                    .and_compute_with(|existing| match existing.map(|e| e.into_value()) {
                        Some(State::Pending(v)) if v == token.value => Op::Remove,
                        _ => Op::Nop,
                    });
            }
            Backend::Redis(r) => r.release(&token).await,
        }
    }
}

/// A Redis connection made in the background (retrying with backoff), so hookbridge starts
/// while Redis is down; the slot stays `None` until connected. `what` names the user in logs.
///
/// # Errors
/// When the URL is not a Redis URL.
pub(crate) fn connect_redis(
    url: &str,
    what: &'static str,
) -> anyhow::Result<Arc<RwLock<Option<ConnectionManager>>>> {
    let client = redis::Client::open(url)?;
    let conn: Arc<RwLock<Option<ConnectionManager>>> = Arc::default();
    let slot = Arc::clone(&conn);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            let cfg = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(1)));
            match client.get_connection_manager_with_config(cfg).await {
                Ok(cm) => {
                    *slot.write().await = Some(cm);
                    tracing::info!(store = what, "Redis connected");
                    return;
                }
                Err(e) => {
                    tracing::warn!(store = what, error = %e, "Redis unreachable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
    Ok(conn)
}

impl RedisDedup {
    fn key(&self, source: &str, id: &EventId) -> String {
        format!("{}{source}:{id}", self.prefix)
    }

    async fn conn(&self) -> Option<ConnectionManager> {
        self.conn.read().await.clone()
    }

    async fn claim(&self, source: &str, id: &EventId, value: u64) -> Claim {
        let key = self.key(source, id);
        let unrecorded = |key: String| {
            Claim::New(Token {
                key,
                value,
                recorded: false,
            })
        };
        let Some(mut conn) = self.conn().await else {
            metrics::dedup_error("redis");
            return unrecorded(key);
        };
        let pending = format!("p:{}:{value}", instance_id());
        let set: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(&key)
            .arg(&pending)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(self.pending_ttl.as_millis()).unwrap_or(u64::MAX))
            .query_async(&mut conn)
            .await;
        match set {
            Ok(Some(_)) => Claim::New(Token {
                key,
                value,
                recorded: true,
            }),
            Ok(None) => {
                let existing: redis::RedisResult<Option<String>> =
                    redis::cmd("GET").arg(&key).query_async(&mut conn).await;
                match existing {
                    Ok(Some(v)) if v == "d" => Claim::Done,
                    Ok(Some(_)) => Claim::InFlight,
                    // Expired between the two commands: treat as in flight, the retry decides.
                    Ok(None) => Claim::InFlight,
                    Err(e) => {
                        metrics::dedup_error("redis");
                        tracing::warn!(error = %e, "dedup lookup failed; proceeding without dedup");
                        unrecorded(key)
                    }
                }
            }
            Err(e) => {
                metrics::dedup_error("redis");
                tracing::warn!(error = %e, "dedup claim failed; proceeding without dedup");
                unrecorded(key)
            }
        }
    }

    async fn complete(&self, token: &Token) {
        let Some(mut conn) = self.conn().await else {
            return;
        };
        let done: redis::RedisResult<()> = redis::cmd("SET")
            .arg(&token.key)
            .arg("d")
            .arg("PX")
            .arg(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX))
            .query_async(&mut conn)
            .await;
        if let Err(e) = done {
            metrics::dedup_error("redis");
            tracing::warn!(error = %e, "recording a delivered event in Redis failed");
        }
    }

    async fn release(&self, token: &Token) {
        let Some(mut conn) = self.conn().await else {
            return;
        };
        // Delete only our own pending claim, never another replica's or a completed one.
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        );
        let released: redis::RedisResult<i64> = script
            .key(&token.key)
            .arg(format!("p:{}:{}", instance_id(), token.value))
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = released {
            metrics::dedup_error("redis");
            tracing::warn!(error = %e, "releasing a dedup claim failed; it expires on its own");
        }
    }
}

/// The memory backend's key: the first 128 bits of SHA-256 (collisions are out of reach at any
/// realistic number of remembered events).
fn digest(key: &str) -> u128 {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(key.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    u128::from_be_bytes(b)
}

/// A random id for this process, so pending claims of different replicas never compare equal.
fn instance_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().simple().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> EventId {
        crate::normalize::Envelope::restore(s, "s", "t", "/s", "sha256", bytes::Bytes::new())
            .id()
            .clone()
    }

    #[tokio::test]
    async fn memory_claims_are_exclusive_and_released_on_failure() {
        let d = Dedup::memory(Duration::from_secs(60), 1000);
        let Claim::New(token) = d.claim("src", &id("e1")).await else {
            panic!("first claim")
        };
        assert_eq!(d.claim("src", &id("e1")).await, Claim::InFlight);
        // Same ID on another source is another event.
        assert!(matches!(d.claim("other", &id("e1")).await, Claim::New(_)));
        d.release(token).await;
        let Claim::New(token) = d.claim("src", &id("e1")).await else {
            panic!("claim after release")
        };
        d.complete(token).await;
        assert_eq!(d.claim("src", &id("e1")).await, Claim::Done);
    }

    #[tokio::test]
    async fn a_stale_release_does_not_drop_a_newer_claim() {
        let d = Dedup::memory(Duration::from_secs(60), 1000);
        let Claim::New(first) = d.claim("s", &id("x")).await else {
            panic!()
        };
        let stale = Token {
            key: first.key.clone(),
            value: first.value + 1000,
            recorded: true,
        };
        d.release(stale).await;
        assert_eq!(d.claim("s", &id("x")).await, Claim::InFlight);
        d.complete(first).await;
    }
}
