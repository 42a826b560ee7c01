//! Every provider vector, end to end: signed request → 200 → exactly one CloudEvent in the file
//! sink with the provider's event ID; a one-byte change → 401 and nothing written.

use serde_json::Value;

use crate::helpers::*;

/// The example config, on port 0, with the file sink in `dir`.
async fn example_app(dir: &std::path::Path) -> TestApp {
    let text = std::fs::read_to_string(repo_path("config/example.toml")).unwrap();
    // The Cobo vectors were signed in 2023: outside the default window (what dedup remembers).
    let text = text
        .replace(
            "[sources.cobo-waas2]\n",
            "[sources.cobo-waas2]\nreplay_window_secs = 0\n",
        )
        .replace(
            "[sources.cobo-waas1]\n",
            "[sources.cobo-waas1]\nreplay_window_secs = 0\n",
        );
    let text = format!(
        "{text}\n[sinks.default]\ntype = \"file\"\npath = \"{}\"\n",
        dir.join("events.jsonl").display()
    );
    TestApp::spawn(&text).await
}

struct Case {
    name: &'static str,
    path: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    expect_id: String,
}

fn str_of(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap().to_owned()
}

/// One request per vector, signed as the vector is (timestamped schemes re-signed now with the
/// vector's own secret or key, since their replay windows reject the vectors' old timestamps).
fn cases() -> Vec<Case> {
    let v = vectors();
    let mut out = Vec::new();
    for c in v["cobo_v2_ed25519"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| str_of(c, "name").contains("webhook"))
    {
        out.push(Case {
            name: "cobo_v2_webhook_synthetic",
            path: "/hooks/cobo-waas2",
            headers: vec![
                h("Biz-Timestamp", &str_of(c, "timestamp")),
                h("Biz-Resp-Signature", &str_of(c, "signature_hex")),
            ],
            body: str_of(c, "body").into_bytes(),
            expect_id: serde_json::from_str::<Value>(&str_of(c, "body")).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        });
    }
    for c in v["cobo_v1_ecdsa_secp256k1"].as_array().unwrap() {
        let body: Value = serde_json::from_str(&str_of(c, "body")).unwrap();
        let id = body["id"].as_str().unwrap();
        // Withdrawal confirmations carry an empty id: the request_id identifies them.
        let expect_id = if id.is_empty() {
            body["request_id"].as_str().unwrap().to_owned()
        } else {
            format!(
                "{id}:{}:{}",
                body["status"].as_str().unwrap(),
                body["confirmed_num"]
            )
        };
        out.push(Case {
            name: if id.is_empty() {
                "cobo_v1_withdrawal_confirmation_sandbox"
            } else {
                "cobo_v1_transaction_notification_sandbox"
            },
            path: "/hooks/cobo-waas1",
            headers: vec![
                h("BIZ_TIMESTAMP", &str_of(c, "timestamp")),
                h("BIZ_RESP_SIGNATURE", &str_of(c, "signature_der_hex")),
            ],
            body: str_of(c, "body").into_bytes(),
            expect_id,
        });
    }
    let rsa = &v["rsa_sha256_pkcs1v15_base64"][0];
    out.push(Case {
        name: "wise_sandbox_webhook",
        path: "/hooks/rsa-gateway",
        headers: vec![h("X-Signature", &str_of(rsa, "x_signature"))],
        body: str_of(rsa, "body").into_bytes(),
        expect_id: "49983981".into(),
    });
    let gh = &v["github"][0];
    out.push(Case {
        name: "github_docs",
        path: "/hooks/github",
        headers: vec![
            h("X-Hub-Signature-256", &str_of(gh, "x_hub_signature_256")),
            h("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ],
        body: str_of(gh, "payload").into_bytes(),
        // GitHub signs no header: the ID is the body's SHA-256, not the delivery header.
        expect_id: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(str_of(
            gh, "payload",
        ))),
    });
    let sh = &v["shopify"][0];
    out.push(Case {
        name: "shopify_synthetic",
        path: "/hooks/shopify",
        headers: vec![h(
            "X-Shopify-Hmac-Sha256",
            &str_of(sh, "x_shopify_hmac_sha256"),
        )],
        body: str_of(sh, "body").into_bytes(),
        expect_id: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(str_of(sh, "body"))),
    });
    for c in v["standard_webhooks_v1_hmac"].as_array().unwrap() {
        let body = str_of(c, "payload").into_bytes();
        out.push(Case {
            name: "standard_webhooks_v1",
            path: "/hooks/standard",
            headers: sign_standard_v1(
                &str_of(c, "secret"),
                &str_of(c, "msg_id"),
                now_secs(),
                &body,
            ),
            body,
            expect_id: str_of(c, "msg_id"),
        });
    }
    let a = &v["standard_webhooks_v1a_ed25519"][0];
    let body = str_of(a, "payload").into_bytes();
    out.push(Case {
        name: "standard_webhooks_v1a",
        path: "/hooks/standard",
        headers: sign_standard_v1a(
            &str_of(a, "secret_key_seed_hex"),
            "msg_v1a_1",
            now_secs(),
            &body,
        ),
        body,
        expect_id: "msg_v1a_1".into(),
    });
    let st = &v["stripe"][0];
    let body = str_of(st, "payload").into_bytes();
    out.push(Case {
        name: "stripe",
        path: "/hooks/stripe",
        headers: sign_stripe(&str_of(st, "secret"), now_secs(), &body),
        body,
        expect_id: "evt_test_webhook".into(),
    });
    let sl = &v["slack"][0];
    let body = str_of(sl, "body").into_bytes();
    out.push(Case {
        name: "slack",
        path: "/hooks/slack",
        headers: sign_slack(&str_of(sl, "signing_secret"), now_secs(), &body),
        body: body.clone(),
        expect_id: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body)),
    });
    out.push(Case {
        name: "shared_secret",
        path: "/hooks/token",
        headers: vec![h("X-Webhook-Token", "example-shared-token")],
        body: br#"{"id":"tok-1"}"#.to_vec(),
        expect_id: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(br#"{"id":"tok-1"}"#)),
    });
    out
}

