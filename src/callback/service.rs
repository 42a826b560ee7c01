//! Request-reply with the user's decision service, over the broker of one of the configured
//! sinks (its connection settings are reused; the connection is this module's own).
//!
//! - A decision request (format version 2) is a CloudEvent (`hookbridge.callback.decision_request`)
//!   whose `data` is the callback body byte for byte, with the decision key as its `id` (also the
//!   Kafka key, the AMQP `correlation_id` and `message_id`), the reply address in `hbreplyto`
//!   (also the AMQP `reply_to`), and `hbversion`, `hbnonce`, `hbcallbackid`, `hbbodysha256`.
//!   RabbitMQ: a durable queue declared here, persistent messages, publisher confirms. Kafka: a
//!   topic, `acks=all`.
//! - The service answers `{"version": 2, "id", "nonce", "decision": "ok"|"deny", "reason",
//!   "decided_by", "mac"}` to the reply address, where `mac` is the hex HMAC-SHA256, with the
//!   service's secret, of [`super::reply_mac_message`]. RabbitMQ: a fanout exchange; Kafka: a
//!   topic. This module only parses replies; whether one decides anything (the MAC, the nonce of
//!   the ask, the address it came to) is checked where the ask is known
//!   (`approve::on_reply`).
//! - **Every replica sees every reply**: on RabbitMQ each binds its own exclusive queue to the
//!   fanout exchange; on Kafka each reads all partitions from the end, without a consumer group.
//!   So the replica holding the request is woken whichever replica "got" the reply, and each
//!   records it in the shared store for retries that land elsewhere.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{Decision, ServiceSpec, Verdict};
use crate::sink::PublishError;
#[cfg(any(feature = "kafka", feature = "rabbitmq"))]
use crate::sink::spec::SinkKind;
use crate::sink::spec::SinkSpec;

/// A reply from a decision service, parsed but not yet believed.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The source whose decision service consumed it (the reply address it arrived on).
    pub via: Arc<str>,
    /// The decision key (`<source>:<callback id>:<body sha256>`).
    pub id: String,
    pub nonce: String,
    /// Hex HMAC-SHA256 over [`super::reply_mac_message`].
    pub mac: String,
    pub decision: Decision,
}

#[derive(Deserialize)]
struct RawReply {
    version: u64,
    id: String,
    nonce: String,
    decision: Verdict,
    mac: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    decided_by: Option<String>,
}

/// Longest reason kept from a reply (it is logged and published).
const MAX_REASON: usize = 1024;

/// Why a consumed payload is not even a candidate reply.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("not a version-2 decision reply: {0}")]
    Unparsable(String),
    #[error("decision reply format version {0}; this hookbridge speaks version 2")]
    Version(u64),
}

impl ReplyError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unparsable(_) => "unparsable",
            Self::Version(_) => "unsupported_version",
        }
    }
}

/// Parses a reply. Anything but `ok`/`deny` is refused: an unknown word must never approve.
///
/// # Errors
/// What is wrong with it.
pub fn parse_reply(payload: &[u8], service: &str, via: &Arc<str>) -> Result<Reply, ReplyError> {
    let raw: RawReply =
        serde_json::from_slice(payload).map_err(|e| ReplyError::Unparsable(e.to_string()))?;
    if raw.version != super::WIRE_VERSION {
        return Err(ReplyError::Version(raw.version));
    }
    if raw.id.is_empty() || raw.id.len() > 512 || raw.nonce.len() > 128 || raw.mac.len() > 128 {
        return Err(ReplyError::Unparsable(
            "id must be 1 to 512 bytes, nonce and mac at most 128".into(),
        ));
    }
    let mut reason = raw.reason;
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    let by = match raw.decided_by {
        Some(who) if !who.is_empty() => format!(
            "service:{service}/{}",
            who.chars()
                .filter(|c| !c.is_control())
                .take(128)
                .collect::<String>()
        ),
        _ => format!("service:{service}"),
    };
    Ok(Reply {
        via: Arc::clone(via),
        id: raw.id,
        nonce: raw.nonce,
        mac: raw.mac,
        decision: Decision::new(raw.decision, reason, by),
    })
}

