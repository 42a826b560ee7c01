//! Test harness: the app in-process on an ephemeral port, a plain HTTP client, and the signers
//! (hookbridge-testkit's) under the names the tests use.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hookbridge_testkit as testkit;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::oneshot;

pub fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/providers.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub struct TestApp {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    /// Like [`TestApp::spawn`], with the process-wide Prometheus recorder installed, so
    /// `/metrics` reports. Counters are per process: give sources names unique to the test.
    pub async fn spawn_with_metrics(config: &str) -> Self {
        static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
            std::sync::OnceLock::new();
        let handle = HANDLE
            .get_or_init(|| hookbridge::metrics::install().unwrap())
            .clone();
        Self::spawn_inner(config, Some(handle)).await
    }

    /// Starts the app from config text whose `listen` is rewritten to 127.0.0.1:0.
    pub async fn spawn(config: &str) -> Self {
        Self::spawn_inner(config, None).await
    }

    /// Starts the app from config text as written (its `listen` must use port 0); a wildcard
    /// address is reached through 127.0.0.1.
    pub async fn spawn_as_written(config: &str) -> Self {
        Self::start(config, None).await
    }

    async fn spawn_inner(
        config: &str,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Self {
        let text = if config.contains("listen =") {
            regex_free_replace_listen(config)
        } else {
            format!("[server]\nlisten = \"127.0.0.1:0\"\n{config}")
        };
        Self::start(&text, metrics).await
    }

    async fn start(
        text: &str,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Self {
        let cfg = hookbridge::config::load(text, &|_| None).unwrap_or_else(|e| panic!("{e}"));
        let app = hookbridge::app::App::build(cfg, metrics).await.unwrap();
        let mut addr = app.local_addr().unwrap();
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run(async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Graceful stop: drains requests and closes sinks.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), h).await;
        }
    }
}

fn regex_free_replace_listen(config: &str) -> String {
    config
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("listen =") {
                "listen = \"127.0.0.1:0\""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// Status, headers and the whole body of a response; `None` if the body breaks off.
    pub async fn read(resp: http::Response<hyper::body::Incoming>) -> Option<Self> {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some(Self {
            status,
            headers,
            body,
        })
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn post(url: &str, headers: &[(String, String)], body: impl Into<Bytes>) -> Reply {
    request("POST", url, headers, body.into()).await
}

pub async fn get(url: &str) -> Reply {
    request("GET", url, &[], Bytes::new()).await
}

pub async fn request(method: &str, url: &str, headers: &[(String, String)], body: Bytes) -> Reply {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(
            k.as_str(),
            http::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
        );
    }
    let req = req.body(Full::new(body)).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client().request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    Reply::read(resp).await.expect("reading the response")
}

pub fn h(k: &str, v: &str) -> (String, String) {
    (k.to_owned(), v.to_owned())
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

// The signers are hookbridge-testkit's; these names are what the tests call.

/// Cobo WaaS 2.0 headers for `body`, signed with an Ed25519 seed (hex), e.g. the Cobo CLI test key.
pub fn sign_cobo_waas2(seed_hex: &str, body: &[u8], ts: &str) -> Vec<(String, String)> {
    testkit::CoboWaas2::new(seed_hex).sign(body, ts)
}

/// Standard Webhooks v1 headers with a `whsec_` secret.
pub fn sign_standard_v1(secret: &str, id: &str, ts: u64, body: &[u8]) -> Vec<(String, String)> {
    testkit::StandardV1::new(secret).sign(id, ts, body)
}

/// Standard Webhooks v1a headers with an Ed25519 seed (hex).
pub fn sign_standard_v1a(seed_hex: &str, id: &str, ts: u64, body: &[u8]) -> Vec<(String, String)> {
    testkit::StandardV1a::new(seed_hex).sign(id, ts, body)
}

pub fn sign_stripe(secret: &str, ts: u64, body: &[u8]) -> Vec<(String, String)> {
    testkit::Stripe::new(secret).sign(ts, body)
}

pub fn sign_slack(secret: &str, ts: u64, body: &[u8]) -> Vec<(String, String)> {
    testkit::Slack::new(secret).sign(ts, body)
}

/// Reads the file sink's JSON lines.
pub fn file_events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A ~1.2 KB Cobo WaaS 2.0 webhook body with the given event ID.
pub use testkit::cobo_body;

/// The Cobo CLI test key seed (the one in the vectors).
pub fn cobo_test_seed() -> String {
    testkit::keys::COBO_TEST_SEED_HEX.to_owned()
}

pub fn cobo_test_pubkey() -> String {
    testkit::keys::COBO_TEST_PUBKEY_HEX.to_owned()
}

/// Like [`post`], but a transport error (connection refused or reset) is `None`, not a panic:
/// for tests that kill the server under load.
pub async fn try_post(url: &str, headers: &[(String, String)], body: Bytes) -> Option<Reply> {
    let mut req = http::Request::builder().method("POST").uri(url);
    for (k, v) in headers {
        req = req.header(
            k.as_str(),
            http::HeaderValue::from_bytes(v.as_bytes()).ok()?,
        );
    }
    let req = req.body(Full::new(body)).ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .ok()?
        .ok()?;
    Reply::read(resp).await
}

/// A GET, or `None` when nothing answered within 5 s.
pub async fn try_get(url: &str) -> Option<Reply> {
    let req = http::Request::get(url).body(Full::new(Bytes::new())).ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client().request(req))
        .await
        .ok()?
        .ok()?;
    Reply::read(resp).await
}

/// The compressed SEC1 public key (hex) of the tests' Cobo WaaS 1.0 signer (Cobo's own keys are
/// secret), for `public_keys`.
pub fn cobo_v1_test_pubkey() -> String {
    testkit::CoboWaas1::test_key().public_key_hex()
}

/// Cobo WaaS 1.0 headers for `body`: DER ECDSA secp256k1 over SHA256(SHA256(body|ts)), hex.
pub fn sign_cobo_waas1(body: &[u8], ts: &str) -> Vec<(String, String)> {
    testkit::CoboWaas1::test_key().sign(body, ts)
}

/// The sum of a counter's samples in a `/metrics` scrape whose labels include `labels`.
pub fn counter(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("valid Prometheus text");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// The app's `/metrics` text.
pub async fn scrape(app: &TestApp) -> String {
    String::from_utf8(get(&app.url("/metrics")).await.body.to_vec()).unwrap()
}

/// A hookbridge process that is killed if the test ends early (a failed assertion must not
/// leave it running: it would hold ports, files and the runner's pipes).
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `value` with its `from_end`-th last character changed to another one of the same alphabet
/// (base64 or hex): a signature that still parses but no longer matches.
pub fn flip_char(value: &str, from_end: usize) -> String {
    let mut b = value.as_bytes().to_vec();
    let i = b.len() - from_end;
    b[i] = match b[i] {
        b'A' => b'B',
        b'0' => b'1',
        _ => b'0',
    };
    String::from_utf8(b).expect("ASCII in, ASCII out")
}
