//! Each signer reproduces the known-answer vectors in `tests/fixtures/providers.json` byte for
//! byte. Where the provider's private key is not published (Cobo WaaS 1.0, Wise's RSA), the
//! official signature is checked over the message this kit builds, and a signature made with a
//! test key is checked with its public half.

use serde_json::Value;

use super::*;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/providers.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("the vectors file"))
        .expect("the vectors are JSON")
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("vector field {k}"))
        .to_owned()
}

fn ts(v: &Value, k: &str) -> u64 {
    s(v, k).parse().expect("a numeric timestamp")
}

fn h(pairs: &[(&str, &str)]) -> Headers {
    pairs.iter().map(|(k, v)| pair(k, *v)).collect()
}

#[test]
fn cobo_waas2_vectors() {
    for v in vectors()["cobo_v2_ed25519"].as_array().expect("a list") {
        let signer = CoboWaas2::new(&s(v, "private_key_hex"));
        assert_eq!(signer.public_key_hex(), s(v, "pubkey_hex"));
        let (body, t) = (s(v, "body"), s(v, "timestamp"));
        assert_eq!(
            hex::encode(cobo_digest(format!("{body}|{t}").as_bytes())),
            s(v, "message_sha256d_hex")
        );
        assert_eq!(
            signer.sign(body.as_bytes(), &t),
            h(&[
                ("Biz-Timestamp", &t),
                ("Biz-Resp-Signature", &s(v, "signature_hex"))
            ]),
            "{}",
            v["name"]
        );
    }
}

#[test]
fn cobo_cli_selftest_and_test_key() {
    let v = &vectors()["cobo_cli_signer_selftest"];
    assert_eq!(s(v, "private_key_hex"), keys::COBO_TEST_SEED_HEX);
    assert_eq!(s(v, "pubkey_hex"), keys::COBO_TEST_PUBKEY_HEX);
    let signer = CoboWaas2::test_key();
    assert_eq!(signer.public_key_hex(), keys::COBO_TEST_PUBKEY_HEX);
    assert_eq!(
        signer.signature(s(v, "message").as_bytes()),
        s(v, "signature_hex")
    );
}

#[test]
fn cobo_waas1_message_matches_the_official_vectors_and_the_test_key_signs_it() {
    use k256::ecdsa::signature::hazmat::PrehashVerifier as _;
    let verify = |pubkey_hex: &str, body: &str, t: &str, der_hex: &str| {
        let key = k256::ecdsa::VerifyingKey::from_sec1_bytes(&hex::decode(pubkey_hex).unwrap())
            .expect("a SEC1 public key");
        let sig = k256::ecdsa::Signature::from_der(&hex::decode(der_hex).unwrap())
            .expect("a DER signature");
        // Cobo's signatures may be high-S, which k256 refuses until normalised.
        let sig = sig.normalize_s().unwrap_or(sig);
        key.verify_prehash(&cobo_digest(format!("{body}|{t}").as_bytes()), &sig)
    };
    for v in vectors()["cobo_v1_ecdsa_secp256k1"]
        .as_array()
        .expect("a list")
    {
        verify(
            &s(v, "pubkey_compressed_hex"),
            &s(v, "body"),
            &s(v, "timestamp"),
            &s(v, "signature_der_hex"),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", v["name"]));
    }
    let signer = CoboWaas1::test_key();
    let (body, t) = (cobo_body("waas1"), "1701396866123");
    let headers = signer.sign(body.as_bytes(), t);
    assert_eq!(headers, signer.sign(body.as_bytes(), t), "RFC 6979");
    assert_eq!(headers[0], pair("Biz-Timestamp", t));
    assert_eq!(headers[1].0, "Biz-Resp-Signature");
    verify(&signer.public_key_hex(), &body, t, &headers[1].1).unwrap();
    assert!(
        verify(
            &signer.public_key_hex(),
            &body,
            "1701396866124",
            &headers[1].1
        )
        .is_err()
    );
}

#[test]
fn standard_webhooks_v1_vectors() {
    for v in vectors()["standard_webhooks_v1_hmac"]
        .as_array()
        .expect("a list")
    {
        let (id, t) = (s(v, "msg_id"), s(v, "timestamp"));
        assert_eq!(
            StandardV1::new(&s(v, "secret")).sign(
                &id,
                ts(v, "timestamp"),
                s(v, "payload").as_bytes()
            ),
            h(&[
                ("webhook-id", &id),
                ("webhook-timestamp", &t),
                ("webhook-signature", &s(v, "signature"))
            ]),
            "{}",
            v["name"]
        );
    }
}

#[test]
fn standard_webhooks_v1a_vector() {
    let v = &vectors()["standard_webhooks_v1a_ed25519"][0];
    let signer = StandardV1a::new(&s(v, "secret_key_seed_hex"));
    assert_eq!(signer.public_key(), s(v, "public_key"));
    let headers = signer.sign(
        &s(v, "msg_id"),
        ts(v, "timestamp"),
        s(v, "payload").as_bytes(),
    );
    assert_eq!(headers[2], pair("webhook-signature", s(v, "signature")));
}

#[test]
fn stripe_vector() {
    let v = &vectors()["stripe"][0];
    assert_eq!(
        Stripe::new(&s(v, "secret")).sign(ts(v, "timestamp"), s(v, "payload").as_bytes()),
        h(&[("Stripe-Signature", &s(v, "stripe_signature_header"))])
    );
}

#[test]
fn slack_vector() {
    let v = &vectors()["slack"][0];
    assert_eq!(
        Slack::new(&s(v, "signing_secret")).sign(ts(v, "timestamp"), s(v, "body").as_bytes()),
        h(&[
            ("X-Slack-Request-Timestamp", &s(v, "timestamp")),
            ("X-Slack-Signature", &s(v, "x_slack_signature"))
        ])
    );
}

#[test]
fn github_and_shopify_vectors() {
    let all = vectors();
    let gh = &all["github"][0];
    assert_eq!(
        HmacSha256::github(&s(gh, "secret")).sign(s(gh, "payload").as_bytes()),
        h(&[("X-Hub-Signature-256", &s(gh, "x_hub_signature_256"))])
    );
    let sh = &all["shopify"][0];
    assert_eq!(
        HmacSha256::shopify(&s(sh, "secret")).sign(s(sh, "body").as_bytes()),
        h(&[("X-Shopify-Hmac-Sha256", &s(sh, "x_shopify_hmac_sha256"))])
    );
}

/// Twilio's own SDK vectors: form parameters, repeated names, and the URL with `:443`.
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
            // The JSON-body vector (bodySHA256 in the URL) is not a form signature.
            (None, None) => continue,
        };
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            crate::Twilio::new(&s(v, "url"), &s(v, "auth_token")).signature(&pairs),
            s(v, "x_twilio_signature"),
            "{}",
            s(v, "name")
        );
    }
}

