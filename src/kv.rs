//! Plumbing shared by the key-value stores (edge dedup, remembered decisions): the Redis
//! connection, supervised like every broker connection, and durations as whole milliseconds.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::supervisor::{self, Backoff, Connector, Link};

/// A duration in whole milliseconds, saturating (Redis `PX` arguments and the memory stores'
/// clocks).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A supervised Redis connection: `None` until the first connection, so hookbridge starts while
/// Redis is down.
pub(crate) type Redis = Arc<Link<ConnectionManager>>;

/// Connects to Redis in the background (retrying with backoff). `what` names the user in logs.
///
/// # Errors
/// When the URL is not a Redis URL.
pub(crate) fn connect_redis(url: &str, what: &'static str) -> anyhow::Result<Redis> {
    let client = redis::Client::open(url)?;
    Ok(supervisor::supervise(
        RedisConnector { client, what },
        Backoff {
            min: Duration::from_millis(200),
            max: Duration::from_secs(5),
        },
    ))
}

/// A usable connection handle, if connected (cheap: the manager is a shared handle).
pub(crate) fn conn(redis: &Redis) -> Option<ConnectionManager> {
    redis.get().map(|c| ConnectionManager::clone(&c))
}

struct RedisConnector {
    client: redis::Client,
    what: &'static str,
}

impl Connector for RedisConnector {
    type Shared = ConnectionManager;
    type Held = ();

    fn describe(&self) -> String {
        format!("Redis for {}", self.what)
    }

    async fn connect(&mut self) -> anyhow::Result<(ConnectionManager, ())> {
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(1)));
        let manager = self.client.get_connection_manager_with_config(cfg).await?;
        Ok((manager, ()))
    }

    /// Once made, a connection manager reconnects by itself (commands fail meanwhile, and the
    /// stores count that): it is held until stop.
    async fn hold(&mut self, _: &Arc<ConnectionManager>, (): &mut ()) -> String {
        std::future::pending().await
    }

    async fn close(&mut self, _: Arc<ConnectionManager>, (): (), _stopping: bool) {}
}
