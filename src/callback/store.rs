//! Remembered decisions, by correlation ID (source and callback ID), so a retry gets the same
//! answer without asking again: in memory for one replica, in Redis for several.
//!
//! The first decision recorded wins ([`DecisionStore::record`] is `SET NX` in Redis): two
//! replicas racing on the same callback end up answering the same. Only the standing decision's
//! audit event is published; it is marked `audited` once durable, and no answer is sent before
//! that (an unaudited decision found later is published again first, with the same content).
//!
//! Unlike dedup, an unreachable Redis is not bypassed: without the store a replica could
//! answer differently from another, so a callback then gets no decision (503, Cobo retries).
//!
//! Requests waiting for a decision service's reply subscribe to [`DecisionStore::subscribe`];
//! every decision recorded (or found) by this process is broadcast there.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{RwLock, broadcast};

use super::Decision;
use crate::dedup::millis;

/// A decision recorded for a correlation ID, as broadcast to waiting requests.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub key: Arc<str>,
    pub decision: Decision,
}

/// A remembered decision, and whether its audit event is known to be durable.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    pub decision: Decision,
    #[serde(default)]
    pub audited: bool,
}

fn parse(raw: &str) -> Result<Stored, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[allow(clippy::needless_pass_by_value)]
fn redis_error(e: redis::RedisError) -> StoreError {
    StoreError::Redis(e.to_string())
}

/// The Redis connection, once the background connect has made one.
async fn connected(
    slot: &RwLock<Option<ConnectionManager>>,
) -> Result<ConnectionManager, StoreError> {
    slot.read().await.clone().ok_or(StoreError::Disconnected)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("decision store (Redis) is not connected")]
    Disconnected,
    #[error("decision store (Redis): {0}")]
    Redis(String),
    #[error("decision store: a stored decision is unreadable: {0}")]
    Corrupt(String),
}

pub struct DecisionStore {
    backend: Backend,
    /// Keys asked about, for the memory backend (Redis keeps them under `<prefix>asked:`).
    asked: moka::sync::Cache<String, ()>,
    notify: broadcast::Sender<Recorded>,
    /// Keys this process is recording from a reply right now: the same reply delivered twice
    /// (a retry asked again) is recorded once, with one audit event.
    recording: std::sync::Mutex<std::collections::HashSet<Arc<str>>>,
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
    Memory(moka::sync::Cache<String, Stored>),
    Redis {
        conn: Arc<RwLock<Option<ConnectionManager>>>,
        ttl: Duration,
        prefix: String,
    },
}

fn asked_cache(ttl: Duration, max_entries: u64) -> moka::sync::Cache<String, ()> {
    moka::sync::Cache::builder()
        .max_capacity(max_entries)
        .time_to_live(ttl)
        .build()
}

/// Waiting requests are few (callbacks are rare) and each reads every message, so a small buffer
/// suffices; a waiter that lags re-reads the store instead.
const BROADCAST_CAPACITY: usize = 1024;

impl DecisionStore {
    pub fn memory(ttl: Duration, max_entries: u64) -> Self {
        Self {
            backend: Backend::Memory(
                moka::sync::Cache::builder()
                    .max_capacity(max_entries)
                    .time_to_live(ttl)
                    .build(),
            ),
            asked: asked_cache(ttl, max_entries),
            notify: broadcast::channel(BROADCAST_CAPACITY).0,
            recording: std::sync::Mutex::default(),
        }
    }

    /// # Errors
    /// When the URL is not a Redis URL.
    pub fn redis(url: &str, ttl: Duration, prefix: String) -> anyhow::Result<Self> {
        Ok(Self {
            backend: Backend::Redis {
                conn: crate::dedup::connect_redis(url, "decisions")?,
                ttl,
                prefix,
            },
            asked: asked_cache(ttl, 1),
            notify: broadcast::channel(BROADCAST_CAPACITY).0,
            recording: std::sync::Mutex::default(),
        })
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

    /// The remembered decision, if any.
    ///
    /// # Errors
    /// When Redis cannot be asked.
    pub async fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        match &self.backend {
            Backend::Memory(cache) => Ok(cache.get(key)),
            Backend::Redis { conn, prefix, .. } => {
                let mut conn = connected(conn).await?;
                let raw: Option<String> = redis::cmd("GET")
                    .arg(format!("{prefix}{key}"))
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                raw.map(|r| parse(&r)).transpose()
            }
        }
    }

