//! What `hookbridge verify` says about one captured request: which headers the scheme reads and
//! which arrived, which keys were tried (labels only), the signed timestamp against the replay
//! window, the outcome, and hints for the classic integration mistakes.
//!
//! The outcome is the verifier's own ([`Scheme`]'s checks and the same window check as
//! [`SourceVerifier::verify`]), never a second implementation. Hints come from running those same
//! checks on *variants*: another source's keys, Cobo's published keys, the other signature
//! encoding, another reading of a secret, a canonical re-serialization of the body. A variant
//! only ever explains a failure; nothing here accepts a request the verifier refused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use super::hmac::{Encoding, PADDLE_HEADER, SLACK_SIG, SLACK_TS, STRIPE_HEADER, ZOOM_SIG, ZOOM_TS};
use super::url_signed::{SQUARE_HEADER, TWILIO_HEADER};
use super::{
    CoboWaas1, CoboWaas2, HmacSha256, IncomingWebhook, Scheme, SourceVerifier, VerifiedWebhook,
    VerifyError, check_window, cobo, key_label, standard,
};

/// Another scheme to try the request against, and what to call it in a hint.
pub struct Alternative<'a> {
    /// The hint's code when it matches.
    pub code: &'static str,
    /// Shown in the hint: `source "cobo-dev"`, `secrets[0] taken as its text`. Never a value.
    pub what: String,
    /// Said after the matching key's label: what the match means.
    pub why: String,
    pub scheme: &'a Scheme,
}

/// One header the scheme reads, in one spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRead {
    pub name: &'static str,
    pub present: bool,
}

/// One configured key or secret, by label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTried {
    pub label: String,
    pub result: KeyResult,
}

/// What became of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyResult {
    Matched,
    NoMatch,
    /// The verifier stops at the first match, or never got to the keys (a header was missing
    /// or malformed).
    NotTried,
}

/// The signed timestamp against the replay window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skew {
    /// As sent.
    pub raw: String,
    /// `now - timestamp` in ms: positive when the timestamp is in the past.
    pub skew_ms: i64,
    /// `None`: the source applies no window.
    pub window: Option<Duration>,
}

/// A likely cause of a failure, with a stable code for scripts and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    pub code: &'static str,
    pub message: String,
}

/// Everything `hookbridge verify` reports about the signature.
#[derive(Debug)]
pub struct Diagnosis {
    pub scheme: &'static str,
    pub headers: Vec<HeaderRead>,
    pub keys: Vec<KeyTried>,
    pub timestamp: Option<Skew>,
    pub outcome: Result<(), VerifyError>,
    pub hints: Vec<Hint>,
}

impl Scheme {
    /// Every header name (each accepted spelling, lower case) the scheme reads.
    pub fn header_names(&self) -> Vec<&'static str> {
        match self {
            Self::CoboWaas2(_) | Self::CoboWaas1(_) => [cobo::TIMESTAMP, cobo::SIGNATURE].concat(),
            Self::StandardWebhooks(_) => {
                [standard::ID, standard::TIMESTAMP, standard::SIGNATURE].concat()
            }
            Self::RsaSha256(v) => vec![v.header_name()],
            Self::HmacSha256(v) | Self::GitHub(v) | Self::Shopify(v) => vec![v.header_name()],
            Self::SharedSecret(v) => vec![v.header_name()],
            Self::Stripe(_) => vec![STRIPE_HEADER],
            Self::Slack(_) => vec![SLACK_TS, SLACK_SIG],
            Self::Zoom(_) => vec![ZOOM_TS, ZOOM_SIG],
            Self::Twilio(_) => vec![TWILIO_HEADER],
            Self::Square(_) => vec![SQUARE_HEADER],
            Self::Paddle(_) => vec![PADDLE_HEADER],
            Self::None => Vec::new(),
        }
    }

    /// The labels of the configured keys or secrets, in the order they are tried.
    pub fn key_labels(&self) -> Vec<String> {
        match self {
            Self::CoboWaas2(v) => v.labels(),
            Self::CoboWaas1(v) => v.labels(),
            Self::RsaSha256(v) => v.labels(),
            Self::HmacSha256(v) | Self::GitHub(v) | Self::Shopify(v) => v.labels(),
            Self::SharedSecret(v) => v.labels(),
            Self::StandardWebhooks(v) => v.labels(),
            _ => (0..self.key_count()).map(key_label).collect(),
        }
    }

    /// The scheme with every key its provider publishes (Cobo), to name the one that signed.
    fn published(&self) -> Option<Self> {
        match self {
            Self::CoboWaas2(_) => CoboWaas2::published().map(Self::CoboWaas2),
            Self::CoboWaas1(_) => CoboWaas1::published().map(Self::CoboWaas1),
            _ => None,
        }
    }

    /// The scheme reading its signature in the other encoding (generic HMAC and its presets).
    fn other_encoding(&self) -> Option<(Encoding, Self)> {
        let flip = |v: &HmacSha256| {
            let other = match v.encoding() {
                Encoding::Hex => Encoding::Base64,
                Encoding::Base64 => Encoding::Hex,
            };
            (other, Self::HmacSha256(v.with_encoding(other)))
        };
        match self {
            Self::HmacSha256(v) | Self::GitHub(v) | Self::Shopify(v) => Some(flip(v)),
            _ => None,
        }
    }
}

