//! Proves a request came from the provider a source names: signature schemes over the exact raw
//! body bytes, plus the replay window for schemes that sign a timestamp.
//!
//! Pure: no I/O, and `now` is passed in. Synchronous but for [`SourceVerifier::verify_batched`],
//! which lets a Cobo WaaS 2.0 source's concurrent requests share one Ed25519 batch check
//! (see `batch`). Keys are parsed when the config loads
//! (see [`crate::config`]), so nothing here can fail for a reason an operator could have caught at
//! startup. The only ways to obtain a [`VerifiedWebhook`] are [`SourceVerifier::verify`] and, for
//! a source in shadow mode, [`SourceVerifier::verify_shadow`], whose failures stay in the proof
//! ([`Proof::shadow`]): the rest of the pipeline takes that type, so an unverified request cannot
//! be normalized or published unless its source asked for shadow mode, and then it is marked.

mod batch;
mod cobo;
mod diagnose;
mod handshake;
mod hmac;
mod rsa;
mod shared_secret;
mod standard;
mod url_signed;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName};

pub use self::cobo::{CoboWaas1, CoboWaas2};
pub use self::diagnose::{Alternative, Diagnosis, HeaderRead, Hint, KeyResult, KeyTried, Skew};
pub use self::handshake::{Handshake, HandshakeError};
pub use self::hmac::{Encoding, HmacSha256, Paddle, Slack, Stripe, Zoom};
pub use self::rsa::{RsaSha256, WARN_BELOW_BITS as RSA_WARN_BELOW_BITS};
pub use self::shared_secret::SharedSecret;
pub use self::standard::StandardWebhooks;
pub use self::url_signed::{Square, Twilio};
use crate::normalize::locator::Locator;

/// A request as it arrived: headers and the exact body bytes, not yet trusted.
#[derive(Debug)]
pub struct IncomingWebhook {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A request whose signature (and replay window) checked out, or, from a source in shadow
/// mode, one that did not and says so in [`Proof::shadow`]. Fields are private and the only
/// constructors are in this module: holding one is the proof.
#[derive(Debug)]
pub struct VerifiedWebhook {
    headers: HeaderMap,
    body: Bytes,
    proof: Proof,
}

impl VerifiedWebhook {
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }

    pub fn proof(&self) -> &Proof {
        &self.proof
    }
}

/// What the verifier saw, kept so consumers can re-verify the event themselves. Never holds a
/// secret: for `shared-secret` the header *is* the secret, so `signature` stays `None` there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proof {
    /// The scheme's config name, e.g. `cobo-waas2`.
    pub scheme: &'static str,
    /// Label of the key or secret that matched (`prod`, `key#2`): useful during rotation.
    pub key: Option<String>,
    /// The signature header value as received.
    pub signature: Option<String>,
    /// The signed timestamp exactly as received.
    pub timestamp: Option<String>,
    /// Standard Webhooks: the signed message id (`webhook-id`).
    pub message_id: Option<String>,
    /// Shadow mode only: why verification failed (a [`VerifyError::reason`] code). `Some` means
    /// the request is **not** authenticated and was let through because its source is in
    /// shadow mode; the other fields but `scheme` are then empty.
    pub shadow: Option<&'static str>,
}

impl Proof {
    /// Whether the request was authenticated (always, outside shadow mode).
    pub fn verified(&self) -> bool {
        self.shadow.is_none()
    }
}

/// Why a request was not accepted as authentic. Every variant is answered 401; the reason goes
/// to logs and metrics only.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("malformed header {header}: {reason}")]
    MalformedHeader {
        header: &'static str,
        reason: &'static str,
    },
    #[error("signature does not match any configured key")]
    BadSignature,
    #[error("signed timestamp is {0} s older than the replay window allows")]
    StaleTimestamp(u64),
    #[error("signed timestamp is {0} s in the future, beyond the replay window")]
    FutureTimestamp(u64),
}

