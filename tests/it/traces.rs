//! OpenTelemetry traces against a real OTLP/HTTP receiver (a small one in this test, decoding
//! the JSON export) and real brokers: one request's span tree, and the same trace ID in the
//! consumed Kafka and RabbitMQ messages (headers and the CloudEvents `traceparent`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use warp::Filter;

use crate::helpers::*;
use crate::kafka::{brokers, consume};
use crate::rabbitmq::amqp_url;
use crate::tap::RabbitTap;

/// Every span the receiver got, flattened out of the export requests.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Value>>>);

impl Received {
    fn spans(&self) -> Vec<Value> {
        self.0.lock().unwrap().clone()
    }
}

/// An OTLP/HTTP receiver on 127.0.0.1: `POST /v1/traces` with a JSON body. (The test's own
/// receiver, fed only by the app under test: the service's body caps do not apply.)
#[allow(clippy::disallowed_methods)]
async fn receiver() -> (String, Received) {
    let got = Received::default();
    let store = got.clone();
    let route = warp::post()
        .and(warp::path!("v1" / "traces"))
        .and(warp::header::exact_ignore_case(
            "content-type",
            "application/json",
        ))
        .and(warp::body::bytes())
        .map(move |body: bytes::Bytes| {
            let export: Value = serde_json::from_slice(&body).expect("OTLP/JSON");
            let mut spans = store.0.lock().unwrap();
            for rs in export["resourceSpans"].as_array().into_iter().flatten() {
                assert_eq!(rs["resource"]["attributes"][0]["key"], "service.name");
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    spans.extend(ss["spans"].as_array().into_iter().flatten().cloned());
                }
            }
            warp::reply::json(&serde_json::json!({}))
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (format!("http://{addr}/v1/traces"), got)
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

/// The request span whose event is `id`, and its children, once exported.
async fn tree(got: &Received, id: &str) -> (Value, Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = got.spans();
        let root = spans.iter().find(|s| {
            attr(s, "hookbridge.event_id").and_then(|v| v["stringValue"].as_str()) == Some(id)
        });
        if let Some(root) = root {
            let children: Vec<Value> = spans
                .iter()
                .filter(|s| s["parentSpanId"] == root["spanId"])
                .cloned()
                .collect();
            return (root.clone(), children);
        }
        assert!(
            Instant::now() < deadline,
            "no request span for {id}: {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn names(children: &[Value]) -> Vec<&str> {
    let mut n: Vec<&str> = children.iter().filter_map(|c| c["name"].as_str()).collect();
    n.sort_unstable();
    n
}

/// The trace ID and parent span ID in a `traceparent`.
fn parts(traceparent: &str) -> (&str, &str) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "{traceparent}");
    assert_eq!(p[0], "00");
    (p[1], p[2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_one_span_tree_continued_by_the_kafka_and_rabbitmq_messages() {
    let (endpoint, got) = receiver().await;
    let tap = RabbitTap::new().await;
    let brokers = brokers();
    let topic = format!("hbtrace-{}", uuid::Uuid::new_v4().simple());
    let config = format!(
        "[spool]\nenabled = false\n[tracing]\nenabled = true\nendpoint = \"{endpoint}\"\nexport_interval_ms = 100\n[sinks.kafka]\ntype = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\ncreate_topics = true\npartitions = 1\n[sinks.rabbit]\ntype = \"rabbitmq\"\nurl = \"{}\"\nexchange = \"{}\"\n[sources.k]\nsink = \"kafka\"\nevent_id = [\"/id\"]\nverify = {{ scheme = \"shared-secret\", header = \"x-token\", secrets = [\"tok\"] }}\n[sources.r]\nsink = \"rabbit\"\nevent_id = [\"/id\"]\nverify = {{ scheme = \"shared-secret\", header = \"x-token\", secrets = [\"tok\"] }}\n",
        amqp_url(),
        tap.exchange
    );
    let app = TestApp::spawn_with_metrics(&config).await;
    assert!(crate::kafka::wait_ready(&app, Duration::from_secs(30)).await);

    // The provider sends a traceparent of its own: a link, never the parent.
    let provider = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let k = post(
        &app.url("/hooks/k"),
        &[h("x-token", "tok"), h("traceparent", provider)],
        r#"{"id":"trace-k"}"#,
    )
    .await;
    assert_eq!(k.status, 200, "{:?}", k.json());
    let r = post(
        &app.url("/hooks/r"),
        &[h("x-token", "tok")],
        r#"{"id":"trace-r"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let refused = post(
        &app.url("/hooks/r"),
        &[h("x-token", "no")],
        r#"{"id":"trace-x"}"#,
    )
    .await;
    assert_eq!(refused.status, 401);

    // The span tree of the Kafka request.
    let (root, children) = tree(&got, "trace-k").await;
    assert_eq!(root["name"], "POST /hooks/k");
    assert_eq!(root["kind"], 2, "a server span");
    assert!(
        root.get("parentSpanId")
            .is_none_or(|p| p.as_str() == Some("")),
        "no parent: {root}"
    );
    assert_eq!(
        attr(&root, "hookbridge.source").unwrap()["stringValue"],
        "k"
    );
    assert_eq!(
        attr(&root, "hookbridge.outcome").unwrap()["stringValue"],
        "accepted"
    );
    assert_eq!(
        attr(&root, "http.response.status_code").unwrap()["intValue"],
        "200"
    );
    assert_eq!(
        names(&children),
        ["body.read", "dedup", "publish", "verify"],
        "{children:?}"
    );
    let trace_id = root["traceId"].as_str().unwrap().to_owned();
    assert_ne!(
        trace_id, "0af7651916cd43dd8448eb211c80319c",
        "the provider's trace is not ours"
    );
    assert!(children.iter().all(|c| c["traceId"] == trace_id));
    let link = &root["links"][0];
    assert_eq!(link["traceId"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(link["spanId"], "b7ad6b7169203331");
    for s in children.iter().chain([&root]) {
        let (start, end) = (
            s["startTimeUnixNano"]
                .as_str()
                .unwrap()
                .parse::<u128>()
                .unwrap(),
            s["endTimeUnixNano"]
                .as_str()
                .unwrap()
                .parse::<u128>()
                .unwrap(),
        );
        assert!(start <= end, "{s}");
    }
    let publish = children.iter().find(|c| c["name"] == "publish").unwrap();
    assert_eq!(publish["kind"], 4, "a producer span");

    // The Kafka message continues it: the header and the CloudEvent name the publish span.
    let records = tokio::task::spawn_blocking({
        let (brokers, topic) = (brokers.clone(), topic.clone());
        move || consume(&brokers, &topic, 1, Duration::from_secs(30))
    })
    .await
    .unwrap();
    let record = records
        .iter()
        .find(|r| r.key == "trace-k")
        .expect("the Kafka message");
    let header = record
        .headers
        .get("traceparent")
        .expect("a traceparent header");
    assert_eq!(
        parts(header),
        (trace_id.as_str(), publish["spanId"].as_str().unwrap())
    );
    assert_eq!(record.body["traceparent"].as_str(), Some(header.as_str()));

    // The RabbitMQ request: its own trace, carried by the AMQP message.
    let (root_r, children_r) = tree(&got, "trace-r").await;
    assert_eq!(
        names(&children_r),
        ["body.read", "dedup", "publish", "verify"]
    );
    assert!(
        root_r
            .get("links")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
    );
    let messages = tap.take(1, Duration::from_secs(30)).await;
    let message = messages
        .iter()
        .find(|m| m.id == "trace-r")
        .expect("the AMQP message");
    let header = message
        .headers
        .get("traceparent")
        .expect("a traceparent header");
    let publish_r = children_r.iter().find(|c| c["name"] == "publish").unwrap();
    assert_eq!(
        parts(header),
        (
            root_r["traceId"].as_str().unwrap(),
            publish_r["spanId"].as_str().unwrap()
        )
    );
    let body: Value = serde_json::from_slice(&message.body).unwrap();
    assert_eq!(body["traceparent"].as_str(), Some(header.as_str()));

    // A refused request is traced too, with its reason and no event.
    let deadline = Instant::now() + Duration::from_secs(10);
    let rejected = loop {
        let spans = got.spans();
        if let Some(s) = spans.iter().find(|s| {
            attr(s, "hookbridge.reason").and_then(|v| v["stringValue"].as_str())
                == Some("bad_signature")
        }) {
            break s.clone();
        }
        assert!(Instant::now() < deadline, "no span for the refused request");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        attr(&rejected, "http.response.status_code").unwrap()["intValue"],
        "401"
    );

    let text = scrape(&app).await;
    assert!(
        counter(
            &text,
            "hookbridge_trace_spans_total",
            &[("result", "exported")]
        ) >= 11.0
    );
    app.stop().await;
    tap.cleanup().await;
}
