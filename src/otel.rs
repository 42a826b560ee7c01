//! OpenTelemetry traces of requests: one span per request with a child per step (body read,
//! verification, dedup, publish until the broker's confirmation, spool, decision), exported
//! over OTLP/HTTP as JSON, and the W3C `traceparent` that carries the trace into the published
//! event (Kafka and AMQP headers, the CloudEvents `traceparent` extension).
//!
//! Owns the trace and span IDs, the sampling decision, the per-request span recorder and the
//! exporter. The request path only takes timestamps: [`in_span`] around a step records its
//! start and end into the request's [`RequestTrace`] (a task-local, so the steps deep in the
//! delivery code need no parameter), and [`Tracer::finish`] hands the finished request to a
//! bounded queue. Spans are built, serialized and sent by the exporter task, off the request
//! path; a full queue drops the request's spans and counts them, never waits.
//!
//! A `traceparent` sent by the provider is not trusted as a parent (anyone can send one, and a
//! parent would let a sender place hookbridge's spans inside a trace of their choosing): it
//! becomes a span link, marked unverified. hookbridge sends no `tracestate` of its own and
//! never forwards the provider's.

use std::future::Future;
use std::hash::BuildHasher as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::Full;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::TracingConfig;

tokio::task_local! {
    static CURRENT: Arc<RequestTrace>;
}

/// Trace and span IDs: a process-random SipHash key over a counter. Unique and unpredictable
/// enough for tracing (they are not secrets), and no system call per ID.
struct Ids {
    keys: std::hash::RandomState,
    n: AtomicU64,
}

impl Ids {
    fn next(&self) -> u64 {
        // Zero is the invalid ID in W3C trace context.
        self.keys
            .hash_one(self.n.fetch_add(1, Ordering::Relaxed))
            .max(1)
    }
}

/// One request's trace, recorded while it runs.
pub struct RequestTrace {
    trace_id: u128,
    root: u64,
    /// The span the published event's `traceparent` names: the first `publish` step.
    publish: u64,
    publish_taken: AtomicBool,
    /// The other steps' span IDs: `mix(root + n)`.
    next_step: AtomicU64,
    sampled: bool,
    wall: SystemTime,
    start: Instant,
    /// The provider's `traceparent`, as a link (unverified).
    link: Option<(u128, u64)>,
    spans: Mutex<Vec<Step>>,
}

struct Step {
    id: u64,
    name: &'static str,
    start: Instant,
    end: Instant,
}

impl RequestTrace {
    /// The W3C `traceparent` of the event this request publishes.
    fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.publish,
            u8::from(self.sampled)
        )
    }

    fn nanos(&self, at: Instant) -> u128 {
        let wall = self.wall + at.saturating_duration_since(self.start);
        wall.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    }
}

/// Runs `step` as a child span of the current request's trace, when there is one and it is
/// sampled; otherwise just runs it.
pub async fn in_span<F: Future>(name: &'static str, step: F) -> F::Output {
    let Ok(trace) = CURRENT.try_with(Arc::clone) else {
        return step.await;
    };
    if !trace.sampled {
        return step.await;
    }
    let start = Instant::now();
    let out = step.await;
    let end = Instant::now();
    let id = if name == "publish" && !trace.publish_taken.swap(true, Ordering::Relaxed) {
        trace.publish
    } else {
        mix(trace
            .root
            .wrapping_add(trace.next_step.fetch_add(1, Ordering::Relaxed) + 1))
    };
    if let Ok(mut spans) = trace.spans.lock() {
        spans.push(Step {
            id: id.max(1),
            name,
            start,
            end,
        });
    }
    out
}

/// The current request's `traceparent` for the event it publishes, if it is traced.
pub fn traceparent() -> Option<String> {
    CURRENT.try_with(|t| t.traceparent()).ok()
}

/// Runs a request's future with `trace` as its current trace.
pub async fn scope<F: Future>(trace: Arc<RequestTrace>, request: F) -> F::Output {
    CURRENT.scope(trace, request).await
}

/// What the request span says about how the request ended.
pub struct Ended<'a> {
    pub source: &'a str,
    pub outcome: &'a str,
    pub reason: &'a str,
    pub status: u16,
    pub event_id: Option<&'a str>,
}

/// A finished, sampled request, waiting for export.
struct Finished {
    trace: Arc<RequestTrace>,
    end: Instant,
    source: String,
    outcome: String,
    reason: String,
    status: u16,
    event_id: Option<String>,
}

impl Finished {
    fn span_count(&self) -> usize {
        1 + self.trace.spans.lock().map_or(0, |s| s.len())
    }
}

