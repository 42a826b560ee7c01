//! The HTTP face of hookbridge: `POST /hooks/<source>` plus `/healthz`, `/readyz` and
//! `/metrics`. Owns reading the body under limits, the per-request pipeline
//! (verify → normalize → sink, under the ack deadline) and the audit line; owns no broker code.

pub mod callback;
pub mod client;
mod handler;
mod reject;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::StatusCode;
use ipnet::IpNet;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::callback::service::DecisionService;
use crate::callback::store::DecisionStore;
use crate::config::{Rate, SourceSpec};
use crate::dedup::Dedup;
use crate::sink::{Sink, Sinks};
use crate::spool::Spool;

pub use self::reject::Rejection;

/// The TCP peer of a connection, put on each request by the server's accept loop (warp's own
/// `addr::remote()` cannot be filled by a custom loop).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// A source with the sink it publishes to and its rate limiters.
pub struct Route {
    pub spec: SourceSpec,
    pub sink: Arc<Sink>,
    /// The decision service an approval callback asks (`default = "ask"`).
    pub service: Option<Arc<DecisionService>>,
    metrics: crate::metrics::SourceMetrics,
    limiter: Option<DefaultDirectRateLimiter>,
    ip_limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

fn quota(rate: Rate) -> Quota {
    Quota::per_second(rate.per_second).allow_burst(rate.burst)
}

impl Route {
    pub fn new(spec: SourceSpec, sink: Arc<Sink>, service: Option<Arc<DecisionService>>) -> Self {
        let limiter = spec.rate_limit.map(|r| RateLimiter::direct(quota(r)));
        let ip_limiter = spec.rate_limit_per_ip.map(|r| RateLimiter::keyed(quota(r)));
        let metrics = crate::metrics::SourceMetrics::new(&spec.name, &spec.sink);
        Self {
            metrics,
            spec,
            sink,
            service,
            limiter,
            ip_limiter,
        }
    }

    /// Forgets per-client buckets that are full again, so memory follows active clients only.
    pub fn prune_limiters(&self) {
        if let Some(l) = &self.ip_limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// Everything a request needs, shared by all connections.
pub struct State {
    pub routes: HashMap<String, Route>,
    pub sinks: Sinks,
    pub body_timeout: Duration,
    pub metrics: Option<PrometheusHandle>,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Refuse requests that did not arrive over TLS.
    pub require_tls: bool,
    /// The listener itself terminates TLS.
    pub tls_listener: bool,
    /// Durable fallback (and `ack = "spool"`); `None` when disabled.
    pub spool: Option<Arc<Spool>>,
    pub dedup: Arc<Dedup>,
    /// Remembered callback decisions.
    pub decisions: Arc<DecisionStore>,
    /// Permits for requests in flight (`server.max_in_flight`).
    pub in_flight: Arc<Semaphore>,
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// Hooks and the admin routes (`/healthz`, `/readyz`, `/metrics`).
    All,
    /// Hooks only: the admin routes have their own listener.
    Hooks,
    /// The admin routes only.
    Admin,
}

/// The routes for one listener, as one filter that always yields a response.
pub fn routes(state: Arc<State>, serve: Serve) -> BoxedFilter<(Response,)> {
    let with_state = {
        let state = Arc::clone(&state);
        warp::any().map(move || Arc::clone(&state))
    };
    let hooks = warp::path!("hooks" / String)
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<PeerAddr>())
        .and(warp::body::stream())
        .and(with_state.clone())
        .then(handler::receive);

    let healthz = warp::path!("healthz")
        .map(|| reject::json_response(StatusCode::OK, &serde_json::json!({ "status": "alive" })));
    let readyz = warp::path!("readyz")
        .and(with_state.clone())
        .map(|state: Arc<State>| {
            let sinks: serde_json::Map<String, serde_json::Value> = state
                .sinks
                .iter()
                .map(|(name, sink)| {
                    (
                        name.clone(),
                        serde_json::json!({ "type": sink.type_name(), "ready": sink.is_ready() }),
                    )
                })
                .collect();
            let spool_ready = state.spool.as_ref().is_none_or(|s| s.is_ready());
            // Ready when every sink is connected, or when the spool can take what they cannot.
            // Callbacks that ask a decision service cannot be answered without it (no spool
            // can stand in for a decision).
            let services: serde_json::Map<String, serde_json::Value> = state
                .routes
                .values()
                .filter_map(|r| Some((r.spec.name.clone(), r.service.as_ref()?.is_ready().into())))
                .collect();
            let ready = (state.sinks.all_ready() || (state.spool.is_some() && spool_ready))
                && services.values().all(|v| v == &serde_json::Value::Bool(true));
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reject::json_response(
                status,
                &serde_json::json!({ "ready": ready, "sinks": sinks, "decision_services": services }),
            )
        });
    let metrics = warp::path!("metrics")
        .and(with_state)
        .map(|state: Arc<State>| {
            let text = state
                .metrics
                .as_ref()
                .map(PrometheusHandle::render)
                .unwrap_or_default();
            let mut resp = Response::new(text.into());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        });
    let admin = warp::get().and(healthz.or(readyz).unify().or(metrics).unify());

    // Chosen once here: a listener never runs (and then hides) routes it does not serve.
    let served = match serve {
        Serve::All => hooks.or(admin).unify().boxed(),
        Serve::Hooks => hooks.boxed(),
        Serve::Admin => admin.boxed(),
    };
    served
        .recover(|_rejection: warp::Rejection| async move {
            Ok::<_, std::convert::Infallible>(reject::json_response(
                StatusCode::NOT_FOUND,
                &serde_json::json!({ "error": "not_found", "message": "no such route" }),
            ))
        })
        .unify()
        .boxed()
}

#[cfg(test)]
mod tests;
