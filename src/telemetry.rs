//! Logging setup: human-readable text for a terminal, or one JSON object per line for log
//! pipelines. `RUST_LOG` filters the service log (default `info`). The audit log (target
//! `hookbridge::audit`, one line per request) goes with it, to its own JSON-lines file (written
//! by [`crate::audit`] directly), or nowhere, as `[audit]` says.
//!
//! Lines are handed to a writer thread (tracing-appender, buffered, never dropping: a full
//! queue makes the logging call wait) instead of one `write(2)` per line on the request path.
//! [`init`]'s guards flush the queues when dropped at exit; a crash can lose the last few ms of
//! lines, never an event (events are durable in their sink before the 2xx).

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Layer, fmt};

use crate::config::{AuditConfig, AuditOutput};

use crate::audit::TARGET as AUDIT_TARGET;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flushes the log writers when dropped: keep it until the process ends.
#[must_use = "dropping the guards stops the log writers"]
pub struct Guards(#[allow(dead_code)] Vec<WorkerGuard>);

fn writer<W: std::io::Write + Send + 'static>(
    w: W,
    guards: &mut Vec<WorkerGuard>,
) -> tracing_appender::non_blocking::NonBlocking {
    // The worker thread writes each line to its writer and flushes once its queue is empty:
    // buffered, a burst of lines costs one `write(2)` instead of one per line.
    // 16 k queued lines (about a second of audit lines at full load) instead of the default
    // 128 k: the queue is allocated up front, 4 MB per writer at the default.
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(16 * 1024)
        .lossy(false)
        .thread_name("hookbridge-log")
        .finish(std::io::BufWriter::with_capacity(64 * 1024, w));
    guards.push(guard);
    writer
}

/// # Errors
/// When the audit file cannot be opened.
pub fn init(format: LogFormat, audit: &AuditConfig) -> std::io::Result<Guards> {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let mut guards = Vec::new();
    let stdout = writer(std::io::stdout(), &mut guards);
    let main = match format {
        // Colours only for a terminal: the writer thread hides what stdout is from the layer.
        LogFormat::Text => fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_writer(stdout)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(stdout)
            .boxed(),
    };
    let audit_in_main = audit.output == AuditOutput::Stdout;
    let main = main
        .with_filter(filter_fn(move |m| {
            audit_in_main || m.target() != AUDIT_TARGET
        }))
        .with_filter(env);
    // The audit file gets its lines straight from `audit` (JSON lines, its own writer thread).
    if let (AuditOutput::File, Some(path)) = (audit.output, &audit.path) {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        crate::audit::to_file(writer(file, &mut guards));
    }
    if let Err(e) = tracing_subscriber::registry().with(main).try_init() {
        eprintln!("logging already initialised: {e}");
    }
    Ok(Guards(guards))
}
