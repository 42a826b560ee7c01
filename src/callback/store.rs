//! Remembered decisions, by [`Subject`] (source, callback ID and the digest of the exact signed
//! body), so a retry of the same callback gets the same answer without asking again: in memory
//! for one replica, in Redis for several.
//!
//! - **The first decision recorded stands** ([`DecisionStore::record`] is `SET NX` in Redis):
//!   two replicas racing on the same callback end up answering the same. Only the standing
//!   decision's audit event is published; it is marked `audited` once durable, and no answer is
//!   sent before that (an unaudited decision found later is published again first).
//! - **A decision answers only its own body.** A second body under a callback ID that already
//!   has a decision is a *conflict*: [`Lookup::conflict`] names the first body's digest, and the
//!   caller decides the new body on its own.
//! - **Nothing forgets silently.** The memory store refuses a new decision (or ask) at capacity
//!   ([`StoreError::Full`], a 503) instead of evicting one, which would let a retry be decided
//!   anew; entries leave only when their TTL ends.
//! - **Redis is not trusted.** Each decision is stored with a MAC (the `[decisions]` secret) over
//!   its key and content, so write access to Redis alone cannot plant an `ok`; a record that
//!   fails it is refused ([`StoreError::Tampered`]). Keys live in disjoint namespaces under the
//!   prefix: `d:` decisions, `a:` asks (with their nonce), `c:` the first body seen per callback
//!   ID.
//! - Unlike dedup, an unreachable Redis is not bypassed: without the store a replica could
//!   answer differently from another, so a callback then gets no decision (503, Cobo retries).
//!
//! Requests waiting for a decision service's reply subscribe to [`DecisionStore::subscribe`];
//! every decision recorded (or found) by this process is broadcast there.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::{Decision, MacKey, Subject};
use crate::kv::millis;

/// A decision recorded for a key, as broadcast to waiting requests.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub key: Arc<str>,
    pub decision: Decision,
}

/// A remembered decision, what it is about, and whether its audit event is known to be durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub decision: Decision,
    /// The judged body's digest and the locator of its callback ID (see [`Subject`]).
    pub body_sha256: String,
    pub locator: String,
    #[serde(default)]
    pub audited: bool,
}

impl Stored {
    /// Whether this record is about `subject`'s exact body, found by the same locator.
    fn is_about(&self, subject: &Subject) -> bool {
        self.body_sha256 == subject.body_sha256 && self.locator == subject.locator
    }
}

/// What the store knows about a subject.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lookup {
    /// The decision about this exact body.
    pub stored: Option<Stored>,
    /// The digest of another body that was decided first under the same callback ID.
    pub conflict: Option<String>,
}

/// An outstanding ask: the nonce the request carried, which a reply must return, and the
/// locator of the callback ID (to rebuild the [`Subject`] from the reply's key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asked {
    pub nonce: String,
    pub locator: String,
}

#[allow(clippy::needless_pass_by_value)]
fn redis_error(e: redis::RedisError) -> StoreError {
    StoreError::Redis(e.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("decision store (Redis) is not connected")]
    Disconnected,
    #[error("decision store (Redis): {0}")]
    Redis(String),
    #[error("decision store: a stored record is unreadable: {0}")]
    Corrupt(String),
    #[error("decision store: a stored decision failed its MAC check or is about another body")]
    Tampered,
    #[error("decision store is full (decisions.max_entries); refusing new decisions")]
    Full,
}

impl StoreError {
    /// Stable reason code for the answer, the audit line and the metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Full => "decision_store_full",
            Self::Tampered => "decision_store_tampered",
            Self::Disconnected | Self::Redis(_) | Self::Corrupt(_) => "decision_store_unavailable",
        }
    }
}

/// Sizes and lifetimes of a store.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a decision is remembered.
    pub ttl: Duration,
    /// How long an ask (and its nonce) is remembered: about as long as Cobo retries.
    pub asked_ttl: Duration,
    /// Memory store: most decisions (and, separately, asks) held at once.
    pub max_entries: usize,
}

