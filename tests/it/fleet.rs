//! Three replicas behind a real load balancer (Debian's HAProxy, installed by `scripts/test.sh`,
//! started here on free ports), sharing Redis for dedup, each with its own spool, publishing to
//! RabbitMQ. A provider's load goes to the balancer: it retries every event until it gets a 2xx
//! and re-sends every acknowledged event once (a provider retry, which round-robin sends to
//! another replica). Three phases, each followed by a count on the broker:
//!
//! 1. steady: every event published exactly once, retries answered 200 and deduplicated;
//! 2. `kill -9` of one replica under load: the balancer routes around it, every acknowledged
//!    event reaches the broker, and the restarted replica drains what its spool held;
//! 3. a rolling restart (SIGTERM, start, wait until the balancer sees it up, next): no answer
//!    but 200 and retriable 503s, nothing lost.
//!
//! The sources use `ack = "spool"`: a 2xx means "fsync'd in this replica's spool", so a killed
//! replica's spool holds the only copy of events it acknowledged and had not yet published.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::helpers::*;
use crate::kafka::{free_port, signed_cobo};
use crate::process::Replica;
use crate::rabbitmq::amqp_url;
use crate::tap::RabbitTap;

const REPLICAS: usize = 3;
const RATE: u64 = 60; // new events per second
const GIVE_UP: Duration = Duration::from_secs(60);

/// An HAProxy process in front of the replicas, stopped on drop.
struct Balancer {
    _child: Child,
    addr: String,
}

impl Balancer {
    fn start(dir: &Path, replicas: &[Replica]) -> Self {
        let port = free_port();
        // Health: `/readyz` on each replica's admin listener, every 200 ms; down after one
        // failure, up after two successes. Retries: a connection refused or closed without an
        // answer is sent again, to another replica (`redispatch`); the body is buffered so it
        // can be. A retried request that had reached a replica is a duplicate, which the shared
        // dedup store answers.
        let mut cfg = format!(
            "global\n  maxconn 2000\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 15s\n  retries 3\n  option redispatch 1\n  retry-on conn-failure empty-response\n  option http-buffer-request\nfrontend hooks\n  bind 127.0.0.1:{port}\n  default_backend replicas\nbackend replicas\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n  default-server inter 200ms fall 1 rise 2\n"
        );
        for r in replicas {
            let admin_port = r.admin.as_ref().unwrap().rsplit(':').next().unwrap();
            cfg.push_str(&format!(
                "  server {} {} check port {admin_port}\n",
                r.name, r.listen
            ));
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let child = std::process::Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db") // foreground, no daemon
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("haproxy (scripts/test.sh installs Debian's package)");
        Self {
            _child: Child(child),
            addr: format!("127.0.0.1:{port}"),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/cobo", self.addr)
    }
}

fn replica_config(
    r: usize,
    listen: &str,
    admin: &str,
    dir: &Path,
    exchange: &str,
    redis: &str,
) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\nshutdown_timeout_ms = 5000\n[spool]\npath = \"{}\"\n[dedup]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379/0\"\nkey_prefix = \"{redis}\"\n[sinks.rabbit]\ntype = \"rabbitmq\"\nurl = \"{}\"\nexchange = \"{exchange}\"\n[sources.cobo]\nack = \"spool\"\nverify = {{ scheme = \"cobo-waas2\", public_keys = [\"{}\"] }}\n",
        dir.join(format!("spool-{r}.redb")).display(),
        amqp_url(),
        cobo_test_pubkey()
    )
}

/// What a phase's load saw.
#[derive(Default)]
struct Seen {
    sent: usize,
    acked: HashSet<String>,
    /// Every answer, by status (0: no answer at all), first tries and retries alike.
    statuses: HashMap<u16, usize>,
    resent: usize,
    resent_ok: usize,
}