/// A one-byte change somewhere the signature covers.
fn tamper(case: &Case, what: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let mut headers = case.headers.clone();
    let mut body = case.body.clone();
    match what {
        "body" => {
            let i = body.len() / 2;
            body[i] = if body[i] == b'a' { b'b' } else { b'a' };
        }
        "signature" => {
            let sig = headers
                .iter_mut()
                .find(|(k, _)| {
                    let k = k.to_ascii_lowercase();
                    k.contains("signature") || k.contains("hmac") || k.contains("token")
                })
                .unwrap();
            sig.1 = crate::helpers::flip_char(&sig.1, 3);
        }
        "timestamp" => {
            if let Some(ts) = headers
                .iter_mut()
                .find(|(k, _)| k.to_ascii_lowercase().contains("timestamp"))
            {
                let mut b = ts.1.clone().into_bytes();
                let i = b.len() - 1;
                b[i] = if b[i] == b'9' { b'8' } else { b[i] + 1 };
                ts.1 = String::from_utf8(b).unwrap();
            } else if let Some(st) = headers.iter_mut().find(|(k, _)| k == "Stripe-Signature") {
                st.1 = st.1.replacen("t=1", "t=2", 1);
            }
        }
        _ => unreachable!(),
    }
    (headers, body)
}

#[tokio::test]
async fn every_vector_is_accepted_once_and_every_tamper_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let app = example_app(dir.path()).await;
    let cases = cases();
    assert!(cases.len() >= 12, "a case per vector");

    for case in &cases {
        for what in ["body", "signature", "timestamp"] {
            let signs_ts = case.headers.iter().any(|(k, _)| {
                let k = k.to_ascii_lowercase();
                k.contains("timestamp") || k == "stripe-signature"
            });
            if what == "timestamp" && !signs_ts {
                continue;
            }
            // A shared secret authenticates the sender, not the body: nothing to tamper there.
            if what == "body" && case.name == "shared_secret" {
                continue;
            }
            let (headers, body) = tamper(case, what);
            let r = post(&app.url(case.path), &headers, body).await;
            assert_eq!(
                r.status,
                401,
                "{} with tampered {what}: {:?}",
                case.name,
                r.json()
            );
        }
    }
    assert!(
        file_events(&events).is_empty(),
        "nothing written for tampered requests"
    );

    for case in &cases {
        let r = post(&app.url(case.path), &case.headers, case.body.clone()).await;
        assert_eq!(r.status, 200, "{}: {:?}", case.name, r.json());
        assert_eq!(r.json()["id"], case.expect_id.as_str(), "{}", case.name);
    }
    let written = file_events(&events);
    assert_eq!(written.len(), cases.len());
    for case in &cases {
        let matching: Vec<&Value> = written
            .iter()
            .filter(|e| e["id"] == case.expect_id.as_str())
            .collect();
        assert_eq!(matching.len(), 1, "{} appears exactly once", case.name);
        let e = matching[0];
        assert_eq!(e["specversion"], "1.0");
        // The exact body bytes are recoverable for re-verification.
        let data = match e.get("data_base64") {
            Some(b64) => base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                b64.as_str().unwrap(),
            )
            .unwrap(),
            None => serde_json::to_vec(&e["data"]).unwrap(),
        };
        if e.get("data_base64").is_some() {
            assert_eq!(data, case.body, "{}", case.name);
        } else {
            let reparsed: Value = serde_json::from_slice(&case.body).unwrap();
            assert_eq!(e["data"], reparsed, "{}", case.name);
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn malformed_requests_never_panic_and_get_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let app = example_app(dir.path()).await;
    let huge = vec![b'{'; 2 * 1024 * 1024];
    let bodies: Vec<Vec<u8>> = vec![vec![], b"\xff\xfe\x00".to_vec(), b"{".to_vec(), huge];
    let header_sets: Vec<Vec<(String, String)>> = vec![
        vec![],
        vec![h("Biz-Timestamp", "abc"), h("Biz-Resp-Signature", "zz")],
        vec![
            h("Biz-Timestamp", "1"),
            h("Biz-Resp-Signature", &"0".repeat(127)),
        ],
        vec![
            h("Biz-Timestamp", "99999999999999999999"),
            h("Biz-Resp-Signature", &"ab".repeat(64)),
        ],
        vec![
            h("webhook-id", ""),
            h("webhook-timestamp", "-5"),
            h("webhook-signature", "v1,!!! v1a,@@"),
        ],
        vec![h("Stripe-Signature", "t=,v1=,,=")],
        vec![h("X-Signature", "====")],
        vec![h("X-Hub-Signature-256", "sha256=")],
        vec![h("X-Slack-Signature", "v0=")],
    ];
    for path in [
        "/hooks/cobo-waas2",
        "/hooks/cobo-waas1",
        "/hooks/standard",
        "/hooks/stripe",
        "/hooks/rsa-gateway",
        "/hooks/github",
        "/hooks/slack",
    ] {
        for headers in &header_sets {
            for body in &bodies {
                let r = post(&app.url(path), headers, body.clone()).await;
                assert!(
                    (400..500).contains(&r.status),
                    "{path} {headers:?} -> {}",
                    r.status
                );
            }
        }
    }
    // Still serving.
    assert_eq!(get(&app.url("/healthz")).await.status, 200);
    assert!(file_events(&dir.path().join("events.jsonl")).is_empty());
    app.stop().await;
}

