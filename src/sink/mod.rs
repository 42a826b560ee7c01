//! Sinks take responsibility for [`Envelope`]s. The contract every backend keeps:
//!
//! - [`Sink::publish`] resolves `Ok` only once the event is durable: fsync'd (file), in the
//!   broker's delivery report with `acks=all` (Kafka), or publisher-confirmed with no return
//!   (RabbitMQ). The caller answers 2xx only after that.
//! - Errors say whether the sink is away ([`PublishError::Unavailable`], worth a retry later) or
//!   refused this event ([`PublishError::Refused`]: Nack, unroutable, rejected by the broker).
//! - [`Sink::is_ready`] is cheap and reflects the last known connection state; `/readyz` uses it.
//! - Publishing never waits without bound inside a sink's own code; callers still put a
//!   deadline around it (`ack_deadline_ms`).
//!
//! Each backend reconnects on its own; none needs a restart after its broker comes back.

mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
pub mod spec;

use std::collections::HashMap;
use std::sync::Arc;

pub use self::spec::{SinkKind, SinkSpec};
use crate::normalize::Envelope;
use crate::plan::SourceSpec;

pub use self::file::FileSink;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("sink unavailable: {0}")]
    Unavailable(String),
    #[error("event refused: {0}")]
    Refused(String),
}

impl PublishError {
    /// Reason code for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "broker_unavailable",
            Self::Refused(_) => "broker_refused",
        }
    }
}

pub enum Sink {
    File(FileSink),
    #[cfg(feature = "kafka")]
    Kafka(kafka::KafkaSink),
    #[cfg(feature = "rabbitmq")]
    RabbitMq(rabbitmq::RabbitSink),
}

impl Sink {
    /// Starts a sink. Broker sinks start even when their broker is down (not ready, reconnecting
    /// in the background); only a local problem (unwritable file, invalid client settings) fails.
    ///
    /// # Errors
    /// When the sink cannot work at all with this configuration.
    pub async fn start(spec: &SinkSpec, sources: &[&SourceSpec]) -> anyhow::Result<Self> {
        match &spec.kind {
            SinkKind::File { path } => Ok(Self::File(FileSink::open(path)?)),
            #[cfg(feature = "kafka")]
            SinkKind::Kafka(k) => Ok(Self::Kafka(
                kafka::KafkaSink::start(&spec.name, k, sources).await?,
            )),
            #[cfg(feature = "rabbitmq")]
            SinkKind::RabbitMq(r) => Ok(Self::RabbitMq(rabbitmq::RabbitSink::start(&spec.name, r))),
            #[allow(unreachable_patterns)]
            _ => {
                let _ = sources;
                anyhow::bail!(
                    "sink {}: this build does not include {} support",
                    spec.name,
                    spec.kind.type_name()
                )
            }
        }
    }

    /// # Errors
    /// See the module contract.
    pub async fn publish(&self, envelope: &Envelope) -> Result<(), PublishError> {
        match self {
            Self::File(s) => s.publish(envelope).await,
            #[cfg(feature = "kafka")]
            Self::Kafka(s) => s.publish(envelope).await,
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(s) => s.publish(envelope).await,
        }
    }

    pub fn is_ready(&self) -> bool {
        match self {
            Self::File(s) => s.is_ready(),
            #[cfg(feature = "kafka")]
            Self::Kafka(s) => s.is_ready(),
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(s) => s.is_ready(),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            #[cfg(feature = "kafka")]
            Self::Kafka(_) => "kafka",
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(_) => "rabbitmq",
        }
    }

    /// Flushes what is in flight and stops background tasks; bounded by the caller.
    pub async fn close(&self) {
        match self {
            Self::File(s) => s.close().await,
            #[cfg(feature = "kafka")]
            Self::Kafka(s) => s.close().await,
            #[cfg(feature = "rabbitmq")]
            Self::RabbitMq(s) => s.close().await,
        }
    }
}

/// Every configured sink by name.
#[derive(Clone, Default)]
pub struct Sinks(HashMap<String, Arc<Sink>>);

impl Sinks {
    /// # Errors
    /// The first sink that cannot start.
    pub async fn start(specs: &[SinkSpec], sources: &[SourceSpec]) -> anyhow::Result<Self> {
        let mut map = HashMap::new();
        for spec in specs {
            let users: Vec<&SourceSpec> = sources.iter().filter(|s| s.sink == spec.name).collect();
            map.insert(
                spec.name.clone(),
                Arc::new(Sink::start(spec, &users).await?),
            );
        }
        Ok(Self(map))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Sink>> {
        self.0.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Arc<Sink>)> {
        self.0.iter()
    }

    pub fn all_ready(&self) -> bool {
        self.0.values().all(|s| s.is_ready())
    }
}

/// Expands `{source}` and `{type}` in a topic or routing-key template.
pub fn render_template(template: &str, envelope: &Envelope) -> String {
    template
        .replace("{source}", envelope.source_name())
        .replace("{type}", envelope.event_type())
}