impl VerifyError {
    /// Stable reason code for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing_signature",
            Self::MalformedHeader { .. } => "malformed_signature",
            Self::BadSignature => "bad_signature",
            Self::StaleTimestamp(_) => "stale_timestamp",
            Self::FutureTimestamp(_) => "future_timestamp",
        }
    }
}

/// The closed set of schemes. An unknown scheme name is a config error, never "accept".
pub enum Scheme {
    CoboWaas2(CoboWaas2),
    CoboWaas1(CoboWaas1),
    RsaSha256(RsaSha256),
    HmacSha256(HmacSha256),
    SharedSecret(SharedSecret),
    StandardWebhooks(StandardWebhooks),
    Stripe(Stripe),
    Slack(Slack),
    Zoom(Zoom),
    /// GitHub's preset of the generic HMAC scheme (`X-Hub-Signature-256: sha256=<hex>`).
    GitHub(HmacSha256),
    /// Shopify's preset of the generic HMAC scheme (`X-Shopify-Hmac-Sha256: <base64>`).
    Shopify(HmacSha256),
    Twilio(Twilio),
    Square(Square),
    Paddle(Paddle),
    /// No verification at all: only when configured explicitly, and logged loudly at startup.
    None,
}

impl fmt::Debug for Scheme {
    // Hand-written so no key material can ever reach a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scheme({}, [redacted])", self.name())
    }
}

