//! HMAC-SHA256 schemes: the generic configurable one (most in-house senders) with its GitHub and
//! Shopify presets, and the presets that sign a timestamp with the body (Stripe, Slack, Zoom,
//! Paddle).
//!
//! Every comparison is constant-time (`subtle`), and the received signature is decoded before it
//! is compared, so equal MACs with different encodings (hex case) still match.

use ::hmac::digest::KeyInit;
use ::hmac::{Hmac, Mac};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::HeaderMap;
use secrecy::{ExposeSecret, SecretSlice};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{Checked, VerifyError, header, key_label, parse_unix};

type HmacSha = Hmac<Sha256>;

/// How a signature header encodes the MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Hex,
    Base64,
}

/// Secrets, in rotation order, each with a label for logs.
pub(super) struct Secrets(Vec<(String, SecretSlice<u8>)>);

impl Secrets {
    pub(super) fn new(secrets: Vec<Vec<u8>>) -> Result<Self, Vec<String>> {
        if secrets.is_empty() {
            return Err(vec!["secrets: at least one secret is required".to_owned()]);
        }
        let mut errors = Vec::new();
        for (i, s) in secrets.iter().enumerate() {
            if s.is_empty() {
                errors.push(format!("secrets[{i}]: empty secret"));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self(
            secrets
                .into_iter()
                .enumerate()
                .map(|(i, s)| (key_label(i), SecretSlice::from(s)))
                .collect(),
        ))
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn labels(&self) -> Vec<String> {
        self.0.iter().map(|(l, _)| l.clone()).collect()
    }

    /// The same secrets under the same labels, for a diagnostic variant of a scheme.
    fn duplicate(&self) -> Self {
        Self(
            self.0
                .iter()
                .map(|(l, s)| (l.clone(), SecretSlice::from(s.expose_secret().to_vec())))
                .collect(),
        )
    }

    /// The MAC over `parts` with the secret labelled `label` (the one a request verified
    /// with): Zoom's URL validation answers with a MAC made with that very secret.
    pub(super) fn mac_with(&self, label: &str, parts: &[&[u8]]) -> Option<Vec<u8>> {
        let (_, secret) = self.0.iter().find(|(l, _)| l == label)?;
        let mut mac = <HmacSha as KeyInit>::new_from_slice(secret.expose_secret()).ok()?;
        for part in parts {
            mac.update(part);
        }
        Some(mac.finalize().into_bytes().to_vec())
    }

    /// Finds the secret whose HMAC-SHA256 over `parts` equals one of `candidates`.
    pub(super) fn find_match(&self, parts: &[&[u8]], candidates: &[Vec<u8>]) -> Option<&str> {
        self.find_match_with::<HmacSha>(parts, candidates)
    }

    /// Finds the secret whose MAC `M` (HMAC over some hash) over `parts` equals one of
    /// `candidates`, compared in constant time.
    pub(super) fn find_match_with<M: Mac + KeyInit>(
        &self,
        parts: &[&[u8]],
        candidates: &[Vec<u8>],
    ) -> Option<&str> {
        for (label, secret) in &self.0 {
            // new_from_slice never fails for HMAC (any key length is valid).
            let Ok(mut mac) = <M as KeyInit>::new_from_slice(secret.expose_secret()) else {
                continue;
            };
            for part in parts {
                mac.update(part);
            }
            let expected = mac.finalize().into_bytes();
            if candidates
                .iter()
                .any(|c| bool::from(expected[..].ct_eq(c.as_slice())))
            {
                return Some(label);
            }
        }
        None
    }
}

/// Generic HMAC-SHA256 over the raw body: configurable header, encoding and prefix.
pub struct HmacSha256 {
    header: &'static str,
    encoding: Encoding,
    prefix: Option<String>,
    secrets: Secrets,
}

impl HmacSha256 {
    /// # Errors
    /// When the header name is invalid or a secret is empty.
    pub fn new(
        header: &str,
        encoding: Encoding,
        prefix: Option<String>,
        secrets: Vec<Vec<u8>>,
    ) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let header = static_header(header).map_err(|e| errors.push(e)).ok();
        let secrets = Secrets::new(secrets).map_err(|e| errors.extend(e)).ok();
        match (header, secrets) {
            (Some(header), Some(secrets)) if errors.is_empty() => Ok(Self {
                header,
                encoding,
                prefix: prefix.filter(|p| !p.is_empty()),
                secrets,
            }),
            _ => Err(errors),
        }
    }

    /// GitHub: `X-Hub-Signature-256: sha256=<hex>` over the body, keyed with the webhook's
    /// secret.
    ///
    /// # Errors
    /// When a secret is empty.
    pub fn github(secrets: Vec<Vec<u8>>) -> Result<Self, Vec<String>> {
        Self::new(
            "x-hub-signature-256",
            Encoding::Hex,
            Some("sha256=".to_owned()),
            secrets,
        )
    }

    /// Shopify: `X-Shopify-Hmac-Sha256: <base64>` over the body, keyed with the app's client
    /// secret.
    ///
    /// # Errors
    /// When a secret is empty.
    pub fn shopify(secrets: Vec<Vec<u8>>) -> Result<Self, Vec<String>> {
        Self::new("x-shopify-hmac-sha256", Encoding::Base64, None, secrets)
    }

    pub fn key_count(&self) -> usize {
        self.secrets.len()
    }

    pub(super) fn header_name(&self) -> &'static str {
        self.header
    }

