//! The request flow of an approval callback: find the callback ID, answer a remembered decision,
//! else decide (rules, default, or the decision service under a deadline), remember the decision
//! (the first one recorded stands), make the standing decision's audit event durable, and only
//! then answer `ok`/`deny`.
//!
//! Anything that goes wrong on the way is a non-200 (Cobo retries); nothing here can answer
//! `ok` without a recorded decision.

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;

use super::reject::Rejection;
use super::{Route, State, handler};
use crate::callback::rules::Outcome;
use crate::callback::service::{Reply, Request};
use crate::callback::store::Stored;
use crate::callback::{Approval, Decision, OnTimeout, Otherwise, Verdict, correlation_id};
use crate::metrics;
use crate::normalize::{self, Envelope, IdOrigin, MAX_EVENT_ID_LEN, NormalizeError};
use crate::verify::VerifiedWebhook;

/// A decided callback, for the answer and the audit line.
#[derive(Debug)]
pub struct Answered {
    pub decision: Decision,
    /// Empty when no trustworthy ID exists (a bad signature answered `deny`).
    pub callback_id: String,
    /// Found in the store: a retry of a callback already decided.
    pub remembered: bool,
}

impl Answered {
    /// `on_bad_signature = "deny"`: the request proves nothing, so nothing is recorded.
    pub fn bad_signature(reason: &'static str) -> Self {
        Self {
            decision: Decision::new(
                Verdict::Deny,
                format!("signature check failed: {reason}"),
                "bad_signature",
            ),
            callback_id: String::new(),
            remembered: false,
        }
    }
}

/// Decides a verified approval callback; see the module docs.
pub(super) async fn approve(
    route: &Route,
    state: &State,
    approval: &Approval,
    verified: VerifiedWebhook,
    received: SystemTime,
) -> Result<Answered, Rejection> {
    let body: Bytes = verified.body().clone();
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return Err(Rejection::CallbackNotJson);
    };
    let envelope = Envelope::build(verified, &route.spec, received)?;
    if *envelope.id_origin() == IdOrigin::BodySha256 {
        return Err(Rejection::NoCallbackId);
    }
    let source = route.spec.name.as_str();
    let callback_id = envelope.id().as_str().to_owned();
    let key = correlation_id(source, &callback_id);
    // The key is also the AMQP correlation id (a short string).
    if key.len() > MAX_EVENT_ID_LEN {
        return Err(NormalizeError::TooLong {
            field: "callback_id",
        }
        .into());
    }
    if let Some(stored) = state.decisions.get(&key).await? {
        let decision =
            ensure_audited(route, state, &key, &callback_id, stored, Some(&envelope)).await?;
        return Ok(Answered {
            decision,
            callback_id,
            remembered: true,
        });
    }
    let decision = match approval.rules.evaluate(source, &callback_id, &json) {
        Outcome::Matched {
            rule,
            decision,
            reason,
        } => Decision::new(decision, reason, format!("rule:{rule}")),
        Outcome::Failed { rule, error } => {
            // Fail closed (see callback::rules): deny, and say why where operators look.
            tracing::error!(source, callback_id = %callback_id, rule = %rule, error = %error, "a decision rule could not be evaluated; denying");
            Decision::new(
                Verdict::Deny,
                format!("rule {rule} could not be evaluated"),
                format!("rule:{rule}"),
            )
        }
        Outcome::NoMatch => match approval.otherwise {
            Otherwise::Decide(v) => Decision::new(v, "no rule matched", "default"),
            Otherwise::Ask => {
                return ask(route, state, approval, &key, &envelope, &body).await;
            }
        },
    };
    let decision = settle(route, state, &key, &callback_id, decision, Some(&envelope)).await?;
    Ok(Answered {
        decision,
        callback_id,
        remembered: false,
    })
}