impl Scheme {
    pub fn name(&self) -> &'static str {
        match self {
            Self::CoboWaas2(_) => "cobo-waas2",
            Self::CoboWaas1(_) => "cobo-waas1",
            Self::RsaSha256(_) => "rsa-sha256",
            Self::HmacSha256(_) => "hmac-sha256",
            Self::SharedSecret(_) => "shared-secret",
            Self::StandardWebhooks(_) => "standard-webhooks",
            Self::Stripe(_) => "stripe",
            Self::Slack(_) => "slack",
            Self::Zoom(_) => "zoom",
            Self::GitHub(_) => "github",
            Self::Shopify(_) => "shopify",
            Self::Twilio(_) => "twilio",
            Self::Square(_) => "square",
            Self::Paddle(_) => "paddle",
            Self::None => "none",
        }
    }

    /// The provider's own documented timestamp tolerance, where it documents one. Cobo and
    /// Zoom document none; config then defaults the window to what dedup (or the decision store)
    /// remembers, so nothing older than that memory is accepted (`config::sources`).
    pub fn documented_tolerance(&self) -> Option<Duration> {
        match self {
            Self::StandardWebhooks(_) | Self::Stripe(_) | Self::Slack(_) => {
                Some(Duration::from_secs(300))
            }
            // Paddle's SDKs refuse a signature more than 5 s old (`replay_window_secs` widens it).
            Self::Paddle(_) => Some(Duration::from_secs(5)),
            _ => None,
        }
    }

    /// Request headers whose values the signature covers (lower case). An event ID or type
    /// read from any other header can be changed by whoever resends a captured request.
    pub fn signed_headers(&self) -> &'static [&'static str] {
        match self {
            Self::StandardWebhooks(_) => &[
                "webhook-id",
                "webhook-timestamp",
                "svix-id",
                "svix-timestamp",
            ],
            Self::CoboWaas2(_) | Self::CoboWaas1(_) => &["biz-timestamp", "biz_timestamp"],
            Self::Slack(_) => &["x-slack-request-timestamp"],
            Self::Zoom(_) => &["x-zm-request-timestamp"],
            // Stripe and Paddle sign their timestamp inside the signature header; the rest sign
            // the body only (Twilio and Square with the configured URL).
            Self::Stripe(_)
            | Self::Paddle(_)
            | Self::GitHub(_)
            | Self::Shopify(_)
            | Self::Twilio(_)
            | Self::Square(_)
            | Self::RsaSha256(_)
            | Self::HmacSha256(_)
            | Self::SharedSecret(_)
            | Self::None => &[],
        }
    }

    /// Whether the scheme may serve `kind = "callback"` sources (Cobo's `ok`/`deny` answer).
    pub fn may_be_callback(&self) -> bool {
        matches!(self, Self::CoboWaas2(_) | Self::CoboWaas1(_))
    }

    /// Whether the scheme signs a timestamp that a replay window can be applied to.
    pub fn signs_timestamp(&self) -> bool {
        matches!(
            self,
            Self::CoboWaas2(_)
                | Self::CoboWaas1(_)
                | Self::StandardWebhooks(_)
                | Self::Stripe(_)
                | Self::Slack(_)
                | Self::Zoom(_)
                | Self::Paddle(_)
        )
    }

    /// Where the event ID is when a source configures none, from each provider's documented
    /// payloads (tried in order; without a value the ID is the body's SHA-256).
    pub fn default_event_id(&self) -> Vec<Locator> {
        match self {
            Self::CoboWaas2(_) => vec![body_pointer("/event_id"), body_pointer("/id")],
            // Pending pushes repeat `id` once per confirmation change: each is a distinct event.
            Self::CoboWaas1(_) => vec![
                joined_pointers(&["/id", "/status", "/confirmed_num"]),
                joined_pointers(&["/cobo_id", "/status", "/confirmed_num"]),
                body_pointer("/request_id"),
            ],
            Self::StandardWebhooks(_) => {
                vec![signed_header("webhook-id"), signed_header("svix-id")]
            }
            Self::Stripe(_) => vec![body_pointer("/id")],
            Self::Slack(_) => vec![body_pointer("/event_id")],
            // Zoom's bodies carry no event ID (`event_ts` is shared by events of one moment):
            // the body's SHA-256, which a retry of the same delivery repeats.
            Self::Zoom(_) => Vec::new(),
            Self::Square(_) | Self::Paddle(_) => vec![body_pointer("/event_id")],
            // GitHub and Shopify sign the body only: their delivery-ID headers are not covered,
            // and a body replayed with fresh headers must be the same event (its SHA-256).
            // Twilio posts form parameters, which no JSON pointer reads.
            Self::GitHub(_) | Self::Shopify(_) | Self::Twilio(_) => Vec::new(),
            Self::RsaSha256(_) | Self::HmacSha256(_) | Self::SharedSecret(_) | Self::None => {
                Vec::new()
            }
        }
    }

    /// Where the event type is when a source configures none, from each provider's documented
    /// payloads.
    pub fn default_event_type(&self) -> Vec<Locator> {
        match self {
            Self::CoboWaas2(_) | Self::StandardWebhooks(_) | Self::Stripe(_) => {
                vec![body_pointer("/type")]
            }
            Self::CoboWaas1(_) => vec![body_pointer("/side")],
            Self::Slack(_) => vec![body_pointer("/event/type"), body_pointer("/type")],
            Self::Zoom(_) => vec![body_pointer("/event")],
            Self::Square(_) => vec![body_pointer("/type")],
            Self::Paddle(_) => vec![body_pointer("/event_type")],
            // Their types are in unsigned headers (`X-GitHub-Event`, `X-Shopify-Topic`): only
            // with `unsigned_headers`, never by default.
            Self::GitHub(_) | Self::Shopify(_) | Self::Twilio(_) => Vec::new(),
            Self::RsaSha256(_) | Self::HmacSha256(_) | Self::SharedSecret(_) | Self::None => {
                Vec::new()
            }
        }
    }

    /// Where an approval callback's ID is when a source configures no `callback_id`: body
    /// fields only, since Cobo signs no header.
    pub fn default_callback_ids(&self) -> Vec<Locator> {
        match self {
            Self::CoboWaas2(_) => vec![body_pointer("/transaction_id")],
            // `cobo_id` is Cobo's own; WaaS 1.0 custodial confirmations carry only `request_id`,
            // which whoever calls Cobo's API chooses (decisions are bound to the body either way).
            Self::CoboWaas1(_) => vec![body_pointer("/cobo_id"), body_pointer("/request_id")],
            // Not callback schemes (`may_be_callback`): such a source is refused.
            Self::RsaSha256(_)
            | Self::HmacSha256(_)
            | Self::SharedSecret(_)
            | Self::StandardWebhooks(_)
            | Self::Stripe(_)
            | Self::Slack(_)
            | Self::Zoom(_)
            | Self::GitHub(_)
            | Self::Shopify(_)
            | Self::Twilio(_)
            | Self::Square(_)
            | Self::Paddle(_)
            | Self::None => Vec::new(),
        }
    }

    /// Number of keys or secrets configured (for the config summary).
    pub fn key_count(&self) -> usize {
        match self {
            Self::CoboWaas2(v) => v.key_count(),
            Self::CoboWaas1(v) => v.key_count(),
            Self::RsaSha256(v) => v.key_count(),
            Self::HmacSha256(v) => v.key_count(),
            Self::SharedSecret(v) => v.key_count(),
            Self::StandardWebhooks(v) => v.key_count(),
            Self::Stripe(v) => v.key_count(),
            Self::Slack(v) => v.key_count(),
            Self::Zoom(v) => v.key_count(),
            Self::GitHub(v) | Self::Shopify(v) => v.key_count(),
            Self::Twilio(v) => v.key_count(),
            Self::Square(v) => v.key_count(),
            Self::Paddle(v) => v.key_count(),
            Self::None => 0,
        }
    }

    fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<Checked, VerifyError> {
        match self {
            Self::CoboWaas2(v) => v.check(headers, body),
            Self::CoboWaas1(v) => v.check(headers, body),
            Self::RsaSha256(v) => v.check(headers, body),
            Self::HmacSha256(v) => v.check(headers, body),
            Self::SharedSecret(v) => v.check(headers),
            Self::StandardWebhooks(v) => v.check(headers, body),
            Self::Stripe(v) => v.check(headers, body),
            Self::Slack(v) => v.check(headers, body),
            Self::Zoom(v) => v.check(headers, body),
            Self::GitHub(v) | Self::Shopify(v) => v.check(headers, body),
            Self::Twilio(v) => v.check(headers, body),
            Self::Square(v) => v.check(headers, body),
            Self::Paddle(v) => v.check(headers, body),
            Self::None => Ok(Checked::default()),
        }
    }

    /// The provider's endpoint handshake, when `webhook` is one: the answer ingress sends
    /// instead of publishing anything. Asked only of a verified request, so a forged handshake
    /// is refused like any forged request and its challenge never echoed.
    ///
    /// # Errors
    /// [`HandshakeError`] when the body says it is a handshake but cannot be answered (no
    /// challenge, or not a short visible-ASCII string).
    pub fn handshake(
        &self,
        webhook: &VerifiedWebhook,
    ) -> Result<Option<Handshake>, HandshakeError> {
        // A shadow-mode request that failed verification is never answered as a handshake: the
        // answer would vouch for the endpoint to whoever forged the request.
        if !webhook.proof().verified() {
            return Ok(None);
        }
        match self {
            Self::Slack(_) => handshake::slack(webhook.body()),
            Self::Zoom(v) => handshake::zoom(v, webhook.proof().key.as_deref(), webhook.body()),
            Self::CoboWaas2(_)
            | Self::CoboWaas1(_)
            | Self::RsaSha256(_)
            | Self::HmacSha256(_)
            | Self::SharedSecret(_)
            | Self::StandardWebhooks(_)
            | Self::Stripe(_)
            | Self::GitHub(_)
            | Self::Shopify(_)
            | Self::Twilio(_)
            | Self::Square(_)
            | Self::Paddle(_)
            | Self::None => Ok(None),
        }
    }
}

