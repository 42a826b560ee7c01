//! Shadow mode through HTTP: a source that verifies, logs and counts, but accepts and publishes
//! (marked) what fails, so a provider can be moved onto hookbridge without an outage.

use crate::helpers::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

async fn app(dir: &std::path::Path) -> TestApp {
    TestApp::spawn_with_metrics(&format!(
        "[sinks.default]\ntype = \"file\"\npath = \"{}\"\n\n\
         [sources.sh-standard]\nshadow = true\nverify = {{ scheme = \"standard-webhooks\", secrets = [\"{SECRET}\"] }}\n\n\
         [sources.sh-slack]\nshadow = true\nverify = {{ scheme = \"slack\", secrets = [\"{SLACK_SECRET}\"] }}\n",
        dir.join("events.jsonl").display()
    ))
    .await
}

#[tokio::test]
async fn failures_are_accepted_marked_and_counted_and_verified_requests_are_not_marked() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let app = app(dir.path()).await;
    let url = app.url("/hooks/sh-standard");
    let body = br#"{"type":"invoice.paid","amount":1}"#;

    let signed = sign_standard_v1(SECRET, "msg_ok", now_secs(), body);
    let r = post(&url, &signed, body.to_vec()).await;
    assert_eq!((r.status, r.json()["id"].as_str()), (200, Some("msg_ok")));

    let forged = sign_standard_v1(
        "whsec_QUFBQUFBQUFBQUFBQUFBQQ==",
        "msg_bad",
        now_secs(),
        body,
    );
    let r = post(&url, &forged, body.to_vec()).await;
    assert_eq!(r.status, 200, "accepted in shadow mode: {:?}", r.body);
    let r = post(&url, &[], body.to_vec()).await;
    assert_eq!(r.status, 200, "even unsigned: {:?}", r.body);

    let written = file_events(&events);
    assert_eq!(written.len(), 3, "{written:?}");
    assert!(written[0].get("hbshadow").is_none() && written[0].get("hbunverified").is_none());
    assert_eq!(
        written[0]["hbsignature"].as_str(),
        Some(signed[2].1.as_str())
    );
    assert_eq!(
        (
            written[1]["hbshadow"].as_str(),
            written[1]["hbunverified"].as_str()
        ),
        (Some("bad_signature"), Some("all"))
    );
    assert_eq!(
        (
            written[2]["hbshadow"].as_str(),
            written[2]["hbunverified"].as_str()
        ),
        (Some("missing_signature"), Some("all"))
    );
    assert!(written[1].get("hbsignature").is_none());

    let metrics = scrape(&app).await;
    let requests = |outcome| {
        counter(
            &metrics,
            "hookbridge_requests_total",
            &[("source", "sh-standard"), ("outcome", outcome)],
        )
    };
    assert_eq!(requests("accepted"), 1.0, "{metrics}");
    assert_eq!(requests("shadow_accepted_unverified"), 2.0);
    assert_eq!(requests("bad_signature"), 0.0);
    let why = |reason| {
        counter(
            &metrics,
            "hookbridge_shadow_unverified_total",
            &[("source", "sh-standard"), ("reason", reason)],
        )
    };
    assert_eq!((why("bad_signature"), why("missing_signature")), (1.0, 1.0));
    app.stop().await;
}

/// A forged request must not claim a genuine event's ID: dedup would then answer the real one
/// as a duplicate and never publish it.
#[tokio::test]
async fn an_unverified_request_never_takes_a_genuine_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let url = app.url("/hooks/sh-standard");
    let body = br#"{"type":"payout.created","amount":1000}"#;
    let forged = sign_standard_v1("whsec_QUFBQUFBQUFBQUFBQUFBQQ==", "msg_1", now_secs(), body);
    assert_eq!(post(&url, &forged, body.to_vec()).await.status, 200);
    let genuine = sign_standard_v1(SECRET, "msg_1", now_secs(), body);
    let r = post(&url, &genuine, body.to_vec()).await;
    assert_eq!((r.status, r.json()["id"].as_str()), (200, Some("msg_1")));
    let written = file_events(&dir.path().join("events.jsonl"));
    let genuine: Vec<_> = written
        .iter()
        .filter(|e| e["id"] == "msg_1" && e.get("hbshadow").is_none())
        .collect();
    assert_eq!(
        genuine.len(),
        1,
        "the genuine event is published: {written:?}"
    );
    app.stop().await;
}

/// A handshake that fails verification is never answered, shadow mode or not.
#[tokio::test]
async fn a_forged_handshake_is_not_answered_in_shadow_mode() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let body = r#"{"token":"t","challenge":"shadow-challenge-1","type":"url_verification"}"#;
    let forged = sign_slack("not-the-secret", now_secs(), body.as_bytes());
    let r = post(&app.url("/hooks/sh-slack"), &forged, body).await;
    assert_eq!(r.status, 200);
    assert_ne!(r.body, "shadow-challenge-1".as_bytes());
    assert_eq!(r.json()["status"], "accepted");
    let written = file_events(&dir.path().join("events.jsonl"));
    assert_eq!(written.len(), 1);
    assert_eq!(written[0]["hbshadow"], "bad_signature");
    // Signed, it is answered as Slack documents.
    let signed = sign_slack(SLACK_SECRET, now_secs(), body.as_bytes());
    let r = post(&app.url("/hooks/sh-slack"), &signed, body).await;
    assert_eq!(r.body, "shadow-challenge-1".as_bytes());
    app.stop().await;
}
