//! RabbitMQ sink (lapin): a pool of confirm-mode channels used round-robin, so confirms are
//! pipelined with many publishes in flight per channel (no channel behind a global lock).
//! Messages are persistent and `mandatory`: a `Nack` or a returned (unroutable) message is a
//! failure, never a success.
//!
//! A supervisor task owns the connection: it connects with backoff, declares (or passively
//! checks) the durable topic exchange, and rebuilds everything when the connection or a channel
//! dies. Publishing never waits for a reconnect: while disconnected it fails at once.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{Stream, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event, ExchangeKind,
};

use super::spec::{RabbitSpec, redact_url};
use super::{PublishError, render_template};
use crate::metrics;
use crate::normalize::Envelope;
use crate::supervisor::{self, Backoff, Connector, Link};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Pool {
    conn: Connection,
    channels: Vec<Channel>,
}

/// A connection's event stream (lapin reports a lost connection there).
pub(crate) type Events = Pin<Box<dyn Stream<Item = Event> + Send>>;

pub struct RabbitSink {
    name: String,
    spec: RabbitSpec,
    link: Arc<Link<Pool>>,
    next: AtomicUsize,
}

impl RabbitSink {
    /// Starts the supervisor; returns at once, connected or not.
    pub fn start(name: &str, spec: &RabbitSpec) -> Self {
        metrics::sink_ready(name, false);
        let link = supervisor::supervise(
            Sinking {
                name: name.to_owned(),
                spec: spec.clone(),
            },
            Backoff::BROKER,
        );
        Self {
            name: name.to_owned(),
            spec: spec.clone(),
            link,
            next: AtomicUsize::new(0),
        }
    }

    pub async fn publish(&self, envelope: &Envelope) -> Result<(), PublishError> {
        let pool = self.link.get().ok_or_else(|| {
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
        // W3C trace context, where OpenTelemetry's AMQP instrumentations look for it.
        if let Some(tp) = envelope.traceparent() {
            headers.insert("traceparent".into(), AMQPValue::LongString(tp.into()));
        }
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
            .map_err(|e| self.failed(&pool, channel, &e))?;
        let confirmation = confirm.await.map_err(|e| self.failed(&pool, channel, &e))?;
        confirmed(confirmation, |ret| {
            format!(
                "unroutable: {} {} (bind a queue to exchange {})",
                ret.reply_code, ret.reply_text, self.spec.exchange
            )
        })
    }

    fn failed(&self, pool: &Arc<Pool>, channel: &Channel, e: &lapin::Error) -> PublishError {
        if !channel.status().connected() {
            self.link.report_broken(pool);
        }
        PublishError::Unavailable(format!("RabbitMQ publish failed: {e}"))
    }

    pub fn is_ready(&self) -> bool {
        self.link.is_ready()
    }

    /// Waits for outstanding confirms, then closes the connection (the supervisor does both
    /// as it stops).
    pub async fn close(&self) {
        self.link.stop().await;
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

/// The sink's connection: a pool of confirm-mode channels and the exchange checked.
struct Sinking {
    name: String,
    spec: RabbitSpec,
}

impl Connector for Sinking {
    type Shared = Pool;
    type Held = Events;

    fn describe(&self) -> String {
        format!(
            "sink {} (RabbitMQ {}, exchange {})",
            self.name,
            redact_url(&self.spec.url),
            self.spec.exchange
        )
    }

    async fn connect(&mut self) -> anyhow::Result<(Pool, Events)> {
        let spec = &self.spec;
        let conn = open(&spec.url, "hookbridge").await?;
        let events: Events = Box::pin(conn.events_listener());
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
        Ok((Pool { conn, channels }, events))
    }

    async fn hold(&mut self, _pool: &Arc<Pool>, events: &mut Events) -> String {
        lost(events).await
    }

    async fn close(&mut self, pool: Arc<Pool>, _events: Events, stopping: bool) {
        if stopping {
            for ch in &pool.channels {
                if let Err(e) = ch.wait_for_confirms().await {
                    tracing::warn!(sink = %self.name, error = %e, "waiting for confirms at shutdown");
                }
            }
        }
        let (code, why) = if stopping {
            (200, "hookbridge shutting down")
        } else {
            (320, "reconnecting")
        };
        if pool.conn.status().connected()
            && let Err(e) = pool.conn.close(code, why.into()).await
        {
            tracing::debug!(sink = %self.name, error = %e, "closing the AMQP connection");
        }
    }

    fn on_ready(&self, ready: bool) {
        metrics::sink_ready(&self.name, ready);
        if ready {
            metrics::sink_connected(&self.name);
        }
    }
}

/// Resolves, with the reason, once lapin reports the connection lost.
pub(crate) async fn lost(events: &mut Events) -> String {
    loop {
        match events.next().await {
            Some(Event::Error(e)) => return format!("RabbitMQ connection lost: {e}"),
            Some(_) => {}
            None => return "RabbitMQ connection closed".to_owned(),
        }
    }
}
