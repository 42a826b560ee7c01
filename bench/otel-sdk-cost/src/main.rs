//! One request's span tree through the OpenTelemetry SDK, N times (see Cargo.toml).

use opentelemetry::trace::{Span, SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};

#[derive(Debug)]
struct Discard;
impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        std::hint::black_box(batch);
        Ok(())
    }
}

fn one(tracer: &opentelemetry_sdk::trace::SdkTracer, i: usize) {
    let root = tracer
        .span_builder("POST /hooks/hmac")
        .with_kind(SpanKind::Server)
        .with_attributes(vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.route", "/hooks/hmac"),
            KeyValue::new("http.response.status_code", 200i64),
            KeyValue::new("hookbridge.source", "hmac"),
            KeyValue::new("hookbridge.outcome", "accepted"),
            KeyValue::new("hookbridge.event_id", format!("evt-{i}")),
        ])
        .start(tracer);
    let cx = Context::current_with_span(root);
    for (name, kind) in [
        ("body.read", SpanKind::Internal),
        ("verify", SpanKind::Internal),
        ("dedup", SpanKind::Internal),
        ("publish", SpanKind::Producer),
    ] {
        let mut s = tracer
            .span_builder(name)
            .with_kind(kind)
            .start_with_context(tracer, &cx);
        s.end();
    }
    cx.span().end();
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3000);
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(Discard)
        .build();
    let tracer = provider.tracer("hookbridge");
    for i in 0..n {
        one(&tracer, i);
    }
    let _ = provider.shutdown();
}
