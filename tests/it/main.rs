//! hookbridge's integration tests: one binary, one module per area.
//!
//! - `helpers`: spawn the app on 127.0.0.1:0, an HTTP client, and signers for every scheme.
//! - `cli`: `check-config` and `health` through the real binary.
//! - `verify`: `hookbridge verify` on captured requests, each failure class with its hint.
//! - `ingress`: every provider vector end to end through HTTP into the file sink.
//! - `handshake`: Slack's and Zoom's endpoint handshakes answered, never published.
//! - `shadow`: shadow mode (verify, count, accept and mark what fails).
//! - `providers`: the provider presets (GitHub, Shopify, Twilio, Zoom, Square, Paddle).
//! - `security`: TLS, proxies and allowlists, rate limits, replay, limits, attacks and metrics.
//! - `abuse`: the public endpoint under abuse: private admin routes, signature-list caps, the
//!   body budget, forwarding chains, provider-safe rate limits, idle connections.
//! - `kafka`, `rabbitmq`: the broker sinks against real brokers started by `scripts/test.sh`.
//! - `durability`: spool fallback and drain, ack modes, a full spool, Redis dedup, backpressure.
//! - `chaos`: broker restarts, SIGKILL, a cut connection, all under load (run serially).
//! - `fleet`: three replicas behind HAProxy: retries spread, kill -9, rolling restart (serial).
//! - `callback`: Cobo callbacks decided by rules and by the example decision service
//!   (RabbitMQ, Kafka), remembered decisions shared through Redis.
//! - `traces`: OpenTelemetry spans to a real OTLP/HTTP receiver, continued by the messages.
//! - `reload`: SIGHUP swaps the sources under load; bad files and sink changes refused.
//! - `process`: hookbridge as a process of its own (signals, restarts, replicas).
//! - `tap`, `proxy`: a durable RabbitMQ queue to count by message id; a TCP fault injector.

// Test code: a panic is how a test fails, and cleanup results do not matter.
#![allow(clippy::unwrap_used, clippy::let_underscore_must_use)]

mod abuse;
#[cfg(all(feature = "kafka", feature = "rabbitmq"))]
mod callback;
#[cfg(all(feature = "kafka", feature = "rabbitmq"))]
mod chaos;
mod cli;
/// The example decision service (`examples/decision-service`), driven in-process.
#[cfg(all(feature = "kafka", feature = "rabbitmq"))]
#[path = "../../examples/decision-service/service.rs"]
mod decision_service;
#[cfg(all(feature = "kafka", feature = "rabbitmq"))]
mod durability;
#[cfg(all(feature = "kafka", feature = "rabbitmq"))]
mod fleet;
mod handshake;
mod helpers;
mod ingress;
#[cfg(feature = "kafka")]
mod kafka;
mod process;
mod providers;
mod proxy;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;
#[cfg(all(feature = "kafka", feature = "rabbitmq"))]
mod reload;
mod security;
mod shadow;
#[cfg(feature = "rabbitmq")]
mod tap;
#[cfg(all(feature = "kafka", feature = "rabbitmq"))]
mod traces;
mod verify;
