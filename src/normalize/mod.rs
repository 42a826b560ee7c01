//! Turns a [`VerifiedWebhook`] into an [`Envelope`]: the provider's event ID and type, and the
//! CloudEvents 1.0 structured-mode JSON that sinks publish.
//!
//! The body is never re-serialized: a JSON body is spliced into `data` byte for byte, anything
//! else goes to `data_base64`, so consumers can re-verify the signature over exactly what the
//! provider signed (see the `hbsig*` extension attributes).

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use sha2::{Digest, Sha256};

use self::locator::Locator;
use crate::plan::SourceSpec;
use crate::verify::VerifiedWebhook;

pub mod locator;
mod scan;

/// Longest event ID accepted: RabbitMQ's `message-id` is a short string (255 bytes).
pub const MAX_EVENT_ID_LEN: usize = 255;

/// The provider's event ID: the dedup key downstream and the broker message key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventId(Arc<str>);

impl EventId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an event's ID came from, reported in logs and in the `hbidfrom` attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdOrigin {
    Locator(String),
    /// No locator yielded a value: the hex SHA-256 of the raw body.
    BodySha256,
}

impl IdOrigin {
    /// The locator's text, or `sha256`.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Locator(l) => l,
            Self::BodySha256 => "sha256",
        }
    }
}

impl fmt::Display for IdOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A normalized, publishable event. Only [`Envelope::build`] makes one, from a verified request.
#[derive(Debug, Clone)]
pub struct Envelope {
    id: EventId,
    source_name: Arc<str>,
    event_type: Arc<str>,
    ce_source: Arc<str>,
    id_origin: IdOrigin,
    /// W3C trace context of the request that produced it, when traced: also the CloudEvents
    /// `traceparent` extension inside `json`, and a message header.
    traceparent: Option<Arc<str>>,
    /// The CloudEvent, structured JSON mode.
    json: Bytes,
}

impl Envelope {
    pub fn id(&self) -> &EventId {
        &self.id
    }
    pub fn source_name(&self) -> &str {
        &self.source_name
    }
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
    pub fn ce_source(&self) -> &str {
        &self.ce_source
    }
    pub fn id_origin(&self) -> &IdOrigin {
        &self.id_origin
    }
    /// The W3C `traceparent` of the request that produced it, when that request was traced.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }
    /// The CloudEvent as `application/cloudevents+json`.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// Rebuilds an envelope the spool wrote after it had been built from a verified request.
    #[cfg(test)]
    pub(crate) fn restore(
        id: &str,
        source_name: &str,
        event_type: &str,
        ce_source: &str,
        id_origin: &str,
        json: Bytes,
    ) -> Self {
        Self::restore_traced(
            id,
            source_name,
            event_type,
            ce_source,
            id_origin,
            None,
            json,
        )
    }

    /// Rebuilds an envelope the spool wrote, with the trace context it kept.
    pub(crate) fn restore_traced(
        id: &str,
        source_name: &str,
        event_type: &str,
        ce_source: &str,
        id_origin: &str,
        traceparent: Option<&str>,
        json: Bytes,
    ) -> Self {
        Self {
            traceparent: traceparent.map(Into::into),
            id: EventId(id.into()),
            source_name: source_name.into(),
            event_type: event_type.into(),
            ce_source: ce_source.into(),
            id_origin: if id_origin == "sha256" {
                IdOrigin::BodySha256
            } else {
                IdOrigin::Locator(id_origin.to_owned())
            },
            json,
        }
    }

    /// Over 80 lines on purpose: it is the request path's one pass from verified bytes to the
    /// envelope (scan, locate, attributes, splice), every step borrowing the scan's result and
    /// the strings before it; split, those borrows would become parameters or copies.
    ///
    /// # Errors
    /// [`NormalizeError`] when a located ID or type is unusable (too long, control characters).
    pub fn build(
        webhook: VerifiedWebhook,
        source: &SourceSpec,
        received: SystemTime,
    ) -> Result<Self, NormalizeError> {
        Self::build_traced(webhook, source, received, None)
    }

