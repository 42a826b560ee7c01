//! `ceiling-kafka`: a bare rdkafka producer (idempotent, acks=all) publishing the same messages,
//! key and headers as hookbridge.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::measure::own_cpu;

pub async fn run(
    brokers: &str,
    topic: &str,
    n: usize,
    in_flight: usize,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let producer = producer(brokers)?;
    let bodies = super::messages(n);
    let started = Instant::now();
    let cpu_before = own_cpu();
    let results: Vec<bool> = futures_util::stream::iter(bodies.iter())
        .map(|(id, body)| send(&producer, topic, id, body))
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let ok = results.iter().filter(|r| **r).count();
    super::report(
        "kafka bare rdkafka (acks=all, idempotent)",
        ok,
        started.elapsed(),
        own_cpu().saturating_sub(cpu_before),
        out,
    )
}

/// A producer configured as hookbridge's Kafka sink configures its own.
pub fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    Ok(rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("partitioner", "murmur2_random")
        .create()?)
}

/// Publishes one message with the key and headers hookbridge gives it; whether it was acked.
pub async fn send(producer: &FutureProducer, topic: &str, id: &str, body: &[u8]) -> bool {
    let headers = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header {
            key: "ce_id",
            value: Some(id),
        })
        .insert(rdkafka::message::Header {
            key: "content-type",
            value: Some("application/cloudevents+json"),
        });
    let rec = FutureRecord::to(topic)
        .key(id)
        .payload(body)
        .headers(headers);
    producer.send(rec, Duration::from_secs(5)).await.is_ok()
}