#[test]
fn rsa_signs_the_raw_body_as_the_official_vector_does() {
    use base64::Engine as _;
    use rsa::pkcs8::DecodePublicKey as _;
    use rsa::signature::Verifier as _;
    let verify = |spki_pem: &str, body: &str, sig_b64: &str| {
        let key = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(
            rsa::RsaPublicKey::from_public_key_pem(spki_pem).expect("an SPKI PEM"),
        );
        let sig = base64::engine::general_purpose::STANDARD
            .decode(sig_b64)
            .expect("base64");
        key.verify(
            body.as_bytes(),
            &rsa::pkcs1v15::Signature::try_from(sig.as_slice()).expect("a signature"),
        )
    };
    let v = &vectors()["rsa_sha256_pkcs1v15_base64"][0];
    verify(
        &s(v, "public_key_spki_pem"),
        &s(v, "body"),
        &s(v, "x_signature"),
    )
    .expect("the official vector");
    let signer = RsaSha256::from_pkcs8_pem("X-Signature", keys::BENCH_RSA_PRIVATE_PEM);
    let body = cobo_body("rsa");
    let headers = signer.sign(body.as_bytes());
    assert_eq!(headers[0].0, "X-Signature");
    verify(keys::BENCH_RSA_PUBLIC_PEM, &body, &headers[0].1).expect("the bench key pair");
    assert!(
        verify(
            keys::BENCH_RSA_PUBLIC_PEM,
            &format!("{body} "),
            &headers[0].1
        )
        .is_err()
    );
}

#[test]
fn bogus_signatures_are_distinct_well_formed_and_verify_under_no_key() {
    let entries: std::collections::HashSet<String> = (0..9).map(bogus_v1a).collect();
    assert_eq!(entries.len(), 9);
    assert!(bogus_v1a(3).starts_with("v1a,WGZm"), "{}", bogus_v1a(3));
    let key = ed25519_key(keys::COBO_TEST_SEED_HEX).verifying_key();
    let sig = ed25519_dalek::Signature::from_bytes(&bogus_ed25519_signature(1));
    assert!(
        ed25519_dalek::Verifier::verify(&key, b"anything", &sig).is_err(),
        "rejected only by the check itself"
    );
}

#[test]
fn header_map_keeps_repeats_and_lowercases() {
    let map = header_map(&h(&[("Biz-Timestamp", "1"), ("x-a", "1"), ("X-A", "2")]));
    assert_eq!(map["biz-timestamp"], "1");
    assert_eq!(map.get_all("x-a").iter().count(), 2);
}
