//! The RabbitMQ sink against the real broker (127.0.0.1:5672, or `HOOKBRIDGE_TEST_AMQP`):
//! message ids, properties and bodies read back from a bound queue; unroutable is a failure;
//! an unreachable broker gives 503 and recovery needs no restart; a held confirm holds the 200.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::Value;

use crate::helpers::*;
use crate::kafka::{post_cobo, post_copies, wait_ready};
use crate::process::Replica;
use crate::proxy::Proxy;

pub fn amqp_url() -> String {
    std::env::var("HOOKBRIDGE_TEST_AMQP")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn amqp_addr() -> SocketAddr {
    let url = amqp_url();
    let hostport = url
        .split('@')
        .next_back()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let addr: SocketAddr = hostport.parse().unwrap();
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok(),
        "no RabbitMQ at {addr}: run the suite with scripts/test.sh, or start one with `scripts/brokers.sh up`"
    );
    addr
}

fn rabbit_config(url: &str, exchange: &str, extra: &str) -> String {
    format!(
        r#"
[spool]
enabled = false

[sinks.rabbit]
type = "rabbitmq"
url = "{url}"
exchange = "{exchange}"
routing_key = "{{source}}.{{type}}"
channels = 4

[sources.cobo]
verify = {{ scheme = "cobo-waas2", public_keys = ["{key}"] }}
{extra}

[sources.nodedup]
verify = {{ scheme = "cobo-waas2", public_keys = ["{key}"] }}
dedup = false
"#,
        key = cobo_test_pubkey()
    )
}

struct Broker {
    conn: Connection,
    ch: Channel,
    exchange: String,
}

