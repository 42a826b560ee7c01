//! Endpoint handshakes: the requests a provider sends to check that an endpoint is the one it
//! was given (Slack's `url_verification`, Zoom's `endpoint.url_validation`) before it delivers
//! events. Each scheme says whether a verified request is one ([`super::Scheme::handshake`]) and
//! what the answer is; ingress sends that answer instead of publishing.
//!
//! Only a [`super::VerifiedWebhook`] can be asked, so a forged handshake is answered 401 like
//! any forged request, and never echoed.

use bytes::Bytes;
use serde::Deserialize;

use super::hmac::Zoom;

/// The answer to a provider's handshake: sent as is with 200, never published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    kind: &'static str,
    content_type: &'static str,
    body: Bytes,
}

impl Handshake {
    /// The provider's name for the handshake (`url_verification`, `endpoint.url_validation`),
    /// for the audit line.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn content_type(&self) -> &'static str {
        self.content_type
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

/// A verified request that says it is a handshake but cannot be answered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("{kind}: {reason}")]
    Malformed {
        kind: &'static str,
        reason: &'static str,
    },
}

impl HandshakeError {
    /// Stable reason code for logs and metrics.
    pub fn reason(&self) -> &'static str {
        "bad_handshake"
    }
}

/// Longest challenge or token echoed back. Slack's challenges and Zoom's plain tokens are a few
/// dozen characters; the bound keeps an answer small whatever a (verified) sender puts there.
const MAX_TOKEN_LEN: usize = 256;

const SLACK_KIND: &str = "url_verification";
const ZOOM_KIND: &str = "endpoint.url_validation";

/// The top-level fields a handshake is recognised by; everything else is skipped unread.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "type")]
    ty: Option<serde_json::Value>,
    event: Option<serde_json::Value>,
    challenge: Option<serde_json::Value>,
    payload: Option<ZoomPayload>,
}

#[derive(Deserialize)]
struct ZoomPayload {
    #[serde(rename = "plainToken")]
    plain_token: Option<serde_json::Value>,
}

/// The body's top-level fields, when it is a JSON object that mentions `kind` at all: the
/// substring test keeps ordinary events (most of the traffic) from a second parse.
fn probe(body: &[u8], kind: &str) -> Option<Probe> {
    if !body.windows(kind.len()).any(|w| w == kind.as_bytes()) {
        return None;
    }
    // Not a JSON object (Slack's slash commands are form-encoded): not a handshake.
    serde_json::from_slice::<Probe>(body).ok()
}

/// A challenge or token fit to be echoed: a short string of visible ASCII.
fn token(value: Option<serde_json::Value>, kind: &'static str) -> Result<String, HandshakeError> {
    let malformed = |reason| HandshakeError::Malformed { kind, reason };
    let serde_json::Value::String(s) = value.ok_or(malformed("no token"))? else {
        return Err(malformed("the token is not a string"));
    };
    if s.is_empty() || s.len() > MAX_TOKEN_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(malformed(
            "the token is not 1 to 256 characters of visible ASCII",
        ));
    }
    Ok(s)
}

/// Slack: a body whose top-level `type` is `url_verification` is answered `200`, `text/plain`,
/// with exactly the `challenge` value (Slack's Events API docs, "url_verification").
pub(super) fn slack(body: &[u8]) -> Result<Option<Handshake>, HandshakeError> {
    let Some(p) = probe(body, SLACK_KIND) else {
        return Ok(None);
    };
    if p.ty.as_ref().and_then(serde_json::Value::as_str) != Some(SLACK_KIND) {
        return Ok(None);
    }
    let challenge = token(p.challenge, SLACK_KIND)?;
    Ok(Some(Handshake {
        kind: SLACK_KIND,
        content_type: "text/plain",
        body: Bytes::from(challenge),
    }))
}

/// Zoom: a body whose `event` is `endpoint.url_validation` is answered `200` with the JSON
/// `{"plainToken": <payload.plainToken>, "encryptedToken": hex(HMAC-SHA256(secret token,
/// plainToken))}`, made with the secret the request verified with (`key`).
pub(super) fn zoom(
    zoom: &Zoom,
    key: Option<&str>,
    body: &[u8],
) -> Result<Option<Handshake>, HandshakeError> {
    let Some(p) = probe(body, ZOOM_KIND) else {
        return Ok(None);
    };
    if p.event.as_ref().and_then(serde_json::Value::as_str) != Some(ZOOM_KIND) {
        return Ok(None);
    }
    let plain = token(p.payload.and_then(|p| p.plain_token), ZOOM_KIND)?;
    let mac = key
        .and_then(|k| zoom.secrets.mac_with(k, &[plain.as_bytes()]))
        .ok_or(HandshakeError::Malformed {
            kind: ZOOM_KIND,
            reason: "no verifying secret",
        })?;
    let answer = serde_json::json!({ "plainToken": plain, "encryptedToken": hex::encode(mac) });
    Ok(Some(Handshake {
        kind: ZOOM_KIND,
        content_type: "application/json",
        body: Bytes::from(answer.to_string()),
    }))
}
