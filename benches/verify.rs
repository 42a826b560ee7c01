//! Criterion benches for the request hot path: every verifier over a 1 KiB and a 64 KiB body,
//! envelope encoding, and the worst-case CPU an unauthenticated request can cost (Standard
//! Webhooks `v1a` entries over a 1 MiB body, at the cap of 8). `cargo bench --bench verify`
//! (not part of the test suite).

// Bench code: a panic is how a broken setup shows.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::SystemTime;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::Signer as _;
use hmac::Mac as _;
use hookbridge::normalize::Envelope;
use hookbridge::plan::SourceSpec;
use hookbridge::verify::IncomingWebhook;
use http::{HeaderMap, HeaderValue};
use sha2::Digest as _;

const SEED: &str = "0281d349927d3b4342129aa4d86bd0ed70163feb7b8d06fecc25c667974b6297";
const PUBKEY: &str = "f06a7074b7892a39139b6317509f9d0e01ae234cf17fc7bfa9db3d5957f931be";

fn body(size: usize) -> Bytes {
    let mut s = String::from(
        r#"{"event_id":"bench-1","type":"wallets.transaction.succeeded","data":{"pad":""#,
    );
    while s.len() + 3 < size {
        s.push('x');
    }
    s.push_str(r#""}}"#);
    Bytes::from(s)
}

fn sources() -> Vec<SourceSpec> {
    let rsa = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/bench/keys/rsa-public.pem"
    ))
    .unwrap();
    let text = format!(
        r#"
[sources.cobo-waas2]
verify = {{ scheme = "cobo-waas2", public_keys = ["{PUBKEY}"] }}
[sources.standard-webhooks]
verify = {{ scheme = "standard-webhooks", secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] }}
replay_window_secs = 0
[sources.hmac-sha256]
verify = {{ scheme = "hmac-sha256", header = "x-signature-256", prefix = "sha256=", secrets = ["bench-hmac-secret"] }}
[sources.rsa-sha256]
verify = {{ scheme = "rsa-sha256", public_keys = ["""{rsa}"""] }}
[sources.cobo-waas1]
verify = {{ scheme = "cobo-waas1", public_keys = ["sandbox-legacy"] }}
"#
    );
    hookbridge::config::load(&text, &|_| None).unwrap().sources
}

fn signed(scheme: &str, body: &Bytes) -> HeaderMap {
    let mut h = HeaderMap::new();
    let put = |h: &mut HeaderMap, k: &'static str, v: String| {
        h.insert(k, HeaderValue::from_str(&v).unwrap());
    };
    match scheme {
        "cobo-waas2" => {
            let key = ed25519_dalek::SigningKey::from_bytes(
                &hex::decode(SEED).unwrap().try_into().unwrap(),
            );
            let ts = "1701396866123";
            let d = sha2::Sha256::digest(sha2::Sha256::digest(
                [body.as_ref(), b"|", ts.as_bytes()].concat(),
            ));
            put(&mut h, "biz-timestamp", ts.into());
            put(
                &mut h,
                "biz-resp-signature",
                hex::encode(key.sign(&d).to_bytes()),
            );
        }
        "standard-webhooks" => {
            use base64::Engine as _;
            let key = base64::engine::general_purpose::STANDARD
                .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap();
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
            mac.update(b"msg_1.1614265330.");
            mac.update(body);
            put(&mut h, "webhook-id", "msg_1".into());
            put(&mut h, "webhook-timestamp", "1614265330".into());
            let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            put(&mut h, "webhook-signature", format!("v1,{sig}"));
        }
        "hmac-sha256" => {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"bench-hmac-secret").unwrap();
            mac.update(body);
            put(
                &mut h,
                "x-signature-256",
                format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
            );
        }
        "rsa-sha256" => {
            use base64::Engine as _;
            use rsa::pkcs8::DecodePrivateKey as _;
            use rsa::signature::{SignatureEncoding as _, Signer as _};
            let pem = std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/bench/keys/rsa-private.pem"
            ))
            .unwrap();
            let key = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(
                rsa::RsaPrivateKey::from_pkcs8_pem(&pem).unwrap(),
            );
            put(
                &mut h,
                "x-signature",
                base64::engine::general_purpose::STANDARD.encode(key.sign(body).to_bytes()),
            );
        }
        _ => unreachable!(),
    }
    h
}

