//! `hookbridge-testkit`: what a provider would send, for hookbridge's tests, benches, examples and
//! load generator. Given a body, a key or secret and a timestamp, each signer returns the headers
//! the provider documents, with the provider's spelling, so signing is written once here rather
//! than in every test tier. It also builds the bogus signatures abuse tests and benches send.
//!
//! It does not depend on `hookbridge`: the service's own unit tests use it, and verification
//! stays in the service. Keys and secrets are test material, so a malformed one is a bug in the
//! caller and the constructors panic with what was wrong.

pub mod bench;
mod bogus;
mod cobo;
mod hmac_schemes;
pub mod keys;
mod rsa_sha256;
mod standard;
#[cfg(test)]
mod tests;
mod url_signed;

pub use bogus::{bogus_ed25519_signature, bogus_v1a};
pub use cobo::{CoboWaas1, CoboWaas2, cobo_digest};
pub use hmac_schemes::{Encoding, HmacSha256, Paddle, Slack, Stripe, Zoom};
pub use rsa_sha256::RsaSha256;
pub use standard::{StandardV1, StandardV1a};
pub use url_signed::{Square, Twilio};

/// Header name and value pairs, in the order and spelling the provider sends them.
pub type Headers = Vec<(String, String)>;

fn pair(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_owned(), value.into())
}

/// The pairs as an [`http::HeaderMap`] (names lower-cased, repeated names kept).
///
/// # Panics
/// If a name or value is not valid in HTTP.
#[must_use]
pub fn header_map(headers: &[(String, String)]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
            http::HeaderValue::from_str(value).expect("a valid header value"),
        );
    }
    map
}

/// A realistic ~1.2 KB Cobo WaaS 2.0 webhook (a USDT deposit on Ethereum) with the given event ID:
/// the body the load generator and the broker tests send.
#[must_use]
pub fn cobo_body(event_id: &str) -> String {
    format!(
        r#"{{"event_id":"{event_id}","url":"https://example.com/hooks/cobo","created_timestamp":1701396866000,"type":"wallets.transaction.succeeded","data":{{"data_type":"Transaction","transaction_id":"{event_id}-tx","wallet_id":"f47ac10b-58cc-4372-a567-0e02b2c3d479","type":"Deposit","status":"Success","chain_id":"ETH","token_id":"ETH_USDT","asset_id":"USDT","source":{{"source_type":"External","addresses":["0x9414933Ff7777bb28cA22D15c178596A6e58d957"]}},"destination":{{"destination_type":"Address","account_output":{{"address":"0x2f8BdfEa7B1A5d2B4b1f2e1b6A8dD0C1d3e4F5a6","amount":"1250.000000"}}}},"result":{{"result_type":"Transaction"}},"fee":{{"fee_type":"EVM_EIP_1559","token_id":"ETH","fee_used":"0.000421"}},"initiator":"api","confirmed_num":12,"confirming_threshold":12,"transaction_hash":"0x7f1a49a302bece956da7e0a3e9a77f0fb33ccc368ef2fa4dacac5c96d7d5f542","block_info":{{"block_number":19112233,"block_hash":"0x52dc95dbf0f409e290e38481b8b624ba2748ee08de6141be067ab80f5daf9b92"}},"created_timestamp":1701396800000,"updated_timestamp":1701396866000}}}}"#
    )
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn ed25519_key(seed_hex: &str) -> ed25519_dalek::SigningKey {
    let seed: [u8; 32] = hex::decode(seed_hex)
        .expect("an Ed25519 seed in hex")
        .try_into()
        .expect("an Ed25519 seed of 32 bytes");
    ed25519_dalek::SigningKey::from_bytes(&seed)
}
