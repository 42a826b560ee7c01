//! Standard Webhooks (and Svix, which it grew from): `webhook-id`, `webhook-timestamp` (s) and
//! `webhook-signature`, a space-separated list of `v1,<base64 HMAC>` and `v1a,<base64 Ed25519>`
//! over `id.timestamp.body`; any one match is enough. Svix's `svix-*` headers are accepted when
//! the `webhook-*` ones are absent.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, VerifyingKey};
use http::HeaderMap;

use super::hmac::Secrets;
use super::{
    Checked, MAX_LISTED_SIGNATURES, VerifyError, dedup_capped, header_any, key_label, parse_unix,
};

pub(super) const ID: [&str; 2] = ["webhook-id", "svix-id"];
pub(super) const TIMESTAMP: [&str; 2] = ["webhook-timestamp", "svix-timestamp"];
pub(super) const SIGNATURE: [&str; 2] = ["webhook-signature", "svix-signature"];

pub struct StandardWebhooks {
    secrets: Option<Secrets>,
    public_keys: Vec<(String, VerifyingKey)>,
}

impl StandardWebhooks {
    /// `secrets` are `whsec_<base64>` (the prefix is optional); `public_keys` are
    /// `whpk_<base64 of the 32-byte Ed25519 key>`.
    ///
    /// # Errors
    /// A message per secret or key that does not decode; none configured at all.
    pub fn new(secrets: &[String], public_keys: &[String]) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut decoded = Vec::new();
        for (i, s) in secrets.iter().enumerate() {
            let b64 = s.trim().strip_prefix("whsec_").unwrap_or(s.trim());
            match B64.decode(b64) {
                Ok(k) if !k.is_empty() => decoded.push(k),
                _ => errors.push(format!("secrets[{i}]: expected whsec_<base64>")),
            }
        }
        let mut keys = Vec::new();
        for (i, k) in public_keys.iter().enumerate() {
            let b64 = k.trim().strip_prefix("whpk_").unwrap_or(k.trim());
            let key = B64
                .decode(b64)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .and_then(|b| VerifyingKey::from_bytes(&b).ok());
            match key {
                Some(key) => keys.push((format!("public_{}", key_label(i)), key)),
                None => errors.push(format!(
                    "public_keys[{i}]: expected whpk_<base64 of a 32-byte Ed25519 key>"
                )),
            }
        }
        if secrets.is_empty() && public_keys.is_empty() {
            errors.push("at least one of secrets (v1) or public_keys (v1a) is required".to_owned());
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let secrets = if decoded.is_empty() {
            None
        } else {
            Some(Secrets::new(decoded)?)
        };
        Ok(Self {
            secrets,
            public_keys: keys,
        })
    }

    pub fn key_count(&self) -> usize {
        self.secrets.as_ref().map_or(0, Secrets::len) + self.public_keys.len()
    }

    /// `v1` secrets taken as these exact bytes, not decoded from `whsec_<base64>`: how
    /// `hookbridge verify` tries the other reading of a secret (the text with or without its
    /// prefix, as some senders key their HMAC). Never used to accept a request.
    ///
    /// # Errors
    /// When a secret is empty or none is given.
    pub fn from_secret_bytes(secrets: Vec<Vec<u8>>) -> Result<Self, Vec<String>> {
        Ok(Self {
            secrets: Some(Secrets::new(secrets)?),
            public_keys: Vec::new(),
        })
    }

    pub(super) fn labels(&self) -> Vec<String> {
        let secrets = self
            .secrets
            .as_ref()
            .map(Secrets::labels)
            .unwrap_or_default();
        secrets
            .into_iter()
            .chain(self.public_keys.iter().map(|(l, _)| l.clone()))
            .collect()
    }

    pub(super) fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<Checked, VerifyError> {
        let id = header_any(headers, &ID)?;
        let ts = header_any(headers, &TIMESTAMP)?;
        let ts_ms = parse_unix(ts, TIMESTAMP[0], 1000)?;
        let raw = header_any(headers, &SIGNATURE)?;
        // Cheap checks first: only entries of the right length are kept, duplicates go, and
        // the list is capped before anything is hashed.
        let mut macs: Vec<Vec<u8>> = Vec::new();
        let mut sigs: Vec<[u8; 64]> = Vec::new();
        for item in raw.split(' ').filter(|s| !s.is_empty()) {
            match item.split_once(',') {
                Some(("v1", b64)) => macs.extend(B64.decode(b64).ok().filter(|m| m.len() == 32)),
                Some(("v1a", b64)) => sigs.extend(
                    B64.decode(b64)
                        .ok()
                        .and_then(|b| <[u8; 64]>::try_from(b).ok()),
                ),
                // Unknown versions are skipped so senders can add new ones during a migration.
                _ => {}
            }
        }
        dedup_capped(&mut macs, SIGNATURE[0])?;
        dedup_capped(&mut sigs, SIGNATURE[0])?;
        if macs.len() + sigs.len() > MAX_LISTED_SIGNATURES {
            return Err(VerifyError::MalformedHeader {
                header: SIGNATURE[0],
                reason: "more than 8 distinct signatures",
            });
        }
        let sigs: Vec<Signature> = sigs.iter().map(Signature::from_bytes).collect();
        if macs.is_empty() && sigs.is_empty() {
            return Err(VerifyError::MalformedHeader {
                header: SIGNATURE[0],
                reason: "no decodable v1 or v1a signature",
            });
        }
        let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts.as_bytes(), b".", body];
        let mut key = None;
        if let Some(secrets) = self.secrets.as_ref().filter(|_| !macs.is_empty()) {
            key = secrets.find_match(&parts, &macs).map(str::to_owned);
        }
        if key.is_none() && !sigs.is_empty() {
            let msg = parts.concat();
            key = self
                .public_keys
                .iter()
                .find(|(_, k)| sigs.iter().any(|s| k.verify_strict(&msg, s).is_ok()))
                .map(|(label, _)| label.clone());
        }
        let key = key.ok_or(VerifyError::BadSignature)?;
        Ok(Checked {
            key: Some(key),
            signature: Some(raw.to_owned()),
            timestamp: Some((ts.to_owned(), ts_ms)),
            message_id: Some(id.to_owned()),
        })
    }
}
