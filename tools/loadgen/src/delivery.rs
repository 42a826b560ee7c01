//! `run --check-kafka` / `--check-rabbitmq`: after a run, count what reached the broker, so a
//! 2xx that was not delivered shows up.

use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Distinct keys of this run (by ID prefix) on a topic other runs may share.
pub async fn count_kafka(
    brokers: &str,
    topic: &str,
    prefix: &str,
    want: usize,
) -> anyhow::Result<usize> {
    let (brokers, topic, prefix) = (brokers.to_owned(), topic.to_owned(), format!("{prefix}-"));
    tokio::task::spawn_blocking(move || {
        use rdkafka::Message as _;
        use rdkafka::consumer::{BaseConsumer, Consumer as _};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("loadgen-{}", uuid::Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()?;
        consumer.subscribe(&[&topic])?;
        let mut keys = HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut idle = Instant::now();
        while Instant::now() < deadline
            && !(keys.len() >= want && idle.elapsed() > Duration::from_secs(3))
        {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                if let Some(k) = m.key().filter(|k| k.starts_with(prefix.as_bytes())) {
                    keys.insert(k.to_vec());
                }
                idle = Instant::now();
            }
        }
        anyhow::Ok(keys.len())
    })
    .await?
}

/// Distinct message ids of this run (by ID prefix) in a queue other runs may share.
pub async fn count_rabbitmq(
    url: &str,
    queue: &str,
    prefix: &str,
    want: usize,
) -> anyhow::Result<usize> {
    let prefix = format!("{prefix}-");
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let mut ids = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut idle = Instant::now();
    while Instant::now() < deadline
        && !(ids.len() >= want && idle.elapsed() > Duration::from_secs(3))
    {
        match ch
            .basic_get(
                queue.into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await?
        {
            Some(m) => {
                let id = m
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                if id.starts_with(&prefix) {
                    ids.insert(id);
                }
                idle = Instant::now();
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    conn.close(200, "done".into()).await?;
    Ok(ids.len())
}
