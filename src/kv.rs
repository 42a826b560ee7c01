//! Plumbing shared by the key-value stores (edge dedup, remembered decisions): the Redis
//! connection made in the background, and durations as whole milliseconds.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::RwLock;

/// A duration in whole milliseconds, saturating (Redis `PX` arguments and the memory stores'
/// clocks).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
