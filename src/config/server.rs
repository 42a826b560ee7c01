//! `[server]`: the listener's limits, TLS and trusted proxies, checked and turned into
//! [`ServerConfig`]; and the two checks that weigh the server against the sources.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::parse::parse_nets;
use super::problems::Problems;
use super::raw::RawServer;
use crate::ingress::client::Proxies;
use crate::plan::SourceSpec;

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
    pub proxies: Proxies,
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

/// `[server]` once checked.
pub struct Server {
    pub config: ServerConfig,
    /// `server.max_body_bytes`: the body limit of every source that sets none.
    pub max_body_bytes: usize,
}

/// Reads and checks `[server]` (all defaults when absent).
pub fn load(problems: &mut Problems, value: Option<toml::Value>) -> Server {
    let raw: RawServer = problems.section_or_default("server", value);
    let mut at = problems.at("server");
    at.check_nonzero("max_body_bytes", raw.max_body_bytes);
    at.check_nonzero("max_connections", raw.max_connections);
    at.check_nonzero("max_connections_per_ip", raw.max_connections_per_ip);
    at.check_nonzero("idle_timeout_ms", raw.idle_timeout_ms);
    at.check_nonzero(
        "http2_keepalive_interval_ms",
        raw.http2_keepalive_interval_ms,
    );
    at.check_nonzero("http2_keepalive_timeout_ms", raw.http2_keepalive_timeout_ms);
    at.check_nonzero(
        "http2_max_concurrent_streams",
        raw.http2_max_concurrent_streams,
    );
    if raw.max_header_bytes < 8192 {
        at.error("max_header_bytes", "must be at least 8192");
    }
    let trusted_proxies = parse_nets(&mut at.child("trusted_proxies"), &raw.trusted_proxies);
    let tls = raw.tls.as_ref().map(|t| TlsFiles {
        cert_file: t.cert_file.clone(),
        key_file: t.key_file.clone(),
    });
    if let Some(t) = &tls
        && let Err(e) = crate::tls::server_config(&t.cert_file, &t.key_file)
    {
        at.error("tls", format!("{e:#}"));
    }
    if raw.require_tls && tls.is_none() && raw.trusted_proxies.is_empty() {
        at.error(
            "require_tls",
            "needs server.tls, or trusted_proxies that terminate TLS and send X-Forwarded-Proto",
        );
    }
    if !raw.trusted_proxies.is_empty() && raw.forwarded_header.is_none() {
        at.error("forwarded_header", "required with trusted_proxies: \"x-forwarded-for\" or \"forwarded\", the one header your proxies set (the other is then ignored)");
    }
    if raw.rate_limit_ipv6_prefix > 128 {
        at.error("rate_limit_ipv6_prefix", "at most 128");
    }
    at.check_nonzero("max_rate_limited_clients", raw.max_rate_limited_clients);
    at.check_nonzero("max_in_flight", raw.max_in_flight);
    Server {
        max_body_bytes: raw.max_body_bytes,
        config: config(raw, trusted_proxies, tls),
    }
}

/// The checked settings in the types the server runs with.
fn config(raw: RawServer, trusted_proxies: Vec<IpNet>, tls: Option<TlsFiles>) -> ServerConfig {
    ServerConfig {
        listen: raw.listen,
        body_timeout: Duration::from_millis(raw.body_timeout_ms),
        header_timeout: Duration::from_millis(raw.header_timeout_ms),
        max_headers: raw.max_headers,
        max_connections: raw.max_connections,
        max_connections_per_ip: raw.max_connections_per_ip,
        idle_timeout: Duration::from_millis(raw.idle_timeout_ms),
        max_connection_age: (raw.max_connection_age_ms > 0)
            .then(|| Duration::from_millis(raw.max_connection_age_ms)),
        http2_keepalive_interval: Duration::from_millis(raw.http2_keepalive_interval_ms),
        http2_keepalive_timeout: Duration::from_millis(raw.http2_keepalive_timeout_ms),
        http2_max_concurrent_streams: raw.http2_max_concurrent_streams,
        shutdown_timeout: Duration::from_millis(raw.shutdown_timeout_ms),
        max_header_bytes: raw.max_header_bytes,
        tls,
        require_tls: raw.require_tls,
        proxies: Proxies {
            trusted: trusted_proxies,
            header: raw.forwarded_header.unwrap_or_default(),
        },
        ipv6_prefix: raw.rate_limit_ipv6_prefix,
        max_rate_clients: raw.max_rate_limited_clients,
        max_body_buffer_bytes: raw.max_body_buffer_bytes,
        admin_listen: raw.admin_listen,
        admin_on_main: raw.admin_listen.is_none()
            && (raw.listen.ip().is_loopback() || raw.expose_admin_routes),
        max_in_flight: raw.max_in_flight,
    }
}

/// Without `admin_listen`, a listener that is not loopback serves `/readyz` and `/metrics` only
/// with `expose_admin_routes`: say where they went.
pub fn warn_admin_routes(problems: &mut Problems, server: &ServerConfig) {
    if server.admin_listen.is_none() && !server.admin_on_main {
        problems.warn(format!(
            "server: /readyz and /metrics are not served on the public listener {}; set server.admin_listen (e.g. a private 0.0.0.0:9090), or expose_admin_routes = true",
            server.listen
        ));
    }
}

/// Every source's body must fit in the server-wide body budget, or it could never be read.
pub fn check_body_budget(problems: &mut Problems, server: &ServerConfig, sources: &[SourceSpec]) {
    if let Some(s) = sources
        .iter()
        .find(|s| s.max_body_bytes > server.max_body_buffer_bytes)
    {
        problems.error(format!(
            "server.max_body_buffer_bytes: {} is less than sources.{}.max_body_bytes ({}): such a body could never be read",
            server.max_body_buffer_bytes, s.name, s.max_body_bytes
        ));
    }
}
