//! A RabbitMQ tap for tests that restart or cut the broker: a durable queue bound to a unique
//! exchange (so it survives a broker restart), read with fresh connections by message id.

use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};

use crate::rabbitmq::amqp_url;

/// A message taken from the tap's queue.
pub struct Tapped {
    pub id: String,
    /// The string-valued AMQP headers.
    pub headers: std::collections::HashMap<String, String>,
    pub body: Vec<u8>,
}

pub struct RabbitTap {
    pub exchange: String,
    queue: String,
}

async fn connect() -> Connection {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Connection::connect(&amqp_url(), ConnectionProperties::default()).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "RabbitMQ unreachable: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

impl RabbitTap {
    pub async fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let tap = Self {
            exchange: format!("hbt-x-{id}"),
            queue: format!("hbt-q-{id}"),
        };
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        ch.exchange_declare(
            tap.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_declare(
            tap.queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            tap.queue.as_str().into(),
            tap.exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let _ = conn.close(200, "ok".into()).await;
        tap
    }

    /// Message ids taken from the queue until at least `want` arrived and the queue stayed empty
    /// for a moment, or `within` passed.
    pub async fn take_ids(&self, want: usize, within: Duration) -> Vec<String> {
        self.take(want, within)
            .await
            .into_iter()
            .map(|m| m.id)
            .collect()
    }

    /// Messages taken from the queue, as [`RabbitTap::take_ids`] takes them.
    pub async fn take(&self, want: usize, within: Duration) -> Vec<Tapped> {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let mut taken = Vec::new();
        let deadline = Instant::now() + within;
        let mut idle_since = Instant::now();
        while Instant::now() < deadline {
            match ch
                .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                Some(m) => {
                    let props = &m.delivery.properties;
                    let headers = props
                        .headers()
                        .as_ref()
                        .map(|h| {
                            h.inner()
                                .iter()
                                .filter_map(|(k, v)| match v {
                                    AMQPValue::LongString(s) => {
                                        Some((k.to_string(), s.to_string()))
                                    }
                                    _ => None,
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    taken.push(Tapped {
                        id: props
                            .message_id()
                            .as_ref()
                            .map(|s| s.as_str().to_owned())
                            .unwrap_or_default(),
                        headers,
                        body: m.delivery.data.clone(),
                    });
                    idle_since = Instant::now();
                }
                None => {
                    if taken.len() >= want && idle_since.elapsed() > Duration::from_secs(2) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let _ = conn.close(200, "ok".into()).await;
        taken
    }

    pub async fn cleanup(self) {
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let _ = ch
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = ch
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = conn.close(200, "ok".into()).await;
    }
}
