//! Edge deduplication by (source, event ID): an atomic claim before publishing, so a provider's
//! retry of an event already made durable gets the same 200 without a second publish.
//!
//! A claim is `pending` while its request publishes and `done` once the event is durable. A
//! retry that finds `pending` gets 503 (the first attempt may still fail, and a 200 then would
//! lose the event); one that finds `done` gets 200. A failed publish releases the claim so the
//! next retry can succeed. `pending` claims expire after [`pending_ttl`], so a replica that died
//! mid-request (or a request dropped when its client hung up) cannot block an event for long.
//!
//! Backends: in-process memory (bounded, TTL; see `MemoryDedup`) for one replica; Redis
//! (`SET NX PX`) shared by all replicas. If Redis is unreachable the request proceeds without
//! dedup (and the error is counted): a possible duplicate is better than refusing events. Consumers still deduplicate by
//! key; at-least-once is the contract.

mod memory;
mod redis;

use std::time::Duration;

use self::memory::MemoryDedup;
use self::redis::RedisDedup;
use crate::normalize::EventId;

/// How long a claim may stay pending: well past the longest ack deadline plus a spool write,
/// short enough that an event claimed by a replica that died is retried soon.
pub fn pending_ttl(longest_ack_deadline: Duration) -> Duration {
    longest_ack_deadline * 2 + Duration::from_secs(5)
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

/// Proof of a claim, needed to complete or release it; each backend's holds what that backend
/// checks a release against.
#[derive(Debug, PartialEq, Eq)]
pub enum Token {
    /// The digest key, and the claim's millisecond (its identity).
    Memory { key: memory::Key, at_ms: u64 },
    /// The Redis key, and the per-process counter its pending value carries.
    Redis { key: String, value: u64 },
    /// Claimed while the store was unreachable: recorded nowhere, nothing to complete or release.
    Unrecorded,
}

/// The claim store; see the module docs.
pub struct Dedup(Backend);

enum Backend {
    Memory(MemoryDedup),
    Redis(RedisDedup),
}

impl Dedup {
    /// `pending_ttl`: how long a claim may stay pending (see [`pending_ttl`]).
    pub fn memory(ttl: Duration, pending_ttl: Duration, max_entries: u64) -> Self {
        Self(Backend::Memory(MemoryDedup::new(
            ttl,
            pending_ttl,
            max_entries,
        )))
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
        let conn = crate::kv::connect_redis(url, "dedup")?;
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
        match &self.0 {
            Backend::Memory(m) => m.claim(memory::digest(source, id.as_str())),
            Backend::Redis(r) => r.claim(source, id, redis::token_value()).await,
        }
    }

    /// The event is durable: later copies are duplicates.
    pub async fn complete(&self, token: Token) {
        match (&self.0, token) {
            (Backend::Memory(m), Token::Memory { key, .. }) => m.complete(key),
            (Backend::Redis(r), Token::Redis { key, .. }) => r.complete(&key).await,
            // Unrecorded, or (never) another store's token: nothing is held for it here.
            _ => {}
        }
    }

    /// Closes the store's connection (Redis), at the end of shutdown.
    pub async fn close(&self) {
        if let Backend::Redis(r) = &self.0 {
            r.conn.stop().await;
        }
    }

    /// Publishing failed: forget the claim so the provider's retry can succeed.
    pub async fn release(&self, token: Token) {
        match (&self.0, token) {
            (Backend::Memory(m), Token::Memory { key, at_ms }) => m.release(key, at_ms),
            (Backend::Redis(r), Token::Redis { key, value }) => r.release(&key, value).await,
            _ => {}
        }
    }
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
        let d = Dedup::memory(Duration::from_secs(60), Duration::from_secs(30), 1000);
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
    async fn an_abandoned_pending_claim_expires() {
        // A request dropped mid-publish (its client hung up) never completes or releases.
        let d = Dedup::memory(Duration::from_secs(60), Duration::from_millis(50), 1000);
        let Claim::New(abandoned) = d.claim("s", &id("gone")).await else {
            panic!()
        };
        assert_eq!(d.claim("s", &id("gone")).await, Claim::InFlight);
        tokio::time::sleep(Duration::from_millis(80)).await;
        let Claim::New(retry) = d.claim("s", &id("gone")).await else {
            panic!("the retry after the pending deadline claims it")
        };
        // The first request failing late must not release the retry's claim.
        d.release(abandoned).await;
        assert_eq!(d.claim("s", &id("gone")).await, Claim::InFlight);
        d.complete(retry).await;
        assert_eq!(d.claim("s", &id("gone")).await, Claim::Done);
    }

    #[tokio::test]
    async fn memory_is_bounded_and_forgets_the_oldest_first() {
        // 16 shards of 4: far more events than fit.
        let d = Dedup::memory(Duration::from_secs(60), Duration::from_secs(30), 64);
        for i in 0..10_000 {
            let Claim::New(t) = d.claim("s", &id(&format!("e{i}"))).await else {
                panic!()
            };
            d.complete(t).await;
        }
        let Backend::Memory(m) = &d.0 else { panic!() };
        let held: usize = m.shards.iter().map(|s| s.lock().unwrap().map.len()).sum();
        assert!(held <= 64, "{held} entries held");
        // The newest are remembered, the oldest forgotten.
        assert_eq!(d.claim("s", &id("e9999")).await, Claim::Done);
        assert!(matches!(d.claim("s", &id("e0")).await, Claim::New(_)));
    }

    #[tokio::test]
    async fn entries_expire_after_the_ttl() {
        let d = Dedup::memory(Duration::from_millis(50), Duration::from_millis(50), 1000);
        let Claim::New(t) = d.claim("s", &id("old")).await else {
            panic!()
        };
        d.complete(t).await;
        assert_eq!(d.claim("s", &id("old")).await, Claim::Done);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(matches!(d.claim("s", &id("old")).await, Claim::New(_)));
    }

    #[tokio::test]
    async fn a_stale_release_does_not_drop_a_newer_claim() {
        let d = Dedup::memory(Duration::from_secs(60), Duration::from_secs(30), 1000);
        let Claim::New(first) = d.claim("s", &id("x")).await else {
            panic!()
        };
        let Token::Memory { key, at_ms } = &first else {
            panic!("a memory token")
        };
        let stale = Token::Memory {
            key: *key,
            at_ms: at_ms + 1000,
        };
        d.release(stale).await;
        assert_eq!(d.claim("s", &id("x")).await, Claim::InFlight);
        d.complete(first).await;
    }
}