pub struct DecisionStore {
    backend: Backend,
    notify: broadcast::Sender<Recorded>,
    /// Keys this process is recording from a reply right now: the same reply delivered twice
    /// (a retry asked again) is recorded once, with one audit event.
    recording: Mutex<std::collections::HashSet<Arc<str>>>,
}

/// A key being recorded by this process; released on drop.
pub struct Recording<'a> {
    store: &'a DecisionStore,
    key: Arc<str>,
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.store.recording.lock() {
            set.remove(&self.key);
        }
    }
}

enum Backend {
    /// Boxed: three maps and queues beside a connection slot.
    Memory(Box<Mutex<Memory>>),
    Redis(RedisStore),
}

/// A map whose entries all live for the same TTL, so insertion order is expiry order: a FIFO of
/// keys finds the expired ones without scanning. Bounded: an insert at capacity fails.
struct Expiring<V> {
    map: HashMap<String, (V, Instant)>,
    order: VecDeque<(Instant, String)>,
    ttl: Duration,
    capacity: usize,
}

impl<V: Clone> Expiring<V> {
    fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            ttl,
            capacity,
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front()
            && *at <= now
        {
            let Some((at, key)) = self.order.pop_front() else {
                break;
            };
            // Only the entry this queue slot was made for (a key can expire and come back).
            if self.map.get(&key).is_some_and(|(_, exp)| *exp == at) {
                self.map.remove(&key);
            }
        }
    }

    fn get(&mut self, key: &str, now: Instant) -> Option<V> {
        self.expire(now);
        self.map.get(key).map(|(v, _)| v.clone())
    }

    /// Inserts `value` unless `key` is present; returns the value that stands.
    fn insert_if_absent(&mut self, key: &str, value: V, now: Instant) -> Result<V, StoreError> {
        self.expire(now);
        if let Some((v, _)) = self.map.get(key) {
            return Ok(v.clone());
        }
        if self.map.len() >= self.capacity {
            return Err(StoreError::Full);
        }
        let at = now + self.ttl;
        self.map.insert(key.to_owned(), (value.clone(), at));
        self.order.push_back((at, key.to_owned()));
        Ok(value)
    }

    /// Replaces the value of a present key, keeping its expiry.
    fn update(&mut self, key: &str, value: V) {
        if let Some((v, _)) = self.map.get_mut(key) {
            *v = value;
        }
    }
}

struct Memory {
    decisions: Expiring<Stored>,
    /// Identity (`<source>:<callback id>`) → digest of the first body decided under it.
    firsts: Expiring<String>,
    asked: Expiring<Asked>,
}

struct RedisStore {
    conn: crate::kv::Redis,
    limits: Limits,
    prefix: String,
    mac: MacKey,
}

/// What is written to Redis under `d:<key>`: the record as JSON text and a MAC over the key and
/// that exact text, so neither can be changed, nor a genuine record copied to another key.
#[derive(Serialize, Deserialize)]
struct Sealed {
    record: String,
    mac: String,
}

fn store_mac_message(key: &str, record: &str) -> String {
    format!("hookbridge-decision-store/v1\n{key}\n{record}")
}

