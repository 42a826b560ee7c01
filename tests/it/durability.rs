//! No event lost, none doubled at the edge: the spool taking over from an unreachable broker and
//! draining afterwards, `ack = "spool"`, a full spool, dedup shared by two instances through
//! Redis, and backpressure.

use std::time::{Duration, Instant};

use redb::{
    ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _, TableDefinition,
};

use crate::helpers::*;
use crate::kafka::{free_port, signed_cobo, wait_ready};
use crate::process::Replica;
use crate::proxy::Proxy;
use crate::rabbitmq::{amqp_addr, amqp_url};
use crate::tap::RabbitTap;

fn redis_url() -> String {
    std::env::var("HOOKBRIDGE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn config(amqp: &str, exchange: &str, spool: &str, extra_source: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{extra}

{spool}

[sinks.rabbit]
type = "rabbitmq"
url = "{amqp}"
exchange = "{exchange}"

[sources.cobo]
verify = {{ scheme = "cobo-waas2", public_keys = ["{key}"] }}
{extra_source}
"#,
        key = cobo_test_pubkey()
    )
}

fn spool_in(dir: &std::path::Path, max_bytes: u64) -> String {
    format!(
        "[spool]\npath = \"{}\"\nmax_bytes = {max_bytes}\n",
        dir.join("spool.redb").display()
    )
}

