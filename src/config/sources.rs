//! `[sources.<name>]`: one provider endpoint each. Builds a source's [`SourceSpec`] from its
//! scheme ([`super::scheme`]), kind ([`super::approval`]), sink, event locators (which must
//! read signed headers unless `unsigned_headers` accepts the risk), limits, and replay window
//! (bounded by what the source remembers).

use std::time::Duration;

use http::HeaderName;

use super::approval::{self, KindFields};
use super::parse::{parse_locators, parse_nets, parse_rate, valid_name};
use super::problems::{Problems, Scope};
use super::raw::{RawKind, RawLocator, RawPurpose, RawSource};
use super::scheme;
use super::stores::Memory;
use crate::normalize::locator::Locator;
use crate::plan::{AckMode, OnRefused, SourceKind, SourceSpec};
use crate::sink::spec::SinkSpec;
use crate::verify::{Scheme, SourceVerifier};

/// What a source needs from the other sections.
pub struct Context<'a> {
    pub sinks: &'a [SinkSpec],
    /// `server.max_body_bytes`: the body limit unless the source sets its own.
    pub max_body_bytes: usize,
    pub memory: Memory,
}

/// Every source that built, and whether any (built or not) is an approval callback.
pub struct Sources {
    pub specs: Vec<SourceSpec>,
    pub approvals: bool,
}

/// Reads `[sources]`: each source is deserialized and built on its own, so one broken source
/// does not hide the errors of the next.
pub fn load(problems: &mut Problems, value: Option<toml::Value>, context: &Context<'_>) -> Sources {
    let mut sources = Sources {
        specs: Vec::new(),
        approvals: false,
    };
    match value {
        Some(toml::Value::Table(table)) => {
            for (name, value) in table {
                let mut at = problems.at(format!("sources.{name}"));
                if !valid_name(&name) {
                    at.error_here(
                        "source names may use a-z, 0-9, '-' and '_' (it becomes the URL path)",
                    );
                    continue;
                }
                let Some(raw) = at.section::<RawSource>(value) else {
                    continue;
                };
                // Known before the source is built: its other errors must not hide this one.
                sources.approvals |=
                    raw.kind == RawKind::Callback && raw.purpose == Some(RawPurpose::Approval);
                if let Some(spec) = build(&mut at, &name, raw, context) {
                    sources.specs.push(spec);
                }
            }
        }
        Some(_) => problems.error("sources: must be a table of [sources.<name>]"),
        None => {}
    }
    for s in sources.specs.iter().filter(|s| s.shadow) {
        problems.warn(format!(
            "source {}: shadow = true ACCEPTS AND PUBLISHES requests whose signature fails (marked hbshadow, hbunverified = \"all\"); turn it off once the provider's requests verify",
            s.name
        ));
    }
    for s in sources.specs.iter().filter(|s| s.ack == AckMode::Accept) {
        problems.warn(format!(
            "source {}: ack = \"accept\" answers before the event is durable; an event can be lost",
            s.name
        ));
    }
    if sources.specs.is_empty() && problems.errors.is_empty() {
        problems.error("sources: no source is configured; add at least one [sources.<name>]");
    }
    sources
}