/// A JSON pointer into the body, for the default locators.
fn body_pointer(pointer: &str) -> Locator {
    Locator::Body(pointer.to_owned())
}

/// JSON pointers whose values are joined, for the default locators.
fn joined_pointers(pointers: &[&str]) -> Locator {
    Locator::Joined(pointers.iter().map(|p| (*p).to_owned()).collect())
}

/// A signed header, for the default locators.
fn signed_header(name: &'static str) -> Locator {
    Locator::Header(HeaderName::from_static(name))
}

/// What one scheme's check established.
#[derive(Debug, Default)]
struct Checked {
    key: Option<String>,
    signature: Option<String>,
    /// The signed timestamp, raw and as milliseconds since the epoch.
    timestamp: Option<(String, i64)>,
    message_id: Option<String>,
}

/// A source's scheme plus its replay window.
#[derive(Debug)]
pub struct SourceVerifier {
    scheme: Scheme,
    replay_window: Option<Duration>,
}

impl SourceVerifier {
    pub fn new(scheme: Scheme, replay_window: Option<Duration>) -> Self {
        Self {
            scheme,
            replay_window,
        }
    }

    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    pub fn replay_window(&self) -> Option<Duration> {
        self.replay_window
    }

    /// Checks the signature first and the replay window second, so an unauthenticated request
    /// always gets `BadSignature` and cannot probe the window.
    ///
    /// # Errors
    /// Any [`VerifyError`]: the request must be answered 401 and never published.
    pub fn verify(
        &self,
        incoming: IncomingWebhook,
        now: SystemTime,
    ) -> Result<VerifiedWebhook, VerifyError> {
        let checked = self.check(&incoming, now)?;
        Ok(self.verified(incoming, checked))
    }

