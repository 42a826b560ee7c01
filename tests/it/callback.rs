//! Cobo callbacks end to end: the official WaaS 1.0 withdrawal-confirmation vector decided by
//! CEL rules (ok, deny, tampered); WaaS 2.0 callbacks decided by the example decision service
//! over RabbitMQ and over Kafka (stopped service → no 200, restarted → the retry gets the
//! decision, a second retry is remembered without a new request); two instances sharing Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::decision_service::{self, Broker, Policy};
use crate::helpers::*;
use crate::kafka::wait_ready;

fn v1_withdrawal() -> (String, Vec<(String, String)>) {
    let v = &vectors()["cobo_v1_ecdsa_secp256k1"][0];
    assert_eq!(v["name"], "cobo_v1_withdrawal_confirmation_sandbox");
    let body = v["body"].as_str().unwrap().to_owned();
    let headers = vec![
        h("Biz-Timestamp", v["timestamp"].as_str().unwrap()),
        h(
            "Biz-Resp-Signature",
            v["signature_der_hex"].as_str().unwrap(),
        ),
    ];
    (body, headers)
}

fn v1_notification() -> (String, Vec<(String, String)>) {
    let v = &vectors()["cobo_v1_ecdsa_secp256k1"][1];
    assert_eq!(v["name"], "cobo_v1_transaction_notification_sandbox");
    let headers = vec![
        h("Biz-Timestamp", v["timestamp"].as_str().unwrap()),
        h(
            "Biz-Resp-Signature",
            v["signature_der_hex"].as_str().unwrap(),
        ),
    ];
    (v["body"].as_str().unwrap().to_owned(), headers)
}

fn assert_text(r: &Reply, body: &str) {
    assert_eq!(
        (r.status, std::str::from_utf8(&r.body).unwrap()),
        (200, body),
        "headers {:?}",
        r.headers
    );
    assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");
}

// Several threads: the example service's Kafka consumer blocks a thread when it is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waas1_withdrawal_vector_is_approved_or_denied_by_rules_and_tampering_never_gets_ok() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let app = TestApp::spawn(&format!(
        r#"
[sinks.f]
type = "file"
path = "{events}"

[sources.allow]
kind = "callback"
purpose = "approval"
verify = {{ scheme = "cobo-waas1", public_keys = ["sandbox-legacy"] }}
[sources.allow.decision]
default = "deny"
rules = [
  {{ name = "too-big", when = "int(body.amount) > 1000000", decision = "deny" }},
  {{ name = "known-goerli-address", when = "body.coin == 'GETH' && body.address in ['0x9414933Ff7777bb28cA22D15c178596A6e58d957'] && body.request_id.startsWith('request_id_')", decision = "ok", reason = "allowlisted address" }},
]

[sources.strict]
kind = "callback"
purpose = "approval"
verify = {{ scheme = "cobo-waas1", public_keys = ["sandbox-legacy"] }}
decision = {{ default = "ok", rules = [{{ name = "no-goerli", when = "body.coin == 'GETH'", decision = "deny" }}] }}

[sources.deny-forgeries]
kind = "callback"
purpose = "approval"
verify = {{ scheme = "cobo-waas1", public_keys = ["sandbox-legacy"] }}
decision = {{ default = "deny", on_bad_signature = "deny", rules = [{{ name = "all", when = "true", decision = "ok" }}] }}

[sources.pushes]
kind = "callback"
purpose = "notification"
verify = {{ scheme = "cobo-waas1", public_keys = ["sandbox-legacy"] }}

