use std::time::Duration;

use http::HeaderName;

use super::*;
use crate::callback;
use crate::normalize::locator::Locator;
use crate::sink::spec::{SinkKind, redact_url};

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
    // Cobo's own `cobo_id` first; `request_id` (chosen by whoever calls Cobo's API) after.
    let ids: Vec<String> = w.event_id.iter().map(ToString::to_string).collect();
    assert_eq!(ids, ["body:/cobo_id", "body:/request_id"]);
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
    // No documented tolerance: the window is what dedup remembers (7 days by default).
    assert_eq!(
        cobo.verifier.replay_window(),
        Some(Duration::from_secs(7 * 24 * 3600))
    );
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

#[test]
fn replay_windows_follow_what_the_source_remembers_and_odd_ones_warn() {
    let text = r#"
[dedup]
ttl_secs = 3600
[decisions]
remember_secs = 600
[sources.hooks]
verify = { scheme = "cobo-waas2", public_keys = ["prod"] }
[sources.std]
verify = { scheme = "standard-webhooks", secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] }
[sources.approvals]
kind = "callback"
purpose = "approval"
verify = { scheme = "cobo-waas1", public_keys = ["prod"] }
decision = { default = "deny" }
[sources.off]
verify = { scheme = "cobo-waas2", public_keys = ["prod"] }
replay_window_secs = 0
[sources.long]
verify = { scheme = "cobo-waas2", public_keys = ["prod"] }
replay_window_secs = 7200
"#;
    let cfg = load(text, &no_env).unwrap();
    let window = |name: &str| {
        cfg.sources
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .verifier
            .replay_window()
    };
    assert_eq!(window("hooks"), Some(Duration::from_secs(3600)));
    assert_eq!(window("std"), Some(Duration::from_secs(300)));
    assert_eq!(window("approvals"), Some(Duration::from_secs(600)));
    assert_eq!(window("off"), None);
    let all = cfg.warnings.join("\n");
    assert!(
        all.contains("sources.off.replay_window_secs = 0: the replay window is off"),
        "{all}"
    );
    assert!(
        all.contains("sources.long.replay_window_secs = 7200 is longer than dedup.ttl_secs"),
        "{all}"
    );
}

#[test]
fn ids_and_types_from_unsigned_headers_are_refused_unless_accepted() {
    let github = |extra: &str| {
        format!(
            "[sources.gh]\nverify = {{ scheme = \"hmac-sha256\", header = \"X-Hub-Signature-256\", secrets = [\"s\"] }}\nevent_id = [\"header:X-GitHub-Delivery\"]\nevent_type = [\"header:X-GitHub-Event\"]\n{extra}"
        )
    };
    let all = load(&github(""), &no_env).unwrap_err().0.join("\n");
    assert!(
        all.contains("sources.gh.event_id[0]: header:x-github-delivery is not covered by the hmac-sha256 signature"),
        "{all}"
    );
    assert!(all.contains("sources.gh.event_type[0]"), "{all}");
    let cfg = load(
        &github("unsigned_headers = [\"X-GitHub-Delivery\", \"X-GitHub-Event\", \"X-Unused\"]"),
        &no_env,
    )
    .unwrap();
    let gh = &cfg.sources[0];
    assert!(gh.event_id[0].is_unsigned() && gh.event_type[0].is_unsigned());
    assert!(
        cfg.warnings
            .iter()
            .any(|w| w.contains("x-unused is listed")),
        "{:?}",
        cfg.warnings
    );
    // Headers the scheme signs need no opt-in.
    let cfg = load(
        "[sources.std]\nverify = { scheme = \"standard-webhooks\", secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"] }\nevent_id = [\"header:webhook-id\"]\n",
        &no_env,
    )
    .unwrap();
    assert!(!cfg.sources[0].event_id[0].is_unsigned());
}

#[test]
fn approvals_need_body_callback_ids_secrets_and_disjoint_namespaces() {
    let text = r#"
[dedup]
backend = "redis"
redis_url = "redis://127.0.0.1/0"
key_prefix = "hb:"
[decisions]
key_prefix = "hb:decisions:"
[sinks.k]
type = "kafka"
brokers = "127.0.0.1:9092"
[sources.w]
kind = "callback"
purpose = "approval"
verify = { scheme = "cobo-waas2", public_keys = ["prod"] }
callback_id = ["header:X-Request-Id", "/transaction_id"]
[sources.w.decision]
default = "ask"
service = { sink = "k", secret = "short" }
"#;
    let all = load(text, &no_env).unwrap_err().0.join("\n");
    for expected in [
        "sources.w.callback_id[0]: header:x-request-id: Cobo signs no header",
        "sources.w.decision.service.secret: at least 16 bytes",
        "decisions.secret: required when decisions are remembered in Redis",
        "decisions.key_prefix: \"hb:decisions:\" and dedup.key_prefix \"hb:\" overlap",
    ] {
        assert!(all.contains(expected), "{expected}\n{all}");
    }
    // Secrets are never echoed, whatever is wrong with them.
    assert!(!all.contains("short"), "{all}");
    // Fixed: a body locator, secrets (one from a file), separate prefixes.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "0123456789abcdef0123456789abcdef\n").unwrap();
    let fixed = text
        .replace("\"header:X-Request-Id\", ", "")
        .replace(
            "secret = \"short\"",
            &format!("secret_file = {:?}", file.display().to_string()),
        )
        .replace(
            "key_prefix = \"hb:decisions:\"",
            "key_prefix = \"hd:\"\nsecret = \"${STORE_SECRET}\"",
        );
    let env = |_: &str| Some("a-store-secret-of-32-bytes-000000".to_owned());
    let cfg = load(&fixed, &env).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.decisions.secret.is_some());
    // No service secret at all.
    let all = load(
        &fixed.replace(
            &format!("secret_file = {:?}", file.display().to_string()),
            "requests = \"r\"",
        ),
        &env,
    )
    .unwrap_err()
    .0
    .join("\n");
    assert!(
        all.contains("sources.w.decision.service.secret: required"),
        "{all}"
    );
}

