//! Remembered decisions, by correlation ID (source and callback ID), so a retry gets the same
//! answer without asking again: in memory for one replica, in Redis for several.
//!
//! The first decision recorded wins ([`DecisionStore::record`] is `SET NX` in Redis): two
//! replicas racing on the same callback end up answering the same. A decision is only recorded
//! after its audit event is durable, so a remembered decision always has its audit trail.
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

/// A decision recorded for a correlation ID, as broadcast to waiting requests.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub key: Arc<str>,
    pub decision: Decision,
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
    Memory(moka::sync::Cache<String, Decision>),
    Redis {
        conn: Arc<RwLock<Option<ConnectionManager>>>,
        ttl: Duration,
        prefix: String,
    },
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
            notify: broadcast::channel(BROADCAST_CAPACITY).0,
            recording: std::sync::Mutex::default(),
        })
    }

    pub fn backend(&self) -> &'static str {
        match &self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis { .. } => "redis",
        }
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
    pub async fn get(&self, key: &str) -> Result<Option<Decision>, StoreError> {
        match &self.backend {
            Backend::Memory(cache) => Ok(cache.get(key)),
            Backend::Redis { conn, prefix, .. } => {
                let mut conn = conn.read().await.clone().ok_or(StoreError::Disconnected)?;
                let raw: Option<String> = redis::cmd("GET")
                    .arg(format!("{prefix}{key}"))
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| StoreError::Redis(e.to_string()))?;
                raw.map(|r| {
                    serde_json::from_str(&r).map_err(|e| StoreError::Corrupt(e.to_string()))
                })
                .transpose()
            }
        }
    }

    /// Records `decision` unless one is already recorded; returns the one that stands, and
    /// wakes the requests of this process waiting for it.
    ///
    /// # Errors
    /// When Redis cannot be asked.
    pub async fn record(&self, key: &str, decision: Decision) -> Result<Decision, StoreError> {
        let standing = match &self.backend {
            Backend::Memory(cache) => cache.entry(key.to_owned()).or_insert(decision).into_value(),
            Backend::Redis { conn, ttl, prefix } => {
                let mut conn = conn.read().await.clone().ok_or(StoreError::Disconnected)?;
                let full = format!("{prefix}{key}");
                let value = serde_json::to_string(&decision)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let set: Option<String> = redis::cmd("SET")
                    .arg(&full)
                    .arg(&value)
                    .arg("NX")
                    .arg("PX")
                    .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| StoreError::Redis(e.to_string()))?;
                if set.is_some() {
                    decision
                } else {
                    let existing: Option<String> = redis::cmd("GET")
                        .arg(&full)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| StoreError::Redis(e.to_string()))?;
                    match existing {
                        Some(e) => serde_json::from_str(&e)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        // Expired between the two commands: ours stands for this answer.
                        None => decision,
                    }
                }
            }
        };
        self.announce(key, &standing);
        Ok(standing)
    }

    /// Wakes this process's requests waiting on `key` with a decision found elsewhere.
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
    async fn the_first_decision_stands_and_is_broadcast() {
        let store = DecisionStore::memory(Duration::from_secs(60), 100);
        let mut rx = store.subscribe();
        assert_eq!(store.get("s:1").await.expect("get"), None);
        let ok = Decision::new(Verdict::Ok, "r", "rule:a");
        let deny = Decision::new(Verdict::Deny, "r", "rule:b");
        assert_eq!(store.record("s:1", ok.clone()).await.expect("rec"), ok);
        assert_eq!(store.record("s:1", deny).await.expect("rec"), ok);
        assert_eq!(store.get("s:1").await.expect("get"), Some(ok.clone()));
        let first = rx.recv().await.expect("broadcast");
        assert_eq!((&*first.key, &first.decision), ("s:1", &ok));
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
