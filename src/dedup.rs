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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use redis::aio::ConnectionManager;
use tokio::sync::RwLock;

use crate::metrics;
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

/// Proof of a claim, needed to complete or release it.
#[derive(Debug, PartialEq, Eq)]
pub struct Token {
    /// The Redis key (empty for memory).
    key: String,
    /// The memory key.
    digest: Key,
    /// What the store holds for this claim: a per-process counter in Redis, the claim's
    /// millisecond in memory.
    value: u64,
    /// Claims made while the store was unreachable are not recorded anywhere.
    recorded: bool,
}

/// The claim store; see the module docs.
pub struct Dedup(Backend);

enum Backend {
    Memory(MemoryDedup),
    Redis(RedisDedup),
}

/// The in-process claim store, keyed by a 128-bit digest of (source, event ID).
///
/// Every entry lives for the same TTL, so insertion order is expiry order: each shard keeps a
/// map plus a FIFO of keys, and the FIFO's front is always the next entry to expire or, past the
/// bound, the oldest to evict (the retry least likely to come). No per-entry timers or eviction
/// policy: moka cost about 8 µs and 380 bytes per event on this path; this costs one
/// uncontended lock and 41 bytes (the 16-byte key in the map and again in the queue, an 8-byte
/// entry, a control byte), 45 to 90 with the table's and queue's growth slack. At the default
/// bound that is most of the memory of a busy replica, so every byte here counts.
struct MemoryDedup {
    shards: Box<[Mutex<Shard>]>,
    /// Times are kept as milliseconds since this instant.
    epoch: Instant,
    ttl_ms: u64,
    pending_ms: u64,
    per_shard: usize,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Key, Entry>,
    /// Keys in the order they were put. A key put again (a takeover, or a completion after
    /// eviction) is queued twice; the older copy is dropped when it reaches the front, judged
    /// by the entry's own time.
    order: VecDeque<Key>,
}

/// A remembered claim in one word: the millisecond it was made, with [`DONE`] set once the
/// event is durable.
///
/// The time doubles as the claim's identity, which a stale release is checked against: a
/// second claim of a key only replaces a pending one after the pending deadline (many
/// milliseconds later), so two claims of one key never share a millisecond.
#[derive(Clone, Copy)]
struct Entry(u64);

/// Millisecond clocks never reach the top bit.
const DONE: u64 = 1 << 63;

impl Entry {
    fn at_ms(self) -> u64 {
        self.0 & !DONE
    }

    fn is_done(self) -> bool {
        self.0 & DONE != 0
    }
}

const SHARDS: usize = 16;

/// 128 bits as two words rather than a `u128`: 8-byte alignment packs a map slot into 24 bytes
/// instead of 32.
type Key = [u64; 2];

/// A duration in whole milliseconds, saturating (Redis `PX` arguments and the memory store's
/// clock).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl MemoryDedup {
    fn new(ttl: Duration, pending_ttl: Duration, max_entries: u64) -> Self {
        let per_shard = usize::try_from(max_entries).unwrap_or(usize::MAX) / SHARDS;
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            epoch: Instant::now(),
            ttl_ms: millis(ttl),
            // At least a millisecond, so that claim times stay distinct (see `Entry`).
            pending_ms: millis(pending_ttl).max(1),
            per_shard: per_shard.max(1),
        }
    }

    fn now_ms(&self) -> u64 {
        millis(self.epoch.elapsed())
    }

    fn shard(&self, key: Key) -> std::sync::MutexGuard<'_, Shard> {
        // The key is a hash already: its low bits spread evenly. Every mutation under the lock
        // is a single map or queue call, so a poisoned lock still guards a consistent shard.
        #[allow(clippy::cast_possible_truncation)]
        let i = (key[1] as usize) % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn claim(&self, key: Key) -> Claim {
        let now = self.now_ms();
        let mut shard = self.shard(key);
        shard.expire(now, self.ttl_ms, self.per_shard);
        if let Some(&e) = shard.map.get(&key) {
            if e.is_done() {
                return Claim::Done;
            }
            // A claim left pending past its deadline is taken over: its request is gone.
            if now < e.at_ms().saturating_add(self.pending_ms) {
                return Claim::InFlight;
            }
        }
        shard.put(key, Entry(now));
        Claim::New(Token {
            key: String::new(),
            digest: key,
            value: now,
            recorded: true,
        })
    }

    fn complete(&self, token: &Token) {
        let mut shard = self.shard(token.digest);
        match shard.map.get_mut(&token.digest) {
            Some(e) => e.0 |= DONE,
            // Evicted meanwhile: remember it again, from now.
            None => {
                let now = self.now_ms();
                shard.put(token.digest, Entry(now | DONE));
            }
        }
    }

    fn release(&self, token: &Token) {
        let mut shard = self.shard(token.digest);
        if shard
            .map
            .get(&token.digest)
            .is_some_and(|e| !e.is_done() && e.at_ms() == token.value)
        {
            shard.map.remove(&token.digest);
        }
    }
}

