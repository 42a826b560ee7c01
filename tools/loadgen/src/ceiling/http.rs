//! `http-ceiling`: a minimal warp server answering 200, for the HTTP floor; with
//! `--verify-with CONFIG`, it first checks each request's signature with hookbridge's verifier
//! for the source the path names (401 when it fails): the floor "minimal HTTP server + the
//! signature check" that hookbridge's CPU per request is set beside. With a [`Publish`] target
//! it then publishes the body with the bare broker client (or appends it durably to a file)
//! and answers only once the broker confirmed it (the file synced; 503 otherwise): the floor
//! of a sink path in one process, loaded the same way and at the same time as hookbridge
//! (`bench/interleaved.sh`), so the broker and the load generator share their core exactly as
//! they do while hookbridge is measured.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

/// Where the floor server publishes each verified body, if anywhere.
pub enum Publish {
    /// A file, appended and fsync'd in groups ([`super::file::Appender`]).
    File(std::path::PathBuf),
    /// Kafka brokers and topic (rdkafka, acks=all, idempotent: [`super::kafka::producer`]).
    Kafka { brokers: String, topic: String },
    /// RabbitMQ URL, exchange and channel count (lapin, confirms, persistent, mandatory).
    Rabbitmq {
        url: String,
        exchange: String,
        channels: usize,
    },
}

/// The connected client for a [`Publish`] target (one per server, so its size is no matter).
#[allow(clippy::large_enum_variant)]
enum Publisher {
    File(super::file::Appender),
    Kafka {
        producer: rdkafka::producer::FutureProducer,
        topic: String,
    },
    Rabbitmq {
        // Held: dropping the connection closes its channels.
        _conn: lapin::Connection,
        channels: Vec<lapin::Channel>,
        exchange: String,
    },
}

impl Publisher {
    async fn connect(target: Publish) -> anyhow::Result<Self> {
        Ok(match target {
            Publish::File(path) => Self::File(super::file::Appender::open(&path)?),
            Publish::Kafka { brokers, topic } => Self::Kafka {
                producer: super::kafka::producer(&brokers)?,
                topic,
            },
            Publish::Rabbitmq {
                url,
                exchange,
                channels,
            } => {
                let (conn, channels) = super::rabbitmq::connect(&url, channels).await?;
                Self::Rabbitmq {
                    _conn: conn,
                    channels,
                    exchange,
                }
            }
        })
    }

    /// Publishes `body`, the server's `n`-th, and waits for the broker (or the sync): whether
    /// it was acknowledged. A message gets a distinct key, as the provider's event IDs are.
    async fn publish(&self, n: usize, body: &Bytes) -> bool {
        match self {
            Self::File(appender) => appender.append(body.clone()).await,
            Self::Kafka { producer, topic } => {
                super::kafka::send(producer, topic, &format!("floor-{n}"), body).await
            }
            Self::Rabbitmq {
                channels, exchange, ..
            } => {
                let ch = &channels[n % channels.len()];
                super::rabbitmq::publish(ch, exchange, &format!("floor-{n}"), body).await
                    == Some(true)
            }
        }
    }
}

pub async fn run(
    listen: SocketAddr,
    verify_with: Option<&Path>,
    publish: Option<Publish>,
) -> anyhow::Result<()> {
    use warp::Filter as _;
    let sources: HashMap<String, hookbridge::plan::SourceSpec> = match verify_with {
        Some(path) => hookbridge::config::load_file(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            .sources
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect(),
        None => HashMap::new(),
    };
    let floor = Arc::new(Floor {
        sources,
        verify: verify_with.is_some(),
        publisher: match publish {
            Some(target) => Some(Publisher::connect(target).await?),
            None => None,
        },
        published: AtomicUsize::new(0),
    });
    // The ceiling server reads the whole body like any receiver must; content_length_limit
    // caps it, which is all this minimal server needs.
    #[allow(clippy::disallowed_methods)]
    let body = warp::body::content_length_limit(1 << 20).and(warp::body::bytes());
    let route = warp::post()
        .and(warp::path!("hooks" / String))
        .and(warp::header::headers_cloned())
        .and(body)
        .then(move |name: String, headers: HeaderMap, body: Bytes| {
            let floor = Arc::clone(&floor);
            async move {
                let status = floor.handle(&name, headers, body).await;
                warp::reply::with_status(
                    warp::reply::json(&serde_json::json!({ "status": "accepted" })),
                    status,
                )
            }
        });
    eprintln!("http ceiling server on {listen}");
    warp::serve(route).run(listen).await;
    Ok(())
}

/// What the floor server does with a request.
struct Floor {
    sources: HashMap<String, hookbridge::plan::SourceSpec>,
    verify: bool,
    publisher: Option<Publisher>,
    published: AtomicUsize,
}

impl Floor {
    async fn handle(&self, name: &str, headers: HeaderMap, body: Bytes) -> StatusCode {
        let ok = !self.verify
            || self.sources.get(name).is_some_and(|s| {
                let incoming = hookbridge::verify::IncomingWebhook {
                    headers,
                    body: body.clone(),
                };
                s.verifier.verify(incoming, SystemTime::now()).is_ok()
            });
        match (&self.publisher, ok) {
            (_, false) => StatusCode::UNAUTHORIZED,
            (None, true) => StatusCode::OK,
            (Some(p), true) => {
                let n = self.published.fetch_add(1, Ordering::Relaxed);
                if p.publish(n, &body).await {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }
    }
}
