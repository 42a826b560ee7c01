//! Loads and validates the TOML config into typed, ready-to-use values: parsed keys, durations,
//! resolved sinks. Collects every error it can find instead of stopping at the first, and never
//! echoes a configured value (it may be a secret) in an error.
//!
//! Pure apart from reading key files: no network, no listeners (that is [`crate::app`]).

mod env;
mod raw;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use http::HeaderName;
use ipnet::IpNet;
use serde::de::DeserializeOwned;

pub use self::raw::{AuditOutput, DedupBackend};
use self::raw::{
    RawAudit, RawBadSignature, RawDecision, RawDecisions, RawDedup, RawDefault, RawKind,
    RawLocator, RawPurpose, RawRate, RawServer, RawSink, RawSource, RawSpool, RawVerify,
    SecretEncoding,
};
use crate::callback::{self, Approval, Otherwise, Purpose, RuleSet, ServiceSpec};
use crate::normalize::locator::Locator;
use crate::plan::{AckMode, Rate, SourceKind, SourceSpec};
use crate::sink::spec::{KafkaSpec, RabbitSpec, SinkKind, SinkSpec, redact_url};
use crate::verify::{
    CoboWaas1, CoboWaas2, HmacSha256, RsaSha256, Scheme, SharedSecret, Slack, SourceVerifier,
    StandardWebhooks, Stripe,
};

/// Every problem found in a config file, each naming where it is.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} error(s) in the configuration:", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub audit: AuditConfig,
    /// `None` when disabled.
    pub spool: Option<SpoolConfig>,
    pub dedup: DedupConfig,
    pub decisions: DecisionsConfig,
    pub sinks: Vec<SinkSpec>,
    pub sources: Vec<SourceSpec>,
    /// Things that are allowed but deserve a loud line at startup (`none` scheme, small RSA keys).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub body_timeout: Duration,
    pub header_timeout: Duration,
    pub max_headers: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub idle_timeout: Duration,
    /// `None`: connections may live as long as they are used.
    pub max_connection_age: Option<Duration>,
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
    pub shutdown_timeout: Duration,
    pub max_header_bytes: usize,
    pub tls: Option<TlsFiles>,
    pub require_tls: bool,
    /// Trusted proxies and the forwarding header they set.
    pub proxies: crate::ingress::client::Proxies,
    /// Per-client rate buckets: IPv6 prefix length, and most clients tracked per source.
    pub ipv6_prefix: u8,
    pub max_rate_clients: usize,
    pub max_body_buffer_bytes: usize,
    pub admin_listen: Option<SocketAddr>,
    /// `/readyz` and `/metrics` on the main listener too (no `admin_listen`, and a loopback
    /// listener or `expose_admin_routes`).
    pub admin_on_main: bool,
    pub max_in_flight: usize,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub path: PathBuf,
    pub max_bytes: u64,
}

/// A key-value store: edge dedup (`[dedup]`) and remembered callback decisions (`[decisions]`).
#[derive(Clone)]
pub struct StoreConfig {
    pub backend: DedupBackend,
    /// May carry a password: never logged.
    pub redis_url: Option<String>,
    pub ttl: Duration,
    pub max_entries: u64,
    pub key_prefix: String,
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("backend", &self.backend)
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// `[dedup]`: claims on (source, event ID).
pub type DedupConfig = StoreConfig;

/// `[decisions]`: where callback decisions are remembered.
#[derive(Debug, Clone)]
pub struct DecisionsConfig {
    pub store: StoreConfig,
    /// How long an ask (and its nonce) is remembered.
    pub asked_ttl: Duration,
    /// The MAC key of decisions stored in Redis (required there when approvals exist).
    pub secret: Option<crate::callback::MacKey>,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub output: AuditOutput,
    pub path: Option<PathBuf>,
}

/// Reads and validates a config file, substituting `${VAR}` from the process environment.
///
/// # Errors
/// Every problem found, or the read error.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
    load(&text, &|name| std::env::var(name).ok())
}

