//! `hookbridge verify` through the real binary: captures written to a tempdir, signed with the
//! testkit's provider signers, each failure class named with its hint and exit status, and no
//! secret ever in the output.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use hookbridge_testkit as kit;

const STANDARD_SECRET: &str = kit::keys::BENCH_STANDARD_SECRET;
const INHOUSE_SECRET: &str = "inhouse-secret-value-9f2c";
/// `whsec_` and the base64 of `decoded-secret-text`.
const STRIPE_SECRET: &str = "whsec_ZGVjb2RlZC1zZWNyZXQtdGV4dA==";
/// A second Cobo key, trusted only by the `cobo-dev` source: the dev/prod mix-up.
const OTHER_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
/// Fixed clock: captures are signed at `TS_MS`, checked at `NOW`.
const NOW: &str = "1700000100";
const TS_MS: &str = "1700000000000";

struct Fixture {
    dir: tempfile::TempDir,
    config: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookbridge.toml");
    let other = kit::CoboWaas2::new(OTHER_SEED).public_key_hex();
    std::fs::write(
        &config,
        format!(
            r#"
[sources.cobo]
replay_window_secs = 300
verify = {{ scheme = "cobo-waas2", public_keys = ["{}", "prod"] }}

[sources.cobo-dev]
verify = {{ scheme = "cobo-waas2", public_keys = ["{other}"] }}

[sources.cobo1]
verify = {{ scheme = "cobo-waas1", public_keys = ["dev"] }}

[sources.standard]
verify = {{ scheme = "standard-webhooks", secrets = ["{STANDARD_SECRET}"] }}

[sources.stripe]
verify = {{ scheme = "stripe", secrets = ["{STRIPE_SECRET}"] }}

[sources.inhouse]
verify = {{ scheme = "hmac-sha256", header = "X-Signature", encoding = "hex", secrets = ["{INHOUSE_SECRET}"] }}
"#,
            kit::CoboWaas2::test_key().public_key_hex()
        ),
    )
    .unwrap();
    Fixture { dir, config }
}