/// A decision request, ready to publish.
pub struct Request {
    pub correlation_id: String,
    /// The CloudEvent (structured JSON).
    pub json: Bytes,
}

pub struct DecisionService {
    label: String,
    transport: Transport,
}

enum Transport {
    #[cfg(feature = "rabbitmq")]
    Rabbit(rabbit::Requests),
    #[cfg(feature = "kafka")]
    Kafka(kafka::Requests),
    /// Builds without broker clients have no transport; never constructed.
    #[cfg(not(any(feature = "kafka", feature = "rabbitmq")))]
    #[allow(dead_code)]
    Unavailable(std::convert::Infallible),
}

impl DecisionService {
    /// Starts the request publisher and the reply consumer (connecting in the background).
    /// Valid replies are sent to `replies`.
    ///
    /// # Errors
    /// When the sink is not a broker this build supports, or its client settings are invalid.
    pub async fn start(
        source: &str,
        spec: &ServiceSpec,
        sink: &SinkSpec,
        replies: mpsc::Sender<Reply>,
    ) -> anyhow::Result<Self> {
        let inbox = Inbox {
            service: sink.name.clone(),
            via: source.into(),
            replies,
        };
        Ok(Self {
            label: sink.name.clone(),
            transport: transport(spec, sink, inbox)?,
        })
    }

    /// The sink name, for logs and `decided_by`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Connected, and consuming replies.
    pub fn is_ready(&self) -> bool {
        match &self.transport {
            #[cfg(feature = "rabbitmq")]
            Transport::Rabbit(r) => r.link.is_ready(),
            #[cfg(feature = "kafka")]
            Transport::Kafka(k) => k.link.is_ready(),
            #[cfg(not(any(feature = "kafka", feature = "rabbitmq")))]
            Transport::Unavailable(never) => match *never {},
        }
    }

    /// Publishes a decision request; `Ok` once the broker has it.
    ///
    /// # Errors
    /// See [`PublishError`].
    pub async fn ask(&self, request: &Request) -> Result<(), PublishError> {
        if !self.is_ready() {
            return Err(PublishError::Unavailable(format!(
                "decision service on {} is not connected",
                self.label
            )));
        }
        match &self.transport {
            #[cfg(feature = "rabbitmq")]
            Transport::Rabbit(r) => r.publish(request).await,
            #[cfg(feature = "kafka")]
            Transport::Kafka(k) => k.publish(request).await,
            #[cfg(not(any(feature = "kafka", feature = "rabbitmq")))]
            Transport::Unavailable(never) => {
                let _ = request;
                match *never {}
            }
        }
    }

    /// Stops consuming replies and closes the connection.
    pub async fn close(&self) {
        match &self.transport {
            #[cfg(feature = "rabbitmq")]
            Transport::Rabbit(r) => r.link.stop().await,
            #[cfg(feature = "kafka")]
            Transport::Kafka(k) => k.link.stop().await,
            #[cfg(not(any(feature = "kafka", feature = "rabbitmq")))]
            Transport::Unavailable(never) => match *never {},
        }
    }
}

/// The transport for `sink`'s broker.
fn transport(spec: &ServiceSpec, sink: &SinkSpec, inbox: Inbox) -> anyhow::Result<Transport> {
    let label = sink.name.clone();
    match &sink.kind {
        #[cfg(feature = "rabbitmq")]
        SinkKind::RabbitMq(r) => Ok(Transport::Rabbit(rabbit::start(
            label,
            r.url.clone(),
            spec.clone(),
            inbox,
        ))),
        #[cfg(feature = "kafka")]
        SinkKind::Kafka(k) => Ok(Transport::Kafka(kafka::start(
            label,
            k,
            spec.clone(),
            inbox,
        )?)),
        #[allow(unreachable_patterns)]
        other => {
            let _ = (inbox, spec, label);
            anyhow::bail!(
                "decision service on sink {}: a {} sink cannot carry requests and replies (or this build has no client for it)",
                sink.name,
                other.type_name()
            )
        }
    }
}

