//! Known-answer tests from `tests/fixtures/providers.json` (copied from the shared vectors): every
//! vector is accepted, and a one-byte change to body, timestamp or signature, or a wrong key, is
//! rejected.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::*;

/// The shared vectors (`tests/fixtures/providers.json`); the batcher's tests read them too.
pub(super) fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/providers.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("vector field {k}"))
        .to_owned()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn verify(
    v: &SourceVerifier,
    h: &HeaderMap,
    body: &str,
    now: SystemTime,
) -> Result<Proof, VerifyError> {
    v.verify(
        IncomingWebhook {
            headers: h.clone(),
            body: Bytes::from(body.to_owned()),
        },
        now,
    )
    .map(|w| w.proof().clone())
}

/// Flips one character of a hex or base64 string, keeping it decodable.
fn flip(sig: &str, at: usize) -> String {
    let mut b = sig.as_bytes().to_vec();
    b[at] = if b[at] == b'0' {
        b'1'
    } else if b[at] == b'A' {
        b'B'
    } else {
        b'0'
    };
    String::from_utf8(b).unwrap()
}

fn no_window(scheme: Scheme) -> SourceVerifier {
    SourceVerifier::new(scheme, None)
}

/// The request path's hex decoder accepts and refuses exactly what `hex::decode` does.
#[test]
fn hex_bytes_agrees_with_hex_decode() {
    let mac = "5c0fd2a4b1e3f7a9c2d4e6f8a0b2c4d6e8f0a1b3c5d7e9f1a3b5c7d9e1f3a5b7";
    for s in [
        "",
        "00",
        "ff",
        "FF",
        "aB09",
        mac,
        &mac.to_uppercase(),
        "0",
        "abc",
        "0g",
        "g0",
        "zz",
        " 00",
        "00 ",
        "0x00",
        "é0",
        "00é",
    ] {
        assert_eq!(super::hex_bytes(s), hex::decode(s).ok(), "{s:?}");
    }
}

#[test]
fn cobo_waas2_vectors() {
    let all = vectors();
    for v in all["cobo_v2_ed25519"].as_array().unwrap() {
        let verifier = no_window(Scheme::CoboWaas2(
            CoboWaas2::new(&[s(v, "pubkey_hex")]).unwrap(),
        ));
        let (body, ts, sig) = (s(v, "body"), s(v, "timestamp"), s(v, "signature_hex"));
        let now = SystemTime::now();
        let ok = verify(
            &verifier,
            &headers(&[("Biz-Timestamp", &ts), ("Biz-Resp-Signature", &sig)]),
            &body,
            now,
        );
        assert_eq!(
            ok.unwrap().timestamp.as_deref(),
            Some(ts.as_str()),
            "{}",
            v["name"]
        );
        // The underscore spellings from Cobo's docs and Go demo.
        verify(
            &verifier,
            &headers(&[("BIZ_TIMESTAMP", &ts), ("BIZ_RESP_SIGNATURE", &sig)]),
            &body,
            now,
        )
        .unwrap();

        let good = headers(&[("Biz-Timestamp", &ts), ("Biz-Resp-Signature", &sig)]);
        assert_eq!(
            verify(&verifier, &good, &format!("{body} "), now),
            Err(VerifyError::BadSignature)
        );
        let ts2 = flip(&ts, ts.len() - 1);
        assert_eq!(
            verify(
                &verifier,
                &headers(&[("Biz-Timestamp", &ts2), ("Biz-Resp-Signature", &sig)]),
                &body,
                now
            ),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify(
                &verifier,
                &headers(&[
                    ("Biz-Timestamp", &ts),
                    ("Biz-Resp-Signature", &flip(&sig, 10))
                ]),
                &body,
                now
            ),
            Err(VerifyError::BadSignature)
        );
        // Cobo's real keys did not sign the synthetic vectors.
        let wrong = no_window(Scheme::CoboWaas2(
            CoboWaas2::new(&["dev".into(), "prod".into()]).unwrap(),
        ));
        assert_eq!(
            verify(&wrong, &good, &body, now),
            Err(VerifyError::BadSignature)
        );
    }
}

