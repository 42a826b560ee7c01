//! The example decision service: consumes hookbridge's decision requests (format version 2)
//! from RabbitMQ or Kafka, decides by a simple policy, and publishes
//! `{"version": 2, "id", "nonce", "decision", "reason", "decided_by", "mac"}` to the reply
//! address each request names. Shared by `main.rs` and hookbridge's integration tests.
//!
//! `mac` is the hex HMAC-SHA256, keyed with the secret shared with hookbridge
//! (`decision.service.secret`), of these four lines joined by `\n`:
//! `hookbridge-decision-reply/v2`, the request's `id`, its `hbnonce`, and the decision. It is
//! written out here with the `hmac` crate, as a service in any language would, rather than
//! with hookbridge's own code.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// The reply MAC, as documented in docs/configuration.md.
fn reply_mac(secret: &[u8], id: &str, nonce: &str, decision: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("hookbridge-decision-reply/v2\n{id}\n{nonce}\n{decision}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Deny listed IDs and amounts above a limit; approve the rest.
#[derive(Clone, Default)]
pub struct Policy {
    /// `transaction_id`, `request_id` or `cobo_id` values to deny.
    pub deny_ids: Vec<String>,
    /// Deny when the callback's `amount` is larger.
    pub max_amount: Option<f64>,
    /// The secret shared with hookbridge, which every reply is MAC'd with.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Policy {
    // Never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("deny_ids", &self.deny_ids)
            .field("max_amount", &self.max_amount)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// The decision and its reason for a callback body.
    pub fn decide(&self, data: &Value) -> (&'static str, String) {
        for field in ["transaction_id", "request_id", "cobo_id"] {
            if let Some(id) = data.get(field).and_then(Value::as_str)
                && self.deny_ids.iter().any(|d| d == id)
            {
                return ("deny", format!("{field} {id} is on the deny list"));
            }
        }
        if let Some(max) = self.max_amount {
            let amount = data.get("amount").and_then(|a| match a {
                Value::String(s) => s.parse::<f64>().ok(),
                other => other.as_f64(),
            });
            // Fail closed: NaN, infinities and negative amounts are not "within the limit".
            match amount {
                Some(a) if a.is_finite() && (0.0..=max).contains(&a) => {}
                Some(a) => return ("deny", format!("amount {a} is not within 0..={max}")),
                None => return ("deny", "no readable amount".to_owned()),
            }
        }
        ("ok", "within policy".to_owned())
    }

    /// The reply to a decision request (a CloudEvent from hookbridge), and where to send it.
    ///
    /// # Errors
    /// When the request is not a hookbridge decision request.
    pub fn answer(&self, request: &[u8]) -> Result<(String, Vec<u8>), String> {
        let event: Value = serde_json::from_slice(request).map_err(|e| e.to_string())?;
        if event["hbversion"] != "2" {
            return Err(format!("request format {} is not 2", event["hbversion"]));
        }
        let id = event["id"].as_str().ok_or("request without id")?;
        let nonce = event["hbnonce"].as_str().ok_or("request without hbnonce")?;
        let reply_to = event["hbreplyto"]
            .as_str()
            .ok_or("request without hbreplyto")?;
        let (decision, reason) = self.decide(&event["data"]);
        let reply = json!({
            "version": 2, "id": id, "nonce": nonce, "decision": decision, "reason": reason,
            "decided_by": "example-policy", "mac": reply_mac(&self.secret, id, nonce, decision),
        });
        Ok((reply_to.to_owned(), reply.to_string().into_bytes()))
    }
}

/// Where requests come from.
#[derive(Debug, Clone)]
pub enum Broker {
    RabbitMq {
        url: String,
        requests: String,
    },
    /// `group`: the consumer group; replicas of the service share one.
    Kafka {
        brokers: String,
        requests: String,
        group: String,
    },
}

/// Serves until an error; `served` counts the requests answered.
///
/// # Errors
/// A broker error (the caller may restart it).
pub async fn run(broker: Broker, policy: Policy, served: Arc<AtomicUsize>) -> anyhow::Result<()> {
    match broker {
        Broker::RabbitMq { url, requests } => rabbit(&url, &requests, &policy, &served).await,
        Broker::Kafka {
            brokers,
            requests,
            group,
        } => kafka(&brokers, &requests, &group, &policy, &served).await,
    }
}

async fn rabbit(
    url: &str,
    requests: &str,
    policy: &Policy,
    served: &AtomicUsize,
) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel.basic_qos(16, BasicQosOptions::default()).await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(requests.into(), durable, FieldTable::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            requests.into(),
            "example-decision-service".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery?;
        match policy.answer(&delivery.data) {
            Ok((reply_to, reply)) => {
                let props = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_correlation_id(
                        delivery
                            .properties
                            .correlation_id()
                            .clone()
                            .unwrap_or_default(),
                    );
                channel
                    .basic_publish(
                        reply_to.as_str().into(),
                        "".into(),
                        BasicPublishOptions::default(),
                        &reply,
                        props,
                    )
                    .await?
                    .await?;
                served.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => eprintln!("decision-service: skipping a message: {e}"),
        }
        // Acknowledged after the reply is confirmed: a crash in between re-delivers the request.
        delivery.ack(BasicAckOptions::default()).await?;
    }
    anyhow::bail!("the request consumer ended")
}

async fn kafka(
    brokers: &str,
    requests: &str,
    group: &str,
    policy: &Policy,
    served: &AtomicUsize,
) -> anyhow::Result<()> {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        // A member that vanished without leaving holds its partitions this long.
        .set("session.timeout.ms", "10000")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[requests])?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .create()?;
    loop {
        let msg = consumer.recv().await?;
        match msg.payload().map(|p| policy.answer(p)) {
            Some(Ok((reply_to, reply))) => {
                let key = msg.key().map(<[u8]>::to_vec).unwrap_or_default();
                producer
                    .send(
                        FutureRecord::to(&reply_to).key(&key).payload(&reply),
                        Duration::from_secs(5),
                    )
                    .await
                    .map_err(|(e, _)| e)?;
                served.fetch_add(1, Ordering::SeqCst);
            }
            Some(Err(e)) => eprintln!("decision-service: skipping a message: {e}"),
            None => {}
        }
        // Committed after the reply is delivered: a crash in between re-delivers the request.
        // Async: a synchronous commit would block the runtime's thread.
        consumer.commit_message(&msg, CommitMode::Async)?;
    }
}