    /// Records `decision` (not yet audited) unless a decision is already recorded; returns the
    /// one that stands. Callers publish its audit event, then [`DecisionStore::mark_audited`].
    ///
    /// # Errors
    /// When Redis cannot be asked, or keeps losing the key between `SET NX` and `GET`.
    pub async fn record(&self, key: &str, decision: Decision) -> Result<Stored, StoreError> {
        let proposed = Stored {
            decision,
            audited: false,
        };
        match &self.backend {
            Backend::Memory(cache) => {
                Ok(cache.entry(key.to_owned()).or_insert(proposed).into_value())
            }
            Backend::Redis { conn, ttl, prefix } => {
                let mut conn = connected(conn).await?;
                let full = format!("{prefix}{key}");
                let value = serde_json::to_string(&proposed)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                // A key that vanishes between SET NX and GET (expiry, eviction) is tried again:
                // answering a decision that is not stored would let another replica decide anew.
                for _ in 0..3 {
                    let set: Option<String> = redis::cmd("SET")
                        .arg(&full)
                        .arg(&value)
                        .arg("NX")
                        .arg("PX")
                        .arg(millis(*ttl))
                        .query_async(&mut conn)
                        .await
                        .map_err(redis_error)?;
                    if set.is_some() {
                        return Ok(proposed);
                    }
                    let existing: Option<String> = redis::cmd("GET")
                        .arg(&full)
                        .query_async(&mut conn)
                        .await
                        .map_err(redis_error)?;
                    if let Some(e) = existing {
                        return parse(&e);
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
    pub async fn mark_audited(&self, key: &str, decision: &Decision) -> Result<(), StoreError> {
        let audited = Stored {
            decision: decision.clone(),
            audited: true,
        };
        match &self.backend {
            Backend::Memory(cache) => cache.insert(key.to_owned(), audited),
            Backend::Redis { conn, prefix, .. } => {
                let mut conn = connected(conn).await?;
                let value = serde_json::to_string(&audited)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                // XX: only over the standing decision, keeping its expiry.
                let _set: Option<String> = redis::cmd("SET")
                    .arg(format!("{prefix}{key}"))
                    .arg(value)
                    .arg("XX")
                    .arg("KEEPTTL")
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
            }
        }
        self.announce(key, decision);
        Ok(())
    }

    /// Notes that a decision service was asked about `key`: only then is a reply for it
    /// accepted, so a stray or forged reply cannot pre-decide a callback nobody asked about.
    ///
    /// # Errors
    /// When Redis cannot be asked.
    pub async fn mark_asked(&self, key: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(_) => {
                self.asked.insert(key.to_owned(), ());
                Ok(())
            }
            Backend::Redis { conn, ttl, prefix } => {
                let mut conn = connected(conn).await?;
                let _set: Option<String> = redis::cmd("SET")
                    .arg(format!("{prefix}asked:{key}"))
                    .arg("1")
                    .arg("PX")
                    .arg(millis(*ttl))
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                Ok(())
            }
        }
    }

    /// Whether a decision service was asked about `key` (by any replica sharing the store).
    ///
    /// # Errors
    /// When Redis cannot be asked.
    pub async fn was_asked(&self, key: &str) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Memory(_) => Ok(self.asked.contains_key(key)),
            Backend::Redis { conn, prefix, .. } => {
                let mut conn = connected(conn).await?;
                let n: u64 = redis::cmd("EXISTS")
                    .arg(format!("{prefix}asked:{key}"))
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                Ok(n > 0)
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

    #[tokio::test]
    async fn the_first_decision_stands_and_is_announced_once_audited() {
        let store = DecisionStore::memory(Duration::from_secs(60), 100);
        let mut rx = store.subscribe();
        assert_eq!(store.get("s:1").await.expect("get"), None);
        let ok = Decision::new(Verdict::Ok, "r", "rule:a");
        let deny = Decision::new(Verdict::Deny, "r", "rule:b");
        let first = store.record("s:1", ok.clone()).await.expect("rec");
        assert_eq!((&first.decision, first.audited), (&ok, false));
        assert_eq!(store.record("s:1", deny).await.expect("rec").decision, ok);
        assert!(
            rx.try_recv().is_err(),
            "nothing is announced before the audit"
        );
        store.mark_audited("s:1", &ok).await.expect("mark");
        let stored = store.get("s:1").await.expect("get").expect("some");
        assert_eq!((&stored.decision, stored.audited), (&ok, true));
        let first = rx.recv().await.expect("broadcast");
        assert_eq!((&*first.key, &first.decision), ("s:1", &ok));
        assert!(!store.was_asked("s:2").await.expect("asked"));
        store.mark_asked("s:2").await.expect("mark");
        assert!(store.was_asked("s:2").await.expect("asked"));
    }

    #[test]
    fn one_recording_per_key_at_a_time() {
        let store = DecisionStore::memory(Duration::from_secs(60), 100);
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
}
