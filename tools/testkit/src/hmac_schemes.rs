//! The HMAC-SHA256 schemes: Stripe, Slack, Zoom, and the generic one (a header holding the MAC of the
//! body, hex or base64, maybe behind a prefix) that GitHub and Shopify use.

use hmac::Mac as _;

use crate::{Headers, b64, pair};

pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// A Stripe signer: `Stripe-Signature: t=<ts>,v1=<hex HMAC of "ts.body">`.
pub struct Stripe {
    secret: Vec<u8>,
}

impl Stripe {
    /// From the endpoint's signing secret (`whsec_...`, used as it is).
    #[must_use]
    pub fn new(secret: &str) -> Self {
        Self {
            secret: secret.as_bytes().to_vec(),
        }
    }

    /// The headers for `body` sent at `timestamp` (Unix seconds).
    #[must_use]
    pub fn sign(&self, timestamp: u64, body: &[u8]) -> Headers {
        let ts = timestamp.to_string();
        let mac = hmac_sha256(&self.secret, &[ts.as_bytes(), b".", body]);
        vec![pair(
            "Stripe-Signature",
            format!("t={ts},v1={}", hex::encode(mac)),
        )]
    }
}

/// A Slack signer: `X-Slack-Request-Timestamp` and `X-Slack-Signature: v0=<hex HMAC of
/// "v0:ts:body">`.
pub struct Slack {
    secret: Vec<u8>,
}

impl Slack {
    /// From the app's signing secret.
    #[must_use]
    pub fn new(signing_secret: &str) -> Self {
        Self {
            secret: signing_secret.as_bytes().to_vec(),
        }
    }

    /// The headers for `body` sent at `timestamp` (Unix seconds).
    #[must_use]
    pub fn sign(&self, timestamp: u64, body: &[u8]) -> Headers {
        let ts = timestamp.to_string();
        let mac = hmac_sha256(&self.secret, &[b"v0:", ts.as_bytes(), b":", body]);
        vec![
            pair("X-Slack-Request-Timestamp", ts),
            pair("X-Slack-Signature", format!("v0={}", hex::encode(mac))),
        ]
    }
}

/// A Zoom signer: `x-zm-request-timestamp` and `x-zm-signature: v0=<hex HMAC of
/// "v0:ts:body">`, keyed with the app's secret token.
pub struct Zoom {
    secret: Vec<u8>,
}

impl Zoom {
    /// From the app's secret token.
    #[must_use]
    pub fn new(secret_token: &str) -> Self {
        Self {
            secret: secret_token.as_bytes().to_vec(),
        }
    }

    /// The headers for `body` sent at `timestamp` (Unix seconds).
    #[must_use]
    pub fn sign(&self, timestamp: u64, body: &[u8]) -> Headers {
        let ts = timestamp.to_string();
        let mac = hmac_sha256(&self.secret, &[b"v0:", ts.as_bytes(), b":", body]);
        vec![
            pair("x-zm-request-timestamp", ts),
            pair("x-zm-signature", format!("v0={}", hex::encode(mac))),
        ]
    }

    /// What Zoom expects back for an `endpoint.url_validation` with `plain_token`: the hex
    /// HMAC-SHA256 of the token under the secret token (`encryptedToken`).
    #[must_use]
    pub fn encrypted_token(&self, plain_token: &str) -> String {
        hex::encode(hmac_sha256(&self.secret, &[plain_token.as_bytes()]))
    }
}

/// A Paddle Billing signer: `Paddle-Signature: ts=<ts>;h1=<hex HMAC of "ts:body">`, keyed with
/// the notification destination's secret key as written.
pub struct Paddle {
    secret: Vec<u8>,
}

impl Paddle {
    #[must_use]
    pub fn new(secret_key: &str) -> Self {
        Self {
            secret: secret_key.as_bytes().to_vec(),
        }
    }

    /// The header for `body` sent at `timestamp` (Unix seconds).
    #[must_use]
    pub fn sign(&self, timestamp: u64, body: &[u8]) -> Headers {
        let ts = timestamp.to_string();
        let mac = hmac_sha256(&self.secret, &[ts.as_bytes(), b":", body]);
        vec![pair(
            "Paddle-Signature",
            format!("ts={ts};h1={}", hex::encode(mac)),
        )]
    }
}

/// How the generic scheme writes the MAC.
#[derive(Clone, Copy, Debug)]
pub enum Encoding {
    Hex,
    Base64,
}

/// The generic HMAC-SHA256 signer: one header, `prefix` then the MAC of the body.
pub struct HmacSha256 {
    header: String,
    prefix: String,
    encoding: Encoding,
    secret: Vec<u8>,
}

impl HmacSha256 {
    #[must_use]
    pub fn new(header: &str, prefix: &str, encoding: Encoding, secret: &[u8]) -> Self {
        Self {
            header: header.to_owned(),
            prefix: prefix.to_owned(),
            encoding,
            secret: secret.to_vec(),
        }
    }

    /// GitHub's: `X-Hub-Signature-256: sha256=<hex>`.
    #[must_use]
    pub fn github(secret: &str) -> Self {
        Self::new(
            "X-Hub-Signature-256",
            "sha256=",
            Encoding::Hex,
            secret.as_bytes(),
        )
    }

    /// Shopify's: `X-Shopify-Hmac-Sha256: <base64>`.
    #[must_use]
    pub fn shopify(secret: &str) -> Self {
        Self::new(
            "X-Shopify-Hmac-Sha256",
            "",
            Encoding::Base64,
            secret.as_bytes(),
        )
    }

    /// The header for `body`.
    #[must_use]
    pub fn sign(&self, body: &[u8]) -> Headers {
        let mac = hmac_sha256(&self.secret, &[body]);
        let encoded = match self.encoding {
            Encoding::Hex => hex::encode(mac),
            Encoding::Base64 => b64(&mac),
        };
        vec![pair(&self.header, format!("{}{encoded}", self.prefix))]
    }
}
