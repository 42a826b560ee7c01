//! `hookbridge check-config` and `hookbridge health` through the real binary.

use std::process::Command;

use crate::helpers::repo_path;

fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hookbridge"))
        .args(["check-config", "--config"])
        .arg(path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        // The production template reads its secrets from the environment.
        .envs(
            [
                "KAFKA_BROKERS",
                "KAFKA_USERNAME",
                "KAFKA_PASSWORD",
                "STRIPE_WEBHOOK_SECRET",
                "STRIPE_WEBHOOK_SECRET_PREVIOUS",
                "GITHUB_WEBHOOK_SECRET",
                "AMQP_URL",
            ]
            .map(|k| (k, "placeholder")),
        )
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
        // The benchmark configs (bench/run.sh exports these).
        .env("BENCH_DIR", "/tmp/hookbridge-bench-check")
        .env("BENCH_RUN", "1")
        .env("REDIS_URL", "redis://127.0.0.1:6379/0")
        .env("STANDARD_WEBHOOKS_SECRET", "whsec_cGxhY2Vob2xkZXI=")
        .env("DECISION_STORE_SECRET", "placeholder-store-secret-32-bytes")
        .env(
            "DECISION_SERVICE_SECRET",
            "placeholder-service-secret-32-byte",
        )
        .output()
        .unwrap()
}

#[test]
fn every_shipped_config_passes() {
    // The benchmark's configs too: a setting they lack stops a benchmark run, which CI does not
    // otherwise run.
    let dirs = [repo_path("config"), repo_path("bench")];
    for entry in dirs.iter().flat_map(|d| std::fs::read_dir(d).unwrap()) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = check(&path);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                stdout.contains("configuration OK") && stdout.contains("sources:"),
                "{stdout}"
            );
        }
    }
}

#[test]
fn three_errors_are_all_reported_with_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[sources.a]
verify = { scheme = "rsa-sha256", public_keys = ["-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----"] }

[sources.b]
verify = { scheme = "hmac-sha512", header = "x", secrets = ["s"] }

[sources.c]
verify = { scheme = "standard-webhooks", secrets = ["whsec_%%%"] }
"#,
    )
    .unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 error(s)"), "{stderr}");
    assert!(
        stderr.contains("sources.a.verify.public_keys[0]: not a PEM RSA public key"),
        "{stderr}"
    );
    assert!(
        stderr.contains("sources.b.verify.scheme: unknown variant `hmac-sha512`"),
        "{stderr}"
    );
    assert!(stderr.contains("sources.c.verify.secrets[0]"), "{stderr}");
}

