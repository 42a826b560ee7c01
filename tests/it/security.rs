//! The public-endpoint defences, over real sockets: TLS, `require_tls` behind a proxy, IP
//! allowlists with trusted proxies, rate limits, replay windows, header/body/connection limits,
//! and a catalogue of attacks, each rejected with its status, counted in `/metrics` and never
//! written to the sink.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::rustls;

use crate::helpers::*;

/// Sends one HTTP/1.1 request over an established stream.
async fn send_over<S>(
    io: S,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(String, String)],
    body: Bytes,
) -> Reply
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = sender
        .send_request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    Reply::read(resp).await.unwrap()
}

/// A POST whose TCP connection comes from `from` (any 127.x address is local on Linux).
async fn post_from(
    from: IpAddr,
    to: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    body: &str,
) -> Reply {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let stream = socket.connect(to).await.unwrap();
    send_over(
        stream,
        "POST",
        &to.to_string(),
        path,
        headers,
        Bytes::from(body.to_owned()),
    )
    .await
}

const TOKEN_SOURCE: &str =
    r#"verify = { scheme = "shared-secret", header = "x-token", secrets = ["t0ken"] }"#;

fn token() -> Vec<(String, String)> {
    vec![h("x-token", "t0ken")]
}

fn sink_in(dir: &std::path::Path) -> String {
    format!(
        "[sinks.f]\ntype = \"file\"\npath = \"{}\"\n",
        dir.join("events.jsonl").display()
    )
}

fn tls_client() -> tokio_rustls::TlsConnector {
    tls_client_offering(&[])
}

