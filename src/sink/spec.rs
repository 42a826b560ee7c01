//! What a configured sink is: its name and broker settings, as config builds them. Secrets in
//! them (a password in a URL, SASL settings) never reach `Debug`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SinkSpec {
    pub name: String,
    pub kind: SinkKind,
}

#[derive(Debug, Clone)]
pub enum SinkKind {
    File { path: PathBuf },
    Kafka(KafkaSpec),
    RabbitMq(RabbitSpec),
}

impl SinkKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::File { .. } => "file",
            Self::Kafka(_) => "kafka",
            Self::RabbitMq(_) => "rabbitmq",
        }
    }
}

#[derive(Clone)]
pub struct KafkaSpec {
    pub brokers: String,
    pub topic: String,
    pub create_topics: bool,
    pub partitions: i32,
    pub message_timeout: Duration,
    /// librdkafka overrides; may hold SASL passwords, hence the redacting `Debug`.
    pub librdkafka: BTreeMap<String, String>,
}

impl fmt::Debug for KafkaSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSpec")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("librdkafka", &self.librdkafka.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct RabbitSpec {
    /// May carry a password: never logged (see [`RabbitSpec::redacted_url`]).
    pub url: String,
    pub exchange: String,
    pub declare_exchange: bool,
    pub routing_key: String,
    pub channels: usize,
}

impl RabbitSpec {
    /// The URL with any password replaced, for logs and the config summary.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl fmt::Debug for RabbitSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitSpec")
            .field("url", &self.redacted_url())
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .finish_non_exhaustive()
    }
}

/// `scheme://user:password@host` → `scheme://user:***@host`.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.rsplit_once('@')
    {
        let user = userinfo.split(':').next().unwrap_or("");
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}
