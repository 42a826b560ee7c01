//! The request flow of an approval callback: find the callback ID, answer the decision
//! remembered for this exact body, else decide (rules, default, or the decision service under a
//! deadline), remember the decision (the first one recorded stands), make the standing
//! decision's audit event durable, and only then answer `ok`/`deny`.
//!
//! Anything that goes wrong on the way is a non-200 (Cobo retries); nothing here can answer
//! `ok` without a recorded decision about the very body being answered:
//! - a decision is keyed by the body's digest ([`Subject`]), so a different body under a
//!   remembered callback ID is decided on its own (and the conflict counted and audited);
//! - a decision service's reply decides only when it carries a valid MAC (the service's
//!   secret) over the key, the nonce of the ask, and the decision, arrives on the reply
//!   address of the source that asked, and answers an outstanding ask ([`on_reply`]).
//!
//! The flow owns no HTTP and no sink: the request path hands it an [`Approver`] with a
//! [`Deliver`] capability (how an audit event is made durable for this source) and maps its
//! [`ApprovalError`] to a status.

use std::future::Future;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;

use super::rules::Outcome;
use super::service::{DecisionService, Reply, Request};
use super::store::{DecisionStore, StoreError, Stored};
use super::{Approval, Decision, OnTimeout, Otherwise, Subject, Verdict, reply_mac_message};
use crate::metrics;
use crate::normalize::{self, Envelope, IdOrigin, MAX_EVENT_ID_LEN, NormalizeError};
use crate::plan::SourceSpec;
use crate::verify::VerifiedWebhook;

/// Makes an audit event durable under the source's ack mode (the request path's delivery
/// policy): the one thing the approval flow needs from outside.
pub trait Deliver: Sync {
    type Error: std::fmt::Display + Send;

    fn deliver(&self, event: &Envelope) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// One approval source, as the flow sees it.
pub struct Approver<'a, D> {
    pub spec: &'a SourceSpec,
    pub approval: &'a Approval,
    /// The decision service asked when no rule decides (`default = "ask"`).
    pub service: Option<&'a DecisionService>,
    pub store: &'a DecisionStore,
    pub delivery: D,
}

/// Why a callback got no decision; every case is a non-200, so Cobo retries.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError<E> {
    #[error("callback body is not JSON")]
    NotJson,
    #[error("no callback ID in the callback body")]
    NoCallbackId,
    #[error(transparent)]
    Normalize(#[from] NormalizeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no decision yet for this callback")]
    NoDecision,
    /// The decision's audit event could not be made durable.
    #[error("{0}")]
    Delivery(E),
}

/// A decided callback, for the answer and the audit line.
#[derive(Debug)]
pub struct Answered {
    pub decision: Decision,
    /// Empty when no trustworthy ID exists (a bad signature answered `deny`).
    pub callback_id: String,
    /// The judged body's digest (empty with the callback ID).
    pub body_sha256: String,
    /// Found in the store: a retry of a callback already decided.
    pub remembered: bool,
    /// The digest of another body decided first under the same callback ID.
    pub conflict_with: Option<String>,
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
            body_sha256: String::new(),
            remembered: false,
            conflict_with: None,
        }
    }

    fn new(subject: &Subject, decision: Decision) -> Self {
        Self {
            decision,
            callback_id: subject.callback_id.clone(),
            body_sha256: subject.body_sha256.clone(),
            remembered: false,
            conflict_with: None,
        }
    }
}