/// A client trusting the test CA that offers these ALPN protocols.
pub(crate) fn tls_client_offering(alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(repo_path("tests/fixtures/tls/ca.pem")).unwrap();
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    roots
        .add(CertificateDer::from_pem_slice(&ca).unwrap())
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[tokio::test]
async fn https_with_a_verified_certificate_and_plain_http_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrequire_tls = true\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{}[sources.t]\n{TOKEN_SOURCE}\n",
        repo_path("tests/fixtures/tls/server.pem").display(),
        repo_path("tests/fixtures/tls/server.key").display(),
        sink_in(dir.path())
    );
    let app = TestApp::spawn(&config).await;
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_client()
        .connect(name, tcp)
        .await
        .expect("certificate verifies against the test CA");
    let r = send_over(
        tls,
        "POST",
        "localhost",
        "/hooks/t",
        &token(),
        Bytes::from_static(br#"{"id":"tls-1"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(file_events(&dir.path().join("events.jsonl")).len(), 1);

    // Plain HTTP to the TLS port never gets an HTTP answer.
    let mut plain = TcpStream::connect(app.addr).await.unwrap();
    plain
        .write_all(
            b"POST /hooks/t HTTP/1.1\r\nhost: x\r\nx-token: t0ken\r\ncontent-length: 2\r\n\r\n{}",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(
        !buf.starts_with(b"HTTP/1.1 200"),
        "plain HTTP must not be served"
    );
    assert_eq!(file_events(&dir.path().join("events.jsonl")).len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn require_tls_behind_a_terminating_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrequire_tls = true\ntrusted_proxies = [\"127.0.0.1\"]\nforwarded_header = \"x-forwarded-for\"\n{}[sources.t]\n{TOKEN_SOURCE}\n",
        sink_in(dir.path())
    );
    let app = TestApp::spawn(&config).await;
    let mut headers = token();
    let r = post(&app.url("/hooks/t"), &headers, r#"{"id":"1"}"#).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (403, Some("tls_required"))
    );
    headers.push(h("x-forwarded-proto", "https"));
    assert_eq!(
        post(&app.url("/hooks/t"), &headers, r#"{"id":"2"}"#)
            .await
            .status,
        200
    );
    // The same header from a peer that is not a trusted proxy means nothing.
    let r = post_from(
        "127.0.0.2".parse().unwrap(),
        app.addr,
        "/hooks/t",
        &headers,
        r#"{"id":"3"}"#,
    )
    .await;
    assert_eq!(r.status, 403);
    app.stop().await;
}

#[tokio::test]
async fn allowlists_with_trusted_and_untrusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1/32\", \"::1\"]\nforwarded_header = \"x-forwarded-for\"\n{}[sources.t]\n{TOKEN_SOURCE}\nallow_ips = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n",
        sink_in(dir.path())
    );
    let app = TestApp::spawn(&config).await;
    // The proxy itself is not allowlisted.
    let r = post(&app.url("/hooks/t"), &token(), "{}").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (403, Some("ip_denied"))
    );
    // Through the trusted proxy, for an allowlisted client (IPv4 and IPv6).
    for client in ["10.20.30.40", "2001:db8::42"] {
        let mut headers = token();
        headers.push(h("x-forwarded-for", &format!("203.0.113.1, {client}")));
        let r = post(
            &app.url("/hooks/t"),
            &headers,
            format!("{{\"c\":\"{client}\"}}"),
        )
        .await;
        assert_eq!(r.status, 200, "{client}");
    }
    // The same header from a peer that is not a trusted proxy is ignored.
    let mut headers = token();
    headers.push(h("x-forwarded-for", "10.20.30.40"));
    let r = post_from(
        "127.0.0.2".parse().unwrap(),
        app.addr,
        "/hooks/t",
        &headers,
        "{}",
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(file_events(&dir.path().join("events.jsonl")).len(), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_source_gets_429_while_another_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[sources.flooded]\n{TOKEN_SOURCE}\nrate_limit = {{ per_second = 5, burst = 5 }}\n[sources.calm]\n{TOKEN_SOURCE}\nrate_limit_per_ip = {{ per_second = 1000 }}\n",
        sink_in(dir.path())
    );
    let app = TestApp::spawn(&config).await;
    let flood = {
        let url = app.url("/hooks/flooded");
        tokio::spawn(async move {
            let mut limited = Vec::new();
            for i in 0..60 {
                let r = post(&url, &token(), format!("{{\"i\":{i}}}")).await;
                if r.status == 429 {
                    limited.push(
                        r.headers
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
                    );
                }
            }
            limited
        })
    };
    for i in 0..20 {
        let r = post(
            &app.url("/hooks/calm"),
            &token(),
            format!("{{\"calm\":{i}}}"),
        )
        .await;
        assert_eq!(r.status, 200, "the other source is not starved");
    }
    let limited = flood.await.unwrap();
    assert!(
        limited.len() >= 40,
        "only {} of 60 were limited",
        limited.len()
    );
    assert!(limited.iter().all(|ra| {
        ra.as_deref()
            .is_some_and(|s| s.parse::<u32>().unwrap() >= 1)
    }));
    app.stop().await;
}

#[tokio::test]
async fn limits_have_their_own_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nbody_timeout_ms = 500\nmax_headers = 20\nmax_header_bytes = 8192\nmax_connections = 3\n{}[sources.t]\n{TOKEN_SOURCE}\nmax_body_bytes = 100\n",
        sink_in(dir.path())
    );
    let app = TestApp::spawn(&config).await;
    async fn raw(addr: SocketAddr, req: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut buf = vec![0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
    let many: String = (0..30).map(|i| format!("x-h{i}: v\r\n")).collect();
    let resp = raw(
        app.addr,
        format!("POST /hooks/t HTTP/1.1\r\nhost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 431"), "too many headers: {resp}");
    let big = "a".repeat(9000);
    let resp = raw(
        app.addr,
        format!("POST /hooks/t HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 431"), "head too large: {resp}");
    let resp = raw(app.addr, b"POST /hooks/t HTTP/1.1\r\nhost: x\r\nx-token: t0ken\r\ncontent-length: 50\r\n\r\n{\"partial\"").await;
    assert!(resp.starts_with("HTTP/1.1 408"), "slow body: {resp}");
    let r = post(&app.url("/hooks/t"), &token(), "x".repeat(101)).await;
    assert_eq!(r.status, 413);

    // Connection cap: three idle connections held open, the fourth is told to come back.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(app.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = raw(app.addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(
        resp.starts_with("HTTP/1.1 503") && resp.contains("connection_limit"),
        "{resp}"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&app.url("/healthz")).await.status, 200);
    assert!(file_events(&dir.path().join("events.jsonl")).is_empty());
    app.stop().await;
}

