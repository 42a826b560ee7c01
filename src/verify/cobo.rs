//! Cobo WaaS 2.0 (Ed25519) and WaaS 1.0 (ECDSA secp256k1) signatures. Both sign
//! `SHA256(SHA256(raw_body | "|" | timestamp))`, with the timestamp in ms exactly as sent in
//! `Biz-Timestamp`; both header spellings are accepted because Cobo's own demos disagree.

use ed25519_dalek::VerifyingKey as EdKey;
use http::HeaderMap;
use k256::ecdsa::signature::hazmat::PrehashVerifier;
use k256::ecdsa::{Signature as EcSignature, VerifyingKey as EcKey};
use sha2::{Digest, Sha256};

use super::batch::Ed25519Batch;
use super::{Checked, VerifyError, header_any, key_label, parse_unix};

pub(super) const TIMESTAMP: [&str; 2] = ["biz-timestamp", "biz_timestamp"];
pub(super) const SIGNATURE: [&str; 2] = ["biz-resp-signature", "biz_resp_signature"];

/// Cobo's published WaaS 2.0 public keys, selectable by name in config.
pub const WAAS2_NAMED_KEYS: &[(&str, &str)] = &[
    (
        "dev",
        "a04ea1d5fa8da71f1dcfccf972b9c4eba0a2d8aba1f6da26f49977b08a0d2718",
    ),
    (
        "prod",
        "8d4a482641adb2a34b726f05827dba9a9653e5857469b8749052bf4458a86729",
    ),
];

/// Cobo's published WaaS 1.0 public keys (compressed SEC1). `sandbox-legacy` signed the two
/// official vectors and was retired by Cobo in 2023: useful only for tests.
pub const WAAS1_NAMED_KEYS: &[(&str, &str)] = &[
    (
        "dev",
        "03596da539963fb1dd29d5859e25903eb76b9f7ed2d58516e29c9f80c201ff2c1b",
    ),
    (
        "prod",
        "02c3e5bacf436fbf4da78597e791579f022a2e85073ae36c54a361ff97f2811376",
    ),
    (
        "sandbox-legacy",
        "032f45930f652d72e0c90f71869dfe9af7d713b1f67dc2f7cb51f9572778b9c876",
    ),
];

fn digest(body: &[u8], timestamp: &str) -> [u8; 32] {
    let mut first = Sha256::new();
    first.update(body);
    first.update(b"|");
    first.update(timestamp.as_bytes());
    Sha256::digest(first.finalize()).into()
}

/// Looks a key up by name, or returns the argument itself (a hex key).
fn resolve_named<'a>(named: &'a [(&'a str, &'a str)], spec: &'a str) -> (Option<&'a str>, &'a str) {
    match named.iter().find(|(n, _)| n.eq_ignore_ascii_case(spec)) {
        Some((name, hex)) => (Some(name), hex),
        None => (None, spec),
    }
}

/// Reads the timestamp and the hex signature, common to both generations.
fn read_headers(headers: &HeaderMap) -> Result<(&str, i64, Vec<u8>, &str), VerifyError> {
    let ts = header_any(headers, &TIMESTAMP)?;
    let ts_ms = parse_unix(ts, TIMESTAMP[0], 1)?;
    let sig_hex = header_any(headers, &SIGNATURE)?;
    let sig = super::hex_bytes(sig_hex).ok_or(VerifyError::MalformedHeader {
        header: SIGNATURE[0],
        reason: "not hex",
    })?;
    Ok((ts, ts_ms, sig, sig_hex))
}

/// Cobo WaaS 2.0: pure Ed25519 over the 32-byte double SHA-256 digest.
pub struct CoboWaas2 {
    keys: Vec<(String, EdKey)>,
    /// With one key, concurrent requests' signatures are verified in batches
    /// ([`Self::check_batched`]); with several, each is tried against every key alone.
    /// Boxed: it is most of the struct's size, and `Scheme`'s other variants are small.
    batch: Option<Box<Ed25519Batch>>,
}

impl CoboWaas2 {
    /// Parses key specs: `dev`, `prod`, or 64 hex characters.
    ///
    /// # Errors
    /// A message per bad spec, naming its position and never echoing the value.
    pub fn new(specs: &[String]) -> Result<Self, Vec<String>> {
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let (name, hex_key) = resolve_named(WAAS2_NAMED_KEYS, spec.trim());
            let parsed = hex::decode(hex_key)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .and_then(|b| EdKey::from_bytes(&b).ok());
            match parsed {
                // A small-order key is no one's key: signatures under it can be made without
                // a private key (and batch verification would accept them).
                Some(k) if k.is_weak() => errors.push(format!(
                    "public_keys[{i}]: a small-order Ed25519 point, which anyone can sign for; not a real public key"
                )),
                Some(k) => keys.push((name.map_or_else(|| key_label(i), str::to_owned), k)),
                None => errors.push(format!(
                    "public_keys[{i}]: expected \"dev\", \"prod\" or a 32-byte Ed25519 public key in hex (64 characters)"
                )),
            }
        }
        if keys.is_empty() && errors.is_empty() {
            errors.push("public_keys: at least one key is required".to_owned());
        }
        if errors.is_empty() {
            let batch = match keys.as_slice() {
                [(_, key)] => Some(Box::new(Ed25519Batch::new(*key))),
                _ => None,
            };
            Ok(Self { keys, batch })
        } else {
            Err(errors)
        }
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub(super) fn labels(&self) -> Vec<String> {
        self.keys.iter().map(|(l, _)| l.clone()).collect()
    }