/// Decides a verified approval callback; see the module docs.
///
/// # Errors
/// See [`ApprovalError`]: no `ok` is ever answered on an error.
pub async fn approve<D: Deliver>(
    ctx: &Approver<'_, D>,
    verified: VerifiedWebhook,
    received: SystemTime,
) -> Result<Answered, ApprovalError<D::Error>> {
    let approval = ctx.approval;
    let body: Bytes = verified.body().clone();
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return Err(ApprovalError::NotJson);
    };
    let envelope = Envelope::build(verified, ctx.spec, received)?;
    let IdOrigin::Locator(locator) = envelope.id_origin() else {
        return Err(ApprovalError::NoCallbackId);
    };
    let source = ctx.spec.name.as_str();
    let subject = Subject::new(source, envelope.id().as_str(), locator, &body);
    // The key is also the AMQP correlation id (a short string).
    if subject.key().len() > MAX_EVENT_ID_LEN {
        return Err(NormalizeError::TooLong {
            field: "callback_id",
        }
        .into());
    }
    let lookup = ctx.store.get(&subject).await?;
    if let Some(stored) = lookup.stored {
        let decision = ensure_audited(ctx, &subject, stored, Some(&envelope)).await?;
        return Ok(Answered {
            remembered: true,
            ..Answered::new(&subject, decision)
        });
    }
    if let Some(first) = &lookup.conflict {
        // Someone (perhaps another Cobo customer, whose bodies Cobo signs with the same key)
        // sent a different body under this callback ID first. Its decision is never this
        // body's: this body is decided on its own, as if the other had never come.
        metrics::decision_conflict(source);
        tracing::warn!(
            source, callback_id = %subject.callback_id, body_sha256 = %subject.body_sha256,
            first_body_sha256 = %first,
            "another body was decided under this callback ID; deciding this body on its own"
        );
    }
    // `None`: no rule matched and the default is to ask the decision service.
    let proposed = match approval.rules.evaluate(source, &subject.callback_id, &json) {
        Outcome::Matched {
            rule,
            decision,
            reason,
        } => Some(Decision::new(decision, reason, format!("rule:{rule}"))),
        Outcome::Failed { rule, error } => {
            // Fail closed (see callback::rules): deny, and say why where operators look.
            tracing::error!(source, callback_id = %subject.callback_id, rule = %rule, error = %error, "a decision rule could not be evaluated; denying");
            Some(Decision::new(
                Verdict::Deny,
                format!("rule {rule} could not be evaluated: {error}"),
                format!("rule:{rule}"),
            ))
        }
        Outcome::NoMatch => match approval.otherwise {
            Otherwise::Decide(v) => Some(Decision::new(v, "no rule matched", "default")),
            Otherwise::Ask => None,
        },
    };
    let decision = match proposed {
        Some(p) => settle(ctx, &subject, p, Some(&envelope)).await?,
        // Recorded and audited by the time it returns.
        None => ask(ctx, &subject, &envelope, &body).await?,
    };
    Ok(Answered {
        conflict_with: lookup.conflict,
        ..Answered::new(&subject, decision)
    })
}

/// Asks the decision service and waits for its reply (recorded by whichever replica consumed
/// it) until the deadline; returns the standing decision, recorded and audited.
async fn ask<D: Deliver>(
    ctx: &Approver<'_, D>,
    subject: &Subject,
    envelope: &Envelope,
    body: &[u8],
) -> Result<Decision, ApprovalError<D::Error>> {
    let (approval, store, source) = (ctx.approval, ctx.store, ctx.spec.name.as_str());
    let (Some(service), Some(spec)) = (ctx.service, approval.service.as_ref()) else {
        // Config validation makes this unreachable; still never an `ok`.
        return Err(ApprovalError::NoDecision);
    };
    let key = subject.key();
    let callback_id = subject.callback_id.as_str();
    let deadline = tokio::time::Instant::from_std(Instant::now() + approval.timeout);
    // Subscribe before asking: a fast reply must not slip between the two.
    let mut replies = store.subscribe();
    // Before publishing: the reply may come (to any replica) before `ask` returns.
    let asked = store.ask(subject).await?;
    let request = Request {
        correlation_id: key.clone(),
        json: normalize::decision_request(ctx.spec, subject, &asked.nonce, &spec.replies, body)?,
    };
    match tokio::time::timeout_at(deadline, service.ask(&request)).await {
        Ok(Ok(())) => {}
        // Not asked is not "no answer in time": never a remembered `deny`, always a 503.
        Ok(Err(e)) => {
            tracing::warn!(source, callback_id, error = %e, "decision request not published");
            return Err(ApprovalError::NoDecision);
        }
        Err(_) => {
            tracing::warn!(
                source,
                callback_id,
                "decision request not confirmed before the deadline"
            );
            return Err(ApprovalError::NoDecision);
        }
    }
    let announced = loop {
        match tokio::time::timeout_at(deadline, replies.recv()).await {
            Ok(Ok(r)) if *r.key == key => break Some(r.decision),
            Ok(Ok(_)) | Ok(Err(RecvError::Lagged(_))) => {}
            Ok(Err(RecvError::Closed)) | Err(_) => break None,
        }
    };
    if let Some(decision) = announced {
        // Announced only once audited.
        return Ok(decision);
    }
    // Recorded by another replica, or just now: make sure it is audited, then answer it.
    if let Some(stored) = store.get(subject).await?.stored {
        return ensure_audited(ctx, subject, stored, Some(envelope)).await;
    }
    metrics::decision_timeout(source);
    match approval.on_timeout {
        OnTimeout::Retry => Err(ApprovalError::NoDecision),
        OnTimeout::Deny => {
            // A reply this process is recording right now must win over the timeout.
            let Some(_recording) = store.try_begin(&key) else {
                return Err(ApprovalError::NoDecision);
            };
            let timeout = Decision::new(
                Verdict::Deny,
                "the decision service did not answer in time",
                "timeout",
            );
            settle(ctx, subject, timeout, Some(envelope)).await
        }
    }
}