/// Where one source's reply consumer hands what it reads.
// Builds without broker clients have no consumer to read it.
#[cfg_attr(not(any(feature = "kafka", feature = "rabbitmq")), allow(dead_code))]
pub struct Inbox {
    /// The sink name, for logs and `decided_by`.
    service: String,
    /// The source this consumer belongs to.
    via: Arc<str>,
    replies: mpsc::Sender<Reply>,
}

impl Inbox {
    /// Hands a consumed payload to the reply channel, or logs and counts why it was dropped.
    #[cfg(any(feature = "kafka", feature = "rabbitmq"))]
    fn forward(&self, payload: &[u8]) {
        let service = self.service.as_str();
        match parse_reply(payload, service, &self.via) {
            Ok(reply) => {
                if self.replies.try_send(reply).is_err() {
                    tracing::warn!(service, "decision reply dropped: the reply queue is full");
                }
            }
            Err(e) => {
                crate::metrics::reply_rejected(&self.via, e.reason());
                tracing::warn!(service, source = %self.via, reason = e.reason(), error = %e, "ignoring an invalid decision reply");
            }
        }
    }
}

#[cfg(feature = "rabbitmq")]
mod rabbit {
    use std::sync::Arc;

    use futures_util::StreamExt;
    use lapin::options::{
        BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::{FieldTable, ShortString};
    use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

    use super::{Inbox, Request, ServiceSpec};
    use crate::sink::PublishError;
    use crate::sink::rabbitmq::{Events, confirmed, lost, open};
    use crate::sink::spec::redact_url;
    use crate::supervisor::{self, Backoff, Connector, Link};

    pub struct Requests {
        /// The confirm-mode channel requests are published on.
        pub(super) link: Arc<Link<Channel>>,
        queue: String,
        reply_to: String,
    }

    pub fn start(label: String, url: String, spec: ServiceSpec, replies: Inbox) -> Requests {
        let (queue, reply_to) = (spec.requests.clone(), spec.replies.clone());
        let link = supervisor::supervise(
            Asking {
                label,
                url,
                spec,
                replies,
            },
            Backoff::BROKER,
        );
        Requests {
            link,
            queue,
            reply_to,
        }
    }

    impl Requests {
        pub async fn publish(&self, request: &Request) -> Result<(), PublishError> {
            let channel = self
                .link
                .get()
                .ok_or_else(|| PublishError::Unavailable("decision channel is down".into()))?;
            let id = ShortString::try_new(request.correlation_id.as_str())
                .map_err(|_| PublishError::Refused("correlation id over 255 bytes".into()))?;
            let props = BasicProperties::default()
                .with_message_id(id.clone())
                .with_correlation_id(id)
                .with_reply_to(self.reply_to.as_str().into())
                .with_content_type("application/cloudevents+json".into())
                .with_delivery_mode(2)
                .with_app_id("hookbridge".into());
            let unavailable = |e: lapin::Error| {
                if !channel.status().connected() {
                    self.link.report_broken(&channel);
                }
                PublishError::Unavailable(e.to_string())
            };
            let confirm = channel
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &request.json,
                    props,
                )
                .await
                .map_err(unavailable)?;
            let confirmation = confirm.await.map_err(unavailable)?;
            confirmed(confirmation, |_| {
                format!("decision request queue {} does not exist", self.queue)
            })
        }
    }

    /// The decision service's connection: a confirm-mode channel for requests (shared) and
    /// this replica's own exclusive queue on the reply exchange (held and consumed).
    struct Asking {
        label: String,
        url: String,
        spec: ServiceSpec,
        replies: Inbox,
    }

    type Held = (Connection, Events, lapin::Consumer);

    impl Connector for Asking {
        type Shared = Channel;
        type Held = Held;

        fn describe(&self) -> String {
            format!(
                "decision service on {} (RabbitMQ {}, requests {}, replies {})",
                self.label,
                redact_url(&self.url),
                self.spec.requests,
                self.spec.replies
            )
        }

