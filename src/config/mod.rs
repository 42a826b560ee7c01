//! Loads and validates the TOML config into typed, ready-to-use values: parsed keys, durations,
//! resolved sinks. Collects every error it can find instead of stopping at the first, and never
//! echoes a configured value (it may be a secret) in an error.
//!
//! Pure apart from reading key files: no network, no listeners (that is [`crate::app`]).
//!
//! `load` reads one section at a time, each in its own file (`server.rs`, `stores.rs`,
//! `sinks.rs`, `sources.rs`, …), all reporting into one collector (`problems.rs`) that puts the
//! path in front of every message. `raw.rs` is the file as serde sees it, with the fields'
//! defaults; `parse.rs` has the value parsers sections share.

mod approval;
mod audit;
mod env;
mod parse;
mod problems;
mod raw;
mod scheme;
mod server;
mod sinks;
mod sources;
mod spool;
mod stores;
#[cfg(test)]
mod tests;
mod traces;

use std::fmt;
use std::path::Path;

pub use self::audit::AuditConfig;
use self::problems::Problems;
use self::raw::RawSpool;
pub use self::raw::{AuditOutput, DedupBackend, RawVerify, SecretEncoding};
pub use self::server::{ServerConfig, TlsFiles};
pub use self::spool::SpoolConfig;
pub use self::stores::{DecisionsConfig, DedupConfig, StoreConfig};
pub use self::traces::TracingConfig;
use crate::plan::SourceSpec;
use crate::sink::spec::{SinkKind, SinkSpec};

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
    /// OpenTelemetry traces; `None` when off.
    pub tracing: Option<TracingConfig>,
    /// Things that are allowed but deserve a loud line at startup (`none` scheme, small RSA keys).
    pub warnings: Vec<String>,
    /// The file as written, variables substituted: what a reload compares section by section.
    pub written: Written,
}

/// A config file's sections as written, `${VAR}`s and `${file:}`s substituted. It holds
/// secrets, so its `Debug` shows none of it.
#[derive(Clone, PartialEq, Default)]
pub struct Written(toml::Table);

impl fmt::Debug for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Written(..)")
    }
}

impl Written {
    /// A top-level section (`server`, `sinks`, …), or `None` when the file has none.
    pub fn section(&self, name: &str) -> Option<&toml::Value> {
        self.0.get(name)
    }

    /// One entry of a table section (`sources.<name>`, `sinks.<name>`).
    pub fn entry(&self, section: &str, name: &str) -> Option<&toml::Value> {
        self.0.get(section)?.get(name)
    }

    /// The names of the top-level sections present.
    pub fn sections(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// The top-level sections, in the order they are read (and listed in the unknown-section error).
const SECTIONS: [&str; 8] = [
    "server",
    "audit",
    "tracing",
    "spool",
    "dedup",
    "decisions",
    "sinks",
    "sources",
];

/// Reads and validates a config file, substituting `${VAR}` from the process environment.
///
/// # Errors
/// Every problem found, or the read error.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors(vec![format!("{}: {e}", path.display())]))?;
    load(&text, &|name| std::env::var(name).ok())
}

/// One source's `verify` table as written, `${VAR}`s substituted: what `hookbridge send` signs
/// with. It holds the source's secrets, so it is for the CLI on the operator's own machine; run
/// [`load`] first, which validates them.
///
/// # Errors
/// When the text is not TOML, a variable is unset, or the source or its `verify` is missing or
/// unreadable (values are never echoed).
pub fn source_verify(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    source: &str,
) -> Result<RawVerify, ConfigErrors> {
    let mut root: toml::Table = toml::from_str(text).map_err(|e| {
        ConfigErrors(vec![format!(
            "not valid TOML: {}",
            env::redact_values(e.message())
        )])
    })?;
    let mut errors = Vec::new();
    env::substitute(&mut root, env, &mut errors);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let verify = root
        .remove("sources")
        .and_then(|s| s.get(source).and_then(|s| s.get("verify")).cloned())
        .ok_or_else(|| {
            ConfigErrors(vec![format!(
                "sources.{source}: no such source with a verify table"
            )])
        })?;
    verify.try_into().map_err(|e: toml::de::Error| {
        ConfigErrors(vec![format!(
            "sources.{source}.verify: {}",
            env::redact_values(e.message())
        )])
    })
}

/// Validates config text; `env` resolves `${VAR}` (injected so tests need no process env).
///
/// # Errors
/// Every problem found.
pub fn load(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let mut root: toml::Table = toml::from_str(text).map_err(|e| {
        ConfigErrors(vec![format!(
            "not valid TOML: {}",
            env::redact_values(e.message())
        )])
    })?;
    let mut problems = Problems::default();
    env::substitute(&mut root, env, &mut problems.errors);
    let written = Written(root.clone());
    for key in root.keys().filter(|k| !SECTIONS.contains(&k.as_str())) {
        problems.error(format!(
            "{key}: unknown section (expected {})",
            SECTIONS.join(", ")
        ));
    }

    let server = server::load(&mut problems, root.remove("server"));
    let audit = audit::load(&mut problems, root.remove("audit"));
    let tracing = traces::load(&mut problems, root.remove("tracing"), env);
    // Read in file order; whether it is on depends on the sinks, so it is settled below.
    let raw_spool: RawSpool = problems.section_or_default("spool", root.remove("spool"));
    let stores = stores::load(
        &mut problems,
        root.remove("dedup"),
        root.remove("decisions"),
    );
    let sinks = sinks::load(&mut problems, root.remove("sinks"));
    let context = sources::Context {
        sinks: &sinks,
        max_body_bytes: server.max_body_bytes,
        memory: stores.memory(),
    };
    let sources = sources::load(&mut problems, root.remove("sources"), &context);

    // What one section means for another, once all are read.
    let spool = spool::build(&mut problems, raw_spool, &sinks, &sources.specs);
    server::warn_admin_routes(&mut problems, &server.config);
    server::check_body_budget(&mut problems, &server.config, &sources.specs);
    stores::check_decision_secret(&mut problems, &stores.decisions, sources.approvals);

    if !problems.errors.is_empty() {
        return Err(ConfigErrors(problems.errors));
    }
    Ok(Config {
        server: server.config,
        audit,
        spool,
        dedup: stores.dedup,
        decisions: stores.decisions,
        sinks,
        sources: sources.specs,
        tracing,
        warnings: problems.warnings,
        written,
    })
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