    pub(super) fn encoding(&self) -> Encoding {
        self.encoding
    }

    pub(super) fn labels(&self) -> Vec<String> {
        self.secrets.labels()
    }

    /// The same scheme reading the signature in `encoding`: `hookbridge verify` tries the other
    /// encoding to tell a hex/base64 mix-up from a wrong secret. Never used to accept a request.
    pub(super) fn with_encoding(&self, encoding: Encoding) -> Self {
        Self {
            header: self.header,
            encoding,
            prefix: self.prefix.clone(),
            secrets: self.secrets.duplicate(),
        }
    }

    pub(super) fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<Checked, VerifyError> {
        let raw = header(headers, self.header)?;
        let encoded = match &self.prefix {
            Some(prefix) => {
                raw.strip_prefix(prefix.as_str())
                    .ok_or(VerifyError::MalformedHeader {
                        header: self.header,
                        reason: "missing the configured prefix",
                    })?
            }
            None => raw,
        };
        let sig = decode(encoded, self.encoding).ok_or(VerifyError::MalformedHeader {
            header: self.header,
            reason: "signature does not decode",
        })?;
        let key = self
            .secrets
            .find_match(&[body], &[sig])
            .ok_or(VerifyError::BadSignature)?;
        Ok(Checked {
            key: Some(key.to_owned()),
            signature: Some(raw.to_owned()),
            ..Checked::default()
        })
    }
}

/// Stripe: `Stripe-Signature: t=<s>,v1=<hex>[,v1=<hex>…]` over `t.body`; the key is the whole
/// `whsec_…` string as bytes (Stripe does not decode it). Only `v1` is accepted.
pub struct Stripe {
    secrets: Secrets,
}

pub(super) const STRIPE_HEADER: &str = "stripe-signature";

impl Stripe {
    /// # Errors
    /// When a secret is empty.
    pub fn new(secrets: Vec<Vec<u8>>) -> Result<Self, Vec<String>> {
        Ok(Self {
            secrets: Secrets::new(secrets)?,
        })
    }

    pub fn key_count(&self) -> usize {
        self.secrets.len()
    }

    pub(super) fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<Checked, VerifyError> {
        let raw = header(headers, STRIPE_HEADER)?;
        let mut ts = None;
        let mut sigs = Vec::new();
        for item in raw.split(',') {
            let (k, v) = item
                .trim()
                .split_once('=')
                .ok_or(VerifyError::MalformedHeader {
                    header: STRIPE_HEADER,
                    reason: "item is not key=value",
                })?;
            match k {
                "t" if ts.is_none() => ts = Some(v),
                "t" => {
                    return Err(VerifyError::MalformedHeader {
                        header: STRIPE_HEADER,
                        reason: "repeated t",
                    });
                }
                // Cheap checks first: only a 32-byte MAC can match.
                "v1" => sigs.extend(super::hex_bytes(v).filter(|m| m.len() == 32)),
                _ => {}
            }
        }
        let ts = ts.ok_or(VerifyError::MalformedHeader {
            header: STRIPE_HEADER,
            reason: "no t= timestamp",
        })?;
        let ts_ms = parse_unix(ts, STRIPE_HEADER, 1000)?;
        super::dedup_capped(&mut sigs, STRIPE_HEADER)?;
        if sigs.is_empty() {
            return Err(VerifyError::MalformedHeader {
                header: STRIPE_HEADER,
                reason: "no v1 signature",
            });
        }
        let key = self
            .secrets
            .find_match(&[ts.as_bytes(), b".", body], &sigs)
            .ok_or(VerifyError::BadSignature)?;
        Ok(Checked {
            key: Some(key.to_owned()),
            signature: Some(raw.to_owned()),
            timestamp: Some((ts.to_owned(), ts_ms)),
            message_id: None,
        })
    }
}

/// Slack: `X-Slack-Signature: v0=<hex>` over `v0:<X-Slack-Request-Timestamp>:body`.
pub struct Slack {
    secrets: Secrets,
}

pub(super) const SLACK_SIG: &str = "x-slack-signature";
pub(super) const SLACK_TS: &str = "x-slack-request-timestamp";

impl Slack {
    /// # Errors
    /// When a secret is empty.
    pub fn new(secrets: Vec<Vec<u8>>) -> Result<Self, Vec<String>> {
        Ok(Self {
            secrets: Secrets::new(secrets)?,
        })
    }

    pub fn key_count(&self) -> usize {
        self.secrets.len()
    }

    pub(super) fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<Checked, VerifyError> {
        check_v0(&self.secrets, headers, (SLACK_SIG, SLACK_TS), body)
    }
}

