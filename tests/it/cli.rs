//! `hookbridge check-config` through the real binary.

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
