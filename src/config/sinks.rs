//! `[sinks.<name>]`: where events go. Checks each sink's settings (a Kafka sink's librdkafka
//! overrides, a RabbitMQ sink's URL and channel count, both templates) and turns them into the
//! [`SinkSpec`]s the sink module builds from.

use std::path::PathBuf;
use std::time::Duration;

use super::parse::valid_name;
use super::problems::{Problems, Scope};
use super::raw::RawSink;
use crate::sink::spec::{KafkaSpec, RabbitSpec, SinkKind, SinkSpec};

/// librdkafka settings that hookbridge sets itself: its delivery guarantee depends on them.
const KAFKA_OWN_SETTINGS: [&str; 5] = [
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "bootstrap.servers",
    "message.timeout.ms",
];

/// Reads `[sinks]`; without it, one file sink named `default` writes `data/events.jsonl`.
pub fn load(problems: &mut Problems, value: Option<toml::Value>) -> Vec<SinkSpec> {
    let table = match value {
        None => {
            return vec![SinkSpec {
                name: "default".to_owned(),
                kind: SinkKind::File {
                    path: PathBuf::from("data/events.jsonl"),
                },
            }];
        }
        Some(toml::Value::Table(t)) => t,
        Some(_) => {
            problems.error("sinks: must be a table of [sinks.<name>]");
            return Vec::new();
        }
    };
    let mut sinks = Vec::new();
    for (name, value) in table {
        let mut at = problems.at(format!("sinks.{name}"));
        if !valid_name(&name) {
            at.error_here("sink names may use a-z, 0-9, '-' and '_'");
            continue;
        }
        let Some(raw) = at.section::<RawSink>(value) else {
            continue;
        };
        let kind = build(&mut at, raw);
        sinks.push(SinkSpec { name, kind });
    }
    if sinks.is_empty() && problems.errors.is_empty() {
        problems.error("sinks: the table is empty; remove it to use the default file sink");
    }
    sinks
}

/// One sink's settings, checked; errors are recorded and the sink is still returned.
fn build(at: &mut Scope<'_>, raw: RawSink) -> SinkKind {
    match raw {
        RawSink::File { path } => SinkKind::File { path },
        RawSink::Kafka {
            brokers,
            topic,
            create_topics,
            partitions,
            message_timeout_ms,
            librdkafka,
        } => {
            if !cfg!(feature = "kafka") {
                at.error_here("this build of hookbridge has no Kafka support (feature \"kafka\")");
            }
            check_template(at, "topic", &topic);
            for key in librdkafka.keys() {
                if KAFKA_OWN_SETTINGS.contains(&key.as_str()) {
                    at.error(&format!("librdkafka.{key}"), "set by hookbridge (delivery guarantees depend on it); use the sink's own field if there is one");
                }
            }
            if partitions < 1 {
                at.error("partitions", "must be at least 1");
            }
            SinkKind::Kafka(KafkaSpec {
                brokers,
                topic,
                create_topics,
                partitions,
                message_timeout: Duration::from_millis(message_timeout_ms),
                librdkafka,
            })
        }
        RawSink::Rabbitmq {
            url,
            exchange,
            declare_exchange,
            routing_key,
            channels,
        } => {
            if !cfg!(feature = "rabbitmq") {
                at.error_here(
                    "this build of hookbridge has no RabbitMQ support (feature \"rabbitmq\")",
                );
            }
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                at.error("url", "must start with amqp:// or amqps://");
            }
            if channels == 0 || channels > 256 {
                at.error("channels", "must be between 1 and 256");
            }
            if exchange.is_empty() || exchange.len() > 255 {
                at.error("exchange", "must be 1 to 255 bytes");
            }
            check_template(at, "routing_key", &routing_key);
            SinkKind::RabbitMq(RabbitSpec {
                url,
                exchange,
                declare_exchange,
                routing_key,
                channels,
            })
        }
    }
}

/// A topic or routing key template may use `{source}` and `{type}` only.
fn check_template(at: &mut Scope<'_>, field: &str, template: &str) {
    let stripped = template.replace("{source}", "").replace("{type}", "");
    if stripped.contains('{') || stripped.contains('}') {
        at.error(
            field,
            "only {source} and {type} may be used in the template",
        );
    }
    if template.is_empty() {
        at.error(field, "must not be empty");
    }
}
