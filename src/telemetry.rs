//! Logging setup: human-readable text for a terminal, or one JSON object per line for log
//! pipelines. `RUST_LOG` filters the service log (default `info`). The audit log (target
//! `hookbridge::audit`, one line per request) goes with it, to its own JSON-lines file, or
//! nowhere, as `[audit]` says.

use std::sync::Arc;

use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Layer, fmt};

use crate::config::{AuditConfig, AuditOutput};

/// The tracing target of audit lines.
pub const AUDIT_TARGET: &str = "hookbridge::audit";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// # Errors
/// When the audit file cannot be opened.
pub fn init(format: LogFormat, audit: &AuditConfig) -> std::io::Result<()> {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let main = match format {
        LogFormat::Text => fmt::layer().with_writer(std::io::stdout).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stdout)
            .boxed(),
    };
    let audit_in_main = audit.output == AuditOutput::Stdout;
    let main = main
        .with_filter(filter_fn(move |m| {
            audit_in_main || m.target() != AUDIT_TARGET
        }))
        .with_filter(env);
    let audit_layer = match (audit.output, &audit.path) {
        (AuditOutput::File, Some(path)) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let file = Arc::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            );
            Some(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(file)
                    .with_filter(filter_fn(|m| m.target() == AUDIT_TARGET)),
            )
        }
        _ => None,
    };
    if let Err(e) = tracing_subscriber::registry()
        .with(main)
        .with(audit_layer)
        .try_init()
    {
        eprintln!("logging already initialised: {e}");
    }
    Ok(())
}
