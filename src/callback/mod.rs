//! Decisions for callbacks: a Cobo callback is answered with a plain-text `ok` (approve) or
//! `deny` (reject), and `ok` can release a withdrawal, so the answer must come from a decision,
//! never from the mere arrival of the request.
//!
//! This module owns the approval flow and where decisions come from and are kept:
//! - [`approve`]: the flow of one approval callback (remembered decision, rules, ask, record,
//!   audit, answer) and of a decision service's reply; it takes the request path's delivery
//!   as a capability;
//! - [`rules`]: CEL policy rules evaluated inline (first match wins, explicit default);
//! - [`service`]: request-reply with the user's decision service over RabbitMQ or Kafka;
//! - [`store`]: remembered decisions per [`Subject`] (memory, or Redis shared by replicas), and
//!   the in-process wake-up of requests waiting for a reply.
//!
//! A decision belongs to one exact signed body ([`Subject`]): the callback ID alone is not
//! trusted, because WaaS 1.0's `request_id` is chosen by whoever calls Cobo's API and Cobo's
//! keys are shared by all of its customers, so another customer can get a genuinely signed body
//! with any callback ID. Reading and verifying the request, and the status of the answer, are
//! [`crate::ingress`]'s.

pub mod approve;
pub mod rules;
pub mod service;
pub mod store;

use std::fmt;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use self::rules::RuleSet;

/// CloudEvents `type` of a decision request sent to the decision service.
pub const REQUEST_TYPE: &str = "hookbridge.callback.decision_request";
/// CloudEvents `type` of the audit event published for every decision.
pub const DECISION_TYPE: &str = "hookbridge.callback.decision";

/// What a callback is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Approve. For a withdrawal confirmation this releases the funds.
    Ok,
    /// Reject.
    Deny,
}

impl Verdict {
    /// The exact response body Cobo expects.
    pub fn body(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Deny => "deny",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.body())
    }
}

/// A decision with who made it and why: what is remembered, published and logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub decision: Verdict,
    /// Free text from the rule or the decision service (never from the request).
    pub reason: String,
    /// `rule:<name>`, `default`, `service:<sink>`, `timeout` or `bad_signature`.
    pub decided_by: String,
    /// RFC 3339, when the decision was made.
    pub decided_at: String,
}

impl Decision {
    /// The kind of decider, for the metric label: `rule`, `default`, `service`, `timeout` or
    /// `bad_signature` (the prefix of `decided_by`).
    pub fn decider(&self) -> &'static str {
        match self.decided_by.split(':').next().unwrap_or_default() {
            "rule" => "rule",
            "default" => "default",
            "service" => "service",
            "timeout" => "timeout",
            _ => "bad_signature",
        }
    }

    pub fn new(
        decision: Verdict,
        reason: impl Into<String>,
        decided_by: impl Into<String>,
    ) -> Self {
        Self {
            decision,
            reason: reason.into(),
            decided_by: decided_by.into(),
            decided_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        }
    }
}

/// What a `kind = "callback"` source is for; always explicit in config.
#[derive(Debug)]
pub enum Purpose {
    /// A notification (Cobo WaaS 1.0 transaction push): `ok` acknowledges receipt and is sent
    /// once the event is durable, exactly like a webhook's 200.
    Notification,
    /// An approval request (withdrawal confirmation, WaaS 2.0 callback): `ok` approves.
    Approval(Approval),
}

/// How an approval is decided.
#[derive(Debug)]
pub struct Approval {
    pub rules: RuleSet,
    pub otherwise: Otherwise,
    /// The decision service, asked when no rule matches and `otherwise` is [`Otherwise::Ask`].
    pub service: Option<ServiceSpec>,
    /// Longest wait for the decision service (Cobo gives up after 2 s).
    pub timeout: Duration,
    pub on_timeout: OnTimeout,
    /// A request whose signature fails is answered `deny` (200) instead of 401.
    pub deny_bad_signatures: bool,
}

/// The decision when no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Otherwise {
    Decide(Verdict),
    /// Ask the decision service.
    Ask,
}

/// What happens when the decision service does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    /// No decision yet: answer 503, Cobo retries and the retry may find the late reply.
    #[default]
    Retry,
    /// Answer `deny` (and remember it).
    Deny,
}