    /// Every key Cobo publishes for WaaS 2.0, for `hookbridge verify` to say which one signed a
    /// request its source does not trust (the dev/prod mix-up).
    pub(super) fn published() -> Option<Self> {
        let names: Vec<String> = WAAS2_NAMED_KEYS
            .iter()
            .map(|(n, _)| (*n).to_owned())
            .collect();
        Self::new(&names).ok()
    }

    /// The headers read and the digest computed: what is left is the signature check.
    fn prepare(
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(Checked, ed25519_dalek::Signature, [u8; 32]), VerifyError> {
        let (ts, ts_ms, sig, sig_hex) = read_headers(headers)?;
        let sig =
            <[u8; 64]>::try_from(sig.as_slice()).map_err(|_| VerifyError::MalformedHeader {
                header: SIGNATURE[0],
                reason: "not 64 bytes",
            })?;
        let checked = Checked {
            key: None,
            signature: Some(sig_hex.to_owned()),
            timestamp: Some((ts.to_owned(), ts_ms)),
            message_id: None,
        };
        Ok((
            checked,
            ed25519_dalek::Signature::from_bytes(&sig),
            digest(body, ts),
        ))
    }

    /// Every key tried, each signature alone (`verify_strict`).
    pub(super) fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<Checked, VerifyError> {
        let (mut checked, sig, msg) = Self::prepare(headers, body)?;
        let key = self
            .keys
            .iter()
            .find(|(_, k)| k.verify_strict(&msg, &sig).is_ok())
            .ok_or(VerifyError::BadSignature)?;
        checked.key = Some(key.0.clone());
        Ok(checked)
    }

    /// [`Self::check`], but with a one-key source's signature verified in a batch with the
    /// other requests waiting at the same time (see [`super::batch`]).
    pub(super) async fn check_batched(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Checked, VerifyError> {
        let (Some(batch), [(label, _)]) = (&self.batch, self.keys.as_slice()) else {
            return self.check(headers, body);
        };
        let (mut checked, sig, msg) = Self::prepare(headers, body)?;
        if !batch.verify(msg, sig).await {
            return Err(VerifyError::BadSignature);
        }
        checked.key = Some(label.clone());
        Ok(checked)
    }
}

/// Cobo WaaS 1.0: ECDSA secp256k1, DER-encoded, over the digest as a prehash. Cobo's own
/// verifiers accept high-S signatures and k256 does not, so S is normalized first.
pub struct CoboWaas1 {
    keys: Vec<(String, EcKey)>,
}

impl CoboWaas1 {
    /// Parses key specs: `dev`, `prod`, `sandbox-legacy`, or a SEC1 public key in hex.
    ///
    /// # Errors
    /// A message per bad spec, naming its position and never echoing the value.
    pub fn new(specs: &[String]) -> Result<Self, Vec<String>> {
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let (name, hex_key) = resolve_named(WAAS1_NAMED_KEYS, spec.trim());
            let parsed = hex::decode(hex_key)
                .ok()
                .and_then(|b| EcKey::from_sec1_bytes(&b).ok());
            match parsed {
                Some(k) => keys.push((name.map_or_else(|| key_label(i), str::to_owned), k)),
                None => errors.push(format!(
                    "public_keys[{i}]: expected \"dev\", \"prod\", \"sandbox-legacy\" or a secp256k1 SEC1 public key in hex"
                )),
            }
        }
        if keys.is_empty() && errors.is_empty() {
            errors.push("public_keys: at least one key is required".to_owned());
        }
        if errors.is_empty() {
            Ok(Self { keys })
        } else {
            Err(errors)
        }
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub(super) fn labels(&self) -> Vec<String> {
        self.keys.iter().map(|(l, _)| l.clone()).collect()
    }

    /// Every key Cobo publishes for WaaS 1.0 (see [`CoboWaas2::published`]).
    pub(super) fn published() -> Option<Self> {
        let names: Vec<String> = WAAS1_NAMED_KEYS
            .iter()
            .map(|(n, _)| (*n).to_owned())
            .collect();
        Self::new(&names).ok()
    }

    pub(super) fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<Checked, VerifyError> {
        let (ts, ts_ms, der, sig_hex) = read_headers(headers)?;
        let sig = EcSignature::from_der(&der).map_err(|_| VerifyError::MalformedHeader {
            header: SIGNATURE[0],
            reason: "not a DER ECDSA signature",
        })?;
        let sig = sig.normalize_s().unwrap_or(sig);
        let msg = digest(body, ts);
        let key = self
            .keys
            .iter()
            .find(|(_, k)| k.verify_prehash(&msg, &sig).is_ok())
            .ok_or(VerifyError::BadSignature)?;
        Ok(Checked {
            key: Some(key.0.clone()),
            signature: Some(sig_hex.to_owned()),
            timestamp: Some((ts.to_owned(), ts_ms)),
            message_id: None,
        })
    }
}