/// Asks the decision service and waits for its reply (recorded by whichever replica consumed
/// it) until the deadline.
async fn ask(
    route: &Route,
    state: &State,
    approval: &Approval,
    key: &str,
    envelope: &Envelope,
    body: &[u8],
) -> Result<Answered, Rejection> {
    let callback_id = envelope.id().as_str();
    let (Some(service), Some(spec)) = (route.service.as_ref(), approval.service.as_ref()) else {
        // Config validation makes this unreachable; still never an `ok`.
        return Err(Rejection::NoDecision);
    };
    let deadline = tokio::time::Instant::from_std(Instant::now() + approval.timeout);
    // Subscribe before asking: a fast reply must not slip between the two.
    let mut replies = state.decisions.subscribe();
    let request = Request {
        correlation_id: key.to_owned(),
        json: normalize::decision_request(&route.spec, callback_id, key, &spec.replies, body)?,
    };
    // Before publishing: the reply may come (to any replica) before `ask` returns.
    state.decisions.mark_asked(key).await?;
    match tokio::time::timeout_at(deadline, service.ask(&request)).await {
        Ok(Ok(())) => {}
        // Not asked is not "no answer in time": never a remembered `deny`, always a 503.
        Ok(Err(e)) => {
            tracing::warn!(source = %route.spec.name, callback_id, error = %e, "decision request not published");
            return Err(Rejection::NoDecision);
        }
        Err(_) => {
            tracing::warn!(source = %route.spec.name, callback_id, "decision request not confirmed before the deadline");
            return Err(Rejection::NoDecision);
        }
    }
    let announced = loop {
        match tokio::time::timeout_at(deadline, replies.recv()).await {
            Ok(Ok(r)) if &*r.key == key => break Some(r.decision),
            Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => {}
            Ok(Err(RecvError::Closed)) | Err(_) => break None,
        }
    };
    let answered = |decision| {
        Ok(Answered {
            decision,
            callback_id: callback_id.to_owned(),
            remembered: false,
        })
    };
    if let Some(decision) = announced {
        // Announced only once audited.
        return answered(decision);
    }
    // Recorded by another replica, or just now: make sure it is audited, then answer it.
    if let Some(stored) = state.decisions.get(key).await? {
        return answered(
            ensure_audited(route, state, key, callback_id, stored, Some(envelope)).await?,
        );
    }
    metrics::decision_timeout(&route.spec.name);
    match approval.on_timeout {
        OnTimeout::Retry => Err(Rejection::NoDecision),
        OnTimeout::Deny => {
            // A reply this process is recording right now must win over the timeout.
            let Some(_recording) = state.decisions.try_begin(key) else {
                return Err(Rejection::NoDecision);
            };
            let timeout = Decision::new(
                Verdict::Deny,
                "the decision service did not answer in time",
                "timeout",
            );
            answered(settle(route, state, key, callback_id, timeout, Some(envelope)).await?)
        }
    }
}

/// Records `proposed` unless a decision already stands, then makes the standing decision's
/// audit event durable; returns the standing decision.
async fn settle(
    route: &Route,
    state: &State,
    key: &str,
    callback_id: &str,
    proposed: Decision,
    callback: Option<&Envelope>,
) -> Result<Decision, Rejection> {
    let standing = state.decisions.record(key, proposed).await?;
    ensure_audited(route, state, key, callback_id, standing, callback).await
}

/// Publishes the audit event of a stored decision unless it is known to be durable already
/// (same ID and content each time, so a second copy is a plain duplicate), marks it, and wakes
/// this process's waiting requests.
async fn ensure_audited(
    route: &Route,
    state: &State,
    key: &str,
    callback_id: &str,
    stored: Stored,
    callback: Option<&Envelope>,
) -> Result<Decision, Rejection> {
    if stored.audited {
        // Another replica audited it: wake this process's waiters too.
        state.decisions.announce(key, &stored.decision);
        return Ok(stored.decision);
    }
    let event = Envelope::decision(&route.spec, callback_id, &stored.decision, callback)?;
    handler::deliver(route, state, &event).await?;
    if let Err(e) = state.decisions.mark_audited(key, &stored.decision).await {
        // The event is durable; the next answer publishes it once more, which is harmless.
        tracing::warn!(source = %route.spec.name, callback_id, error = %e, "could not mark a decision audited");
        state.decisions.announce(key, &stored.decision);
    }
    Ok(stored.decision)
}

/// A reply from a decision service, consumed by this replica (every replica consumes every
/// reply): record it unless a decision already stands, and wake the waiting request.
pub async fn on_reply(state: &State, reply: Reply) {
    let Some((source, callback_id)) = reply.id.split_once(':') else {
        tracing::warn!(id = %reply.id, "decision reply with an id that is not <source>:<callback id>; ignored");
        return;
    };
    let Some(route) = state
        .routes
        .get(source)
        .filter(|r| r.spec.kind.approval().is_some_and(|a| a.service.is_some()))
    else {
        tracing::warn!(id = %reply.id, "decision reply for a source that asks no decision service; ignored");
        return;
    };
    let Some(_recording) = state.decisions.try_begin(&reply.id) else {
        return;
    };
    match state.decisions.was_asked(&reply.id).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(id = %reply.id, "decision reply for a callback nobody asked about; ignored");
            return;
        }
        Err(e) => {
            tracing::warn!(id = %reply.id, error = %e, "decision reply not recorded: the store is unavailable; the callback's retry asks again");
            return;
        }
    }
    let verdict = reply.decision.decision;
    match settle(route, state, &reply.id, callback_id, reply.decision, None).await {
        Ok(standing) => tracing::info!(
            source, callback_id, decision = %standing.decision, decided_by = %standing.decided_by,
            "decision recorded"
        ),
        Err(e) => tracing::warn!(
            source, callback_id, decision = %verdict, error = %e,
            "decision reply not recorded; the callback's retry asks again"
        ),
    }
}
