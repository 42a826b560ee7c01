//! `hookbridge verify`: checks one captured request offline against a configured source and
//! says what happened, for the integrator asking "why does my signature fail?".
//!
//! It owns reading the capture ([`capture`]), choosing what to try besides the source itself
//! (other sources of the same scheme, other readings of a Standard Webhooks or Stripe secret),
//! the report and its exit codes. The checks are the verifier's
//! ([`SourceVerifier::diagnose`](crate::verify::SourceVerifier::diagnose)) and the event ID and
//! type are [`Envelope::build`]'s, so what it says is what `serve` would do. Pure apart from
//! reading the two files: no network. Secrets are never printed, only key labels.

pub mod capture;

/// One line of the report (writing to a `String` cannot fail, so no `Result` to drop).
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        $out.push_str(&format!($($arg)*));
        $out.push('\n');
    }};
}

use std::path::PathBuf;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::json;

use crate::config::{self, RawVerify};
use crate::normalize::Envelope;
use crate::plan::SourceSpec;
use crate::verify::{
    Alternative, Diagnosis, IncomingWebhook, KeyResult, Scheme, StandardWebhooks, Stripe,
    VerifyError,
};

/// Exit status: the request verified (and would be published).
pub const EXIT_VERIFIED: u8 = 0;
/// Exit status: the signature matches no configured key.
pub const EXIT_BAD_SIGNATURE: u8 = 1;
/// Exit status: a header the scheme needs is missing.
pub const EXIT_MISSING_HEADER: u8 = 3;
/// Exit status: a signature or timestamp header is present but unreadable.
pub const EXIT_MALFORMED_HEADER: u8 = 4;
/// Exit status: the signed timestamp is outside the replay window.
pub const EXIT_TIMESTAMP: u8 = 5;
/// Exit status: verified, but the event ID or type is unusable (the request would get 400).
pub const EXIT_UNUSABLE_EVENT: u8 = 6;
/// EX_USAGE from sysexits.h: the capture is not an HTTP/1 request, or `--now` is unreadable.
pub const EXIT_MALFORMED_CAPTURE: u8 = 64;
/// EX_NOINPUT from sysexits.h: the capture file cannot be read.
pub const EXIT_NO_INPUT: u8 = 66;
/// EX_CONFIG from sysexits.h: the config does not load, or has no such source.
pub const EXIT_CONFIG: u8 = 78;

/// What to check, from the command line.
#[derive(Debug, Clone)]
pub struct VerifyArgs {
    pub config: PathBuf,
    pub source: String,
    pub request: PathBuf,
    /// The time to check the replay window against; default now.
    pub now: Option<String>,
}

/// Why there is no report: the message and the exit status.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub exit: u8,
}

fn fail(exit: u8, message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        exit,
    }
}

/// The report, readable and as JSON (`--json`), and the exit status it maps to.
#[derive(Debug)]
pub struct Report {
    pub text: String,
    pub json: serde_json::Value,
    pub exit: u8,
}

/// Parses `--now`: Unix seconds, or an RFC 3339 time.
///
/// # Errors
/// Neither.
pub fn parse_now(raw: &str) -> Result<SystemTime, String> {
    let raw = raw.trim();
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        return raw
            .parse::<u64>()
            .ok()
            .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(s)))
            .ok_or_else(|| "--now: Unix seconds out of range".to_owned());
    }
    humantime::parse_rfc3339_weak(raw)
        .map_err(|_| "--now: expected Unix seconds or an RFC 3339 time".to_owned())
}