/// Validates config text; `env` resolves `${VAR}` (injected so tests need no process env).
///
/// # Errors
/// Every problem found.
pub fn load(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut root: toml::Table = toml::from_str(text).map_err(|e| {
        ConfigErrors(vec![format!(
            "not valid TOML: {}",
            env::redact_values(e.message())
        )])
    })?;
    env::substitute(&mut root, env, &mut errors);

    for key in root.keys() {
        if !matches!(
            key.as_str(),
            "server" | "sinks" | "sources" | "audit" | "spool" | "dedup" | "decisions"
        ) {
            errors.push(format!(
                "{key}: unknown section (expected server, audit, spool, dedup, decisions, sinks, sources)"
            ));
        }
    }

    let server: RawServer = match root.remove("server") {
        Some(v) => section("server", v, &mut errors).unwrap_or_default(),
        None => RawServer::default(),
    };
    if server.max_body_bytes == 0 {
        errors.push("server.max_body_bytes: must be greater than 0".to_owned());
    }
    for (value, field) in [
        (server.max_connections as u64, "max_connections"),
        (
            server.max_connections_per_ip as u64,
            "max_connections_per_ip",
        ),
        (server.idle_timeout_ms, "idle_timeout_ms"),
        (
            server.http2_keepalive_interval_ms,
            "http2_keepalive_interval_ms",
        ),
        (
            server.http2_keepalive_timeout_ms,
            "http2_keepalive_timeout_ms",
        ),
        (
            u64::from(server.http2_max_concurrent_streams),
            "http2_max_concurrent_streams",
        ),
    ] {
        if value == 0 {
            errors.push(format!("server.{field}: must be greater than 0"));
        }
    }
    if server.max_header_bytes < 8192 {
        errors.push("server.max_header_bytes: must be at least 8192".to_owned());
    }
    let trusted_proxies = parse_nets(
        "server.trusted_proxies",
        &server.trusted_proxies,
        &mut errors,
    );
    let tls = server.tls.as_ref().map(|t| TlsFiles {
        cert_file: t.cert_file.clone(),
        key_file: t.key_file.clone(),
    });
    if let Some(t) = &tls
        && let Err(e) = crate::tls::server_config(&t.cert_file, &t.key_file)
    {
        errors.push(format!("server.tls: {e:#}"));
    }
    if server.require_tls && tls.is_none() && server.trusted_proxies.is_empty() {
        errors.push("server.require_tls: needs server.tls, or trusted_proxies that terminate TLS and send X-Forwarded-Proto".to_owned());
    }
    if !server.trusted_proxies.is_empty() && server.forwarded_header.is_none() {
        errors.push("server.forwarded_header: required with trusted_proxies: \"x-forwarded-for\" or \"forwarded\", the one header your proxies set (the other is then ignored)".to_owned());
    }
    if server.rate_limit_ipv6_prefix > 128 {
        errors.push("server.rate_limit_ipv6_prefix: at most 128".to_owned());
    }
    if server.max_rate_limited_clients == 0 {
        errors.push("server.max_rate_limited_clients: must be greater than 0".to_owned());
    }
    let audit: RawAudit = match root.remove("audit") {
        Some(v) => section("audit", v, &mut errors).unwrap_or_default(),
        None => RawAudit::default(),
    };
    if server.max_in_flight == 0 {
        errors.push("server.max_in_flight: must be greater than 0".to_owned());
    }
    let raw_spool: RawSpool = match root.remove("spool") {
        Some(v) => section("spool", v, &mut errors).unwrap_or_default(),
        None => RawSpool::default(),
    };
    let raw_dedup: RawDedup = match root.remove("dedup") {
        Some(v) => section("dedup", v, &mut errors).unwrap_or_default(),
        None => RawDedup::default(),
    };
    if raw_dedup.backend == DedupBackend::Redis {
        check_redis_url(
            "dedup",
            raw_dedup.redis_url.as_deref(),
            "backend = \"redis\"",
            &mut errors,
        );
    }
    if raw_dedup.ttl_secs == 0 {
        errors.push("dedup.ttl_secs: must be greater than 0".to_owned());
    }
    let raw_decisions: RawDecisions = match root.remove("decisions") {
        Some(v) => section("decisions", v, &mut errors).unwrap_or_default(),
        None => RawDecisions::default(),
    };
    let decisions = DecisionsConfig {
        store: StoreConfig {
            backend: raw_decisions.store.unwrap_or(raw_dedup.backend),
            redis_url: raw_decisions
                .redis_url
                .or_else(|| raw_dedup.redis_url.clone()),
            ttl: Duration::from_secs(raw_decisions.remember_secs.unwrap_or(30 * 24 * 3600)),
            max_entries: raw_decisions.max_entries.unwrap_or(100_000),
            key_prefix: raw_decisions
                .key_prefix
                .unwrap_or_else(|| "hookbridge:decision:".to_owned()),
        },
        asked_ttl: Duration::from_secs(raw_decisions.asked_secs.unwrap_or(24 * 3600)),
        secret: load_secret(
            "decisions",
            raw_decisions.secret,
            raw_decisions.secret_file,
            &mut errors,
        ),
    };
    if decisions.store.backend == DedupBackend::Redis {
        check_redis_url(
            "decisions",
            decisions.store.redis_url.as_deref(),
            "store = \"redis\" (or set dedup.redis_url)",
            &mut errors,
        );
        let (a, b) = (&raw_dedup.key_prefix, &decisions.store.key_prefix);
        if raw_dedup.backend == DedupBackend::Redis
            && (a.starts_with(b.as_str()) || b.starts_with(a.as_str()))
        {
            errors.push(format!(
                "decisions.key_prefix: {b:?} and dedup.key_prefix {a:?} overlap; give each its own namespace (neither a prefix of the other)"
            ));
        }
    }
    if decisions.store.ttl.is_zero() {
        errors.push("decisions.remember_secs: must be greater than 0".to_owned());
    }
    if decisions.asked_ttl.is_zero() {
        errors.push("decisions.asked_secs: must be greater than 0".to_owned());
    }
    let memory = Memory {
        dedup: Duration::from_secs(raw_dedup.ttl_secs),
        decisions: decisions.store.ttl,
    };
    if audit.output == AuditOutput::File && audit.path.is_none() {
        errors.push("audit.path: required when output = \"file\"".to_owned());
    }

    let sinks = load_sinks(root.remove("sinks"), &mut errors);

    let mut sources = Vec::new();
    let mut warnings = Vec::new();
    let mut approvals = false;
    match root.remove("sources") {
        Some(toml::Value::Table(table)) => {
            for (name, value) in table {
                let path = format!("sources.{name}");
                if !valid_name(&name) {
                    errors.push(format!("{path}: source names may use a-z, 0-9, '-' and '_' (it becomes the URL path)"));
                    continue;
                }
                let Some(raw) = section::<RawSource>(&path, value, &mut errors) else {
                    continue;
                };
                // Known before the source is built: its other errors must not hide this one.
                approvals |=
                    raw.kind == RawKind::Callback && raw.purpose == Some(RawPurpose::Approval);
                if let Some(src) = build_source(
                    &name,
                    raw,
                    &server,
                    &sinks,
                    memory,
                    &mut errors,
                    &mut warnings,
                ) {
                    sources.push(src);
                }
            }
        }
        Some(_) => errors.push("sources: must be a table of [sources.<name>]".to_owned()),
        None => {}
    }
    let brokers = sinks
        .iter()
        .any(|s| !matches!(s.kind, SinkKind::File { .. }));
    let spool = raw_spool.enabled.unwrap_or(brokers).then(|| SpoolConfig {
        path: raw_spool.path.clone(),
        max_bytes: raw_spool.max_bytes,
    });
    if spool.is_none() {
        for s in sources.iter().filter(|s| s.ack == AckMode::Spool) {
            errors.push(format!(
                "sources.{}.ack: \"spool\" needs the spool ([spool] enabled = true)",
                s.name
            ));
        }
    }
    for s in sources.iter().filter(|s| s.ack == AckMode::Accept) {
        warnings.push(format!(
            "source {}: ack = \"accept\" answers before the event is durable; an event can be lost",
            s.name
        ));
    }
    if server.admin_listen.is_none()
        && !server.listen.ip().is_loopback()
        && !server.expose_admin_routes
    {
        warnings.push(format!(
            "server: /readyz and /metrics are not served on the public listener {}; set server.admin_listen (e.g. a private 0.0.0.0:9090), or expose_admin_routes = true",
            server.listen
        ));
    }
    if sources.is_empty() && errors.is_empty() {
        errors
            .push("sources: no source is configured; add at least one [sources.<name>]".to_owned());
    }
    if let Some(s) = sources
        .iter()
        .find(|s| s.max_body_bytes > server.max_body_buffer_bytes)
    {
        errors.push(format!(
            "server.max_body_buffer_bytes: {} is less than sources.{}.max_body_bytes ({}): such a body could never be read",
            server.max_body_buffer_bytes, s.name, s.max_body_bytes
        ));
    }
    if approvals && decisions.store.backend == DedupBackend::Redis && decisions.secret.is_none() {
        errors.push("decisions.secret: required when decisions are remembered in Redis (or secret_file): each stored decision carries a MAC, so write access to Redis alone cannot plant an `ok`".to_owned());
    }

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Config {
        server: ServerConfig {
            listen: server.listen,
            body_timeout: Duration::from_millis(server.body_timeout_ms),
            header_timeout: Duration::from_millis(server.header_timeout_ms),
            max_headers: server.max_headers,
            max_connections: server.max_connections,
            max_connections_per_ip: server.max_connections_per_ip,
            idle_timeout: Duration::from_millis(server.idle_timeout_ms),
            max_connection_age: (server.max_connection_age_ms > 0)
                .then(|| Duration::from_millis(server.max_connection_age_ms)),
            http2_keepalive_interval: Duration::from_millis(server.http2_keepalive_interval_ms),
            http2_keepalive_timeout: Duration::from_millis(server.http2_keepalive_timeout_ms),
            http2_max_concurrent_streams: server.http2_max_concurrent_streams,
            shutdown_timeout: Duration::from_millis(server.shutdown_timeout_ms),
            max_header_bytes: server.max_header_bytes,
            tls,
            require_tls: server.require_tls,
            proxies: crate::ingress::client::Proxies {
                trusted: trusted_proxies,
                header: server.forwarded_header.unwrap_or_default(),
            },
            ipv6_prefix: server.rate_limit_ipv6_prefix,
            max_rate_clients: server.max_rate_limited_clients,
            max_body_buffer_bytes: server.max_body_buffer_bytes,
            admin_listen: server.admin_listen,
            admin_on_main: server.admin_listen.is_none()
                && (server.listen.ip().is_loopback() || server.expose_admin_routes),
            max_in_flight: server.max_in_flight,
        },
        audit: AuditConfig {
            output: audit.output,
            path: audit.path,
        },
        spool,
        dedup: DedupConfig {
            backend: raw_dedup.backend,
            redis_url: raw_dedup.redis_url,
            ttl: Duration::from_secs(raw_dedup.ttl_secs),
            max_entries: raw_dedup.max_entries,
            key_prefix: raw_dedup.key_prefix,
        },
        decisions,
        sinks,
        sources,
        warnings,
    })
}