/// `RATE` new events a second through the balancer until `stop`, each retried until it gets a
/// 2xx (as a provider does), and each acknowledged one re-sent once and retried likewise.
async fn provider_load(url: String, prefix: String, stop: Arc<tokio::sync::Notify>) -> Seen {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let slots = Arc::new(Semaphore::new(64));
    let give_up = Instant::now() + GIVE_UP;
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
    let mut tasks = Vec::new();
    let stopped = stop.notified();
    tokio::pin!(stopped);
    for n in 0.. {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stopped => break,
        }
        let id = format!("{prefix}-{n}");
        let (url, seen, slots) = (url.clone(), Arc::clone(&seen), Arc::clone(&slots));
        seen.lock().unwrap().sent += 1;
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await;
            let (body, headers) = signed_cobo(&id);
            let body = Bytes::from(body);
            let until_2xx = || async {
                while Instant::now() < give_up {
                    let status = try_post(&url, &headers, body.clone())
                        .await
                        .map_or(0, |r| r.status);
                    *seen.lock().unwrap().statuses.entry(status).or_default() += 1;
                    if (200..300).contains(&status) {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                false
            };
            if until_2xx().await {
                seen.lock().unwrap().acked.insert(id.clone());
                seen.lock().unwrap().resent += 1;
                if until_2xx().await {
                    seen.lock().unwrap().resent_ok += 1;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap()
}

/// Prints the phase's figures and checks that nothing acknowledged is missing; the number of
/// duplicate messages.
fn report(phase: &str, seen: &Seen, on_broker: &[String]) -> usize {
    let distinct: HashSet<&String> = on_broker.iter().collect();
    let missing: Vec<&String> = seen
        .acked
        .iter()
        .filter(|id| !distinct.contains(id))
        .collect();
    let duplicates = on_broker.len() - distinct.len();
    let mut statuses: Vec<_> = seen.statuses.iter().collect();
    statuses.sort();
    println!(
        "fleet {phase}: sent {} / acknowledged {} / on broker {} ({} messages) / duplicates {duplicates} / missing {} / provider retries answered 2xx {} of {} / answers by status {statuses:?}",
        seen.sent,
        seen.acked.len(),
        distinct.len(),
        on_broker.len(),
        missing.len(),
        seen.resent_ok,
        seen.resent,
    );
    assert!(
        missing.is_empty(),
        "{phase}: acknowledged but not on the broker: {missing:?}"
    );
    assert_eq!(
        seen.acked.len(),
        seen.sent,
        "{phase}: every event was acknowledged in the end"
    );
    assert_eq!(
        seen.resent_ok, seen.resent,
        "{phase}: every provider retry got a 2xx"
    );
    assert!(
        distinct.iter().all(|id| seen.acked.contains(*id)),
        "{phase}: nothing on the broker that was not sent"
    );
    duplicates
}

/// Runs `fault` while the load runs (after 2 s), then stops the load 2 s later and counts.
async fn phase<F: std::future::Future<Output = ()>>(
    name: &str,
    balancer: &Balancer,
    tap: &RabbitTap,
    fault: F,
) -> (Seen, Vec<String>) {
    let stop = Arc::new(tokio::sync::Notify::new());
    let prefix = format!(
        "fleet-{}-{}",
        name.split(' ').next().unwrap(),
        uuid::Uuid::new_v4().simple()
    );
    let load = tokio::spawn(provider_load(balancer.url(), prefix, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    fault.await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.notify_one();
    let seen = load.await.unwrap();
    let on_broker = tap
        .take_ids(seen.acked.len(), Duration::from_secs(60))
        .await;
    (seen, on_broker)
}

/// Events queued in a (stopped) replica's spool, by `hookbridge spool list`.
fn spooled(spool: &Path) -> usize {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookbridge"))
        .args(["spool", "list", "--spool"])
        .arg(spool)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("rabbit\t"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_haproxy_lose_nothing_to_retries_kills_or_rolling_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let tap = RabbitTap::new().await;
    let redis = format!("hbf:{}:", uuid::Uuid::new_v4().simple());
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|r| {
            let (listen, admin) = (
                format!("127.0.0.1:{}", free_port()),
                format!("127.0.0.1:{}", free_port()),
            );
            let config = replica_config(r, &listen, &admin, dir.path(), &tap.exchange, &redis);
            Replica::new(dir.path(), &format!("r{r}"), &listen, Some(&admin), &config)
        })
        .collect();
    for r in &mut replicas {
        r.start().await;
        r.wait_ready().await;
    }
    let balancer = Balancer::start(dir.path(), &replicas);
    // Until the balancer has seen every replica up (two checks), requests may all go to one.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. Steady: retries spread over replicas are each published once.
    let (seen, on_broker) = phase("steady", &balancer, &tap, async {}).await;
    let duplicates = report(
        "1 (steady, retries spread over 3 replicas)",
        &seen,
        &on_broker,
    );
    assert_eq!(
        duplicates, 0,
        "with no fault, every event is published exactly once"
    );
    assert_eq!(seen.statuses.keys().copied().collect::<Vec<_>>(), [200]);

    // 2. kill -9 of one replica under load; restarted 1 s later on the same spool.
    let victim = 1;
    let mut held = 0;
    let (seen, on_broker) = phase("kill", &balancer, &tap, async {
        replicas[victim].kill9();
        held = spooled(&dir.path().join(format!("spool-{victim}.redb")));
        tokio::time::sleep(Duration::from_secs(1)).await;
        replicas[victim].start().await;
    })
    .await;
    println!("fleet 2: the killed replica's spool held {held} event(s) at restart");
    report("2 (kill -9 of one replica, restarted)", &seen, &on_broker);
    replicas[victim].wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = replicas[victim].metrics().await;
        let depth = gauge(&text, "hookbridge_spool_depth", "rabbit");
        if depth == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted replica's spool did not drain: {depth:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // 3. Rolling restart: each replica in turn gets SIGTERM, exits cleanly, starts again, and
    //    the next goes once the balancer sees it up.
    let (seen, on_broker) = phase("rolling", &balancer, &tap, async {
        for r in &mut replicas {
            let status = r.terminate().await;
            assert!(
                status.success(),
                "{}: clean exit on SIGTERM: {status:?}",
                r.name
            );
            r.start().await;
            r.wait_ready().await;
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
    })
    .await;
    report(
        "3 (rolling restart, SIGTERM one at a time)",
        &seen,
        &on_broker,
    );
    let failed: Vec<_> = seen
        .statuses
        .iter()
        .filter(|(s, _)| !matches!(**s, 200 | 503))
        .collect();
    assert!(
        failed.is_empty(),
        "only 200 and retriable 503s: {:?}",
        seen.statuses
    );

    for r in &mut replicas {
        assert!(r.terminate().await.success());
    }
    drop(balancer);
    tap.cleanup().await;
}

/// A gauge's value for `sink` in a scrape, if present.
fn gauge(text: &str, name: &str, sink: &str) -> Option<f64> {
    let label = format!("{name}{{sink=\"{sink}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&label))
        .and_then(|v| v.trim().parse().ok())
}