        async fn connect(&mut self) -> anyhow::Result<(Channel, Held)> {
            let spec = &self.spec;
            let conn = open(&self.url, "hookbridge-decisions").await?;
            let events: Events = Box::pin(conn.events_listener());
            let publish = conn.create_channel().await?;
            publish
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let durable = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            publish
                .queue_declare(
                    spec.requests.as_str().into(),
                    durable,
                    FieldTable::default(),
                )
                .await?;
            let consume = conn.create_channel().await?;
            consume
                .exchange_declare(
                    spec.replies.as_str().into(),
                    ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let own = consume
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            consume
                .queue_bind(
                    own.name().clone(),
                    spec.replies.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let consumer = consume
                .basic_consume(
                    own.name().clone(),
                    "hookbridge-decisions".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        exclusive: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            Ok((publish, (conn, events, consumer)))
        }

        async fn hold(&mut self, _: &Arc<Channel>, held: &mut Held) -> String {
            let (_, events, consumer) = held;
            loop {
                tokio::select! {
                    d = consumer.next() => match d {
                        Some(Ok(delivery)) => self.replies.forward(&delivery.data),
                        Some(Err(e)) => return format!("decision reply consumer failed: {e}"),
                        None => return "decision reply consumer closed".to_owned(),
                    },
                    reason = lost(events) => return reason,
                }
            }
        }

        async fn close(&mut self, _: Arc<Channel>, (conn, _, _): Held, _stopping: bool) {
            if conn.status().connected()
                && let Err(e) = conn.close(200, "bye".into()).await
            {
                tracing::debug!(service = %self.label, error = %e, "closing the decision connection");
            }
        }
    }
}

#[cfg(feature = "kafka")]
mod kafka {
    use std::sync::Arc;
    use std::time::Duration;

    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Header, Message, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    use super::{Inbox, Request, ServiceSpec};
    use crate::sink::PublishError;
    use crate::sink::kafka::{client_config, create_topics};
    use crate::sink::spec::KafkaSpec;
    use crate::supervisor::{self, Backoff, Connector, Link};

    const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
    const PROBE_EVERY: Duration = Duration::from_secs(2);

    pub struct Requests {
        producer: FutureProducer,
        topic: String,
        reply_to: String,
        /// The reply consumer's supervisor; the producer reconnects by itself.
        pub(super) link: Arc<Link<()>>,
    }

    impl Requests {
        pub async fn publish(&self, request: &Request) -> Result<(), PublishError> {
            let headers = OwnedHeaders::new_with_capacity(4)
                .insert(Header {
                    key: "ce_id",
                    value: Some(request.correlation_id.as_str()),
                })
                .insert(Header {
                    key: "ce_type",
                    value: Some(super::super::REQUEST_TYPE),
                })
                .insert(Header {
                    key: "hbreplyto",
                    value: Some(self.reply_to.as_str()),
                })
                .insert(Header {
                    key: "content-type",
                    value: Some("application/cloudevents+json; charset=UTF-8"),
                });
            let record = FutureRecord::to(&self.topic)
                .key(request.correlation_id.as_str())
                .payload(request.json.as_ref())
                .headers(headers);
            self.producer
                .send(record, Duration::ZERO)
                .await
                .map(|_| ())
                .map_err(|(e, _)| PublishError::Unavailable(e.to_string()))
        }
    }

    pub fn start(
        label: String,
        sink: &KafkaSpec,
        spec: ServiceSpec,
        replies: Inbox,
    ) -> anyhow::Result<Requests> {
        let producer: FutureProducer = client_config(sink)
            .create()
            .map_err(|e| anyhow::anyhow!("decision service on {label}: {e}"))?;
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &sink.brokers);
        for (k, v) in &sink.librdkafka {
            // Connection and security settings carry over; producer tuning does not apply.
            if k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") {
                cfg.set(k, v);
            }
        }
        // No group: every replica reads every reply, from where the topic ends now.
        cfg.set(
            "group.id",
            format!("hookbridge-decisions-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("client.id", "hookbridge-decisions");
        let consumer: StreamConsumer = cfg
            .create()
            .map_err(|e| anyhow::anyhow!("decision service on {label}: {e}"))?;
        let topics = if sink.create_topics {
            vec![spec.requests.clone(), spec.replies.clone()]
        } else {
            Vec::new()
        };
        let link = supervisor::supervise(
            Consuming {
                label,
                sink: sink.clone(),
                topics,
                reply_topic: spec.replies.clone(),
                consumer: Arc::new(consumer),
                assigned: false,
                replies,
            },
            // As the Kafka sink: librdkafka reconnects; this is how often to look again.
            Backoff {
                min: Duration::from_millis(500),
                max: Duration::from_millis(500),
            },
        );
        Ok(Requests {
            producer,
            topic: spec.requests,
            reply_to: spec.replies,
            link,
        })
    }

    /// Assigns every partition of the reply topic at its current end.
    fn assign_at_end(consumer: &StreamConsumer, topic: &str) -> anyhow::Result<usize> {
        let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        anyhow::ensure!(
            !partitions.is_empty(),
            "reply topic {topic} has no partitions (does it exist?)"
        );
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            let (_low, high) = consumer.fetch_watermarks(topic, *p, METADATA_TIMEOUT)?;
            tpl.add_partition_offset(topic, *p, Offset::Offset(high))?;
        }
        consumer.assign(&tpl)?;
        Ok(partitions.len())
    }

    /// The reply consumer. Connected means: the reply topic is assigned (once, at its end;
    /// later reconnects keep the assignment, so no reply is skipped) and the cluster answers.
    struct Consuming {
        label: String,
        sink: KafkaSpec,
        /// Topics still to create (`create_topics`).
        topics: Vec<String>,
        reply_topic: String,
        consumer: Arc<StreamConsumer>,
        assigned: bool,
        replies: Inbox,
    }

    impl Consuming {
        /// Runs `f` on the consumer off the async threads (librdkafka's calls block).
        async fn blocking<T: Send + 'static>(
            &self,
            f: impl FnOnce(&StreamConsumer, &str) -> T + Send + 'static,
        ) -> Option<T> {
            let (c, t) = (Arc::clone(&self.consumer), self.reply_topic.clone());
            tokio::task::spawn_blocking(move || f(&c, &t)).await.ok()
        }

        async fn reachable(&self) -> bool {
            self.blocking(|c, t| {
                c.fetch_metadata(Some(t), METADATA_TIMEOUT)
                    .is_ok_and(|m| !m.brokers().is_empty())
            })
            .await
            .unwrap_or(false)
        }
    }

