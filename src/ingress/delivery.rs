//! The ack-mode delivery policy: how an accepted event is made durable before it is answered
//! (`broker`: the sink's confirmation within 80 % of the deadline, else the spool; `spool`: the
//! spool; `accept`: at once, published in the background), and the late-confirmation watch that
//! takes a spooled copy back out; and what a refusal for good becomes (`on_refused`: a dead
//! letter in the spool, or 503). Used by the webhook request driver and the approval flow.
//!
//! What a request starts and does not wait for runs on [`Background`], so shutdown drains it
//! before the sinks close.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::reject::Rejection;
use super::{Route, State};
use crate::callback::Approval;
use crate::callback::approve::{self, Approver, Deliver};
use crate::callback::service::Reply;
use crate::metrics;
use crate::normalize::Envelope;
use crate::plan::{AckMode, OnRefused};
use crate::sink::PublishError;
use crate::spool::{Spool, SpoolError, Spooled};

/// Work that requests leave behind (the `ack = "accept"` publish, the late-confirmation watch,
/// decision replies being recorded): owned here, so that shutdown waits for it before the sinks
/// close instead of dropping it with the runtime.
#[derive(Default)]
pub struct Background {
    tasks: TaskTracker,
    /// Tells waits that may give up (the late-confirmation watch) that shutdown has come.
    stopping: CancellationToken,
}

impl Background {
    /// Runs `work` as owned background work.
    pub fn spawn<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.tasks.spawn(work));
    }

    /// Resolves once shutdown has begun.
    pub fn stopping(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.stopping.clone().cancelled_owned()
    }

    /// Shutdown: what can give up does, and what must finish (publishes, spool writes, each
    /// bounded by its deadline) has finished when this returns. Later spawns still run, and are
    /// waited for too.
    pub async fn drain(&self) {
        self.stopping.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// A source's delivery, as the approval flow's capability: its audit events follow the
/// source's ack mode like any event.
pub struct ToSink<'a> {
    route: &'a Route,
    state: &'a State,
}

impl Deliver for ToSink<'_> {
    type Error = Rejection;

    async fn deliver(&self, event: &Envelope) -> Result<(), Rejection> {
        deliver(self.route, self.state, event).await.map(drop)
    }
}

impl Route {
    /// This approval source, for the approval flow.
    pub(super) fn approver<'a>(
        &'a self,
        state: &'a State,
        approval: &'a Approval,
    ) -> Approver<'a, ToSink<'a>> {
        Approver {
            spec: &self.spec,
            approval,
            service: self.service.as_deref(),
            store: &state.decisions,
            delivery: ToSink { route: self, state },
        }
    }
}

/// Records a decision service's reply (see [`approve::on_reply`]) with this process's sources.
pub async fn on_reply(state: &State, reply: Reply) {
    let routes = state.routes.load_full();
    approve::on_reply(&state.decisions, reply, |name| {
        let route = routes.get(name)?;
        Some(route.approver(state, route.spec.kind.approval()?))
    })
    .await;
}

/// How an accepted event was made safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The broker (or the file sink) confirmed it.
    Published,
    /// fsync'd in the spool; the drainer publishes it.
    Spooled,
    /// `ack = "accept"`: answered before anything was durable.
    Unconfirmed,
    /// A retry of an event already durable: nothing published.
    Duplicate,
    /// The sink refused it for good; kept, fsync'd, as a dead letter.
    DeadLettered,
}

impl Delivery {
    pub(super) fn outcome(self) -> metrics::Accepted {
        match self {
            Self::Published => metrics::Accepted::Published,
            Self::Spooled => metrics::Accepted::Spooled,
            Self::Unconfirmed => metrics::Accepted::Unconfirmed,
            Self::Duplicate => metrics::Accepted::Duplicate,
            Self::DeadLettered => metrics::Accepted::DeadLettered,
        }
    }
}

/// Makes the event durable according to the source's ack mode.
pub(super) async fn deliver(
    route: &Route,
    state: &State,
    envelope: &Envelope,
) -> Result<Delivery, Rejection> {
    let sink_name = route.spec.sink.as_str();
    let spool = state.spool.as_ref().filter(|s| s.has_sink(sink_name));
    match (route.spec.ack, spool) {
        (AckMode::Spool, Some(spool)) => {
            to_spool(spool, sink_name, envelope).await?;
            Ok(Delivery::Spooled)
        }
        (AckMode::Spool, None) => Err(Rejection::Spool(SpoolError::Closed)),
        (AckMode::Accept, spool) => {
            publish_in_background(route, state, spool.cloned(), envelope);
            Ok(Delivery::Unconfirmed)
        }
        (AckMode::Broker, None) => {
            let mut publish = std::pin::pin!(route.sink.publish(envelope));
            match confirm_within(
                route.metrics.publish_latency(),
                route.spec.ack_deadline,
                &mut publish,
            )
            .await
            {
                Some(Ok(())) => Ok(Delivery::Published),
                Some(Err(e)) => Err(e.into()),
                None => Err(Rejection::AckTimeout),
            }
        }
        (AckMode::Broker, Some(spool)) => publish_or_spool(route, state, spool, envelope).await,
    }
}

