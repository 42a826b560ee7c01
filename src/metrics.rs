//! Every metric hookbridge exports, by name, and the one function per event that records it.
//! Labels never carry secrets or payload data: only source and sink names (from config) and
//! fixed reason codes.

use std::time::Duration;

pub use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests by `source` and `outcome` (`accepted`, `bad_signature`, `too_large`, …).
pub const REQUESTS: &str = "hookbridge_requests_total";
/// Time from the first byte of the request to the response, for accepted requests.
pub const ACK_LATENCY: &str = "hookbridge_ack_latency_seconds";
/// Time a sink took to confirm an event, by `sink`.
pub const PUBLISH_LATENCY: &str = "hookbridge_publish_latency_seconds";
/// 1 when the sink is connected and ready, by `sink`.
pub const SINK_READY: &str = "hookbridge_sink_ready";
/// Requests being handled right now.
pub const IN_FLIGHT: &str = "hookbridge_in_flight_requests";
/// Broker (re)connections, by `sink`.
pub const SINK_CONNECTS: &str = "hookbridge_sink_connects_total";
/// Connections refused or failed before a request reached the handler, by `reason`
/// (`connection_limit`, `tls_handshake`, `header_too_large`, `header_timeout`, …).
pub const CONNECTIONS_REJECTED: &str = "hookbridge_connections_rejected_total";

/// Callback answers by `source`, `decision` (`ok`/`deny`) and `by` (`rule`, `default`,
/// `service`, `timeout`, `bad_signature`, `remembered`).
pub const CALLBACK_DECISIONS: &str = "hookbridge_callback_decisions_total";
/// Approval callbacks whose decision service did not answer in time, by `source`.
pub const DECISION_TIMEOUTS: &str = "hookbridge_decision_timeouts_total";
/// Approval callbacks whose callback ID already had a decision about a *different* body, by
/// `source`: each is decided on its own (a planted first body decides nothing for it).
pub const DECISION_CONFLICTS: &str = "hookbridge_decision_conflicts_total";
/// Decision replies that decided nothing, by `source` (whose reply address they came to) and
/// `reason` (`unparsable`, `unsupported_version`, `unknown_key`, `wrong_address`, `not_asked`,
/// `wrong_nonce`, `bad_mac`).
pub const REPLIES_REJECTED: &str = "hookbridge_decision_replies_rejected_total";

/// Configuration reloads (SIGHUP), by `result` (`ok`, `refused`).
pub const CONFIG_RELOADS: &str = "hookbridge_config_reloads_total";
/// When the configuration was last reloaded, as a Unix time in seconds.
pub const CONFIG_LAST_RELOAD: &str = "hookbridge_config_last_reload_success_timestamp_seconds";

/// Trace spans by `result`: `exported`, `dropped_queue_full` (the export queue was full),
/// `export_failed` (the collector refused them or could not be reached).
pub const TRACE_SPANS: &str = "hookbridge_trace_spans_total";

/// Up to 15 s: providers give up at about 10 s (and a body may take `body_timeout_ms`, 10 s),
/// so a p99 near that timeout must still fall inside a bucket.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 7.5, 10.0,
    15.0,
];