fn encoding_name(e: Encoding) -> &'static str {
    match e {
        Encoding::Hex => "hex",
        Encoding::Base64 => "base64",
    }
}

impl SourceVerifier {
    /// Runs the source's checks on `incoming` and says what was checked; on success also
    /// returns the verified request, exactly as [`Self::verify`] would have.
    /// `alternatives` (other sources' schemes of the same kind, other readings of a secret) are
    /// tried only to explain a failed signature.
    pub fn diagnose(
        &self,
        incoming: IncomingWebhook,
        now: SystemTime,
        alternatives: &[Alternative<'_>],
    ) -> (Diagnosis, Option<VerifiedWebhook>) {
        let scheme = &self.scheme;
        let headers = scheme
            .header_names()
            .into_iter()
            .map(|name| HeaderRead {
                name,
                present: incoming.headers.contains_key(name),
            })
            .collect();
        let labels = scheme.key_labels();
        let mut diagnosis = Diagnosis {
            scheme: scheme.name(),
            headers,
            keys: Vec::new(),
            timestamp: None,
            outcome: Ok(()),
            hints: Vec::new(),
        };
        let checked = match scheme.check(&incoming.headers, &incoming.body) {
            Ok(checked) => checked,
            Err(e) => {
                let result = if e == VerifyError::BadSignature {
                    KeyResult::NoMatch
                } else {
                    KeyResult::NotTried
                };
                diagnosis.keys = labels
                    .into_iter()
                    .map(|label| KeyTried { label, result })
                    .collect();
                diagnosis.hints = self.failure_hints(&e, &incoming, alternatives);
                diagnosis.outcome = Err(e);
                return (diagnosis, None);
            }
        };
        let mut matched = false;
        diagnosis.keys = labels
            .into_iter()
            .map(|label| {
                let result = if matched {
                    KeyResult::NotTried
                } else if checked.key.as_deref() == Some(label.as_str()) {
                    matched = true;
                    KeyResult::Matched
                } else {
                    KeyResult::NoMatch
                };
                KeyTried { label, result }
            })
            .collect();
        if let Some((raw, ts_ms)) = &checked.timestamp {
            let skew = Skew {
                raw: raw.clone(),
                skew_ms: now_ms(now).saturating_sub(*ts_ms),
                window: self.replay_window,
            };
            if let Some(window) = self.replay_window
                && let Err(e) = check_window(*ts_ms, now, window)
            {
                diagnosis.hints.push(window_hint(&skew, window));
                diagnosis.timestamp = Some(skew);
                diagnosis.outcome = Err(e);
                return (diagnosis, None);
            }
            diagnosis.timestamp = Some(skew);
        }
        let webhook = self.verified(incoming, checked);
        (diagnosis, Some(webhook))
    }

    /// Why the signature (or a header) failed, from the same checks run on variants.
    fn failure_hints(
        &self,
        error: &VerifyError,
        incoming: &IncomingWebhook,
        alternatives: &[Alternative<'_>],
    ) -> Vec<Hint> {
        let (headers, body) = (&incoming.headers, &incoming.body[..]);
        let mut hints = Vec::new();
        if let VerifyError::MissingHeader(name) = error {
            hints.extend(missing_header_hint(&self.scheme, name, headers));
            return hints;
        }
        for alt in alternatives {
            if let Ok(c) = alt.scheme.check(headers, body) {
                hints.push(Hint {
                    code: alt.code,
                    message: format!(
                        "the signature matches {} (key `{}`){}",
                        alt.what,
                        c.key.as_deref().unwrap_or("?"),
                        alt.why
                    ),
                });
            }
        }
        if let Some(Ok(c)) = self.scheme.published().map(|s| s.check(headers, body)) {
            hints.push(Hint {
                code: "other_key",
                message: format!(
                    "the signature was made with Cobo's published `{}` key, which this source \
                     does not list in public_keys (a dev/prod mix-up?)",
                    c.key.as_deref().unwrap_or("?")
                ),
            });
        }
        if let Some((other, scheme)) = self.scheme.other_encoding()
            && scheme.check(headers, body).is_ok()
        {
            let configured = match other {
                Encoding::Hex => Encoding::Base64,
                Encoding::Base64 => Encoding::Hex,
            };
            hints.push(Hint {
                code: "signature_encoding",
                message: format!(
                    "the signature is {} but the source reads it as {}: set encoding = \"{}\"",
                    encoding_name(other),
                    encoding_name(configured),
                    encoding_name(other)
                ),
            });
        }
        if let Some(form) = reserialized_match(&self.scheme, headers, body) {
            hints.push(Hint {
                code: "body_reserialized",
                message: format!(
                    "the signature matches the body re-serialized as {form} JSON, not the bytes \
                     captured: something between the provider and this capture (a framework, \
                     a proxy, a logger) parsed and re-wrote the body. Verify the raw bytes as \
                     received"
                ),
            });
        }
        hints
    }
}

/// A missing header: another spelling of it that arrived, or the proxy that dropped it.
fn missing_header_hint(scheme: &Scheme, name: &str, headers: &HeaderMap) -> Option<Hint> {
    let cobo = matches!(scheme, Scheme::CoboWaas2(_) | Scheme::CoboWaas1(_));
    if cobo {
        let seen: Vec<&str> = scheme
            .header_names()
            .into_iter()
            .filter(|n| headers.contains_key(*n))
            .collect();
        let message = if seen.is_empty() {
            "none of Cobo's BIZ_ headers arrived. Cobo sends BIZ_TIMESTAMP and \
             BIZ_RESP_SIGNATURE with underscores, which nginx drops unless \
             `underscores_in_headers on;` (other proxies have a like setting): check every hop \
             before hookbridge"
                .to_owned()
        } else {
            format!(
                "only {} arrived: a proxy may have dropped the others (nginx drops headers with \
                 underscores unless `underscores_in_headers on;`)",
                seen.join(", ")
            )
        };
        return Some(Hint {
            code: "proxy_dropped_underscore_headers",
            message,
        });
    }
    // Another spelling of the same name (`x_hub_signature_256`): a proxy or client rewrote it.
    let wanted = name.replace('_', "-");
    let other = headers
        .keys()
        .find(|k| k.as_str() != name && k.as_str().replace('_', "-") == wanted)?;
    Some(Hint {
        code: "header_spelling",
        message: format!(
            "`{other}` arrived instead of `{name}`: something rewrote the header name"
        ),
    })
}

/// The form (`compact`, `pretty`) of a JSON re-serialization of the body that the signature
/// matches, if any.
fn reserialized_match(scheme: &Scheme, headers: &HeaderMap, body: &[u8]) -> Option<&'static str> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let forms = [
        ("compact", serde_json::to_vec(&value).ok()?),
        ("pretty-printed", serde_json::to_vec_pretty(&value).ok()?),
    ];
    forms
        .into_iter()
        .filter(|(_, bytes)| bytes.as_slice() != body)
        .find(|(_, bytes)| scheme.check(headers, bytes).is_ok())
        .map(|(form, _)| form)
}

/// A timestamp outside the window: by how much, and which side is likely wrong.
fn window_hint(skew: &Skew, window: Duration) -> Hint {
    let secs = skew.skew_ms / 1000;
    let abs = secs.unsigned_abs();
    let window_s = window.as_secs();
    let side = if secs >= 0 { "old" } else { "in the future" };
    let likely = if secs < -(100 * 365 * 86_400) {
        "the timestamp looks like milliseconds where the scheme expects seconds".to_owned()
    } else if abs <= window_s.saturating_mul(2) {
        format!(
            "just outside the {window_s} s window: a clock drifts (check NTP on both ends), or \
             replay_window_secs is too tight for this sender's retries"
        )
    } else if secs > 0 {
        "far outside the window: a captured or retried request checked later (pass --now with \
         the time it was received), or the sender's clock is behind"
            .to_owned()
    } else {
        "far in the future: the sender's clock is ahead, or this machine's is behind".to_owned()
    };
    Hint {
        code: "timestamp_outside_window",
        message: format!(
            "the signed timestamp is {abs} s {side}, the window allows {window_s} s: {likely}"
        ),
    }
}

fn now_ms(now: SystemTime) -> i64 {
    i64::try_from(
        now.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX)
}