/// Zoom: `x-zm-signature: v0=<hex>` over `v0:<x-zm-request-timestamp>:body` (seconds), the
/// same construction as Slack's under other header names. The secret is the app's "secret
/// token", which also answers Zoom's `endpoint.url_validation` handshake
/// ([`super::Scheme::handshake`]).
pub struct Zoom {
    pub(super) secrets: Secrets,
}

pub(super) const ZOOM_SIG: &str = "x-zm-signature";
pub(super) const ZOOM_TS: &str = "x-zm-request-timestamp";

impl Zoom {
    /// # Errors
    /// When a secret is empty.
    pub fn new(secrets: Vec<Vec<u8>>) -> Result<Self, Vec<String>> {
        Ok(Self {
            secrets: Secrets::new(secrets)?,
        })
    }

    pub fn key_count(&self) -> usize {
        self.secrets.len()
    }

    pub(super) fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<Checked, VerifyError> {
        check_v0(&self.secrets, headers, (ZOOM_SIG, ZOOM_TS), body)
    }
}

/// Paddle Billing: `Paddle-Signature: ts=<s>;h1=<hex>[;h1=<hex>…]` over `ts:body`; the key is
/// the notification destination's secret key as written (`pdl_ntfset_…`). Several `h1` appear
/// while a secret is rotated; any may match.
pub struct Paddle {
    secrets: Secrets,
}

pub(super) const PADDLE_HEADER: &str = "paddle-signature";

impl Paddle {
    /// # Errors
    /// When a secret is empty.
    pub fn new(secrets: Vec<Vec<u8>>) -> Result<Self, Vec<String>> {
        Ok(Self {
            secrets: Secrets::new(secrets)?,
        })
    }

    pub fn key_count(&self) -> usize {
        self.secrets.len()
    }

    pub(super) fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<Checked, VerifyError> {
        let malformed = |reason| VerifyError::MalformedHeader {
            header: PADDLE_HEADER,
            reason,
        };
        let raw = header(headers, PADDLE_HEADER)?;
        let mut ts = None;
        let mut sigs = Vec::new();
        for item in raw.split(';') {
            let (k, v) = item
                .trim()
                .split_once('=')
                .ok_or(malformed("item is not key=value"))?;
            match k {
                "ts" if ts.is_none() => ts = Some(v),
                "ts" => return Err(malformed("repeated ts")),
                // Only a 32-byte MAC can match.
                "h1" => sigs.extend(super::hex_bytes(v).filter(|m| m.len() == 32)),
                _ => {}
            }
        }
        let ts = ts.ok_or(malformed("no ts= timestamp"))?;
        let ts_ms = parse_unix(ts, PADDLE_HEADER, 1000)?;
        super::dedup_capped(&mut sigs, PADDLE_HEADER)?;
        if sigs.is_empty() {
            return Err(malformed("no h1 signature"));
        }
        let key = self
            .secrets
            .find_match(&[ts.as_bytes(), b":", body], &sigs)
            .ok_or(VerifyError::BadSignature)?;
        Ok(Checked {
            key: Some(key.to_owned()),
            signature: Some(raw.to_owned()),
            timestamp: Some((ts.to_owned(), ts_ms)),
            message_id: None,
        })
    }
}

/// Slack's and Zoom's construction: the signature header holds `v0=<hex>`, the MAC of
/// `v0:<timestamp header>:body`, the timestamp in Unix seconds.
fn check_v0(
    secrets: &Secrets,
    headers: &HeaderMap,
    (sig_header, ts_header): (&'static str, &'static str),
    body: &[u8],
) -> Result<Checked, VerifyError> {
    let ts = header(headers, ts_header)?;
    let ts_ms = parse_unix(ts, ts_header, 1000)?;
    let raw = header(headers, sig_header)?;
    let sig =
        raw.strip_prefix("v0=")
            .and_then(super::hex_bytes)
            .ok_or(VerifyError::MalformedHeader {
                header: sig_header,
                reason: "expected v0=<hex>",
            })?;
    let key = secrets
        .find_match(&[b"v0:", ts.as_bytes(), b":", body], &[sig])
        .ok_or(VerifyError::BadSignature)?;
    Ok(Checked {
        key: Some(key.to_owned()),
        signature: Some(raw.to_owned()),
        timestamp: Some((ts.to_owned(), ts_ms)),
        message_id: None,
    })
}

pub(super) fn decode(s: &str, encoding: Encoding) -> Option<Vec<u8>> {
    match encoding {
        Encoding::Hex => super::hex_bytes(s),
        Encoding::Base64 => B64.decode(s).ok(),
    }
}

/// Header names are configured once and then looked up per request: leak the lower-cased name
/// once at load time so lookups are `&'static str` and errors can name the header.
pub(super) fn static_header(name: &str) -> Result<&'static str, String> {
    let lower = name.trim().to_ascii_lowercase();
    if http::HeaderName::from_bytes(lower.as_bytes()).is_err() || lower.is_empty() {
        return Err(format!("header: {name:?} is not a valid HTTP header name"));
    }
    Ok(Box::leak(lower.into_boxed_str()))
}