impl Broker {
    async fn connect() -> Self {
        amqp_addr();
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        Self {
            conn,
            ch,
            exchange: format!("hbt-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// An exclusive queue bound to everything on the test exchange (declared by the sink).
    async fn bind_queue(&self) -> lapin::Consumer {
        // The sink declares the exchange on connect; wait for it by declaring it ourselves too.
        self.ch
            .exchange_declare(
                self.exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let q = self
            .ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions::exclusive().auto_delete(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.ch
            .queue_bind(
                q.name().clone(),
                self.exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.ch
            .basic_consume(
                q.name().clone(),
                "hbt".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap()
    }

    async fn cleanup(self) {
        let _ = self
            .ch
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = self.conn.close(200, "done".into()).await;
    }
}

struct Got {
    message_id: String,
    content_type: String,
    routing_key: String,
    delivery_mode: u8,
    ce_id: String,
    body: Value,
}

async fn receive(consumer: &mut lapin::Consumer, want: usize, within: Duration) -> Vec<Got> {
    let mut out = Vec::new();
    let deadline = Instant::now() + within;
    while out.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(Ok(d))) =
            tokio::time::timeout(left.max(Duration::from_millis(1)), consumer.next()).await
        else {
            break;
        };
        let header = |k: &str| match d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(k))
        {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            _ => String::new(),
        };
        out.push(Got {
            message_id: d
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            content_type: d
                .properties
                .content_type()
                .as_ref()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            routing_key: d.routing_key.as_str().to_owned(),
            delivery_mode: d.properties.delivery_mode().unwrap_or(0),
            ce_id: header("cloudEvents:id"),
            body: serde_json::from_slice(&d.data).unwrap(),
        });
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    // Anything beyond `want` shows up here.
    while let Ok(Some(Ok(d))) =
        tokio::time::timeout(Duration::from_millis(1500), consumer.next()).await
    {
        out.push(Got {
            message_id: d
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            content_type: String::new(),
            routing_key: String::new(),
            delivery_mode: 0,
            ce_id: String::new(),
            body: Value::Null,
        });
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_events_arrive_with_message_id() {
    let broker = Broker::connect().await;
    let mut consumer = broker.bind_queue().await;
    let app = TestApp::spawn(&rabbit_config(&amqp_url(), &broker.exchange, "")).await;
    assert!(wait_ready(&app, Duration::from_secs(30)).await);

    let ids: Vec<String> = (0..1000)
        .map(|i| format!("{}-{i}", uuid::Uuid::new_v4()))
        .collect();
    let statuses: Vec<u16> = futures_util::stream::iter(ids.iter())
        .map(|id| async { post_cobo(&app, id).await.status })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1000);
    // The same signed event five times: five 200s, one message (edge dedup).
    let dup = post_copies(&app, "/hooks/cobo", 5).await;
    // With dedup off, two copies are two messages with the same message_id.
    let twice = post_copies(&app, "/hooks/nodedup", 2).await;

    let got = receive(&mut consumer, 1003, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 1003);
    let want: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let mut seen = HashSet::new();
    for g in got
        .iter()
        .filter(|g| g.message_id != dup && g.message_id != twice)
    {
        assert!(
            want.contains(g.message_id.as_str()),
            "unexpected {}",
            g.message_id
        );
        assert!(seen.insert(g.message_id.clone()));
        assert_eq!(g.ce_id, g.message_id);
        assert_eq!(g.body["id"], g.message_id.as_str());
        assert_eq!(g.body["data"]["event_id"], g.message_id.as_str());
        assert_eq!(g.content_type, "application/cloudevents+json");
        assert_eq!(g.routing_key, "cobo.wallets.transaction.succeeded");
        assert_eq!(g.delivery_mode, 2, "persistent");
    }
    assert_eq!(seen.len(), 1000);
    assert_eq!(got.iter().filter(|g| g.message_id == dup).count(), 1);
    assert_eq!(got.iter().filter(|g| g.message_id == twice).count(), 2);
    app.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_event_is_not_acknowledged() {
    let broker = Broker::connect().await;
    // No queue bound: the mandatory publish comes back as returned.
    let app = TestApp::spawn(&rabbit_config(&amqp_url(), &broker.exchange, "")).await;
    assert!(wait_ready(&app, Duration::from_secs(30)).await);
    let r = post_cobo(&app, "nowhere-to-go").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "broker_refused");
    app.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_gives_503_and_recovers_without_restart() {
    let broker = Broker::connect().await;
    let mut consumer = broker.bind_queue().await;
    let proxy = Proxy::start(amqp_addr()).await;
    proxy.cut();
    let url = amqp_url().replace(&amqp_addr().to_string(), &proxy.addr.to_string());
    // Starts even though the broker is unreachable.
    let app = TestApp::spawn(&rabbit_config(&url, &broker.exchange, "")).await;
    assert_eq!(get(&app.url("/readyz")).await.status, 503);
    let started = Instant::now();
    let r = post_cobo(&app, "while-down-1").await;
    assert_eq!(r.status, 503);
    assert!(r.headers.contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_millis(1600));

    proxy.restore();
    assert!(
        wait_ready(&app, Duration::from_secs(30)).await,
        "never connected"
    );
    assert_eq!(post_cobo(&app, "up-1").await.status, 200);

    // Lost while running: connections dropped.
    proxy.cut();
    let mut down = false;
    for _ in 0..50 {
        if post_cobo(&app, "while-down-2").await.status == 503
            && get(&app.url("/readyz")).await.status == 503
        {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(down, "the lost connection was not noticed");
    proxy.restore();
    assert!(
        wait_ready(&app, Duration::from_secs(30)).await,
        "did not reconnect"
    );
    assert_eq!(post_cobo(&app, "up-2").await.status, 200);

    let got = receive(&mut consumer, 2, Duration::from_secs(20)).await;
    let ids: Vec<&str> = got.iter().map(|g| g.message_id.as_str()).collect();
    assert_eq!(
        ids,
        ["up-1", "up-2"],
        "only acknowledged events are on the broker"
    );
    app.stop().await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_200_before_the_publisher_confirm() {
    let broker = Broker::connect().await;
    let mut consumer = broker.bind_queue().await;
    let proxy = Proxy::start(amqp_addr()).await;
    let url = amqp_url().replace(&amqp_addr().to_string(), &proxy.addr.to_string());
    let app = TestApp::spawn(&rabbit_config(
        &url,
        &broker.exchange,
        "ack_deadline_ms = 20000",
    ))
    .await;
    assert!(wait_ready(&app, Duration::from_secs(30)).await);

    proxy.hold();
    let target = app.url("/hooks/cobo");
    let pending = tokio::spawn(async move {
        let body = cobo_body("held");
        let headers = sign_cobo_waas2(&cobo_test_seed(), body.as_bytes(), &now_ms().to_string());
        post(&target, &headers, body).await
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !pending.is_finished(),
        "answered while the confirm was held back"
    );
    proxy.release();
    let r = tokio::time::timeout(Duration::from_secs(20), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
    let got = receive(&mut consumer, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].message_id, "held");
    app.stop().await;
    broker.cleanup().await;
}

/// A RabbitMQ sink on `exchange` with the spool at `spool`; the source `cobo` has `extra`.
fn dead_letter_config(exchange: &str, spool: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"

[spool]
path = "{spool}"

[sinks.rabbit]
type = "rabbitmq"
url = "{url}"
exchange = "{exchange}"
routing_key = "{{source}}.{{type}}"

[sources.cobo]
verify = {{ scheme = "cobo-waas2", public_keys = ["{key}"] }}
{extra}
"#,
        url = amqp_url(),
        port = free_port(),
        spool = spool.display(),
        key = cobo_test_pubkey()
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real instance (its own process, so its spool file is held and released as in production),
/// once its RabbitMQ sink is connected (`/readyz` is ready earlier, with the spool standing in).
async fn serve(dir: &std::path::Path, config: &str) -> (Replica, String) {
    serve_when(dir, config, true).await
}

/// Like [`serve`]; with `sink_ready` false, once `/readyz` answers 200 (the spool standing in).
async fn serve_when(dir: &std::path::Path, config: &str, sink_ready: bool) -> (Replica, String) {
    let port = config
        .split("listen = \"127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let listen = format!("127.0.0.1:{port}");
    let mut instance = Replica::new(dir, "hookbridge", &listen, None, config);
    instance.start().await;
    let base = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "instance not ready");
        if let Ok(v) = serde_json::from_slice::<Value>(&get(&format!("{base}/readyz")).await.body)
            && (v["sinks"]["rabbit"]["ready"] == true || (!sink_ready && v["ready"] == true))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (instance, base)
}

/// SIGTERM, and wait for the graceful stop.
async fn stop(mut instance: Replica) {
    assert!(instance.terminate().await.success());
}

async fn post_to(base: &str, id: &str) -> Reply {
    let body = cobo_body(id);
    let headers = sign_cobo_waas2(&cobo_test_seed(), body.as_bytes(), &now_ms().to_string());
    post(&format!("{base}/hooks/cobo"), &headers, body).await
}

fn spool_cmd(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hookbridge"))
        .arg("spool")
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_event_is_dead_lettered_answered_200_and_replayed_once_a_queue_is_bound() {
    let broker = Broker::connect().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool.redb");
    let config = dead_letter_config(&broker.exchange, &spool, "");
    let (app, base) = serve(dir.path(), &config).await;
    let id = uuid::Uuid::new_v4().to_string();
    // No queue bound: the mandatory publish comes back unroutable, refused for good.
    let r = post_to(&base, &id).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["id"], id.as_str());
    // Counted and alertable.
    let metrics = String::from_utf8_lossy(&get(&format!("{base}/metrics")).await.body).into_owned();
    let labels = [("sink", "rabbit")];
    assert_eq!(
        counter(&metrics, "hookbridge_dead_lettered_total", &labels),
        1.0,
        "{metrics}"
    );
    let outcome = [("source", "cobo"), ("outcome", "dead_lettered")];
    assert_eq!(
        counter(&metrics, "hookbridge_requests_total", &outcome),
        1.0
    );

    // While the instance runs, its spool is held: a clear message, its own exit code.
    let held = spool_cmd(&["dead", "list", "--spool", spool.to_str().unwrap()]);
    assert_eq!(held.status.code(), Some(75), "{held:?}");
    assert!(String::from_utf8_lossy(&held.stderr).contains("held by another process"));
    stop(app).await;

    let list = spool_cmd(&["dead", "list", "--spool", spool.to_str().unwrap()]);
    assert!(list.status.success(), "{list:?}");
    let listed = String::from_utf8_lossy(&list.stdout);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(
        listed.contains(&id) && listed.contains("rabbit\t"),
        "{listed}"
    );

    let mut consumer = broker.bind_queue().await;
    let cfg = dir.path().join("hookbridge.toml");
    let replay = spool_cmd(&["dead", "replay", "--config", cfg.to_str().unwrap()]);
    assert!(replay.status.success(), "{replay:?}");

    let got = receive(&mut consumer, 1, Duration::from_secs(10)).await;
    let ids: Vec<&str> = got.iter().map(|g| g.message_id.as_str()).collect();
    assert_eq!(ids, [id.as_str()], "on the broker exactly once");
    assert_eq!(got[0].body["id"], id.as_str());
    assert_eq!(
        hookbridge::spool::cli::dead_counts(&spool).unwrap(),
        [("rabbit".to_owned(), 0)]
    );
    // Replaying again publishes nothing.
    let again = spool_cmd(&["dead", "replay", "--config", cfg.to_str().unwrap()]);
    assert!(again.status.success(), "{again:?}");
    assert!(
        receive(&mut consumer, 0, Duration::from_millis(500))
            .await
            .is_empty()
    );
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_refused_reject_keeps_the_503_and_keeps_no_dead_letter() {
    let broker = Broker::connect().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool.redb");
    let config = dead_letter_config(&broker.exchange, &spool, r#"on_refused = "reject""#);
    let (app, base) = serve(dir.path(), &config).await;
    let r = post_to(&base, "refused-and-rejected").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "broker_refused");
    stop(app).await;
    assert_eq!(
        hookbridge::spool::cli::dead_counts(&spool).unwrap(),
        [("rabbit".to_owned(), 0)]
    );
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drainer_moves_a_refused_spooled_event_to_dead_letters() {
    let broker = Broker::connect().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool.redb");
    let config = dead_letter_config(&broker.exchange, &spool, r#"ack = "spool""#);
    let (app, base) = serve(dir.path(), &config).await;
    let r = post_to(&base, "spooled-then-refused").await;
    assert_eq!(r.status, 200);
    // The drainer publishes, the broker returns it unroutable: moved, not retried forever.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop(app).await;
    assert_eq!(
        hookbridge::spool::cli::dead_counts(&spool).unwrap(),
        [("rabbit".to_owned(), 1)]
    );
    let list = spool_cmd(&["dead", "list", "--spool", spool.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&list.stdout).contains("spooled-then-refused"),
        "{list:?}"
    );
    broker.cleanup().await;
}

#[test]
fn a_damaged_spool_file_gets_its_own_exit_code_and_is_not_changed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool.redb");
    let garbage = vec![0x5a; 64 * 1024];
    std::fs::write(&spool, &garbage).unwrap();
    let out = spool_cmd(&["dead", "list", "--spool", spool.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(65), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("damaged"));
    assert_eq!(std::fs::read(&spool).unwrap(), garbage);
    let missing = spool_cmd(&["dead", "list", "--spool", "/nonexistent/spool.redb"]);
    assert_eq!(missing.status.code(), Some(66), "{missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_stats_list_export_and_drain_on_a_stopped_instance_keep_original_ids() {
    let broker = Broker::connect().await;
    let mut consumer = broker.bind_queue().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool.redb");
    let p = spool.to_str().unwrap();
    // The instance's broker is away: every event is spooled and answered 200.
    let away = dead_letter_config(&broker.exchange, &spool, "")
        .replace(&amqp_url(), "amqp://guest:guest@127.0.0.1:1/%2f");
    let (app, base) = serve_when(dir.path(), &away, false).await;
    let ids: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for id in &ids {
        let r = post_to(&base, id).await;
        assert_eq!(r.status, 200, "{:?}", r.json());
    }
    for cmd in ["stats", "list", "export"] {
        let held = spool_cmd(&[cmd, "--spool", p]);
        assert_eq!(held.status.code(), Some(75), "{cmd}: {held:?}");
    }
    stop(app).await;

    let stats = spool_cmd(&["stats", "--spool", p]);
    assert!(stats.status.success(), "{stats:?}");
    let stats = String::from_utf8_lossy(&stats.stdout).into_owned();
    let row: Vec<&str> = stats.lines().nth(1).unwrap().split('\t').collect();
    assert_eq!(&row[..2], ["rabbit", "3"], "{stats}");
    assert!(row[3].starts_with("20"), "oldest: {stats}");

    let list = spool_cmd(&["list", "--spool", p]);
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert_eq!(list.lines().count(), 3, "{list}");
    for id in &ids {
        assert!(list.contains(id.as_str()), "{list}");
    }

    let export = spool_cmd(&["export", "--spool", p]);
    assert!(export.status.success(), "{export:?}");
    let exported: Vec<String> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(exported, ids, "original IDs, in order");

    // The broker is back (this config reaches it): drain publishes each once and removes it.
    let cfg = dir.path().join("back.toml");
    std::fs::write(&cfg, dead_letter_config(&broker.exchange, &spool, "")).unwrap();
    let drain = spool_cmd(&[
        "drain",
        "--to-sink",
        "rabbit",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(drain.status.success(), "{drain:?}");
    let got = receive(&mut consumer, 3, Duration::from_secs(10)).await;
    let got: Vec<&str> = got.iter().map(|g| g.message_id.as_str()).collect();
    assert_eq!(got, ids, "on the broker exactly once each, in order");
    let list = spool_cmd(&["list", "--spool", p]);
    assert!(list.status.success() && list.stdout.is_empty(), "{list:?}");
    let unknown = spool_cmd(&[
        "drain",
        "--to-sink",
        "nope",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(unknown.status.code(), Some(64), "{unknown:?}");
    broker.cleanup().await;
}

#[test]
fn every_spool_command_refuses_a_damaged_file_without_changing_it() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool.redb");
    let garbage = vec![0x5a; 64 * 1024];
    std::fs::write(&spool, &garbage).unwrap();
    let p = spool.to_str().unwrap();
    for cmd in [&["stats"][..], &["list"], &["export"], &["dead", "list"]] {
        let mut args = cmd.to_vec();
        args.extend(["--spool", p]);
        let out = spool_cmd(&args);
        assert_eq!(out.status.code(), Some(65), "{cmd:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("damaged"),
            "{out:?}"
        );
    }
    let cfg = dir.path().join("hookbridge.toml");
    std::fs::write(&cfg, dead_letter_config("unused", &spool, "")).unwrap();
    for cmd in [&["drain", "--to-sink", "rabbit"][..], &["dead", "replay"]] {
        let mut args = cmd.to_vec();
        args.extend(["--config", cfg.to_str().unwrap()]);
        let out = spool_cmd(&args);
        assert_eq!(out.status.code(), Some(65), "{cmd:?}: {out:?}");
    }
    assert_eq!(std::fs::read(&spool).unwrap(), garbage);
}