/// Loads the config and the capture and checks one against the other.
///
/// # Errors
/// A [`Failure`] for an unloadable config or unknown source (78), an unreadable capture file (66),
/// or a malformed capture or `--now` (64).
pub fn run(args: &VerifyArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Report, Failure> {
    let (text, cfg) = load_config(args, env)?;
    let spec = find_source(args, &cfg)?;
    let now = match &args.now {
        Some(raw) => parse_now(raw).map_err(|e| fail(EXIT_MALFORMED_CAPTURE, e))?,
        None => SystemTime::now(),
    };
    let capture = read_capture(args)?;

    let readings = match config::source_verify(&text, env, &args.source) {
        Ok(raw) => secret_readings(&raw),
        Err(_) => Vec::new(),
    };
    let alternatives = alternatives(&readings, &cfg.sources, spec);

    let mut out = String::new();
    say!(
        out,
        "request: {} {} ({} body bytes, {} headers)",
        capture.method,
        capture.target,
        capture.body.len(),
        capture.headers.len()
    );
    for note in &capture.notes {
        say!(out, "note: {note}");
    }
    let incoming = IncomingWebhook {
        headers: capture.headers,
        body: capture.body,
    };
    let (diagnosis, verified) = spec.verifier.diagnose(incoming, now, &alternatives);
    render(&mut out, &spec.name, &diagnosis);
    let mut event = serde_json::Value::Null;
    let mut outcome = ("verified", None);

    let exit = match (&diagnosis.outcome, verified) {
        (Ok(()), Some(webhook)) => match Envelope::build(webhook, spec, now) {
            Ok(envelope) => {
                event = would_publish(&mut out, spec, &envelope);
                EXIT_VERIFIED
            }
            Err(e) => {
                say!(
                    out,
                    "result: verified, but the event cannot be built: {e} (answered 400)"
                );
                outcome = ("unusable_event", Some(e.to_string()));
                EXIT_UNUSABLE_EVENT
            }
        },
        (Err(e), _) => {
            say!(out, "result: {} ({e})", e.reason());
            outcome = (e.reason(), Some(e.to_string()));
            exit_for(e)
        }
        // `diagnose` returns the request whenever the outcome is Ok.
        (Ok(()), None) => EXIT_BAD_SIGNATURE,
    };
    let json = json!({
        "request": {
            "method": capture.method,
            "target": capture.target,
            "notes": capture.notes,
        },
        "source": spec.name,
        "scheme": diagnosis.scheme,
        "headers": diagnosis.headers.iter().map(|h| json!({"name": h.name, "present": h.present})).collect::<Vec<_>>(),
        "keys": diagnosis.keys.iter().map(|k| json!({"label": k.label, "result": key_result(k.result)})).collect::<Vec<_>>(),
        "timestamp": diagnosis.timestamp.as_ref().map(|t| json!({
            "raw": t.raw,
            "skew_ms": t.skew_ms,
            "window_secs": t.window.map(|w| w.as_secs()),
        })),
        "hints": diagnosis.hints.iter().map(|h| json!({"code": h.code, "message": h.message})).collect::<Vec<_>>(),
        "outcome": outcome.0,
        "error": outcome.1,
        "event": event,
        "exit": exit,
    });
    Ok(Report {
        text: out,
        json,
        exit,
    })
}

/// The config file's text (the diagnosis re-reads the source's secrets from it) and the
/// validated config.
fn load_config(
    args: &VerifyArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, config::Config), Failure> {
    let text = std::fs::read_to_string(&args.config).map_err(|e| {
        fail(
            EXIT_CONFIG,
            format!("cannot read {}: {e}", args.config.display()),
        )
    })?;
    let cfg = config::load(&text, env)
        .map_err(|e| fail(EXIT_CONFIG, format!("{}: {e}", args.config.display())))?;
    Ok((text, cfg))
}

fn find_source<'a>(args: &VerifyArgs, cfg: &'a config::Config) -> Result<&'a SourceSpec, Failure> {
    cfg.sources
        .iter()
        .find(|s| s.name == args.source)
        .ok_or_else(|| {
            let names: Vec<&str> = cfg.sources.iter().map(|s| s.name.as_str()).collect();
            fail(
                EXIT_CONFIG,
                format!(
                    "no source {:?} in {} (configured: {})",
                    args.source,
                    args.config.display(),
                    names.join(", ")
                ),
            )
        })
}

fn read_capture(args: &VerifyArgs) -> Result<capture::Capture, Failure> {
    let raw = std::fs::read(&args.request).map_err(|e| {
        fail(
            EXIT_NO_INPUT,
            format!("cannot read {}: {e}", args.request.display()),
        )
    })?;
    capture::parse(&raw).map_err(|e| {
        fail(
            EXIT_MALFORMED_CAPTURE,
            format!("{}: not an HTTP/1 request: {e}", args.request.display()),
        )
    })
}

/// What the diagnosis also tries, only to explain a failure: other readings of this source's
/// own secrets, then every other source of the same scheme.
fn alternatives<'a>(
    readings: &'a [(String, Scheme)],
    sources: &'a [SourceSpec],
    spec: &SourceSpec,
) -> Vec<Alternative<'a>> {
    let scheme_name = spec.verifier.scheme().name();
    let mut alternatives: Vec<Alternative<'a>> = readings
        .iter()
        .map(|(what, scheme)| Alternative {
            code: "secret_reading",
            what: what.clone(),
            why: String::new(),
            scheme,
        })
        .collect();
    alternatives.extend(
        sources
            .iter()
            .filter(|s| s.name != spec.name && s.verifier.scheme().name() == scheme_name)
            .map(|s| Alternative {
                code: "other_key",
                what: format!("source \"{}\"", s.name),
                why: ": this source does not trust that key (a dev/prod or test/live mix-up?)"
                    .to_owned(),
                scheme: s.verifier.scheme(),
            }),
    );
    alternatives
}