/// The batched path gives the same answer and proof as the one-at-a-time path, request by
/// request, for the vectors and their one-character changes, under a replay window.
#[tokio::test(flavor = "current_thread")]
async fn cobo_waas2_batched_verification_answers_as_verify_does() {
    for v in vectors()["cobo_v2_ed25519"].as_array().unwrap() {
        let (body, ts, sig) = (s(v, "body"), s(v, "timestamp"), s(v, "signature_hex"));
        let verifier = SourceVerifier::new(
            Scheme::CoboWaas2(CoboWaas2::new(&[s(v, "pubkey_hex")]).unwrap()),
            Some(Duration::from_secs(300)),
        );
        let signed_at = UNIX_EPOCH + Duration::from_millis(ts.parse().unwrap());
        let cases = [
            (ts.clone(), sig.clone(), body.clone(), signed_at),
            (ts.clone(), sig.clone(), format!("{body} "), signed_at),
            (
                flip(&ts, ts.len() - 1),
                sig.clone(),
                body.clone(),
                signed_at,
            ),
            (ts.clone(), flip(&sig, 10), body.clone(), signed_at),
            (ts.clone(), flip(&sig, 100), body.clone(), signed_at),
            (ts.clone(), sig[..126].to_owned(), body.clone(), signed_at),
            (
                ts.clone(),
                sig.clone(),
                body.clone(),
                signed_at + Duration::from_secs(301),
            ),
        ];
        for (i, (ts, sig, body, now)) in cases.into_iter().enumerate() {
            let h = headers(&[("Biz-Timestamp", &ts), ("Biz-Resp-Signature", &sig)]);
            let incoming = || IncomingWebhook {
                headers: h.clone(),
                body: Bytes::from(body.clone()),
            };
            let single = verifier.verify(incoming(), now).map(|w| w.proof().clone());
            let batched = verifier
                .verify_batched(incoming(), now)
                .await
                .map(|w| w.proof().clone());
            assert_eq!(batched, single, "{} case {i}", v["name"]);
            assert_eq!(single.is_ok(), i == 0, "{} case {i}: {single:?}", v["name"]);
        }
    }
}

#[test]
fn cobo_waas2_refuses_a_small_order_key() {
    let errors = CoboWaas2::new(&[format!("01{}", "00".repeat(31)), "dev".into()])
        .err()
        .unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("public_keys[0]: a small-order"),
        "{errors:?}"
    );
}

#[test]
fn cobo_cli_selftest_digest_and_key() {
    // Cobo's own CLI vector: Ed25519(sha256(sha256("000000"))) with the test key.
    let v = &vectors()["cobo_cli_signer_selftest"];
    let key = hookbridge_testkit::CoboWaas2::new(&s(v, "private_key_hex"));
    assert_eq!(key.public_key_hex(), s(v, "pubkey_hex"));
    assert_eq!(
        key.signature(s(v, "message").as_bytes()),
        s(v, "signature_hex")
    );
}

#[test]
fn cobo_waas1_official_vectors() {
    let all = vectors();
    for v in all["cobo_v1_ecdsa_secp256k1"].as_array().unwrap() {
        let verifier = no_window(Scheme::CoboWaas1(
            CoboWaas1::new(&["sandbox-legacy".into()]).unwrap(),
        ));
        let (body, ts, sig) = (s(v, "body"), s(v, "timestamp"), s(v, "signature_der_hex"));
        let now = SystemTime::now();
        let good = headers(&[("Biz-Timestamp", &ts), ("Biz-Resp-Signature", &sig)]);
        assert_eq!(
            verify(&verifier, &good, &body, now).unwrap().key.as_deref(),
            Some("sandbox-legacy")
        );
        assert_eq!(
            verify(&verifier, &good, &body.replacen('1', "2", 1), now),
            Err(VerifyError::BadSignature)
        );
        let ts2 = flip(&ts, 3);
        assert_eq!(
            verify(
                &verifier,
                &headers(&[("Biz-Timestamp", &ts2), ("Biz-Resp-Signature", &sig)]),
                &body,
                now
            ),
            Err(VerifyError::BadSignature)
        );
        // A flipped byte inside r keeps valid DER but breaks the signature.
        assert_eq!(
            verify(
                &verifier,
                &headers(&[
                    ("Biz-Timestamp", &ts),
                    ("Biz-Resp-Signature", &flip(&sig, 20))
                ]),
                &body,
                now
            ),
            Err(VerifyError::BadSignature)
        );
        let wrong = no_window(Scheme::CoboWaas1(
            CoboWaas1::new(&["dev".into(), "prod".into()]).unwrap(),
        ));
        assert_eq!(
            verify(&wrong, &good, &body, now),
            Err(VerifyError::BadSignature)
        );
    }
}

#[test]
fn cobo_waas1_accepts_high_s() {
    // Re-encode an official signature with s' = n - s: same signature mathematically, high-S form,
    // which Cobo's verifiers accept and k256 would reject without normalization.
    let v = &vectors()["cobo_v1_ecdsa_secp256k1"][0];
    let sig =
        k256::ecdsa::Signature::from_der(&hex::decode(s(v, "signature_der_hex")).unwrap()).unwrap();
    let (r, s_low) = sig.split_scalars();
    let high = k256::ecdsa::Signature::from_scalars(r, -*s_low).unwrap();
    assert!(
        high.normalize_s().is_some(),
        "the re-encoded signature is high-S"
    );
    let der = hex::encode(high.to_der().as_bytes());
    let verifier = no_window(Scheme::CoboWaas1(
        CoboWaas1::new(&["sandbox-legacy".into()]).unwrap(),
    ));
    let h = headers(&[
        ("Biz-Timestamp", &s(v, "timestamp")),
        ("Biz-Resp-Signature", &der),
    ]);
    verify(&verifier, &h, &s(v, "body"), SystemTime::now()).unwrap();
}

