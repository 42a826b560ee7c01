//! The only place where an outcome becomes an HTTP status and body. Bodies are small JSON with a
//! stable `error` code and a short message; details (which header, which check) go to the log and
//! metrics only, so a caller learns nothing that helps forge a request.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use crate::callback::Verdict;
use crate::callback::approve::ApprovalError;
use crate::callback::store::StoreError;
use crate::normalize::{EventId, NormalizeError};
use crate::sink::PublishError;
use crate::spool::SpoolError;
use crate::verify::{Handshake, HandshakeError, VerifyError};

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("no source is configured at this path")]
    UnknownSource,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request did not arrive over TLS")]
    TlsRequired,
    #[error("client address is not in the source's allowlist")]
    IpDenied,
    #[error("rate limit exceeded")]
    RateLimited { retry_after: u32 },
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("body not received within the read timeout")]
    BodyTimeout,
    #[error("body could not be read: {0}")]
    BodyRead(String),
    #[error(transparent)]
    Unverified(#[from] VerifyError),
    #[error(transparent)]
    Malformed(#[from] NormalizeError),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("sink did not confirm within the ack deadline")]
    AckTimeout,
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("the same event is being processed by another request")]
    DuplicateInFlight,
    #[error("too many requests in flight")]
    Overloaded,
    #[error("the server-wide budget for request bodies being read is spent")]
    BodyBudget,
    #[error("callback body is not JSON")]
    CallbackNotJson,
    #[error("no callback ID in the callback body")]
    NoCallbackId,
    #[error("no decision yet for this callback")]
    NoDecision,
    #[error(transparent)]
    DecisionStore(#[from] StoreError),
}

impl From<ApprovalError<Rejection>> for Rejection {
    fn from(e: ApprovalError<Rejection>) -> Self {
        match e {
            ApprovalError::NotJson => Self::CallbackNotJson,
            ApprovalError::NoCallbackId => Self::NoCallbackId,
            ApprovalError::Normalize(e) => Self::Malformed(e),
            ApprovalError::Store(e) => Self::DecisionStore(e),
            ApprovalError::NoDecision => Self::NoDecision,
            ApprovalError::Delivery(r) => r,
        }
    }
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownSource => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TlsRequired | Self::IpDenied => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BodyRead(_)
            | Self::Malformed(_)
            | Self::Handshake(_)
            | Self::CallbackNotJson
            | Self::NoCallbackId => StatusCode::BAD_REQUEST,
            Self::Unverified(_) => StatusCode::UNAUTHORIZED,
            Self::Publish(_)
            | Self::AckTimeout
            | Self::Spool(_)
            | Self::DuplicateInFlight
            | Self::Overloaded
            | Self::BodyBudget
            | Self::NoDecision
            | Self::DecisionStore(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Stable reason code: the `outcome` metric label, the log field and the body's `error`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownSource => "unknown_source",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TlsRequired => "tls_required",
            Self::IpDenied => "ip_denied",
            Self::RateLimited { .. } => "rate_limited",
            Self::TooLarge { .. } => "too_large",
            Self::BodyTimeout => "body_timeout",
            Self::BodyRead(_) => "body_read_error",
            Self::Unverified(e) => e.reason(),
            Self::Malformed(_) => "malformed_event",
            Self::Handshake(e) => e.reason(),
            Self::Publish(e) => e.reason(),
            Self::AckTimeout => "ack_timeout",
            Self::Spool(e) => e.reason(),
            Self::DuplicateInFlight => "duplicate_in_flight",
            Self::Overloaded => "overloaded",
            Self::BodyBudget => "body_budget",
            Self::CallbackNotJson => "callback_not_json",
            Self::NoCallbackId => "no_callback_id",
            Self::NoDecision => "no_decision",
            Self::DecisionStore(e) => e.reason(),
        }
    }

    /// What the caller is told: deliberately the same for every signature failure.
    fn public_message(&self) -> &'static str {
        match self {
            Self::UnknownSource => "no source is configured at this path",
            Self::MethodNotAllowed => "only POST is accepted",
            Self::TlsRequired => "HTTPS is required",
            Self::IpDenied => "client address not allowed",
            Self::RateLimited { .. } => "too many requests, retry later",
            Self::TooLarge { .. } => "request body too large",
            Self::BodyTimeout => "request body not received in time",
            Self::BodyRead(_) => "request body could not be read",
            Self::Unverified(_) => "request signature could not be verified",
            Self::Malformed(_) => "event id or type in the request is unusable",
            Self::Handshake(_) => "the handshake's challenge is unusable",
            Self::Publish(_) | Self::AckTimeout | Self::Spool(_) => "event not stored, retry later",
            Self::DuplicateInFlight => "this event is being stored right now, retry later",
            Self::Overloaded | Self::BodyBudget => "too busy, retry later",
            Self::CallbackNotJson => "callback body must be JSON",
            Self::NoCallbackId => "callback ID not found in the body",
            Self::NoDecision | Self::DecisionStore(_) => "no decision yet, retry later",
        }
    }

    /// Seconds the provider should wait, for answers that invite a retry.
    fn retry_after(&self) -> Option<u32> {
        match self {
            Self::Publish(_) | Self::AckTimeout | Self::Spool(_) => Some(5),
            Self::DuplicateInFlight | Self::Overloaded | Self::BodyBudget | Self::NoDecision => {
                Some(1)
            }
            Self::DecisionStore(_) => Some(5),
            Self::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    pub fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.reason(), "message": self.public_message() });
        let mut resp = json_response(self.status(), &body);
        if let Some(secs) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, Self::MethodNotAllowed) {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        resp
    }
}

/// 200 with the event ID: Cobo accepts only 200/201, so no other success status is used.
pub fn accepted(id: &EventId) -> Response {
    // The one answer every accepted request gets: serialized from borrowed fields, without
    // building a `serde_json::Value` (a map and two owned strings) first.
    #[derive(serde::Serialize)]
    struct Accepted<'a> {
        id: &'a str,
        status: &'static str,
    }
    let mut body = Vec::with_capacity(32 + id.as_str().len());
    // Serializing two strings into a Vec cannot fail.
    let _infallible = serde_json::to_writer(
        &mut body,
        &Accepted {
            id: id.as_str(),
            status: "accepted",
        },
    );
    let mut resp = Response::new(Bytes::from(body).into());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A callback's answer: 200 with exactly `ok` or `deny` as plain text (Cobo reads nothing else).
pub fn decided(verdict: Verdict) -> Response {
    let mut resp = Response::new(Bytes::from_static(verdict.body().as_bytes()).into());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The answer to a provider's endpoint handshake (Slack's challenge, Zoom's tokens), exactly
/// as the scheme built it: the provider compares it byte for byte.
pub fn handshake(h: &Handshake) -> Response {
    let mut resp = Response::new(h.body().clone().into());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(h.content_type()),
    );
    resp
}

pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut resp = Response::new(Bytes::from(body.to_string()).into());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