/// Starts request traces and queues finished ones for the exporter.
pub struct Tracer {
    ids: Ids,
    /// Trace IDs whose low 64 bits are below this are sampled.
    sample_below: u64,
    queue: mpsc::UnboundedSender<Finished>,
    queued_spans: Arc<AtomicUsize>,
    max_queue_spans: usize,
}

/// The exporter's half: run by [`Exporter::run`] until shutdown.
pub struct Exporter {
    queue: mpsc::UnboundedReceiver<Finished>,
    queued_spans: Arc<AtomicUsize>,
    config: TracingConfig,
}

impl Tracer {
    pub fn new(config: &TracingConfig) -> (Self, Exporter) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued_spans = Arc::new(AtomicUsize::new(0));
        // `ratio × 2^64`, saturating at 1.0.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let sample_below = if config.sample_ratio >= 1.0 {
            u64::MAX
        } else {
            (config.sample_ratio * 18_446_744_073_709_551_616.0) as u64
        };
        let tracer = Self {
            ids: Ids {
                keys: std::hash::RandomState::new(),
                n: AtomicU64::new(0),
            },
            sample_below,
            queue: tx,
            queued_spans: Arc::clone(&queued_spans),
            max_queue_spans: config.max_queue_spans,
        };
        let exporter = Exporter {
            queue: rx,
            queued_spans,
            config: config.clone(),
        };
        (tracer, exporter)
    }

    /// A new trace for a request that arrived with `headers`.
    pub fn start(&self, headers: &HeaderMap) -> Arc<RequestTrace> {
        let (hi, lo) = (self.ids.next(), self.ids.next());
        let trace_id = (u128::from(hi) << 64) | u128::from(lo);
        Arc::new(RequestTrace {
            trace_id,
            root: self.ids.next(),
            publish: self.ids.next(),
            publish_taken: AtomicBool::new(false),
            next_step: AtomicU64::new(0),
            sampled: self.sample_below == u64::MAX || lo < self.sample_below,
            wall: SystemTime::now(),
            start: Instant::now(),
            link: headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_traceparent),
            spans: Mutex::new(Vec::with_capacity(6)),
        })
    }

    /// Queues a finished request's spans, unless the queue is full (then they are counted as
    /// dropped).
    pub fn finish(&self, trace: Arc<RequestTrace>, ended: &Ended<'_>) {
        if !trace.sampled {
            return;
        }
        let finished = Finished {
            trace,
            end: Instant::now(),
            source: ended.source.to_owned(),
            outcome: ended.outcome.to_owned(),
            reason: ended.reason.to_owned(),
            status: ended.status,
            event_id: ended.event_id.map(ToOwned::to_owned),
        };
        let n = finished.span_count();
        let queued = self.queued_spans.fetch_add(n, Ordering::Relaxed);
        if queued + n > self.max_queue_spans || self.queue.send(finished).is_err() {
            self.queued_spans.fetch_sub(n, Ordering::Relaxed);
            crate::metrics::trace_spans("dropped_queue_full", n);
        }
    }
}

/// SplitMix64's finalizer: distinct inputs give distinct, well-spread outputs.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A valid W3C `traceparent` (version 00): its trace ID and parent span ID.
fn parse_traceparent(v: &str) -> Option<(u128, u64)> {
    let mut parts = v.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if version != "00"
        || !hex(trace, 32)
        || !hex(span, 16)
        || !hex(flags, 2)
        || parts.next().is_some()
    {
        return None;
    }
    let trace = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
    let span = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
    Some((trace, span))
}