/// Runs `hookbridge send` (asynchronously: the app under test serves on this runtime).
async fn send(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookbridge"))
        .arg("send")
        .arg("--config")
        .arg(config)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `hookbridge send` against a running instance of the example config (plus a generic HMAC
/// source, an unsigned one, and the bench RSA key the RSA source is told to trust): every scheme
/// is accepted, and every `--tamper` refused with 401 and nothing stored.
#[tokio::test]
async fn send_is_accepted_for_every_scheme_and_tamper_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let example = std::fs::read_to_string(repo_path("config/example.toml")).unwrap();
    // Cobo's own `cobo webhook test` signs with this key: a first local test must verify.
    assert!(example.contains(hookbridge_testkit::keys::COBO_WEBHOOK_TEST_PUBKEY_HEX));
    let text = format!(
        "{}\n\n[sources.inhouse]\nverify = {{ scheme = \"hmac-sha256\", header = \"X-Signature-256\", encoding = \"base64\", prefix = \"v1=\", secrets = [\"00ff10\"], secret_encoding = \"hex\" }}\n\n\
         [sources.open]\nverify = {{ scheme = \"none\", accept_unsigned_requests = true }}\n\n\
         [sinks.default]\ntype = \"file\"\npath = \"{}\"\n",
        example.replace(
            "header = \"X-Signature\"\n",
            &format!(
                "header = \"X-Signature\"\npublic_key_files = [\"{}\"]\n",
                repo_path("bench/keys/rsa-public.pem").display()
            ),
        ),
        events.display()
    );
    let path = dir.path().join("hookbridge.toml");
    std::fs::write(&path, &text).unwrap();
    let app = crate::helpers::TestApp::spawn(&text).await;
    let rsa_key = repo_path("bench/keys/rsa-private.pem");
    let sources: Vec<(&str, Vec<&str>)> = vec![
        ("cobo-waas2", vec![]),
        ("cobo-waas1", vec![]),
        (
            "rsa-gateway",
            vec!["--private-key", rsa_key.to_str().unwrap()],
        ),
        ("github", vec![]),
        ("shopify", vec![]),
        ("token", vec![]),
        ("standard", vec![]),
        ("stripe", vec![]),
        ("slack", vec![]),
        ("zoom", vec![]),
        ("twilio", vec![]),
        ("square", vec![]),
        ("paddle", vec![]),
        ("inhouse", vec![]),
        ("open", vec![]),
    ];
    for (source, extra) in &sources {
        let url = app.url(&format!("/hooks/{source}"));
        let mut args = vec!["--source", source, "--url", &url];
        args.extend(extra);
        if *source != "open" {
            let mut tampered = args.clone();
            tampered.push("--tamper");
            let (code, out, err) = send(&path, &tampered).await;
            assert_eq!(code, Some(1), "{source} --tamper: {out} {err}");
            assert!(
                out.starts_with("401 Unauthorized"),
                "{source} --tamper: {out}"
            );
        }
        let (code, out, err) = send(&path, &args).await;
        assert_eq!(code, Some(0), "{source}: {out} {err}");
        assert!(
            out.starts_with("200 OK {") && out.contains(r#""status":"accepted""#),
            "{source}: {out}"
        );
        assert!(err.is_empty(), "{source}: {err}");
    }
    let written = crate::helpers::file_events(&events);
    assert_eq!(
        written.len(),
        sources.len(),
        "one event per send, none for --tamper"
    );

    // `none` verifies nothing: a tamper could not be refused, so it is not sent at all.
    let url = app.url("/hooks/open");
    let (code, _, err) = send(&path, &["--source", "open", "--url", &url, "--tamper"]).await;
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("verifies nothing"), "{err}");
    // A body of one's own is signed as it is.
    let body = dir.path().join("body.json");
    std::fs::write(
        &body,
        r#"{"id":"evt_from_a_file","type":"charge.refunded"}"#,
    )
    .unwrap();
    let url = app.url("/hooks/stripe");
    let (code, out, _) = send(
        &path,
        &[
            "--source",
            "stripe",
            "--url",
            &url,
            "--body",
            body.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("evt_from_a_file"), "{out}");
    // An unknown source, and an RSA source without a key: told, nothing sent.
    let (code, _, err) = send(&path, &["--source", "nope"]).await;
    assert_eq!(code, Some(78));
    assert!(err.contains("no source \"nope\""), "{err}");
    let (code, _, err) = send(&path, &["--source", "rsa-gateway", "--url", &url]).await;
    assert_eq!(code, Some(78));
    assert!(err.contains("--private-key"), "{err}");
    app.stop().await;
}

/// `hookbridge health` with `args`: its exit code and the line it printed.
fn health(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hookbridge"))
        .arg("health")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn file_sink_config(dir: &std::path::Path) -> String {
    format!(
        "[sinks.local]\ntype = \"file\"\npath = \"{}\"\n[sources.s]\nverify = {{ scheme = \"shared-secret\", header = \"x-token\", secrets = [\"0123456789abcdef\"] }}\n",
        dir.join("events.jsonl").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_0_when_ready_on_either_path() {
    let dir = tempfile::tempdir().unwrap();
    let app = crate::helpers::TestApp::spawn(&file_sink_config(dir.path())).await;
    let addr = app.addr.to_string();
    let (code, line) = tokio::task::spawn_blocking(move || health(&["--addr", &addr]))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{line}");
    assert!(
        line.starts_with("ready: ") && line.ends_with("/readyz answered 200\n"),
        "{line}"
    );
    let url = app.url("/healthz");
    let (code, line) = tokio::task::spawn_blocking(move || health(&["--url", &url]))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{line}");
    app.stop().await;
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_1_while_a_sink_is_not_ready_and_0_for_healthz() {
    // A RabbitMQ sink whose broker is nowhere, and no spool to stand in: /readyz is 503.
    let closed = crate::kafka::free_port();
    let app = crate::helpers::TestApp::spawn(&format!(
        "[spool]\nenabled = false\n[sinks.rabbit]\ntype = \"rabbitmq\"\nurl = \"amqp://guest:guest@127.0.0.1:{closed}/%2f\"\n[sources.s]\nverify = {{ scheme = \"shared-secret\", header = \"x-token\", secrets = [\"0123456789abcdef\"] }}\n"
    ))
    .await;
    let addr = app.addr.to_string();
    let (code, line) = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || health(&["--addr", &addr])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.starts_with("not ready: ") && line.contains("answered 503"),
        "{line}"
    );
    // Alive all the same.
    let (code, line) =
        tokio::task::spawn_blocking(move || health(&["--addr", &addr, "--path", "/healthz"]))
            .await
            .unwrap();
    assert_eq!(code, Some(0), "{line}");
    app.stop().await;
}

#[test]
fn health_is_69_when_nothing_answers() {
    // Nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, line) = health(&["--addr", &format!("127.0.0.1:{port}")]);
    assert_eq!(code, Some(69), "{line}");
    assert!(line.starts_with("unreachable: "), "{line}");

    // Listening, but never answering: the timeout ends the probe.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let (code, line) = health(&["--addr", &addr, "--timeout", "300ms"]);
    assert_eq!(code, Some(69), "{line}");
    assert!(line.contains("no answer within the timeout"), "{line}");

    // Answering something that is not HTTP.
    let garbage = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = garbage.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        use std::io::Write as _;
        let (mut conn, _) = garbage.accept().unwrap();
        let _ = conn.write_all(&[b'x'; 4096]);
    });
    let (code, line) = health(&["--addr", &addr]);
    assert_eq!(code, Some(69), "{line}");
    assert!(line.contains("not HTTP"), "{line}");
    server.join().unwrap();
}

#[test]
fn health_refuses_unusable_targets() {
    for args in [
        &["--url", "https://127.0.0.1:9090/readyz"][..],
        &["--addr", "127.0.0.1"],
        &[
            "--addr",
            "127.0.0.1:1",
            "--path",
            "/readyz\r\nX-Injected: 1",
        ],
    ] {
        let (code, line) = health(args);
        assert_eq!(code, Some(64), "{args:?}: {line}");
    }
}
