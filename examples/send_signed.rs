//! Signs a Cobo WaaS 2.0 webhook with the Cobo CLI *test* key (from tests/fixtures/providers.json,
//! trusted by config/example.toml) and POSTs it to a running hookbridge.
//!
//! `cargo run --example send_signed -- http://127.0.0.1:8080/hooks/cobo-waas2`

use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::Signer as _;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8080/hooks/cobo-waas2".into());
    let vectors: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/providers.json"
    ))?)?;
    let seed = hex::decode(
        vectors["cobo_v2_ed25519"][0]["private_key_hex"]
            .as_str()
            .unwrap_or_default(),
    )?;
    let key = ed25519_dalek::SigningKey::from_bytes(
        &seed
            .try_into()
            .map_err(|_| anyhow::anyhow!("test key is not 32 bytes"))?,
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let event_id = uuid::Uuid::new_v4();
    let body = format!(
        r#"{{"event_id":"{event_id}","url":"{url}","created_timestamp":{now},"type":"wallets.transaction.succeeded","data":{{"data_type":"Transaction","transaction_id":"{event_id}","status":"Success"}}}}"#
    );
    let ts = now.to_string();
    let digest = Sha256::digest(Sha256::digest(
        [body.as_bytes(), b"|", ts.as_bytes()].concat(),
    ));
    let signature = hex::encode(key.sign(&digest).to_bytes());

    let req = http::Request::post(&url)
        .header("content-type", "application/json")
        .header("Biz-Timestamp", &ts)
        .header("Biz-Resp-Signature", signature)
        .body(Full::new(bytes::Bytes::from(body)))?;
    let resp = Client::builder(TokioExecutor::new())
        .build_http()
        .request(req)
        .await?;
    let status = resp.status();
    let text = resp.into_body().collect().await?.to_bytes();
    println!("{status} {}", String::from_utf8_lossy(&text));
    Ok(())
}
