//! RabbitMQ sink (lapin): a pool of confirm-mode channels used round-robin, so confirms are
//! pipelined with many publishes in flight per channel (no channel behind a global lock).
//! Messages are persistent and `mandatory`: a `Nack` or a returned (unroutable) message is a
//! failure, never a success.
//!
//! A supervisor task owns the connection: it connects with backoff, declares (or passively
//! checks) the durable topic exchange, and rebuilds everything when the connection or a channel
//! dies. Publishing never waits for a reconnect: while disconnected it fails at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event, ExchangeKind,
};
use tokio::sync::Notify;

use super::spec::{RabbitSpec, redact_url};
use super::{PublishError, render_template};
use crate::metrics;
use crate::normalize::Envelope;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

struct Pool {
    conn: Connection,
    channels: Vec<Channel>,
}

pub struct RabbitSink {
    name: String,
    spec: RabbitSpec,
    pool: Arc<RwLock<Option<Arc<Pool>>>>,
    next: AtomicUsize,
    ready: Arc<AtomicBool>,
    /// Wakes the supervisor to rebuild after a channel died under a publish.
    broken: Arc<Notify>,
    stop: Arc<Notify>,
}

impl RabbitSink {
    /// Starts the supervisor; returns at once, connected or not.
    pub fn start(name: &str, spec: &RabbitSpec) -> Self {
        let sink = Self {
            name: name.to_owned(),
            spec: spec.clone(),
            pool: Arc::new(RwLock::new(None)),
            next: AtomicUsize::new(0),
            ready: Arc::new(AtomicBool::new(false)),
            broken: Arc::new(Notify::new()),
            stop: Arc::new(Notify::new()),
        };
        metrics::sink_ready(name, false);
        tokio::spawn(supervise(
            name.to_owned(),
            spec.clone(),
            Arc::clone(&sink.pool),
            Arc::clone(&sink.ready),
            Arc::clone(&sink.broken),
            Arc::clone(&sink.stop),
        ));
        sink
    }

    pub async fn publish(&self, envelope: &Envelope) -> Result<(), PublishError> {
        let pool = self
            .pool
            .read()
            .ok()
            .and_then(|p| p.clone())
            .ok_or_else(|| {
                PublishError::Unavailable(format!("RabbitMQ sink {} is not connected", self.name))
            })?;
        let channel =
            &pool.channels[self.next.fetch_add(1, Ordering::Relaxed) % pool.channels.len()];
        let routing_key =
            ShortString::try_new(render_template(&self.spec.routing_key, envelope))
                .map_err(|_| PublishError::Refused("routing key longer than 255 bytes".into()))?;
        let message_id = ShortString::try_new(envelope.id().as_str())
            .map_err(|_| PublishError::Refused("event id longer than 255 bytes".into()))?;
        let mut headers = FieldTable::default();
        // CloudEvents AMQP binding attribute names ("cloudEvents:" prefix).
        headers.insert(
            "cloudEvents:specversion".into(),
            AMQPValue::LongString("1.0".into()),
        );
        headers.insert(
            "cloudEvents:id".into(),
            AMQPValue::LongString(envelope.id().as_str().into()),
        );
        headers.insert(
            "cloudEvents:type".into(),
            AMQPValue::LongString(envelope.event_type().into()),
        );
        headers.insert(
            "cloudEvents:source".into(),
            AMQPValue::LongString(envelope.ce_source().into()),
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let props = BasicProperties::default()
            .with_message_id(message_id)
            .with_content_type("application/cloudevents+json".into())
            .with_delivery_mode(2)
            .with_timestamp(now)
            .with_app_id("hookbridge".into())
            .with_headers(headers);
        let confirm = channel
            .basic_publish(
                self.spec.exchange.as_str().into(),
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                envelope.json(),
                props,
            )
            .await
            .map_err(|e| self.failed(channel, &e))?;
        let confirmation = confirm.await.map_err(|e| self.failed(channel, &e))?;
        confirmed(confirmation, |ret| {
            format!(
                "unroutable: {} {} (bind a queue to exchange {})",
                ret.reply_code, ret.reply_text, self.spec.exchange
            )
        })
    }

    fn failed(&self, channel: &Channel, e: &lapin::Error) -> PublishError {
        if !channel.status().connected() {
            self.ready.store(false, Ordering::SeqCst);
            self.broken.notify_one();
        }
        PublishError::Unavailable(format!("RabbitMQ publish failed: {e}"))
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Waits for outstanding confirms, then closes the connection.
    pub async fn close(&self) {
        self.stop.notify_waiters();
        let pool = self.pool.write().ok().and_then(|mut p| p.take());
        if let Some(pool) = pool {
            for ch in &pool.channels {
                if let Err(e) = ch.wait_for_confirms().await {
                    tracing::warn!(sink = %self.name, error = %e, "waiting for confirms at shutdown");
                }
            }
            if let Err(e) = pool
                .conn
                .close(200, "hookbridge shutting down".into())
                .await
            {
                tracing::debug!(sink = %self.name, error = %e, "closing the AMQP connection");
            }
        }
        self.ready.store(false, Ordering::SeqCst);
    }
}

/// A confirmed publish's outcome: only an `Ack` without a `basic.return` is a success.
/// `unroutable` words the error for a returned (mandatory, unroutable) message.
pub(crate) fn confirmed(
    confirmation: Confirmation,
    unroutable: impl FnOnce(&lapin::message::BasicReturnMessage) -> String,
) -> Result<(), PublishError> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(ret)) => Err(PublishError::Refused(unroutable(&ret))),
        Confirmation::Nack(_) => Err(PublishError::Refused("broker nacked the message".into())),
        Confirmation::NotRequested => Err(PublishError::Unavailable(
            "channel is not in confirm mode".into(),
        )),
    }
}

