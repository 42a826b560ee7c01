//! One request through the pipeline. The handler never talks to a broker directly: it hands
//! the envelope to the source's sink and waits for its confirmation under the ack deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, Method};
use warp::reply::Response;

use super::reject::{self, Rejection};
use super::{PeerAddr, Route, State};
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
    let Some(route) = state.routes.get(&name) else {
        let r = Rejection::UnknownSource;
        // The path is attacker-chosen: it must not become a metric label.
        audit("_unknown", peer, Err(&r), None, 0, started);
        return r.into_response();
    };
    let mut bytes = 0;
    let result = process(route, &state, method, headers, body, &mut bytes).await;
    match result {
        Ok(envelope) => {
            audit(
                &name,
                peer,
                Ok(&envelope),
                Some(envelope.id_origin().to_string()),
                bytes,
                started,
            );
            metrics::ack_latency(&name, started.elapsed());
            reject::accepted(envelope.id())
        }
        Err(r) => {
            audit(&name, peer, Err(&r), None, bytes, started);
            r.into_response()
        }
    }
}

async fn process<S, B>(
    route: &Route,
    state: &State,
    method: Method,
    headers: HeaderMap,
    body: S,
    bytes: &mut usize,
) -> Result<Envelope, Rejection>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf + Send,
{
    if method != Method::POST {
        return Err(Rejection::MethodNotAllowed);
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
    *bytes = body.len();

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
fn audit(
    source: &str,
    peer: Option<SocketAddr>,
    outcome: Result<&Envelope, &Rejection>,
    id_from: Option<String>,
    bytes: usize,
    started: Instant,
) {
    let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let peer = peer.map(|p| p.to_string()).unwrap_or_default();
    match outcome {
        Ok(env) => {
            metrics::request(source, "accepted");
            tracing::info!(
                target: "hookbridge::audit",
                source, peer, outcome = "accepted", status = 200u16, event_id = %env.id(),
                event_type = env.event_type(), id_from = id_from.as_deref().unwrap_or(""), bytes, latency_us,
                "request accepted"
            );
        }
        Err(r) => {
            metrics::request(source, r.reason());
            tracing::warn!(
                target: "hookbridge::audit",
                source, peer, outcome = "rejected", reason = r.reason(), status = r.status().as_u16(),
                detail = %r, bytes, latency_us,
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
