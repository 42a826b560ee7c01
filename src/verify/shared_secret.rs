//! A header that must carry a shared secret verbatim. The weakest scheme (the secret travels
//! with every request), kept for providers that offer nothing better.

use http::HeaderMap;
use secrecy::{ExposeSecret, SecretSlice};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::hmac::static_header;
use super::{Checked, VerifyError, header, key_label};

pub struct SharedSecret {
    header: &'static str,
    /// SHA-256 of each secret: comparing fixed-length digests in constant time hides the
    /// secret's length as well as its content.
    digests: Vec<(String, SecretSlice<u8>)>,
}

impl SharedSecret {
    /// # Errors
    /// When the header name is invalid, no secret is given, or one is empty.
    pub fn new(header_name: &str, secrets: &[String]) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let header = static_header(header_name).map_err(|e| errors.push(e)).ok();
        if secrets.is_empty() {
            errors.push("secrets: at least one secret is required".to_owned());
        }
        for (i, s) in secrets.iter().enumerate() {
            if s.is_empty() {
                errors.push(format!("secrets[{i}]: empty secret"));
            }
        }
        let digests = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    key_label(i),
                    SecretSlice::from(Sha256::digest(s.as_bytes()).to_vec()),
                )
            })
            .collect();
        match header {
            Some(header) if errors.is_empty() => Ok(Self { header, digests }),
            _ => Err(errors),
        }
    }

    pub fn key_count(&self) -> usize {
        self.digests.len()
    }

    pub(super) fn header_name(&self) -> &'static str {
        self.header
    }

    pub(super) fn labels(&self) -> Vec<String> {
        self.digests.iter().map(|(l, _)| l.clone()).collect()
    }

    pub(super) fn check(&self, headers: &HeaderMap) -> Result<Checked, VerifyError> {
        let got = Sha256::digest(header(headers, self.header)?.as_bytes());
        let key = self
            .digests
            .iter()
            .find(|(_, d)| bool::from(d.expose_secret().ct_eq(&got[..])))
            .ok_or(VerifyError::BadSignature)?;
        // The header value is the secret itself: it is deliberately not kept in the proof.
        Ok(Checked {
            key: Some(key.0.clone()),
            ..Checked::default()
        })
    }
}