async fn post_id(app: &TestApp, id: &str) -> Reply {
    let (body, headers) = signed_cobo(id);
    post(&app.url("/hooks/cobo"), &headers, body).await
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_takes_over_while_the_broker_is_away_and_drains_after() {
    let dir = tempfile::tempdir().unwrap();
    let tap = RabbitTap::new().await;
    let proxy = Proxy::start(amqp_addr()).await;
    let url = amqp_url().replace(&amqp_addr().to_string(), &proxy.addr.to_string());
    let app = TestApp::spawn_with_metrics(&config(
        &url,
        &tap.exchange,
        &spool_in(dir.path(), 1 << 30),
        "",
        "",
    ))
    .await;
    assert!(wait_ready(&app, Duration::from_secs(30)).await);
    assert_eq!(post_id(&app, "spool-before").await.status, 200);

    proxy.cut();
    let ids: Vec<String> = (0..30).map(|i| format!("spool-{i}")).collect();
    let mut slowest = Duration::ZERO;
    for id in &ids {
        let started = Instant::now();
        let r = post_id(&app, id).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(r.status, 200, "spooled: {:?}", r.json());
    }
    assert!(
        slowest < Duration::from_millis(1500),
        "answered within the deadline ({slowest:?})"
    );
    // Ready: the spool takes what the broker cannot.
    let ready = get(&app.url("/readyz")).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["sinks"]["rabbit"]["ready"], false);
    // A provider retry of a spooled event is a duplicate, not a second copy.
    assert_eq!(post_id(&app, "spool-3").await.status, 200);

    proxy.restore();
    let got = tap.take_ids(31, Duration::from_secs(60)).await;
    for id in ids
        .iter()
        .chain(std::iter::once(&"spool-before".to_owned()))
    {
        assert_eq!(
            got.iter().filter(|g| *g == id).count(),
            1,
            "{id} on the broker exactly once"
        );
    }
    // The spool drained to empty.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = String::from_utf8(get(&app.url("/metrics")).await.body.to_vec()).unwrap();
        if metric(&text, "hookbridge_spool_depth{sink=\"rabbit\"}") == 0.0
            && text.contains("hookbridge_spool_drained_total")
        {
            assert!(metric(&text, "hookbridge_spooled_total{sink=\"rabbit\"}") >= 30.0);
            break;
        }
        assert!(Instant::now() < deadline, "spool did not drain: {text}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    app.stop().await;
    tap.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_mode_spool_and_a_full_spool() {
    let dir = tempfile::tempdir().unwrap();
    let tap = RabbitTap::new().await;
    let app = TestApp::spawn(&config(
        &amqp_url(),
        &tap.exchange,
        &spool_in(dir.path(), 1 << 30),
        "ack = \"spool\"",
        "",
    ))
    .await;
    for i in 0..10 {
        assert_eq!(post_id(&app, &format!("ackspool-{i}")).await.status, 200);
    }
    let got = tap.take_ids(10, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 10, "published from the spool: {got:?}");
    app.stop().await;

    // A 4 KB spool holds two ~1.5 KB events; the broker is away, so the third is refused.
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(amqp_addr()).await;
    proxy.cut();
    let url = amqp_url().replace(&amqp_addr().to_string(), &proxy.addr.to_string());
    let app = TestApp::spawn(&config(
        &url,
        &tap.exchange,
        &spool_in(dir.path(), 4000),
        "",
        "",
    ))
    .await;
    assert_eq!(post_id(&app, "full-1").await.status, 200);
    assert_eq!(post_id(&app, "full-2").await.status, 200);
    let r = post_id(&app, "full-3").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (503, Some("spool_full"))
    );
    assert!(r.headers.contains_key("retry-after"));
    proxy.restore();
    // Both arrive once; their order is not promised (the drain and the retried live publish
    // race, and consumers key on the event ID, not on arrival order).
    let mut got = tap.take_ids(2, Duration::from_secs(30)).await;
    got.sort();
    assert_eq!(got, ["full-1", "full-2"]);
    app.stop().await;
    tap.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_publish_once() {
    let tap = RabbitTap::new().await;
    let prefix = format!("hbt:{}:", uuid::Uuid::new_v4().simple());
    let dedup = format!(
        "[dedup]\nbackend = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"{prefix}\"\n",
        redis_url()
    );
    let cfg = |dir: &std::path::Path| {
        config(
            &amqp_url(),
            &tap.exchange,
            &format!("{}{dedup}", spool_in(dir, 1 << 30)),
            "",
            "",
        )
    };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestApp::spawn(&cfg(d1.path())).await;
    let b = TestApp::spawn(&cfg(d2.path())).await;
    assert!(
        wait_ready(&a, Duration::from_secs(30)).await
            && wait_ready(&b, Duration::from_secs(30)).await
    );
    // Give both a moment to connect to Redis (they start without it if it is slow).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (body, headers) = signed_cobo("shared-1");
    for i in 0..5 {
        let app = if i % 2 == 0 { &a } else { &b };
        let r = post(&app.url("/hooks/cobo"), &headers, body.clone()).await;
        assert_eq!(r.status, 200, "copy {i}");
    }
    let got = tap.take_ids(1, Duration::from_secs(15)).await;
    assert_eq!(
        got,
        ["shared-1"],
        "exactly one message for five copies across two instances"
    );
    a.stop().await;
    b.stop().await;
    tap.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_limit_answers_503_at_once() {
    let tap = RabbitTap::new().await;
    let proxy = Proxy::start(amqp_addr()).await;
    let url = amqp_url().replace(&amqp_addr().to_string(), &proxy.addr.to_string());
    let app = TestApp::spawn(&config(
        &url,
        &tap.exchange,
        "[spool]\nenabled = false",
        "ack_deadline_ms = 10000",
        "max_in_flight = 1",
    ))
    .await;
    assert!(wait_ready(&app, Duration::from_secs(30)).await);
    proxy.hold();
    let url1 = app.url("/hooks/cobo");
    let first = tokio::spawn(async move {
        let (body, headers) = signed_cobo("slow-1");
        post(&url1, &headers, body).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let r = post_id(&app, "slow-2").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (503, Some("overloaded"))
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused without waiting"
    );
    proxy.release();
    assert_eq!(first.await.unwrap().status, 200);
    app.stop().await;
    tap.cleanup().await;
}

const QUEUE: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("spool:rabbit");
const QUARANTINE: TableDefinition<'static, u64, &[u8]> =
    TableDefinition::new("spool-quarantine:rabbit");

/// Opens a spool file the app has let go of (its writer thread may still be closing it).
fn open_spool_file(path: &std::path::Path) -> redb::Database {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match redb::Database::open(path) {
            Ok(db) => return db,
            Err(e) => {
                assert!(Instant::now() < deadline, "spool still held: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Events waiting in a spool file's `rabbit` queue.
fn spooled_in(path: &std::path::Path) -> u64 {
    let db = open_spool_file(path);
    let txn = db.begin_read().unwrap();
    txn.open_table(QUEUE).map(|t| t.len().unwrap()).unwrap_or(0)
}

/// Posts `ids` with a few requests in flight at a time, each answered 200.
async fn post_all(url: &str, ids: &[String]) {
    for chunk in ids.chunks(8) {
        let posts = chunk.iter().map(|id| async move {
            let (body, headers) = signed_cobo(id);
            let r = post(url, &headers, body).await;
            assert_eq!(r.status, 200, "{id}: {:?}", r.json());
        });
        futures_util::future::join_all(posts).await;
    }
}

async fn wait_for(url: &str, ready: impl Fn(&Reply) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = try_get(url).await
            && ready(&r)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_a_drain_republishes_nothing() {
    const EVENTS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let tap = RabbitTap::new().await;
    let proxy = Proxy::start(amqp_addr()).await;
    proxy.cut();
    let amqp = amqp_url().replace(&amqp_addr().to_string(), &proxy.addr.to_string());
    let listen = format!("127.0.0.1:{}", free_port());
    let text = config(&amqp, &tap.exchange, &spool_in(dir.path(), 1 << 30), "", "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{listen}\""),
    );
    let mut hookbridge = Replica::new(dir.path(), "hookbridge", &listen, None, &text);
    let readyz = format!("http://{listen}/readyz");
    let rabbit_ready = |r: &Reply| r.status == 200 && r.json()["sinks"]["rabbit"]["ready"] == true;

    // The broker is away: every event is spooled (and answered 200).
    hookbridge.start().await;
    wait_for(&readyz, |r| r.status == 200).await;
    let ids: Vec<String> = (0..EVENTS)
        .map(|i| format!("kill-after-drain-{i}"))
        .collect();
    post_all(&format!("http://{listen}/hooks/cobo"), &ids).await;

    // The broker is back: the drainer publishes all of them, then nothing happens for longer
    // than the removals take to become durable (`take_ids` also waits for 2 s of quiet).
    proxy.restore();
    let drained = tap.take_ids(EVENTS, Duration::from_secs(60)).await;
    assert_eq!(drained.len(), EVENTS, "drained once each");
    tokio::time::sleep(hookbridge::spool::REMOVALS_DURABLE_WITHIN * 2).await;

    hookbridge.kill9();
    hookbridge.start().await;
    wait_for(&readyz, rabbit_ready).await;
    // Whatever the restarted drainer finds, it publishes now; give it time, then stop it
    // cleanly and count what it published and what it would still publish.
    let republished = tap.take_ids(0, Duration::from_secs(10)).await;
    assert!(hookbridge.terminate().await.success());
    let left = spooled_in(&dir.path().join("spool.redb"));
    println!(
        "SIGKILL {:?} after a drain of {EVENTS}: republished {}, still spooled {left}",
        hookbridge::spool::REMOVALS_DURABLE_WITHIN * 2,
        republished.len()
    );
    assert_eq!(
        (republished.len(), left),
        (0, 0),
        "drained events came back after SIGKILL, e.g. {:?}",
        &republished[..republished.len().min(5)]
    );
    tap.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_spool_records_are_quarantined_and_the_rest_drains() {
    const EVENTS: u64 = 20;
    // More unreadable records in front than a drain batch holds (128), and one between every two
    // good events: skipped in place, they would hide everything behind them.
    const IN_FRONT: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let spool_path = dir.path().join("spool.redb");
    let tap = RabbitTap::new().await;
    let proxy = Proxy::start(amqp_addr()).await;
    proxy.cut();
    let amqp = amqp_url().replace(&amqp_addr().to_string(), &proxy.addr.to_string());
    let cfg = config(&amqp, &tap.exchange, &spool_in(dir.path(), 1 << 30), "", "");
    let app = TestApp::spawn(&cfg).await;
    let ids: Vec<String> = (0..EVENTS).map(|i| format!("quarantine-{i}")).collect();
    post_all(&app.url("/hooks/cobo"), &ids).await;
    app.stop().await;

    // Damage the spool as an upgrade, a rollback or a bad disk would: records of another format
    // in front of and between the good ones.
    let damaged =
        |k: u64| format!("\x63record {k} in a format this version cannot read").into_bytes();
    {
        let db = open_spool_file(&spool_path);
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(QUEUE).unwrap();
            let good: Vec<(u64, Vec<u8>)> = t
                .iter()
                .unwrap()
                .map(|e| {
                    let (k, v) = e.unwrap();
                    (k.value(), v.value().to_vec())
                })
                .collect();
            assert_eq!(good.len() as u64, EVENTS);
            for (k, _) in &good {
                t.remove(k).unwrap();
            }
            for k in 0..IN_FRONT {
                t.insert(k, damaged(k).as_slice()).unwrap();
            }
            for (i, (_, v)) in good.iter().enumerate() {
                let k = IN_FRONT + 2 * i as u64;
                t.insert(k, v.as_slice()).unwrap();
                t.insert(k + 1, damaged(k + 1).as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    proxy.restore();
    let app = TestApp::spawn_with_metrics(&cfg).await;
    let mut got = tap.take_ids(EVENTS as usize, Duration::from_secs(60)).await;
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want, "every readable event published once");
    let text = scrape(&app).await;
    assert_eq!(
        counter(
            &text,
            "hookbridge_spool_quarantined_total",
            &[("sink", "rabbit")]
        ),
        (IN_FRONT + EVENTS) as f64
    );
    app.stop().await;

    // Kept as they were, out of the queue.
    let db = open_spool_file(&spool_path);
    let txn = db.begin_read().unwrap();
    assert_eq!(txn.open_table(QUEUE).unwrap().len().unwrap(), 0);
    let q = txn.open_table(QUARANTINE).unwrap();
    assert_eq!(q.len().unwrap(), IN_FRONT + EVENTS);
    assert_eq!(
        q.get(IN_FRONT + 1).unwrap().unwrap().value(),
        damaged(IN_FRONT + 1)
    );
    drop(txn);
    tap.cleanup().await;
}