/// Records `proposed` unless a decision already stands, then makes the standing decision's
/// audit event durable; returns the standing decision.
async fn settle<D: Deliver>(
    ctx: &Approver<'_, D>,
    subject: &Subject,
    proposed: Decision,
    callback: Option<&Envelope>,
) -> Result<Decision, ApprovalError<D::Error>> {
    let standing = ctx.store.record(subject, proposed).await?;
    ensure_audited(ctx, subject, standing, callback).await
}

/// Publishes the audit event of a stored decision unless it is known to be durable already
/// (same ID and content each time, so a second copy is a plain duplicate), marks it, and wakes
/// this process's waiting requests.
async fn ensure_audited<D: Deliver>(
    ctx: &Approver<'_, D>,
    subject: &Subject,
    stored: Stored,
    callback: Option<&Envelope>,
) -> Result<Decision, ApprovalError<D::Error>> {
    if stored.audited {
        // Another replica audited it: wake this process's waiters too.
        ctx.store.announce(&subject.key(), &stored.decision);
        return Ok(stored.decision);
    }
    let event = Envelope::decision(ctx.spec, subject, &stored.decision, callback)?;
    ctx.delivery
        .deliver(&event)
        .await
        .map_err(ApprovalError::Delivery)?;
    if let Err(e) = ctx.store.mark_audited(subject, &stored).await {
        // The event is durable; the next answer publishes it once more, which is harmless.
        tracing::warn!(source = %ctx.spec.name, callback_id = %subject.callback_id, error = %e, "could not mark a decision audited");
        ctx.store.announce(&subject.key(), &stored.decision);
    }
    Ok(stored.decision)
}

/// Why a consumed reply decides nothing (the `reason` label of
/// `hookbridge_decision_replies_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its `id` is not a decision key of an approval source that asks a decision service.
    UnknownKey,
    /// It came to another source's reply address than the one the key's source asked on.
    WrongAddress,
    /// No outstanding ask for its key (never asked, or the ask expired).
    NotAsked,
    /// Its nonce is not the one the ask carried.
    WrongNonce,
    /// Its MAC is missing or not made with the key's source's service secret.
    BadMac,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Self::UnknownKey => "unknown_key",
            Self::WrongAddress => "wrong_address",
            Self::NotAsked => "not_asked",
            Self::WrongNonce => "wrong_nonce",
            Self::BadMac => "bad_mac",
        }
    }
}

/// A reply from a decision service, consumed by this replica (every replica consumes every
/// reply): if it is authentic and answers an outstanding ask, record it unless a decision
/// already stands, and wake the waiting request. `approver` finds an approval source by name.
pub async fn on_reply<'a, D: Deliver>(
    store: &DecisionStore,
    reply: Reply,
    approver: impl Fn(&str) -> Option<Approver<'a, D>>,
) {
    let key = reply.id.clone();
    let (source, callback_id, body_sha256) = match Subject::parse_key(&key) {
        Some(parts) => parts,
        None => return refuse(&reply, Refused::UnknownKey),
    };
    let Some((ctx, spec)) = approver(source).and_then(|ctx| {
        let spec = ctx.approval.service.as_ref()?;
        Some((ctx, spec))
    }) else {
        return refuse(&reply, Refused::UnknownKey);
    };
    // The consumer that read it belongs to `reply.via`: it must listen where `source` asked.
    let arrived_on =
        approver(&reply.via).and_then(|r| Some(r.approval.service.as_ref()?.reply_address()));
    if arrived_on != Some(spec.reply_address()) {
        return refuse(&reply, Refused::WrongAddress);
    }
    let asked = match store.asked(&key).await {
        Ok(Some(a)) => a,
        Ok(None) => return refuse(&reply, Refused::NotAsked),
        Err(e) => {
            tracing::warn!(id = %key, error = %e, "decision reply not recorded: the store is unavailable; the callback's retry asks again");
            return;
        }
    };
    if asked.nonce != reply.nonce {
        return refuse(&reply, Refused::WrongNonce);
    }
    let message = reply_mac_message(&key, &asked.nonce, reply.decision.decision);
    if !spec.secret.verify_hex(message.as_bytes(), &reply.mac) {
        return refuse(&reply, Refused::BadMac);
    }
    // Only now: a forged reply holding this claim would make the genuine one be skipped.
    let Some(_recording) = store.try_begin(&key) else {
        return;
    };
    let subject = Subject {
        source: source.to_owned(),
        callback_id: callback_id.to_owned(),
        locator: asked.locator,
        body_sha256: body_sha256.to_owned(),
    };
    let verdict = reply.decision.decision;
    match settle(&ctx, &subject, reply.decision, None).await {
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

/// Counts and logs a reply that decides nothing.
fn refuse(reply: &Reply, why: Refused) {
    metrics::reply_rejected(&reply.via, why.reason());
    tracing::warn!(
        via = %reply.via, id = %reply.id, decision = %reply.decision.decision, reason = why.reason(),
        "decision reply refused; it decides nothing"
    );
}