#[test]
fn standard_webhooks_v1_official_vectors() {
    let all = vectors();
    for v in all["standard_webhooks_v1_hmac"].as_array().unwrap() {
        let verifier = SourceVerifier::new(
            Scheme::StandardWebhooks(StandardWebhooks::new(&[s(v, "secret")], &[]).unwrap()),
            Some(Duration::from_secs(300)),
        );
        let ts: u64 = s(v, "timestamp").parse().unwrap();
        let (id, tss, sig, body) = (
            s(v, "msg_id"),
            s(v, "timestamp"),
            s(v, "signature"),
            s(v, "payload"),
        );
        let good = headers(&[
            ("webhook-id", &id),
            ("webhook-timestamp", &tss),
            ("webhook-signature", &sig),
        ]);
        let proof = verify(&verifier, &good, &body, at(ts + 10)).unwrap();
        assert_eq!(proof.message_id.as_deref(), Some(id.as_str()));
        // Svix header names, and a list with an unknown version and a wrong v1 before the right one.
        let list = format!("v2,AAAA v1,{} {sig}", "A".repeat(44));
        let svix = headers(&[
            ("svix-id", &id),
            ("svix-timestamp", &tss),
            ("svix-signature", &list),
        ]);
        verify(&verifier, &svix, &body, at(ts)).unwrap();

        assert_eq!(
            verify(&verifier, &good, &format!("{body}x"), at(ts)),
            Err(VerifyError::BadSignature)
        );
        let other_id = headers(&[
            ("webhook-id", &format!("{id}x")),
            ("webhook-timestamp", &tss),
            ("webhook-signature", &sig),
        ]);
        assert_eq!(
            verify(&verifier, &other_id, &body, at(ts)),
            Err(VerifyError::BadSignature)
        );
        let ts2 = (ts + 1).to_string();
        let other_ts = headers(&[
            ("webhook-id", &id),
            ("webhook-timestamp", &ts2),
            ("webhook-signature", &sig),
        ]);
        assert_eq!(
            verify(&verifier, &other_ts, &body, at(ts)),
            Err(VerifyError::BadSignature)
        );
        // Replay window: 6 minutes either way.
        assert_eq!(
            verify(&verifier, &good, &body, at(ts + 360)),
            Err(VerifyError::StaleTimestamp(360))
        );
        assert_eq!(
            verify(&verifier, &good, &body, at(ts - 360)),
            Err(VerifyError::FutureTimestamp(360))
        );
        let wrong = SourceVerifier::new(
            Scheme::StandardWebhooks(
                StandardWebhooks::new(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSx".into()], &[])
                    .unwrap(),
            ),
            None,
        );
        assert_eq!(
            verify(&wrong, &good, &body, at(ts)),
            Err(VerifyError::BadSignature)
        );
    }
}

/// The official Standard Webhooks `v1a` vector: a verifier trusting its key, and its message
/// ID, timestamp, signature header and payload.
fn v1a_vector() -> (SourceVerifier, String, String, String, String) {
    let v = &vectors()["standard_webhooks_v1a_ed25519"][0];
    let verifier = no_window(Scheme::StandardWebhooks(
        StandardWebhooks::new(&[], &[s(v, "public_key")]).unwrap(),
    ));
    (
        verifier,
        s(v, "msg_id"),
        s(v, "timestamp"),
        s(v, "signature"),
        s(v, "payload"),
    )
}

#[test]
fn standard_webhooks_v1a_vector() {
    let (verifier, id, ts, sig, body) = v1a_vector();
    let good = headers(&[
        ("webhook-id", &id),
        ("webhook-timestamp", &ts),
        ("webhook-signature", &sig),
    ]);
    verify(&verifier, &good, &body, SystemTime::now()).unwrap();
    assert_eq!(
        verify(&verifier, &good, &format!(" {body}"), SystemTime::now()),
        Err(VerifyError::BadSignature)
    );
    let bad = headers(&[
        ("webhook-id", &id),
        ("webhook-timestamp", &ts),
        ("webhook-signature", &flip(&sig, 8)),
    ]);
    assert_eq!(
        verify(&verifier, &bad, &body, SystemTime::now()),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn stripe_vector() {
    let v = &vectors()["stripe"][0];
    let verifier = SourceVerifier::new(
        Scheme::Stripe(Stripe::new(vec![s(v, "secret").into_bytes()]).unwrap()),
        Some(Duration::from_secs(300)),
    );
    let (hdr, body) = (s(v, "stripe_signature_header"), s(v, "payload"));
    let ts: u64 = s(v, "timestamp").parse().unwrap();
    verify(
        &verifier,
        &headers(&[("Stripe-Signature", &hdr)]),
        &body,
        at(ts + 299),
    )
    .unwrap();
    assert_eq!(
        verify(
            &verifier,
            &headers(&[("Stripe-Signature", &hdr)]),
            &format!("{body}\n"),
            at(ts)
        ),
        Err(VerifyError::BadSignature)
    );
    let other_t = hdr.replace("t=1700000000", "t=1700000001");
    assert_eq!(
        verify(
            &verifier,
            &headers(&[("Stripe-Signature", &other_t)]),
            &body,
            at(ts)
        ),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        verify(
            &verifier,
            &headers(&[("Stripe-Signature", &flip(&hdr, 20))]),
            &body,
            at(ts)
        ),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        verify(
            &verifier,
            &headers(&[("Stripe-Signature", &hdr)]),
            &body,
            at(ts + 301)
        ),
        Err(VerifyError::StaleTimestamp(301))
    );
    // v0 (Stripe's test-mode legacy scheme) is never accepted.
    let v0 = hdr.replace("v1=", "v0=");
    assert!(matches!(
        verify(
            &verifier,
            &headers(&[("Stripe-Signature", &v0)]),
            &body,
            at(ts)
        ),
        Err(VerifyError::MalformedHeader { .. })
    ));
}

#[test]
fn github_and_shopify_vectors_through_generic_hmac() {
    let all = vectors();
    let gh = &all["github"][0];
    let verifier = no_window(Scheme::HmacSha256(
        HmacSha256::new(
            "X-Hub-Signature-256",
            Encoding::Hex,
            Some("sha256=".into()),
            vec![s(gh, "secret").into_bytes()],
        )
        .unwrap(),
    ));
    let sig = s(gh, "x_hub_signature_256");
    let body = s(gh, "payload");
    verify(
        &verifier,
        &headers(&[("x-hub-signature-256", &sig)]),
        &body,
        SystemTime::now(),
    )
    .unwrap();
    // Upper-case hex decodes to the same MAC.
    let upper = format!("sha256={}", sig["sha256=".len()..].to_uppercase());
    verify(
        &verifier,
        &headers(&[("x-hub-signature-256", &upper)]),
        &body,
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(
        verify(
            &verifier,
            &headers(&[("x-hub-signature-256", &sig)]),
            "Hello, World?",
            SystemTime::now()
        ),
        Err(VerifyError::BadSignature)
    );
    assert!(matches!(
        verify(
            &verifier,
            &headers(&[("x-hub-signature-256", &sig[7..])]),
            &body,
            SystemTime::now()
        ),
        Err(VerifyError::MalformedHeader {
            reason: "missing the configured prefix",
            ..
        })
    ));

    let sh = &all["shopify"][0];
    let verifier = no_window(Scheme::HmacSha256(
        HmacSha256::new(
            "X-Shopify-Hmac-Sha256",
            Encoding::Base64,
            None,
            vec![b"old-secret".to_vec(), s(sh, "secret").into_bytes()],
        )
        .unwrap(),
    ));
    let sig = s(sh, "x_shopify_hmac_sha256");
    // The second secret matches: rotation.
    let proof = verify(
        &verifier,
        &headers(&[("X-Shopify-Hmac-Sha256", &sig)]),
        &s(sh, "body"),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(proof.key.as_deref(), Some("key#2"));
    assert_eq!(
        verify(
            &verifier,
            &headers(&[("X-Shopify-Hmac-Sha256", &flip(&sig, 5))]),
            &s(sh, "body"),
            SystemTime::now()
        ),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn slack_vector() {
    let v = &vectors()["slack"][0];
    let verifier = SourceVerifier::new(
        Scheme::Slack(Slack::new(vec![s(v, "signing_secret").into_bytes()]).unwrap()),
        Some(Duration::from_secs(300)),
    );
    let ts: u64 = s(v, "timestamp").parse().unwrap();
    let h = headers(&[
        ("X-Slack-Request-Timestamp", &s(v, "timestamp")),
        ("X-Slack-Signature", &s(v, "x_slack_signature")),
    ]);
    verify(&verifier, &h, &s(v, "body"), at(ts)).unwrap();
    assert_eq!(
        verify(
            &verifier,
            &h,
            &s(v, "body").replace("foobar", "foobaz"),
            at(ts)
        ),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        verify(&verifier, &h, &s(v, "body"), at(ts + 400)),
        Err(VerifyError::StaleTimestamp(400))
    );
}

#[test]
fn rsa_vector_with_both_pem_forms() {
    let v = &vectors()["rsa_sha256_pkcs1v15_base64"][0];
    for pem_field in ["public_key_spki_pem", "public_key_pkcs1_pem"] {
        let scheme =
            RsaSha256::new("X-Signature", &[("public_keys[0]".into(), s(v, pem_field))]).unwrap();
        let verifier = no_window(Scheme::RsaSha256(scheme));
        let sig = s(v, "x_signature");
        verify(
            &verifier,
            &headers(&[("X-Signature", &sig)]),
            &s(v, "body"),
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(
            verify(
                &verifier,
                &headers(&[("X-Signature", &sig)]),
                &s(v, "body").replacen('4', "5", 1),
                SystemTime::now()
            ),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify(
                &verifier,
                &headers(&[("X-Signature", &flip(&sig, 30))]),
                &s(v, "body"),
                SystemTime::now()
            ),
            Err(VerifyError::BadSignature)
        );
    }
    // A configurable header name.
    let scheme = RsaSha256::new(
        "X-Signature-SHA256",
        &[("k".into(), s(v, "public_key_spki_pem"))],
    )
    .unwrap();
    verify(
        &no_window(Scheme::RsaSha256(scheme)),
        &headers(&[("X-Signature-SHA256", &s(v, "x_signature"))]),
        &s(v, "body"),
        SystemTime::now(),
    )
    .unwrap();
}

#[test]
fn shared_secret_is_exact() {
    let verifier = no_window(Scheme::SharedSecret(
        SharedSecret::new("X-Token", &["s3cret".into()]).unwrap(),
    ));
    let proof = verify(
        &verifier,
        &headers(&[("X-Token", "s3cret")]),
        "{}",
        SystemTime::now(),
    )
    .unwrap();
    assert!(
        proof.signature.is_none(),
        "the secret must not be carried into the event"
    );
    for wrong in ["s3cre", "s3cret ", "S3cret", ""] {
        assert_eq!(
            verify(
                &verifier,
                &headers(&[("X-Token", wrong)]),
                "{}",
                SystemTime::now()
            ),
            Err(VerifyError::BadSignature)
        );
    }
    assert_eq!(
        verify(&verifier, &HeaderMap::new(), "{}", SystemTime::now()),
        Err(VerifyError::MissingHeader("x-token"))
    );
}

#[test]
fn malformed_headers_never_panic() {
    let schemes: Vec<SourceVerifier> = vec![
        no_window(Scheme::CoboWaas2(CoboWaas2::new(&["dev".into()]).unwrap())),
        no_window(Scheme::CoboWaas1(CoboWaas1::new(&["dev".into()]).unwrap())),
        no_window(Scheme::StandardWebhooks(
            StandardWebhooks::new(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()], &[]).unwrap(),
        )),
        no_window(Scheme::Stripe(Stripe::new(vec![b"x".to_vec()]).unwrap())),
        no_window(Scheme::Slack(Slack::new(vec![b"x".to_vec()]).unwrap())),
        no_window(Scheme::HmacSha256(
            HmacSha256::new(
                "x-sig",
                Encoding::Base64,
                Some("sha256=".into()),
                vec![b"x".to_vec()],
            )
            .unwrap(),
        )),
    ];
    let junk = [
        "",
        "zz",
        "0",
        "00",
        &"f".repeat(129),
        &"0".repeat(10_000),
        "v1,",
        "v1a,!!",
        "t=,v1=",
        "t=1,t=2,v1=00",
        "sha256=",
        "sha256=zz",
        "=,=",
        "-1",
        "99999999999999999999",
    ];
    let names = [
        "biz-timestamp",
        "biz-resp-signature",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "stripe-signature",
        "x-slack-signature",
        "x-slack-request-timestamp",
        "x-sig",
    ];
    for v in &schemes {
        for j in junk {
            let mut h = HeaderMap::new();
            for n in names {
                h.insert(
                    HeaderName::from_static(n),
                    HeaderValue::from_str(j).unwrap(),
                );
            }
            assert!(verify(v, &h, "{}", SystemTime::now()).is_err());
        }
        // Non-ASCII header bytes and a repeated signature header.
        let mut h = HeaderMap::new();
        for n in names {
            h.insert(
                HeaderName::from_static(n),
                HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
            );
            h.append(HeaderName::from_static(n), HeaderValue::from_static("1"));
        }
        assert!(verify(v, &h, "\u{0}", SystemTime::now()).is_err());
    }
}

#[test]
fn bad_keys_are_rejected_at_construction() {
    assert!(CoboWaas2::new(&["staging".into()]).is_err());
    assert!(CoboWaas2::new(&["abcd".into()]).is_err());
    assert!(CoboWaas2::new(&[]).is_err());
    assert!(CoboWaas1::new(&[format!("04{}", "00".repeat(64))]).is_err());
    assert!(
        RsaSha256::new(
            "X-Signature",
            &[(
                "k".into(),
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----".into()
            )]
        )
        .is_err()
    );
    assert!(StandardWebhooks::new(&["whsec_***".into()], &[]).is_err());
    assert!(StandardWebhooks::new(&[], &["whpk_AAAA".into()]).is_err());
    assert!(HmacSha256::new("bad header", Encoding::Hex, None, vec![b"x".to_vec()]).is_err());
    assert!(SharedSecret::new("x-token", &[String::new()]).is_err());
    // Errors name the position, never the value.
    let err = CoboWaas2::new(&["not-a-key-but-maybe-a-secret".into()])
        .err()
        .unwrap();
    assert!(!err.concat().contains("maybe-a-secret"));
}

#[test]
fn signature_lists_are_deduplicated_and_capped_before_anything_is_hashed() {
    use base64::Engine as _;
    use hookbridge_testkit::bogus_v1a as bogus;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let (verifier, id, ts, sig, body) = v1a_vector();
    let with = |list: &str| {
        headers(&[
            ("webhook-id", &id),
            ("webhook-timestamp", &ts),
            ("webhook-signature", list),
        ])
    };
    // The issue's attack: bogus v1a entries (R = the base point, s = i), each distinct.
    let nine: Vec<String> = (0..9).map(bogus).collect();
    assert!(matches!(
        verify(
            &verifier,
            &with(&format!("{} {sig}", nine.join(" "))),
            &body,
            SystemTime::now()
        ),
        Err(VerifyError::MalformedHeader {
            reason: "more than 8 distinct signatures",
            ..
        })
    ));
    // Repeats are one entry: 200 copies of one bogus signature and the genuine one pass.
    let repeated = vec![bogus(1); 200].join(" ");
    verify(
        &verifier,
        &with(&format!("{repeated} {sig}")),
        &body,
        SystemTime::now(),
    )
    .unwrap();
    // Seven bogus and the genuine one: within the cap.
    let seven = (0..7).map(bogus).collect::<Vec<_>>().join(" ");
    verify(
        &verifier,
        &with(&format!("{seven} {sig}")),
        &body,
        SystemTime::now(),
    )
    .unwrap();
    // v1 MACs of the wrong length are not candidates at all.
    assert!(matches!(
        verify(
            &verifier,
            &with(&format!("v1,{}", b64(b"short"))),
            &body,
            SystemTime::now()
        ),
        Err(VerifyError::MalformedHeader { .. })
    ));

    // Stripe: nine distinct v1 entries are refused before any MAC is computed.
    let stripe = no_window(Scheme::Stripe(
        Stripe::new(vec![b"whsec_x".to_vec()]).unwrap(),
    ));
    let entries: Vec<String> = (0..9u8)
        .map(|i| format!("v1={}", hex::encode([i; 32])))
        .collect();
    let hdr = format!("t=1700000000,{}", entries.join(","));
    assert!(matches!(
        verify(
            &stripe,
            &headers(&[("Stripe-Signature", &hdr)]),
            "{}",
            SystemTime::now()
        ),
        Err(VerifyError::MalformedHeader {
            reason: "more than 8 distinct signatures",
            ..
        })
    ));
}

/// Zoom publishes no vector: signed the way its docs describe (`v0:ts:body`, hex), by the test
/// kit; the Slack vector's construction under Zoom's header names.
#[test]
fn zoom_signature_and_window() {
    let body = r#"{"event":"meeting.started","event_ts":1626230691572,"payload":{}}"#;
    let verifier = SourceVerifier::new(
        Scheme::Zoom(Zoom::new(vec![b"old".to_vec(), b"zoom-secret".to_vec()]).unwrap()),
        Some(Duration::from_secs(300)),
    );
    let ts = 1_700_000_000;
    let signed = hookbridge_testkit::header_map(
        &hookbridge_testkit::Zoom::new("zoom-secret").sign(ts, body.as_bytes()),
    );
    let proof = verify(&verifier, &signed, body, at(ts)).unwrap();
    assert_eq!(
        (proof.scheme, proof.key.as_deref()),
        ("zoom", Some("key#2"))
    );
    assert_eq!(
        verify(
            &verifier,
            &signed,
            &body.replace("started", "ended"),
            at(ts)
        ),
        Err(VerifyError::BadSignature)
    );
    let mut later = signed.clone();
    later.insert("x-zm-request-timestamp", HeaderValue::from(ts + 1));
    assert_eq!(
        verify(&verifier, &later, body, at(ts)),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        verify(&verifier, &signed, body, at(ts + 301)),
        Err(VerifyError::StaleTimestamp(301))
    );
}

/// The handshake hook: asked of verified requests only, it answers Slack's and Zoom's own
/// handshakes and nothing else (an event that merely mentions one is an event).
#[test]
fn handshakes_are_recognised_by_their_top_level_type_only() {
    let slack = SourceVerifier::new(
        Scheme::Slack(Slack::new(vec![b"s".to_vec()]).unwrap()),
        None,
    );
    let ask = |v: &SourceVerifier, h: HeaderMap, body: &str| {
        let w = v
            .verify(
                IncomingWebhook {
                    headers: h,
                    body: Bytes::from(body.to_owned()),
                },
                SystemTime::now(),
            )
            .unwrap();
        v.scheme().handshake(&w)
    };
    let signed = |body: &str| {
        hookbridge_testkit::header_map(
            &hookbridge_testkit::Slack::new("s").sign(1, body.as_bytes()),
        )
    };
    let body = r#"{"token":"t","challenge":"abc-123_XYZ","type":"url_verification"}"#;
    let answer = ask(&slack, signed(body), body).unwrap().unwrap();
    assert_eq!(
        (answer.kind(), answer.content_type(), &answer.body()[..]),
        ("url_verification", "text/plain", &b"abc-123_XYZ"[..])
    );
    for not_one in [
        r#"{"type":"event_callback","event":{"type":"url_verification","challenge":"x"}}"#,
        "token=x&text=url_verification",
        r#"{"type":"event_callback","challenge":"url_verification"}"#,
    ] {
        assert_eq!(ask(&slack, signed(not_one), not_one), Ok(None), "{not_one}");
    }
    for bad in [
        r#"{"type":"url_verification"}"#,
        r#"{"type":"url_verification","challenge":7}"#,
        r#"{"type":"url_verification","challenge":""}"#,
        r#"{"type":"url_verification","challenge":"a b"}"#,
        &format!(
            r#"{{"type":"url_verification","challenge":"{}"}}"#,
            "a".repeat(257)
        ),
    ] {
        assert!(
            matches!(
                ask(&slack, signed(bad), bad),
                Err(HandshakeError::Malformed { .. })
            ),
            "{bad}"
        );
    }

    // Zoom answers with the secret that verified the request.
    let zoom = SourceVerifier::new(
        Scheme::Zoom(Zoom::new(vec![b"one".to_vec(), b"two".to_vec()]).unwrap()),
        None,
    );
    let body = r#"{"payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1,"event":"endpoint.url_validation"}"#;
    let kit = hookbridge_testkit::Zoom::new("two");
    let answer = ask(
        &zoom,
        hookbridge_testkit::header_map(&kit.sign(1, body.as_bytes())),
        body,
    )
    .unwrap()
    .unwrap();
    let json: Value = serde_json::from_slice(answer.body()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"plainToken": "qgg8vlvZRS6UYooatFL8Aw", "encryptedToken": kit.encrypted_token("qgg8vlvZRS6UYooatFL8Aw")})
    );
    // Other schemes have no handshake, even for a body that looks like one.
    let hmac = no_window(Scheme::HmacSha256(
        HmacSha256::new("x-sig", Encoding::Hex, None, vec![b"k".to_vec()]).unwrap(),
    ));
    let body = r#"{"token":"t","challenge":"abc","type":"url_verification"}"#;
    let h = hookbridge_testkit::header_map(
        &hookbridge_testkit::HmacSha256::new("x-sig", "", hookbridge_testkit::Encoding::Hex, b"k")
            .sign(body.as_bytes()),
    );
    assert_eq!(ask(&hmac, h, body), Ok(None));
}

/// Twilio's SDK vectors (form parameters, repeated names, an explicit `:443`), against a source
/// configured with the URL as Twilio was given it.
#[test]
fn twilio_vectors() {
    for v in vectors()["twilio"].as_array().unwrap() {
        let pairs: Vec<(String, String)> = match (v.get("params"), v.get("param_pairs")) {
            (Some(p), _) => p
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect(),
            (None, Some(p)) => p
                .as_array()
                .unwrap()
                .iter()
                .map(|kv| {
                    (
                        kv[0].as_str().unwrap().to_owned(),
                        kv[1].as_str().unwrap().to_owned(),
                    )
                })
                .collect(),
            // bodySHA256 (JSON bodies) is not supported: below.
            (None, None) => continue,
        };
        let body = pairs
            .iter()
            .fold(
                form_urlencoded::Serializer::new(String::new()),
                |mut f, (k, v)| {
                    f.append_pair(k, v);
                    f
                },
            )
            .finish();
        // Configured without the port: the `:443` vector verifies through the port variant.
        let verifier = no_window(Scheme::Twilio(
            Twilio::new(
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                vec![b"wrong".to_vec(), s(v, "auth_token").into_bytes()],
            )
            .unwrap(),
        ));
        let sig = s(v, "x_twilio_signature");
        let h = headers(&[("X-Twilio-Signature", &sig)]);
        let proof = verify(&verifier, &h, &body, SystemTime::now()).unwrap();
        assert_eq!(proof.key.as_deref(), Some("key#2"), "{}", s(v, "name"));
        // Parameters in another order are the same request.
        let reversed = body.split('&').rev().collect::<Vec<_>>().join("&");
        verify(&verifier, &h, &reversed, SystemTime::now()).unwrap();
        // One changed value, one extra parameter, another URL: refused.
        for tampered in [body.replacen("1234", "1235", 1), format!("{body}&Extra=1")] {
            assert_eq!(
                verify(&verifier, &h, &tampered, SystemTime::now()),
                Err(VerifyError::BadSignature)
            );
        }
        let elsewhere = no_window(Scheme::Twilio(
            Twilio::new(
                "https://mycompany.com/other.php?foo=1&bar=2",
                vec![s(v, "auth_token").into_bytes()],
            )
            .unwrap(),
        ));
        assert_eq!(
            verify(&elsewhere, &h, &body, SystemTime::now()),
            Err(VerifyError::BadSignature)
        );
    }
    // The JSON-body form signs a per-request bodySHA256 URL: not verifiable here, so refused.
    let j = &vectors()["twilio"][1];
    let verifier = no_window(Scheme::Twilio(
        Twilio::new(&s(j, "url"), vec![s(j, "auth_token").into_bytes()]).unwrap(),
    ));
    assert_eq!(
        verify(
            &verifier,
            &headers(&[("X-Twilio-Signature", &s(j, "x_twilio_signature"))]),
            &s(j, "body"),
            SystemTime::now()
        ),
        Err(VerifyError::BadSignature)
    );
    assert!(Twilio::new("/relative", vec![b"k".to_vec()]).is_err());
    assert!(Twilio::new("ftp://example.com/x", vec![b"k".to_vec()]).is_err());
}

/// The GitHub and Shopify presets against the providers' vectors, with their own header names.
#[test]
fn github_and_shopify_presets() {
    let all = vectors();
    let gh = &all["github"][0];
    let verifier = no_window(Scheme::GitHub(
        HmacSha256::github(vec![s(gh, "secret").into_bytes()]).unwrap(),
    ));
    let h = headers(&[("X-Hub-Signature-256", &s(gh, "x_hub_signature_256"))]);
    assert_eq!(
        verify(&verifier, &h, &s(gh, "payload"), SystemTime::now())
            .unwrap()
            .scheme,
        "github"
    );
    assert_eq!(
        verify(&verifier, &h, "Hello, World?", SystemTime::now()),
        Err(VerifyError::BadSignature)
    );
    let sh = &all["shopify"][0];
    let verifier = no_window(Scheme::Shopify(
        HmacSha256::shopify(vec![s(sh, "secret").into_bytes()]).unwrap(),
    ));
    let h = headers(&[("X-Shopify-Hmac-Sha256", &s(sh, "x_shopify_hmac_sha256"))]);
    verify(&verifier, &h, &s(sh, "body"), SystemTime::now()).unwrap();
    assert_eq!(
        verify(&verifier, &h, r#"{"id":2}"#, SystemTime::now()),
        Err(VerifyError::BadSignature)
    );
}

/// Square and Paddle publish no vectors: signed as their docs describe, by the test kit.
#[test]
fn square_and_paddle() {
    let url = "https://hooks.example.com/hooks/square";
    let body = r#"{"merchant_id":"M1","type":"payment.updated","event_id":"e-1"}"#;
    let verifier = no_window(Scheme::Square(
        Square::new(url, vec![b"sq-key".to_vec()]).unwrap(),
    ));
    let h = hookbridge_testkit::header_map(
        &hookbridge_testkit::Square::new(url, "sq-key").sign(body.as_bytes()),
    );
    verify(&verifier, &h, body, SystemTime::now()).unwrap();
    assert_eq!(
        verify(&verifier, &h, &body.replace("M1", "M2"), SystemTime::now()),
        Err(VerifyError::BadSignature)
    );
    // Signed for another URL: refused.
    let other = hookbridge_testkit::header_map(
        &hookbridge_testkit::Square::new("https://evil.example/x", "sq-key").sign(body.as_bytes()),
    );
    assert_eq!(
        verify(&verifier, &other, body, SystemTime::now()),
        Err(VerifyError::BadSignature)
    );

    let verifier = SourceVerifier::new(
        Scheme::Paddle(Paddle::new(vec![b"pdl_ntfset_x".to_vec()]).unwrap()),
        Some(Duration::from_secs(5)),
    );
    let paddle = hookbridge_testkit::Paddle::new("pdl_ntfset_x");
    let ts = 1_700_000_000;
    let h = hookbridge_testkit::header_map(&paddle.sign(ts, body.as_bytes()));
    let proof = verify(&verifier, &h, body, at(ts)).unwrap();
    assert_eq!(proof.timestamp.as_deref(), Some("1700000000"));
    assert_eq!(
        verify(&verifier, &h, &body.replace("M1", "M2"), at(ts)),
        Err(VerifyError::BadSignature)
    );
    assert_eq!(
        verify(&verifier, &h, body, at(ts + 6)),
        Err(VerifyError::StaleTimestamp(6))
    );
    // Rotation: two h1 entries, the second genuine.
    let genuine = h["paddle-signature"].to_str().unwrap().to_owned();
    let rotated = genuine.replacen(";h1=", &format!(";h1={};h1=", "ab".repeat(32)), 1);
    verify(
        &verifier,
        &headers(&[("Paddle-Signature", &rotated)]),
        body,
        at(ts),
    )
    .unwrap();
    // The timestamp is signed.
    let moved = genuine.replacen("ts=1700000000", "ts=1700000001", 1);
    assert_eq!(
        verify(
            &verifier,
            &headers(&[("Paddle-Signature", &moved)]),
            body,
            at(ts)
        ),
        Err(VerifyError::BadSignature)
    );
    for bad in ["h1=00", "ts=1;ts=2;h1=00", "ts=x;h1=00", "ts=1"] {
        assert!(
            matches!(
                verify(
                    &verifier,
                    &headers(&[("Paddle-Signature", bad)]),
                    body,
                    at(ts)
                ),
                Err(VerifyError::MalformedHeader { .. })
            ),
            "{bad}"
        );
    }
}
