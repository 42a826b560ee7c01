//! One request through the pipeline. The handler never talks to a broker directly: it hands
//! the envelope to the source's sink and waits for its confirmation under the ack deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use governor::clock::Clock;
use http::{HeaderMap, Method};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use warp::reply::Response;

use super::delivery::{self, Delivery};
use super::reject::{self, Rejection};
use super::{PeerAddr, Route, State, client};
use crate::callback::Purpose;
use crate::callback::approve::{self, Answered};
use crate::dedup::Claim;
use crate::normalize::Envelope;
use crate::plan::SourceKind;
use crate::verify::{Handshake, IncomingWebhook, VerifiedWebhook};
use crate::{audit, metrics, otel};

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
    let client = peer.map(|p| client::client(p.ip(), &headers, &state.proxies));
    let mut ctx = AuditCtx {
        peer,
        client,
        bytes: 0,
        started,
    };
    let Some(route) = state.routes.load().get(&name).cloned() else {
        let r = Rejection::UnknownSource;
        // The path is attacker-chosen: it must not become a metric label.
        audit("_unknown", &ctx, Err(&r));
        return r.into_response();
    };
    // Bounded in-flight work: past the limit, answer at once rather than queue.
    let Ok(_permit) = Arc::clone(&state.in_flight).try_acquire_owned() else {
        let r = Rejection::Overloaded;
        audit(&name, &ctx, Err(&r));
        return r.into_response();
    };
    let trace = state.tracer.as_ref().map(|t| t.start(&headers));
    // Boxed: the pipeline's future holds every step's state (body read, verification, dedup,
    // the sink's publish, the spool write) and is the largest value on the request path.
    // Unboxed, warp's filters moved it by value several times per request (memcpy was 15 % of
    // the HMAC path's instructions under callgrind); boxed, they move a pointer.
    let handling = Box::pin(process(&route, &state, method, headers, body, &mut ctx));
    let result = match &trace {
        Some(t) => otel::scope(Arc::clone(t), handling).await,
        None => handling.await,
    };
    // What the request's trace span says: the outcome label, a reason, the event ID.
    let (response, outcome, reason, event_id) = match result {
        Ok(Handled::Event(envelope, delivery, shadow)) => {
            let outcome = match shadow {
                Some(_) => metrics::Accepted::ShadowUnverified,
                None => delivery.outcome(),
            };
            route.metrics.request(outcome);
            audit(&name, &ctx, Ok((&envelope, outcome, shadow)));
            route.metrics.ack_latency(started.elapsed());
            let response = if matches!(route.spec.kind, SourceKind::Callback(Purpose::Notification))
            {
                // A notification's `ok` only says "received": sent once durable, like a 200.
                reject::decided(crate::callback::Verdict::Ok)
            } else {
                reject::accepted(envelope.id())
            };
            (
                response,
                outcome.label(),
                shadow.unwrap_or_default(),
                Some(envelope.id().clone()),
            )
        }
        Ok(Handled::Handshake(handshake)) => {
            route.metrics.request(metrics::Accepted::Handshake);
            audit_handshake(&name, &ctx, &handshake);
            let reason = handshake.kind();
            (
                reject::handshake(&handshake),
                metrics::Accepted::Handshake.label(),
                reason,
                None,
            )
        }
        Ok(Handled::Decided(answered)) => {
            route.metrics.request(metrics::Accepted::Decided);
            audit_decision(&name, &ctx, &answered);
            route.metrics.ack_latency(started.elapsed());
            let decision = answered.decision.decision;
            (
                reject::decided(decision),
                metrics::Accepted::Decided.label(),
                decision.body(),
                None,
            )
        }
        Err(r) => {
            audit(&name, &ctx, Err(&r));
            let reason = r.reason();
            (r.into_response(), "rejected", reason, None)
        }
    };
    if let (Some(tracer), Some(trace)) = (&state.tracer, trace) {
        let ended = otel::Ended {
            source: &name,
            outcome,
            reason,
            status: response.status().as_u16(),
            event_id: event_id.as_ref().map(crate::normalize::EventId::as_str),
        };
        tracer.finish(trace, &ended);
    }
    response
}

