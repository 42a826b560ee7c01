//! The public endpoint under abuse (one test per defence, each failing without it): admin routes
//! private on a public listener, signature lists capped, bodies before authentication bounded in
//! total, forwarding headers parsed hop by hop, rate limits that keep the provider answered,
//! and idle connections (HTTP/1, HTTP/2, TLS) that cannot hold the connection permits.

use crate::helpers::*;

fn token_source(dir: &std::path::Path) -> String {
    format!(
        "[sinks.f]\ntype = \"file\"\npath = \"{}\"\n[sources.t]\nverify = {{ scheme = \"shared-secret\", header = \"x-token\", secrets = [\"tok\"] }}\n",
        dir.join("events.jsonl").display()
    )
}

#[tokio::test]
async fn admin_routes_are_private_on_a_public_listener_unless_exposed() {
    let dir = tempfile::tempdir().unwrap();
    let config = |extra: &str| {
        format!(
            "[server]\nlisten = \"0.0.0.0:0\"\n{extra}\n{}",
            token_source(dir.path())
        )
    };
    let public = TestApp::spawn_as_written(&config("")).await;
    assert_eq!(get(&public.url("/healthz")).await.status, 200);
    for path in ["/readyz", "/metrics"] {
        assert_eq!(get(&public.url(path)).await.status, 404, "{path}");
    }
    // Hooks are served as ever.
    let r = post(
        &public.url("/hooks/t"),
        &[h("x-token", "tok")],
        r#"{"id":"a1"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    public.stop().await;

    let exposed = TestApp::spawn_as_written(&config("expose_admin_routes = true")).await;
    assert_eq!(get(&exposed.url("/readyz")).await.status, 200);
    exposed.stop().await;
}

/// One HTTP/1.1 POST written byte for byte (header values may hold any bytes), from `from`;
/// the status code of the answer.
async fn raw_post(
    from: std::net::IpAddr,
    to: std::net::SocketAddr,
    path: &str,
    extra_head: &[u8],
    body: &str,
) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(from, 0)).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: {to}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(extra_head);
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body.as_bytes());
    stream.write_all(&req).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    let line = String::from_utf8_lossy(&answer);
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_poisoned_forwarding_chain_never_makes_the_client_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    // The audit file is process-wide (nextest runs each test in a process of its own).
    let guards = hookbridge::telemetry::init(
        hookbridge::telemetry::LogFormat::Json,
        &hookbridge::config::AuditConfig {
            output: hookbridge::config::AuditOutput::File,
            path: Some(audit.clone()),
        },
    )
    .unwrap();
    let config = |header: &str, allow: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1/32\"]\nforwarded_header = \"{header}\"\n{}allow_ips = [\"{allow}\"]\n[sources.open]\nverify = {{ scheme = \"shared-secret\", header = \"x-token\", secrets = [\"tok\"] }}\nrate_limit_per_ip = {{ per_second = 1, burst = 2 }}\n",
            token_source(dir.path())
        )
    };
    let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    // The issue's setup: the proxy's own address is what the allowlist admits.
    let app = TestApp::spawn(&config("x-forwarded-for", "127.0.0.1/32")).await;
    let post_with =
        |head: &'static [u8]| raw_post(local, app.addr, "/hooks/t", head, "{\"id\":\"x\"}");
    // Non-UTF-8 bytes from the client, then the real address the proxy appended.
    assert_eq!(
        post_with(b"x-token: tok\r\nx-forwarded-for: \xff, 203.0.113.9\r\n").await,
        403
    );
    // An unreadable hop where the client's address should be: unknown, denied.
    assert_eq!(
        post_with(b"x-token: tok\r\nx-forwarded-for: 203.0.113.9, bogus\r\n").await,
        403
    );
    // No forwarding header from the proxy: unknown too, not the proxy's own address.
    assert_eq!(post_with(b"x-token: tok\r\n").await, 403);
    app.stop().await;
    drop(guards); // flushes the audit writer
    let lines = std::fs::read_to_string(&audit).unwrap();
    let clients: Vec<String> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["client"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        clients,
        ["203.0.113.9", "unknown", "unknown"],
        "audited as such"
    );

    // The operator names the header: with `forwarded`, a client-supplied X-Forwarded-For is
    // ignored, and unknown clients share one rate bucket of their own.
    let app = TestApp::spawn(&config("forwarded", "198.51.100.0/24")).await;
    let post_with =
        |head: &'static [u8]| raw_post(local, app.addr, "/hooks/t", head, "{\"id\":\"y\"}");
    assert_eq!(
        post_with(b"x-token: tok\r\nforwarded: for=198.51.100.7\r\n").await,
        200
    );
    assert_eq!(
        post_with(b"x-token: tok\r\nx-forwarded-for: 198.51.100.7\r\n").await,
        403
    );
    // Unknown clients share one bucket of their own (burst 2), on a source without an
    // allowlist: the third unknown request in the same second is refused, a known client's not.
    let open =
        |head: &'static [u8], id: &'static str| raw_post(local, app.addr, "/hooks/open", head, id);
    let hidden: &[u8] = b"x-token: tok\r\nforwarded: for=_hidden\r\n";
    assert_eq!(open(hidden, "{\"id\":\"u1\"}").await, 200);
    assert_eq!(open(hidden, "{\"id\":\"u2\"}").await, 200);
    let unknown: &[u8] = b"x-token: tok\r\nforwarded: for=unknown\r\n";
    assert_eq!(open(unknown, "{\"id\":\"u3\"}").await, 429);
    let known: &[u8] = b"x-token: tok\r\nforwarded: for=198.51.100.8\r\n";
    assert_eq!(open(known, "{\"id\":\"k1\"}").await, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unsigned_requests_does_not_spend_the_providers_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(&format!(
        "{}rate_limit = {{ per_second = 1, burst = 5 }}\n",
        token_source(dir.path())
    ))
    .await;
    let url = app.url("/hooks/t");
    // Many unsigned (wrong-token) requests at once: each is refused as unauthenticated...
    let flood = (0..60).map(|i| {
        let url = url.clone();
        async move {
            post(
                &url,
                &[h("x-token", "forged")],
                format!("{{\"id\":\"f{i}\"}}"),
            )
            .await
            .status
        }
    });
    let statuses = futures_util::future::join_all(flood).await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    // ...and the provider's signed ones still find its whole bucket (burst 5).
    for i in 0..5 {
        let r = post(&url, &[h("x-token", "tok")], format!("{{\"id\":\"p{i}\"}}")).await;
        assert_eq!(r.status, 200, "provider request {i}: {:?}", r.body);
    }
    // The source's limit still holds for verified traffic.
    let r = post(&url, &[h("x-token", "tok")], r#"{"id":"p5"}"#).await;
    assert_eq!(r.status, 429);
    app.stop().await;
}

#[tokio::test]
async fn ipv6_clients_are_rate_limited_per_64_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1/32\"]\nforwarded_header = \"x-forwarded-for\"\n{}rate_limit_per_ip = {{ per_second = 1, burst = 1 }}\n",
        token_source(dir.path())
    ))
    .await;
    let from = |client: &str, id: &str| {
        let (url, body) = (app.url("/hooks/t"), format!("{{\"id\":\"{id}\"}}"));
        let headers = vec![h("x-token", "tok"), h("x-forwarded-for", client)];
        async move { post(&url, &headers, body).await.status }
    };
    assert_eq!(from("2001:db8:1:2::1", "a").await, 200);
    // Another address in the same /64: the same subscriber, the same (empty) bucket.
    assert_eq!(from("2001:db8:1:2:ffff:ffff:ffff:ffff", "b").await, 429);
    // The next /64 is someone else.
    assert_eq!(from("2001:db8:1:3::1", "c").await, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_being_read_share_one_budget() {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_buffer_bytes = 65536\nbody_timeout_ms = 20000\n{}max_body_bytes = 49152\n",
        token_source(dir.path())
    ))
    .await;
    // A slow sender declares 40 000 bytes and sends ten: the budget holds all 40 000 for it.
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(
        format!(
            "POST /hooks/t HTTP/1.1\r\nhost: x\r\nx-token: tok\r\ncontent-length: 40000\r\n\r\n{}",
            "{\"id\":\"s\","
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let big = |id: &str| format!("{{\"id\":\"{id}\",\"pad\":\"{}\"}}", "x".repeat(39_970));
    let r = post(&app.url("/hooks/t"), &[h("x-token", "tok")], big("b1")).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (503, Some("body_budget")),
        "40 000 + 40 000 > 65 536"
    );
    assert!(r.headers.contains_key("retry-after"));
    // What still fits is read as usual.
    let small = post(
        &app.url("/hooks/t"),
        &[h("x-token", "tok")],
        r#"{"id":"small"}"#,
    )
    .await;
    assert_eq!(small.status, 200);
    // The slow sender goes away: its bytes are released, and the large body fits again.
    drop(slow);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = post(&app.url("/hooks/t"), &[h("x-token", "tok")], big("b2")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    app.stop().await;
}

#[tokio::test]
async fn signature_lists_are_capped_before_they_cost_anything() {
    use hookbridge_testkit::{StandardV1a, bogus_v1a as bogus};
    let dir = tempfile::tempdir().unwrap();
    let seed = cobo_test_seed();
    let app = TestApp::spawn(&format!(
        "[sinks.f]\ntype = \"file\"\npath = \"{}\"\n[sources.sw]\nverify = {{ scheme = \"standard-webhooks\", public_keys = [\"{}\"] }}\n",
        dir.path().join("events.jsonl").display(),
        StandardV1a::new(&seed).public_key()
    ))
    .await;
    // `bogus(i)`: R = the base point, s = i: well-formed bogus Ed25519 signatures, each distinct.
    let send = |list: String, id: &'static str| {
        let body = format!("{{\"type\":\"t\",\"n\":\"{id}\"}}");
        let mut headers = sign_standard_v1a(&seed, id, now_secs(), body.as_bytes());
        let genuine = headers.pop().unwrap().1;
        headers.push(h("webhook-signature", &format!("{list} {genuine}")));
        let url = app.url("/hooks/sw");
        async move { post(&url, &headers, body).await }
    };
    // Nine distinct entries before the genuine one: refused before any is checked.
    let nine = (0..9).map(bogus).collect::<Vec<_>>().join(" ");
    let r = send(nine, "msg_nine").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (401, Some("malformed_signature"))
    );
    // Repeats count once: 120 copies of one bogus entry (10 KB of header) and the genuine one
    // pass.
    let r = send(vec![bogus(3); 120].join(" "), "msg_repeats").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    app.stop().await;
}

