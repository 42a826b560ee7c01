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
    for entry in std::fs::read_dir(repo_path("config")).unwrap() {
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
