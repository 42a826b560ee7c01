//! An example decision service for hookbridge's approval callbacks (`default = "ask"`).
//!
//! ```text
//! export DECISION_SERVICE_SECRET=...   # the same as the source's decision.service.secret
//! cargo run --example decision-service -- --rabbitmq amqp://guest:guest@127.0.0.1:5672/%2f \
//!     --deny-id 760a1955-e212-4dfb-a8d0-e66312a1a051 --max-amount 100000
//! cargo run --example decision-service -- --kafka 127.0.0.1:9092 --max-amount 100000
//! ```
//!
//! It approves a callback unless one of its IDs is on the deny list or its `amount` is over the
//! limit. A real service would check the withdrawal against its own records (was it requested
//! by us? to a known address? within the user's limits?).

mod service;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Example decision service for hookbridge approval callbacks")]
struct Args {
    /// RabbitMQ URL (requests from a durable queue, replies to the fanout exchange named in each request).
    #[arg(long, conflicts_with = "kafka", required_unless_present = "kafka")]
    rabbitmq: Option<String>,
    /// Kafka bootstrap servers (requests from a topic, replies to the topic named in each request).
    #[arg(long)]
    kafka: Option<String>,
    /// The queue or topic hookbridge publishes requests to (`decision.service.requests`).
    #[arg(long, default_value = "hookbridge.decisions")]
    requests: String,
    /// Kafka consumer group (replicas of this service share it).
    #[arg(long, default_value = "hookbridge-decision-service")]
    group: String,
    /// Deny callbacks with this transaction_id, request_id or cobo_id (repeatable).
    #[arg(long = "deny-id")]
    deny_ids: Vec<String>,
    /// Deny callbacks whose amount is larger than this.
    #[arg(long)]
    max_amount: Option<f64>,
    /// The secret shared with hookbridge (`decision.service.secret`): replies are MAC'd with it.
    #[arg(long, env = "DECISION_SERVICE_SECRET", hide_env_values = true)]
    secret: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let broker = match (args.rabbitmq, args.kafka) {
        (Some(url), _) => service::Broker::RabbitMq {
            url,
            requests: args.requests,
        },
        (None, Some(brokers)) => service::Broker::Kafka {
            brokers,
            requests: args.requests,
            group: args.group,
        },
        (None, None) => anyhow::bail!("--rabbitmq or --kafka is required"),
    };
    let policy = service::Policy {
        deny_ids: args.deny_ids,
        max_amount: args.max_amount,
        secret: args.secret.into_bytes(),
    };
    // Not the broker URL: it may carry a password.
    eprintln!("decision-service: answering requests with {policy:?}");
    service::run(broker, policy, Arc::new(AtomicUsize::new(0))).await
}
