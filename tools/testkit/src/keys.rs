//! Published test keys and benchmark secrets, the ones `config/example.toml`, `bench/*.toml` and
//! the tests trust. Never use them anywhere else.

/// The Ed25519 *test* key of cobo-cli's unit tests (seed, hex), from
/// `tests/fixtures/providers.json` (`cobo_cli_signer_selftest`). Not the key `cobo webhook test`
/// signs with ([`COBO_WEBHOOK_TEST_PUBKEY_HEX`]), whose private half is not used here.
/// `hookbridge send` signs Cobo WaaS 2.0 events with it.
pub const COBO_TEST_SEED_HEX: &str =
    "0281d349927d3b4342129aa4d86bd0ed70163feb7b8d06fecc25c667974b6297";

/// The public half of [`COBO_TEST_SEED_HEX`] (hex), as `public_keys` lists it.
pub const COBO_TEST_PUBKEY_HEX: &str =
    "f06a7074b7892a39139b6317509f9d0e01ae234cf17fc7bfa9db3d5957f931be";

/// The public key `cobo webhook test` (cobo-cli >= 0.1.10, `cobo_cli/utils/webhook_signing.py`)
/// signs its sample WaaS 2.0 webhooks with: what a user's first local test is signed with.
pub const COBO_WEBHOOK_TEST_PUBKEY_HEX: &str =
    "4c91fb0af65b6661f9b0b548bec8ec1ad8f23d89767753aa1c42a40f52da1903";

/// Cobo's own WaaS 1.0 keys are secret, so the tests sign with a secp256k1 key whose scalar is
/// SHA-256 of this label: repeatable, and trusted only where a test lists its public key and by
/// `config/example.toml`, for `hookbridge send`.
pub const COBO_WAAS1_TEST_LABEL: &[u8] = b"hookbridge tests: cobo waas1 signer";

/// The Standard Webhooks secret of `bench/*.toml` (also the official vector's).
pub const BENCH_STANDARD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The generic HMAC secret of `bench/*.toml`.
pub const BENCH_HMAC_SECRET: &str = "bench-hmac-secret";

/// The benchmark-only RSA key (`bench/keys/`), PKCS#8 PEM.
pub const BENCH_RSA_PRIVATE_PEM: &str = include_str!("../../../bench/keys/rsa-private.pem");

/// Its public half (SPKI PEM), as `bench/*.toml` trust it.
pub const BENCH_RSA_PUBLIC_PEM: &str = include_str!("../../../bench/keys/rsa-public.pem");