/// One connection attempt under [`CONNECT_TIMEOUT`]: lapin's own retry would make connect block
/// for minutes while the broker is down, and every caller has a supervisor that retries.
pub(crate) async fn open(url: &str, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default()
        .with_connection_name(name.into())
        .configure_backoff(|b| b.with_max_times(0));
    tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, props))
        .await
        .map_err(|_| anyhow::anyhow!("connect timed out after {CONNECT_TIMEOUT:?}"))?
        .map_err(Into::into)
}

async fn connect(spec: &RabbitSpec) -> anyhow::Result<Pool> {
    let conn = open(&spec.url, "hookbridge").await?;
    let mut channels = Vec::with_capacity(spec.channels);
    for _ in 0..spec.channels {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        channels.push(ch);
    }
    let opts = ExchangeDeclareOptions {
        durable: true,
        passive: !spec.declare_exchange,
        ..ExchangeDeclareOptions::default()
    };
    channels[0]
        .exchange_declare(
            spec.exchange.as_str().into(),
            ExchangeKind::Topic,
            opts,
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            if spec.declare_exchange {
                anyhow::anyhow!("declaring exchange {}: {e}", spec.exchange)
            } else {
                anyhow::anyhow!(
                    "exchange {} must exist (declare_exchange = false): {e}",
                    spec.exchange
                )
            }
        })?;
    Ok(Pool { conn, channels })
}

async fn supervise(
    name: String,
    spec: RabbitSpec,
    slot: Arc<RwLock<Option<Arc<Pool>>>>,
    ready: Arc<AtomicBool>,
    broken: Arc<Notify>,
    stop: Arc<Notify>,
) {
    let url = redact_url(&spec.url);
    let mut backoff = BACKOFF_MIN;
    loop {
        let pool = tokio::select! {
            r = connect(&spec) => r,
            () = stop.notified() => return,
        };
        let pool = match pool {
            Ok(pool) => Arc::new(pool),
            Err(e) => {
                tracing::warn!(sink = %name, url = %url, error = %e, retry_in_ms = backoff.as_millis() as u64, "RabbitMQ connect failed");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.notified() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        let mut events = pool.conn.events_listener();
        if let Ok(mut s) = slot.write() {
            *s = Some(Arc::clone(&pool));
        }
        ready.store(true, Ordering::SeqCst);
        metrics::sink_ready(&name, true);
        metrics::sink_connected(&name);
        tracing::info!(sink = %name, url = %url, channels = spec.channels, exchange = %spec.exchange, "RabbitMQ sink ready");

        // Stay until the connection errors, a publish found a dead channel, or shutdown.
        let stopping = loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Event::Error(e)) => {
                        tracing::warn!(sink = %name, error = %e, "RabbitMQ connection lost");
                        break false;
                    }
                    Some(_) => {}
                    None => break false,
                },
                () = broken.notified() => {
                    tracing::warn!(sink = %name, "RabbitMQ channel closed; reconnecting");
                    break false;
                }
                () = stop.notified() => break true,
            }
        };
        ready.store(false, Ordering::SeqCst);
        metrics::sink_ready(&name, false);
        if stopping {
            return;
        }
        if let Ok(mut s) = slot.write() {
            *s = None;
        }
        if pool.conn.status().connected()
            && let Err(e) = pool.conn.close(320, "reconnecting".into()).await
        {
            tracing::debug!(sink = %name, error = %e, "closing the old AMQP connection");
        }
    }
}
