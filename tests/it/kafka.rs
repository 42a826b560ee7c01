//! The Kafka sink against a real Kafka-protocol broker (tansu, started by `scripts/test.sh`):
//! keys, headers, bodies and counts read back with a real consumer; a broker stopped and
//! restarted; a delivery report held back by a proxy.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use serde_json::Value;

use crate::helpers::*;
use crate::proxy::Proxy;

pub fn brokers() -> String {
    let b = std::env::var("HOOKBRIDGE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let addr: SocketAddr = b.parse().expect("HOOKBRIDGE_TEST_KAFKA must be host:port");
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok(),
        "no Kafka-protocol broker at {b}: run the suite with scripts/test.sh, or start one with `scripts/brokers.sh up`"
    );
    b
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn kafka_config(brokers: &str, topic_prefix: &str, extra_source: &str) -> String {
    format!(
        r#"
[spool]
enabled = false

[sinks.kafka]
type = "kafka"
brokers = "{brokers}"
topic = "{topic_prefix}.{{source}}"
create_topics = true
partitions = 3
message_timeout_ms = 20000

[sources.cobo]
verify = {{ scheme = "cobo-waas2", public_keys = ["{key}"] }}
{extra_source}

[sources.nodedup]
verify = {{ scheme = "cobo-waas2", public_keys = ["{key}"] }}
dedup = false
"#,
        key = cobo_test_pubkey()
    )
}

pub async fn wait_ready(app: &TestApp, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if get(&app.url("/readyz")).await.status == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A Cobo WaaS 2.0 body for `id` and its headers, signed now with the test key.
pub fn signed_cobo(id: &str) -> (String, Vec<(String, String)>) {
    let body = cobo_body(id);
    let headers = sign_cobo_waas2(&cobo_test_seed(), body.as_bytes(), &now_ms().to_string());
    (body, headers)
}

/// Posts one new signed event `copies` times to `path`, each answered 200; returns its ID.
pub async fn post_copies(app: &TestApp, path: &str, copies: usize) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let (body, headers) = signed_cobo(&id);
    for i in 0..copies {
        let r = post(&app.url(path), &headers, body.clone()).await;
        assert_eq!(r.status, 200, "copy {i} to {path}");
    }
    id
}

pub async fn post_cobo(app: &TestApp, id: &str) -> Reply {
    let body = cobo_body(id);
    let headers = sign_cobo_waas2(&cobo_test_seed(), body.as_bytes(), &now_ms().to_string());
    post(&app.url("/hooks/cobo"), &headers, body).await
}

pub struct Record {
    pub key: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
}

/// Reads `topic` from the beginning until `want` records arrived or `within` passed.
pub fn consume(brokers: &str, topic: &str, want: usize, within: Duration) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("hb-test"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + within;
    while out.len() < want && Instant::now() < deadline {
        // Transient client errors (a broker reconnecting) are events, not the end.
        let Some(Ok(msg)) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let headers = msg
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Record {
            key: String::from_utf8(msg.key().unwrap().to_vec()).unwrap(),
            headers,
            body: serde_json::from_slice(msg.payload().unwrap()).unwrap(),
        });
    }
    // A little longer, to catch anything beyond `want`.
    let extra_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < extra_until {
        if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(200)) {
            out.push(Record {
                key: String::from_utf8(msg.key().unwrap().to_vec()).unwrap(),
                headers: HashMap::new(),
                body: serde_json::from_slice(msg.payload().unwrap()).unwrap(),
            });
        }
    }
    consumer.unsubscribe();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_events_arrive_keyed_by_event_id() {
    let brokers = brokers();
    let prefix = unique("hbt");
    let app = TestApp::spawn(&kafka_config(&brokers, &prefix, "")).await;
    assert!(
        wait_ready(&app, Duration::from_secs(30)).await,
        "Kafka sink never became ready"
    );

    let ids: Vec<String> = (0..1000)
        .map(|i| format!("{}-{i}", uuid::Uuid::new_v4()))
        .collect();
    let statuses: Vec<u16> = futures_util::stream::iter(ids.iter())
        .map(|id| async { post_cobo(&app, id).await.status })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1000,
        "{:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );

    // The same signed event five times: five 200s, one message (edge dedup).
    let dup = post_copies(&app, "/hooks/cobo", 5).await;
    // With dedup off, two copies are two messages with the same key.
    let twice = post_copies(&app, "/hooks/nodedup", 2).await;

    let topic = format!("{prefix}.cobo");
    let b = brokers.clone();
    let records =
        tokio::task::spawn_blocking(move || consume(&b, &topic, 1001, Duration::from_secs(60)))
            .await
            .unwrap();
    assert_eq!(records.len(), 1001);
    let want: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut seen = HashSet::new();
    for r in &records {
        if r.key == dup {
            continue;
        }
        assert!(want.contains(r.key.as_str()), "unexpected key {}", r.key);
        assert!(seen.insert(r.key.clone()), "key {} twice", r.key);
        assert_eq!(r.body["id"], r.key.as_str());
        assert_eq!(r.body["data"]["event_id"], r.key.as_str());
        assert_eq!(r.body["specversion"], "1.0");
        assert_eq!(r.body["type"], "wallets.transaction.succeeded");
        assert_eq!(r.headers["ce_id"], r.key);
        assert_eq!(r.headers["ce_type"], "wallets.transaction.succeeded");
        assert_eq!(r.headers["ce_source"], "/hooks/cobo");
        assert!(r.headers["content-type"].starts_with("application/cloudevents+json"));
    }
    assert_eq!(seen.len(), 1000);
    assert_eq!(records.iter().filter(|r| r.key == dup).count(), 1);
    let topic = format!("{prefix}.nodedup");
    let b = brokers.clone();
    let records =
        tokio::task::spawn_blocking(move || consume(&b, &topic, 2, Duration::from_secs(30)))
            .await
            .unwrap();
    assert_eq!(records.iter().filter(|r| r.key == twice).count(), 2);
    app.stop().await;
}

