//! RSASSA-PKCS1-v1_5 with SHA-256 over the raw body, base64 signature in a header
//! (`X-Signature` by default). Only the public key is ever used: RUSTSEC-2023-0071 (Marvin) is a
//! timing leak of *private*-key operations and does not apply to verification.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::HeaderMap;
use rsa::RsaPublicKey;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier as _;
use rsa::traits::PublicKeyParts;
use sha2::Sha256;

use super::hmac::static_header;
use super::{Checked, VerifyError, header, key_label};

/// Smallest modulus accepted; some vendors still issue 1024-bit keys.
const MIN_BITS: usize = 1024;
/// Below this a warning is logged at startup.
pub const WARN_BELOW_BITS: usize = 2048;

pub struct RsaSha256 {
    header: &'static str,
    keys: Vec<(String, VerifyingKey<Sha256>)>,
    smallest_bits: usize,
}

impl RsaSha256 {
    /// Parses PEM public keys, PKCS#1 (`BEGIN RSA PUBLIC KEY`) or SPKI (`BEGIN PUBLIC KEY`).
    ///
    /// # Errors
    /// A message per key that does not parse or is shorter than 1024 bits.
    pub fn new(header_name: &str, pems: &[(String, String)]) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let header = static_header(header_name).map_err(|e| errors.push(e)).ok();
        let mut keys = Vec::new();
        let mut smallest_bits = usize::MAX;
        for (i, (origin, pem)) in pems.iter().enumerate() {
            let pem = pem.trim();
            let parsed = RsaPublicKey::from_pkcs1_pem(pem)
                .or_else(|_| RsaPublicKey::from_public_key_pem(pem));
            match parsed {
                Ok(key) => {
                    let bits = key.size() * 8;
                    if bits < MIN_BITS {
                        errors.push(format!("{origin}: RSA key has {bits} bits, at least {MIN_BITS} are required"));
                    } else {
                        smallest_bits = smallest_bits.min(bits);
                        keys.push((key_label(i), VerifyingKey::<Sha256>::new(key)));
                    }
                }
                Err(_) => errors.push(format!(
                    "{origin}: not a PEM RSA public key (expected BEGIN RSA PUBLIC KEY or BEGIN PUBLIC KEY)"
                )),
            }
        }
        if pems.is_empty() {
            errors.push(
                "public_keys: at least one key is required (public_keys or public_key_files)"
                    .to_owned(),
            );
        }
        match header {
            Some(header) if errors.is_empty() => Ok(Self {
                header,
                keys,
                smallest_bits,
            }),
            _ => Err(errors),
        }
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The smallest modulus configured, for the startup warning.
    pub fn smallest_bits(&self) -> usize {
        self.smallest_bits
    }

    pub(super) fn header_name(&self) -> &'static str {
        self.header
    }

    pub(super) fn labels(&self) -> Vec<String> {
        self.keys.iter().map(|(l, _)| l.clone()).collect()
    }

    pub(super) fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<Checked, VerifyError> {
        let raw = header(headers, self.header)?;
        let bytes = B64.decode(raw).map_err(|_| VerifyError::MalformedHeader {
            header: self.header,
            reason: "not base64",
        })?;
        let sig =
            Signature::try_from(bytes.as_slice()).map_err(|_| VerifyError::MalformedHeader {
                header: self.header,
                reason: "not an RSA signature",
            })?;
        let key = self
            .keys
            .iter()
            .find(|(_, k)| k.verify(body, &sig).is_ok())
            .ok_or(VerifyError::BadSignature)?;
        Ok(Checked {
            key: Some(key.0.clone()),
            signature: Some(raw.to_owned()),
            ..Checked::default()
        })
    }
}