    /// [`Envelope::build`], carrying the request's trace context (`traceparent`) into the
    /// CloudEvent's distributed-tracing extension and the envelope.
    ///
    /// # Errors
    /// As [`Envelope::build`].
    pub fn build_traced(
        webhook: VerifiedWebhook,
        source: &SourceSpec,
        received: SystemTime,
        traceparent: Option<&str>,
    ) -> Result<Self, NormalizeError> {
        let body = webhook.body();
        // One pass over the body (no tree, no allocation off the wanted paths) validates it and
        // picks out every body pointer the ID and type locators name. A body with surrounding
        // whitespace is valid JSON, but splicing it would not be byte-exact: base64 it instead.
        // UTF-8 first, and every value parsed as a reader would (`scan`): a spliced body a
        // parser rejects makes the whole event unreadable (found by the `normalize` fuzz
        // target). Deep nesting is also sent as base64: the envelope adds a level, and common
        // parsers (serde_json: 128) stop short of where the body alone would.
        let pointers: Vec<&str> = source
            .event_id
            .iter()
            .chain(&source.event_type)
            .flat_map(Locator::pointers)
            .map(String::as_str)
            .collect();
        let found = std::str::from_utf8(body)
            .ok()
            .and_then(|text| scan::scan(text, &pointers, MAX_SPLICE_DEPTH));
        let exact_json = found.is_some()
            && !body.first().is_some_and(u8::is_ascii_whitespace)
            && !body.last().is_some_and(u8::is_ascii_whitespace);
        let body_value = |pointer: &str| -> Option<String> {
            let found = found.as_ref()?;
            let i = pointers.iter().position(|p| *p == pointer)?;
            found[i].clone()
        };

        let found_id = locate(&source.event_id, &webhook, &body_value, "event_id")?;
        let found_type = locate(&source.event_type, &webhook, &body_value, "event_type")?;
        // Taken from a header the signature does not cover (only where the source opted in):
        // anyone who saw the request can resend it with another value. Consumers are told.
        let unverified = match (
            found_id.as_ref().is_some_and(|(_, l)| l.is_unsigned()),
            found_type.as_ref().is_some_and(|(_, l)| l.is_unsigned()),
        ) {
            // Shadow mode let through a request that failed verification: nothing in it is
            // authenticated. `hbshadow` says why.
            _ if !webhook.proof().verified() => Some("all"),
            (true, true) => Some("id,type"),
            (true, false) => Some("id"),
            (false, true) => Some("type"),
            (false, false) => None,
        };
        let (id, id_origin) = match found_id {
            Some((v, locator)) => (v, IdOrigin::Locator(locator.to_string())),
            None => (hex::encode(Sha256::digest(body)), IdOrigin::BodySha256),
        };
        let event_type = found_type.map_or_else(|| source.default_type.clone(), |(v, _)| v);

        let received_at = humantime::format_rfc3339_millis(received).to_string();
        let proof = webhook.proof();
        let data_base64 =
            (!exact_json).then(|| base64::engine::general_purpose::STANDARD.encode(body));
        let content_type = if exact_json {
            "application/json".to_owned()
        } else {
            webhook
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= 128)
                .unwrap_or("application/octet-stream")
                .to_owned()
        };
        let attrs = Attributes {
            specversion: "1.0",
            id: &id,
            source: &source.ce_source,
            ty: &event_type,
            time: &received_at,
            datacontenttype: &content_type,
            hbsource: &source.name,
            hbscheme: proof.scheme,
            hbidfrom: id_origin.as_str(),
            hbsignature: proof.signature.as_deref(),
            hbsigtimestamp: proof.timestamp.as_deref(),
            hbsigmsgid: proof.message_id.as_deref(),
            hbunverified: unverified,
            hbshadow: proof.shadow,
            traceparent,
            data_base64: data_base64.as_deref(),
        };
        let mut json = Vec::with_capacity(body.len() + 512);
        // Serializing a struct of strings into a Vec cannot fail.
        serde_json::to_writer(&mut json, &attrs).map_err(|_| NormalizeError::Encode)?;
        if exact_json {
            json.pop(); // the closing brace
            json.extend_from_slice(b",\"data\":");
            json.extend_from_slice(body);
            json.push(b'}');
        }
        Ok(Self {
            id: EventId(id.into()),
            source_name: source.name.as_str().into(),
            event_type: event_type.into(),
            ce_source: source.ce_source.as_str().into(),
            id_origin,
            traceparent: traceparent.map(Into::into),
            json: Bytes::from(json),
        })
    }
}