#[test]
fn the_production_too_large_rule_reads_a_field_a_waas2_callback_carries() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/production.example.toml"
    ))
    .unwrap();
    let cfg = load(&text, &|name: &str| {
        Some(if name.starts_with("REDIS") {
            "redis://127.0.0.1:6379/0".to_owned()
        } else {
            format!("placeholder-{name}")
        })
    })
    .unwrap();
    let source = cfg
        .sources
        .iter()
        .find(|s| s.name == "cobo-callbacks")
        .unwrap();
    let rules = &source.kind.approval().unwrap().rules;
    // A WaaS 2.0 withdrawal callback (a Transaction) to an address.
    let callback = |amount: &str| {
        serde_json::json!({
            "transaction_id": "aff0e1cb-15b2-4e1f-9b9d-a9133715986f",
            "request_id": "760a1955-e212-4dfb-a8d0-e66312a1a051",
            "wallet_id": "f47ac10b-58cc-4372-a567-0e02b2c3d479",
            "type": "Withdrawal", "status": "PendingApproval", "chain_id": "ETH", "token_id": "ETH_USDT",
            "source": { "source_type": "Custodial", "wallet_id": "f47ac10b-58cc-4372-a567-0e02b2c3d479" },
            "destination": { "destination_type": "Address",
                             "account_output": { "address": "0x2f8BdfEa7B1A5d2B4b1f2e1b6A8dD0C1d3e4F5a6", "amount": amount } },
            "created_timestamp": 1701396866000u64, "updated_timestamp": 1701396866000u64
        })
    };
    assert!(matches!(
        rules.evaluate("cobo-callbacks", "t", &callback("250000.5")),
        callback::rules::Outcome::Matched {
            decision: callback::Verdict::Deny,
            ..
        }
    ));
    assert_eq!(
        rules.evaluate("cobo-callbacks", "t", &callback("10")),
        callback::rules::Outcome::NoMatch
    );
}

#[test]
fn shadow_mode_warns_and_is_refused_for_approvals() {
    let cfg = load(
        "[sources.moving]\nshadow = true\nverify = { scheme = \"stripe\", secrets = [\"whsec_x\"] }\n",
        &no_env,
    )
    .expect("valid");
    assert!(cfg.sources[0].shadow);
    assert!(
        cfg.warnings
            .iter()
            .any(|w| w.contains("source moving: shadow = true ACCEPTS")),
        "{:?}",
        cfg.warnings
    );
    let refused = load(
        r#"
[sources.withdrawals]
kind = "callback"
purpose = "approval"
shadow = true
verify = { scheme = "cobo-waas2", public_keys = ["prod"] }
decision = { default = "deny" }
"#,
        &no_env,
    )
    .unwrap_err()
    .0;
    assert!(
        refused.iter().any(
            |e| e.starts_with("sources.withdrawals.shadow: an approval callback's ok approves")
        ),
        "{refused:?}"
    );
    // A notification's `ok` only acknowledges: shadow mode is allowed there.
    load(
        r#"
[sources.pushes]
kind = "callback"
purpose = "notification"
shadow = true
verify = { scheme = "cobo-waas1", public_keys = ["prod"] }
"#,
        &no_env,
    )
    .expect("valid");
}

#[test]
fn on_refused_defaults_to_dead_letter_and_approvals_refuse_it() {
    let cfg = load(
        "[sources.hooks]\nverify = { scheme = \"stripe\", secrets = [\"whsec_x\"] }\n",
        &no_env,
    )
    .expect("valid");
    assert_eq!(
        cfg.sources[0].on_refused,
        crate::plan::OnRefused::DeadLetter
    );
    let approval = |extra: &str| {
        load(
            &format!(
                r#"
[sources.withdrawals]
kind = "callback"
purpose = "approval"
verify = {{ scheme = "cobo-waas2", public_keys = ["prod"] }}
decision = {{ default = "deny" }}
{extra}
"#
            ),
            &no_env,
        )
    };
    // An approval's `ok` must follow its audit event on the broker: it keeps the 503.
    let cfg = approval("").expect("valid");
    assert_eq!(cfg.sources[0].on_refused, crate::plan::OnRefused::Reject);
    let refused = approval("on_refused = \"dead-letter\"").unwrap_err().0;
    assert!(
        refused
            .iter()
            .any(|e| e.starts_with("sources.withdrawals.on_refused: an approval's ok")),
        "{refused:?}"
    );
}
