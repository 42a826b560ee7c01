//! The audit line: one per request, with the outcome and why. Never bodies, signatures or keys.
//!
//! With `[audit] output = "file"` lines are serialized here straight into JSON and handed to the
//! file's writer thread: the tracing JSON formatter (field visitors, per-layer filter state)
//! cost several µs per request on the hot path. Other outputs go through `tracing` (target
//! [`TARGET`]) so they share the service log's format. Both carry the same fields.

use std::io::Write as _;
use std::sync::OnceLock;
use std::time::SystemTime;

use serde::Serialize;
use tracing_appender::non_blocking::NonBlocking;

/// The tracing target of audit lines.
pub const TARGET: &str = "hookbridge::audit";

static FILE: OnceLock<NonBlocking> = OnceLock::new();

/// Sends audit lines to this writer from now on (the first call wins).
pub fn to_file(writer: NonBlocking) {
    let _already_set = FILE.set(writer);
}

/// One audit line. `message` says what happened; `None` fields are left out.
#[derive(Serialize)]
pub struct Line<'a> {
    #[serde(skip)]
    pub level: tracing::Level,
    pub message: &'static str,
    pub source: &'a str,
    /// Addresses are formatted straight into the line (no `String` per request); empty when
    /// unknown.
    #[serde(serialize_with = "as_text")]
    pub client: &'a dyn std::fmt::Display,
    #[serde(serialize_with = "as_text")]
    pub peer: &'a dyn std::fmt::Display,
    pub outcome: &'a str,
    pub reason: &'a str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_from: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionFields<'a>>,
    pub bytes: usize,
    pub latency_us: u64,
}

/// What an approval callback's line adds.
#[derive(Serialize)]
pub struct DecisionFields<'a> {
    pub decision: &'a str,
    pub decided_by: &'a str,
    pub remembered: bool,
    pub callback_id: &'a str,
    /// The digest of the exact body judged (never the body).
    pub body_sha256: &'a str,
    /// The digest of another body decided first under the same callback ID: a conflict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflict_with: Option<&'a str>,
}

/// The envelope of a line in the file: the keys tracing's JSON format uses, so both outputs
/// parse alike.
#[derive(Serialize)]
struct Stamped<'a> {
    #[serde(serialize_with = "as_text")]
    timestamp: humantime::Rfc3339Timestamp,
    level: &'a str,
    #[serde(flatten)]
    line: &'a Line<'a>,
    target: &'static str,
}

fn as_text<S: serde::Serializer>(t: &impl std::fmt::Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(t)
}

impl<'a> Line<'a> {
    /// A successful request's line (INFO, status 200, nothing optional); callers set the rest.
    pub fn new(
        message: &'static str,
        source: &'a str,
        client: &'a dyn std::fmt::Display,
        peer: &'a dyn std::fmt::Display,
        bytes: usize,
        latency_us: u64,
    ) -> Self {
        Self {
            level: tracing::Level::INFO,
            message,
            source,
            client,
            peer,
            outcome: "",
            reason: "",
            status: 200,
            event_id: None,
            event_type: None,
            id_from: None,
            detail: None,
            decision: None,
            bytes,
            latency_us,
        }
    }

    pub fn write(&self) {
        if let Some(file) = FILE.get() {
            let mut buf = Vec::with_capacity(512);
            let stamped = Stamped {
                timestamp: humantime::format_rfc3339_micros(SystemTime::now()),
                level: self.level.as_str(),
                line: self,
                target: TARGET,
            };
            // Serializing strings and numbers into a Vec cannot fail.
            if serde_json::to_writer(&mut buf, &stamped).is_ok() {
                buf.push(b'\n');
                // A non-lossy queue: this only fails once the writer thread has stopped.
                let _stopped = file.clone().write_all(&buf);
            }
            return;
        }
        let d = self.decision.as_ref();
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(
                    target: TARGET, $level,
                    source = self.source, client = %self.client, peer = %self.peer,
                    outcome = self.outcome, reason = self.reason, status = self.status,
                    event_id = self.event_id, event_type = self.event_type,
                    id_from = self.id_from, detail = self.detail,
                    decision = d.map(|d| d.decision), decided_by = d.map(|d| d.decided_by),
                    remembered = d.map(|d| d.remembered), callback_id = d.map(|d| d.callback_id),
                    body_sha256 = d.map(|d| d.body_sha256),
                    conflict_with = d.and_then(|d| d.conflict_with),
                    bytes = self.bytes, latency_us = self.latency_us,
                    "{}", self.message
                )
            };
        }
        if self.level == tracing::Level::WARN {
            emit!(tracing::Level::WARN);
        } else {
            emit!(tracing::Level::INFO);
        }
    }
}
