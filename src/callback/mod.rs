//! Decisions for callbacks: a Cobo callback is answered with a plain-text `ok` (approve) or
//! `deny` (reject), and `ok` can release a withdrawal, so the answer must come from a decision,
//! never from the mere arrival of the request.
//!
//! This module owns where decisions come from and where they are kept:
//! - [`rules`]: CEL policy rules evaluated inline (first match wins, explicit default);
//! - [`service`]: request-reply with the user's decision service over RabbitMQ or Kafka;
//! - [`store`]: remembered decisions per callback ID (memory, or Redis shared by replicas), and
//!   the in-process wake-up of requests waiting for a reply.
//!
//! The request flow (verify, ask, record, answer) is [`crate::ingress`]'s.

pub mod rules;
pub mod service;
pub mod store;

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

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
}

/// The key a decision is remembered and correlated under: source and callback ID. It is the
/// correlation ID of the decision request, so whichever replica consumes the reply knows what
/// it decides without shared in-flight state.
pub fn correlation_id(source: &str, callback_id: &str) -> String {
    format!("{source}:{callback_id}")
}
