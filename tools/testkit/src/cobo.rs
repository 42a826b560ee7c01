//! Cobo WaaS 2.0 (Ed25519) and WaaS 1.0 (ECDSA secp256k1). Both sign
//! `SHA256(SHA256(body "|" timestamp))` and send `Biz-Timestamp` (milliseconds) and
//! `Biz-Resp-Signature` (hex; WaaS 1.0's is DER).

use sha2::Digest as _;

use crate::{Headers, keys, pair};

/// `SHA256(SHA256(message))`, what both Cobo schemes sign.
#[must_use]
pub fn cobo_digest(message: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(sha2::Sha256::digest(message)).into()
}

/// The signed message: the body, `|`, the timestamp.
fn message(body: &[u8], timestamp_ms: &str) -> Vec<u8> {
    [body, b"|", timestamp_ms.as_bytes()].concat()
}

fn headers(timestamp_ms: &str, signature_hex: String) -> Headers {
    vec![
        pair("Biz-Timestamp", timestamp_ms),
        pair("Biz-Resp-Signature", signature_hex),
    ]
}

/// A Cobo WaaS 2.0 signer: Ed25519 over [`cobo_digest`].
pub struct CoboWaas2(ed25519_dalek::SigningKey);

impl CoboWaas2 {
    /// From a 32-byte seed in hex.
    #[must_use]
    pub fn new(seed_hex: &str) -> Self {
        Self(crate::ed25519_key(seed_hex))
    }

    /// The Cobo CLI test key ([`keys::COBO_TEST_SEED_HEX`]).
    #[must_use]
    pub fn test_key() -> Self {
        Self::new(keys::COBO_TEST_SEED_HEX)
    }

    /// The public key in hex, as `public_keys` lists it.
    #[must_use]
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.0.verifying_key().as_bytes())
    }

    /// The hex signature of `message` (Ed25519 over its [`cobo_digest`]); Cobo's CLI signer
    /// self-test signs `000000` this way.
    #[must_use]
    pub fn signature(&self, message: &[u8]) -> String {
        use ed25519_dalek::Signer as _;
        hex::encode(self.0.sign(&cobo_digest(message)).to_bytes())
    }

    /// The headers for `body` sent at `timestamp_ms` (Unix milliseconds, as Cobo sends them).
    #[must_use]
    pub fn sign(&self, body: &[u8], timestamp_ms: &str) -> Headers {
        headers(timestamp_ms, self.signature(&message(body, timestamp_ms)))
    }
}

/// A Cobo WaaS 1.0 signer: deterministic (RFC 6979) ECDSA secp256k1 over [`cobo_digest`], the
/// signature DER-encoded in hex.
pub struct CoboWaas1(k256::ecdsa::SigningKey);

impl CoboWaas1 {
    /// From a 32-byte secp256k1 scalar in hex.
    #[must_use]
    pub fn new(scalar_hex: &str) -> Self {
        let scalar = hex::decode(scalar_hex).expect("a secp256k1 scalar in hex");
        Self(k256::ecdsa::SigningKey::from_slice(&scalar).expect("a valid secp256k1 scalar"))
    }

    /// The tests' key: the scalar is SHA-256 of [`keys::COBO_WAAS1_TEST_LABEL`].
    #[must_use]
    pub fn test_key() -> Self {
        let scalar = sha2::Sha256::digest(keys::COBO_WAAS1_TEST_LABEL);
        Self(k256::ecdsa::SigningKey::from_bytes(&scalar).expect("a valid secp256k1 scalar"))
    }

    /// The compressed SEC1 public key in hex, as `public_keys` lists it.
    #[must_use]
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.0.verifying_key().to_encoded_point(true).as_bytes())
    }

    /// The headers for `body` sent at `timestamp_ms` (Unix milliseconds).
    #[must_use]
    pub fn sign(&self, body: &[u8], timestamp_ms: &str) -> Headers {
        use k256::ecdsa::signature::hazmat::PrehashSigner as _;
        let digest = cobo_digest(&message(body, timestamp_ms));
        let signature: k256::ecdsa::Signature =
            self.0.sign_prehash(&digest).expect("a 32-byte prehash");
        headers(timestamp_ms, hex::encode(signature.to_der().as_bytes()))
    }
}