    impl Connector for Consuming {
        type Shared = ();
        type Held = ();

        fn describe(&self) -> String {
            format!(
                "decision service on {} (Kafka {}, replies {})",
                self.label, self.sink.brokers, self.reply_topic
            )
        }

        async fn connect(&mut self) -> anyhow::Result<((), ())> {
            // Assignment needs the topic: create it first when asked to.
            if !self.topics.is_empty() {
                match create_topics(&self.sink, &self.topics).await {
                    Ok(()) => self.topics.clear(),
                    // Assigning may still work: the topics may exist, whoever made them
                    // (creation may be forbidden).
                    Err(e) => {
                        tracing::warn!(service = %self.label, error = %e, "creating decision topics failed; retrying")
                    }
                }
            }
            if self.assigned {
                anyhow::ensure!(self.reachable().await, "no Kafka broker reachable");
            } else {
                let n = self
                    .blocking(assign_at_end)
                    .await
                    .unwrap_or_else(|| Err(anyhow::anyhow!("assignment task failed")))
                    .map_err(|e| e.context("decision replies not assignable yet"))?;
                tracing::info!(service = %self.label, replies = %self.reply_topic, partitions = n, "decision replies assigned");
                self.assigned = true;
            }
            Ok(((), ()))
        }

        async fn hold(&mut self, _: &Arc<()>, (): &mut ()) -> String {
            let mut probe = tokio::time::interval(PROBE_EVERY);
            probe.tick().await;
            loop {
                tokio::select! {
                    _ = probe.tick() => {
                        if !self.reachable().await {
                            return "no Kafka broker reachable".to_owned();
                        }
                    }
                    m = self.consumer.recv() => match m {
                        Ok(msg) => {
                            if let Some(payload) = msg.payload() {
                                self.replies.forward(payload);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(service = %self.label, error = %e, "decision reply consumer error");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    },
                }
            }
        }

        async fn close(&mut self, _: Arc<()>, (): (), _stopping: bool) {}
    }
}