[sources.v2]
kind = "callback"
purpose = "approval"
verify = {{ scheme = "cobo-waas2", public_keys = ["{key}"] }}
callback_id = ["/transaction_id", "/request_id", "/cobo_id"]
decision = {{ default = "deny" }}
"#,
        events = events.display(),
        key = cobo_test_pubkey(),
    ))
    .await;
    let (body, headers) = v1_withdrawal();

    let allowed = post(&app.url("/hooks/allow"), &headers, body.clone()).await;
    assert_text(&allowed, "ok");
    let denied = post(&app.url("/hooks/strict"), &headers, body.clone()).await;
    assert_text(&denied, "deny");

    // Every decision has its audit event, keyed by the callback ID (request_id), with the
    // signed callback inside for re-verification.
    let written = file_events(&events);
    assert_eq!(written.len(), 2, "{written:?}");
    let ok_event = written.iter().find(|e| e["hbsource"] == "allow").unwrap();
    assert_eq!(ok_event["id"], "request_id_dbe9541f_1673345211103_1107");
    assert_eq!(ok_event["type"], "hookbridge.callback.decision");
    assert_eq!(ok_event["data"]["decision"], "ok");
    assert_eq!(ok_event["data"]["decided_by"], "rule:known-goerli-address");
    assert_eq!(ok_event["data"]["reason"], "allowlisted address");
    let signed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ok_event["data"]["callback"]["data"], signed);
    assert_eq!(
        ok_event["data"]["callback"]["hbsignature"],
        headers[1].1.as_str()
    );
    let deny_event = written.iter().find(|e| e["hbsource"] == "strict").unwrap();
    assert_eq!(deny_event["data"]["decision"], "deny");
    assert_eq!(deny_event["data"]["decided_by"], "rule:no-goerli");

    // Cobo's retry gets the same answer, from memory: no second decision event.
    let retry = post(&app.url("/hooks/allow"), &headers, body.clone()).await;
    assert_text(&retry, "ok");
    assert_eq!(file_events(&events).len(), 2);

    // Tampered: one byte of the amount. 401 by default, `deny` where configured; never `ok`.
    let tampered = body.replace("\"amount\": \"12345\"", "\"amount\": \"92345\"");
    assert_ne!(tampered, body);
    for source in ["allow", "strict"] {
        let r = post(
            &app.url(&format!("/hooks/{source}")),
            &headers,
            tampered.clone(),
        )
        .await;
        assert_eq!(r.status, 401, "{source}");
        assert_ne!(&r.body[..], b"ok");
    }
    let r = post(
        &app.url("/hooks/deny-forgeries"),
        &headers,
        tampered.clone(),
    )
    .await;
    assert_text(&r, "deny");
    // The same source still approves the genuine request (its rule says so).
    let r = post(&app.url("/hooks/deny-forgeries"), &headers, body.clone()).await;
    assert_text(&r, "ok");

    // Unusable callbacks (validly signed): no callback ID, or not JSON. 400, never a decision.
    let no_id = r#"{"request_id":"","cobo_id":"","coin":"GETH","amount":"1"}"#;
    let r = post(
        &app.url("/hooks/v2"),
        &sign_cobo_waas2(&cobo_test_seed(), no_id.as_bytes(), &now_ms().to_string()),
        no_id,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("no_callback_id"))
    );
    let r = post(
        &app.url("/hooks/v2"),
        &sign_cobo_waas2(
            &cobo_test_seed(),
            b"transaction_id=1",
            &now_ms().to_string(),
        ),
        "transaction_id=1",
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("callback_not_json"))
    );

    // A WaaS 1.0 transaction notification: `ok` once durable (an acknowledgement).
    let (push, push_headers) = v1_notification();
    let r = post(&app.url("/hooks/pushes"), &push_headers, push).await;
    assert_text(&r, "ok");
    let written = file_events(&events);
    let pushed = written.iter().find(|e| e["hbsource"] == "pushes").unwrap();
    assert_eq!(pushed["id"], "20230110151203000381527000003478:success:3");
    app.stop().await;
}

/// The example decision service as a task that restarts after a broker error.
struct Service {
    task: tokio::task::JoinHandle<()>,
    served: Arc<AtomicUsize>,
}