/// Deserializes one section, recording an error with its path on failure.
fn section<T: DeserializeOwned>(
    path: &str,
    value: toml::Value,
    errors: &mut Vec<String>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let at = if inner == "." || inner.is_empty() {
                path.to_owned()
            } else {
                format!("{path}.{inner}")
            };
            // toml appends "in `path`" lines; the path is already in front of the message.
            let message = e.into_inner().to_string();
            let first = message.lines().next().unwrap_or_default().trim();
            errors.push(format!("{at}: {}", env::redact_values(first)));
            None
        }
    }
}

/// A Redis URL is present (`needed_for` says why) and has a Redis scheme.
fn check_redis_url(section: &str, url: Option<&str>, needed_for: &str, errors: &mut Vec<String>) {
    match url {
        Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => {}
        Some(_) => errors.push(format!(
            "{section}.redis_url: must start with redis:// or rediss://"
        )),
        None => errors.push(format!("{section}.redis_url: required for {needed_for}")),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn load_sinks(value: Option<toml::Value>, errors: &mut Vec<String>) -> Vec<SinkSpec> {
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
            errors.push("sinks: must be a table of [sinks.<name>]".to_owned());
            return Vec::new();
        }
    };
    let mut sinks = Vec::new();
    for (name, value) in table {
        let path = format!("sinks.{name}");
        if !valid_name(&name) {
            errors.push(format!("{path}: sink names may use a-z, 0-9, '-' and '_'"));
            continue;
        }
        let Some(raw) = section::<RawSink>(&path, value, errors) else {
            continue;
        };
        let kind = match raw {
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
                    errors.push(format!(
                        "{path}: this build of hookbridge has no Kafka support (feature \"kafka\")"
                    ));
                }
                check_template(&path, "topic", &topic, errors);
                for key in librdkafka.keys() {
                    if matches!(
                        key.as_str(),
                        "acks"
                            | "request.required.acks"
                            | "enable.idempotence"
                            | "bootstrap.servers"
                            | "message.timeout.ms"
                    ) {
                        errors.push(format!("{path}.librdkafka.{key}: set by hookbridge (delivery guarantees depend on it); use the sink's own field if there is one"));
                    }
                }
                if partitions < 1 {
                    errors.push(format!("{path}.partitions: must be at least 1"));
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
                    errors.push(format!("{path}: this build of hookbridge has no RabbitMQ support (feature \"rabbitmq\")"));
                }
                if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                    errors.push(format!("{path}.url: must start with amqp:// or amqps://"));
                }
                if channels == 0 || channels > 256 {
                    errors.push(format!("{path}.channels: must be between 1 and 256"));
                }
                if exchange.is_empty() || exchange.len() > 255 {
                    errors.push(format!("{path}.exchange: must be 1 to 255 bytes"));
                }
                check_template(&path, "routing_key", &routing_key, errors);
                SinkKind::RabbitMq(RabbitSpec {
                    url,
                    exchange,
                    declare_exchange,
                    routing_key,
                    channels,
                })
            }
        };
        sinks.push(SinkSpec { name, kind });
    }
    if sinks.is_empty() && errors.is_empty() {
        errors.push("sinks: the table is empty; remove it to use the default file sink".to_owned());
    }
    sinks
}

