//! One request through the pipeline. The handler never talks to a broker directly: it hands
//! the envelope to the source's sink and waits for its confirmation under the ack deadline.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use governor::clock::Clock;
use http::{HeaderMap, Method};
use warp::reply::Response;

use super::reject::{self, Rejection};
use super::{PeerAddr, Route, State, client};
use crate::metrics;
use crate::normalize::Envelope;
use crate::verify::IncomingWebhook;

pub async fn receive<S, B>(
    name: String,
    method: Method,
    headers: HeaderMap,
    peer: Option<PeerAddr>,
    body: S,
    state: Arc<State>,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf + Send,
{
    let started = Instant::now();
    let _in_flight = metrics::InFlight::enter();
    let peer = peer.map(|p| p.0);
    let client = peer.map(|p| client::client_ip(p.ip(), &headers, &state.trusted_proxies));
    let mut ctx = AuditCtx {
        peer,
        client,
        bytes: 0,
        started,
    };
    let Some(route) = state.routes.get(&name) else {
        let r = Rejection::UnknownSource;
        // The path is attacker-chosen: it must not become a metric label.
        audit("_unknown", &ctx, Err(&r));
        return r.into_response();
    };
    let result = process(route, &state, method, headers, body, &mut ctx).await;
    match result {
        Ok(envelope) => {
            audit(&name, &ctx, Ok(&envelope));
            metrics::ack_latency(&name, started.elapsed());
            reject::accepted(envelope.id())
        }
        Err(r) => {
            audit(&name, &ctx, Err(&r));
            r.into_response()
        }
    }
}

/// What the audit line needs beyond the outcome.
struct AuditCtx {
    peer: Option<SocketAddr>,
    client: Option<IpAddr>,
    bytes: usize,
    started: Instant,
}

/// Cheap checks first (no body read yet): method, TLS, address, rate; then the body, the
/// signature, the envelope, and the sink under the ack deadline.
async fn process<S, B>(
    route: &Route,
    state: &State,
    method: Method,
    headers: HeaderMap,
    body: S,
    ctx: &mut AuditCtx,
) -> Result<Envelope, Rejection>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf + Send,
{
    if method != Method::POST {
        return Err(Rejection::MethodNotAllowed);
    }
    if state.require_tls
        && !state.tls_listener
        && !ctx
            .peer
            .is_some_and(|p| client::forwarded_https(p.ip(), &headers, &state.trusted_proxies))
    {
        return Err(Rejection::TlsRequired);
    }
    if let Some(allowed) = &route.spec.allow_ips
        && !ctx
            .client
            .is_some_and(|ip| allowed.iter().any(|n| n.contains(&ip)))
    {
        return Err(Rejection::IpDenied);
    }
    // Per client first: a flooding client is stopped before it drains the source's bucket.
    if let (Some(limiter), Some(ip)) = (&route.ip_limiter, ctx.client)
        && let Err(not_until) = limiter.check_key(&ip)
    {
        return Err(Rejection::RateLimited {
            retry_after: retry_secs(&not_until, limiter.clock()),
        });
    }
    if let Some(limiter) = &route.limiter
        && let Err(not_until) = limiter.check()
    {
        return Err(Rejection::RateLimited {
            retry_after: retry_secs(&not_until, limiter.clock()),
        });
    }

    let limit = route.spec.max_body_bytes;
    // Refuse early on a declared length, before reading anything.
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(Rejection::TooLarge { limit });
    }
    let body = tokio::time::timeout(state.body_timeout, read_capped(body, limit))
        .await
        .map_err(|_| Rejection::BodyTimeout)??;
    ctx.bytes = body.len();

    let received = SystemTime::now();
    let verified = route
        .spec
        .verifier
        .verify(IncomingWebhook { headers, body }, received)?;
    let envelope = Envelope::build(verified, &route.spec, received)?;

    let publish_started = Instant::now();
    match tokio::time::timeout(route.spec.ack_deadline, route.sink.publish(&envelope)).await {
        Ok(Ok(())) => {
            metrics::publish_latency(&route.spec.sink, publish_started.elapsed());
            Ok(envelope)
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(Rejection::AckTimeout),
    }
}

/// Whole seconds until the bucket has room again (at least 1, as `Retry-After` counts seconds).
fn retry_secs<C: Clock<Instant = governor::clock::QuantaInstant>>(
    not_until: &governor::NotUntil<governor::clock::QuantaInstant>,
    clock: &C,
) -> u32 {
    let wait = not_until.wait_time_from(clock.now());
    u32::try_from(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// Collects the body, counting bytes as they arrive: `Content-Length` alone cannot be trusted
/// (chunked bodies have none).
async fn read_capped<S, B>(stream: S, limit: usize) -> Result<Bytes, Rejection>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf + Send,
{
    let mut stream = std::pin::pin!(stream);
    let mut out = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Rejection::BodyRead(e.to_string()))?;
        if out.len() + chunk.remaining() > limit {
            return Err(Rejection::TooLarge { limit });
        }
        out.put(chunk);
    }
    Ok(out.freeze())
}

/// The audit line: one per request, with the outcome and why. Never bodies, signatures or keys.
fn audit(source: &str, ctx: &AuditCtx, outcome: Result<&Envelope, &Rejection>) {
    let latency_us = u64::try_from(ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let peer = ctx.peer.map(|p| p.to_string()).unwrap_or_default();
    let client = ctx.client.map(|c| c.to_string()).unwrap_or_default();
    let bytes = ctx.bytes;
    match outcome {
        Ok(env) => {
            metrics::request(source, "accepted");
            tracing::info!(
                target: "hookbridge::audit",
                source, client, peer, outcome = "accepted", reason = "", status = 200u16,
                event_id = %env.id(), event_type = env.event_type(), id_from = %env.id_origin(),
                bytes, latency_us,
                "request accepted"
            );
        }
        Err(r) => {
            metrics::request(source, r.reason());
            tracing::warn!(
                target: "hookbridge::audit",
                source, client, peer, outcome = "rejected", reason = r.reason(),
                status = r.status().as_u16(), detail = %r, bytes, latency_us,
                "request rejected"
            );
        }
    }
}

#[cfg(test)]
pub(super) async fn read_capped_for_tests<S, B>(stream: S, limit: usize) -> Result<Bytes, Rejection>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf + Send,
{
    read_capped(stream, limit).await
}
