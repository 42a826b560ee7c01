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
use hookbridge::normalize::Envelope;
use hookbridge::plan::SourceSpec;
use hookbridge::verify::IncomingWebhook;
use hookbridge_testkit::keys::{
    BENCH_HMAC_SECRET, BENCH_RSA_PUBLIC_PEM, BENCH_STANDARD_SECRET, COBO_TEST_PUBKEY_HEX,
    COBO_TEST_SEED_HEX,
};
use hookbridge_testkit::{StandardV1a, bench, bogus_v1a, header_map};
use http::{HeaderMap, HeaderValue};

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
    let text = format!(
        r#"
[sources.cobo-waas2]
verify = {{ scheme = "cobo-waas2", public_keys = ["{COBO_TEST_PUBKEY_HEX}"] }}
[sources.standard-webhooks]
verify = {{ scheme = "standard-webhooks", secrets = ["{BENCH_STANDARD_SECRET}"] }}
replay_window_secs = 0
[sources.hmac-sha256]
verify = {{ scheme = "hmac-sha256", header = "x-signature-256", prefix = "sha256=", secrets = ["{BENCH_HMAC_SECRET}"] }}
[sources.rsa-sha256]
verify = {{ scheme = "rsa-sha256", public_keys = ["""{BENCH_RSA_PUBLIC_PEM}"""] }}
[sources.cobo-waas1]
verify = {{ scheme = "cobo-waas1", public_keys = ["sandbox-legacy"] }}
"#
    );
    hookbridge::config::load(&text, &|_| None).unwrap().sources
}

/// The headers each bench source (`sources`) accepts for `body`, at fixed timestamps: the
/// sources have no replay window.
fn signed(scheme: &str, body: &Bytes) -> HeaderMap {
    let headers = match scheme {
        "cobo-waas2" => bench::cobo_waas2().sign(body, "1701396866123"),
        "standard-webhooks" => bench::standard_webhooks().sign("msg_1", 1614265330, body),
        "hmac-sha256" => bench::hmac_sha256().sign(body),
        "rsa-sha256" => bench::rsa_sha256().sign(body),
        _ => unreachable!(),
    };
    header_map(&headers)
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
    let text = format!(
        "[sources.v1a]\nverify = {{ scheme = \"standard-webhooks\", public_keys = [\"{}\"] }}\nreplay_window_secs = 0\n",
        StandardV1a::new(COBO_TEST_SEED_HEX).public_key()
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
        let list: Vec<String> = (0..entries).map(bogus_v1a).collect();
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