impl Envelope {
    /// The audit event for a callback decision: `id` is the callback ID and the judged body's
    /// digest (so retries and replicas publish the same key, and a decision about another body
    /// with the same callback ID is a different event), `data` holds the decision, what it is
    /// about and, when this replica has it, the callback's own CloudEvent (with its signature
    /// attributes, for re-verification).
    ///
    /// # Errors
    /// [`NormalizeError::Encode`] if the callback event is not JSON (it always is: built here).
    pub(crate) fn decision(
        source: &SourceSpec,
        subject: &crate::callback::Subject,
        decision: &crate::callback::Decision,
        callback: Option<&Envelope>,
    ) -> Result<Self, NormalizeError> {
        #[derive(Serialize)]
        struct Data<'a> {
            callback_id: &'a str,
            body_sha256: &'a str,
            callback_id_from: &'a str,
            #[serde(flatten)]
            decision: &'a crate::callback::Decision,
            #[serde(skip_serializing_if = "Option::is_none")]
            callback: Option<&'a serde_json::value::RawValue>,
        }
        #[derive(Serialize)]
        struct Extensions<'a> {
            hbdecision: &'static str,
            data: Data<'a>,
        }
        let callback = callback
            .map(|c| serde_json::from_slice::<&serde_json::value::RawValue>(c.json()))
            .transpose()
            .map_err(|_| NormalizeError::Encode)?;
        let id = subject.event_id();
        let json = own_event(
            source,
            &id,
            crate::callback::DECISION_TYPE,
            Extensions {
                hbdecision: decision.decision.body(),
                data: Data {
                    callback_id: &subject.callback_id,
                    body_sha256: &subject.body_sha256,
                    callback_id_from: &subject.locator,
                    decision,
                    callback,
                },
            },
        )?;
        Ok(Self {
            id: EventId(id.into()),
            source_name: source.name.as_str().into(),
            event_type: crate::callback::DECISION_TYPE.into(),
            ce_source: source.ce_source.as_str().into(),
            id_origin: IdOrigin::Locator("callback_id".to_owned()),
            traceparent: None,
            json: Bytes::from(json),
        })
    }
}

/// A decision request (format version [`crate::callback::WIRE_VERSION`]) for the decision
/// service: a CloudEvent whose `id` is the decision key and whose `data` is the callback body
/// byte for byte; the reply must return `nonce` and a MAC (see `callback::service`).
///
/// # Errors
/// [`NormalizeError::Encode`] when the body is not JSON (callback bodies are checked before).
pub(crate) fn decision_request(
    source: &SourceSpec,
    subject: &crate::callback::Subject,
    nonce: &str,
    reply_to: &str,
    body: &[u8],
) -> Result<Bytes, NormalizeError> {
    #[derive(Serialize)]
    struct Extensions<'a> {
        hbversion: String,
        hbnonce: &'a str,
        hbcallbackid: &'a str,
        hbbodysha256: &'a str,
        hbreplyto: &'a str,
        data: &'a serde_json::value::RawValue,
    }
    let data: &serde_json::value::RawValue =
        serde_json::from_slice(body).map_err(|_| NormalizeError::Encode)?;
    own_event(
        source,
        &subject.key(),
        crate::callback::REQUEST_TYPE,
        Extensions {
            hbversion: crate::callback::WIRE_VERSION.to_string(),
            hbnonce: nonce,
            hbcallbackid: &subject.callback_id,
            hbbodysha256: &subject.body_sha256,
            hbreplyto: reply_to,
            data,
        },
    )
    .map(Bytes::from)
}

/// A CloudEvent hookbridge itself emits (not a provider's webhook): the context attributes
/// with `datacontenttype: application/json`, then `rest` (extensions and `data`).
fn own_event<T: Serialize>(
    source: &SourceSpec,
    id: &str,
    ty: &'static str,
    rest: T,
) -> Result<Vec<u8>, NormalizeError> {
    #[derive(Serialize)]
    struct Event<'a, T> {
        specversion: &'static str,
        id: &'a str,
        source: &'a str,
        #[serde(rename = "type")]
        ty: &'static str,
        time: &'a str,
        datacontenttype: &'static str,
        hbsource: &'a str,
        #[serde(flatten)]
        rest: T,
    }
    let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    serde_json::to_vec(&Event {
        specversion: "1.0",
        id,
        source: &source.ce_source,
        ty,
        time: &time,
        datacontenttype: "application/json",
        hbsource: &source.name,
        rest,
    })
    .map_err(|_| NormalizeError::Encode)
}

/// CloudEvents context attributes plus hookbridge's extensions (lower-case, ≤ 20 characters as
/// the spec recommends):
/// - `hbsource`: the source name; `hbscheme`: the verification scheme;
/// - `hbidfrom`: where `id` came from (`body:/event_id`, `header:webhook-id`, `sha256`);
/// - `hbsignature`, `hbsigtimestamp`, `hbsigmsgid`: what the provider signed with, for re-verification;
/// - `hbunverified`: `id`, `type` or `id,type` when taken from a header the signature does not
///   cover (a source's explicit `unsigned_headers` opt-in).
#[derive(Serialize)]
struct Attributes<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    ty: &'a str,
    time: &'a str,
    datacontenttype: &'a str,
    hbsource: &'a str,
    hbscheme: &'static str,
    hbidfrom: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    hbsignature: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hbsigtimestamp: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hbsigmsgid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hbunverified: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hbshadow: Option<&'static str>,
    /// The CloudEvents distributed-tracing extension.
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<&'a str>,
}