/// One source; `None` when any of its errors was recorded.
///
/// Long because a source has that many fields: each is read, checked and reported here in the
/// order of `[sources.<name>]`; the parts with logic of their own (kind and decision, scheme,
/// locators, replay window, sink) are functions already.
fn build(
    at: &mut Scope<'_>,
    name: &str,
    raw: RawSource,
    context: &Context<'_>,
) -> Option<SourceSpec> {
    let before = at.error_count();
    let scheme = scheme::build(&mut at.child("verify"), raw.verify, name);
    let fields = KindFields {
        kind: raw.kind,
        purpose: raw.purpose,
        callback_id: raw.callback_id,
        decision: raw.decision,
    };
    let (kind, callback_ids) = approval::build_kind(at, fields, scheme.as_ref(), context.sinks);
    if raw.shadow && kind.as_ref().is_some_and(|k| k.approval().is_some()) {
        at.error(
            "shadow",
            "an approval callback's ok approves (e.g. a withdrawal): it is never answered to a request whose signature failed",
        );
    }
    if matches!(kind, Some(SourceKind::Callback(_))) && raw.ack == AckMode::Accept {
        at.error(
            "ack",
            "\"accept\" cannot be used for a callback: the answer must follow a durable event",
        );
    }
    let is_approval = kind.as_ref().is_some_and(|k| k.approval().is_some());
    if is_approval && raw.on_refused == Some(OnRefused::DeadLetter) {
        at.error(
            "on_refused",
            "an approval's ok must follow its audit event on the broker: a refused audit event is answered 503, never ok",
        );
    }
    // An approval's `ok` releases funds on the audit event's word; a dead letter is not where
    // auditors read, so a refused audit event keeps the callback unanswered (503).
    let on_refused = raw.on_refused.unwrap_or(if is_approval {
        OnRefused::Reject
    } else {
        OnRefused::DeadLetter
    });
    let sink = pick_sink(at, raw.sink, context.sinks);
    let fields = LocatorFields {
        event_id: raw.event_id,
        event_type: raw.event_type,
        unsigned_headers: raw.unsigned_headers,
    };
    let (event_id, event_type) = locators(at, fields, scheme.as_ref(), callback_ids);
    let max_body_bytes = raw.max_body_bytes.unwrap_or(context.max_body_bytes);
    at.check_nonzero("max_body_bytes", max_body_bytes);
    at.check_nonzero("ack_deadline_ms", raw.ack_deadline_ms);
    let allow_ips = raw
        .allow_ips
        .as_ref()
        .map(|l| parse_nets(&mut at.child("allow_ips"), l));
    let rate_limit = raw
        .rate_limit
        .and_then(|r| parse_rate(&mut at.child("rate_limit"), r));
    let rate_limit_per_ip = raw
        .rate_limit_per_ip
        .and_then(|r| parse_rate(&mut at.child("rate_limit_per_ip"), r));
    if at.error_count() > before {
        return None;
    }
    let scheme = scheme?;
    let kind = kind?;
    if raw.replay_window_secs.is_some_and(|secs| secs > 0) && !scheme.signs_timestamp() {
        at.error(
            "replay_window_secs",
            format!("scheme {} signs no timestamp", scheme.name()),
        );
        return None;
    }
    let remembers = context.memory.of(kind.approval().is_some());
    let replay_window = replay_window(at, &scheme, raw.replay_window_secs, remembers);
    Some(SourceSpec {
        name: name.to_owned(),
        // Approvals have their own memory (decisions); event dedup would answer a retry
        // before the decision is looked up.
        dedup: raw.dedup && kind.approval().is_none(),
        kind,
        verifier: SourceVerifier::new(scheme, replay_window),
        event_id,
        event_type,
        default_type: raw.default_type,
        ce_source: raw.ce_source.unwrap_or_else(|| format!("/hooks/{name}")),
        sink,
        ack_deadline: Duration::from_millis(raw.ack_deadline_ms),
        max_body_bytes,
        allow_ips,
        rate_limit,
        rate_limit_per_ip,
        ack: raw.ack,
        on_refused,
        shadow: raw.shadow,
    })
}

/// The sink a source names; it may name none when exactly one sink exists.
fn pick_sink(at: &mut Scope<'_>, named: Option<String>, specs: &[SinkSpec]) -> String {
    let sinks: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    match (named, sinks.as_slice()) {
        (Some(s), _) if sinks.contains(&s.as_str()) => s,
        (Some(s), _) => {
            at.error(
                "sink",
                format!("no sink named {s:?} (configured: {})", sinks.join(", ")),
            );
            String::new()
        }
        (None, [only]) => (*only).to_owned(),
        (None, _) => {
            at.error(
                "sink",
                format!(
                    "required when several sinks are configured ({})",
                    sinks.join(", ")
                ),
            );
            String::new()
        }
    }
}

/// The fields of `[sources.<name>]` that say where event IDs and types are read.
struct LocatorFields {
    event_id: Option<Vec<RawLocator>>,
    event_type: Option<Vec<RawLocator>>,
    unsigned_headers: Vec<String>,
}

