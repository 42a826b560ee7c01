//! A RabbitMQ tap for tests that restart or cut the broker: a durable queue bound to a unique
//! exchange (so it survives a broker restart), read with fresh connections by message id.

use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

use crate::rabbitmq::amqp_url;

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
        let conn = connect().await;
        let ch = conn.create_channel().await.unwrap();
        let mut ids = Vec::new();
        let deadline = Instant::now() + within;
        let mut idle_since = Instant::now();
        while Instant::now() < deadline {
            match ch
                .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                Some(m) => {
                    ids.push(
                        m.delivery
                            .properties
                            .message_id()
                            .as_ref()
                            .map(|s| s.as_str().to_owned())
                            .unwrap_or_default(),
                    );
                    idle_since = Instant::now();
                }
                None => {
                    if ids.len() >= want && idle_since.elapsed() > Duration::from_secs(2) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let _ = conn.close(200, "ok".into()).await;
        ids
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