/// Concurrent Cobo WaaS 2.0 requests over real connections share Ed25519 batch checks
/// (`hookbridge_signatures_batched_total` moves), and a forged signature among them is refused
/// alone while every genuine one is published: a failed batch never refuses its neighbours.
#[tokio::test]
async fn concurrent_cobo_signatures_are_checked_in_batches_and_a_forgery_is_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[sources.batch-cobo]\nverify = {{ scheme = \"cobo-waas2\", public_keys = [\"{}\"] }}\n",
        sink_in(dir.path()),
        cobo_test_pubkey()
    );
    let app = TestApp::spawn_with_metrics(&config).await;
    let url = app.url("/hooks/batch-cobo");
    let mut genuine = Vec::new();
    // Waves of 24 at once; batching depends on arrival, so a few waves may be needed.
    for wave in 0..6 {
        let ts = now_ms().to_string();
        let sends = (0..24).map(|i| {
            let id = format!("batch-{wave}-{i}");
            let body = cobo_body(&id);
            // One forgery per wave: another Ed25519 key entirely.
            let seed = if i == 11 {
                "11".repeat(32)
            } else {
                cobo_test_seed()
            };
            let headers = sign_cobo_waas2(&seed, body.as_bytes(), &ts);
            let url = url.clone();
            async move { (i, id, post(&url, &headers, body).await) }
        });
        for (i, id, reply) in futures_util::future::join_all(sends).await {
            if i == 11 {
                assert_eq!(reply.status, 401, "{id}: {:?}", reply.json());
                assert_eq!(reply.json()["error"], "bad_signature", "{id}");
            } else {
                assert_eq!(reply.status, 200, "{id}: {:?}", reply.json());
                genuine.push(id);
            }
        }
        let text = scrape(&app).await;
        if counter(&text, "hookbridge_signatures_batched_total", &[]) > 0.0 && wave >= 1 {
            break;
        }
    }
    let text = scrape(&app).await;
    let batched = counter(&text, "hookbridge_signatures_batched_total", &[]);
    let batches = counter(&text, "hookbridge_signature_batches_total", &[]);
    assert!(batched >= 2.0 && batches >= 1.0, "no batch formed: {text}");
    app.stop().await;

    let published: Vec<String> = file_events(&dir.path().join("events.jsonl"))
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(published.len(), genuine.len());
    for id in &genuine {
        assert!(published.contains(id), "{id} not published");
    }
}

/// Every attack is rejected with its status, counted under its reason, and never published.
#[tokio::test]
async fn attacks_are_rejected_counted_and_never_published() {
    let dir = tempfile::tempdir().unwrap();
    let v = vectors();
    let std_secret = v["standard_webhooks_v1_hmac"][0]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let config = format!(
        "{}[sources.sec-cobo]\nverify = {{ scheme = \"cobo-waas2\", public_keys = [\"{}\"] }}\nmax_body_bytes = 4096\n\
         [sources.sec-std]\nverify = {{ scheme = \"standard-webhooks\", secrets = [\"{std_secret}\"] }}\n\
         [sources.sec-ip]\n{TOKEN_SOURCE}\nallow_ips = [\"192.0.2.0/24\"]\n",
        sink_in(dir.path()),
        cobo_test_pubkey()
    );
    let app = TestApp::spawn_with_metrics(&config).await;
    let cobo = app.url("/hooks/sec-cobo");
    let body = cobo_body("sec-1");
    let ts = now_ms().to_string();
    let good = sign_cobo_waas2(&cobo_test_seed(), body.as_bytes(), &ts);
    // Another Ed25519 key entirely: a forgery.
    let forged = sign_cobo_waas2(&"11".repeat(32), body.as_bytes(), &ts);
    let mut tampered_sig = good.clone();
    let first = if tampered_sig[1].1.starts_with("00") {
        "11"
    } else {
        "00"
    };
    tampered_sig[1].1.replace_range(0..2, first);
    let mut malformed = good.clone();
    malformed[1].1 = "zz".repeat(64);
    let mut short_sig = good.clone();
    short_sig[1].1.truncate(100);

    let mut expect = vec![];
    let mut check = |name: &str, r: Reply, status: u16, reason: &str| {
        assert_eq!(r.status, status, "{name}: {:?}", r.json());
        assert_eq!(r.json()["error"], reason, "{name}");
        expect.push(reason.to_owned());
    };
    check(
        "forged",
        post(&cobo, &forged, body.clone()).await,
        401,
        "bad_signature",
    );
    check(
        "tampered body",
        post(&cobo, &good, body.replace("1250", "9250")).await,
        401,
        "bad_signature",
    );
    check(
        "tampered signature",
        post(&cobo, &tampered_sig, body.clone()).await,
        401,
        "bad_signature",
    );
    check(
        "truncated body",
        post(&cobo, &good, body[..body.len() - 10].to_owned()).await,
        401,
        "bad_signature",
    );
    check(
        "malformed header",
        post(&cobo, &malformed, body.clone()).await,
        401,
        "malformed_signature",
    );
    check(
        "truncated signature",
        post(&cobo, &short_sig, body.clone()).await,
        401,
        "malformed_signature",
    );
    check(
        "missing headers",
        post(&cobo, &[], body.clone()).await,
        401,
        "missing_signature",
    );
    check(
        "oversized",
        post(&cobo, &good, "x".repeat(5000)).await,
        413,
        "too_large",
    );
    let old = now_secs() - 360;
    let replayed = sign_standard_v1(&std_secret, "msg_replay", old, b"{}");
    check(
        "replayed 6 min old",
        post(&app.url("/hooks/sec-std"), &replayed, "{}").await,
        401,
        "stale_timestamp",
    );
    let wrong_key = sign_standard_v1(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSx",
        "msg_wrong",
        now_secs(),
        b"{}",
    );
    check(
        "wrong key",
        post(&app.url("/hooks/sec-std"), &wrong_key, "{}").await,
        401,
        "bad_signature",
    );
    check(
        "not allowlisted",
        post(&app.url("/hooks/sec-ip"), &token(), "{}").await,
        403,
        "ip_denied",
    );
    assert!(
        file_events(&dir.path().join("events.jsonl")).is_empty(),
        "nothing published"
    );

    // The genuine request still works, and is the only one on disk.
    assert_eq!(post(&cobo, &good, body.clone()).await.status, 200);
    assert_eq!(file_events(&dir.path().join("events.jsonl")).len(), 1);

    let text = String::from_utf8(get(&app.url("/metrics")).await.body.to_vec()).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("valid Prometheus text");
    let count = |source: &str, outcome: &str| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == "hookbridge_requests_total")
            .filter(|s| {
                s.labels.get("source") == Some(source) && s.labels.get("outcome") == Some(outcome)
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(count("sec-cobo", "bad_signature"), 4.0);
    assert_eq!(count("sec-cobo", "malformed_signature"), 2.0);
    assert_eq!(count("sec-cobo", "missing_signature"), 1.0);
    assert_eq!(count("sec-cobo", "too_large"), 1.0);
    assert_eq!(count("sec-cobo", "accepted"), 1.0);
    assert_eq!(count("sec-std", "stale_timestamp"), 1.0);
    assert_eq!(count("sec-std", "bad_signature"), 1.0);
    assert_eq!(count("sec-ip", "ip_denied"), 1.0);
    assert_eq!(expect.len(), 11);
    assert!(
        text.contains("hookbridge_ack_latency_seconds_bucket"),
        "histograms are exported"
    );
    app.stop().await;
}

/// Sends one request over HTTP/2 on an established stream; the response and its version.
async fn send_h2<S>(io: S, url: &str, headers: &[(String, String)], body: &'static [u8]) -> Reply
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(io),
    )
    .await
    .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let mut req = http::Request::builder().method("POST").uri(url);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from_static(body))).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    Reply::read(resp).await.unwrap()
}