/// The event ID and type locators: the configured ones, else the scheme's defaults; an
/// approval's IDs are its callback IDs.
fn locators(
    at: &mut Scope<'_>,
    fields: LocatorFields,
    scheme: Option<&Scheme>,
    callback_ids: Option<Vec<Locator>>,
) -> (Vec<Locator>, Vec<Locator>) {
    let callback = callback_ids.is_some();
    let mut event_id = match (callback_ids, fields.event_id) {
        // An approval's events are its decisions, keyed by callback ID.
        (Some(ids), None) => ids,
        (Some(_), Some(_)) => {
            at.error(
                "event_id",
                "an approval callback is keyed by callback_id; remove event_id",
            );
            Vec::new()
        }
        (None, Some(l)) => parse_locators(&mut at.child("event_id"), &l),
        // Without a scheme the source is an error already; its defaults no longer matter.
        (None, None) => scheme.map(Scheme::default_event_id).unwrap_or_default(),
    };
    let mut event_type = match fields.event_type {
        Some(l) => parse_locators(&mut at.child("event_type"), &l),
        None => scheme.map(Scheme::default_event_type).unwrap_or_default(),
    };
    if let Some(scheme) = scheme {
        // An approval's IDs are its callback IDs, whose headers are refused on their own.
        let mut none = Vec::new();
        let ids = if callback { &mut none } else { &mut event_id };
        let located = [("event_id", ids), ("event_type", &mut event_type)];
        mark_unsigned_headers(at, scheme, &fields.unsigned_headers, located);
    }
    (event_id, event_type)
}

/// The replay window: by default the provider's documented tolerance, never longer than what
/// the source `remembers` (a replay older than that memory must be refused as stale), and off
/// for a scheme that signs no timestamp (a window configured for one is refused before this).
fn replay_window(
    at: &mut Scope<'_>,
    scheme: &Scheme,
    configured: Option<u64>,
    (remembers, memory_name): (Duration, &str),
) -> Option<Duration> {
    match configured {
        Some(0) => {
            if scheme.signs_timestamp() {
                at.warn("replay_window_secs = 0", format!("the replay window is off, so a captured request is accepted again once {memory_name} has forgotten it (or after a restart of a memory store)"));
            }
            None
        }
        Some(secs) => {
            if Duration::from_secs(secs) > remembers {
                at.warn(
                    &format!(
                        "replay_window_secs = {secs} is longer than {memory_name} ({} s)",
                        remembers.as_secs()
                    ),
                    "a replay between the two is accepted as new",
                );
            }
            Some(Duration::from_secs(secs))
        }
        None => scheme.signs_timestamp().then(|| {
            scheme
                .documented_tolerance()
                .map_or(remembers, |t| t.min(remembers))
        }),
    }
}

/// Checks that every header an event ID or type is read from is signed by `scheme`; a header it
/// does not sign is allowed only when listed in `unsigned_headers`, and becomes
/// [`Locator::UnsignedHeader`] (events then say `hbunverified`).
fn mark_unsigned_headers<const N: usize>(
    at: &mut Scope<'_>,
    scheme: &Scheme,
    unsigned: &[String],
    fields: [(&str, &mut Vec<Locator>); N],
) {
    let mut allowed = Vec::new();
    for (i, h) in unsigned.iter().enumerate() {
        match HeaderName::from_bytes(h.trim().as_bytes()) {
            Ok(h) => allowed.push(h),
            Err(_) => at
                .child("unsigned_headers")
                .item(i)
                .error_here(format!("{h:?} is not a valid header name")),
        }
    }
    let mut used = vec![false; allowed.len()];
    for (field, locators) in fields {
        for (i, locator) in locators.iter_mut().enumerate() {
            let Locator::Header(h) = locator else {
                continue;
            };
            if scheme.signed_headers().contains(&h.as_str()) {
                continue;
            }
            match allowed.iter().position(|a| a == h) {
                Some(index) => {
                    used[index] = true;
                    *locator = Locator::UnsignedHeader(h.clone());
                }
                None => at.child(field).item(i).error_here(format!(
                    "header:{h} is not covered by the {} signature, so a captured request resent with another value would become a new event; read it from the body, leave event_id unset (the body's SHA-256), or accept the risk with unsigned_headers = [\"{h}\"]",
                    scheme.name()
                )),
            }
        }
    }
    for (h, used) in allowed.iter().zip(used) {
        if !used {
            at.warn(
                "unsigned_headers",
                format!("{h} is listed but no event_id or event_type locator reads it"),
            );
        }
    }
}
