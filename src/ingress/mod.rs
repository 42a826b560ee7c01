//! The HTTP face of hookbridge: `POST /hooks/<source>` plus `/healthz`, `/readyz` and
//! `/metrics`. Owns reading the body under limits, the per-request pipeline
//! (verify → normalize → sink, under the ack deadline) and the audit line; owns no broker code.

pub mod client;
mod delivery;
mod handler;
mod reject;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::StatusCode;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::callback::service::DecisionService;
use crate::callback::store::DecisionStore;
use crate::dedup::Dedup;
use crate::plan::{Rate, SourceSpec};
use crate::sink::{Sink, Sinks};
use crate::spool::Spool;

pub use self::delivery::{Background, on_reply};
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
    ip_limiter: Option<ClientLimiter>,
}

fn quota(rate: Rate) -> Quota {
    Quota::per_second(rate.per_second).allow_burst(rate.burst)
}

impl Route {
    pub fn new(
        spec: SourceSpec,
        sink: Arc<Sink>,
        service: Option<Arc<DecisionService>>,
        (ipv6_prefix, max_clients): (u8, usize),
    ) -> Self {
        let limiter = spec.rate_limit.map(|r| RateLimiter::direct(quota(r)));
        let ip_limiter = spec
            .rate_limit_per_ip
            .map(|r| ClientLimiter::new(r, ipv6_prefix, max_clients));
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
            l.buckets.retain_recent();
            l.buckets.shrink_to_fit();
        }
    }
}

/// Per-client buckets of one source, bounded by construction: a client's [`client::RateKey`]
/// is hashed, with a key random to this process, onto one of `slots` buckets. A flood that
/// rotates through addresses cannot grow the map past `slots`, and cannot tell which slot a
/// provider's address lands in to drain it on purpose; at worst a few clients share a bucket.
pub struct ClientLimiter {
    buckets: DefaultKeyedRateLimiter<u64>,
    hasher: std::hash::RandomState,
    ipv6_prefix: u8,
    slots: u64,
}

impl ClientLimiter {
    fn new(rate: Rate, ipv6_prefix: u8, slots: usize) -> Self {
        Self {
            buckets: RateLimiter::keyed(quota(rate)),
            hasher: std::hash::RandomState::new(),
            ipv6_prefix,
            slots: u64::try_from(slots.max(1)).unwrap_or(u64::MAX),
        }
    }

    /// `Err(retry after, in seconds)` when `client`'s bucket is empty.
    pub fn check(&self, client: client::Client) -> Result<(), u32> {
        use std::hash::BuildHasher as _;
        // Unknown clients get the one slot past the hashed range: a bucket of their own.
        let slot = match client::RateKey::of(client, self.ipv6_prefix) {
            client::RateKey::Unknown => self.slots,
            key => self.hasher.hash_one(key) % self.slots,
        };
        self.buckets
            .check_key(&slot)
            .map_err(|not_until| handler::retry_secs(&not_until, self.buckets.clock()))
    }
}

/// The sources by name. A request takes the current map once and keeps it to the end, so it
/// finishes on the configuration it started on, whatever a reload swaps in meanwhile.
pub type Routes = HashMap<String, Arc<Route>>;

/// Everything a request needs, shared by all connections.
pub struct State {
    /// Swapped whole by a reload ([`crate::reload`]).
    pub routes: arc_swap::ArcSwap<Routes>,
    /// Decision services of routes a reload replaced, closed once no request holds them.
    pub retired: std::sync::Mutex<Vec<Arc<DecisionService>>>,
    pub sinks: Sinks,
    pub body_timeout: Duration,
    pub metrics: Option<PrometheusHandle>,
    /// Peers whose forwarding header is believed, and which header.
    pub proxies: client::Proxies,
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
    /// Bytes of request bodies held before authentication (`server.max_body_buffer_bytes`).
    pub body_budget: Arc<Semaphore>,
    /// Work requests leave behind, drained at shutdown before the sinks close.
    pub background: Background,
    /// Request traces; `None` when tracing is off.
    pub tracer: Option<crate::otel::Tracer>,
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// Hooks and the admin routes (`/healthz`, `/readyz`, `/metrics`).
    All,
    /// Hooks and `/healthz` (load balancers probe it; it says only "alive"): the other admin
    /// routes have their own listener, or are not public.
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
        .map(|state: Arc<State>| readiness(&state));
    let metrics = warp::path!("metrics")
        .and(with_state)
        .map(|state: Arc<State>| {
            let text = state
                .metrics
                .as_ref()
                .map(crate::metrics::render)
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
        Serve::Hooks => hooks.or(warp::get().and(healthz)).unify().boxed(),
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

/// `/readyz`, with each sink's and decision service's state.
fn readiness(state: &State) -> Response {
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
        .load()
        .values()
        .filter_map(|r| Some((r.spec.name.clone(), r.service.as_ref()?.is_ready().into())))
        .collect();
    let ready = (state.sinks.all_ready() || (state.spool.is_some() && spool_ready))
        && services
            .values()
            .all(|v| v == &serde_json::Value::Bool(true));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    reject::json_response(
        status,
        &serde_json::json!({ "ready": ready, "sinks": sinks, "decision_services": services }),
    )
}

#[cfg(test)]
mod tests;