fn check_template(path: &str, field: &str, template: &str, errors: &mut Vec<String>) {
    let stripped = template.replace("{source}", "").replace("{type}", "");
    if stripped.contains('{') || stripped.contains('}') {
        errors.push(format!(
            "{path}.{field}: only {{source}} and {{type}} may be used in the template"
        ));
    }
    if template.is_empty() {
        errors.push(format!("{path}.{field}: must not be empty"));
    }
}

/// How long dedup and the decision store remember, which bounds the default replay window.
#[derive(Debug, Clone, Copy)]
struct Memory {
    dedup: Duration,
    decisions: Duration,
}

fn build_source(
    name: &str,
    raw: RawSource,
    server: &RawServer,
    sink_specs: &[SinkSpec],
    memory: Memory,
    errors: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Option<SourceSpec> {
    let path = format!("sources.{name}");
    let before = errors.len();
    let sinks: Vec<&str> = sink_specs.iter().map(|s| s.name.as_str()).collect();
    let sinks = sinks.as_slice();
    let scheme = build_scheme(
        &format!("{path}.verify"),
        raw.verify,
        errors,
        warnings,
        name,
    );
    let (kind, callback_ids) = build_kind(
        &path,
        raw.kind,
        raw.purpose,
        raw.callback_id.as_deref(),
        raw.decision,
        scheme.as_ref(),
        sink_specs,
        errors,
        warnings,
    );
    if matches!(kind, Some(SourceKind::Callback(_))) && raw.ack == AckMode::Accept {
        errors.push(format!(
            "{path}.ack: \"accept\" cannot be used for a callback: the answer must follow a durable event"
        ));
    }

    let sink = match (&raw.sink, sinks) {
        (Some(s), _) if sinks.contains(&s.as_str()) => s.clone(),
        (Some(s), _) => {
            errors.push(format!(
                "{path}.sink: no sink named {s:?} (configured: {})",
                sinks.join(", ")
            ));
            String::new()
        }
        (None, [only]) => (*only).to_owned(),
        (None, _) => {
            errors.push(format!(
                "{path}.sink: required when several sinks are configured ({})",
                sinks.join(", ")
            ));
            String::new()
        }
    };

    let callback = callback_ids.is_some();
    let mut event_id = match (callback_ids, raw.event_id) {
        // An approval's events are its decisions, keyed by callback ID.
        (Some(ids), None) => ids,
        (Some(_), Some(_)) => {
            errors.push(format!(
                "{path}.event_id: an approval callback is keyed by callback_id; remove event_id"
            ));
            Vec::new()
        }
        (None, Some(l)) => parse_locators(&format!("{path}.event_id"), &l, errors),
        // Without a scheme the source is an error already; its defaults no longer matter.
        (None, None) => scheme
            .as_ref()
            .map(Scheme::default_event_id)
            .unwrap_or_default(),
    };
    let mut event_type = match raw.event_type {
        Some(l) => parse_locators(&format!("{path}.event_type"), &l, errors),
        None => scheme
            .as_ref()
            .map(Scheme::default_event_type)
            .unwrap_or_default(),
    };
    if let Some(scheme) = &scheme {
        // An approval's IDs are its callback IDs, whose headers are refused on their own.
        let mut none = Vec::new();
        let ids = if callback { &mut none } else { &mut event_id };
        mark_unsigned_headers(
            &path,
            scheme,
            &raw.unsigned_headers,
            [("event_id", ids), ("event_type", &mut event_type)],
            errors,
            warnings,
        );
    }
    let max_body_bytes = raw.max_body_bytes.unwrap_or(server.max_body_bytes);
    if max_body_bytes == 0 {
        errors.push(format!("{path}.max_body_bytes: must be greater than 0"));
    }
    if raw.ack_deadline_ms == 0 {
        errors.push(format!("{path}.ack_deadline_ms: must be greater than 0"));
    }
    let allow_ips = raw
        .allow_ips
        .as_ref()
        .map(|l| parse_nets(&format!("{path}.allow_ips"), l, errors));
    let rate_limit = raw
        .rate_limit
        .and_then(|r| parse_rate(&format!("{path}.rate_limit"), r, errors));
    let rate_limit_per_ip = raw
        .rate_limit_per_ip
        .and_then(|r| parse_rate(&format!("{path}.rate_limit_per_ip"), r, errors));
    if errors.len() > before {
        return None;
    }
    let scheme = scheme?;
    let kind = kind?;
    // What this source remembers: a replay older than that memory must be refused as stale.
    let (remembers, memory_name) = if kind.approval().is_some() {
        (memory.decisions, "decisions.remember_secs")
    } else {
        (memory.dedup, "dedup.ttl_secs")
    };
    let replay_window = match raw.replay_window_secs {
        Some(0) => {
            if scheme.signs_timestamp() {
                warnings.push(format!("{path}.replay_window_secs = 0: the replay window is off, so a captured request is accepted again once {memory_name} has forgotten it (or after a restart of a memory store)"));
            }
            None
        }
        Some(secs) => {
            if !scheme.signs_timestamp() {
                errors.push(format!(
                    "{path}.replay_window_secs: scheme {} signs no timestamp",
                    scheme.name()
                ));
                return None;
            }
            if Duration::from_secs(secs) > remembers {
                warnings.push(format!("{path}.replay_window_secs = {secs} is longer than {memory_name} ({} s): a replay between the two is accepted as new", remembers.as_secs()));
            }
            Some(Duration::from_secs(secs))
        }
        None => scheme.signs_timestamp().then(|| {
            scheme
                .documented_tolerance()
                .map_or(remembers, |t| t.min(remembers))
        }),
    };
    Some(SourceSpec {
        name: name.to_owned(),
        // Approvals have their own memory (decisions); event dedup would answer a retry
        // before the decision is looked up.
        dedup: raw.dedup && kind.approval().is_none(),
        kind,
        verifier: SourceVerifier::new(scheme, replay_window),
        event_id,
        event_type,
        default_type: raw
            .default_type
            .unwrap_or_else(|| "hookbridge.webhook".to_owned()),
        ce_source: raw.ce_source.unwrap_or_else(|| format!("/hooks/{name}")),
        sink,
        ack_deadline: Duration::from_millis(raw.ack_deadline_ms),
        max_body_bytes,
        allow_ips,
        rate_limit,
        rate_limit_per_ip,
        ack: raw.ack,
    })
}

/// The source kind, and for approvals the callback ID locators. `None` kind: errors recorded.
#[allow(clippy::too_many_arguments)]
fn build_kind(
    path: &str,
    kind: RawKind,
    purpose: Option<RawPurpose>,
    callback_id: Option<&[RawLocator]>,
    decision: Option<RawDecision>,
    scheme: Option<&Scheme>,
    sinks: &[SinkSpec],
    errors: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> (Option<SourceKind>, Option<Vec<Locator>>) {
    if kind == RawKind::Webhook {
        for (set, field) in [
            (purpose.is_some(), "purpose"),
            (callback_id.is_some(), "callback_id"),
            (decision.is_some(), "decision"),
        ] {
            if set {
                errors.push(format!("{path}.{field}: only for kind = \"callback\""));
            }
        }
        return (Some(SourceKind::Webhook), None);
    }
    // No scheme: it is invalid and already reported.
    if let Some(scheme) = scheme.filter(|s| !s.may_be_callback()) {
        errors.push(format!(
            "{path}.kind: \"callback\" is for the cobo-waas2 and cobo-waas1 schemes (this source uses {})",
            scheme.name()
        ));
    }
    let Some(purpose) = purpose else {
        errors.push(format!("{path}.purpose: required for kind = \"callback\": \"approval\" (ok approves, e.g. a withdrawal) or \"notification\" (ok acknowledges a durable event)"));
        return (None, None);
    };
    if purpose == RawPurpose::Notification {
        if decision.is_some() || callback_id.is_some() {
            errors.push(format!("{path}.decision: a notification is answered ok once durable; decision and callback_id are for purpose = \"approval\""));
        }
        return (Some(SourceKind::Callback(Purpose::Notification)), None);
    }
    let ids = match callback_id {
        Some(l) => {
            let ids = parse_locators(&format!("{path}.callback_id"), l, errors);
            for (i, id) in ids.iter().enumerate() {
                if let Locator::Header(h) = id {
                    errors.push(format!("{path}.callback_id[{i}]: header:{h}: Cobo signs no header, so a callback ID must come from the signed body (a JSON pointer)"));
                }
            }
            ids
        }
        // Without a scheme the source is an error already; its defaults no longer matter.
        None => scheme.map(Scheme::default_callback_ids).unwrap_or_default(),
    };
    let Some(d) = decision else {
        errors.push(format!("{path}.decision: required for purpose = \"approval\": rules and/or a decision service, and an explicit default"));
        return (None, None);
    };
    let at = format!("{path}.decision");
    let rules = d
        .rules
        .into_iter()
        .map(|r| callback::rules::RuleText {
            name: r.name,
            when: r.when,
            decision: r.decision,
            reason: r.reason,
        })
        .collect();
    let budget = d.rule_budget.unwrap_or(callback::rules::DEFAULT_BUDGET);
    if budget == 0 {
        errors.push(format!("{at}.rule_budget: must be greater than 0"));
    }
    let rules = RuleSet::compile(&format!("{at}.rules"), rules, budget)
        .map_err(|e| errors.extend(e))
        .unwrap_or_default();
    let otherwise = match d.default {
        RawDefault::Ok => Otherwise::Decide(callback::Verdict::Ok),
        RawDefault::Deny => Otherwise::Decide(callback::Verdict::Deny),
        RawDefault::Ask => Otherwise::Ask,
    };
    if otherwise == Otherwise::Decide(callback::Verdict::Ok) {
        warnings.push(format!(
            "{at}.default = \"ok\": every callback that no rule denies is APPROVED"
        ));
    }
    let service = match (d.service, otherwise) {
        (Some(s), Otherwise::Ask) => {
            match sinks.iter().find(|k| k.name == s.sink).map(|k| &k.kind) {
                Some(SinkKind::Kafka(_) | SinkKind::RabbitMq(_)) => {}
                Some(other) => errors.push(format!(
                    "{at}.service.sink: {:?} is a {} sink; a decision service needs a kafka or rabbitmq sink",
                    s.sink,
                    other.type_name()
                )),
                None => errors.push(format!("{at}.service.sink: no sink named {:?}", s.sink)),
            }
            for (v, field) in [(&s.requests, "requests"), (&s.replies, "replies")] {
                if v.is_empty()
                    || v.len() > 249
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                {
                    errors.push(format!(
                        "{at}.service.{field}: 1 to 249 characters of a-z, A-Z, 0-9, '.', '_', '-'"
                    ));
                }
            }
            let secret = load_secret(&format!("{at}.service"), s.secret, s.secret_file, errors);
            if secret.is_none() {
                errors.push(format!("{at}.service.secret: required (or secret_file): replies are believed only with a valid MAC made with it"));
            }
            secret.map(|secret| ServiceSpec {
                sink: s.sink,
                requests: s.requests,
                replies: s.replies,
                secret,
            })
        }
        (None, Otherwise::Ask) => {
            errors.push(format!(
                "{at}.service: required for default = \"ask\" (the decision service to ask)"
            ));
            None
        }
        (Some(_), Otherwise::Decide(_)) => {
            errors.push(format!(
                "{at}.service: only asked when default = \"ask\"; remove it or set default = \"ask\""
            ));
            None
        }
        (None, Otherwise::Decide(_)) => None,
    };
    if d.timeout_ms == 0 || d.timeout_ms > 10_000 {
        errors.push(format!("{at}.timeout_ms: between 1 and 10000"));
    } else if d.timeout_ms >= 2_000 {
        warnings.push(format!(
            "{at}.timeout_ms = {}: Cobo stops waiting after 2 s",
            d.timeout_ms
        ));
    }
    let approval = Approval {
        rules,
        otherwise,
        service,
        timeout: Duration::from_millis(d.timeout_ms),
        on_timeout: d.on_timeout,
        deny_bad_signatures: d.on_bad_signature == RawBadSignature::Deny,
    };
    (
        Some(SourceKind::Callback(Purpose::Approval(approval))),
        Some(ids),
    )
}

/// A MAC secret given inline (`secret = "${VAR}"`) or as a file (`secret_file`); `None` when
/// neither is set or it is unusable (recorded). Its value never appears in an error.
fn load_secret(
    path: &str,
    inline: Option<String>,
    file: Option<PathBuf>,
    errors: &mut Vec<String>,
) -> Option<callback::MacKey> {
    let secret = match (inline, file) {
        (None, None) => return None,
        (Some(_), Some(_)) => {
            errors.push(format!("{path}: set secret or secret_file, not both"));
            return None;
        }
        (Some(s), None) => s,
        (None, Some(f)) => match std::fs::read_to_string(&f) {
            Ok(s) => s.trim_end_matches(['\r', '\n']).to_owned(),
            Err(e) => {
                errors.push(format!("{path}.secret_file: {}: {e}", f.display()));
                return None;
            }
        },
    };
    if secret.len() < callback::MIN_SECRET_BYTES {
        errors.push(format!(
            "{path}.secret: at least {} bytes (a random secret, e.g. `openssl rand -hex 32`)",
            callback::MIN_SECRET_BYTES
        ));
        return None;
    }
    Some(callback::MacKey::new(secret.as_bytes()))
}

/// Checks that every header an event ID or type is read from is signed by `scheme`; a header it
/// does not sign is allowed only when listed in `unsigned_headers`, and becomes
/// [`Locator::UnsignedHeader`] (events then say `hbunverified`).
fn mark_unsigned_headers<const N: usize>(
    path: &str,
    scheme: &Scheme,
    unsigned: &[String],
    fields: [(&str, &mut Vec<Locator>); N],
    errors: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    let mut allowed = Vec::new();
    for (i, h) in unsigned.iter().enumerate() {
        match HeaderName::from_bytes(h.trim().as_bytes()) {
            Ok(h) => allowed.push(h),
            Err(_) => errors.push(format!(
                "{path}.unsigned_headers[{i}]: {h:?} is not a valid header name"
            )),
        }
    }
    let mut used = vec![false; allowed.len()];
    for (field, locators) in fields {
        for (i, locator) in locators.iter_mut().enumerate() {
            let Locator::Header(h) = locator else {
                continue;
            };
            if scheme.signed_headers().contains(&h.as_str()) {
                continue;
            }
            match allowed.iter().position(|a| a == h) {
                Some(at) => {
                    used[at] = true;
                    *locator = Locator::UnsignedHeader(h.clone());
                }
                None => errors.push(format!(
                    "{path}.{field}[{i}]: header:{h} is not covered by the {} signature, so a captured request resent with another value would become a new event; read it from the body, leave event_id unset (the body's SHA-256), or accept the risk with unsigned_headers = [\"{h}\"]",
                    scheme.name()
                )),
            }
        }
    }
    for (h, used) in allowed.iter().zip(used) {
        if !used {
            warnings.push(format!(
                "{path}.unsigned_headers: {h} is listed but no event_id or event_type locator reads it"
            ));
        }
    }
}

/// CIDR blocks or single addresses (`/32`, `/128` implied), IPv4 and IPv6.
fn parse_nets(path: &str, raw: &[String], errors: &mut Vec<String>) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let s = s.trim();
        match s.parse::<IpNet>() {
            Ok(n) => out.push(n),
            Err(_) => match s.parse::<std::net::IpAddr>() {
                Ok(ip) => out.push(IpNet::from(ip)),
                Err(_) => errors.push(format!("{path}[{i}]: not an IP address or CIDR block")),
            },
        }
    }
    out
}

