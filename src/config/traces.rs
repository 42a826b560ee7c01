//! `[tracing]`: OpenTelemetry traces, exported over OTLP/HTTP (JSON). Off unless the section
//! says `enabled = true` or the environment says `OTEL_TRACES_EXPORTER=otlp`; the standard
//! `OTEL_*` variables fill what the section leaves out, and `OTEL_SDK_DISABLED=true` turns it
//! off whatever the section says.

use std::time::Duration;

use serde::Deserialize;

use super::problems::Problems;

/// What a running exporter needs (see `crate::otel`).
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// `http://host:port/v1/traces`.
    pub endpoint: http::Uri,
    pub service_name: String,
    /// Share of requests traced, 0.0–1.0, decided by trace ID (`traceidratio`).
    pub sample_ratio: f64,
    /// Spans held for export; past it new ones are dropped and counted, never waited for.
    pub max_queue_spans: usize,
    pub max_export_batch: usize,
    pub export_interval: Duration,
    pub export_timeout: Duration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTracing {
    enabled: Option<bool>,
    endpoint: Option<String>,
    service_name: Option<String>,
    sample_ratio: Option<f64>,
    max_queue_spans: Option<usize>,
    max_export_batch: Option<usize>,
    export_interval_ms: Option<u64>,
    export_timeout_ms: Option<u64>,
}

const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4318";

/// Reads `[tracing]` and the `OTEL_*` environment; `None` when tracing is off.
pub fn load(
    problems: &mut Problems,
    value: Option<toml::Value>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<TracingConfig> {
    let raw: RawTracing = problems.section_or_default("tracing", value);
    let by_env = env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "otlp");
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if disabled || !raw.enabled.unwrap_or(by_env) {
        return None;
    }
    let mut at = problems.at("tracing");
    // The signal-specific variable is the full URL; the general one is a base to which the
    // signal's path is added (the OTLP exporter specification).
    let endpoint = raw
        .endpoint
        .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .unwrap_or_else(|| {
            let base =
                env("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into());
            format!("{}/v1/traces", base.trim_end_matches('/'))
        });
    let endpoint = match endpoint.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => u,
        Ok(u) if u.scheme_str() == Some("https") => {
            at.error(
                "endpoint",
                "https is not supported: export to a collector or agent on the same host or network over http",
            );
            return None;
        }
        _ => {
            at.error("endpoint", "expected an http:// URL (OTLP/HTTP)");
            return None;
        }
    };
    let number = |name: &str| env(name).and_then(|v| v.trim().parse::<u64>().ok());
    let sample_ratio = raw.sample_ratio.or_else(|| {
        let sampler = env("OTEL_TRACES_SAMPLER")?;
        match sampler.trim() {
            "always_on" | "parentbased_always_on" => Some(1.0),
            "always_off" | "parentbased_always_off" => Some(0.0),
            "traceidratio" | "parentbased_traceidratio" => env("OTEL_TRACES_SAMPLER_ARG")
                .and_then(|a| a.trim().parse().ok())
                .or(Some(1.0)),
            _ => None,
        }
    });
    let sample_ratio = sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        at.error("sample_ratio", "must be between 0.0 and 1.0");
    }
    let max_queue_spans = raw
        .max_queue_spans
        .or_else(|| number("OTEL_BSP_MAX_QUEUE_SIZE").and_then(|n| usize::try_from(n).ok()))
        .unwrap_or(8192);
    let max_export_batch = raw
        .max_export_batch
        .or_else(|| number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").and_then(|n| usize::try_from(n).ok()))
        .unwrap_or(512);
    if max_queue_spans == 0 || max_export_batch == 0 {
        at.error_here("max_queue_spans and max_export_batch must be at least 1");
    }
    let ms = |v: Option<u64>, var: &str, default: u64| {
        Duration::from_millis(v.or_else(|| number(var)).unwrap_or(default).max(1))
    };
    Some(TracingConfig {
        endpoint,
        service_name: raw
            .service_name
            .or_else(|| env("OTEL_SERVICE_NAME"))
            .unwrap_or_else(|| "hookbridge".into()),
        sample_ratio,
        max_queue_spans,
        max_export_batch,
        export_interval: ms(raw.export_interval_ms, "OTEL_BSP_SCHEDULE_DELAY", 1000),
        export_timeout: ms(raw.export_timeout_ms, "OTEL_BSP_EXPORT_TIMEOUT", 5000),
    })
}