/// A raw HTTP/1.1 request with CRLF line endings.
fn request(headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut out = b"POST /hooks/x HTTP/1.1\r\nHost: hooks.example.com\r\n".to_vec();
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

fn verify(f: &Fixture, source: &str, capture: &[u8], extra: &[&str]) -> Run {
    let path = f.dir.path().join("capture.http");
    std::fs::write(&path, capture).unwrap();
    verify_file(&f.config, source, &path, extra)
}

fn verify_file(config: &Path, source: &str, capture: &Path, extra: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_hookbridge"))
        .args(["verify", "--source", source, "--config"])
        .arg(config)
        .arg("--request")
        .arg(capture)
        .args(extra)
        .args(if extra.contains(&"--now") {
            &[][..]
        } else {
            &["--now", NOW][..]
        })
        .output()
        .unwrap();
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    // Never a secret, whatever the outcome.
    for secret in [
        STANDARD_SECRET,
        STANDARD_SECRET.trim_start_matches("whsec_"),
        INHOUSE_SECRET,
        STRIPE_SECRET,
        "ZGVjb2RlZC1zZWNyZXQtdGV4dA",
        "decoded-secret-text",
        kit::keys::COBO_TEST_SEED_HEX,
        OTHER_SEED,
    ] {
        assert!(
            !run.all().contains(secret),
            "a secret was printed:\n{}",
            run.all()
        );
    }
    run
}

fn cobo_body(event_id: &str) -> String {
    format!(r#"{{"event_id":"{event_id}","type":"wallets.transaction.succeeded","amount":"1"}}"#)
}

/// Cobo's docs spell the headers with underscores, as a capture behind a fixed proxy has them.
fn underscored(headers: kit::Headers) -> kit::Headers {
    headers
        .into_iter()
        .map(|(n, v)| (n.to_ascii_uppercase().replace('-', "_"), v))
        .collect()
}

#[test]
fn a_verified_capture_shows_the_key_the_skew_and_the_event() {
    let f = fixture();
    let body = cobo_body("evt-verified-1");
    let headers = underscored(kit::CoboWaas2::test_key().sign(body.as_bytes(), TS_MS));
    let run = verify(&f, "cobo", &request(&headers, body.as_bytes()), &[]);
    assert_eq!(run.code, Some(0), "{}", run.all());
    let out = &run.stdout;
    assert!(
        out.contains("biz_timestamp                present"),
        "{out}"
    );
    assert!(
        out.contains("biz-timestamp                missing"),
        "{out}"
    );
    assert!(
        out.contains("key#1                        matched"),
        "{out}"
    );
    assert!(
        out.contains("prod                         not tried"),
        "{out}"
    );
    assert!(out.contains("skew +100.000 s"), "{out}");
    assert!(out.contains("window 300 s"), "{out}");
    assert!(
        out.contains("event id:   evt-verified-1 (from body:/event_id)"),
        "{out}"
    );
    assert!(
        out.contains("event type: wallets.transaction.succeeded"),
        "{out}"
    );
    assert!(out.contains("result: verified"), "{out}");
    // The same report as JSON.
    let capture = request(&headers, body.as_bytes());
    let run = verify(&f, "cobo", &capture, &["--json"]);
    assert_eq!(run.code, Some(0), "{}", run.all());
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["outcome"], "verified");
    assert_eq!(v["exit"], 0);
    assert_eq!(v["event"]["id"], "evt-verified-1");
    assert_eq!(v["event"]["id_from"], "body:/event_id");
    assert_eq!(v["timestamp"]["skew_ms"], 100_000);
    assert_eq!(v["timestamp"]["window_secs"], 300);
    assert_eq!(
        v["keys"][0],
        serde_json::json!({"label": "key#1", "result": "matched"})
    );
    assert_eq!(
        v["headers"][1],
        serde_json::json!({"name": "biz_timestamp", "present": true})
    );
    // The same clock as RFC 3339.
    let capture = request(&headers, body.as_bytes());
    let run = verify(&f, "cobo", &capture, &["--now", "2023-11-14T22:15:00Z"]);
    assert_eq!(run.code, Some(0), "{}", run.all());
    assert!(run.stdout.contains("skew +100.000 s"), "{}", run.stdout);
    let run = verify(&f, "cobo", &capture, &["--now", "yesterday"]);
    assert_eq!(run.code, Some(64), "{}", run.all());
    assert!(
        run.stderr
            .contains("--now: expected Unix seconds or an RFC 3339 time"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_verified_request_with_an_unusable_event_id_exits_6() {
    let f = fixture();
    let body = cobo_body(&"x".repeat(300));
    let headers = kit::CoboWaas2::test_key().sign(body.as_bytes(), TS_MS);
    let run = verify(&f, "cobo", &request(&headers, body.as_bytes()), &[]);
    assert_eq!(run.code, Some(6), "{}", run.all());
    assert!(
        run.stdout.contains("event_id is longer than 255 bytes"),
        "{}",
        run.stdout
    );
}

#[test]
fn dropped_underscore_headers_are_named_with_the_proxy_setting() {
    let f = fixture();
    let body = cobo_body("evt-2");
    let run = verify(&f, "cobo", &request(&[], body.as_bytes()), &[]);
    assert_eq!(run.code, Some(3), "{}", run.all());
    assert!(
        run.stdout.contains("result: missing_signature"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("hint [proxy_dropped_underscore_headers]")
            && run.stdout.contains("underscores_in_headers on"),
        "{}",
        run.stdout
    );
    // One of the two arrived: the other was dropped on the way.
    let headers = vec![("BIZ_TIMESTAMP".to_owned(), TS_MS.to_owned())];
    let run = verify(&f, "cobo", &request(&headers, body.as_bytes()), &[]);
    assert_eq!(run.code, Some(3), "{}", run.all());
    assert!(
        run.stdout
            .contains("hint [proxy_dropped_underscore_headers]: only biz_timestamp arrived"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_key_of_another_source_is_named_by_source_and_label() {
    let f = fixture();
    let body = cobo_body("evt-3");
    let headers = kit::CoboWaas2::new(OTHER_SEED).sign(body.as_bytes(), TS_MS);
    let run = verify(&f, "cobo", &request(&headers, body.as_bytes()), &[]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(
        run.stdout.contains("key#1                        no match"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("result: bad_signature"),
        "{}",
        run.stdout
    );
    let json = verify(&f, "cobo", &request(&headers, body.as_bytes()), &["--json"]);
    assert_eq!(json.code, Some(1), "{}", json.all());
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["outcome"], "bad_signature");
    assert_eq!(v["event"], serde_json::Value::Null);
    assert_eq!(v["hints"][0]["code"], "other_key");
    assert!(
        run.stdout
            .contains("hint [other_key]: the signature matches source \"cobo-dev\" (key `key#1`)"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_published_cobo_key_the_source_does_not_list_is_named() {
    let f = fixture();
    // Signed by Cobo's retired sandbox key; the source lists only `dev`.
    let v = &crate::helpers::vectors()["cobo_v1_ecdsa_secp256k1"][0];
    let headers = vec![
        (
            "BIZ_TIMESTAMP".to_owned(),
            v["timestamp"].as_str().unwrap().to_owned(),
        ),
        (
            "BIZ_RESP_SIGNATURE".to_owned(),
            v["signature_der_hex"].as_str().unwrap().to_owned(),
        ),
    ];
    let body = v["body"].as_str().unwrap().as_bytes();
    let run = verify(&f, "cobo1", &request(&headers, body), &[]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(
        run.stdout.contains("dev                          no match"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(
            "hint [other_key]: the signature was made with Cobo's published `sandbox-legacy` key"
        ),
        "{}",
        run.stdout
    );
}

#[test]
fn a_standard_webhooks_secret_keyed_as_text_is_named() {
    let f = fixture();
    let body = br#"{"type":"invoice.paid"}"#;
    // The sender keyed its HMAC with the text `whsec_…` instead of the decoded base64.
    let as_text = base64::engine::general_purpose::STANDARD.encode(STANDARD_SECRET);
    let headers = kit::StandardV1::new(&as_text).sign("msg_1", 1_700_000_000, body);
    let run = verify(&f, "standard", &request(&headers, body), &[]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(
        run.stdout.contains("hint [secret_reading]")
            && run
                .stdout
                .contains("secrets[0] taken as its text, whsec_ included,"),
        "{}",
        run.stdout
    );
    // Keyed with the text after the prefix.
    let bare = base64::engine::general_purpose::STANDARD
        .encode(STANDARD_SECRET.trim_start_matches("whsec_"));
    let headers = kit::StandardV1::new(&bare).sign("msg_1", 1_700_000_000, body);
    let run = verify(&f, "standard", &request(&headers, body), &[]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(
        run.stdout
            .contains("secrets[0] taken as the text after whsec_ not base64-decoded"),
        "{}",
        run.stdout
    );
    // The right key verifies, and the event ID is the signed webhook-id.
    let headers = kit::StandardV1::new(STANDARD_SECRET).sign("msg_1", 1_700_000_000, body);
    let run = verify(&f, "standard", &request(&headers, body), &[]);
    assert_eq!(run.code, Some(0), "{}", run.all());
    assert!(
        run.stdout
            .contains("event id:   msg_1 (from header:webhook-id)"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_stripe_secret_base64_decoded_by_the_sender_is_named() {
    let f = fixture();
    let body = br#"{"id":"evt_1","type":"charge.succeeded"}"#;
    let headers = kit::Stripe::new("decoded-secret-text").sign(1_700_000_000, body);
    let run = verify(&f, "stripe", &request(&headers, body), &[]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(
        run.stdout
            .contains("hint [secret_reading]: the signature matches secrets[0] base64-decoded"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_header_under_another_spelling_is_named() {
    let f = fixture();
    let body = br#"{"id":"1"}"#;
    let signer = kit::HmacSha256::new(
        "X_Signature",
        "",
        kit::Encoding::Hex,
        INHOUSE_SECRET.as_bytes(),
    );
    let run = verify(&f, "inhouse", &request(&signer.sign(body), body), &[]);
    assert_eq!(run.code, Some(3), "{}", run.all());
    assert!(
        run.stdout.contains("x-signature                  missing"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("hint [header_spelling]: `x_signature` arrived instead of `x-signature`"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_base64_signature_for_a_hex_source_is_named() {
    let f = fixture();
    let body = br#"{"id":"1"}"#;
    let signer = kit::HmacSha256::new(
        "X-Signature",
        "",
        kit::Encoding::Base64,
        INHOUSE_SECRET.as_bytes(),
    );
    let run = verify(&f, "inhouse", &request(&signer.sign(body), body), &[]);
    assert_eq!(run.code, Some(4), "{}", run.all());
    assert!(
        run.stdout.contains(
            "hint [signature_encoding]: the signature is base64 but the source reads it as hex"
        ),
        "{}",
        run.stdout
    );
}

#[test]
fn a_re_serialized_body_is_named() {
    let f = fixture();
    // The provider signed compact JSON (keys in order); something pretty-printed it on the way.
    let signed = br#"{"amount":"1","event_id":"evt-4","type":"t"}"#;
    let headers = kit::CoboWaas2::test_key().sign(signed, TS_MS);
    let pretty = "{\n  \"amount\": \"1\",\n  \"event_id\": \"evt-4\",\n  \"type\": \"t\"\n}";
    let run = verify(&f, "cobo", &request(&headers, pretty.as_bytes()), &[]);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(
        run.stdout.contains(
            "hint [body_reserialized]: the signature matches the body re-serialized as compact JSON"
        ),
        "{}",
        run.stdout
    );
}

#[test]
fn a_stale_timestamp_gets_its_skew_and_the_likely_cause() {
    let f = fixture();
    let body = cobo_body("evt-5");
    let headers = kit::CoboWaas2::test_key().sign(body.as_bytes(), "1699996400000");
    let run = verify(&f, "cobo", &request(&headers, body.as_bytes()), &[]);
    assert_eq!(run.code, Some(5), "{}", run.all());
    assert!(run.stdout.contains("skew +3700.000 s"), "{}", run.stdout);
    assert!(
        run.stdout.contains("result: stale_timestamp"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("hint [timestamp_outside_window]: the signed timestamp is 3700 s old")
            && run.stdout.contains("pass --now"),
        "{}",
        run.stdout
    );
    // Just outside the window: the clocks or the window, not a replay.
    let headers = kit::CoboWaas2::test_key().sign(body.as_bytes(), "1699999700000");
    let run = verify(&f, "cobo", &request(&headers, body.as_bytes()), &[]);
    assert_eq!(run.code, Some(5), "{}", run.all());
    assert!(run.stdout.contains("a clock drifts"), "{}", run.stdout);
    // A day ahead: a clock, not the window.
    let headers = kit::CoboWaas2::test_key().sign(body.as_bytes(), "1700086500000");
    let run = verify(&f, "cobo", &request(&headers, body.as_bytes()), &[]);
    assert_eq!(run.code, Some(5), "{}", run.all());
    assert!(
        run.stdout.contains("86400 s in the future"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("far in the future: the sender's clock is ahead"),
        "{}",
        run.stdout
    );
    // Milliseconds where Standard Webhooks expects seconds.
    let body = br#"{"type":"invoice.paid"}"#;
    let headers = kit::StandardV1::new(STANDARD_SECRET).sign("msg_2", 1_700_000_000_000, body);
    let run = verify(&f, "standard", &request(&headers, body), &[]);
    assert_eq!(run.code, Some(5), "{}", run.all());
    assert!(
        run.stdout.contains("result: future_timestamp"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("looks like milliseconds"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_malformed_capture_an_unknown_source_and_a_missing_file_have_their_own_exits() {
    let f = fixture();
    let run = verify(&f, "cobo", b"this is not HTTP\n\n", &[]);
    assert_eq!(run.code, Some(64), "{}", run.all());
    assert!(
        run.stderr.contains("not an HTTP/1 request: line 1"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());

    let run = verify(
        &f,
        "cobo",
        b"POST / HTTP/1.1\nContent-Length: 99\n\n{}",
        &[],
    );
    assert_eq!(run.code, Some(64), "{}", run.all());
    assert!(run.stderr.contains("truncated"), "{}", run.stderr);

    let run = verify(&f, "nope", &request(&[], b"{}"), &[]);
    assert_eq!(run.code, Some(78), "{}", run.all());
    assert!(run.stderr.contains("no source \"nope\""), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("cobo, cobo-dev, cobo1, inhouse, standard, stripe"),
        "{}",
        run.stderr
    );

    let run = verify_file(&f.config, "cobo", &f.dir.path().join("absent.http"), &[]);
    assert_eq!(run.code, Some(66), "{}", run.all());
}
