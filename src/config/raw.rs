//! The TOML file as serde sees it. Every field's doc comment is operator documentation (mirrored
//! in `docs/configuration.md`). These types hold secrets as plain strings only until
//! [`super::load`] turns them into verifiers; none of them implements `Debug`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::verify::Encoding;

/// `[server]`: the HTTP listener and its limits.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address to listen on. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Default body limit for every source, in bytes. Default 1 MiB.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Time allowed to receive a whole request body, in ms. Default 10 000.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_ms: u64,
    /// Time allowed to receive the request line and headers, in ms. Default 5 000.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: u64,
    /// Most headers a request may carry. Default 64.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Most open client connections; further connections wait in the kernel backlog. Default 4 096.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most open connections from one client address (IPv6: one /64); trusted proxies are
    /// exempt. Default 256.
    #[serde(default = "default_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// A connection with no request in progress for this long is closed (HTTP/1 keep-alive;
    /// HTTP/2 with no open stream, by GOAWAY), in ms. Default 60 000.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// A connection older than this is asked to close once its requests finish (HTTP/2
    /// GOAWAY, HTTP/1 `Connection: close`), in ms; 0 turns it off. Default 600 000.
    #[serde(default = "default_max_connection_age")]
    pub max_connection_age_ms: u64,
    /// HTTP/2 keep-alive PING interval, in ms; a PING unanswered for `http2_keepalive_timeout_ms`
    /// closes the connection. Defaults 20 000 and 10 000.
    #[serde(default = "default_h2_ping")]
    pub http2_keepalive_interval_ms: u64,
    #[serde(default = "default_h2_ping_timeout")]
    pub http2_keepalive_timeout_ms: u64,
    /// Most concurrent HTTP/2 streams per connection. Default 64.
    #[serde(default = "default_h2_streams")]
    pub http2_max_concurrent_streams: u32,
    /// How long shutdown may take before open requests are abandoned, in ms. Default 10 000.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_ms: u64,
    /// Largest request head (request line + headers), in bytes; at least 8 192. Default 16 384.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Serve HTTPS with these PEM files (reloaded on SIGHUP).
    pub tls: Option<RawTls>,
    /// Refuse requests that did not arrive over TLS: either `tls` is set, or every request comes
    /// through a trusted proxy that says `X-Forwarded-Proto: https`. Default false.
    #[serde(default)]
    pub require_tls: bool,
    /// Peers (CIDR) whose forwarding header is believed. Default none.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The header those proxies set: `x-forwarded-for` (with `X-Forwarded-Proto`) or
    /// `forwarded` (RFC 7239). Required with `trusted_proxies`; the other is ignored.
    pub forwarded_header: Option<crate::ingress::client::ForwardedHeader>,
    /// Per-client rate buckets key IPv6 clients by this prefix length. Default 64.
    #[serde(default = "default_ipv6_prefix")]
    pub rate_limit_ipv6_prefix: u8,
    /// Most clients with a rate bucket of their own per source; past it new clients share one.
    /// Default 100 000.
    #[serde(default = "default_rate_clients")]
    pub max_rate_limited_clients: usize,
    /// Serve `/readyz` and `/metrics` (and `/healthz`) on this address instead of the main
    /// listener.
    pub admin_listen: Option<SocketAddr>,
    /// Serve `/readyz` and `/metrics` on a main listener that is not loopback (they name the
    /// sources and sinks and count decisions per source). Default false: without
    /// `admin_listen`, only a loopback main listener serves them.
    #[serde(default)]
    pub expose_admin_routes: bool,
    /// Most bytes of request bodies being read and verified at once, over all requests; beyond
    /// it, 503 `body_budget` + Retry-After. At least every source's `max_body_bytes`.
    /// Default 64 MiB.
    #[serde(default = "default_body_budget")]
    pub max_body_buffer_bytes: usize,
    /// Most requests handled at once; beyond it, 503 + Retry-After at once. Default 4 096.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
}

const fn default_max_in_flight() -> usize {
    4096
}