/// Where decision requests go and replies come from, on one of the configured broker sinks.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// A Kafka or RabbitMQ sink; its connection settings are reused.
    pub sink: String,
    /// Kafka topic, or RabbitMQ durable queue, that decision requests are published to.
    pub requests: String,
    /// Kafka topic, or RabbitMQ fanout exchange, that decision replies are published to.
    pub replies: String,
    /// The service's secret: every reply carries a MAC made with it ([`reply_mac_message`]).
    pub secret: MacKey,
}

impl ServiceSpec {
    /// Where replies arrive: two sources with the same address read the same replies.
    pub fn reply_address(&self) -> (&str, &str) {
        (&self.sink, &self.replies)
    }
}

/// Version of the decision request/reply format (`hbversion` in requests, `version` in
/// replies). Version 1 (no nonce, no MAC) is refused.
pub const WIRE_VERSION: u64 = 2;

/// What one decision is about: one exact signed callback body of one source, the callback ID
/// found in it, and the locator that found it. Its [`Subject::key`] is the correlation ID of
/// the decision request and the key the decision is remembered under, so a different body with
/// the same callback ID is never answered from this body's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub source: String,
    pub callback_id: String,
    /// Which locator produced the callback ID (`body:/request_id`, …).
    pub locator: String,
    /// Lower-case hex SHA-256 of the exact signed body.
    pub body_sha256: String,
}

impl Subject {
    pub fn new(source: &str, callback_id: &str, locator: &str, body: &[u8]) -> Self {
        Self {
            source: source.to_owned(),
            callback_id: callback_id.to_owned(),
            locator: locator.to_owned(),
            body_sha256: hex::encode(Sha256::digest(body)),
        }
    }

    /// `<source>:<callback id>:<body sha256>`: the decision key, request `id` and AMQP
    /// correlation ID. Source names have no `:`, and the digest is fixed-length hex, so the
    /// key splits back unambiguously ([`Subject::parse_key`]).
    pub fn key(&self) -> String {
        format!("{}:{}:{}", self.source, self.callback_id, self.body_sha256)
    }

    /// `<source>:<callback id>`: what two different bodies with the same callback ID share (the
    /// conflict index).
    pub fn identity(&self) -> String {
        format!("{}:{}", self.source, self.callback_id)
    }

    /// The audit event's ID: the callback ID and the body digest, so the decision about a
    /// second body with the same callback ID is not taken for a copy of the first by consumers
    /// that deduplicate by ID.
    pub fn event_id(&self) -> String {
        format!("{}:{}", self.callback_id, self.body_sha256)
    }

    /// `(source, callback id, body sha256)` of a key made by [`Subject::key`].
    pub fn parse_key(key: &str) -> Option<(&str, &str, &str)> {
        let (source, rest) = key.split_once(':')?;
        let (callback_id, digest) = rest.rsplit_once(':')?;
        let hex_digest = digest.len() == 64
            && digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (hex_digest && !source.is_empty() && !callback_id.is_empty()).then_some((
            source,
            callback_id,
            digest,
        ))
    }
}

/// An HMAC-SHA256 key (a decision service's secret, or the decision store's). `Debug` never
/// shows it.
/// Boxed: the keyed state is two SHA-256 states, and config types carry it by value.
#[derive(Clone)]
pub struct MacKey(std::sync::Arc<Hmac<Sha256>>);

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKey([redacted])")
    }
}

/// Shortest secret accepted for a MAC key, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

impl MacKey {
    pub fn new(secret: &[u8]) -> Self {
        // HMAC takes a key of any length.
        Self(std::sync::Arc::new(
            Hmac::new_from_slice(secret).unwrap_or_else(|_| unreachable!()),
        ))
    }

    /// The hex MAC of `message`.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        let mut mac = (*self.0).clone();
        mac.update(message);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `tag_hex` is the MAC of `message` (constant-time comparison).
    pub fn verify_hex(&self, message: &[u8], tag_hex: &str) -> bool {
        let Ok(tag) = hex::decode(tag_hex) else {
            return false;
        };
        let mut mac = (*self.0).clone();
        mac.update(message);
        mac.verify_slice(&tag).is_ok()
    }
}

/// What a decision reply's `mac` covers: the format version, the request's `id` (the decision
/// key), the nonce that request carried, and the decision, one per line. None of them can hold
/// a line break (IDs with control characters are refused), so the message is unambiguous.
pub fn reply_mac_message(key: &str, nonce: &str, decision: Verdict) -> String {
    format!(
        "hookbridge-decision-reply/v{WIRE_VERSION}\n{key}\n{nonce}\n{}",
        decision.body()
    )
}