fn parse_rate(path: &str, raw: RawRate, errors: &mut Vec<String>) -> Option<Rate> {
    use std::num::NonZeroU32;
    let Some(per_second) = NonZeroU32::new(raw.per_second) else {
        errors.push(format!("{path}.per_second: must be greater than 0"));
        return None;
    };
    let burst = match raw.burst {
        None => per_second,
        Some(b) => match NonZeroU32::new(b) {
            Some(b) => b,
            None => {
                errors.push(format!("{path}.burst: must be greater than 0"));
                return None;
            }
        },
    };
    Some(Rate { per_second, burst })
}

fn parse_locators(path: &str, raw: &[RawLocator], errors: &mut Vec<String>) -> Vec<Locator> {
    let mut out = Vec::new();
    for (i, l) in raw.iter().enumerate() {
        let bad_pointer = |p: &str| !p.starts_with('/');
        match l {
            RawLocator::One(s) => {
                if let Some(h) = s.strip_prefix("header:") {
                    match HeaderName::from_bytes(h.trim().as_bytes()) {
                        Ok(h) => out.push(Locator::Header(h)),
                        Err(_) => {
                            errors.push(format!("{path}[{i}]: {h:?} is not a valid header name"))
                        }
                    }
                } else if bad_pointer(s) {
                    errors.push(format!("{path}[{i}]: expected a JSON pointer starting with '/' or \"header:<name>\""));
                } else {
                    out.push(Locator::Body(s.clone()));
                }
            }
            RawLocator::Joined(ps) => {
                if ps.is_empty() || ps.iter().any(|p| bad_pointer(p)) {
                    errors.push(format!(
                        "{path}[{i}]: a joined locator is a non-empty list of JSON pointers"
                    ));
                } else {
                    out.push(Locator::Joined(ps.clone()));
                }
            }
        }
    }
    out
}