/// `[spool]`: the local durable queue used when a broker does not confirm in time.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpool {
    /// Default: on when any Kafka or RabbitMQ sink is configured.
    pub enabled: Option<bool>,
    /// The spool file. Default `data/spool.redb`.
    #[serde(default = "default_spool_path")]
    pub path: PathBuf,
    /// Bytes of events the spool may hold; beyond it, 503. Default 1 GiB.
    #[serde(default = "default_spool_bytes")]
    pub max_bytes: u64,
}

impl Default for RawSpool {
    fn default() -> Self {
        Self {
            enabled: None,
            path: default_spool_path(),
            max_bytes: default_spool_bytes(),
        }
    }
}

fn default_spool_path() -> PathBuf {
    PathBuf::from("data/spool.redb")
}
const fn default_spool_bytes() -> u64 {
    1024 * 1024 * 1024
}

/// `[dedup]`: where claims on (source, event ID) live.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDedup {
    /// `memory` (default; one replica) or `redis` (shared by all replicas).
    #[serde(default)]
    pub backend: DedupBackend,
    /// For `redis`: e.g. `redis://127.0.0.1:6379/0`.
    pub redis_url: Option<String>,
    /// How long an event ID is remembered, in seconds. Default 604 800 (7 days).
    #[serde(default = "default_dedup_ttl")]
    pub ttl_secs: u64,
    /// For `memory`: most event IDs remembered. Default 1 000 000.
    #[serde(default = "default_dedup_entries")]
    pub max_entries: u64,
    /// For `redis`: key prefix. Default `hookbridge:dedup:`.
    #[serde(default = "default_dedup_prefix")]
    pub key_prefix: String,
}

