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
                Some(if name.starts_with("REDIS") {
                    "redis://127.0.0.1:6379/0".to_owned()
                } else if name.ends_with("_URL") {
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
fn callback_sources_must_say_what_ok_means_and_how_to_decide() {
    let text = r#"
[sinks.f]
type = "file"
path = "/tmp/x.jsonl"

[sinks.r]
type = "rabbitmq"
url = "amqp://localhost"

[sources.no-purpose]
kind = "callback"
sink = "f"
verify = { scheme = "cobo-waas2", public_keys = ["prod"] }

[sources.no-decision]
kind = "callback"
purpose = "approval"
sink = "f"
verify = { scheme = "cobo-waas1", public_keys = ["prod"] }

[sources.ask-nobody]
kind = "callback"
purpose = "approval"
sink = "f"
verify = { scheme = "cobo-waas2", public_keys = ["prod"] }
decision = { default = "ask" }

[sources.ask-file]
kind = "callback"
purpose = "approval"
sink = "f"
verify = { scheme = "cobo-waas2", public_keys = ["prod"] }
decision = { default = "ask", service = { sink = "f" } }

[sources.bad-rule]
kind = "callback"
purpose = "approval"
sink = "f"
ack = "accept"
verify = { scheme = "cobo-waas2", public_keys = ["prod"] }
decision = { default = "deny", rules = [{ name = "x", when = "body.amount >", decision = "ok" }] }

[sources.hmac-callback]
kind = "callback"
purpose = "notification"
sink = "f"
verify = { scheme = "shared-secret", header = "x-t", secrets = ["s"] }

[sources.webhook-with-decision]
sink = "f"
verify = { scheme = "cobo-waas2", public_keys = ["prod"] }
decision = { default = "deny" }

[sources.unused-service]
kind = "callback"
purpose = "approval"
sink = "r"
verify = { scheme = "cobo-waas2", public_keys = ["prod"] }
decision = { default = "deny", service = { sink = "r" } }
"#;
    let all = load(text, &no_env).unwrap_err().0.join("\n");
    for expected in [
        "sources.no-purpose.purpose: required for kind = \"callback\"",
        "sources.no-decision.decision: required for purpose = \"approval\"",
        "sources.ask-nobody.decision.service: required for default = \"ask\"",
        "sources.ask-file.decision.service.sink: \"f\" is a file sink",
        "sources.bad-rule.decision.rules[0].when: not a valid CEL expression",
        "sources.bad-rule.ack: \"accept\" cannot be used for a callback",
        "sources.hmac-callback.kind: \"callback\" is for the cobo-waas2 and cobo-waas1 schemes",
        "sources.webhook-with-decision.decision: only for kind = \"callback\"",
        "sources.unused-service.decision.service: only asked when default = \"ask\"",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
}

#[test]
fn an_approval_callback_is_keyed_by_its_callback_id() {
    let text = r#"
[sources.withdrawals]
kind = "callback"
purpose = "approval"
verify = { scheme = "cobo-waas1", public_keys = ["sandbox-legacy"] }
decision = { default = "ok", rules = [{ name = "big", when = "int(body.amount) > 100", decision = "deny" }] }

[sources.pushes]
kind = "callback"
purpose = "notification"
verify = { scheme = "cobo-waas1", public_keys = ["sandbox-legacy"] }
"#;
    let cfg = load(text, &no_env).expect("valid");
    let w = cfg
        .sources
        .iter()
        .find(|s| s.name == "withdrawals")
        .expect("w");
    let ids: Vec<String> = w.event_id.iter().map(ToString::to_string).collect();
    assert_eq!(ids, ["body:/request_id", "body:/cobo_id"]);
    assert!(w.kind.approval().is_some() && !w.dedup);
    // default = "ok" approves what no rule denies: allowed, but said loudly.
    assert!(
        cfg.warnings.iter().any(|w| w.contains("APPROVED")),
        "{:?}",
        cfg.warnings
    );
    let p = cfg.sources.iter().find(|s| s.name == "pushes").expect("p");
    assert_eq!(p.kind.name(), "callback (notification)");
    assert!(p.dedup);
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
