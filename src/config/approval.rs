//! A source's `kind`, `purpose`, `callback_id` and `decision`: whether it is a webhook or a
//! Cobo callback, and for an approval callback how each one is decided (rules, the decision
//! service, the default) and which body fields identify it.

use std::time::Duration;

use super::parse::parse_locators;
use super::problems::Scope;
use super::raw::{
    RawBadSignature, RawDecision, RawDefault, RawKind, RawLocator, RawPurpose, RawService,
};
use super::stores::load_secret;
use crate::callback::rules::RuleText;
use crate::callback::{Approval, Otherwise, Purpose, RuleSet, ServiceSpec, Verdict};
use crate::normalize::locator::Locator;
use crate::plan::SourceKind;
use crate::sink::spec::{SinkKind, SinkSpec};
use crate::verify::Scheme;

/// The fields of `[sources.<name>]` that say what kind of source it is.
pub struct KindFields {
    pub kind: RawKind,
    pub purpose: Option<RawPurpose>,
    pub callback_id: Option<Vec<RawLocator>>,
    pub decision: Option<RawDecision>,
}

/// The source kind, and for approvals the callback ID locators. `None` kind: errors recorded.
pub fn build_kind(
    at: &mut Scope<'_>,
    fields: KindFields,
    scheme: Option<&Scheme>,
    sinks: &[SinkSpec],
) -> (Option<SourceKind>, Option<Vec<Locator>>) {
    let KindFields {
        kind,
        purpose,
        callback_id,
        decision,
    } = fields;
    if kind == RawKind::Webhook {
        for (set, field) in [
            (purpose.is_some(), "purpose"),
            (callback_id.is_some(), "callback_id"),
            (decision.is_some(), "decision"),
        ] {
            if set {
                at.error(field, "only for kind = \"callback\"");
            }
        }
        return (Some(SourceKind::Webhook), None);
    }
    // No scheme: it is invalid and already reported.
    if let Some(scheme) = scheme.filter(|s| !s.may_be_callback()) {
        at.error(
            "kind",
            format!(
                "\"callback\" is for the cobo-waas2 and cobo-waas1 schemes (this source uses {})",
                scheme.name()
            ),
        );
    }
    let Some(purpose) = purpose else {
        at.error("purpose", "required for kind = \"callback\": \"approval\" (ok approves, e.g. a withdrawal) or \"notification\" (ok acknowledges a durable event)");
        return (None, None);
    };
    if purpose == RawPurpose::Notification {
        if decision.is_some() || callback_id.is_some() {
            at.error("decision", "a notification is answered ok once durable; decision and callback_id are for purpose = \"approval\"");
        }
        return (Some(SourceKind::Callback(Purpose::Notification)), None);
    }
    let ids = callback_ids(at, callback_id.as_deref(), scheme);
    let Some(decision) = decision else {
        at.error("decision", "required for purpose = \"approval\": rules and/or a decision service, and an explicit default");
        return (None, None);
    };
    let approval = build_approval(&mut at.child("decision"), decision, sinks);
    (
        Some(SourceKind::Callback(Purpose::Approval(approval))),
        Some(ids),
    )
}

/// Where an approval's callback ID is read: configured body pointers, else the scheme's.
fn callback_ids(
    at: &mut Scope<'_>,
    configured: Option<&[RawLocator]>,
    scheme: Option<&Scheme>,
) -> Vec<Locator> {
    let Some(configured) = configured else {
        // Without a scheme the source is an error already; its defaults no longer matter.
        return scheme.map(Scheme::default_callback_ids).unwrap_or_default();
    };
    let mut at = at.child("callback_id");
    let ids = parse_locators(&mut at, configured);
    for (i, id) in ids.iter().enumerate() {
        if let Locator::Header(h) = id {
            at.item(i).error_here(format!("header:{h}: Cobo signs no header, so a callback ID must come from the signed body (a JSON pointer)"));
        }
    }
    ids
}

/// `[sources.<name>.decision]`: rules, the default, the decision service and its timeout.
fn build_approval(at: &mut Scope<'_>, raw: RawDecision, sinks: &[SinkSpec]) -> Approval {
    let rules = raw
        .rules
        .into_iter()
        .map(|r| RuleText {
            name: r.name,
            when: r.when,
            decision: r.decision,
            reason: r.reason,
        })
        .collect();
    at.check_nonzero("rule_budget", raw.rule_budget);
    let rules = RuleSet::compile(&format!("{}.rules", at.path()), rules, raw.rule_budget)
        .map_err(|e| at.problems().errors.extend(e))
        .unwrap_or_default();
    let otherwise = match raw.default {
        RawDefault::Ok => Otherwise::Decide(Verdict::Ok),
        RawDefault::Deny => Otherwise::Decide(Verdict::Deny),
        RawDefault::Ask => Otherwise::Ask,
    };
    if otherwise == Otherwise::Decide(Verdict::Ok) {
        at.warn(
            "default = \"ok\"",
            "every callback that no rule denies is APPROVED",
        );
    }
    let service = match (raw.service, otherwise) {
        (Some(s), Otherwise::Ask) => build_service(&mut at.child("service"), s, sinks),
        (None, Otherwise::Ask) => {
            at.error(
                "service",
                "required for default = \"ask\" (the decision service to ask)",
            );
            None
        }
        (Some(_), Otherwise::Decide(_)) => {
            at.error(
                "service",
                "only asked when default = \"ask\"; remove it or set default = \"ask\"",
            );
            None
        }
        (None, Otherwise::Decide(_)) => None,
    };
    if raw.timeout_ms == 0 || raw.timeout_ms > 10_000 {
        at.error("timeout_ms", "between 1 and 10000");
    } else if raw.timeout_ms >= 2_000 {
        at.warn(
            &format!("timeout_ms = {}", raw.timeout_ms),
            "Cobo stops waiting after 2 s",
        );
    }
    Approval {
        rules,
        otherwise,
        service,
        timeout: Duration::from_millis(raw.timeout_ms),
        on_timeout: raw.on_timeout,
        deny_bad_signatures: raw.on_bad_signature == RawBadSignature::Deny,
    }
}

/// The decision service: a broker sink to ask over, its topics or queues, and the secret its
/// replies are MAC'd with. `None` without a usable secret (recorded).
fn build_service(at: &mut Scope<'_>, raw: RawService, sinks: &[SinkSpec]) -> Option<ServiceSpec> {
    match sinks.iter().find(|k| k.name == raw.sink).map(|k| &k.kind) {
        Some(SinkKind::Kafka(_) | SinkKind::RabbitMq(_)) => {}
        Some(other) => at.error(
            "sink",
            format!(
                "{:?} is a {} sink; a decision service needs a kafka or rabbitmq sink",
                raw.sink,
                other.type_name()
            ),
        ),
        None => at.error("sink", format!("no sink named {:?}", raw.sink)),
    }
    for (v, field) in [(&raw.requests, "requests"), (&raw.replies, "replies")] {
        // A Kafka topic name's limits, which also suit a RabbitMQ queue or exchange.
        if v.is_empty()
            || v.len() > 249
            || !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            at.error(field, "1 to 249 characters of a-z, A-Z, 0-9, '.', '_', '-'");
        }
    }
    let secret = load_secret(at, raw.secret, raw.secret_file);
    if secret.is_none() {
        at.error(
            "secret",
            "required (or secret_file): replies are believed only with a valid MAC made with it",
        );
    }
    secret.map(|secret| ServiceSpec {
        sink: raw.sink,
        requests: raw.requests,
        replies: raw.replies,
        secret,
    })
}