/// What the audit line needs beyond the outcome.
struct AuditCtx {
    peer: Option<SocketAddr>,
    client: Option<client::Client>,
    bytes: usize,
    started: Instant,
}

impl AuditCtx {
    /// Client address, peer address and latency so far (µs), as the audit line writes them.
    fn fields(&self) -> (audit::AddrText, audit::AddrText, u64) {
        let client = self
            .client
            .map_or(audit::AddrText::NONE, |c| match c.addr() {
                Some(ip) => audit::AddrText::ip(ip),
                // The client's own text (`unknown`): rare, an unreadable forwarding chain.
                None => audit::AddrText::text(&c.to_string()),
            });
        (
            client,
            self.peer
                .map_or(audit::AddrText::NONE, audit::AddrText::socket),
            u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        )
    }
}

/// What an accepted request led to.
enum Handled {
    /// An event made durable (webhooks and notification callbacks); in shadow mode, with why
    /// its request failed verification.
    Event(Envelope, Delivery, Option<&'static str>),
    /// An approval callback's decision.
    Decided(Answered),
    /// A provider's endpoint handshake, answered by its scheme and never published.
    Handshake(Handshake),
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
) -> Result<Handled, Rejection>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf + Send,
{
    admit(route, state, &method, &headers, ctx)?;
    let limit = route.spec.max_body_bytes;
    // Refuse early on a declared length, before reading anything.
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(Rejection::TooLarge { limit });
    }
    let reading = tokio::time::timeout(
        state.body_timeout,
        read_capped(body, limit, declared, &state.body_budget),
    );
    let (body, budget) = otel::in_span("body.read", reading)
        .await
        .map_err(|_| Rejection::BodyTimeout)??;
    ctx.bytes = body.len();

    let received = SystemTime::now();
    let approval = route.spec.kind.approval();
    let incoming = IncomingWebhook { headers, body };
    let deny_bad = approval.is_some_and(|a| a.deny_bad_signatures);
    let verifying = verify(route, incoming, received, deny_bad);
    let verified = match otel::in_span("verify", verifying).await? {
        Ok(v) => v,
        Err(bad_signature) => return Ok(Handled::Decided(bad_signature)),
    };
    // Authenticated: its bytes no longer count against what unauthenticated senders may hold.
    drop(budget);
    if let Some(limiter) = &route.limiter
        && let Err(not_until) = limiter.check()
    {
        return Err(Rejection::RateLimited {
            retry_after: retry_secs(&not_until, limiter.clock()),
        });
    }
    if let Some(handshake) = route.spec.verifier.scheme().handshake(&verified)? {
        return Ok(Handled::Handshake(handshake));
    }
    if let Some(approval) = approval {
        let approver = route.approver(state, approval);
        // Boxed: the approval flow's future is most of the pipeline's size (rules, the store,
        // the decision service's round trip), and only approvals need it.
        let deciding = Box::pin(approve::approve(&approver, verified, received));
        return otel::in_span("decision", deciding)
            .await
            .map(Handled::Decided)
            .map_err(Rejection::from);
    }
    publish(route, state, verified, received).await
}

/// The signature check (batched with concurrent requests where the scheme allows: see
/// [`crate::verify::SourceVerifier::verify_batched`]). `Ok(Err(answer))`: an approval callback
/// whose bad signature is answered `deny` (`deny_bad_signatures`) rather than refused.
async fn verify(
    route: &Route,
    incoming: IncomingWebhook,
    received: SystemTime,
    deny_bad_signatures: bool,
) -> Result<Result<VerifiedWebhook, Answered>, Rejection> {
    if route.spec.shadow {
        // Config refuses shadow mode for approvals: this never reaches `approve`.
        let (verified, failure) = route.spec.verifier.verify_shadow(incoming, received);
        if let Some(e) = failure {
            metrics::shadow_unverified(&route.spec.name, e.reason());
            tracing::warn!(source = %route.spec.name, reason = e.reason(), error = %e, "shadow mode: accepting a request that failed verification");
        }
        return Ok(Ok(verified));
    }
    match route.spec.verifier.verify_batched(incoming, received).await {
        Ok(v) => Ok(Ok(v)),
        Err(e) if deny_bad_signatures => Ok(Err(Answered::bad_signature(e.reason()))),
        Err(e) => Err(e.into()),
    }
}