/// Why a verified request could not be normalized: answered 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NormalizeError {
    #[error("{field} is longer than {MAX_EVENT_ID_LEN} bytes")]
    TooLong { field: &'static str },
    #[error("{field} contains control characters")]
    ControlChars { field: &'static str },
    #[error("could not encode the event")]
    Encode,
}

/// The first locator that yields a non-empty value, and that locator.
fn locate<'l>(
    locators: &'l [Locator],
    webhook: &VerifiedWebhook,
    body_value: &dyn Fn(&str) -> Option<String>,
    field: &'static str,
) -> Result<Option<(String, &'l Locator)>, NormalizeError> {
    for locator in locators {
        let value = match locator {
            Locator::Header(name) | Locator::UnsignedHeader(name) => webhook
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            Locator::Body(pointer) => body_value(pointer),
            Locator::Joined(pointers) => {
                let parts: Option<Vec<String>> = pointers.iter().map(|p| body_value(p)).collect();
                // Every part must be present, and the first (the identifier) non-empty.
                parts
                    .filter(|p| p.first().is_some_and(|s| !s.is_empty()))
                    .map(|p| p.join(":"))
            }
        };
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            if v.len() > MAX_EVENT_ID_LEN {
                return Err(NormalizeError::TooLong { field });
            }
            if v.chars().any(char::is_control) {
                return Err(NormalizeError::ControlChars { field });
            }
            return Ok(Some((v, locator)));
        }
    }
    Ok(None)
}