impl Default for RawDedup {
    fn default() -> Self {
        Self {
            backend: DedupBackend::Memory,
            redis_url: None,
            ttl_secs: default_dedup_ttl(),
            max_entries: default_dedup_entries(),
            key_prefix: default_dedup_prefix(),
        }
    }
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum DedupBackend {
    #[default]
    Memory,
    Redis,
}

const fn default_dedup_ttl() -> u64 {
    7 * 24 * 3600
}
const fn default_dedup_entries() -> u64 {
    1_000_000
}
fn default_dedup_prefix() -> String {
    "hookbridge:dedup:".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// `[audit]`: the one-line-per-request audit log.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// `stdout` (default, mixed with the service log), `file`, or `off`.
    #[serde(default)]
    pub output: AuditOutput,
    /// File for `output = "file"` (appended, JSON lines).
    pub path: Option<PathBuf>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutput {
    #[default]
    Stdout,
    File,
    Off,
}

/// A token bucket: `per_second` sustained, `burst` at once (default: `per_second`).
#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    pub per_second: u32,
    pub burst: Option<u32>,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_max_body(),
            body_timeout_ms: default_body_timeout(),
            header_timeout_ms: default_header_timeout(),
            max_headers: default_max_headers(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_connections_per_ip(),
            idle_timeout_ms: default_idle_timeout(),
            max_connection_age_ms: default_max_connection_age(),
            http2_keepalive_interval_ms: default_h2_ping(),
            http2_keepalive_timeout_ms: default_h2_ping_timeout(),
            http2_max_concurrent_streams: default_h2_streams(),
            shutdown_timeout_ms: default_shutdown_timeout(),
            max_header_bytes: default_max_header_bytes(),
            tls: None,
            require_tls: false,
            trusted_proxies: Vec::new(),
            forwarded_header: None,
            rate_limit_ipv6_prefix: default_ipv6_prefix(),
            max_rate_limited_clients: default_rate_clients(),
            max_body_buffer_bytes: default_body_budget(),
            admin_listen: None,
            expose_admin_routes: false,
            max_in_flight: default_max_in_flight(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
const fn default_max_body() -> usize {
    1024 * 1024
}
const fn default_body_timeout() -> u64 {
    10_000
}
const fn default_header_timeout() -> u64 {
    5_000
}
const fn default_max_headers() -> usize {
    64
}
const fn default_connections_per_ip() -> usize {
    256
}
const fn default_idle_timeout() -> u64 {
    60_000
}
const fn default_max_connection_age() -> u64 {
    600_000
}
const fn default_h2_ping() -> u64 {
    20_000
}
const fn default_h2_ping_timeout() -> u64 {
    10_000
}
const fn default_h2_streams() -> u32 {
    64
}
const fn default_max_connections() -> usize {
    4096
}
const fn default_shutdown_timeout() -> u64 {
    10_000
}
const fn default_max_header_bytes() -> usize {
    16 * 1024
}

/// `[sinks.<name>]`: where events go. Without any `[sinks]` table a file sink named `default`
/// writes `data/events.jsonl`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum RawSink {
    /// Append-only JSON Lines file, fsync'd before the 2xx.
    File {
        /// File to append to; created with its parent directories.
        path: PathBuf,
    },
    /// Kafka through librdkafka: idempotent producer, `acks=all`.
    Kafka {
        /// `bootstrap.servers`, comma-separated `host:port`.
        brokers: String,
        /// Topic template: `{source}` and `{type}` are replaced. Default `hookbridge.{source}`.
        #[serde(default = "default_topic")]
        topic: String,
        /// Create missing topics at startup for every source using this sink. Default false:
        /// production clusters usually manage topics themselves.
        #[serde(default)]
        create_topics: bool,
        /// Partitions for topics created by `create_topics`. Default 3.
        #[serde(default = "default_partitions")]
        partitions: i32,
        /// librdkafka `message.timeout.ms`: how long a message may wait for delivery. Default 30 000.
        #[serde(default = "default_message_timeout")]
        message_timeout_ms: u64,
        /// Extra librdkafka properties (security.protocol, sasl.*, ssl.*, linger.ms, …).
        /// Settings that would weaken delivery (acks, enable.idempotence) are refused.
        #[serde(default)]
        librdkafka: BTreeMap<String, String>,
    },
    /// RabbitMQ through lapin: publisher confirms, persistent messages, mandatory routing.
    Rabbitmq {
        /// AMQP URI, e.g. `amqp://user:pass@host:5672/%2f` (`amqps://` for TLS).
        url: String,
        /// Topic exchange to publish to. Default `hookbridge`.
        #[serde(default = "default_exchange")]
        exchange: String,
        /// Declare the exchange (durable, topic) at connect; when false it must already exist
        /// and is checked with a passive declare. Default true.
        #[serde(default = "default_true")]
        declare_exchange: bool,
        /// Routing key template: `{source}` and `{type}` are replaced. Default `{source}.{type}`.
        #[serde(default = "default_routing_key")]
        routing_key: String,
        /// Channels in the publishing pool; confirms are pipelined on each. Default 4.
        #[serde(default = "default_channels")]
        channels: usize,
    },
}

fn default_topic() -> String {
    "hookbridge.{source}".to_owned()
}
const fn default_partitions() -> i32 {
    3
}
const fn default_message_timeout() -> u64 {
    30_000
}
fn default_exchange() -> String {
    "hookbridge".to_owned()
}
fn default_routing_key() -> String {
    "{source}.{type}".to_owned()
}
const fn default_channels() -> usize {
    4
}
const fn default_true() -> bool {
    true
}
const fn default_body_budget() -> usize {
    64 << 20
}
const fn default_ipv6_prefix() -> u8 {
    64
}
const fn default_rate_clients() -> usize {
    100_000
}

/// Where a source's requests come from and how to prove it.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawKind {
    /// Answered 200 once the event is durable.
    #[default]
    Webhook,
    /// A Cobo callback, answered with a plain-text `ok` or `deny`; needs `purpose`.
    Callback,
}

/// What a callback source is for. Explicit, because `ok` means "received" for one and
/// "approved" for the other.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum RawPurpose {
    /// `ok` approves (withdrawal confirmation, WaaS 2.0 callback): needs `[…decision]`.
    Approval,
    /// `ok` acknowledges a durable event (WaaS 1.0 transaction notification).
    Notification,
}

/// `[sources.<name>.decision]`: how an approval callback is decided.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDecision {
    /// Rules tried in order; the first whose `when` is true decides.
    #[serde(default)]
    pub rules: Vec<RawRule>,
    /// When no rule matches: `ok`, `deny`, or `ask` (the decision service). Required.
    pub default: RawDefault,
    /// Most work one rule may do on one callback: its size × the body's size raised to one more
    /// than its macro nesting. Over it, the rule is not run and the callback is denied.
    /// Default 1 000 000.
    #[serde(default = "default_rule_budget")]
    pub rule_budget: u64,
    /// The decision service, for `default = "ask"`.
    pub service: Option<RawService>,
    /// Longest wait for the decision service, in ms. Default 1 500 (Cobo waits 2 s).
    #[serde(default = "default_decision_timeout")]
    pub timeout_ms: u64,
    /// `retry` (default: 503, Cobo retries) or `deny` when the service does not answer in time.
    #[serde(default)]
    pub on_timeout: crate::callback::OnTimeout,
    /// `reject` (default: 401) or `deny` (200 `deny`) for a request whose signature fails.
    #[serde(default)]
    pub on_bad_signature: RawBadSignature,
}

