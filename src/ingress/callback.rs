//! The request flow of an approval callback: find the callback ID, answer a remembered decision,
//! else decide (rules, default, or the decision service under a deadline), make the decision's
//! audit event durable, remember the decision, and only then answer `ok`/`deny`.
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
use crate::callback::{Approval, Decision, OnTimeout, Otherwise, Verdict, correlation_id};
use crate::metrics;
use crate::normalize::{self, Envelope, IdOrigin};
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
    if let Some(decision) = state.decisions.get(&key).await? {
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
    let decision = record(route, state, &key, &callback_id, decision, Some(&envelope)).await?;
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
    let asked = match tokio::time::timeout_at(deadline, service.ask(&request)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(source = %route.spec.name, callback_id, error = %e, "decision request not published");
            false
        }
        Err(_) => {
            tracing::warn!(source = %route.spec.name, callback_id, "decision request not confirmed before the deadline");
            false
        }
    };
    let found = if asked {
        loop {
            match tokio::time::timeout_at(deadline, replies.recv()).await {
                Ok(Ok(r)) if &*r.key == key => break Some(r.decision),
                Ok(Ok(_)) => {}
                Ok(Err(RecvError::Lagged(_))) => {
                    if let Some(d) = state.decisions.get(key).await? {
                        break Some(d);
                    }
                }
                Ok(Err(RecvError::Closed)) | Err(_) => break None,
            }
        }
    } else {
        None
    };
    // A reply recorded by another replica (or just now) still counts.
    let found = match found {
        Some(d) => Some(d),
        None => state.decisions.get(key).await?,
    };
    if let Some(decision) = found {
        return Ok(Answered {
            decision,
            callback_id: callback_id.to_owned(),
            remembered: false,
        });
    }
    metrics::decision_timeout(&route.spec.name);
    match approval.on_timeout {
        OnTimeout::Retry => Err(Rejection::NoDecision),
        OnTimeout::Deny => {
            let timeout = Decision::new(
                Verdict::Deny,
                "the decision service did not answer in time",
                "timeout",
            );
            let decision = record(route, state, key, callback_id, timeout, Some(envelope)).await?;
            Ok(Answered {
                decision,
                callback_id: callback_id.to_owned(),
                remembered: false,
            })
        }
    }
}

/// Publishes the decision's audit event (durable: broker or spool), then remembers the
/// decision; returns the decision that stands (another replica's, if it was first).
async fn record(
    route: &Route,
    state: &State,
    key: &str,
    callback_id: &str,
    decision: Decision,
    callback: Option<&Envelope>,
) -> Result<Decision, Rejection> {
    let event = Envelope::decision(&route.spec, callback_id, &decision, callback)?;
    handler::deliver(route, state, &event).await?;
    Ok(state.decisions.record(key, decision).await?)
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
    match state.decisions.get(&reply.id).await {
        Ok(Some(standing)) => {
            state.decisions.announce(&reply.id, &standing);
            return;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(id = %reply.id, error = %e, "decision reply not recorded: the store is unavailable; the callback's retry asks again");
            return;
        }
    }
    let verdict = reply.decision.decision;
    match record(route, state, &reply.id, callback_id, reply.decision, None).await {
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
