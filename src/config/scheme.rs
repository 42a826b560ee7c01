//! A source's `verify` table: the signature scheme and its keys, parsed at load so that nothing
//! about a key can fail on a request. Verifiers name their own fields in their errors
//! (`public_keys[0]: …`); they are recorded under the source's `verify` path.

use std::path::PathBuf;

use super::problems::Scope;
use super::raw::{RawVerify, SecretEncoding};
use crate::verify::{
    CoboWaas1, CoboWaas2, HmacSha256, Paddle, RSA_WARN_BELOW_BITS, RsaSha256, Scheme, SharedSecret,
    Slack, Square, StandardWebhooks, Stripe, Twilio, Zoom,
};

/// The scheme of source `source`; `None` when it is unusable (recorded).
pub fn build(at: &mut Scope<'_>, raw: RawVerify, source: &str) -> Option<Scheme> {
    let result = match raw {
        RawVerify::CoboWaas2 { public_keys } => CoboWaas2::new(&public_keys).map(Scheme::CoboWaas2),
        RawVerify::CoboWaas1 { public_keys } => CoboWaas1::new(&public_keys).map(Scheme::CoboWaas1),
        RawVerify::RsaSha256 {
            header,
            public_keys,
            public_key_files,
        } => rsa(&header, public_keys, &public_key_files).map(|v| {
            if v.smallest_bits() < RSA_WARN_BELOW_BITS {
                at.problems().warn(format!(
                    "source {source}: an RSA key has {} bits; 2048 or more is recommended",
                    v.smallest_bits()
                ));
            }
            Scheme::RsaSha256(v)
        }),
        RawVerify::HmacSha256 {
            header,
            encoding,
            prefix,
            secrets,
            secret_encoding,
        } => decode_secrets(&secrets, secret_encoding)
            .and_then(|s| HmacSha256::new(&header, encoding, prefix, s))
            .map(Scheme::HmacSha256),
        RawVerify::SharedSecret { header, secrets } => {
            SharedSecret::new(&header, &secrets).map(Scheme::SharedSecret)
        }
        RawVerify::StandardWebhooks {
            secrets,
            public_keys,
        } => StandardWebhooks::new(&secrets, &public_keys).map(Scheme::StandardWebhooks),
        RawVerify::Stripe { secrets } => {
            Stripe::new(secrets.into_iter().map(String::into_bytes).collect()).map(Scheme::Stripe)
        }
        RawVerify::Slack { secrets } => {
            Slack::new(secrets.into_iter().map(String::into_bytes).collect()).map(Scheme::Slack)
        }
        RawVerify::Zoom { secrets } => Zoom::new(bytes(secrets)).map(Scheme::Zoom),
        RawVerify::GitHub { secrets } => HmacSha256::github(bytes(secrets)).map(Scheme::GitHub),
        RawVerify::Shopify { secrets } => HmacSha256::shopify(bytes(secrets)).map(Scheme::Shopify),
        RawVerify::Twilio { url, secrets } => Twilio::new(&url, bytes(secrets)).map(Scheme::Twilio),
        RawVerify::Square { url, secrets } => Square::new(&url, bytes(secrets)).map(Scheme::Square),
        RawVerify::Paddle { secrets } => Paddle::new(bytes(secrets)).map(Scheme::Paddle),
        RawVerify::None {
            accept_unsigned_requests,
        } => {
            if accept_unsigned_requests {
                at.problems().warn(format!("source {source}: scheme \"none\" accepts UNSIGNED requests from anyone who can reach it"));
                Ok(Scheme::None)
            } else {
                Err(vec!["accept_unsigned_requests: scheme \"none\" accepts anything; set accept_unsigned_requests = true to confirm".to_owned()])
            }
        }
    };
    result.map_err(|e| at.errors_within(e)).ok()
}

/// Secrets used as written (UTF-8 bytes), as the providers' own SDKs use them.
fn bytes(secrets: Vec<String>) -> Vec<Vec<u8>> {
    secrets.into_iter().map(String::into_bytes).collect()
}

/// RSA keys given inline and as files; a file that cannot be read is an error of its own, after
/// the keys' errors.
fn rsa(
    header: &str,
    public_keys: Vec<String>,
    files: &[PathBuf],
) -> Result<RsaSha256, Vec<String>> {
    let mut pems: Vec<(String, String)> = public_keys
        .into_iter()
        .enumerate()
        .map(|(i, k)| (format!("public_keys[{i}]"), k))
        .collect();
    let mut file_errors = Vec::new();
    for (i, f) in files.iter().enumerate() {
        match std::fs::read_to_string(f) {
            Ok(pem) => pems.push((format!("public_key_files[{i}] ({})", f.display()), pem)),
            Err(e) => file_errors.push(format!(
                "public_key_files[{i}]: cannot read {}: {e}",
                f.display()
            )),
        }
    }
    match (RsaSha256::new(header, &pems), file_errors.is_empty()) {
        (Ok(v), true) => Ok(v),
        (Ok(_), false) => Err(file_errors),
        (Err(mut e), _) => {
            e.extend(file_errors);
            Err(e)
        }
    }
}

/// HMAC secrets as written in the config (`secret_encoding`), as bytes.
fn decode_secrets(
    secrets: &[String],
    encoding: SecretEncoding,
) -> Result<Vec<Vec<u8>>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, s) in secrets.iter().enumerate() {
        match encoding.decode(s) {
            Some(d) => out.push(d),
            None => errors.push(format!(
                "secrets[{i}]: does not decode as the configured secret_encoding"
            )),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}