fn build_scheme(
    path: &str,
    raw: RawVerify,
    errors: &mut Vec<String>,
    warnings: &mut Vec<String>,
    source: &str,
) -> Option<Scheme> {
    let prefixed = |errs: Vec<String>| {
        errs.into_iter()
            .map(|e| format!("{path}.{e}"))
            .collect::<Vec<_>>()
    };
    let result = match raw {
        RawVerify::CoboWaas2 { public_keys } => CoboWaas2::new(&public_keys).map(Scheme::CoboWaas2),
        RawVerify::CoboWaas1 { public_keys } => CoboWaas1::new(&public_keys).map(Scheme::CoboWaas1),
        RawVerify::RsaSha256 {
            header,
            public_keys,
            public_key_files,
        } => {
            let mut pems: Vec<(String, String)> = public_keys
                .into_iter()
                .enumerate()
                .map(|(i, k)| (format!("public_keys[{i}]"), k))
                .collect();
            let mut file_errors = Vec::new();
            for (i, f) in public_key_files.iter().enumerate() {
                match std::fs::read_to_string(f) {
                    Ok(pem) => pems.push((format!("public_key_files[{i}] ({})", f.display()), pem)),
                    Err(e) => file_errors.push(format!(
                        "public_key_files[{i}]: cannot read {}: {e}",
                        f.display()
                    )),
                }
            }
            let built = RsaSha256::new(&header, &pems);
            match (built, file_errors.is_empty()) {
                (Ok(v), true) => {
                    if v.smallest_bits() < crate::verify::RSA_WARN_BELOW_BITS {
                        warnings.push(format!(
                            "source {source}: an RSA key has {} bits; 2048 or more is recommended",
                            v.smallest_bits()
                        ));
                    }
                    Ok(Scheme::RsaSha256(v))
                }
                (Ok(_), false) => Err(file_errors),
                (Err(mut e), _) => {
                    e.extend(file_errors);
                    Err(e)
                }
            }
        }
        RawVerify::HmacSha256 {
            header,
            encoding,
            prefix,
            secrets,
            secret_encoding,
        } => decode_secrets(&secrets, secret_encoding)
            .and_then(|s| HmacSha256::new(&header, encoding, prefix, s))
            .map(Scheme::HmacSha256),
        RawVerify::SharedSecret { header, secrets } => {
            SharedSecret::new(&header, &secrets).map(Scheme::SharedSecret)
        }
        RawVerify::StandardWebhooks {
            secrets,
            public_keys,
        } => StandardWebhooks::new(&secrets, &public_keys).map(Scheme::StandardWebhooks),
        RawVerify::Stripe { secrets } => {
            Stripe::new(secrets.into_iter().map(String::into_bytes).collect()).map(Scheme::Stripe)
        }
        RawVerify::Slack { secrets } => {
            Slack::new(secrets.into_iter().map(String::into_bytes).collect()).map(Scheme::Slack)
        }
        RawVerify::None {
            accept_unsigned_requests,
        } => {
            if accept_unsigned_requests {
                warnings.push(format!("source {source}: scheme \"none\" accepts UNSIGNED requests from anyone who can reach it"));
                Ok(Scheme::None)
            } else {
                Err(vec!["accept_unsigned_requests: scheme \"none\" accepts anything; set accept_unsigned_requests = true to confirm".to_owned()])
            }
        }
    };
    result.map_err(|e| errors.extend(prefixed(e))).ok()
}