impl RedisStore {
    fn decision_key(&self, key: &str) -> String {
        format!("{}d:{key}", self.prefix)
    }
    fn asked_key(&self, key: &str) -> String {
        format!("{}a:{key}", self.prefix)
    }
    fn first_key(&self, identity: &str) -> String {
        format!("{}c:{identity}", self.prefix)
    }

    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        crate::kv::conn(&self.conn).ok_or(StoreError::Disconnected)
    }

    /// `SET key value NX PX ttl`: whether this call set it.
    async fn set_nx(
        conn: &mut ConnectionManager,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .query_async(conn)
            .await
            .map_err(redis_error)?;
        Ok(set.is_some())
    }

    fn seal(&self, key: &str, stored: &Stored) -> Result<String, StoreError> {
        let record =
            serde_json::to_string(stored).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mac = self
            .mac
            .sign_hex(store_mac_message(key, &record).as_bytes());
        serde_json::to_string(&Sealed { record, mac })
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// The record under `key`, once its MAC and its subject check out.
    fn unseal(&self, key: &str, raw: &str, subject: &Subject) -> Result<Stored, StoreError> {
        let sealed: Sealed = serde_json::from_str(raw).map_err(|_| StoreError::Tampered)?;
        if !self.mac.verify_hex(
            store_mac_message(key, &sealed.record).as_bytes(),
            &sealed.mac,
        ) {
            return Err(StoreError::Tampered);
        }
        let stored: Stored =
            serde_json::from_str(&sealed.record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if stored.is_about(subject) {
            Ok(stored)
        } else {
            Err(StoreError::Tampered)
        }
    }
}

/// Waiting requests are few (callbacks are rare) and each reads every message, so a small buffer
/// suffices; a waiter that lags re-reads the store instead.
const BROADCAST_CAPACITY: usize = 1024;

impl DecisionStore {
    fn with(backend: Backend) -> Self {
        Self {
            backend,
            notify: broadcast::channel(BROADCAST_CAPACITY).0,
            recording: Mutex::default(),
        }
    }

    pub fn memory(limits: Limits) -> Self {
        Self::with(Backend::Memory(Box::new(Mutex::new(Memory {
            decisions: Expiring::new(limits.ttl, limits.max_entries),
            firsts: Expiring::new(limits.ttl, limits.max_entries),
            asked: Expiring::new(limits.asked_ttl, limits.max_entries),
        }))))
    }

    /// # Errors
    /// When the URL is not a Redis URL.
    pub fn redis(url: &str, limits: Limits, prefix: String, mac: MacKey) -> anyhow::Result<Self> {
        Ok(Self::with(Backend::Redis(RedisStore {
            conn: crate::kv::connect_redis(url, "decisions")?,
            limits,
            prefix,
            mac,
        })))
    }

    /// Closes the store's connection (Redis), at the end of shutdown.
    pub async fn close(&self) {
        if let Backend::Redis(r) = &self.backend {
            r.conn.stop().await;
        }
    }

    fn memory_lock(m: &Mutex<Memory>) -> Result<std::sync::MutexGuard<'_, Memory>, StoreError> {
        m.lock()
            .map_err(|_| StoreError::Corrupt("memory store lock poisoned".into()))
    }

    /// Claims `key` for recording in this process; `None` while another task records it (that
    /// task announces the result to every waiter).
    pub fn try_begin(&self, key: &str) -> Option<Recording<'_>> {
        let key: Arc<str> = key.into();
        // Not `then_some`: it would build (and drop) a guard that releases another task's claim.
        let inserted = self.recording.lock().ok()?.insert(Arc::clone(&key));
        if inserted {
            Some(Recording { store: self, key })
        } else {
            None
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Recorded> {
        self.notify.subscribe()
    }

    /// The decision about `subject`'s exact body, and whether another body was decided first
    /// under its callback ID.
    ///
    /// # Errors
    /// When Redis cannot be asked, or a stored decision fails its MAC.
    pub async fn get(&self, subject: &Subject) -> Result<Lookup, StoreError> {
        let key = subject.key();
        let (stored, first) = match &self.backend {
            Backend::Memory(m) => {
                let now = Instant::now();
                let mut m = Self::memory_lock(m)?;
                let stored = m.decisions.get(&key, now);
                if stored.as_ref().is_some_and(|s| !s.is_about(subject)) {
                    return Err(StoreError::Tampered);
                }
                (stored, m.firsts.get(&subject.identity(), now))
            }
            // `unseal` checks the MAC and that the record is about this body.
            Backend::Redis(r) => {
                let mut conn = r.conn().await?;
                let (raw, first): (Option<String>, Option<String>) = redis::cmd("MGET")
                    .arg(r.decision_key(&key))
                    .arg(r.first_key(&subject.identity()))
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                let stored = raw.map(|raw| r.unseal(&key, &raw, subject)).transpose()?;
                (stored, first)
            }
        };
        let conflict = first.filter(|d| *d != subject.body_sha256);
        Ok(Lookup { stored, conflict })
    }

    /// Records `decision` about `subject` (not yet audited) unless a decision about it is
    /// already recorded; returns the one that stands. Callers publish its audit event, then
    /// [`DecisionStore::mark_audited`].
    ///
    /// # Errors
    /// When Redis cannot be asked, the memory store is full, or a stored decision fails its MAC.
    pub async fn record(
        &self,
        subject: &Subject,
        decision: Decision,
    ) -> Result<Stored, StoreError> {
        let key = subject.key();
        let proposed = Stored {
            decision,
            body_sha256: subject.body_sha256.clone(),
            locator: subject.locator.clone(),
            audited: false,
        };
        match &self.backend {
            Backend::Memory(m) => {
                let now = Instant::now();
                let mut m = Self::memory_lock(m)?;
                let standing = m.decisions.insert_if_absent(&key, proposed, now)?;
                // At most one first-body entry per decision, so this fits when that did; a
                // full index would only stop conflicts being counted.
                let _first = m.firsts.insert_if_absent(
                    &subject.identity(),
                    subject.body_sha256.clone(),
                    now,
                );
                Ok(standing)
            }
            Backend::Redis(r) => {
                let mut conn = r.conn().await?;
                let full = r.decision_key(&key);
                let value = r.seal(&key, &proposed)?;
                let ttl = r.limits.ttl;
                // The first body decided under this callback ID, for conflict reports.
                let first = r.first_key(&subject.identity());
                RedisStore::set_nx(&mut conn, &first, &subject.body_sha256, ttl).await?;
                // A key that vanishes between SET NX and GET (expiry, eviction) is tried again:
                // answering a decision that is not stored would let another replica decide anew.
                for _ in 0..3 {
                    if RedisStore::set_nx(&mut conn, &full, &value, ttl).await? {
                        return Ok(proposed);
                    }
                    let existing: Option<String> = redis::cmd("GET")
                        .arg(&full)
                        .query_async(&mut conn)
                        .await
                        .map_err(redis_error)?;
                    if let Some(e) = existing {
                        return r.unseal(&key, &e, subject);
                    }
                }
                Err(StoreError::Redis(
                    "the decision key keeps disappearing".into(),
                ))
            }
        }
    }

    /// The standing decision's audit event is durable: later answers need not publish it, and
    /// this process's waiting requests may answer it now.
    ///
    /// # Errors
    /// When Redis cannot be asked (the next answer then publishes the same event again).
    pub async fn mark_audited(&self, subject: &Subject, stored: &Stored) -> Result<(), StoreError> {
        let key = subject.key();
        let audited = Stored {
            audited: true,
            ..stored.clone()
        };
        match &self.backend {
            Backend::Memory(m) => Self::memory_lock(m)?.decisions.update(&key, audited),
            Backend::Redis(r) => {
                let mut conn = r.conn().await?;
                let value = r.seal(&key, &audited)?;
                // XX: only over the standing decision, keeping its expiry.
                let _set: Option<String> = redis::cmd("SET")
                    .arg(r.decision_key(&key))
                    .arg(value)
                    .arg("XX")
                    .arg("KEEPTTL")
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
            }
        }
        self.announce(&key, &stored.decision);
        Ok(())
    }

    /// Notes that a decision service is being asked about `subject` and returns the ask's
    /// nonce: a new one (`fresh`) the first time, the same one for every retry while the ask is
    /// remembered, so a late reply to an earlier copy of the request still counts.
    ///
    /// # Errors
    /// When Redis cannot be asked, or the memory store is full.
    pub async fn ask(&self, subject: &Subject) -> Result<Asked, StoreError> {
        let key = subject.key();
        let fresh = Asked {
            nonce: uuid::Uuid::new_v4().simple().to_string(),
            locator: subject.locator.clone(),
        };
        match &self.backend {
            Backend::Memory(m) => {
                Self::memory_lock(m)?
                    .asked
                    .insert_if_absent(&key, fresh, Instant::now())
            }
            Backend::Redis(r) => {
                let mut conn = r.conn().await?;
                let full = r.asked_key(&key);
                let value = serde_json::to_string(&fresh)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                if RedisStore::set_nx(&mut conn, &full, &value, r.limits.asked_ttl).await? {
                    return Ok(fresh);
                }
                match self.asked(&key).await? {
                    Some(a) => Ok(a),
                    // Expired in between: this request's own nonce is as good as any.
                    None => Ok(fresh),
                }
            }
        }
    }

    /// The outstanding ask for `key` (by any replica sharing the store), if any.
    ///
    /// # Errors
    /// When Redis cannot be asked.
    pub async fn asked(&self, key: &str) -> Result<Option<Asked>, StoreError> {
        match &self.backend {
            Backend::Memory(m) => Ok(Self::memory_lock(m)?.asked.get(key, Instant::now())),
            Backend::Redis(r) => {
                let mut conn = r.conn().await?;
                let raw: Option<String> = redis::cmd("GET")
                    .arg(r.asked_key(key))
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                raw.map(|raw| {
                    serde_json::from_str(&raw).map_err(|e| StoreError::Corrupt(e.to_string()))
                })
                .transpose()
            }
        }
    }

    /// Wakes this process's requests waiting on `key` with an audited decision.
    pub fn announce(&self, key: &str, decision: &Decision) {
        // No receiver is normal: nobody is waiting.
        let _nobody_waits = self.notify.send(Recorded {
            key: key.into(),
            decision: decision.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::Verdict;

    fn limits(max_entries: usize) -> Limits {
        Limits {
            ttl: Duration::from_secs(60),
            asked_ttl: Duration::from_secs(60),
            max_entries,
        }
    }

    fn subject(id: &str, body: &str) -> Subject {
        Subject::new("s", id, "body:/request_id", body.as_bytes())
    }

    #[tokio::test]
    async fn the_first_decision_stands_and_is_announced_once_audited() {
        let store = DecisionStore::memory(limits(100));
        let mut rx = store.subscribe();
        let s1 = subject("1", "{\"a\":1}");
        assert_eq!(store.get(&s1).await.expect("get"), Lookup::default());
        let ok = Decision::new(Verdict::Ok, "r", "rule:a");
        let deny = Decision::new(Verdict::Deny, "r", "rule:b");
        let first = store.record(&s1, ok.clone()).await.expect("rec");
        assert_eq!((&first.decision, first.audited), (&ok, false));
        assert_eq!(store.record(&s1, deny).await.expect("rec").decision, ok);
        assert!(
            rx.try_recv().is_err(),
            "nothing is announced before the audit"
        );
        store.mark_audited(&s1, &first).await.expect("mark");
        let stored = store.get(&s1).await.expect("get").stored.expect("some");
        assert_eq!((&stored.decision, stored.audited), (&ok, true));
        let announced = rx.recv().await.expect("broadcast");
        assert_eq!((&*announced.key, &announced.decision), (&*s1.key(), &ok));
    }

    #[tokio::test]
    async fn another_body_under_the_same_callback_id_is_a_conflict_not_a_decision() {
        let store = DecisionStore::memory(limits(100));
        let small = subject("R", "{\"amount\":10}");
        let large = subject("R", "{\"amount\":5000000}");
        store
            .record(&small, Decision::new(Verdict::Ok, "small", "rule:a"))
            .await
            .expect("rec");
        let other = store.get(&large).await.expect("get");
        assert_eq!(other.stored, None, "never the other body's decision");
        assert_eq!(other.conflict.as_deref(), Some(small.body_sha256.as_str()));
        // The same body again: its own decision, and no conflict.
        let same = store.get(&small).await.expect("get");
        assert!(same.stored.is_some() && same.conflict.is_none());
        // The large body decided on its own stands beside the small one's.
        let denied = store
            .record(&large, Decision::new(Verdict::Deny, "large", "rule:b"))
            .await
            .expect("rec");
        assert_eq!(denied.decision.decision, Verdict::Deny);
    }

    #[tokio::test]
    async fn a_full_memory_store_refuses_instead_of_forgetting() {
        let store = DecisionStore::memory(limits(1));
        let a = subject("a", "{}");
        let b = subject("b", "{}");
        let ok = Decision::new(Verdict::Ok, "r", "rule:a");
        store.record(&a, ok.clone()).await.expect("rec");
        assert!(matches!(
            store.record(&b, ok.clone()).await,
            Err(StoreError::Full)
        ));
        // The first decision is still there and still stands.
        assert_eq!(
            store.get(&a).await.expect("get").stored.map(|s| s.decision),
            Some(ok)
        );
        store.ask(&a).await.expect("ask");
        assert!(matches!(store.ask(&b).await, Err(StoreError::Full)));
    }

    #[tokio::test]
    async fn entries_expire_after_their_ttl_only() {
        let store = DecisionStore::memory(Limits {
            ttl: Duration::from_millis(50),
            asked_ttl: Duration::from_millis(50),
            max_entries: 1,
        });
        let a = subject("a", "{}");
        let b = subject("b", "{}");
        let ok = Decision::new(Verdict::Ok, "r", "rule:a");
        store.record(&a, ok.clone()).await.expect("rec");
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(store.get(&a).await.expect("get"), Lookup::default());
        store.record(&b, ok).await.expect("room again once expired");
    }

    #[tokio::test]
    async fn an_ask_keeps_its_nonce_for_retries() {
        let store = DecisionStore::memory(limits(10));
        let a = subject("a", "{}");
        let first = store.ask(&a).await.expect("ask");
        assert_eq!(first.nonce.len(), 32);
        assert_eq!(store.ask(&a).await.expect("ask"), first);
        assert_eq!(store.asked(&a.key()).await.expect("asked"), Some(first));
        assert_eq!(
            store.asked(&subject("b", "{}").key()).await.expect("asked"),
            None
        );
    }

    #[test]
    fn one_recording_per_key_at_a_time() {
        let store = DecisionStore::memory(limits(100));
        let first = store.try_begin("s:1").expect("free");
        assert!(store.try_begin("s:1").is_none());
        assert!(
            store.try_begin("s:1").is_none(),
            "a refused claim releases nothing"
        );
        assert!(store.try_begin("s:2").is_some());
        drop(first);
        assert!(store.try_begin("s:1").is_some());
    }

    #[test]
    fn keys_split_back_and_namespaces_are_disjoint() {
        let s = Subject::new("asked", "a:b", "body:/id", b"{}");
        let key = s.key();
        assert_eq!(
            Subject::parse_key(&key),
            Some(("asked", "a:b", s.body_sha256.as_str()))
        );
        assert_eq!(Subject::parse_key("s:1"), None);
        assert_eq!(Subject::parse_key(&format!("s::{}", s.body_sha256)), None);
        let r = RedisStore {
            conn: crate::supervisor::Link::unconnected(),
            limits: limits(1),
            prefix: "p:".into(),
            mac: MacKey::new(b"0123456789abcdef"),
        };
        // A source named like a namespace cannot reach another namespace: every key starts
        // with its namespace tag right after the prefix.
        let keys = [
            r.decision_key(&key),
            r.asked_key(&key),
            r.first_key(&s.identity()),
        ];
        for (k, tag) in keys.iter().zip(["p:d:", "p:a:", "p:c:"]) {
            assert!(k.starts_with(tag), "{k}");
        }
    }

    #[test]
    fn a_sealed_record_cannot_be_changed_or_moved() {
        let r = RedisStore {
            conn: crate::supervisor::Link::unconnected(),
            limits: limits(1),
            prefix: "p:".into(),
            mac: MacKey::new(b"0123456789abcdef"),
        };
        let s = subject("1", "{}");
        let stored = Stored {
            decision: Decision::new(Verdict::Deny, "r", "rule:a"),
            body_sha256: s.body_sha256.clone(),
            locator: s.locator.clone(),
            audited: true,
        };
        let sealed = r.seal(&s.key(), &stored).expect("seal");
        assert_eq!(r.unseal(&s.key(), &sealed, &s).expect("unseal"), stored);
        // Flipped to ok: the MAC no longer matches.
        let forged = sealed.replace("deny", "ok");
        assert!(matches!(
            r.unseal(&s.key(), &forged, &s),
            Err(StoreError::Tampered)
        ));
        // Copied under another callback's key.
        let other = subject("2", "{}");
        assert!(matches!(
            r.unseal(&other.key(), &sealed, &other),
            Err(StoreError::Tampered)
        ));
        // Sealed with another secret.
        let stranger = RedisStore {
            mac: MacKey::new(b"another secret, 16+ bytes"),
            ..r
        };
        assert!(matches!(
            stranger.unseal(&s.key(), &sealed, &s),
            Err(StoreError::Tampered)
        ));
    }
}