/// The protocol is picked per connection: HTTP/2 by ALPN over TLS or by its preface in cleartext
/// (prior knowledge), HTTP/1.1 otherwise. A connection that sends nothing is closed at the header
/// timeout and counted under that reason.
#[tokio::test]
async fn http2_by_alpn_or_preface_and_silent_connections_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let plain = TestApp::spawn_with_metrics(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nheader_timeout_ms = 300\n{}[sources.t]\n{TOKEN_SOURCE}\n",
        sink_in(dir.path())
    ))
    .await;
    let tcp = TcpStream::connect(plain.addr).await.unwrap();
    let url = plain.url("/hooks/t");
    let r = send_h2(tcp, &url, &token(), br#"{"id":"h2c-1"}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(post(&url, &token(), r#"{"id":"h1-1"}"#).await.status, 200);

    let mut silent = TcpStream::connect(plain.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("closed at the header timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    let text = String::from_utf8(get(&plain.url("/metrics")).await.body.to_vec()).unwrap();
    assert!(
        text.contains("hookbridge_connections_rejected_total{reason=\"header_timeout\"} 1"),
        "{text}"
    );
    plain.stop().await;

    let tls_dir = tempfile::tempdir().unwrap();
    let tls = TestApp::spawn(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{}[sources.t]\n{TOKEN_SOURCE}\n",
        repo_path("tests/fixtures/tls/server.pem").display(),
        repo_path("tests/fixtures/tls/server.key").display(),
        sink_in(tls_dir.path())
    ))
    .await;
    let stream = tls_client_offering(&[b"h2"])
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            TcpStream::connect(tls.addr).await.unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let r = send_h2(
        stream,
        &format!("https://localhost:{}/hooks/t", tls.addr.port()),
        &token(),
        br#"{"id":"h2-tls-1"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    tls.stop().await;
    assert_eq!(file_events(&dir.path().join("events.jsonl")).len(), 2);
    assert_eq!(file_events(&tls_dir.path().join("events.jsonl")).len(), 1);
}
