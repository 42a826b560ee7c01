//! The audit line: one per request, with the outcome and why. Never bodies, signatures or keys.
//!
//! With `[audit] output = "file"` lines are serialized here straight into JSON and handed to the
//! file's writer thread: the tracing JSON formatter (field visitors, per-layer filter state)
//! cost several µs per request on the hot path. Other outputs go through `tracing` (target
//! [`TARGET`]) so they share the service log's format. Both carry the same fields.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
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
    /// Addresses as [`AddrText`] writes them; empty when unknown.
    pub client: &'a str,
    pub peer: &'a str,
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
        client: &'a str,
        peer: &'a str,
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
                    source = self.source, client = self.client, peer = self.peer,
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

/// An address as the audit line writes it (`Display`'s text), without `core::fmt`'s machinery
/// for IPv4, the common case: under callgrind, `Display` for the client's `Ipv4Addr` and the
/// peer's `SocketAddrV4` cost about 2,700 instructions per request, 2 % of an HMAC request.
pub enum AddrText {
    /// IPv4 text, at most `255.255.255.255:65535` (21 bytes).
    Inline([u8; 21], u8),
    /// IPv6 (and the rare others), through `Display`.
    Formatted(String),
}

impl AddrText {
    /// The empty text, for an address not known.
    pub const NONE: Self = Self::Inline([0; 21], 0);

    pub fn ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => {
                let mut t = Self::NONE;
                t.push_v4(v4.octets());
                t
            }
            IpAddr::V6(_) => Self::Formatted(ip.to_string()),
        }
    }

    pub fn socket(addr: SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(v4) => {
                let mut t = Self::NONE;
                t.push_v4(v4.ip().octets());
                t.push(b':');
                t.push_decimal(v4.port());
                t
            }
            SocketAddr::V6(_) => Self::Formatted(addr.to_string()),
        }
    }

    /// Fixed text: `unknown`, for a client behind an unreadable forwarding chain (rare).
    pub fn text(text: &str) -> Self {
        Self::Formatted(text.to_owned())
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Only ASCII digits, dots and colons are ever pushed.
            Self::Inline(buf, len) => std::str::from_utf8(&buf[..usize::from(*len)]).unwrap_or(""),
            Self::Formatted(s) => s,
        }
    }

    fn push_v4(&mut self, octets: [u8; 4]) {
        for (i, o) in octets.into_iter().enumerate() {
            if i > 0 {
                self.push(b'.');
            }
            self.push_decimal(u16::from(o));
        }
    }

    fn push_decimal(&mut self, n: u16) {
        let mut digits = [0u8; 5];
        let mut at = digits.len();
        let mut n = n;
        loop {
            at -= 1;
            // A remainder of 10 is below 10: the cast keeps it whole.
            #[allow(clippy::cast_possible_truncation)]
            let d = (n % 10) as u8;
            digits[at] = b'0' + d;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &d in &digits[at..] {
            self.push(d);
        }
    }

    fn push(&mut self, b: u8) {
        if let Self::Inline(buf, len) = self
            && let Some(slot) = buf.get_mut(usize::from(*len))
        {
            *slot = b;
            *len += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    use super::*;

    /// The fast path writes exactly what `Display` writes.
    #[test]
    fn addr_text_is_display() {
        let v4s = [
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(10, 9, 100, 255),
            Ipv4Addr::new(255, 255, 255, 255),
            Ipv4Addr::new(1, 20, 3, 40),
        ];
        for ip in v4s {
            assert_eq!(AddrText::ip(IpAddr::V4(ip)).as_str(), ip.to_string());
            for port in [0, 7, 80, 443, 8080, 10000, 65535] {
                let a = SocketAddr::from((ip, port));
                assert_eq!(AddrText::socket(a).as_str(), a.to_string());
            }
        }
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
        assert_eq!(AddrText::ip(IpAddr::V6(v6)).as_str(), "2001:db8::1");
        let a = SocketAddr::V6(SocketAddrV6::new(v6, 443, 0, 7));
        assert_eq!(AddrText::socket(a).as_str(), a.to_string());
        assert_eq!(AddrText::NONE.as_str(), "");
        assert_eq!(AddrText::text("unknown").as_str(), "unknown");
    }
}