/// A verified webhook's event: claimed against duplicates, then made durable per the ack mode.
async fn publish(
    route: &Route,
    state: &State,
    verified: VerifiedWebhook,
    received: SystemTime,
) -> Result<Handled, Rejection> {
    let shadow = verified.proof().shadow;
    let traceparent = otel::traceparent();
    let envelope = Envelope::build_traced(verified, &route.spec, received, traceparent.as_deref())?;

    // An unverified (shadow) request never claims an event ID: anyone could post a body with
    // the ID of a genuine event to come, which dedup would then answer without publishing.
    let token = if route.spec.dedup && shadow.is_none() {
        match otel::in_span("dedup", state.dedup.claim(&route.spec.name, envelope.id())).await {
            Claim::New(token) => Some(token),
            Claim::Done => {
                metrics::dedup_hit(&route.spec.name);
                return Ok(Handled::Event(envelope, Delivery::Duplicate, None));
            }
            Claim::InFlight => return Err(Rejection::DuplicateInFlight),
        }
    } else {
        None
    };
    let delivered = delivery::deliver(route, state, &envelope).await;
    if let Some(token) = token {
        match &delivered {
            Ok(_) => state.dedup.complete(token).await,
            Err(_) => state.dedup.release(token).await,
        }
    }
    delivered.map(|d| Handled::Event(envelope, d, shadow))
}

/// The checks that need no body: method, TLS, the source's address allowlist, and the
/// client's rate bucket.
fn admit(
    route: &Route,
    state: &State,
    method: &Method,
    headers: &HeaderMap,
    ctx: &AuditCtx,
) -> Result<(), Rejection> {
    if method != Method::POST {
        return Err(Rejection::MethodNotAllowed);
    }
    if state.require_tls
        && !state.tls_listener
        && !ctx
            .peer
            .is_some_and(|p| client::forwarded_https(p.ip(), headers, &state.proxies))
    {
        return Err(Rejection::TlsRequired);
    }
    // An unknown client (an unreadable forwarding chain) matches no allowlist.
    if let Some(allowed) = &route.spec.allow_ips
        && !ctx
            .client
            .and_then(client::Client::addr)
            .is_some_and(|ip| allowed.iter().any(|n| n.contains(&ip)))
    {
        return Err(Rejection::IpDenied);
    }
    // Per client, before anything is read: a flooding client is stopped here. The source's
    // own bucket is charged only once a request is verified (below), so unsigned traffic
    // cannot spend what the real provider needs.
    if let (Some(limiter), Some(c)) = (&route.ip_limiter, ctx.client)
        && let Err(retry_after) = limiter.check(c)
    {
        return Err(Rejection::RateLimited { retry_after });
    }

    Ok(())
}

/// Whole seconds until the bucket has room again (at least 1, as `Retry-After` counts seconds).
pub(super) fn retry_secs<C: Clock<Instant = governor::clock::QuantaInstant>>(
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
/// Bytes reserved at a time from the body budget for a body of unknown length.
const BUDGET_STEP: usize = 16 * 1024;

/// Reads the body under the source's cap, holding bytes of the server-wide body budget for what
/// it buffers: all of a declared `Content-Length` up front (and a buffer of exactly that size),
/// or [`BUDGET_STEP`]s as a body of unknown length arrives. The permit is returned with the
/// body, to be dropped once the request is verified.
async fn read_capped<S, B>(
    stream: S,
    limit: usize,
    declared: Option<usize>,
    budget: &Arc<Semaphore>,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), Rejection>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf + Send,
{
    let take = |n: usize| {
        u32::try_from(n)
            .ok()
            .and_then(|n| Arc::clone(budget).try_acquire_many_owned(n).ok())
            .ok_or(Rejection::BodyBudget)
    };
    let mut held = match declared {
        Some(0) => None,
        Some(n) => Some(take(n)?),
        None => None,
    };
    let mut reserved = declared.unwrap_or(0);
    let mut stream = std::pin::pin!(stream);
    let mut out = BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Rejection::BodyRead(e.to_string()))?;
        let len = out.len() + chunk.remaining();
        if len > limit {
            return Err(Rejection::TooLarge { limit });
        }
        while len > reserved {
            // More than declared (hyper refuses that), or no length given: reserve as it comes.
            let step = BUDGET_STEP.min(limit - reserved).max(1);
            let permit = take(step)?;
            match held.as_mut() {
                Some(h) => h.merge(permit),
                None => held = Some(permit),
            }
            reserved += step;
        }
        out.put(chunk);
    }
    Ok((out.freeze(), held))
}

