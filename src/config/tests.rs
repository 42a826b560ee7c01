use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn every_file_in_config_dir_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            // Example configs take secrets from the environment; supply placeholders of the
            // right shape.
            let env = |name: &str| {
                Some(if name.ends_with("_URL") {
                    "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()
                } else if name.starts_with("STANDARD_WEBHOOKS") {
                    "whsec_cGxhY2Vob2xkZXI=".to_owned()
                } else {
                    format!("placeholder-{name}")
                })
            };
            if let Err(e) = load(&text, &env) {
                panic!("{}: {e}", path.display());
            }
            seen += 1;
        }
    }
    assert!(seen >= 2, "expected example configs in config/");
}

#[test]
fn reports_every_error_at_once() {
    let text = r#"
[server]
listen = "127.0.0.1:0"
colour = "blue"

[sources.a]
verify = { scheme = "cobo-waas2", public_keys = ["staging"] }

[sources.b]
verify = { scheme = "mystery" }

[sources.c]
verify = { scheme = "hmac-sha256", header = "x-sig", secrets = ["${NOPE}"] }
sink = "kafka"
"#;
    let errors = load(text, &no_env).unwrap_err().0;
    let all = errors.join("\n");
    assert!(
        all.contains("server.colour: unknown field `colour`"),
        "{all}"
    );
    assert!(all.contains("sources.a.verify.public_keys[0]"), "{all}");
    assert!(
        all.contains("sources.b.verify.scheme: unknown variant `mystery`"),
        "{all}"
    );
    assert!(
        all.contains("environment variable NOPE is not set"),
        "{all}"
    );
    assert!(
        all.contains("sources.c.sink: no sink named \"kafka\""),
        "{all}"
    );
    assert_eq!(errors.len(), 5, "{all}");
}

#[test]
fn callback_kind_is_refused_clearly() {
    let text = r#"
[sources.cb]
kind = "callback"
verify = { scheme = "cobo-waas2", public_keys = ["prod"] }
"#;
    let all = load(text, &no_env).unwrap_err().0.join("\n");
    assert!(
        all.contains("sources.cb.kind: \"callback\" is not available"),
        "{all}"
    );
}

#[test]
fn none_scheme_needs_explicit_consent_and_warns() {
    let refused = load("[sources.x]\nverify = { scheme = \"none\" }\n", &no_env)
        .unwrap_err()
        .0;
    assert!(
        refused[0].contains("accept_unsigned_requests"),
        "{refused:?}"
    );
    let cfg = load(
        "[sources.x]\nverify = { scheme = \"none\", accept_unsigned_requests = true }\n",
        &no_env,
    )
    .unwrap();
    assert!(cfg.warnings[0].contains("UNSIGNED"));
}

#[test]
fn secrets_never_appear_in_errors() {
    // A secret given where a list is expected: serde would quote it.
    let text = "[sources.x]\nverify = { scheme = \"stripe\", secrets = \"whsec_topsecret\" }\n";
    let all = load(text, &no_env).unwrap_err().0.join("\n");
    assert!(!all.contains("topsecret"), "{all}");
    let text = "[sources.x]\nverify = { scheme = \"standard-webhooks\", secrets = [\"${S}\"] }\n";
    let env = |_: &str| Some("whsec_not*base64*topsecret".to_owned());
    let all = load(text, &env).unwrap_err().0.join("\n");
    assert!(!all.contains("topsecret"), "{all}");
    assert!(all.contains("sources.x.verify.secrets[0]"), "{all}");
}

#[test]
fn defaults_per_scheme() {
    let text = r#"
[sources.cobo]
verify = { scheme = "cobo-waas2", public_keys = ["prod", "dev"] }
[sources.std]
verify = { scheme = "standard-webhooks", secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] }
"#;
    let cfg = load(text, &no_env).unwrap();
    let cobo = cfg.sources.iter().find(|s| s.name == "cobo").unwrap();
    assert_eq!(
        cobo.event_id,
        vec![
            Locator::Body("/event_id".into()),
            Locator::Body("/id".into())
        ]
    );
    assert_eq!(cobo.verifier.replay_window(), None);
    assert_eq!(cobo.ack_deadline, Duration::from_millis(1500));
    assert_eq!(cobo.sink, "default");
    let std = cfg.sources.iter().find(|s| s.name == "std").unwrap();
    assert_eq!(
        std.event_id[0],
        Locator::Header(HeaderName::from_static("webhook-id"))
    );
    assert_eq!(std.verifier.replay_window(), Some(Duration::from_secs(300)));
    assert!(
        matches!(&cfg.sinks[0].kind, SinkKind::File { path } if path.ends_with("events.jsonl"))
    );
}

#[test]
fn delivery_settings_cannot_be_overridden() {
    let text = r#"
[sinks.k]
type = "kafka"
brokers = "127.0.0.1:9092"
librdkafka = { "acks" = "1", "linger.ms" = "0" }
[sources.x]
verify = { scheme = "stripe", secrets = ["s"] }
"#;
    let all = load(text, &no_env).unwrap_err().0.join("\n");
    assert!(all.contains("sinks.k.librdkafka.acks"), "{all}");
    assert!(!all.contains("linger.ms"), "{all}");
}

#[test]
fn urls_are_redacted_in_summaries() {
    assert_eq!(
        redact_url("amqp://user:pw@host:5672/%2f"),
        "amqp://user:***@host:5672/%2f"
    );
    assert_eq!(redact_url("amqp://host"), "amqp://host");
}