const fn default_rule_budget() -> u64 {
    crate::callback::rules::DEFAULT_BUDGET
}
const fn default_decision_timeout() -> u64 {
    1_500
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum RawDefault {
    Ok,
    Deny,
    Ask,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "lowercase")]
pub enum RawBadSignature {
    #[default]
    Reject,
    Deny,
}

/// One policy rule: `{ name = "…", when = "<CEL>", decision = "ok" | "deny", reason = "…" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    pub when: String,
    pub decision: crate::callback::Verdict,
    pub reason: Option<String>,
}

/// `service = { sink = "…", requests = "…", replies = "…" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// A Kafka or RabbitMQ sink whose connection settings are used.
    pub sink: String,
    /// Kafka topic / RabbitMQ queue for decision requests. Default `hookbridge.decisions`.
    #[serde(default = "default_requests")]
    pub requests: String,
    /// Kafka topic / RabbitMQ fanout exchange for replies. Default `hookbridge.decisions.replies`.
    #[serde(default = "default_replies")]
    pub replies: String,
    /// The secret replies are MAC'd with (at least 16 bytes); one of `secret` or `secret_file`.
    pub secret: Option<String>,
    /// A file holding that secret (a trailing newline is ignored).
    pub secret_file: Option<PathBuf>,
}

fn default_requests() -> String {
    "hookbridge.decisions".to_owned()
}
fn default_replies() -> String {
    "hookbridge.decisions.replies".to_owned()
}

/// `[decisions]`: where callback decisions are remembered.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDecisions {
    /// `memory` or `redis`. Default: the `[dedup]` backend.
    pub store: Option<DedupBackend>,
    /// For `redis`. Default: `dedup.redis_url`.
    pub redis_url: Option<String>,
    /// How long a decision is remembered, in seconds. Default 2 592 000 (30 days).
    #[serde(default = "default_remember_secs")]
    pub remember_secs: u64,
    /// For `memory`: most decisions remembered. Default 100 000.
    #[serde(default = "default_decision_entries")]
    pub max_entries: u64,
    /// For `redis`: key prefix. Default `hookbridge:decision:`.
    #[serde(default = "default_decision_prefix")]
    pub key_prefix: String,
    /// How long an ask (and its nonce) is remembered, in seconds: a reply after that decides
    /// nothing and the callback's next retry asks again. Default 86 400 (a day).
    #[serde(default = "default_asked_secs")]
    pub asked_secs: u64,
    /// For `redis` (required there when an approval source exists): the secret each stored
    /// decision is MAC'd with, the same on every replica; or `secret_file`.
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
}

impl Default for RawDecisions {
    fn default() -> Self {
        Self {
            store: None,
            redis_url: None,
            remember_secs: default_remember_secs(),
            max_entries: default_decision_entries(),
            key_prefix: default_decision_prefix(),
            asked_secs: default_asked_secs(),
            secret: None,
            secret_file: None,
        }
    }
}

const fn default_remember_secs() -> u64 {
    30 * 24 * 3600
}
const fn default_decision_entries() -> u64 {
    100_000
}
fn default_decision_prefix() -> String {
    "hookbridge:decision:".to_owned()
}
const fn default_asked_secs() -> u64 {
    24 * 3600
}