/// Says what a verified capture would publish; returns the same as JSON.
fn would_publish(out: &mut String, spec: &SourceSpec, envelope: &Envelope) -> serde_json::Value {
    say!(out, "would publish:");
    say!(
        out,
        "  event id:   {} (from {})",
        envelope.id(),
        envelope.id_origin()
    );
    let locators: Vec<String> = spec.event_type.iter().map(ToString::to_string).collect();
    say!(
        out,
        "  event type: {} (first of: {}; default \"{}\")",
        envelope.event_type(),
        if locators.is_empty() {
            "none".to_owned()
        } else {
            locators.join(", ")
        },
        spec.default_type
    );
    say!(out, "  to sink:    {}", spec.sink);
    say!(out, "result: verified");
    json!({
        "id": envelope.id().as_str(),
        "id_from": envelope.id_origin().to_string(),
        "type": envelope.event_type(),
        "type_from": locators,
        "default_type": spec.default_type,
        "sink": spec.sink,
    })
}

fn exit_for(e: &VerifyError) -> u8 {
    match e {
        VerifyError::MissingHeader(_) => EXIT_MISSING_HEADER,
        VerifyError::MalformedHeader { .. } => EXIT_MALFORMED_HEADER,
        VerifyError::BadSignature => EXIT_BAD_SIGNATURE,
        VerifyError::StaleTimestamp(_) | VerifyError::FutureTimestamp(_) => EXIT_TIMESTAMP,
    }
}

fn key_result(r: KeyResult) -> &'static str {
    match r {
        KeyResult::Matched => "matched",
        KeyResult::NoMatch => "no match",
        KeyResult::NotTried => "not tried",
    }
}

fn render(out: &mut String, source: &str, d: &Diagnosis) {
    say!(out, "source: {source} (scheme {})", d.scheme);
    if !d.headers.is_empty() {
        say!(out, "headers read:");
        for h in &d.headers {
            let state = if h.present { "present" } else { "missing" };
            say!(out, "  {:<28} {state}", h.name);
        }
    }
    if !d.keys.is_empty() {
        say!(out, "keys tried:");
        for k in &d.keys {
            say!(out, "  {:<28} {}", k.label, key_result(k.result));
        }
    }
    if let Some(ts) = &d.timestamp {
        let skew_s = ts.skew_ms as f64 / 1000.0;
        let window = ts.window.map_or_else(
            || "no window".to_owned(),
            |w| format!("window {} s", w.as_secs()),
        );
        say!(
            out,
            "timestamp: {} (skew {skew_s:+.3} s against now, {window})",
            ts.raw
        );
    }
    for hint in &d.hints {
        say!(out, "hint [{}]: {}", hint.code, hint.message);
    }
}

/// Other readings of a source's secrets that senders get wrong, each a scheme to try: a
/// Standard Webhooks secret keyed as its text (with or without `whsec_`) rather than
/// base64-decoded, and a Stripe secret base64-decoded rather than keyed as its text.
fn secret_readings(raw: &RawVerify) -> Vec<(String, Scheme)> {
    let mut readings = Vec::new();
    match raw {
        RawVerify::StandardWebhooks { secrets, .. } => {
            for (i, secret) in secrets.iter().enumerate() {
                let secret = secret.trim();
                let bare = secret.strip_prefix("whsec_");
                let mut texts = vec![(secret, "its text, whsec_ included,")];
                if let Some(bare) = bare {
                    texts.push((bare, "the text after whsec_"));
                } else {
                    texts[0].1 = "its text";
                }
                for (text, how) in texts {
                    if let Ok(v) =
                        StandardWebhooks::from_secret_bytes(vec![text.as_bytes().to_vec()])
                    {
                        readings.push((
                            format!(
                                "secrets[{i}] taken as {how} not base64-decoded (the sender keys \
                                 its HMAC that way; the standard decodes the base64 after whsec_)"
                            ),
                            Scheme::StandardWebhooks(v),
                        ));
                    }
                }
            }
        }
        RawVerify::Stripe { secrets } => {
            for (i, secret) in secrets.iter().enumerate() {
                let bare = secret.trim().trim_start_matches("whsec_");
                if let Some(v) = B64
                    .decode(bare)
                    .ok()
                    .and_then(|k| Stripe::new(vec![k]).ok())
                {
                    readings.push((
                        format!(
                            "secrets[{i}] base64-decoded after whsec_ (Stripe keys its HMAC with \
                             the whole whsec_ text)"
                        ),
                        Scheme::Stripe(v),
                    ));
                }
            }
        }
        _ => {}
    }
    readings
}
