//! Reload without restart (SIGHUP) on a real process publishing to RabbitMQ: a secret rotated
//! under load without one failed request, then the old secret refused; an invalid file and a
//! sink change refused with the running configuration still serving; the sink's connection
//! kept throughout.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::helpers::*;
use crate::kafka::free_port;
use crate::process::Replica;
use crate::rabbitmq::amqp_url;
use crate::tap::RabbitTap;

fn config(listen: &str, admin: &str, exchange: &str, secrets: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\n[spool]\nenabled = false\n[sinks.rabbit]\ntype = \"rabbitmq\"\nurl = \"{}\"\nexchange = \"{exchange}\"\n[sources.t]\nevent_id = [\"/id\"]\nverify = {{ scheme = \"shared-secret\", header = \"x-token\", secrets = [{secrets}] }}\n{extra}",
        amqp_url()
    )
}

/// Waits until the process has counted `n` reloads with `result`.
async fn reloads(replica: &Replica, result: &str, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = replica.metrics().await;
        let got = counter(
            &text,
            "hookbridge_config_reloads_total",
            &[("result", result)],
        );
        if got >= n {
            assert!(
                (got - n).abs() < f64::EPSILON,
                "{got} reloads {result}, expected {n}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no reload {result} counted ({got}): {}",
            replica.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post_token(url: &str, token: &str, id: &str) -> u16 {
    answer(url, token, id).await.0
}

/// The status and, for a refusal, its reason.
async fn answer(url: &str, token: &str, id: &str) -> (u16, String) {
    let body = Bytes::from(format!("{{\"id\":\"{id}\"}}"));
    match try_post(url, &[h("x-token", token)], body).await {
        Some(r) if r.status == 200 => (200, String::new()),
        Some(r) => (r.status, r.json()["error"].to_string()),
        None => (0, "no answer".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_a_secret_under_load_and_refuses_bad_files_keeping_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let tap = RabbitTap::new().await;
    let (listen, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let write = |secrets: &str, extra: &str| config(&listen, &admin, &tap.exchange, secrets, extra);
    let mut replica = Replica::new(
        dir.path(),
        "hb",
        &listen,
        Some(&admin),
        &write("\"old\"", ""),
    );
    replica.start().await;
    replica.wait_ready().await;
    let url = replica.url("/hooks/t");

    // Load: 8 senders, each posting new events with whichever token is current, until told
    // to stop. Every answer is counted; anything but 200 is a failed request.
    let use_new = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for s in 0..8 {
        let (url, use_new, stop, sent) = (
            url.clone(),
            Arc::clone(&use_new),
            Arc::clone(&stop),
            Arc::clone(&sent),
        );
        senders.push(tokio::spawn(async move {
            let mut statuses: HashMap<(u16, String), usize> = HashMap::new();
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let token = if use_new.load(Ordering::Relaxed) {
                    "new"
                } else {
                    "old"
                };
                let id = format!("reload-{s}-{n}");
                n += 1;
                let (status, reason) = answer(&url, token, &id).await;
                sent.fetch_add(1, Ordering::Relaxed);
                *statuses.entry((status, reason)).or_default() += 1;
                if status == 200 {
                    acked.push(id);
                }
            }
            (statuses, acked)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Step 1: both secrets; then the senders move to the new one.
    std::fs::write(&replica.config, write("\"new\", \"old\"", "")).unwrap();
    replica.signal("HUP");
    reloads(&replica, "ok", 1.0).await;
    use_new.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Step 2: the old secret is retired.
    std::fs::write(&replica.config, write("\"new\"", "")).unwrap();
    replica.signal("HUP");
    reloads(&replica, "ok", 2.0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut statuses: HashMap<(u16, String), usize> = HashMap::new();
    let mut acked = Vec::new();
    for s in senders {
        let (st, ids) = s.await.unwrap();
        for (k, v) in st {
            *statuses.entry(k).or_default() += v;
        }
        acked.extend(ids);
    }
    println!(
        "reload: {} requests during two secret rotations, answers {statuses:?}",
        sent.load(Ordering::Relaxed)
    );
    assert!(
        statuses.keys().all(|(status, _)| *status == 200),
        "every request under the rotation succeeded: {statuses:?}; warnings: {}",
        replica
            .log_text()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(acked.len() > 50, "the load ran: {}", acked.len());

    assert_eq!(
        post_token(&url, "old", "after-old").await,
        401,
        "old secret"
    );
    assert_eq!(
        post_token(&url, "new", "after-new").await,
        200,
        "new secret"
    );

    // An invalid file: every error is logged, nothing changes.
    let broken = write(
        "\"newer\"",
        "[sources.u]\nsink = \"nowhere\"\nverify = { scheme = \"shared-secret\", header = \"x-token\", secrets = [\"u\"] }\n[sources.v]\nverify = { scheme = \"no-such-scheme\" }\n",
    );
    std::fs::write(&replica.config, broken).unwrap();
    replica.signal("HUP");
    reloads(&replica, "refused", 1.0).await;
    assert_eq!(post_token(&url, "new", "still-new").await, 200);
    assert_eq!(post_token(&url, "newer", "not-yet").await, 401);
    let log = replica.log_text();
    assert!(log.contains("sources.u.sink"), "{log}");
    assert!(log.contains("no-such-scheme"), "{log}");
    assert!(!log.contains("newer"), "a secret reached the log: {log}");

    // A sink change needs a restart: refused, named, and the old configuration serves.
    let other_exchange = config(&listen, &admin, "hb.elsewhere", "\"newer\"", "");
    std::fs::write(&replica.config, other_exchange).unwrap();
    replica.signal("HUP");
    reloads(&replica, "refused", 2.0).await;
    assert!(replica.log_text().contains("sinks.rabbit: changed"));
    assert_eq!(post_token(&url, "newer", "not-yet-2").await, 401);

    // The broker connection was never replaced.
    let text = replica.metrics().await;
    assert_eq!(
        counter(
            &text,
            "hookbridge_sink_connects_total",
            &[("sink", "rabbit")]
        ),
        1.0,
        "the sink kept its connection through every reload"
    );
    acked.push("after-new".into());
    acked.push("still-new".into());
    let on_broker = tap.take_ids(acked.len(), Duration::from_secs(30)).await;
    let on_broker: std::collections::HashSet<String> = on_broker.into_iter().collect();
    let missing: Vec<_> = acked.iter().filter(|id| !on_broker.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged but not published, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(replica.terminate().await.success());
    tap.cleanup().await;
}