impl Exporter {
    /// Batches finished requests' spans and posts them until `stop`, then posts what is left
    /// (within the export timeout).
    pub async fn run(mut self, stop: CancellationToken) {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let mut tick = tokio::time::interval(self.config.export_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch: Vec<Finished> = Vec::new();
        let mut spans = 0;
        loop {
            let flush = tokio::select! {
                got = self.queue.recv() => match got {
                    Some(f) => {
                        spans += f.span_count();
                        batch.push(f);
                        spans >= self.config.max_export_batch
                    }
                    None => break,
                },
                _ = tick.tick() => !batch.is_empty(),
                () = stop.cancelled() => break,
            };
            if flush {
                self.export(&client, std::mem::take(&mut batch), spans)
                    .await;
                spans = 0;
            }
        }
        while let Ok(f) = self.queue.try_recv() {
            spans += f.span_count();
            batch.push(f);
        }
        if !batch.is_empty() {
            self.export(&client, batch, spans).await;
        }
    }

    async fn export<C>(
        &self,
        client: &hyper_util::client::legacy::Client<C, Full<Bytes>>,
        batch: Vec<Finished>,
        spans: usize,
    ) where
        C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
    {
        self.queued_spans.fetch_sub(spans, Ordering::Relaxed);
        let body = otlp_json(&self.config.service_name, &batch);
        let request = http::Request::post(self.config.endpoint.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        let Ok(request) = request else { return };
        let sent = tokio::time::timeout(self.config.export_timeout, client.request(request)).await;
        match sent {
            Ok(Ok(resp)) if resp.status().is_success() => {
                crate::metrics::trace_spans("exported", spans);
            }
            outcome => {
                let why = match outcome {
                    Ok(Ok(resp)) => format!("the collector answered {}", resp.status()),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".to_owned(),
                };
                crate::metrics::trace_spans("export_failed", spans);
                tracing::warn!(endpoint = %self.config.endpoint, spans, error = %why, "trace export failed; these spans are dropped");
            }
        }
    }
}

/// Span kinds, as OTLP numbers them.
const KIND_INTERNAL: u8 = 1;
const KIND_SERVER: u8 = 2;
const KIND_PRODUCER: u8 = 4;

/// Formats into the export's bytes (writing into a `Vec` cannot fail).
fn put(out: &mut Vec<u8>, args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _infallible = out.write_fmt(args);
}

/// A JSON string: quoted and escaped (serde_json's escaping, without building a value).
fn string(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _infallible = serde_json::to_writer(&mut *out, s);
}

fn attr(out: &mut Vec<u8>, first: bool, key: &str, value: &str) {
    if !first {
        out.push(b',');
    }
    out.extend_from_slice(b"{\"key\":");
    string(out, key);
    out.extend_from_slice(b",\"value\":{\"stringValue\":");
    string(out, value);
    out.extend_from_slice(b"}}");
}

/// The fields every span has, up to and including its end time.
fn span_head(
    out: &mut Vec<u8>,
    ids: (u128, u64, Option<u64>),
    name: &str,
    kind: u8,
    times: (u128, u128),
) {
    let (trace, span, parent) = ids;
    put(
        out,
        format_args!("{{\"traceId\":\"{trace:032x}\",\"spanId\":\"{span:016x}\","),
    );
    if let Some(p) = parent {
        put(out, format_args!("\"parentSpanId\":\"{p:016x}\","));
    }
    out.extend_from_slice(b"\"name\":");
    string(out, name);
    put(
        out,
        format_args!(
            ",\"kind\":{kind},\"startTimeUnixNano\":\"{}\",\"endTimeUnixNano\":\"{}\"",
            times.0, times.1
        ),
    );
}

/// An OTLP `ExportTraceServiceRequest` in the OTLP/JSON encoding (IDs as hex, times as decimal
/// strings of nanoseconds), written straight into bytes: the exporter's cost is per span, and a
/// `serde_json::Value` tree of the same document cost over 100,000 instructions per request.
fn otlp_json(service: &str, batch: &[Finished]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + batch.len() * 1536);
    out.extend_from_slice(b"{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
    attr(&mut out, true, "service.name", service);
    put(
        &mut out,
        format_args!(
            "]}},\"scopeSpans\":[{{\"scope\":{{\"name\":\"hookbridge\",\"version\":\"{}\"}},\"spans\":[",
            env!("CARGO_PKG_VERSION")
        ),
    );
    let mut first_span = true;
    for f in batch {
        let t = &f.trace;
        if !std::mem::take(&mut first_span) {
            out.push(b',');
        }
        let name = format!("POST /hooks/{}", f.source);
        let times = (t.nanos(t.start), t.nanos(f.end));
        span_head(
            &mut out,
            (t.trace_id, t.root, None),
            &name,
            KIND_SERVER,
            times,
        );
        out.extend_from_slice(b",\"attributes\":[");
        attr(&mut out, true, "http.request.method", "POST");
        attr(&mut out, false, "http.route", &name[5..]);
        put(
            &mut out,
            format_args!(
                ",{{\"key\":\"http.response.status_code\",\"value\":{{\"intValue\":\"{}\"}}}}",
                f.status
            ),
        );
        attr(&mut out, false, "hookbridge.source", &f.source);
        attr(&mut out, false, "hookbridge.outcome", &f.outcome);
        if !f.reason.is_empty() {
            attr(&mut out, false, "hookbridge.reason", &f.reason);
        }
        if let Some(id) = &f.event_id {
            attr(&mut out, false, "hookbridge.event_id", id);
        }
        out.extend_from_slice(b"],\"links\":[");
        if let Some((trace, span)) = t.link {
            put(
                &mut out,
                format_args!(
                    "{{\"traceId\":\"{trace:032x}\",\"spanId\":\"{span:016x}\",\"attributes\":["
                ),
            );
            attr(
                &mut out,
                true,
                "hookbridge.link",
                "provider traceparent (unverified)",
            );
            out.extend_from_slice(b"]}");
        }
        // 2: error (a 5xx is the service's failure); 0: unset.
        let code = if f.status >= 500 { 2 } else { 0 };
        put(&mut out, format_args!("],\"status\":{{\"code\":{code}}}}}"));
        for s in t.spans.lock().iter().flat_map(|s| s.iter()) {
            let kind = if s.name == "publish" {
                KIND_PRODUCER
            } else {
                KIND_INTERNAL
            };
            out.push(b',');
            let times = (t.nanos(s.start), t.nanos(s.end));
            span_head(
                &mut out,
                (t.trace_id, s.id, Some(t.root)),
                s.name,
                kind,
                times,
            );
            out.push(b'}');
        }
    }
    out.extend_from_slice(b"]}]}]}");
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn traceparent_is_parsed_only_when_well_formed() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(good),
            Some((
                0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                0x00f0_67aa_0ba9_02b7
            ))
        );
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xx",
            "",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_export_is_otlp_json_with_escaped_strings() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let (tracer, _exporter) = Tracer::new(&TracingConfig {
            endpoint: "http://127.0.0.1:4318/v1/traces".parse().unwrap(),
            service_name: "svc \"q\"".into(),
            sample_ratio: 1.0,
            max_queue_spans: 10,
            max_export_batch: 10,
            export_interval: Duration::from_secs(1),
            export_timeout: Duration::from_secs(1),
        });
        let trace = tracer.start(&headers);
        trace.spans.lock().unwrap().push(Step {
            id: 7,
            name: "verify",
            start: trace.start,
            end: Instant::now(),
        });
        let finished = Finished {
            trace: Arc::clone(&trace),
            end: Instant::now(),
            source: "s".into(),
            outcome: "rejected".into(),
            reason: "bad_signature".into(),
            status: 503,
            event_id: Some("id \"with\" quotes\n".into()),
        };
        let plain = Finished {
            trace: tracer.start(&HeaderMap::new()),
            end: Instant::now(),
            source: "p".into(),
            outcome: "accepted".into(),
            reason: String::new(),
            status: 200,
            event_id: None,
        };
        let bytes = otlp_json("svc \"q\"", &[finished, plain]);
        let doc: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
        let rs = &doc["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0]["value"]["stringValue"],
            "svc \"q\""
        );
        let spans = rs["scopeSpans"][0]["spans"].as_array().unwrap();
        assert_eq!(spans.len(), 3, "{}", String::from_utf8_lossy(&bytes));
        assert_eq!(spans[2]["name"], "POST /hooks/p");
        let (root, child) = (&spans[0], &spans[1]);
        assert_eq!(root["name"], "POST /hooks/s");
        assert_eq!(root["status"]["code"], 2);
        assert_eq!(root["traceId"], format!("{:032x}", trace.trace_id));
        assert_eq!(root["links"][0]["spanId"], "00f067aa0ba902b7");
        let event_id = root["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == "hookbridge.event_id")
            .unwrap();
        assert_eq!(event_id["value"]["stringValue"], "id \"with\" quotes\n");
        assert_eq!(child["parentSpanId"], root["spanId"]);
        assert_eq!(child["spanId"], "0000000000000007");
        assert_eq!(child["kind"], 1);
    }

    #[test]
    fn sampling_by_ratio_keeps_about_that_share() {
        let config = |ratio| TracingConfig {
            endpoint: "http://127.0.0.1:4318/v1/traces".parse().unwrap(),
            service_name: "t".into(),
            sample_ratio: ratio,
            max_queue_spans: 10,
            max_export_batch: 10,
            export_interval: Duration::from_secs(1),
            export_timeout: Duration::from_secs(1),
        };
        for (ratio, low, high) in [(0.0, 0, 0), (0.25, 2_000, 3_000), (1.0, 10_000, 10_000)] {
            let (tracer, _exporter) = Tracer::new(&config(ratio));
            let sampled = (0..10_000)
                .filter(|_| tracer.start(&HeaderMap::new()).sampled)
                .count();
            assert!((low..=high).contains(&sampled), "{ratio}: {sampled}");
        }
    }
}
