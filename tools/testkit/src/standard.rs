//! Standard Webhooks (and Svix, which it standardised): `webhook-id`, `webhook-timestamp`
//! (seconds) and `webhook-signature`, signing `id "." timestamp "." body`; `v1` is HMAC-SHA256
//! with the base64 secret after `whsec_`, `v1a` is Ed25519. Both base64.

use base64::Engine as _;
use hmac::Mac as _;

use crate::{Headers, b64, pair};

fn signed_content(id: &str, timestamp: u64, body: &[u8]) -> Vec<u8> {
    [
        id.as_bytes(),
        b".",
        timestamp.to_string().as_bytes(),
        b".",
        body,
    ]
    .concat()
}

fn headers(id: &str, timestamp: u64, signature: String) -> Headers {
    vec![
        pair("webhook-id", id),
        pair("webhook-timestamp", timestamp.to_string()),
        pair("webhook-signature", signature),
    ]
}

/// A `v1` (HMAC-SHA256) signer.
pub struct StandardV1 {
    key: Vec<u8>,
}

impl StandardV1 {
    /// From a `whsec_` secret (the prefix is optional).
    #[must_use]
    pub fn new(secret: &str) -> Self {
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.trim_start_matches("whsec_"))
            .expect("a whsec_ secret in base64");
        Self { key }
    }

    /// The headers for message `id` with `body`, sent at `timestamp` (Unix seconds).
    #[must_use]
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> Headers {
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(&signed_content(id, timestamp, body));
        let signature = format!("v1,{}", b64(&mac.finalize().into_bytes()));
        headers(id, timestamp, signature)
    }
}

/// A `v1a` (Ed25519) signer.
pub struct StandardV1a(ed25519_dalek::SigningKey);

impl StandardV1a {
    /// From a 32-byte seed in hex.
    #[must_use]
    pub fn new(seed_hex: &str) -> Self {
        Self(crate::ed25519_key(seed_hex))
    }

    /// The public key as `public_keys` lists it: `whpk_` and base64.
    #[must_use]
    pub fn public_key(&self) -> String {
        format!("whpk_{}", b64(self.0.verifying_key().as_bytes()))
    }

    /// The headers for message `id` with `body`, sent at `timestamp` (Unix seconds).
    #[must_use]
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> Headers {
        use ed25519_dalek::Signer as _;
        let signature = self.0.sign(&signed_content(id, timestamp, body));
        headers(id, timestamp, format!("v1a,{}", b64(&signature.to_bytes())))
    }
}
