//! `hookbridge-loadgen`: the load generator and broker/HTTP ceilings used by `bench/run.sh`, one
//! module per subcommand:
//!
//! - `run` ([`run`]): sends pre-signed webhooks ([`signed`]) over minimal keep-alive connections
//!   ([`conn`]), closed- or open-loop, and reports throughput and latency ([`measure`], [`plot`]),
//!   optionally counting what reached the broker ([`delivery`]).
//! - `ceiling-kafka`, `ceiling-rabbitmq`: a bare client publishing the same messages the way
//!   hookbridge does (rdkafka acks=all idempotent; lapin confirms pipelined over channels).
//! - `verify-ceiling`: Ed25519 verifications per second through hookbridge's verifier.
//! - `http-ceiling`: a minimal warp server answering 200 (optionally after hookbridge's
//!   signature check, and then a bare client's confirmed publish), for the HTTP floor and the
//!   broker paths' one-process floor.
//! - `amqp-bind` ([`amqp`]): the bench's RabbitMQ exchange and queue.
//!
//! Its output is parsed by `bench/run.sh` and `bench/report.py`: keep the lines and JSON fields.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod amqp;
mod ceiling;
mod conn;
mod delivery;
mod measure;
mod plot;
mod run;
mod signed;

use run::RunArgs;

#[derive(Parser)]
#[command(about = "Load generator and broker/HTTP ceilings for hookbridge benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// The doc comments here and on `RunArgs` are the `--help` text, written for a terminal.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Subcommand)]
enum Command {
    /// Send pre-signed webhooks and measure.
    Run(RunArgs),
    /// Bare rdkafka producer (idempotent, acks=all), same messages and key as hookbridge.
    CeilingKafka {
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 50_000)]
        messages: usize,
        #[arg(long, default_value_t = 256)]
        in_flight: usize,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Bare lapin publisher with confirms, pipelined over channels, persistent + mandatory.
    CeilingRabbitmq {
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        url: String,
        #[arg(long)]
        exchange: String,
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        #[arg(long, default_value_t = 256)]
        in_flight: usize,
        #[arg(long, default_value_t = 4)]
        channels: usize,
        #[arg(long)]
        out: Option<PathBuf>,
        /// Publish at this fixed rate (per second) and report confirm latency percentiles.
        #[arg(long)]
        rate: Option<u64>,
    },
    /// Cobo WaaS 2.0 (Ed25519) verifications per second on `threads` threads, for the
    /// verification ceiling.
    VerifyCeiling {
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value_t = 3)]
        secs: u64,
    },
    /// Declare a durable topic exchange and a durable queue bound to it with `#` (bench setup).
    AmqpBind {
        #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        url: String,
        #[arg(long)]
        exchange: String,
        #[arg(long)]
        queue: String,
        /// Delete the queue instead.
        #[arg(long)]
        delete: bool,
    },
    /// A minimal warp server answering 200 to POST /hooks/<any> after reading the body.
    HttpCeiling {
        #[arg(long, default_value = "127.0.0.1:8099")]
        listen: SocketAddr,
        /// Also verify each request's signature with the source of this hookbridge config named
        /// by the path (`/hooks/<source>`): the floor of "HTTP + the signature check".
        #[arg(long)]
        verify_with: Option<PathBuf>,
        /// Then append each verified body to this file (group commit: a `write` and an
        /// `fdatasync` per batch) and answer once synced: the floor of a file sink path.
        #[arg(long, conflicts_with_all = ["publish_kafka", "publish_rabbitmq"])]
        publish_file: Option<PathBuf>,
        /// Then publish each verified body to these Kafka brokers (rdkafka as hookbridge
        /// configures it) and answer once acked: the floor of a Kafka sink path.
        #[arg(long, requires = "topic", conflicts_with = "publish_rabbitmq")]
        publish_kafka: Option<String>,
        /// The topic for --publish-kafka.
        #[arg(long)]
        topic: Option<String>,
        /// Then publish each verified body to this RabbitMQ URL (lapin, confirms, persistent,
        /// mandatory) and answer once confirmed: the floor of a RabbitMQ sink path.
        #[arg(long, requires = "exchange")]
        publish_rabbitmq: Option<String>,
        /// The exchange for --publish-rabbitmq (a queue must be bound to it).
        #[arg(long)]
        exchange: Option<String>,
        /// Channels for --publish-rabbitmq, used round-robin.
        #[arg(long, default_value_t = 8)]
        channels: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = match &cli.command {
        Command::Run(args) if args.threads <= 1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?,
        _ => tokio::runtime::Runtime::new()?,
    };
    rt.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::CeilingKafka {
                brokers,
                topic,
                messages,
                in_flight,
                out,
            } => ceiling::kafka::run(&brokers, &topic, messages, in_flight, out.as_deref()).await,
            Command::CeilingRabbitmq {
                url,
                exchange,
                messages,
                in_flight,
                channels,
                out,
                rate,
            } => {
                ceiling::rabbitmq::run(
                    &url,
                    &exchange,
                    messages,
                    in_flight,
                    channels,
                    out.as_deref(),
                    rate,
                )
                .await
            }
            Command::HttpCeiling {
                listen,
                verify_with,
                publish_file,
                publish_kafka,
                topic,
                publish_rabbitmq,
                exchange,
                channels,
            } => {
                let publish = match (publish_kafka, topic, publish_rabbitmq, exchange) {
                    _ if publish_file.is_some() => publish_file.map(ceiling::http::Publish::File),
                    (Some(brokers), Some(topic), _, _) => {
                        Some(ceiling::http::Publish::Kafka { brokers, topic })
                    }
                    (_, _, Some(url), Some(exchange)) => Some(ceiling::http::Publish::Rabbitmq {
                        url,
                        exchange,
                        channels,
                    }),
                    _ => None,
                };
                ceiling::http::run(listen, verify_with.as_deref(), publish).await
            }
            Command::VerifyCeiling { threads, secs } => ceiling::verify::run(threads, secs),
            Command::AmqpBind {
                url,
                exchange,
                queue,
                delete,
            } => amqp::amqp_bind(&url, &exchange, &queue, delete).await,
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
