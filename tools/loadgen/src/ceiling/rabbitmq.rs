//! `ceiling-rabbitmq`: a bare lapin publisher with confirms, pipelined over channels, persistent
//! and mandatory as hookbridge publishes; at a fixed rate it also reports confirm latency.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures_util::StreamExt as _;
use hdrhistogram::Histogram;

use crate::amqp::amqp_bind;
use crate::measure::{due, histogram, interval, micros_since, own_cpu};

pub async fn run(
    url: &str,
    exchange: &str,
    n: usize,
    in_flight: usize,
    channels: usize,
    out: Option<&Path>,
    rate: Option<u64>,
) -> anyhow::Result<()> {
    let (_conn, chans) = connect(url, channels).await?;
    // A durable queue bound to the exchange, so every message is routed and persisted (an
    // unroutable publish is returned without being stored, which would fake a ceiling).
    let queue = format!("{exchange}-ceiling-{}", uuid::Uuid::new_v4().simple());
    amqp_bind(url, exchange, &queue, false).await?;
    let bodies = super::messages(n);
    let counter = AtomicUsize::new(0);
    let hist = Mutex::new(histogram()?);
    let interval = interval(rate);
    let started = Instant::now();
    let cpu_before = own_cpu();
    let results: Vec<bool> = futures_util::stream::iter(bodies.iter().enumerate())
        .map(|(i, (id, body))| {
            let ch = &chans[counter.fetch_add(1, Ordering::Relaxed) % chans.len()];
            let hist = &hist;
            async move {
                // Fixed rate: latency from the scheduled send time to the confirm.
                let due = due(started, interval, i).await;
                let Some(acked) = publish(ch, exchange, id, body).await else {
                    return false;
                };
                if let Ok(mut h) = hist.lock() {
                    h.saturating_record(micros_since(due));
                }
                acked
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let ok = results.iter().filter(|r| **r).count();
    let (elapsed, cpu) = (started.elapsed(), own_cpu().saturating_sub(cpu_before));
    amqp_bind(url, exchange, &queue, true).await?;
    if let (Some(r), Ok(h)) = (rate, hist.lock()) {
        print_confirm_latency(r, &h);
    }
    super::report(
        &format!("rabbitmq bare lapin ({in_flight} in flight, {channels} channels)"),
        ok,
        elapsed,
        cpu,
        out,
    )
}

/// A connection and `channels` confirm-mode channels on it (the connection must be kept: its
/// drop closes the channels).
pub async fn connect(
    url: &str,
    channels: usize,
) -> anyhow::Result<(lapin::Connection, Vec<lapin::Channel>)> {
    use lapin::options::ConfirmSelectOptions;
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let mut chans = Vec::new();
    for _ in 0..channels.max(1) {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        chans.push(ch);
    }
    Ok((conn, chans))
}

/// Publishes one message as hookbridge does and waits for its confirm: `None` if the publish
/// itself failed, else whether the broker acknowledged it (a `basic.return` is not an ack).
pub async fn publish(ch: &lapin::Channel, exchange: &str, id: &str, body: &[u8]) -> Option<bool> {
    use lapin::options::BasicPublishOptions;
    let props = lapin::BasicProperties::default()
        .with_message_id(id.into())
        .with_delivery_mode(2)
        .with_content_type("application/cloudevents+json".into());
    let confirm = ch
        .basic_publish(
            exchange.into(),
            "cobo.wallets.transaction.succeeded".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            props,
        )
        .await
        .ok()?;
    Some(matches!(confirm.await, Ok(lapin::Confirmation::Ack(None))))
}

fn print_confirm_latency(rate: u64, h: &Histogram<u64>) {
    let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
    println!(
        "rabbitmq bare lapin at {rate}/s: confirm latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        h.max() as f64 / 1000.0
    );
}