/// What a metric is, for its `# TYPE` and `# HELP` lines.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric with its kind and its `# HELP` text (the exposition has one for each).
const HELP: &[(&str, Kind, &str)] = &[
    (
        REQUESTS,
        Kind::Counter,
        "Requests by source and outcome (accepted, spooled, duplicate, bad_signature, …).",
    ),
    (
        ACK_LATENCY,
        Kind::Histogram,
        "Seconds from a request's first byte to its 2xx answer, by source.",
    ),
    (
        PUBLISH_LATENCY,
        Kind::Histogram,
        "Seconds a sink took to confirm an event, by sink.",
    ),
    (
        SINK_READY,
        Kind::Gauge,
        "1 when the sink is connected and ready, by sink.",
    ),
    (IN_FLIGHT, Kind::Gauge, "Requests being handled now."),
    (
        SINK_CONNECTS,
        Kind::Counter,
        "Broker connections made, by sink.",
    ),
    (
        CONNECTIONS_REJECTED,
        Kind::Counter,
        "Connections refused or failed before a request, by reason.",
    ),
    (
        CALLBACK_DECISIONS,
        Kind::Counter,
        "Callback answers by source, decision and what decided it.",
    ),
    (
        DECISION_TIMEOUTS,
        Kind::Counter,
        "Approval callbacks whose decision service did not answer in time.",
    ),
    (
        DECISION_CONFLICTS,
        Kind::Counter,
        "Approval callbacks whose ID already had a decision about another body.",
    ),
    (
        REPLIES_REJECTED,
        Kind::Counter,
        "Decision service replies that decided nothing, by source and reason.",
    ),
    (
        CONFIG_RELOADS,
        Kind::Counter,
        "Configuration reloads (SIGHUP) by result (ok, refused).",
    ),
    (
        CONFIG_LAST_RELOAD,
        Kind::Gauge,
        "Unix time of the last successful configuration reload.",
    ),
    (
        TRACE_SPANS,
        Kind::Counter,
        "Trace spans by result (exported, dropped_queue_full, export_failed).",
    ),
    (
        SHADOW_UNVERIFIED,
        Kind::Counter,
        "Shadow-mode requests accepted although verification failed.",
    ),
    (
        SPOOL_DEPTH,
        Kind::Gauge,
        "Events waiting in the spool, by sink.",
    ),
    (SPOOL_BYTES, Kind::Gauge, "Bytes of events in the spool."),
    (
        SPOOL_MAX_BYTES,
        Kind::Gauge,
        "The spool's size limit in bytes (past it: 503 spool_full).",
    ),
    (
        SPOOLED,
        Kind::Counter,
        "Events taken into the spool, by sink.",
    ),
    (
        SPOOL_DRAINED,
        Kind::Counter,
        "Spooled events published and removed, by sink.",
    ),
    (
        SPOOL_QUARANTINED,
        Kind::Counter,
        "Unreadable spool records moved to quarantine, by sink.",
    ),
    (
        DEAD_LETTERED,
        Kind::Counter,
        "Events kept as dead letters because their sink refused them, by sink.",
    ),
    (
        DEAD_LETTERS,
        Kind::Gauge,
        "Dead letters kept in the spool, by sink.",
    ),
    (
        DEDUP_HITS,
        Kind::Counter,
        "Requests answered from the dedup store without publishing, by source.",
    ),
    (
        SIGNATURE_BATCHES,
        Kind::Counter,
        "Ed25519 batch signature checks of two or more requests, by result (passed, failed).",
    ),
    (
        SIGNATURES_BATCHED,
        Kind::Counter,
        "Signatures checked in Ed25519 batches, by the batch's result.",
    ),
    (
        DEDUP_ERRORS,
        Kind::Counter,
        "Dedup store errors, by backend.",
    ),
];

/// Installs the global Prometheus recorder, with every metric's description.
///
/// # Errors
/// When a recorder is already installed.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()?;
    let _installed_once = IN_FLIGHT_GAUGE.set(metrics::gauge!(IN_FLIGHT));
    for (name, kind, help) in HELP {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *help),
            Kind::Gauge => metrics::describe_gauge!(*name, *help),
            Kind::Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
    Ok(handle)
}

/// The exposition, in a stable order: families sorted by name, and within one the series
/// sorted by their labels (a histogram's buckets keep their order). The recorder's own order
/// follows its hash maps, so two scrapes could list the same series differently.
pub fn render(handle: &PrometheusHandle) -> String {
    sort_exposition(&handle.render())
}