/// Reads until the server closes `stream` (EOF or reset), for at most `within`; whether it did.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    within: std::time::Duration,
) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {} // the server's SETTINGS frame, or an answer
            Err(_) => return false,
        }
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_http2_connections_cannot_hold_the_connection_permits() {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_connections = 8\nheader_timeout_ms = 1000\n{}",
        token_source(dir.path())
    ))
    .await;
    // Eight connections that send the HTTP/2 preface and then nothing.
    let mut silent = Vec::new();
    for _ in 0..8 {
        let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        tcp.write_all(PREFACE).await.unwrap();
        silent.push(tcp);
    }
    let started = std::time::Instant::now();
    for tcp in &mut silent {
        assert!(
            closed_within(tcp, std::time::Duration::from_secs(5)).await,
            "a silent HTTP/2 connection stayed open"
        );
    }
    eprintln!("silent h2 connections closed after {:?}", started.elapsed());
    let r = post(
        &app.url("/hooks/t"),
        &[h("x-token", "tok")],
        r#"{"id":"after"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_h2_connections_cannot_hold_the_connection_permits() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_connections = 4\nheader_timeout_ms = 1000\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{}",
        repo_path("tests/fixtures/tls/server.pem").display(),
        repo_path("tests/fixtures/tls/server.key").display(),
        token_source(dir.path())
    ))
    .await;
    let connect = |alpn: &'static [&'static [u8]]| async move {
        crate::security::tls_client_offering(alpn)
            .connect(
                tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tokio::net::TcpStream::connect(app.addr).await.unwrap(),
            )
            .await
            .unwrap()
    };
    // Four TLS handshakes that settle on h2, then silence.
    let mut silent = Vec::new();
    for _ in 0..4 {
        let stream = connect(&[b"h2"]).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        silent.push(stream);
    }
    for stream in &mut silent {
        assert!(
            closed_within(stream, std::time::Duration::from_secs(5)).await,
            "a silent TLS h2 connection stayed open"
        );
    }
    // A real request over TLS (HTTP/1.1) gets a permit again.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tls = connect(&[]).await;
    let body = r#"{"id":"tls-after"}"#;
    tls.write_all(
        format!(
            "POST /hooks/t HTTP/1.1\r\nhost: localhost\r\nx-token: tok\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_cannot_take_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_connections_per_ip = 2\nheader_timeout_ms = 5000\n{}",
        token_source(dir.path())
    ))
    .await;
    let from = |ip: &str| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(std::net::SocketAddr::new(ip.parse().unwrap(), 0))
            .unwrap();
        socket.connect(app.addr)
    };
    // Two idle connections from 127.0.0.1 fill its share.
    let _a = from("127.0.0.1").await.unwrap();
    let _b = from("127.0.0.1").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let other: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let head: &[u8] = b"x-token: tok\r\n";
    assert_eq!(
        raw_post(local, app.addr, "/hooks/t", head, r#"{"id":"third"}"#).await,
        503
    );
    // Another address is not affected.
    assert_eq!(
        raw_post(other, app.addr, "/hooks/t", head, r#"{"id":"other"}"#).await,
        200
    );
    drop((_a, _b));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        raw_post(local, app.addr, "/hooks/t", head, r#"{"id":"again"}"#).await,
        200
    );
    app.stop().await;
}

/// A keep-alive connection that has had one request answered 200, and is still open.
async fn answered_once(addr: std::net::SocketAddr, id: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = format!("{{\"id\":\"{id}\"}}");
    let request = format!(
        "POST /hooks/t HTTP/1.1\r\nhost: x\r\nx-token: tok\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = [0u8; 512];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tcp
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nidle_timeout_ms = 300\nheader_timeout_ms = 10000\n{}",
        token_source(dir.path())
    ))
    .await;
    let mut tcp = answered_once(app.addr, "ka").await;
    // Kept alive, then idle: closed well before the 10 s header timeout.
    assert!(closed_within(&mut tcp, std::time::Duration::from_secs(3)).await);
    app.stop().await;
}

#[tokio::test]
async fn an_old_connection_is_asked_to_close() {
    let dir = tempfile::tempdir().unwrap();
    // Idle and header timeouts far away: only the age can close it.
    let app = TestApp::spawn(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_connection_age_ms = 500\nidle_timeout_ms = 60000\nheader_timeout_ms = 10000\n{}",
        token_source(dir.path())
    ))
    .await;
    let mut tcp = answered_once(app.addr, "old").await;
    let started = std::time::Instant::now();
    assert!(closed_within(&mut tcp, std::time::Duration::from_secs(3)).await);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    app.stop().await;
}
