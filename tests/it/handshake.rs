//! Provider endpoint handshakes through HTTP: Slack's `url_verification` and Zoom's
//! `endpoint.url_validation` are answered exactly as the providers document, only when signed,
//! counted and audited as their own outcome, and never reach the sink.

use hookbridge_testkit as testkit;

use crate::helpers::*;

const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const ZOOM_OLD: &str = "zoom-previous-secret-token";
const ZOOM_SECRET: &str = "zoom-secret-token";

async fn app(dir: &std::path::Path) -> TestApp {
    TestApp::spawn_with_metrics(&format!(
        "[sinks.default]\ntype = \"file\"\npath = \"{}\"\n\n\
         [sources.hs-slack]\nverify = {{ scheme = \"slack\", secrets = [\"{SLACK_SECRET}\"] }}\n\n\
         [sources.hs-zoom]\nverify = {{ scheme = \"zoom\", secrets = [\"{ZOOM_OLD}\", \"{ZOOM_SECRET}\"] }}\n",
        dir.join("events.jsonl").display()
    ))
    .await
}

/// Slack's documented example (Events API, `url_verification`).
const CHALLENGE: &str = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P";

fn slack_challenge_body() -> String {
    format!(
        r#"{{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"{CHALLENGE}","type":"url_verification"}}"#
    )
}

fn zoom_validation_body(plain: &str) -> String {
    format!(
        r#"{{"payload":{{"plainToken":"{plain}"}},"event_ts":1654503849680,"event":"endpoint.url_validation"}}"#
    )
}

#[tokio::test]
async fn slack_url_verification_is_answered_with_the_challenge_and_never_published() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let app = app(dir.path()).await;
    let url = app.url("/hooks/hs-slack");
    let body = slack_challenge_body();

    // Forged: 401, and the challenge is not echoed.
    let mut forged = sign_slack("not-the-secret", now_secs(), body.as_bytes());
    let bad = post(&url, &forged, body.clone()).await;
    assert_eq!(bad.status, 401);
    assert!(!String::from_utf8_lossy(&bad.body).contains(CHALLENGE));
    // Correctly signed, but stale: still no echo.
    forged = sign_slack(SLACK_SECRET, now_secs() - 600, body.as_bytes());
    let stale = post(&url, &forged, body.clone()).await;
    assert_eq!(
        (stale.status, stale.json()["error"].as_str()),
        (401, Some("stale_timestamp"))
    );

    let signed = sign_slack(SLACK_SECRET, now_secs(), body.as_bytes());
    let r = post(&url, &signed, body.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/plain");
    assert_eq!(r.body, CHALLENGE.as_bytes(), "exactly the challenge");
    // A retry is answered the same way (no dedup stands in the way).
    assert_eq!(post(&url, &signed, body).await.body, CHALLENGE.as_bytes());

    // An ordinary event on the same source is still published.
    let event = r#"{"type":"event_callback","event_id":"Ev01","event":{"type":"app_mention","text":"url_verification"}}"#;
    let r = post(
        &url,
        &sign_slack(SLACK_SECRET, now_secs(), event.as_bytes()),
        event,
    )
    .await;
    assert_eq!((r.status, r.json()["id"].as_str()), (200, Some("Ev01")));

    let written = file_events(&events);
    assert_eq!(written.len(), 1, "only the ordinary event: {written:?}");
    assert_eq!(written[0]["type"], "app_mention");
    let metrics = scrape(&app).await;
    let count = |outcome| {
        counter(
            &metrics,
            "hookbridge_requests_total",
            &[("source", "hs-slack"), ("outcome", outcome)],
        )
    };
    assert_eq!(count("handshake"), 2.0, "{metrics}");
    assert_eq!(count("accepted"), 1.0);
    assert_eq!(count("bad_signature") + count("stale_timestamp"), 2.0);
    app.stop().await;
}

#[tokio::test]
async fn zoom_url_validation_is_answered_with_the_secret_that_verified_it() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let url = app.url("/hooks/hs-zoom");
    let plain = "qgg8vlvZRS6UYooatFL8Aw";
    let body = zoom_validation_body(plain);

    let forged = testkit::Zoom::new("wrong").sign(now_secs(), body.as_bytes());
    let bad = post(&url, &forged, body.clone()).await;
    assert_eq!(bad.status, 401);
    assert!(!String::from_utf8_lossy(&bad.body).contains(plain));

    // Signed with the second (current) secret: the answer is made with that one.
    for secret in [ZOOM_SECRET, ZOOM_OLD] {
        let zoom = testkit::Zoom::new(secret);
        let r = post(&url, &zoom.sign(now_secs(), body.as_bytes()), body.clone()).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(
            r.json(),
            serde_json::json!({ "plainToken": plain, "encryptedToken": zoom.encrypted_token(plain) }),
        );
    }

    // A validation without a usable token: 400, nothing echoed or published.
    let odd = r#"{"payload":{"plainToken":42},"event":"endpoint.url_validation"}"#;
    let zoom = testkit::Zoom::new(ZOOM_SECRET);
    let r = post(&url, &zoom.sign(now_secs(), odd.as_bytes()), odd).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("bad_handshake"))
    );

    // An ordinary Zoom event is published, typed by `event`.
    let event = r#"{"event":"meeting.started","event_ts":1626230691572,"payload":{"account_id":"AAAAAABBBB","object":{"id":"1234567890"}}}"#;
    let r = post(&url, &zoom.sign(now_secs(), event.as_bytes()), event).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let written = file_events(&dir.path().join("events.jsonl"));
    assert_eq!(written.len(), 1, "only the ordinary event: {written:?}");
    assert_eq!(written[0]["type"], "meeting.started");
    assert_eq!(written[0]["hbscheme"], "zoom");
    app.stop().await;
}