/// Deepest nesting of a body spliced into `data` (deeper bodies go to `data_base64`).
const MAX_SPLICE_DEPTH: usize = 64;

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use http::{HeaderMap, HeaderValue};
    use serde_json::Value;

    use super::*;
    use crate::verify::IncomingWebhook;

    fn source(extra: &str) -> SourceSpec {
        let text = format!(
            "[sources.t]\nverify = {{ scheme = \"shared-secret\", header = \"x-token\", secrets = [\"s\"] }}\n{extra}"
        );
        crate::config::load(&text, &|_| None)
            .unwrap()
            .sources
            .remove(0)
    }

    fn envelope(
        src: &SourceSpec,
        body: &[u8],
        headers: &[(&'static str, &str)],
    ) -> Result<Envelope, NormalizeError> {
        let mut h = HeaderMap::new();
        h.insert("x-token", HeaderValue::from_static("s"));
        for (k, v) in headers {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        let verified = src
            .verifier
            .verify(
                IncomingWebhook {
                    headers: h,
                    body: Bytes::copy_from_slice(body),
                },
                SystemTime::now(),
            )
            .unwrap();
        Envelope::build(
            verified,
            src,
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        )
    }

    #[test]
    fn json_body_is_spliced_byte_for_byte() {
        let src = source("event_id = [\"/meta/id\", \"/id\"]\nevent_type = [\"/type\"]");
        // Key order, spacing and a big number that a round trip through f64 would change.
        let body = br#"{"z":1,  "type":"a.b","id":"evt_1","n":123456789012345678901234567890}"#;
        let env = envelope(&src, body, &[]).unwrap();
        assert_eq!(env.id().as_str(), "evt_1");
        assert_eq!(env.id_origin(), &IdOrigin::Locator("body:/id".into()));
        assert_eq!(env.event_type(), "a.b");
        let json = std::str::from_utf8(env.json()).unwrap();
        assert!(json.ends_with(&format!(
            ",\"data\":{}}}",
            std::str::from_utf8(body).unwrap()
        )));
        let v: Value = serde_json::from_slice(env.json()).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["source"], "/hooks/t");
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(v["hbsource"], "t");
        assert_eq!(v["hbscheme"], "shared-secret");
        assert!(
            v.get("hbsignature").is_none(),
            "a shared secret is never copied into the event"
        );
    }

    #[test]
    fn event_conforms_to_cloudevents_sdk() {
        let src = source("");
        let env = envelope(&src, br#"{"hello":"world"}"#, &[]).unwrap();
        let event: cloudevents::Event = serde_json::from_slice(env.json()).unwrap();
        use cloudevents::AttributesReader as _;
        assert_eq!(event.id(), env.id().as_str());
        assert_eq!(event.ty(), "hookbridge.webhook");
        assert_eq!(event.source().as_str(), "/hooks/t");
        let bin = envelope(
            &src,
            b"\xff\x00binary",
            &[("content-type", "application/x-thing")],
        )
        .unwrap();
        let event: cloudevents::Event = serde_json::from_slice(bin.json()).unwrap();
        assert_eq!(event.datacontenttype(), Some("application/x-thing"));
        match event.data() {
            Some(cloudevents::Data::Binary(b)) => assert_eq!(b.as_slice(), b"\xff\x00binary"),
            other => panic!("expected binary data, got {other:?}"),
        }
    }

    #[test]
    fn falls_back_to_body_sha256_and_says_so() {
        let src = source("event_id = [\"/id\", \"header:x-id\"]\nunsigned_headers = [\"x-id\"]");
        let env = envelope(&src, br#"{"id":""}"#, &[]).unwrap();
        assert_eq!(env.id_origin(), &IdOrigin::BodySha256);
        assert_eq!(
            env.id().as_str(),
            hex::encode(Sha256::digest(br#"{"id":""}"#))
        );
        let env = envelope(&src, br#"{"id":""}"#, &[("x-id", "h-1")]).unwrap();
        assert_eq!(env.id().as_str(), "h-1");
        // Read from a header the signature does not cover: consumers are told.
        let v: Value = serde_json::from_slice(env.json()).unwrap();
        assert_eq!(v["hbunverified"], "id");
        let signed = envelope(&src, br#"{"id":"b-1"}"#, &[("x-id", "h-1")]).unwrap();
        let v: Value = serde_json::from_slice(signed.json()).unwrap();
        assert_eq!(
            (v["id"].as_str(), v.get("hbunverified")),
            (Some("b-1"), None)
        );
        // Whitespace around a JSON body: not spliced, carried exactly in data_base64.
        let env = envelope(&src, b"{\"id\":7}\n", &[]).unwrap();
        assert_eq!(env.id().as_str(), "7");
        let v: Value = serde_json::from_slice(env.json()).unwrap();
        assert_eq!(v["data_base64"], "eyJpZCI6N30K");
    }

    #[test]
    fn invalid_utf8_in_a_json_string_is_not_spliced() {
        // Found by the `normalize` fuzz target: `"\xff "` passes IgnoredAny.
        let src = source("");
        let env = envelope(&src, b"\"\xff \"", &[]).unwrap();
        let v: Value = serde_json::from_slice(env.json()).expect("the envelope is always JSON");
        assert_eq!(v["data_base64"], "Iv8gIg==");
    }

    #[test]
    fn numbers_a_parser_rejects_are_not_spliced() {
        // Found by the `normalize` fuzz target: valid JSON grammar, out of f64 range.
        let src = source("");
        let env = envelope(&src, b"4e888888888888888888888888860", &[]).unwrap();
        let v: Value = serde_json::from_slice(env.json()).expect("the envelope stays parseable");
        assert!(v.get("data_base64").is_some());
        let env = envelope(&src, br#"{"n":1e300,"s":"\u00e9"}"#, &[]).unwrap();
        let v: Value = serde_json::from_slice(env.json()).unwrap();
        assert_eq!(v["data"]["s"], "é");
    }

    #[test]
    fn very_deep_bodies_are_not_spliced() {
        let src = source("");
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let env = envelope(&src, deep.as_bytes(), &[]).unwrap();
        let v: Value = serde_json::from_slice(env.json()).expect("the envelope stays parseable");
        assert!(v.get("data_base64").is_some());
    }

    #[test]
    fn joined_and_rejected_ids() {
        let src = source("event_id = [[\"/id\", \"/status\", \"/n\"]]");
        let env = envelope(&src, br#"{"id":"x","status":"pending","n":3}"#, &[]).unwrap();
        assert_eq!(env.id().as_str(), "x:pending:3");
        let long = format!(
            "{{\"id\":\"{}\",\"status\":\"s\",\"n\":1}}",
            "a".repeat(300)
        );
        assert_eq!(
            envelope(&src, long.as_bytes(), &[]).unwrap_err(),
            NormalizeError::TooLong { field: "event_id" }
        );
        assert_eq!(
            envelope(&src, br#"{"id":"a\nb","status":"s","n":1}"#, &[]).unwrap_err(),
            NormalizeError::ControlChars { field: "event_id" }
        );
    }
}