fn sort_exposition(text: &str) -> String {
    let mut families: Vec<(&str, Vec<&str>, Vec<&str>)> = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let name = match line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
        {
            Some(rest) => rest.split(' ').next().unwrap_or_default(),
            None => family_of(line),
        };
        match families.last_mut() {
            Some((current, comments, samples)) if *current == name => {
                if line.starts_with('#') {
                    comments.push(line);
                } else {
                    samples.push(line);
                }
            }
            _ if line.starts_with('#') => families.push((name, vec![line], Vec::new())),
            _ => families.push((name, Vec::new(), vec![line])),
        }
    }
    families.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = String::with_capacity(text.len());
    for (_, comments, mut samples) in families {
        // Stable: a series' bucket lines keep their `le` order.
        samples.sort_by_cached_key(|l| series_key(l));
        for line in comments.into_iter().chain(samples) {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// A sample line's family: its name less a histogram or summary suffix.
fn family_of(line: &str) -> &str {
    let name = line.split(['{', ' ']).next().unwrap_or_default();
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// What orders a family's samples: the labels without `le`, then bucket, sum, count.
fn series_key(line: &str) -> (String, u8) {
    let name = line.split(['{', ' ']).next().unwrap_or_default();
    let labels = line
        .find('{')
        .and_then(|i| line[i..].find('}').map(|j| &line[i + 1..i + j]))
        .unwrap_or_default();
    let labels: Vec<&str> = labels
        .split(',')
        .filter(|l| !l.starts_with("le="))
        .collect();
    let rank = match name {
        n if n.ends_with("_sum") => 1,
        n if n.ends_with("_count") => 2,
        _ => 0,
    };
    (labels.join(","), rank)
}

/// The `outcome` of a request that was answered with success: its label in
/// [`REQUESTS`] and in the audit line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// The sink confirmed the event.
    Published,
    /// fsync'd in the spool.
    Spooled,
    /// `ack = "accept"`: answered before anything was durable.
    Unconfirmed,
    /// A retry of an event already durable.
    Duplicate,
    /// A callback answered from a decision.
    Decided,
    /// A provider's endpoint handshake answered (Slack `url_verification`, Zoom
    /// `endpoint.url_validation`): verified, nothing published.
    Handshake,
    /// Shadow mode: the request failed verification and was accepted and published anyway,
    /// marked (`hbshadow`). Why it failed: [`SHADOW_UNVERIFIED`].
    ShadowUnverified,
    /// The sink refused the event for good; kept, fsync'd, as a dead letter
    /// (`on_refused = "dead-letter"`).
    DeadLettered,
}

impl Accepted {
    const ALL: [Self; 8] = [
        Self::Published,
        Self::Spooled,
        Self::Unconfirmed,
        Self::Duplicate,
        Self::Decided,
        Self::Handshake,
        Self::ShadowUnverified,
        Self::DeadLettered,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Self::Published => "accepted",
            Self::Spooled => "spooled",
            Self::Unconfirmed => "accepted_unconfirmed",
            Self::Duplicate => "duplicate",
            Self::Decided => "decided",
            Self::Handshake => "handshake",
            Self::ShadowUnverified => "shadow_accepted_unverified",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// One source's series on the accepted path, registered once when its route is built: the
/// macros would otherwise copy the label and look the series up on every request.
pub struct SourceMetrics {
    /// Indexed by [`Accepted`] discriminant.
    outcomes: [Counter; Accepted::ALL.len()],
    ack_latency: Histogram,
    publish_latency: Histogram,
}

impl SourceMetrics {
    pub fn new(source: &str, sink: &str) -> Self {
        Self {
            outcomes: Accepted::ALL.map(|outcome| {
                metrics::counter!(REQUESTS, "source" => source.to_owned(), "outcome" => outcome.label())
            }),
            ack_latency: metrics::histogram!(ACK_LATENCY, "source" => source.to_owned()),
            publish_latency: metrics::histogram!(PUBLISH_LATENCY, "sink" => sink.to_owned()),
        }
    }

    /// Counts an accepted request.
    pub fn request(&self, outcome: Accepted) {
        self.outcomes[outcome as usize].increment(1);
    }

    pub fn ack_latency(&self, elapsed: Duration) {
        self.ack_latency.record(elapsed.as_secs_f64());
    }

    /// The source's sink's publish latency (a handle: clones share the series).
    pub fn publish_latency(&self) -> &Histogram {
        &self.publish_latency
    }
}

pub fn request(source: &str, outcome: &'static str) {
    metrics::counter!(REQUESTS, "source" => source.to_owned(), "outcome" => outcome).increment(1);
}

/// Requests a source in shadow mode accepted although they failed verification, by `source`
/// and `reason` (`bad_signature`, `missing_signature`, `stale_timestamp`, …).
pub const SHADOW_UNVERIFIED: &str = "hookbridge_shadow_unverified_total";

pub fn shadow_unverified(source: &str, reason: &'static str) {
    metrics::counter!(SHADOW_UNVERIFIED, "source" => source.to_owned(), "reason" => reason)
        .increment(1);
}

pub fn trace_spans(result: &'static str, n: usize) {
    metrics::counter!(TRACE_SPANS, "result" => result).increment(n as u64);
}

pub fn config_reloaded(ok: bool) {
    let result = if ok { "ok" } else { "refused" };
    metrics::counter!(CONFIG_RELOADS, "result" => result).increment(1);
    if ok {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        metrics::gauge!(CONFIG_LAST_RELOAD).set(now.as_secs_f64());
    }
}

pub fn sink_ready(sink: &str, ready: bool) {
    metrics::gauge!(SINK_READY, "sink" => sink.to_owned()).set(if ready { 1.0 } else { 0.0 });
}

pub fn sink_connected(sink: &str) {
    metrics::counter!(SINK_CONNECTS, "sink" => sink.to_owned()).increment(1);
}

/// Events waiting in the spool, by `sink`.
pub const SPOOL_DEPTH: &str = "hookbridge_spool_depth";
/// Bytes held in the spool (all sinks).
pub const SPOOL_BYTES: &str = "hookbridge_spool_bytes";
/// The spool's `max_bytes`.
pub const SPOOL_MAX_BYTES: &str = "hookbridge_spool_max_bytes";
/// Events taken into the spool, by `sink`.
pub const SPOOLED: &str = "hookbridge_spooled_total";
/// Spooled events published and removed, by `sink`.
pub const SPOOL_DRAINED: &str = "hookbridge_spool_drained_total";
/// Unreadable spool records (damage, another version's format) moved to the sink's quarantine
/// table instead of blocking its drainer, by `sink`.
pub const SPOOL_QUARANTINED: &str = "hookbridge_spool_quarantined_total";
/// Events kept as dead letters because their sink refused them for good, by `sink` (from a
/// request with `on_refused = "dead-letter"`, or from the spool's drainer).
pub const DEAD_LETTERED: &str = "hookbridge_dead_lettered_total";
/// Dead letters kept in the spool, by `sink`: anything above 0 needs an operator
/// (`hookbridge spool dead list`, then `replay` once the broker is fixed).
pub const DEAD_LETTERS: &str = "hookbridge_dead_letters";
/// Requests answered from the dedup store without publishing, by `source`.
pub const DEDUP_HITS: &str = "hookbridge_dedup_hits_total";
/// Dedup store errors (the request then proceeds without dedup), by `backend`.
pub const DEDUP_ERRORS: &str = "hookbridge_dedup_errors_total";
/// Ed25519 batch checks of two or more signatures (Cobo WaaS 2.0), by `result` (`passed`,
/// `failed`: then each signature was checked alone and batching paused for a second).
pub const SIGNATURE_BATCHES: &str = "hookbridge_signature_batches_total";
/// Signatures checked in those batches, by `result`.
pub const SIGNATURES_BATCHED: &str = "hookbridge_signatures_batched_total";

pub fn spool_depth(sink: &str, depth: u64) {
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!(SPOOL_DEPTH, "sink" => sink.to_owned()).set(depth as f64);
}

pub fn spool_bytes(used: u64, max: u64) {
    #[allow(clippy::cast_precision_loss)]
    {
        metrics::gauge!(SPOOL_BYTES).set(used as f64);
        metrics::gauge!(SPOOL_MAX_BYTES).set(max as f64);
    }
}

pub fn spooled(sink: &str) {
    metrics::counter!(SPOOLED, "sink" => sink.to_owned()).increment(1);
}

pub fn spool_drained(sink: &str, n: u64) {
    metrics::counter!(SPOOL_DRAINED, "sink" => sink.to_owned()).increment(n);
}

pub fn spool_quarantined(sink: &str, n: u64) {
    metrics::counter!(SPOOL_QUARANTINED, "sink" => sink.to_owned()).increment(n);
}

pub fn dead_lettered(sink: &str) {
    metrics::counter!(DEAD_LETTERED, "sink" => sink.to_owned()).increment(1);
}

pub fn dead_letters(sink: &str, n: u64) {
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!(DEAD_LETTERS, "sink" => sink.to_owned()).set(n as f64);
}

pub fn dedup_hit(source: &str) {
    metrics::counter!(DEDUP_HITS, "source" => source.to_owned()).increment(1);
}

pub fn signature_batch(passed: bool, signatures: usize) {
    let result = if passed { "passed" } else { "failed" };
    metrics::counter!(SIGNATURE_BATCHES, "result" => result).increment(1);
    metrics::counter!(SIGNATURES_BATCHED, "result" => result).increment(signatures as u64);
}

pub fn dedup_error(backend: &'static str) {
    metrics::counter!(DEDUP_ERRORS, "backend" => backend).increment(1);
}

pub fn decision(source: &str, decision: &'static str, by: &'static str) {
    metrics::counter!(CALLBACK_DECISIONS, "source" => source.to_owned(), "decision" => decision, "by" => by)
        .increment(1);
}

pub fn decision_conflict(source: &str) {
    metrics::counter!(DECISION_CONFLICTS, "source" => source.to_owned()).increment(1);
}

pub fn reply_rejected(source: &str, reason: &'static str) {
    metrics::counter!(REPLIES_REJECTED, "source" => source.to_owned(), "reason" => reason)
        .increment(1);
}

pub fn decision_timeout(source: &str) {
    metrics::counter!(DECISION_TIMEOUTS, "source" => source.to_owned()).increment(1);
}

pub fn connection_rejected(reason: &'static str) {
    metrics::counter!(CONNECTIONS_REJECTED, "reason" => reason).increment(1);
}

/// Tracks one in-flight request for as long as the guard lives.
pub struct InFlight(());

/// The in-flight gauge's handle, taken once when the recorder is installed: every request
/// moves it twice, and `gauge!` looks the series up in the registry each time.
static IN_FLIGHT_GAUGE: std::sync::OnceLock<metrics::Gauge> = std::sync::OnceLock::new();

impl InFlight {
    pub fn enter() -> Self {
        if let Some(g) = IN_FLIGHT_GAUGE.get() {
            g.increment(1.0);
        }
        Self(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(g) = IN_FLIGHT_GAUGE.get() {
            g.decrement(1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_is_sorted_by_family_then_series_with_buckets_in_order() {
        let raw = "# TYPE b_total counter\nb_total{s=\"z\"} 1\nb_total{s=\"a\"} 2\n\n# TYPE a_seconds histogram\na_seconds_bucket{s=\"y\",le=\"0.5\"} 1\na_seconds_bucket{s=\"y\",le=\"+Inf\"} 1\na_seconds_sum{s=\"y\"} 0.1\na_seconds_count{s=\"y\"} 1\na_seconds_bucket{s=\"x\",le=\"0.5\"} 0\na_seconds_bucket{s=\"x\",le=\"+Inf\"} 2\na_seconds_sum{s=\"x\"} 3\na_seconds_count{s=\"x\"} 2\n\n";
        let sorted = sort_exposition(raw);
        let lines: Vec<&str> = sorted.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(
            lines,
            [
                "# TYPE a_seconds histogram",
                "a_seconds_bucket{s=\"x\",le=\"0.5\"} 0",
                "a_seconds_bucket{s=\"x\",le=\"+Inf\"} 2",
                "a_seconds_sum{s=\"x\"} 3",
                "a_seconds_count{s=\"x\"} 2",
                "a_seconds_bucket{s=\"y\",le=\"0.5\"} 1",
                "a_seconds_bucket{s=\"y\",le=\"+Inf\"} 1",
                "a_seconds_sum{s=\"y\"} 0.1",
                "a_seconds_count{s=\"y\"} 1",
                "# TYPE b_total counter",
                "b_total{s=\"a\"} 2",
                "b_total{s=\"z\"} 1",
            ]
        );
    }

    #[test]
    fn every_metric_has_help_text() {
        let src = include_str!("metrics.rs");
        let names: Vec<&str> = src
            .lines()
            .filter_map(|l| l.strip_prefix("pub const "))
            .filter_map(|l| l.split('"').nth(1))
            .filter(|n| n.starts_with("hookbridge_"))
            .collect();
        assert!(names.len() >= 20, "{names:?}");
        for n in names {
            assert!(HELP.iter().any(|(h, _, _)| *h == n), "no HELP for {n}");
        }
    }
}
