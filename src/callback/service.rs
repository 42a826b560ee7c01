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
//!   (`ingress::callback::on_reply`).
//! - **Every replica sees every reply**: on RabbitMQ each binds its own exclusive queue to the
//!   fanout exchange; on Kafka each reads all partitions from the end, without a consumer group.
//!   So the replica holding the request is woken whichever replica "got" the reply, and each
//!   records it in the shared store for retries that land elsewhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

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
    ready: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
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
        let ready = Arc::new(AtomicBool::new(false));
        let stop = watch::Sender::new(false);
        let inbox = Inbox {
            service: sink.name.clone(),
            via: source.into(),
            replies,
        };
        let transport = transport(spec, sink, inbox, &ready, &stop).await?;
        Ok(Self {
            label: sink.name.clone(),
            transport,
            ready,
            stop,
        })
    }

    /// The sink name, for logs and `decided_by`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Connected, and consuming replies.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
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

    pub fn close(&self) {
        // A watch, not a Notify: a supervisor between two waits still sees it.
        self.stop.send_replace(true);
        self.ready.store(false, Ordering::SeqCst);
    }
}

/// The transport for `sink`'s broker.
async fn transport(
    spec: &ServiceSpec,
    sink: &SinkSpec,
    replies: Inbox,
    ready: &Arc<AtomicBool>,
    stop: &watch::Sender<bool>,
) -> anyhow::Result<Transport> {
    let label = sink.name.clone();
    match &sink.kind {
        #[cfg(feature = "rabbitmq")]
        SinkKind::RabbitMq(r) => Ok(Transport::Rabbit(rabbit::start(
            label,
            r.url.clone(),
            spec.clone(),
            replies,
            Arc::clone(ready),
            stop.subscribe(),
        ))),
        #[cfg(feature = "kafka")]
        SinkKind::Kafka(k) => Ok(Transport::Kafka(
            kafka::start(
                label,
                k,
                spec.clone(),
                replies,
                Arc::clone(ready),
                stop.subscribe(),
            )
            .await?,
        )),
        #[allow(unreachable_patterns)]
        other => {
            let _ = (replies, spec, ready, stop, label);
            anyhow::bail!(
                "decision service on sink {}: a {} sink cannot carry requests and replies (or this build has no client for it)",
                sink.name,
                other.type_name()
            )
        }
    }
}