/// An event-ID or event-type locator: `"/json/pointer"`, `"header:Name"`, or a list of
/// pointers whose values are joined with `:` (e.g. Cobo WaaS 1.0 `["/id", "/status", "/confirmed_num"]`).
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub enum RawLocator {
    One(String),
    Joined(Vec<String>),
}

/// `[sources.<name>]`: one provider endpoint, served at `POST /hooks/<name>`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// `webhook` (default) or `callback`.
    #[serde(default)]
    pub kind: RawKind,
    /// The signature scheme and its keys.
    pub verify: RawVerify,
    /// Reject signed timestamps further than this from now, in seconds; 0 turns it off.
    /// Default: 300 for standard-webhooks, stripe and slack; for the Cobo schemes (no
    /// documented tolerance) what the source remembers: `dedup.ttl_secs`, or for approvals
    /// `decisions.remember_secs`. Never longer than that memory by default.
    pub replay_window_secs: Option<u64>,
    /// Event ID locators, tried in order; the first non-empty value wins. Default per scheme;
    /// when none yields a value the ID is the hex SHA-256 of the raw body.
    pub event_id: Option<Vec<RawLocator>>,
    /// Event type locators, tried in order. Default per scheme.
    pub event_type: Option<Vec<RawLocator>>,
    /// CloudEvents `type` when no locator yields one. Default `hookbridge.webhook`.
    #[serde(default = "default_event_type")]
    pub default_type: String,
    /// CloudEvents `source` attribute. Default `/hooks/<name>`.
    pub ce_source: Option<String>,
    /// Sink name; may be omitted when exactly one sink exists.
    pub sink: Option<String>,
    /// Longest wait for the sink's confirmation before answering 503, in ms. Default 1 500
    /// (Cobo gives up after 2 s).
    #[serde(default = "default_ack_deadline")]
    pub ack_deadline_ms: u64,
    /// Body limit for this source, in bytes. Default `server.max_body_bytes`.
    pub max_body_bytes: Option<usize>,
    /// Client addresses (CIDR or single IPs, IPv4 and IPv6) allowed to post; others get 403.
    /// Default: anyone.
    pub allow_ips: Option<Vec<String>>,
    /// Requests per second for the whole source (429 beyond). Default: unlimited.
    pub rate_limit: Option<RawRate>,
    /// Requests per second for each client address of this source. Default: unlimited.
    pub rate_limit_per_ip: Option<RawRate>,
    /// `broker` (default), `spool` or `accept`: when the 2xx is sent.
    #[serde(default)]
    pub ack: crate::plan::AckMode,
    /// `dead-letter` (default; `reject` for approval callbacks) or `reject`: what becomes of an
    /// event the sink refuses for good.
    pub on_refused: Option<crate::plan::OnRefused>,
    /// Deduplicate provider retries by event ID. Default true.
    #[serde(default = "default_true")]
    pub dedup: bool,
    /// Shadow mode, for moving a provider onto hookbridge: verify, log and count, but accept
    /// and publish (marked `hbshadow`) requests that fail. Refused for approval callbacks.
    #[serde(default)]
    pub shadow: bool,
    /// Headers the scheme does not sign that `event_id`/`event_type` may still read (refused
    /// otherwise: a resent request could carry another value). Events mark what came from them
    /// (`hbunverified`).
    #[serde(default)]
    pub unsigned_headers: Vec<String>,
    /// For `kind = "callback"` (required there): `approval` or `notification`.
    pub purpose: Option<RawPurpose>,
    /// For approval callbacks: callback ID locators (JSON pointers: Cobo signs no header),
    /// tried in order. Default `/transaction_id` (cobo-waas2); `/cobo_id` then `/request_id`
    /// (cobo-waas1: `cobo_id` is Cobo's, `request_id` is chosen by whoever calls Cobo's API).
    pub callback_id: Option<Vec<RawLocator>>,
    /// For approval callbacks (required there): how the decision is made.
    pub decision: Option<RawDecision>,
}

fn default_event_type() -> String {
    "hookbridge.webhook".to_owned()
}
const fn default_ack_deadline() -> u64 {
    1_500
}