    /// [`Self::verify`], with the same answer, except that a Cobo WaaS 2.0 source with one key
    /// verifies its signature in a batch with the requests waiting beside it (see `batch`:
    /// cheaper per signature under load, the same check alone when idle).
    ///
    /// # Errors
    /// As [`Self::verify`].
    pub async fn verify_batched(
        &self,
        incoming: IncomingWebhook,
        now: SystemTime,
    ) -> Result<VerifiedWebhook, VerifyError> {
        let checked = match &self.scheme {
            Scheme::CoboWaas2(v) => v.check_batched(&incoming.headers, &incoming.body).await?,
            scheme => scheme.check(&incoming.headers, &incoming.body)?,
        };
        self.check_window(&checked, now)?;
        Ok(self.verified(incoming, checked))
    }

    /// Shadow mode: the same checks as [`Self::verify`], but a request that fails them is let
    /// through, with the failure in its proof ([`Proof::shadow`]) and the error beside it for
    /// the caller to log and count. Only for sources that set `shadow = true`, which config
    /// refuses for approval callbacks.
    pub fn verify_shadow(
        &self,
        incoming: IncomingWebhook,
        now: SystemTime,
    ) -> (VerifiedWebhook, Option<VerifyError>) {
        match self.check(&incoming, now) {
            Ok(checked) => (self.verified(incoming, checked), None),
            Err(e) => {
                let proof = Proof {
                    scheme: self.scheme.name(),
                    shadow: Some(e.reason()),
                    ..Proof::default()
                };
                let webhook = VerifiedWebhook {
                    headers: incoming.headers,
                    body: incoming.body,
                    proof,
                };
                (webhook, Some(e))
            }
        }
    }

    /// The signature, then the replay window.
    fn check(&self, incoming: &IncomingWebhook, now: SystemTime) -> Result<Checked, VerifyError> {
        let checked = self.scheme.check(&incoming.headers, &incoming.body)?;
        self.check_window(&checked, now)?;
        Ok(checked)
    }

    fn check_window(&self, checked: &Checked, now: SystemTime) -> Result<(), VerifyError> {
        match (self.replay_window, &checked.timestamp) {
            (Some(window), Some((_, ts_ms))) => check_window(*ts_ms, now, window),
            _ => Ok(()),
        }
    }

    fn verified(&self, incoming: IncomingWebhook, checked: Checked) -> VerifiedWebhook {
        let proof = Proof {
            scheme: self.scheme.name(),
            key: checked.key,
            signature: checked.signature,
            timestamp: checked.timestamp.map(|(raw, _)| raw),
            message_id: checked.message_id,
            shadow: None,
        };
        VerifiedWebhook {
            headers: incoming.headers,
            body: incoming.body,
            proof,
        }
    }
}

