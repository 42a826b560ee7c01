//! hookbridge: verified webhook and callback ingress that publishes CloudEvents to Kafka or
//! RabbitMQ, answering the provider only once the event is durable.
//!
//! # Layout
//! In data-flow order:
//! - [`server`]: accept loop (plain or [`tls`]), connection limits, peer address, drain.
//! - [`ingress`]: routes, body limits, the per-request pipeline, status mapping.
//! - [`verify`]: signature schemes over the raw body; the only maker of `VerifiedWebhook`.
//! - [`plan`]: what config makes of each source, and every request to it follows.
//! - [`normalize`]: event ID/type and the CloudEvents envelope.
//! - [`dedup`]: claims on (source, event ID), memory or Redis (one file each).
//! - [`callback`]: ok/deny decisions for Cobo callbacks (CEL rules, a decision service over the
//!   broker, remembered decisions).
//! - [`sink`]: file, Kafka and RabbitMQ backends behind one contract (durable before `Ok`).
//! - [`spool`]: the fsync'd local queue when a broker is slow or away, and its drainers.
//!
//! Around them: [`config`] (load + validate, all errors at once), [`app`] (wiring), [`send`]
//! (`hookbridge send`: a signed test event for a configured source), [`diagnose`] (`hookbridge
//! verify`: why a captured request verifies or not),
//! [`metrics`] (every metric name), [`audit`] (the per-request audit line), [`telemetry`]
//! (logging), [`shutdown`] (signals), [`probe`] (`hookbridge health`, the healthcheck client),
//! `supervisor` (the one reconnect loop every broker and
//! Redis connection runs under), `kv` (the Redis connection and millisecond durations that
//! dedup and the decision store share).

pub mod app;
pub mod audit;
pub mod callback;
pub mod config;
pub mod dedup;
pub mod diagnose;
pub mod ingress;
mod kv;
pub mod metrics;
pub mod normalize;
pub mod otel;
pub mod plan;
pub mod probe;
pub mod reload;
pub mod send;
pub mod server;
pub mod shutdown;
pub mod sink;
pub mod spool;
mod supervisor;
pub mod telemetry;
pub mod tls;
pub mod verify;