/// A dedicated tansu, so stopping it does not disturb other tests. SQLite storage keeps the
/// topic across the restart. `advertise` is the port clients are told to use.
pub struct Tansu {
    child: Child,
    listen: u16,
    advertise: u16,
    dir: std::path::PathBuf,
}

impl Tansu {
    pub fn start(listen: u16, advertise: u16, dir: &std::path::Path) -> Self {
        let bin = std::env::var("TANSU_BIN").unwrap_or_else(|_| "tansu".into());
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{listen}"),
            ])
            .args([
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertise}"),
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .stdout(log(dir))
            .stderr(log(dir))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {bin}: {e}; run the suite with scripts/test.sh")
            });
        let t = Self {
            child,
            listen,
            advertise,
            dir: dir.to_owned(),
        };
        t.wait_listening();
        t
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.listen)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Freezes the broker (SIGSTOP): connections stay open and nothing answers.
    pub fn freeze(&self) {
        let _ = Command::new("kill")
            .args(["-STOP", &self.child.id().to_string()])
            .status();
    }

    pub fn thaw(&self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
    }

    pub fn restart(&mut self) {
        self.stop();
        *self = Self::start(self.listen, self.advertise, &self.dir.clone());
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tansu's output, appended across restarts, for post-mortems.
fn log(dir: &std::path::Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("tansu.log"))
        .map_or_else(|_| Stdio::null(), Stdio::from)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_gives_503_and_recovers_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut tansu = Tansu::start(port, port, dir.path());
    let brokers = format!("127.0.0.1:{port}");
    let prefix = unique("hbt");
    let app = TestApp::spawn(&kafka_config(&brokers, &prefix, "")).await;
    assert!(wait_ready(&app, Duration::from_secs(30)).await);
    assert_eq!(post_cobo(&app, "before-stop").await.status, 200);

    tansu.stop();
    // Within a few probe periods the sink notices, and every answer is a quick 503.
    let mut saw_not_ready = false;
    for _ in 0..100 {
        if get(&app.url("/readyz")).await.status == 503 {
            saw_not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_not_ready, "/readyz never reported the broker gone");
    let started = Instant::now();
    let r = post_cobo(&app, "while-down").await;
    assert_eq!(r.status, 503);
    assert!(
        started.elapsed() < Duration::from_millis(1600),
        "answered within the ack deadline"
    );
    assert_eq!(r.headers.get("retry-after").unwrap(), "5");

    tansu.restart();
    assert!(
        wait_ready(&app, Duration::from_secs(30)).await,
        "sink did not recover"
    );
    // Ready means a metadata request was answered. The first publish after the restart can
    // still meet the producer re-establishing itself with the new broker process (a reconnect
    // backoff, its idempotent producer ID) past the ack deadline on a loaded machine: a 503,
    // which the provider retries (seen once in CI). What is asserted is recovery without a
    // restart of hookbridge: a 200 within a few provider-like retries.
    let mut posts = 0;
    let mut status = 0;
    while posts < 5 && status != 200 {
        if posts > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        posts += 1;
        status = post_cobo(&app, "after-restart").await.status;
    }
    assert_eq!(status, 200, "no 200 in {posts} tries after the restart");

    let topic = format!("{prefix}.cobo");
    // A 503'd try may still have landed: every post may be on the topic.
    let want = 1 + posts;
    let records = tokio::task::spawn_blocking(move || {
        consume(&brokers, &topic, want, Duration::from_secs(30))
    })
    .await
    .unwrap();
    let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    assert!(
        keys.contains(&"before-stop") && keys.contains(&"after-restart"),
        "{keys:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_200_before_the_delivery_report() {
    let dir = tempfile::tempdir().unwrap();
    let (broker_port, proxy_port) = (free_port(), free_port());
    // Clients are told to use the proxy, so every byte goes through it.
    let _tansu = Tansu::start(broker_port, proxy_port, dir.path());
    let proxy = Proxy::start_on(
        proxy_port,
        format!("127.0.0.1:{broker_port}").parse().unwrap(),
    )
    .await;
    let brokers = format!("127.0.0.1:{proxy_port}");
    let prefix = unique("hbt");
    let app = TestApp::spawn(&kafka_config(&brokers, &prefix, "ack_deadline_ms = 20000")).await;
    assert!(wait_ready(&app, Duration::from_secs(30)).await);
    assert_eq!(post_cobo(&app, "warm-up").await.status, 200);

    proxy.hold();
    let url = app.url("/hooks/cobo");
    let pending = tokio::spawn(async move {
        let body = cobo_body("held");
        let headers = sign_cobo_waas2(&cobo_test_seed(), body.as_bytes(), &now_ms().to_string());
        post(&url, &headers, body).await
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !pending.is_finished(),
        "answered while the broker's confirmation was held back"
    );
    proxy.release();
    let r = tokio::time::timeout(Duration::from_secs(20), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
    let topic = format!("{prefix}.cobo");
    let b = brokers.clone();
    let records =
        tokio::task::spawn_blocking(move || consume(&b, &topic, 2, Duration::from_secs(30)))
            .await
            .unwrap();
    assert!(records.iter().any(|r| r.key == "held"));
    app.stop().await;
}