impl Shard {
    fn put(&mut self, key: Key, entry: Entry) {
        self.map.insert(key, entry);
        self.order.push_back(key);
    }

    /// Drops expired entries, then the oldest ones past the bound.
    ///
    /// A key queued twice (a takeover, or a completion after eviction) holds the queue at its
    /// older copy until the younger entry expires: entries behind it are then remembered past
    /// their TTL, which only delays forgetting events that were durable anyway. Past the bound,
    /// the older copy evicts the younger entry: at worst a duplicate publish, never a loss.
    fn expire(&mut self, now_ms: u64, ttl_ms: u64, bound: usize) {
        while let Some(&key) = self.order.front() {
            let over_bound = self.map.len() >= bound || self.order.len() >= bound * 2;
            let expired = self
                .map
                .get(&key)
                .is_none_or(|e| e.at_ms().saturating_add(ttl_ms) <= now_ms);
            if !expired && !over_bound {
                break;
            }
            self.order.pop_front();
            self.map.remove(&key);
        }
    }
}

struct RedisDedup {
    conn: Arc<RwLock<Option<ConnectionManager>>>,
    ttl: Duration,
    pending_ttl: Duration,
    prefix: String,
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// A Redis claim's value.
fn token_value() -> u64 {
    // Unique per process; the stored value also carries the instance id.
    NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
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
        match &self.0 {
            Backend::Memory(m) => m.claim(digest(source, id.as_str())),
            Backend::Redis(r) => r.claim(source, id, token_value()).await,
        }
    }

    /// The event is durable: later copies are duplicates.
    pub async fn complete(&self, token: Token) {
        if !token.recorded {
            return;
        }
        match &self.0 {
            Backend::Memory(m) => m.complete(&token),
            Backend::Redis(r) => r.complete(&token).await,
        }
    }

    /// Publishing failed: forget the claim so the provider's retry can succeed.
    pub async fn release(&self, token: Token) {
        if !token.recorded {
            return;
        }
        match &self.0 {
            Backend::Memory(m) => m.release(&token),
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
                digest: [0; 2],
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
                digest: [0; 2],
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
fn digest(source: &str, id: &str) -> Key {
    use sha2::Digest as _;
    // NUL cannot occur in a source name, so (source, id) pairs never run together.
    let d = sha2::Sha256::new()
        .chain_update(source)
        .chain_update([0])
        .chain_update(id)
        .finalize();
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[i * 8..i * 8 + 8]);
        u64::from_be_bytes(b)
    };
    [word(0), word(1)]
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
        let stale = Token {
            key: first.key.clone(),
            digest: first.digest,
            value: first.value + 1000,
            recorded: true,
        };
        d.release(stale).await;
        assert_eq!(d.claim("s", &id("x")).await, Claim::InFlight);
        d.complete(first).await;
    }
}
