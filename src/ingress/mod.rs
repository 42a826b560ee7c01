//! The HTTP face of hookbridge: `POST /hooks/<source>` plus `/healthz`, `/readyz` and
//! `/metrics`. Owns reading the body under limits, the per-request pipeline
//! (verify → normalize → sink, under the ack deadline) and the audit line; owns no broker code.

mod handler;
mod reject;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use metrics_exporter_prometheus::PrometheusHandle;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::config::SourceSpec;
use crate::sink::{Sink, Sinks};

pub use self::reject::Rejection;

/// The TCP peer of a connection, put on each request by the server's accept loop (warp's own
/// `addr::remote()` cannot be filled by a custom loop).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// A source with the sink it publishes to.
pub struct Route {
    pub spec: SourceSpec,
    pub sink: Arc<Sink>,
}

/// Everything a request needs, shared by all connections.
pub struct State {
    pub routes: HashMap<String, Route>,
    pub sinks: Sinks,
    pub body_timeout: Duration,
    pub metrics: Option<PrometheusHandle>,
}

/// All routes, as one filter that always yields a response (rejections included).
pub fn routes(state: Arc<State>) -> BoxedFilter<(Response,)> {
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
            let ready = state.sinks.all_ready();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reject::json_response(
                status,
                &serde_json::json!({ "ready": ready, "sinks": sinks }),
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

    hooks
        .or(admin)
        .unify()
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