/// `verify = { scheme = "…", … }`. Unknown schemes are a load error. Public for
/// `hookbridge send`, which signs with what it holds ([`super::source_verify`]).
#[derive(Deserialize)]
#[serde(tag = "scheme", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RawVerify {
    /// Cobo WaaS 2.0: Ed25519. `public_keys`: `"dev"`, `"prod"` or 64 hex characters.
    CoboWaas2 { public_keys: Vec<String> },
    /// Cobo WaaS 1.0: ECDSA secp256k1. `public_keys`: `"dev"`, `"prod"`, `"sandbox-legacy"`
    /// or compressed SEC1 hex.
    CoboWaas1 { public_keys: Vec<String> },
    /// RSA PKCS#1 v1.5 SHA-256 over the body, base64 in `header` (default `X-Signature`).
    RsaSha256 {
        #[serde(default = "default_rsa_header")]
        header: String,
        /// Inline PEM keys (PKCS#1 or SPKI).
        #[serde(default)]
        public_keys: Vec<String>,
        /// PEM key files.
        #[serde(default)]
        public_key_files: Vec<PathBuf>,
    },
    /// HMAC-SHA256 over the body.
    HmacSha256 {
        header: String,
        #[serde(default)]
        encoding: Encoding,
        /// Text before the signature in the header, e.g. `sha256=`.
        prefix: Option<String>,
        secrets: Vec<String>,
        /// How the secrets are written: `utf8` (as-is, default), `hex` or `base64`.
        #[serde(default)]
        secret_encoding: SecretEncoding,
    },
    /// A header that must equal one of the secrets.
    SharedSecret {
        header: String,
        secrets: Vec<String>,
    },
    /// Standard Webhooks / Svix: `secrets` (`whsec_…`, v1) and/or `public_keys` (`whpk_…`, v1a).
    StandardWebhooks {
        #[serde(default)]
        secrets: Vec<String>,
        #[serde(default)]
        public_keys: Vec<String>,
    },
    /// Stripe `Stripe-Signature` (v1 only). `secrets`: the `whsec_…` endpoint secrets.
    Stripe { secrets: Vec<String> },
    /// Slack `X-Slack-Signature` (v0). `secrets`: signing secrets.
    Slack { secrets: Vec<String> },
    /// Zoom `x-zm-signature` (v0). `secrets`: the app's secret tokens.
    Zoom { secrets: Vec<String> },
    /// GitHub `X-Hub-Signature-256`. `secrets`: the webhook secrets.
    #[serde(rename = "github")]
    GitHub { secrets: Vec<String> },
    /// Shopify `X-Shopify-Hmac-Sha256`. `secrets`: the app's client secrets.
    Shopify { secrets: Vec<String> },
    /// Twilio `X-Twilio-Signature` (form bodies). `url`: the public URL Twilio posts to;
    /// `secrets`: auth tokens.
    Twilio { url: String, secrets: Vec<String> },
    /// Square `X-Square-HmacSha256-Signature`. `url`: the subscription's notification URL;
    /// `secrets`: signature keys.
    Square { url: String, secrets: Vec<String> },
    /// Paddle Billing `Paddle-Signature` (`ts=…;h1=…`). `secrets`: the notification
    /// destinations' secret keys.
    Paddle { secrets: Vec<String> },
    /// No verification. Only with `accept_unsigned_requests = true`, and logged at startup.
    None {
        #[serde(default)]
        accept_unsigned_requests: bool,
    },
}

fn default_rsa_header() -> String {
    "X-Signature".to_owned()
}

/// How `hmac-sha256` secrets are written in the config.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum SecretEncoding {
    #[default]
    Utf8,
    Hex,
    Base64,
}

impl SecretEncoding {
    /// The secret's bytes, or `None` when it does not decode (callers word the error: the
    /// value itself is never echoed).
    pub fn decode(self, secret: &str) -> Option<Vec<u8>> {
        use base64::Engine as _;
        match self {
            Self::Utf8 => Some(secret.as_bytes().to_vec()),
            Self::Hex => hex::decode(secret.trim()).ok(),
            Self::Base64 => base64::engine::general_purpose::STANDARD
                .decode(secret.trim())
                .ok(),
        }
    }
}