fn check_window(ts_ms: i64, now: SystemTime, window: Duration) -> Result<(), VerifyError> {
    let now_ms = i64::try_from(
        now.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX);
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    let delta = now_ms.saturating_sub(ts_ms);
    if delta > window_ms {
        return Err(VerifyError::StaleTimestamp((delta / 1000).unsigned_abs()));
    }
    if -delta > window_ms {
        return Err(VerifyError::FutureTimestamp((delta / 1000).unsigned_abs()));
    }
    Ok(())
}

/// Reads a single-valued header as visible ASCII. A repeated signature header is refused:
/// two candidates for one value is ambiguity an attacker could use, and no provider sends it.
fn header<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, VerifyError> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or(VerifyError::MissingHeader(name))?;
    if values.next().is_some() {
        return Err(VerifyError::MalformedHeader {
            header: name,
            reason: "repeated",
        });
    }
    value.to_str().map_err(|_| VerifyError::MalformedHeader {
        header: name,
        reason: "not visible ASCII",
    })
}

/// The first of several spellings that is present (Cobo: `Biz-Timestamp` or `BIZ_TIMESTAMP`).
fn header_any<'h>(headers: &'h HeaderMap, names: &[&'static str]) -> Result<&'h str, VerifyError> {
    for name in names {
        if headers.contains_key(*name) {
            return header(headers, name);
        }
    }
    Err(VerifyError::MissingHeader(names[0]))
}

/// Parses a decimal Unix timestamp (digits only: no sign, no spaces), returning it in ms.
fn parse_unix(raw: &str, header: &'static str, unit_ms: i64) -> Result<i64, VerifyError> {
    let malformed = VerifyError::MalformedHeader {
        header,
        reason: "not a decimal Unix timestamp",
    };
    if raw.is_empty() || raw.len() > 16 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed);
    }
    raw.parse::<i64>()
        .ok()
        .and_then(|v| v.checked_mul(unit_ms))
        .ok_or(malformed)
}

/// Most signatures one list header may carry (Standard Webhooks `v1`/`v1a`, Stripe `v1`), after
/// duplicates are dropped. Each Ed25519 entry costs a hash of the whole body per key before
/// authentication (170 bogus `v1a` entries over 1 MiB cost 260 ms of CPU before this cap);
/// senders rotating keys list two or three.
pub const MAX_LISTED_SIGNATURES: usize = 8;

/// Drops repeated entries (keeping the first of each) and refuses a list over
/// [`MAX_LISTED_SIGNATURES`], before any of them is checked.
fn dedup_capped<T: PartialEq>(list: &mut Vec<T>, header: &'static str) -> Result<(), VerifyError> {
    let mut unique: Vec<T> = Vec::with_capacity(list.len().min(MAX_LISTED_SIGNATURES + 1));
    for item in list.drain(..) {
        if !unique.contains(&item) {
            if unique.len() == MAX_LISTED_SIGNATURES {
                return Err(VerifyError::MalformedHeader {
                    header,
                    reason: "more than 8 distinct signatures",
                });
            }
            unique.push(item);
        }
    }
    *list = unique;
    Ok(())
}

/// A received hex signature as bytes: what `hex::decode` accepts (either case, even length),
/// through `decode_to_slice`'s plain loop. `hex::decode` collects through a `Result` iterator
/// adapter: about 2,400 instructions for a 32-byte MAC on every HMAC request, under callgrind.
fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    // An odd length fails too: `decode_to_slice` wants exactly twice the output's length.
    let mut out = vec![0; s.len() / 2];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Label for the n-th key of a list (`key#1`, …) when it has no name of its own.
fn key_label(index: usize) -> String {
    format!("key#{}", index + 1)
}

#[cfg(test)]
mod tests;