fn verify(c: &mut Criterion) {
    let sources = sources();
    let mut group = c.benchmark_group("verify");
    for size in [1024, 64 * 1024] {
        let b = body(size);
        group.throughput(Throughput::Bytes(size as u64));
        for scheme in [
            "cobo-waas2",
            "standard-webhooks",
            "hmac-sha256",
            "rsa-sha256",
        ] {
            let src = sources.iter().find(|s| s.name == scheme).unwrap();
            let headers = signed(scheme, &b);
            group.bench_with_input(BenchmarkId::new(scheme, size), &b, |bench, b| {
                bench.iter(|| {
                    let incoming = IncomingWebhook {
                        headers: headers.clone(),
                        body: b.clone(),
                    };
                    black_box(src.verifier.verify(incoming, SystemTime::now()).unwrap());
                });
            });
        }
    }
    // Cobo WaaS 1.0 with the official vector (secp256k1), on its own small body.
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/providers.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let vec0 = &v["cobo_v1_ecdsa_secp256k1"][0];
    let b = Bytes::from(vec0["body"].as_str().unwrap().to_owned());
    let mut h = HeaderMap::new();
    h.insert(
        "biz-timestamp",
        HeaderValue::from_str(vec0["timestamp"].as_str().unwrap()).unwrap(),
    );
    h.insert(
        "biz-resp-signature",
        HeaderValue::from_str(vec0["signature_der_hex"].as_str().unwrap()).unwrap(),
    );
    let src = sources.iter().find(|s| s.name == "cobo-waas1").unwrap();
    group.bench_function("cobo-waas1/official-vector", |bench| {
        bench.iter(|| {
            let incoming = IncomingWebhook {
                headers: h.clone(),
                body: b.clone(),
            };
            black_box(src.verifier.verify(incoming, SystemTime::now()).unwrap());
        });
    });
    group.finish();
}

fn envelope(c: &mut Criterion) {
    let sources = sources();
    let src = sources.iter().find(|s| s.name == "hmac-sha256").unwrap();
    let mut group = c.benchmark_group("envelope");
    for size in [1024, 64 * 1024] {
        let b = body(size);
        let headers = signed("hmac-sha256", &b);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("build", size), &b, |bench, b| {
            bench.iter(|| {
                let verified = src
                    .verifier
                    .verify(
                        IncomingWebhook {
                            headers: headers.clone(),
                            body: b.clone(),
                        },
                        SystemTime::now(),
                    )
                    .unwrap();
                black_box(Envelope::build(verified, src, SystemTime::now()).unwrap());
            });
        });
    }
    group.finish();
}

/// The dearest request an attacker without a key can send: a 1 MiB body (the default cap) and
/// `MAX_LISTED_SIGNATURES` distinct bogus `v1a` entries, each costing an Ed25519 check (a hash of
/// the whole body) against the configured key; beside it, one entry.
fn unauthenticated(c: &mut Criterion) {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let seed: [u8; 32] = hex::decode(SEED).unwrap().try_into().unwrap();
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    let text = format!(
        "[sources.v1a]\nverify = {{ scheme = \"standard-webhooks\", public_keys = [\"whpk_{}\"] }}\nreplay_window_secs = 0\n",
        b64(public.as_bytes())
    );
    let src = hookbridge::config::load(&text, &|_| None)
        .unwrap()
        .sources
        .remove(0);
    let body = body(1 << 20);
    let mut group = c.benchmark_group("unauthenticated");
    group.sample_size(10);
    for entries in [1u8, hookbridge::verify::MAX_LISTED_SIGNATURES as u8] {
        // R = the base point, s small and distinct: well-formed, so each is hashed and checked.
        let list: Vec<String> = (0..entries)
            .map(|i| {
                let mut sig = vec![0x66u8; 32];
                sig[0] = 0x58;
                sig.extend([0u8; 32]);
                sig[63] = i;
                format!("v1a,{}", b64(&sig))
            })
            .collect();
        let mut h = HeaderMap::new();
        h.insert("webhook-id", HeaderValue::from_static("msg_attack"));
        h.insert("webhook-timestamp", HeaderValue::from_static("1700000000"));
        h.insert(
            "webhook-signature",
            HeaderValue::from_str(&list.join(" ")).unwrap(),
        );
        group.bench_with_input(
            BenchmarkId::new("v1a_entries_1MiB", entries),
            &h,
            |bench, h| {
                bench.iter(|| {
                    let r = src.verifier.verify(
                        IncomingWebhook {
                            headers: h.clone(),
                            body: body.clone(),
                        },
                        SystemTime::now(),
                    );
                    black_box(r.is_err())
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, verify, envelope, unauthenticated);
criterion_main!(benches);
