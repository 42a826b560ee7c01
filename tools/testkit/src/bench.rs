//! The signers matching the sources of `bench/*.toml` (and `benches/verify.rs`), for the load
//! generator and the criterion benches.

use crate::{CoboWaas2, Encoding, HmacSha256, RsaSha256, StandardV1, keys};

/// `cobo-waas2` with the Cobo CLI test key.
#[must_use]
pub fn cobo_waas2() -> CoboWaas2 {
    CoboWaas2::test_key()
}

/// `standard-webhooks` (`v1`) with [`keys::BENCH_STANDARD_SECRET`].
#[must_use]
pub fn standard_webhooks() -> StandardV1 {
    StandardV1::new(keys::BENCH_STANDARD_SECRET)
}

/// `hmac-sha256`: `X-Signature-256: sha256=<hex>` with [`keys::BENCH_HMAC_SECRET`].
#[must_use]
pub fn hmac_sha256() -> HmacSha256 {
    HmacSha256::new(
        "X-Signature-256",
        "sha256=",
        Encoding::Hex,
        keys::BENCH_HMAC_SECRET.as_bytes(),
    )
}

/// `rsa-sha256`: `X-Signature` with the benchmark-only RSA key.
#[must_use]
pub fn rsa_sha256() -> RsaSha256 {
    RsaSha256::from_pkcs8_pem("X-Signature", keys::BENCH_RSA_PRIVATE_PEM)
}
