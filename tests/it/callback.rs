//! Cobo callbacks end to end: the official WaaS 1.0 withdrawal-confirmation vector decided by
//! CEL rules (ok, deny, tampered); WaaS 2.0 callbacks decided by the example decision service
//! over RabbitMQ and over Kafka (stopped service → no 200, restarted → the retry gets the
//! decision, a second retry is remembered without a new request); two instances sharing Redis.
//!
//! And the defences of an `ok` (issue: approvals that cannot be planted or forged): a decision
//! answers only the exact body it judged (memory and Redis), decisions planted in Redis are
//! never answered, forged decision replies decide nothing, rules run under a budget, and a full
//! memory store refuses instead of forgetting.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::Digest as _;

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
# The official vectors were signed in 2023: no replay window for them.
replay_window_secs = 0
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
# The official vectors were signed in 2023: no replay window for them.
replay_window_secs = 0
kind = "callback"
purpose = "approval"
verify = {{ scheme = "cobo-waas1", public_keys = ["sandbox-legacy"] }}
decision = {{ default = "ok", rules = [{{ name = "no-goerli", when = "body.coin == 'GETH'", decision = "deny" }}] }}

[sources.deny-forgeries]
# The official vectors were signed in 2023: no replay window for them.
replay_window_secs = 0
kind = "callback"
purpose = "approval"
verify = {{ scheme = "cobo-waas1", public_keys = ["sandbox-legacy"] }}
decision = {{ default = "deny", on_bad_signature = "deny", rules = [{{ name = "all", when = "true", decision = "ok" }}] }}

[sources.pushes]
# The official vectors were signed in 2023: no replay window for them.
replay_window_secs = 0
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

    // Every decision has its audit event, keyed by the callback ID (request_id) and the digest
    // of the body it judged, with the signed callback inside for re-verification.
    let written = file_events(&events);
    assert_eq!(written.len(), 2, "{written:?}");
    let ok_event = written.iter().find(|e| e["hbsource"] == "allow").unwrap();
    let digest = sha256_hex(&body);
    assert_eq!(
        ok_event["id"],
        format!("request_id_dbe9541f_1673345211103_1107:{digest}")
    );
    assert_eq!(
        ok_event["data"]["callback_id"],
        "request_id_dbe9541f_1673345211103_1107"
    );
    assert_eq!(ok_event["data"]["body_sha256"], digest.as_str());
    assert_eq!(ok_event["data"]["callback_id_from"], "body:/request_id");
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

/// The synthetic WaaS 2.0 callback vector's body for `transaction_id`, signed now (the
/// vector's own 2023 timestamp is outside the default replay window).
fn waas2_callback(transaction_id: &str) -> (String, Vec<(String, String)>) {
    let v = &vectors()["cobo_v2_ed25519"][1];
    assert_eq!(v["name"], "cobo_v2_callback_synthetic");
    let original = v["body"].as_str().unwrap();
    let body = original.replace("aff0e1cb-15b2-4e1f-9b9d-a9133715986f", transaction_id);
    let headers = sign_cobo_waas2(&cobo_test_seed(), body.as_bytes(), &now_ms().to_string());
    (body, headers)
}

fn sha256_hex(body: &str) -> String {
    hex::encode(sha2::Sha256::digest(body.as_bytes()))
}

/// The decision service secret the test configs share with the example service.
const SERVICE_SECRET: &str = "test-decision-secret-0123456789abcdef";
/// The `[decisions]` secret of the Redis store in these tests.
const STORE_SECRET: &str = "test-store-secret-0123456789abcdef";

/// A version-2 reply for `key`, MAC'd with `secret` over `nonce` (as the example service would).
fn reply_json(key: &str, nonce: &str, decision: &str, secret: &str) -> String {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("hookbridge-decision-reply/v2\n{key}\n{nonce}\n{decision}").as_bytes());
    serde_json::json!({
        "version": 2, "id": key, "nonce": nonce, "decision": decision, "reason": "test",
        "mac": hex::encode(mac.finalize().into_bytes()),
    })
    .to_string()
}