/// `ack = "accept"`: publishes (or, failing that, spools) as background work.
fn publish_in_background(
    route: &Route,
    state: &State,
    spool: Option<Arc<Spool>>,
    envelope: &Envelope,
) {
    let sink_name = route.spec.sink.as_str();
    let (sink, env) = (Arc::clone(&route.sink), envelope.clone());
    let (deadline, name) = (route.spec.ack_deadline, sink_name.to_owned());
    let latency = route.metrics.publish_latency().clone();
    state.background.spawn(async move {
        let mut publish = std::pin::pin!(sink.publish(&env));
        if !matches!(
            confirm_within(&latency, deadline, &mut publish).await,
            Some(Ok(()))
        ) {
            let spooled = match &spool {
                Some(s) => to_spool(s, &name, &env).await.is_ok(),
                None => false,
            };
            if !spooled {
                tracing::error!(sink = %name, event_id = %env.id(), "ack = accept: event could not be published or spooled and is lost");
            }
        }
    });
}

/// `ack = "broker"` with a spool: the broker's confirmation within 80 % of the deadline, else
/// the spool (and a watch for the late confirmation).
async fn publish_or_spool(
    route: &Route,
    state: &State,
    spool: &Arc<Spool>,
    envelope: &Envelope,
) -> Result<Delivery, Rejection> {
    let sink_name = route.spec.sink.as_str();
    if !route.sink.is_ready() {
        to_spool(spool, sink_name, envelope).await?;
        return Ok(Delivery::Spooled);
    }
    // Leave a fifth of the deadline for the spool write if the broker is slow. The
    // publish is owned (boxed) so it can outlive this request if it times out.
    let budget = route.spec.ack_deadline.mul_f32(0.8);
    let (sink, env) = (Arc::clone(&route.sink), envelope.clone());
    let mut pending = Box::pin(async move { sink.publish(&env).await });
    match confirm_within(route.metrics.publish_latency(), budget, &mut pending).await {
        Some(Ok(())) => Ok(Delivery::Published),
        Some(Err(e @ PublishError::Refused(_))) => refused(route, spool, envelope, e).await,
        Some(Err(PublishError::Unavailable(_))) => {
            to_spool(spool, sink_name, envelope).await?;
            Ok(Delivery::Spooled)
        }
        None => {
            // The broker may still confirm this publish. Spool the event now, keep
            // waiting in the background, and take it back out of the spool if the
            // original confirms, so the drainer does not publish it twice.
            let spooled = to_spool(spool, sink_name, envelope).await?;
            let (spool, name) = (Arc::clone(spool), sink_name.to_owned());
            let stopping = state.background.stopping();
            state.background.spawn(async move {
                // At shutdown the watch gives up: the spooled copy stays, and at worst
                // is published a second time (a duplicate, never a loss).
                tokio::select! {
                    r = tokio::time::timeout(LATE_CONFIRM_WAIT, pending) => {
                        if let Ok(Ok(())) = r {
                            spool.forget(&name, spooled).await;
                        }
                    }
                    () = stopping => {}
                }
            });
            Ok(Delivery::Spooled)
        }
    }
}

/// An event the sink refused for good: a dead letter, answered once fsync'd, where the source
/// says so; else (or when that write fails) 503 `broker_refused`, which the provider retries.
async fn refused(
    route: &Route,
    spool: &Spool,
    envelope: &Envelope,
    e: PublishError,
) -> Result<Delivery, Rejection> {
    if route.spec.on_refused != OnRefused::DeadLetter {
        return Err(e.into());
    }
    let sink = route.spec.sink.as_str();
    match spool.dead_letter(sink, envelope, &e.to_string()).await {
        Ok(()) => {
            tracing::error!(sink, source = %route.spec.name, event_id = %envelope.id(), error = %e, "sink refused the event; kept as a dead letter");
            Ok(Delivery::DeadLettered)
        }
        Err(err) => {
            tracing::error!(sink, event_id = %envelope.id(), error = %err, "keeping a refused event as a dead letter failed");
            Err(e.into())
        }
    }
}

/// How long a timed-out publish is still watched for a late confirmation.
const LATE_CONFIRM_WAIT: Duration = Duration::from_secs(60);

/// Waits up to `budget` for a sink's confirmation, recording the publish latency when it comes.
/// `None`: not in time (the publish itself is left to the caller, which may keep waiting).
async fn confirm_within<F>(
    latency: &metrics::Histogram,
    budget: Duration,
    publish: &mut F,
) -> Option<Result<(), PublishError>>
where
    F: Future<Output = Result<(), PublishError>> + Unpin,
{
    let started = Instant::now();
    let waiting = tokio::time::timeout(budget, publish);
    let result = crate::otel::in_span("publish", waiting).await.ok()?;
    if result.is_ok() {
        latency.record(started.elapsed().as_secs_f64());
    }
    Some(result)
}

async fn to_spool(spool: &Spool, sink: &str, envelope: &Envelope) -> Result<Spooled, Rejection> {
    let spooled = crate::otel::in_span("spool", spool.append(sink, envelope)).await?;
    metrics::spooled(sink);
    Ok(spooled)
}