fn decode_secrets(
    secrets: &[String],
    encoding: SecretEncoding,
) -> Result<Vec<Vec<u8>>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, s) in secrets.iter().enumerate() {
        let decoded = match encoding {
            SecretEncoding::Utf8 => Some(s.clone().into_bytes()),
            SecretEncoding::Hex => hex::decode(s.trim()).ok(),
            SecretEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .ok(),
        };
        match decoded {
            Some(d) => out.push(d),
            None => errors.push(format!(
                "secrets[{i}]: does not decode as the configured secret_encoding"
            )),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The `check-config` summary: what would run, without any secret.
pub fn summary(config: &Config) -> String {
    let mut lines = vec![
        "configuration OK".to_owned(),
        format!("listen: {}", config.server.listen),
        "sinks:".to_owned(),
    ];
    for s in &config.sinks {
        let target = match &s.kind {
            SinkKind::File { path } => path.display().to_string(),
            SinkKind::Kafka(k) => format!("brokers {} topic {}", k.brokers, k.topic),
            SinkKind::RabbitMq(r) => format!(
                "{} exchange {} routing key {}",
                r.redacted_url(),
                r.exchange,
                r.routing_key
            ),
        };
        lines.push(format!("  {} ({}): {target}", s.name, s.kind.type_name()));
    }
    lines.push("sources:".to_owned());
    for s in &config.sources {
        let ids: Vec<String> = s.event_id.iter().map(ToString::to_string).collect();
        let window = s
            .verifier
            .replay_window()
            .map_or_else(|| "off".to_owned(), |w| format!("{} s", w.as_secs()));
        lines.push(format!(
            "  {} POST {} kind {}, scheme {} ({} key(s)), replay window {window}, event id [{}] then sha256, sink {}, ack deadline {} ms",
            s.name,
            s.route(),
            s.kind.name(),
            s.verifier.scheme().name(),
            s.verifier.scheme().key_count(),
            ids.join(", "),
            s.sink,
            s.ack_deadline.as_millis()
        ));
    }
    lines.extend(config.warnings.iter().map(|w| format!("warning: {w}")));
    lines.push(String::new());
    lines.join("\n")
}