fn policy(deny_ids: Vec<String>) -> Policy {
    Policy {
        deny_ids,
        max_amount: None,
        secret: SERVICE_SECRET.as_bytes().to_vec(),
    }
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
service = {{ sink = "{service_sink}", secret = "{secret}", {names} }}
rules = [{{ name = "never-this-wallet", when = "body.wallet_id == 'blocked-wallet'", decision = "deny" }}]
"#,
        key = cobo_test_pubkey(),
        secret = SERVICE_SECRET,
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
    let policy = policy(vec![denied_tx.clone()]);
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
    assert!(records.iter().any(|r| r.key.starts_with(VECTOR_TX)
        && r.body["data"]["callback_id"] == VECTOR_TX
        && r.body["data"]["decision"] == "ok"));
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
            "[decisions]\nstore = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"hb-test-{unique}:\"\nsecret = \"{STORE_SECRET}\"\n",
            redis_url()
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
        policy(vec![denied_tx.clone()]),
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
    // A reply for a callback nobody asked about (stray, or made ahead by someone who knows
    // the secret and can publish to the reply exchange) decides nothing, even with a valid MAC.
    let forged_tx = uuid::Uuid::new_v4().to_string();
    let (forged_body, forged_headers) = waas2_callback(&forged_tx);
    let forged_key = format!("withdrawals:{forged_tx}:{}", sha256_hex(&forged_body));
    publish_reply(
        &replies,
        &reply_json(&forged_key, "0123456789abcdef", "ok", SERVICE_SECRET),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
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
async fn publish_reply(exchange: &str, body: &str) {
    let (conn, channel) = amqp_channel().await;
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
fn redis_url() -> String {
    std::env::var("HOOKBRIDGE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

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

/// A WaaS 1.0 withdrawal confirmation with `request_id` and `amount`, signed now with the test
/// key (custodial confirmations carry no `cobo_id`, so `request_id` is the callback ID).
fn v1_confirmation(request_id: &str, amount: u64) -> (String, Vec<(String, String)>) {
    let body = format!(
        r#"{{"id":"","coin":"ETH","address":"0x9414933Ff7777bb28cA22D15c178596A6e58d957","side":"withdraw","amount":"{amount}","decimal":18,"request_id":"{request_id}","status":"pending","created_time":{now},"confirmed_num":0}}"#,
        now = now_ms()
    );
    let headers = sign_cobo_waas1(body.as_bytes(), &now_ms().to_string());
    (body, headers)
}

/// The WaaS 1.0 approval source of the conflict tests: small withdrawals are approved by a rule,
/// everything else is denied.
fn v1_approval_source(name: &str) -> String {
    format!(
        r#"
[sources.{name}]
kind = "callback"
purpose = "approval"
verify = {{ scheme = "cobo-waas1", public_keys = ["{key}"] }}
[sources.{name}.decision]
default = "deny"
rules = [{{ name = "small", when = "int(body.amount) <= 1000", decision = "ok" }}]
"#,
        key = cobo_v1_test_pubkey()
    )
}

/// The issue's scenario: another Cobo customer gets a genuinely signed body with the
/// `request_id` R of our next withdrawal and an amount our rule approves; then our real
/// callback for R (5,000,000) arrives. It must be judged on its own: never the planted `ok`.
async fn planted_body_scenario(post_to: &[&TestApp], source: &str, events: &[std::path::PathBuf]) {
    let r = format!("request-{}", uuid::Uuid::new_v4().simple());
    let (small, small_headers) = v1_confirmation(&r, 10);
    let (large, large_headers) = v1_confirmation(&r, 5_000_000);
    let url = |i: usize| post_to[i % post_to.len()].url(&format!("/hooks/{source}"));
    assert_text(&post(&url(0), &small_headers, small.clone()).await, "ok");
    let before = counter(
        &scrape(post_to[0]).await,
        "hookbridge_decision_conflicts_total",
        &[("source", source)],
    );
    let real = post(&url(1), &large_headers, large.clone()).await;
    assert_text(&real, "deny");
    let conflicts = post_to
        .iter()
        .map(|a| async move {
            counter(
                &scrape(a).await,
                "hookbridge_decision_conflicts_total",
                &[("source", source)],
            )
        })
        .collect::<Vec<_>>();
    let mut total = 0.0;
    for c in conflicts {
        total += c.await;
    }
    // The recorder is process-wide: every instance reports the same counter.
    assert!(
        total / post_to.len() as f64 - before >= 1.0,
        "the conflict is counted"
    );
    // Retries of either body get that body's own decision, from memory.
    assert_text(&post(&url(1), &small_headers, small.clone()).await, "ok");
    assert_text(&post(&url(0), &large_headers, large.clone()).await, "deny");
    // Two decision events, one per body, told apart by ID; no event carries a body's decision
    // for the other.
    let written: Vec<Value> = events.iter().flat_map(|e| file_events(e)).collect();
    let mine: Vec<&Value> = written
        .iter()
        .filter(|e| e["data"]["callback_id"] == r.as_str())
        .collect();
    assert_eq!(mine.len(), 2, "{mine:?}");
    for (body, decision) in [(&small, "ok"), (&large, "deny")] {
        let digest = sha256_hex(body);
        let e = mine
            .iter()
            .find(|e| e["data"]["body_sha256"] == digest.as_str())
            .unwrap_or_else(|| panic!("no decision event for {digest}"));
        assert_eq!(e["data"]["decision"], decision);
        assert_eq!(e["id"], format!("{r}:{digest}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_answers_only_the_body_it_judged_and_rules_run_under_a_budget() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let app = TestApp::spawn_with_metrics(&format!(
        r#"
[sinks.f]
type = "file"
path = "{events}"
{conflicts}
[sources.budget]
kind = "callback"
purpose = "approval"
verify = {{ scheme = "cobo-waas1", public_keys = ["{key}"] }}
[sources.budget.decision]
default = "deny"
rules = [{{ name = "pairs", when = "body.items.all(a, body.items.exists(b, a == b))", decision = "ok" }}]
"#,
        events = events.display(),
        conflicts = v1_approval_source("planted-mem"),
        key = cobo_v1_test_pubkey(),
    ))
    .await;
    planted_body_scenario(&[&app], "planted-mem", std::slice::from_ref(&events)).await;

    // A rule is true on both bodies, but over its budget on the large one it never runs: deny.
    let items = |n: usize| {
        let body = format!(
            r#"{{"request_id":"budget-{}","amount":"1","items":{:?}}}"#,
            uuid::Uuid::new_v4().simple(),
            (0..n).collect::<Vec<_>>()
        );
        let headers = sign_cobo_waas1(body.as_bytes(), &now_ms().to_string());
        (body, headers)
    };
    let (body, headers) = items(3);
    assert_text(&post(&app.url("/hooks/budget"), &headers, body).await, "ok");
    let (body, headers) = items(3000);
    let started = Instant::now();
    assert_text(
        &post(&app.url("/hooks/budget"), &headers, body.clone()).await,
        "deny",
    );
    eprintln!("over-budget rule answered in {:?}", started.elapsed());
    let denied = file_events(&events)
        .into_iter()
        .find(|e| e["data"]["body_sha256"] == sha256_hex(&body).as_str())
        .unwrap();
    assert_eq!(denied["data"]["decided_by"], "rule:pairs");
    assert!(
        denied["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("over the rule budget"),
        "{denied}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_memory_store_refuses_new_approvals_instead_of_forgetting() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(&format!(
        "[decisions]\nmax_entries = 1\n[sinks.f]\ntype = \"file\"\npath = \"{}\"\n{}",
        dir.path().join("events.jsonl").display(),
        v1_approval_source("full")
    ))
    .await;
    let (first, first_headers) = v1_confirmation("first", 10);
    assert_text(
        &post(&app.url("/hooks/full"), &first_headers, first.clone()).await,
        "ok",
    );
    let (second, second_headers) = v1_confirmation("second", 10);
    let r = post(&app.url("/hooks/full"), &second_headers, second).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (503, Some("decision_store_full"))
    );
    assert!(r.headers.contains_key("retry-after"));
    // The first decision was not evicted to make room: its retry still gets it.
    assert_text(
        &post(&app.url("/hooks/full"), &first_headers, first).await,
        "ok",
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_in_redis_answer_only_their_body_and_planted_ones_are_never_answered() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("hb-test-{}:", uuid::Uuid::new_v4().simple());
    let config = |n: u8| {
        format!(
            "[decisions]\nstore = \"redis\"\nredis_url = \"{url}\"\nkey_prefix = \"{prefix}\"\nsecret = \"{STORE_SECRET}\"\n[sinks.f]\ntype = \"file\"\npath = \"{events}\"\n{source}",
            url = redis_url(),
            events = dir.path().join(format!("events-{n}.jsonl")).display(),
            source = v1_approval_source("planted-redis"),
        )
    };
    let a = TestApp::spawn_with_metrics(&config(1)).await;
    let b = TestApp::spawn_with_metrics(&config(2)).await;
    let events = [
        dir.path().join("events-1.jsonl"),
        dir.path().join("events-2.jsonl"),
    ];
    // The planted body on A, the real one on B: the shared store still keeps them apart.
    planted_body_scenario(&[&a, &b], "planted-redis", &events).await;

    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = |body: &str, r: &str| format!("{prefix}d:planted-redis:{r}:{}", sha256_hex(body));

    // 1. Someone with write access to Redis writes an `ok` for a large withdrawal.
    let (large, large_headers) = v1_confirmation("planted-1", 5_000_000);
    let record = serde_json::json!({
        "decision": { "decision": "ok", "reason": "planted", "decided_by": "rule:small",
                      "decided_at": "2026-12-01T00:00:00.000Z" },
        "body_sha256": sha256_hex(&large), "locator": "body:/request_id", "audited": true,
    })
    .to_string();
    let planted = serde_json::json!({ "record": record, "mac": "00".repeat(32) }).to_string();
    let _: () = redis::cmd("SET")
        .arg(key(&large, "planted-1"))
        .arg(planted)
        .query_async(&mut conn)
        .await
        .unwrap();
    let r = post(&a.url("/hooks/planted-redis"), &large_headers, large).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (503, Some("decision_store_tampered")),
        "{:?}",
        r.body
    );

    // 2. A genuine sealed `ok` (for a small body) copied under a large body's key.
    let (small, small_headers) = v1_confirmation("planted-2", 10);
    assert_text(
        &post(
            &a.url("/hooks/planted-redis"),
            &small_headers,
            small.clone(),
        )
        .await,
        "ok",
    );
    let sealed: String = redis::cmd("GET")
        .arg(key(&small, "planted-2"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let (large, large_headers) = v1_confirmation("planted-2b", 5_000_000);
    let _: () = redis::cmd("SET")
        .arg(key(&large, "planted-2b"))
        .arg(sealed)
        .query_async(&mut conn)
        .await
        .unwrap();
    let r = post(&b.url("/hooks/planted-redis"), &large_headers, large).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_ne!(&r.body[..], b"ok");
    a.stop().await;
    b.stop().await;
}

/// Where a test plays the decision service: takes requests, publishes replies.
#[derive(Clone)]
enum Bus {
    RabbitMq,
    Kafka { brokers: String },
}

impl Bus {
    /// The `id` (decision key) and nonce of a decision request waiting on `requests`.
    async fn take_request(&self, requests: &str) -> (String, String) {
        let request: Value = match self {
            Self::RabbitMq => {
                let (conn, channel) = amqp_channel().await;
                let deadline = Instant::now() + Duration::from_secs(10);
                let msg = loop {
                    let got = channel
                        .basic_get(
                            requests.into(),
                            lapin::options::BasicGetOptions { no_ack: true },
                        )
                        .await
                        .unwrap();
                    if let Some(m) = got {
                        break m;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "no decision request on {requests}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                let _ = conn.close(200, "bye".into()).await;
                serde_json::from_slice(&msg.delivery.data).unwrap()
            }
            Self::Kafka { brokers } => {
                let (brokers, topic) = (brokers.clone(), requests.to_owned());
                let records = tokio::task::spawn_blocking(move || {
                    crate::kafka::consume(&brokers, &topic, 1, Duration::from_secs(15))
                })
                .await
                .unwrap();
                let first = records.into_iter().next().expect("a decision request");
                assert_eq!(first.key, first.body["id"].as_str().unwrap());
                first.body
            }
        };
        assert_eq!(request["hbversion"], "2");
        (
            request["id"].as_str().unwrap().to_owned(),
            request["hbnonce"].as_str().unwrap().to_owned(),
        )
    }

    async fn publish(&self, replies: &str, body: &str) {
        match self {
            Self::RabbitMq => publish_reply(replies, body).await,
            Self::Kafka { brokers } => {
                let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .create()
                    .unwrap();
                producer
                    .send(
                        rdkafka::producer::FutureRecord::to(replies)
                            .key("reply")
                            .payload(body),
                        Duration::from_secs(5),
                    )
                    .await
                    .unwrap();
            }
        }
    }
}

/// Two approval sources with the same service secret but their own request and reply
/// addresses, on the `bus` sink; the audit trail in a file.
fn forgery_config(bus: &Bus, unique: &str, events: &std::path::Path) -> String {
    let source = |name: &str| {
        format!(
            r#"
[sources.{name}-{unique}]
kind = "callback"
purpose = "approval"
sink = "audit"
verify = {{ scheme = "cobo-waas2", public_keys = ["{key}"] }}
[sources.{name}-{unique}.decision]
default = "ask"
timeout_ms = 400
service = {{ sink = "bus", secret = "{SERVICE_SECRET}", requests = "{name}-requests-{unique}", replies = "{name}-replies-{unique}" }}
"#,
            key = cobo_test_pubkey()
        )
    };
    let sink = match bus {
        Bus::RabbitMq => format!(
            "type = \"rabbitmq\"\nurl = \"{}\"\nexchange = \"hb-{unique}\"",
            crate::rabbitmq::amqp_url()
        ),
        Bus::Kafka { brokers } => format!(
            "type = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"audit-{unique}\"\ncreate_topics = true"
        ),
    };
    format!(
        "[spool]\nenabled = false\n[sinks.audit]\ntype = \"file\"\npath = \"{events}\"\n[sinks.bus]\n{sink}\n{a}{b}",
        events = events.display(),
        a = source("fw"),
        b = source("fo"),
    )
}

/// Every kind of forged reply, where the genuine reply would go (or on the other source's
/// reply address), decides nothing and is counted by reason; then the genuine reply decides.
async fn forged_replies_scenario(bus: Bus) {
    let dir = tempfile::tempdir().unwrap();
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let app =
        TestApp::spawn_with_metrics(&forgery_config(&bus, &unique, &dir.path().join("e.jsonl")))
            .await;
    assert!(wait_ready(&app, Duration::from_secs(60)).await, "not ready");
    let (src, other) = (format!("fw-{unique}"), format!("fo-{unique}"));
    let (requests, replies) = (
        format!("fw-requests-{unique}"),
        format!("fw-replies-{unique}"),
    );
    let other_replies = format!("fo-replies-{unique}");
    let url = app.url(&format!("/hooks/{src}"));
    let tx = uuid::Uuid::new_v4().to_string();
    let (body, headers) = waas2_callback(&tx);
    let r = post(&url, &headers, body.clone()).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (503, Some("no_decision"))
    );
    let (key, nonce) = bus.take_request(&requests).await;
    assert_eq!(key, format!("{src}:{tx}:{}", sha256_hex(&body)));

    let (other_body, _) = waas2_callback(&uuid::Uuid::new_v4().to_string());
    let never_asked = format!("{src}:never-asked:{}", sha256_hex(&other_body));
    let genuine = reply_json(&key, &nonce, "ok", SERVICE_SECRET);
    let forgeries: Vec<(&str, String)> = vec![
        (
            "unsupported_version",
            genuine.replace("\"version\":2", "\"version\":1"),
        ),
        (
            "unparsable",
            serde_json::json!({ "id": key, "decision": "ok", "reason": "v1 format" }).to_string(),
        ),
        (
            "unparsable",
            genuine.replace("\"decision\":\"ok\"", "\"decision\":\"approve\""),
        ),
        (
            "bad_mac",
            serde_json::json!({ "version": 2, "id": key, "nonce": nonce, "decision": "ok", "mac": "" })
                .to_string(),
        ),
        (
            "bad_mac",
            reply_json(&key, &nonce, "ok", "someone-else's-secret-0123456789"),
        ),
        (
            "bad_mac",
            // A genuine deny's MAC under an `ok`.
            reply_json(&key, &nonce, "deny", SERVICE_SECRET).replace("\"deny\"", "\"ok\""),
        ),
        (
            "wrong_nonce",
            reply_json(&key, "0123456789abcdef0123456789abcdef", "ok", SERVICE_SECRET),
        ),
        (
            "not_asked",
            reply_json(&never_asked, &nonce, "ok", SERVICE_SECRET),
        ),
    ];
    for (_, forged) in &forgeries {
        bus.publish(&replies, forged).await;
    }
    // A genuine reply for this source's key, on the other source's reply address.
    bus.publish(&other_replies, &genuine).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = post(&url, &headers, body.clone()).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (503, Some("no_decision")),
        "a forged reply decided: {:?}",
        r.body
    );
    let text = scrape(&app).await;
    let rejected = |source: &str, reason: &str| {
        counter(
            &text,
            "hookbridge_decision_replies_rejected_total",
            &[("source", source), ("reason", reason)],
        )
    };
    for (reason, _) in &forgeries {
        let expected = forgeries.iter().filter(|(r, _)| r == reason).count() as f64;
        assert_eq!(rejected(&src, reason), expected, "{reason}: {text}");
    }
    assert_eq!(rejected(&other, "wrong_address"), 1.0, "{text}");

    // The genuine reply, late (the ask is remembered with its nonce): the next retry gets it.
    bus.publish(&replies, &genuine).await;
    let decided = retry_until(&url, &body, &headers, Duration::from_secs(15)).await;
    assert_text(&decided, "ok");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_decision_replies_decide_nothing_over_rabbitmq() {
    forged_replies_scenario(Bus::RabbitMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_decision_replies_decide_nothing_over_kafka() {
    let brokers =
        std::env::var("HOOKBRIDGE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    forged_replies_scenario(Bus::Kafka { brokers }).await;
}

/// Posts until a 200 or `within` passes; 503 in between.
async fn retry_until(
    url: &str,
    body: &str,
    headers: &[(String, String)],
    within: Duration,
) -> Reply {
    let deadline = Instant::now() + within;
    loop {
        let r = post(url, headers, body.to_owned()).await;
        if r.status == 200 || Instant::now() > deadline {
            return r;
        }
        assert_eq!(r.status, 503, "{:?}", r.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
