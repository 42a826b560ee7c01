//! The Redis claim store (`SET NX PX`), shared by every replica. Each pending claim's value
//! names this process and a counter, so a release deletes only its own claim.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::{Claim, Token};
use crate::metrics;
use crate::normalize::EventId;

pub(super) struct RedisDedup {
    pub(super) conn: crate::kv::Redis,
    pub(super) ttl: Duration,
    pub(super) pending_ttl: Duration,
    pub(super) prefix: String,
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// A Redis claim's value.
pub(super) fn token_value() -> u64 {
    // Unique per process; the stored value also carries the instance id.
    NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
}

impl RedisDedup {
    fn key(&self, source: &str, id: &EventId) -> String {
        format!("{}{source}:{id}", self.prefix)
    }

    fn conn(&self) -> Option<ConnectionManager> {
        crate::kv::conn(&self.conn)
    }

    pub(super) async fn claim(&self, source: &str, id: &EventId, value: u64) -> Claim {
        let key = self.key(source, id);
        let unrecorded = || Claim::New(Token::Unrecorded);
        let Some(mut conn) = self.conn() else {
            metrics::dedup_error("redis");
            return unrecorded();
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
            Ok(Some(_)) => Claim::New(Token::Redis { key, value }),
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
                        unrecorded()
                    }
                }
            }
            Err(e) => {
                metrics::dedup_error("redis");
                tracing::warn!(error = %e, "dedup claim failed; proceeding without dedup");
                unrecorded()
            }
        }
    }

    pub(super) async fn complete(&self, key: &str) {
        let Some(mut conn) = self.conn() else {
            return;
        };
        let done: redis::RedisResult<()> = redis::cmd("SET")
            .arg(key)
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

    pub(super) async fn release(&self, key: &str, value: u64) {
        let Some(mut conn) = self.conn() else {
            return;
        };
        // Delete only our own pending claim, never another replica's or a completed one.
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        );
        let released: redis::RedisResult<i64> = script
            .key(key)
            .arg(format!("p:{}:{value}", instance_id()))
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = released {
            metrics::dedup_error("redis");
            tracing::warn!(error = %e, "releasing a dedup claim failed; it expires on its own");
        }
    }
}

/// A random id for this process, so pending claims of different replicas never compare equal.
fn instance_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().simple().to_string())
}