/// Writes the request's audit line (see [`crate::audit`]).
fn audit(
    source: &str,
    ctx: &AuditCtx,
    outcome: Result<(&Envelope, metrics::Accepted, Option<&'static str>), &Rejection>,
) {
    let (client, peer, latency_us) = ctx.fields();
    let mut line = audit::Line::new(
        "request accepted",
        source,
        client.as_str(),
        peer.as_str(),
        ctx.bytes,
        latency_us,
    );
    let detail;
    match outcome {
        Ok((env, accepted, shadow)) => {
            line.outcome = accepted.label();
            if accepted == metrics::Accepted::DeadLettered {
                // Answered 2xx but not on the broker: a line to look at.
                line.level = tracing::Level::WARN;
                line.message = "request accepted as a dead letter";
                line.reason = "broker_refused";
            }
            if let Some(reason) = shadow {
                // Accepted, but not authenticated: a line to look at, like a rejection.
                line.level = tracing::Level::WARN;
                line.message = "request accepted unverified (shadow mode)";
                line.reason = reason;
            }
            line.event_id = Some(env.id().as_str());
            line.event_type = Some(env.event_type());
            line.id_from = Some(env.id_origin().as_str());
            line.write();
        }
        Err(r) => {
            metrics::request(source, r.reason());
            detail = r.to_string();
            line.level = tracing::Level::WARN;
            line.message = "request rejected";
            line.outcome = "rejected";
            line.reason = r.reason();
            line.status = r.status().as_u16();
            line.detail = Some(&detail);
            line.write();
        }
    }
}

/// The audit line of an answered handshake: its kind, and no event (nothing was published).
fn audit_handshake(source: &str, ctx: &AuditCtx, h: &Handshake) {
    let (client, peer, latency_us) = ctx.fields();
    let mut line = audit::Line::new(
        "handshake answered",
        source,
        client.as_str(),
        peer.as_str(),
        ctx.bytes,
        latency_us,
    );
    line.outcome = metrics::Accepted::Handshake.label();
    line.reason = h.kind();
    line.write();
}

/// The audit line of an approval callback: the decision, who made it and why.
fn audit_decision(source: &str, ctx: &AuditCtx, a: &Answered) {
    let (client, peer, latency_us) = ctx.fields();
    let by = if a.remembered {
        "remembered"
    } else {
        a.decision.decider()
    };
    metrics::decision(source, a.decision.decision.body(), by);
    let decided_by = a.decision.decided_by.to_string();
    let mut line = audit::Line::new(
        "callback answered",
        source,
        client.as_str(),
        peer.as_str(),
        ctx.bytes,
        latency_us,
    );
    line.outcome = metrics::Accepted::Decided.label();
    line.reason = &a.decision.reason;
    line.decision = Some(audit::DecisionFields {
        decision: a.decision.decision.body(),
        decided_by: &decided_by,
        remembered: a.remembered,
        callback_id: &a.callback_id,
        body_sha256: &a.body_sha256,
        conflict_with: a.conflict_with.as_deref(),
    });
    line.write();
}

#[cfg(test)]
pub(super) async fn read_capped_for_tests<S, B>(stream: S, limit: usize) -> Result<Bytes, Rejection>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf + Send,
{
    let budget = Arc::new(Semaphore::new(limit.max(1)));
    read_capped(stream, limit, None, &budget)
        .await
        .map(|(body, _)| body)
}
