//! The provider presets (github, shopify, twilio, zoom, square, paddle) end to end: a request
//! signed the way each provider documents is accepted with the preset's default ID and type,
//! and the same request with one byte of its body or signature changed is refused.

use hookbridge_testkit as testkit;
use serde_json::Value;

use crate::helpers::*;

const TWILIO_URL: &str = "https://hooks.example.com/hooks/p-twilio?account=main";
const SQUARE_URL: &str = "https://hooks.example.com/hooks/p-square";

async fn app(dir: &std::path::Path) -> TestApp {
    TestApp::spawn(&format!(
        r#"[sinks.default]
type = "file"
path = "{}"

[sources.p-github]
verify = {{ scheme = "github", secrets = ["gh-secret"] }}
[sources.p-shopify]
verify = {{ scheme = "shopify", secrets = ["shop-secret"] }}
[sources.p-twilio]
verify = {{ scheme = "twilio", url = "{TWILIO_URL}", secrets = ["twilio-token"] }}
[sources.p-zoom]
verify = {{ scheme = "zoom", secrets = ["zoom-token"] }}
[sources.p-square]
verify = {{ scheme = "square", url = "{SQUARE_URL}", secrets = ["square-key"] }}
[sources.p-paddle]
verify = {{ scheme = "paddle", secrets = ["pdl_ntfset_01h_test"] }}
"#,
        dir.join("events.jsonl").display()
    ))
    .await
}

struct Case {
    path: &'static str,
    headers: Vec<(String, String)>,
    body: String,
    id: String,
    ty: &'static str,
}

fn sha256(body: &str) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body))
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    let body = r#"{"ref":"refs/heads/main","after":"0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"}"#;
    out.push(Case {
        path: "/hooks/p-github",
        headers: testkit::HmacSha256::github("gh-secret").sign(body.as_bytes()),
        body: body.into(),
        id: sha256(body),
        ty: "hookbridge.webhook",
    });
    let body = r#"{"id":820982911946154508,"email":"jon@example.com"}"#;
    out.push(Case {
        path: "/hooks/p-shopify",
        headers: testkit::HmacSha256::shopify("shop-secret").sign(body.as_bytes()),
        body: body.into(),
        id: sha256(body),
        ty: "hookbridge.webhook",
    });
    let (headers, body) = testkit::Twilio::new(TWILIO_URL, "twilio-token").sign_form(&[
        ("MessageSid", "SM0123456789abcdef0123456789abcdef"),
        ("From", "+14158675309"),
        ("To", "+18005551212"),
        ("Body", "Hello & welcome"),
    ]);
    out.push(Case {
        path: "/hooks/p-twilio",
        headers,
        id: sha256(&body),
        body,
        ty: "hookbridge.webhook",
    });
    let body = r#"{"event":"meeting.started","event_ts":1626230691572,"payload":{"object":{"id":"1234567890"}}}"#;
    out.push(Case {
        path: "/hooks/p-zoom",
        headers: testkit::Zoom::new("zoom-token").sign(now_secs(), body.as_bytes()),
        body: body.into(),
        id: sha256(body),
        ty: "meeting.started",
    });
    let body = r#"{"merchant_id":"6SSW7HV8K2ST5","type":"payment.updated","event_id":"13b867cf-db3d-4b1c-90b6-2f32a9d78124","data":{"type":"payment","id":"KkAkhdMs"}}"#;
    out.push(Case {
        path: "/hooks/p-square",
        headers: testkit::Square::new(SQUARE_URL, "square-key").sign(body.as_bytes()),
        body: body.into(),
        id: "13b867cf-db3d-4b1c-90b6-2f32a9d78124".into(),
        ty: "payment.updated",
    });
    let body = r#"{"event_id":"evt_01h8bzakzx3hm2fmen703n5q45","event_type":"transaction.completed","occurred_at":"2023-08-21T11:57:47.390028Z","data":{"id":"txn_01h8bz"}}"#;
    out.push(Case {
        path: "/hooks/p-paddle",
        headers: testkit::Paddle::new("pdl_ntfset_01h_test").sign(now_secs(), body.as_bytes()),
        body: body.into(),
        id: "evt_01h8bzakzx3hm2fmen703n5q45".into(),
        ty: "transaction.completed",
    });
    out
}

/// One changed character in the body, or in the signature's last encoded byte.
fn tampered(case: &Case) -> [(Vec<(String, String)>, String); 2] {
    let mut body = case.body.clone().into_bytes();
    let i = body.len() / 2;
    body[i] = if body[i] == b'a' { b'b' } else { b'a' };
    let mut headers = case.headers.clone();
    let sig = headers
        .iter_mut()
        .find(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k.contains("signature") || k.contains("hmac")
        })
        .unwrap();
    sig.1 = crate::helpers::flip_char(&sig.1, 4);
    [
        (case.headers.clone(), String::from_utf8(body).unwrap()),
        (headers, case.body.clone()),
    ]
}

#[tokio::test]
async fn every_preset_accepts_its_providers_signature_and_refuses_a_tampered_one() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let app = app(dir.path()).await;
    let cases = cases();
    for case in &cases {
        for (headers, body) in tampered(case) {
            let r = post(&app.url(case.path), &headers, body).await;
            assert_eq!(r.status, 401, "{} tampered: {:?}", case.path, r.json());
        }
    }
    assert!(
        file_events(&events).is_empty(),
        "nothing written for tampered requests"
    );
    for case in &cases {
        let r = post(&app.url(case.path), &case.headers, case.body.clone()).await;
        assert_eq!(r.status, 200, "{}: {:?}", case.path, r.json());
        assert_eq!(r.json()["id"], case.id.as_str(), "{}", case.path);
    }
    let written = file_events(&events);
    assert_eq!(written.len(), cases.len());
    for (case, e) in cases.iter().zip(&written) {
        assert_eq!(
            (e["id"].as_str(), e["type"].as_str()),
            (Some(case.id.as_str()), Some(case.ty)),
            "{}",
            case.path
        );
        assert_eq!(
            e["hbscheme"].as_str(),
            case.path.strip_prefix("/hooks/p-"),
            "{e}"
        );
        assert!(e.get("hbunverified").is_none(), "{e}");
    }
    // Twilio's form body is kept byte for byte (not JSON: base64).
    let twilio: &Value = &written[2];
    let raw = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        twilio["data_base64"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(raw, cases[2].body.as_bytes());
    app.stop().await;
}

/// Paddle's replay window is its SDKs' 5 s: a signature from a minute ago is refused.
#[tokio::test]
async fn a_paddle_signature_older_than_five_seconds_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let body = r#"{"event_id":"evt_old","event_type":"transaction.completed"}"#;
    let headers =
        testkit::Paddle::new("pdl_ntfset_01h_test").sign(now_secs() - 60, body.as_bytes());
    let r = post(&app.url("/hooks/p-paddle"), &headers, body).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (401, Some("stale_timestamp"))
    );
    app.stop().await;
}