/// Resolves once `stop` says so (at once if it already has).
#[cfg(any(feature = "kafka", feature = "rabbitmq"))]
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // Err: the sender is gone, which also means stop.
    let _stopping = stop.wait_for(|s| *s).await;
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
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, RwLock};
    use std::time::Duration;

    use futures_util::StreamExt;
    use lapin::options::{
        BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::{FieldTable, ShortString};
    use lapin::{BasicProperties, Channel, Connection, Event, ExchangeKind};
    use tokio::sync::{Notify, watch};

    use super::{Inbox, Request, ServiceSpec, stopped};
    use crate::sink::PublishError;
    use crate::sink::rabbitmq::{confirmed, open};
    use crate::sink::spec::redact_url;

    pub struct Requests {
        channel: Arc<RwLock<Option<Channel>>>,
        queue: String,
        reply_to: String,
        /// Wakes the supervisor when a publish finds the channel closed.
        broken: Arc<Notify>,
    }

    pub fn start(
        label: String,
        url: String,
        spec: ServiceSpec,
        replies: Inbox,
        ready: Arc<AtomicBool>,
        stop: watch::Receiver<bool>,
    ) -> Requests {
        let channel = Arc::new(RwLock::new(None));
        let broken = Arc::new(Notify::new());
        tokio::spawn(supervise(
            label,
            url,
            spec.clone(),
            Arc::clone(&channel),
            replies,
            ready,
            Arc::clone(&broken),
            stop,
        ));
        Requests {
            channel,
            queue: spec.requests,
            reply_to: spec.replies,
            broken,
        }
    }

    impl Requests {
        pub async fn publish(&self, request: &Request) -> Result<(), PublishError> {
            let channel = self
                .channel
                .read()
                .ok()
                .and_then(|c| c.clone())
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
                    self.broken.notify_one();
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

    async fn connect(
        url: &str,
        spec: &ServiceSpec,
    ) -> anyhow::Result<(Connection, Channel, lapin::Consumer)> {
        let conn = open(url, "hookbridge-decisions").await?;
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
        Ok((conn, publish, consumer))
    }

    #[allow(clippy::too_many_arguments)]
    async fn supervise(
        label: String,
        url: String,
        spec: ServiceSpec,
        slot: Arc<RwLock<Option<Channel>>>,
        replies: Inbox,
        ready: Arc<AtomicBool>,
        broken: Arc<Notify>,
        mut stop: watch::Receiver<bool>,
    ) {
        let shown = redact_url(&url);
        let mut backoff = Duration::from_millis(100);
        loop {
            let connected = tokio::select! {
                c = connect(&url, &spec) => c,
                () = stopped(&mut stop) => return,
            };
            let (conn, channel, mut consumer) = match connected {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(service = %label, url = %shown, error = %e, "decision service connection failed");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stopped(&mut stop) => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            let mut events = conn.events_listener();
            if let Ok(mut s) = slot.write() {
                *s = Some(channel);
            }
            ready.store(true, Ordering::SeqCst);
            tracing::info!(service = %label, requests = %spec.requests, replies = %spec.replies, "decision service channel ready (RabbitMQ)");
            let stopping = loop {
                tokio::select! {
                    d = consumer.next() => match d {
                        Some(Ok(delivery)) => replies.forward(&delivery.data),
                        Some(Err(e)) => {
                            tracing::warn!(service = %label, error = %e, "decision reply consumer failed");
                            break false;
                        }
                        None => break false,
                    },
                    ev = events.next() => if matches!(ev, Some(Event::Error(_)) | None) {
                        tracing::warn!(service = %label, "decision service connection lost");
                        break false;
                    },
                    () = broken.notified() => {
                        tracing::warn!(service = %label, "decision request channel closed; reconnecting");
                        break false;
                    }
                    () = stopped(&mut stop) => break true,
                }
            };
            ready.store(false, Ordering::SeqCst);
            if let Ok(mut s) = slot.write() {
                *s = None;
            }
            if conn.status().connected()
                && let Err(e) = conn.close(200, "bye".into()).await
            {
                tracing::debug!(service = %label, error = %e, "closing the decision connection");
            }
            if stopping {
                return;
            }
            // A connection that keeps dropping is not reconnected in a tight loop.
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stopped(&mut stop) => return,
            }
        }
    }
}

#[cfg(feature = "kafka")]
mod kafka {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Header, Message, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    use tokio::sync::watch;

    use super::{Inbox, Request, ServiceSpec, stopped};
    use crate::sink::PublishError;
    use crate::sink::kafka::{client_config, create_topics};
    use crate::sink::spec::KafkaSpec;

    const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
    const PROBE_EVERY: Duration = Duration::from_secs(2);

    pub struct Requests {
        producer: FutureProducer,
        topic: String,
        reply_to: String,
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

    pub async fn start(
        label: String,
        sink: &KafkaSpec,
        spec: ServiceSpec,
        replies: Inbox,
        ready: Arc<AtomicBool>,
        stop: watch::Receiver<bool>,
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
        tokio::spawn(consume(
            label,
            sink.clone(),
            topics,
            spec.replies.clone(),
            Arc::new(consumer),
            replies,
            ready,
            stop,
        ));
        Ok(Requests {
            producer,
            topic: spec.requests,
            reply_to: spec.replies,
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

    #[allow(clippy::too_many_arguments)]
    async fn consume(
        label: String,
        sink: KafkaSpec,
        mut topics: Vec<String>,
        reply_topic: String,
        consumer: Arc<StreamConsumer>,
        replies: Inbox,
        ready: Arc<AtomicBool>,
        mut stop: watch::Receiver<bool>,
    ) {
        // Assignment needs the topic: create it first when asked to, then retry until it works.
        loop {
            if !topics.is_empty() {
                match create_topics(&sink, &topics).await {
                    Ok(()) => topics.clear(),
                    Err(e) => {
                        tracing::warn!(service = %label, error = %e, "creating decision topics failed; retrying")
                    }
                }
            }
            let c = Arc::clone(&consumer);
            let t = reply_topic.clone();
            let assigned = tokio::task::spawn_blocking(move || assign_at_end(&c, &t)).await;
            match assigned {
                // Assigned: the topics exist, whoever made them (creation may be forbidden).
                Ok(Ok(n)) => {
                    tracing::info!(service = %label, replies = %reply_topic, partitions = n, "decision service ready (Kafka)");
                    break;
                }
                Ok(Err(e)) => {
                    tracing::warn!(service = %label, error = %e, "decision replies not assignable yet")
                }
                _ => {}
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = stopped(&mut stop) => return,
            }
        }
        ready.store(true, Ordering::SeqCst);
        // librdkafka reconnects by itself; this probe only keeps `ready` (and `/readyz`) true
        // to what it can reach, as the Kafka sink's probe does.
        let mut probe = tokio::time::interval(PROBE_EVERY);
        loop {
            tokio::select! {
                _ = probe.tick() => {
                    let c = Arc::clone(&consumer);
                    let t = reply_topic.clone();
                    let reachable = tokio::task::spawn_blocking(move || {
                        c.fetch_metadata(Some(&t), METADATA_TIMEOUT).is_ok_and(|m| !m.brokers().is_empty())
                    })
                    .await
                    .unwrap_or(false);
                    if reachable != ready.swap(reachable, Ordering::SeqCst) {
                        tracing::warn!(service = %label, reachable, "decision service (Kafka) reachability changed");
                    }
                }
                m = consumer.recv() => match m {
                    Ok(msg) => {
                        if let Some(payload) = msg.payload() {
                            replies.forward(payload);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(service = %label, error = %e, "decision reply consumer error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                () = stopped(&mut stop) => return,
            }
        }
    }
}
