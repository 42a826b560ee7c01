//! Signs a Cobo WaaS 2.0 webhook with the Cobo CLI *test* key (hookbridge-testkit's, the one in
//! tests/fixtures/providers.json, trusted by config/example.toml) and POSTs it to a running
//! hookbridge.
//!
//! `cargo run --example send_signed -- http://127.0.0.1:8080/hooks/cobo-waas2`

use std::time::{SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8080/hooks/cobo-waas2".into());
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let event_id = uuid::Uuid::new_v4();
    let body = format!(
        r#"{{"event_id":"{event_id}","url":"{url}","created_timestamp":{now},"type":"wallets.transaction.succeeded","data":{{"data_type":"Transaction","transaction_id":"{event_id}","status":"Success"}}}}"#
    );
    // Biz-Timestamp and Biz-Resp-Signature, as Cobo sends them.
    let signature =
        hookbridge_testkit::CoboWaas2::test_key().sign(body.as_bytes(), &now.to_string());

    let mut req = http::Request::post(&url).header("content-type", "application/json");
    for (name, value) in signature {
        req = req.header(name, value);
    }
    let resp = Client::builder(TokioExecutor::new())
        .build_http()
        .request(req.body(Full::new(bytes::Bytes::from(body)))?)
        .await?;
    let status = resp.status();
    let text = resp.into_body().collect().await?.to_bytes();
    println!("{status} {}", String::from_utf8_lossy(&text));
    Ok(())
}