impl Service {
    fn start(broker: Broker, policy: Policy, served: Arc<AtomicUsize>) -> Self {
        let counter = Arc::clone(&served);
        let task = tokio::spawn(async move {
            loop {
                let result =
                    decision_service::run(broker.clone(), policy.clone(), Arc::clone(&counter))
                        .await;
                eprintln!("decision service stopped: {result:?}; restarting");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        Self { task, served }
    }

    /// Stops it as a crash would: its connection goes away, unacknowledged requests return.
    async fn stop(self) -> Arc<AtomicUsize> {
        self.task.abort();
        let _ = self.task.await;
        self.served
    }
}

fn waas2_callback(transaction_id: &str) -> (String, Vec<(String, String)>) {
    let v = &vectors()["cobo_v2_ed25519"][1];
    assert_eq!(v["name"], "cobo_v2_callback_synthetic");
    let original = v["body"].as_str().unwrap();
    let body = original.replace("aff0e1cb-15b2-4e1f-9b9d-a9133715986f", transaction_id);
    if body == original {
        // The synthetic vector itself, with its own signature.
        let headers = vec![
            h("Biz-Timestamp", v["timestamp"].as_str().unwrap()),
            h("Biz-Resp-Signature", v["signature_hex"].as_str().unwrap()),
        ];
        return (body, headers);
    }
    let headers = sign_cobo_waas2(&cobo_test_seed(), body.as_bytes(), &now_ms().to_string());
    (body, headers)
}

const VECTOR_TX: &str = "aff0e1cb-15b2-4e1f-9b9d-a9133715986f";

fn callback_source(sink: &str, service_sink: &str, names: &str) -> String {
    format!(
        r#"
[sources.withdrawals]
kind = "callback"
purpose = "approval"
sink = "{sink}"
verify = {{ scheme = "cobo-waas2", public_keys = ["{key}"] }}
[sources.withdrawals.decision]
default = "ask"
timeout_ms = 1500
service = {{ sink = "{service_sink}", {names} }}
rules = [{{ name = "never-this-wallet", when = "body.wallet_id == 'blocked-wallet'", decision = "deny" }}]
"#,
        key = cobo_test_pubkey()
    )
}

/// Posts `callback` until it is answered 200 (as Cobo's retries would), up to `within`.
async fn retry_until_decided(
    app: &TestApp,
    body: &str,
    headers: &[(String, String)],
    within: Duration,
) -> Reply {
    let deadline = Instant::now() + within;
    loop {
        let r = post(&app.url("/hooks/withdrawals"), headers, body.to_owned()).await;
        if r.status == 200 || Instant::now() > deadline {
            return r;
        }
        assert_eq!(r.status, 503, "no decision yet is a 503: {:?}", r.body);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The acceptance scenario, on whichever broker `broker` names.
async fn request_reply_scenario(app: &TestApp, broker: Broker) {
    assert!(wait_ready(app, Duration::from_secs(60)).await, "not ready");
    let denied_tx = uuid::Uuid::new_v4().to_string();
    let policy = Policy {
        deny_ids: vec![denied_tx.clone()],
        max_amount: None,
    };
    let service = Service::start(broker.clone(), policy.clone(), Arc::default());

    // ok for one transaction, deny for another: exactly those bodies.
    let (body, headers) = waas2_callback(VECTOR_TX);
    let r = retry_until_decided(app, &body, &headers, Duration::from_secs(30)).await;
    assert_text(&r, "ok");
    let (body, headers) = waas2_callback(&denied_tx);
    let r = retry_until_decided(app, &body, &headers, Duration::from_secs(10)).await;
    assert_text(&r, "deny");

    // A rule decides before the service is asked.
    let (body, _) = waas2_callback(&uuid::Uuid::new_v4().to_string());
    let blocked = body.replace("f47ac10b-58cc-4372-a567-0e02b2c3d479", "blocked-wallet");
    let blocked_headers =
        sign_cobo_waas2(&cobo_test_seed(), blocked.as_bytes(), &now_ms().to_string());
    let asked_before = service.served.load(Ordering::SeqCst);
    let r = post(&app.url("/hooks/withdrawals"), &blocked_headers, blocked).await;
    assert_text(&r, "deny");

    // Service stopped: no decision, a non-200 within the deadline (1.5 s).
    let served = service.stop().await;
    assert_eq!(
        served.load(Ordering::SeqCst),
        asked_before,
        "the rule asked nobody"
    );
    let pending_tx = uuid::Uuid::new_v4().to_string();
    let (body, headers) = waas2_callback(&pending_tx);
    let started = Instant::now();
    let r = post(&app.url("/hooks/withdrawals"), &headers, body.clone()).await;
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_ne!(&r.body[..], b"ok");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );

    // Started again: Cobo's retry of the same callback gets the decision.
    let service = Service::start(broker, policy, Arc::clone(&served));
    let r = retry_until_decided(app, &body, &headers, Duration::from_secs(60)).await;
    assert_text(&r, "ok");
    // A second retry is answered from memory: no new request reaches the service.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let asked = service.served.load(Ordering::SeqCst);
    let r = post(&app.url("/hooks/withdrawals"), &headers, body.clone()).await;
    assert_text(&r, "ok");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        service.served.load(Ordering::SeqCst),
        asked,
        "a remembered decision asks nobody"
    );
    service.stop().await;
}

// Several threads: the example service's Kafka consumer blocks a thread when it is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waas2_callbacks_decided_by_the_example_service_over_rabbitmq() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let (requests, replies) = (format!("decisions-{unique}"), format!("replies-{unique}"));
    let app = TestApp::spawn(&rabbit_config(&events, &unique, &requests, &replies, "")).await;
    let broker = Broker::RabbitMq {
        url: crate::rabbitmq::amqp_url(),
        requests,
    };
    request_reply_scenario(&app, broker).await;
    // One audit event per decision: ok, deny, the rule's deny, and the late ok.
    let decisions: Vec<(String, String)> = file_events(&events)
        .iter()
        .map(|e| {
            (
                e["data"]["decision"].as_str().unwrap().to_owned(),
                e["data"]["decided_by"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(decisions.len(), 4, "{decisions:?}");
    assert_eq!(
        decisions
            .iter()
            .filter(|(_, by)| by == "service:rabbit/example-policy")
            .count(),
        3,
        "{decisions:?}"
    );
    app.stop().await;
}

// Several threads: the example service's Kafka consumer blocks a thread when it is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waas2_callbacks_decided_by_the_example_service_over_kafka() {
    let brokers =
        std::env::var("HOOKBRIDGE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let (requests, replies) = (format!("decisions-{unique}"), format!("replies-{unique}"));
    let app = TestApp::spawn(&format!(
        r#"
[spool]
enabled = false

[sinks.kafka]
type = "kafka"
brokers = "{brokers}"
topic = "audit-{unique}"
create_topics = true
partitions = 2
{source}"#,
        source = callback_source(
            "kafka",
            "kafka",
            &format!("requests = \"{requests}\", replies = \"{replies}\"")
        ),
    ))
    .await;
    let broker = Broker::Kafka {
        brokers: brokers.clone(),
        requests,
        group: format!("decision-service-{unique}"),
    };
    request_reply_scenario(&app, broker).await;
    // The decisions' audit trail on the sink's topic, keyed by transaction ID.
    let records = crate::kafka::consume(
        &brokers,
        &format!("audit-{unique}"),
        4,
        Duration::from_secs(20),
    );
    assert_eq!(records.len(), 4, "one event per decision");
    assert!(
        records
            .iter()
            .any(|r| r.key == VECTOR_TX && r.body["data"]["decision"] == "ok")
    );
    app.stop().await;
}

// Several threads: the example service's Kafka consumer blocks a thread when it is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_another_instance_gets_the_same_decision_through_redis() {
    let dir = tempfile::tempdir().unwrap();
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let (requests, replies) = (format!("decisions-{unique}"), format!("replies-{unique}"));
    let config = |n: u8| {
        let store = format!(
            "[decisions]\nstore = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"hb-test-{unique}:\"\n",
            std::env::var("HOOKBRIDGE_TEST_REDIS")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
        );
        let events = dir.path().join(format!("events-{n}.jsonl"));
        rabbit_config(&events, &unique, &requests, &replies, &store)
    };
    let a = TestApp::spawn(&config(1)).await;
    let b = TestApp::spawn(&config(2)).await;
    assert!(wait_ready(&a, Duration::from_secs(30)).await);
    assert!(wait_ready(&b, Duration::from_secs(30)).await);
    let denied_tx = uuid::Uuid::new_v4().to_string();
    let service = Service::start(
        Broker::RabbitMq {
            url: crate::rabbitmq::amqp_url(),
            requests: requests.clone(),
        },
        Policy {
            deny_ids: vec![denied_tx.clone()],
            max_amount: None,
        },
        Arc::default(),
    );
    let (ok_body, ok_headers) = waas2_callback(&uuid::Uuid::new_v4().to_string());
    let (deny_body, deny_headers) = waas2_callback(&denied_tx);
    assert_text(
        &retry_until_decided(&a, &ok_body, &ok_headers, Duration::from_secs(10)).await,
        "ok",
    );
    assert_text(
        &retry_until_decided(&a, &deny_body, &deny_headers, Duration::from_secs(10)).await,
        "deny",
    );
    service.stop().await;

    // With the service gone, instance B can only know these answers from the shared store.
    assert_text(
        &post(&b.url("/hooks/withdrawals"), &ok_headers, ok_body).await,
        "ok",
    );
    assert_text(
        &post(&b.url("/hooks/withdrawals"), &deny_headers, deny_body).await,
        "deny",
    );
    // A reply for a callback nobody asked about (stray, or forged by whoever can publish to the
    // reply exchange) decides nothing.
    let forged_tx = uuid::Uuid::new_v4().to_string();
    publish_reply(&replies, &format!("withdrawals:{forged_tx}"), "ok").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (forged_body, forged_headers) = waas2_callback(&forged_tx);
    let r = post(&b.url("/hooks/withdrawals"), &forged_headers, forged_body).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    // No request reached the broker for the decided ones (the forged one asked once)…
    assert_eq!(waiting_requests(&requests).await, 1);
    // …while a callback nobody decided yet is asked about, and gets no answer from B.
    let (new_body, new_headers) = waas2_callback(&uuid::Uuid::new_v4().to_string());
    let r = post(&b.url("/hooks/withdrawals"), &new_headers, new_body).await;
    assert_eq!(r.status, 503);
    assert_eq!(waiting_requests(&requests).await, 2);
    a.stop().await;
    b.stop().await;
}

/// Decision requests waiting in a RabbitMQ queue (nobody consuming).
async fn waiting_requests(queue: &str) -> u32 {
    let (conn, channel) = amqp_channel().await;
    let q = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "bye".into()).await;
    q.message_count()
}

/// Publishes a decision reply to a RabbitMQ reply (fanout) exchange, as a decision service would.
async fn publish_reply(exchange: &str, id: &str, decision: &str) {
    let (conn, channel) = amqp_channel().await;
    let body =
        serde_json::json!({ "id": id, "decision": decision, "reason": "forged" }).to_string();
    channel
        .basic_publish(
            exchange.into(),
            "".into(),
            lapin::options::BasicPublishOptions::default(),
            body.as_bytes(),
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = conn.close(200, "bye".into()).await;
}

/// An app with the audit trail in a file and the decision service on RabbitMQ.
fn rabbit_config(
    events: &std::path::Path,
    unique: &str,
    requests: &str,
    replies: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[spool]
enabled = false
{extra}
[sinks.audit]
type = "file"
path = "{events}"

[sinks.rabbit]
type = "rabbitmq"
url = "{amqp}"
exchange = "hb-{unique}"
{source}"#,
        events = events.display(),
        amqp = crate::rabbitmq::amqp_url(),
        source = callback_source(
            "audit",
            "rabbit",
            &format!("requests = \"{requests}\", replies = \"{replies}\"")
        ),
    )
}

async fn amqp_channel() -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(
        &crate::rabbitmq::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = conn.create_channel().await.unwrap();
    (conn, channel)
}
