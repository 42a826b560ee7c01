//! The compiled plan of one source: what config makes of a `[sources.<name>]` section and every
//! request to it follows (kind, verifier, locators, sink, limits, ack mode). Built once by
//! `config::load`; read by ingress, normalize and the sinks.

use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::callback::{Approval, Purpose};
use crate::normalize::locator::Locator;
use crate::verify::SourceVerifier;

/// When a source answers 2xx.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// After the broker confirms; if it does not in time, after the spool fsync.
    #[default]
    Broker,
    /// After the spool fsync; published asynchronously.
    Spool,
    /// At once, best effort: an event can be lost. Explicit opt-in only.
    Accept,
}

/// What becomes of an event its sink refuses for good (unroutable, too large, not authorised):
/// retrying cannot succeed until someone changes the broker, so the provider's retries are
/// pointless and, once it gives up, the event is gone.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
pub enum OnRefused {
    /// Kept, fsync'd, in the spool's dead-letter table with the reason; answered 2xx once durable.
    /// Replayed with `hookbridge spool dead replay` once the broker is fixed.
    DeadLetter,
    /// Answered 503 (`broker_refused`): the provider retries until it gives up.
    Reject,
}

/// A token bucket: sustained rate and burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: std::num::NonZeroU32,
    pub burst: std::num::NonZeroU32,
}

/// What a source is for: a webhook (200 once durable) or a Cobo callback (plain-text
/// `ok`/`deny`, for a notification or an approval).
#[derive(Debug)]
pub enum SourceKind {
    Webhook,
    Callback(Purpose),
}

impl SourceKind {
    /// The approval settings, for an approval callback.
    pub fn approval(&self) -> Option<&Approval> {
        match self {
            Self::Callback(Purpose::Approval(a)) => Some(a),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Callback(Purpose::Notification) => "callback (notification)",
            Self::Callback(Purpose::Approval(_)) => "callback (approval)",
        }
    }
}

#[derive(Debug)]
pub struct SourceSpec {
    pub name: String,
    pub kind: SourceKind,
    pub verifier: SourceVerifier,
    pub event_id: Vec<Locator>,
    pub event_type: Vec<Locator>,
    pub default_type: String,
    pub ce_source: String,
    pub sink: String,
    pub ack_deadline: Duration,
    pub max_body_bytes: usize,
    /// `None`: any client address.
    pub allow_ips: Option<Vec<IpNet>>,
    pub rate_limit: Option<Rate>,
    pub rate_limit_per_ip: Option<Rate>,
    pub ack: AckMode,
    /// Dead-letter needs the spool; without one for this source's sink it behaves as reject.
    pub on_refused: OnRefused,
    pub dedup: bool,
    /// Shadow mode: verify, log and count, but accept (and publish, marked) what fails.
    pub shadow: bool,
}

impl SourceSpec {
    /// The URL path this source is served at.
    pub fn route(&self) -> String {
        format!("/hooks/{}", self.name)
    }
}