/// `[audit] output = "file"`: one JSON line per request with its outcome, reason and event ID,
/// flushed by the log guards, and never the secret or the signature.
#[tokio::test]
async fn audit_file_has_a_line_per_request_and_no_secrets() {
    use hookbridge::config::{AuditConfig, AuditOutput};
    use hookbridge::telemetry::{LogFormat, init};

    let dir = tempfile::tempdir().unwrap();
    let audit_path = dir.path().join("audit.jsonl");
    let guards = init(
        LogFormat::Json,
        &AuditConfig {
            output: AuditOutput::File,
            path: Some(audit_path.clone()),
        },
    )
    .unwrap();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let app = TestApp::spawn(&format!(
        "[sinks.default]\ntype = \"file\"\npath = \"{}\"\n\n\
         [sources.audited]\nverify = {{ scheme = \"standard-webhooks\", secrets = [\"{secret}\"] }}\n\
         event_id = [\"header:webhook-id\"]\n",
        dir.path().join("events.jsonl").display()
    ))
    .await;
    let body = br#"{"type":"invoice.paid","amount":12}"#;
    let signed = sign_standard_v1(secret, "msg_audit_1", now_secs(), body);
    assert_eq!(
        post(&app.url("/hooks/audited"), &signed, body.to_vec())
            .await
            .status,
        200
    );
    let mut forged = sign_standard_v1(secret, "msg_audit_2", now_secs(), body);
    forged[2].1 = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
    assert_eq!(
        post(&app.url("/hooks/audited"), &forged, body.to_vec())
            .await
            .status,
        401
    );
    app.stop().await;
    drop(guards); // flushes the writer threads

    let text = std::fs::read_to_string(&audit_path).unwrap();
    for needle in [
        &secret[6..],
        signed[2].1.trim_start_matches("v1,"),
        "AAAAAAAAAAAA",
    ] {
        assert!(!text.contains(needle), "the audit log leaks {needle}");
    }
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .filter(|l: &Value| l["source"] == "audited")
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let (ok, bad) = (&lines[0], &lines[1]);
    assert_eq!(ok["level"], "INFO");
    assert_eq!(ok["target"], "hookbridge::audit");
    assert_eq!(ok["outcome"], "accepted");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["event_id"], "msg_audit_1");
    assert_eq!(ok["event_type"], "invoice.paid");
    assert_eq!(ok["id_from"], "header:webhook-id");
    assert_eq!(ok["bytes"], body.len());
    assert!(ok["latency_us"].as_u64().is_some());
    assert!(ok["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(bad["level"], "WARN");
    assert_eq!(bad["outcome"], "rejected");
    assert_eq!(bad["reason"], "bad_signature");
    assert_eq!(bad["status"], 401);
    assert!(bad.get("event_id").is_none());
    assert!(!bad["detail"].as_str().unwrap().is_empty());
}

/// The shipped example config as it is (default replay windows), on port 0.
async fn shipped_example(dir: &std::path::Path) -> TestApp {
    let text = std::fs::read_to_string(repo_path("config/example.toml")).unwrap();
    TestApp::spawn(&format!(
        "{text}\n[sinks.default]\ntype = \"file\"\npath = \"{}\"\n",
        dir.join("events.jsonl").display()
    ))
    .await
}

#[tokio::test]
async fn a_github_body_replayed_with_fresh_headers_is_not_a_second_event() {
    let dir = tempfile::tempdir().unwrap();
    let app = shipped_example(dir.path()).await;
    let gh = &vectors()["github"][0];
    let body = str_of(gh, "payload");
    let sig = h("X-Hub-Signature-256", &str_of(gh, "x_hub_signature_256"));
    let first = post(
        &app.url("/hooks/github"),
        &[
            sig.clone(),
            h("X-GitHub-Delivery", "d-1"),
            h("X-GitHub-Event", "push"),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    // Everything a topic reader has (body and signature), resent with new unsigned headers.
    let replay = post(
        &app.url("/hooks/github"),
        &[
            sig,
            h("X-GitHub-Delivery", "d-2"),
            h("X-GitHub-Event", "deployment"),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(replay.status, 200, "answered as the duplicate it is");
    assert_eq!(replay.json()["id"], first.json()["id"]);
    let events = file_events(&dir.path().join("events.jsonl"));
    assert_eq!(events.len(), 1, "one event, not two: {events:?}");
    let e = &events[0];
    assert_eq!(
        e["id"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body))
    );
    assert_eq!(
        (e["type"].as_str(), e["hbunverified"].as_str()),
        (Some("push"), Some("type"))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_cobo_timestamp_older_than_the_default_window_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let app = shipped_example(dir.path()).await;
    let post_at = |age_ms: u64, id: &str| {
        let body = cobo_body(id);
        let headers = sign_cobo_waas2(
            &cobo_test_seed(),
            body.as_bytes(),
            &(now_ms() - age_ms).to_string(),
        );
        let url = app.url("/hooks/cobo-waas2");
        async move { post(&url, &headers, body).await }
    };
    // The default window is what dedup remembers: 7 days.
    let day = 24 * 3600 * 1000;
    let stale = post_at(8 * day, "evt-stale").await;
    assert_eq!(
        (stale.status, stale.json()["error"].as_str()),
        (401, Some("stale_timestamp"))
    );
    assert_eq!(post_at(6 * day, "evt-recent").await.status, 200);
    assert_eq!(file_events(&dir.path().join("events.jsonl")).len(), 1);
    app.stop().await;
}
