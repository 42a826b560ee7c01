//! The accept loop: hyper-util serving the warp filter over plain TCP or TLS, with the limits
//! warp's own server does not expose (header read timeout, head size, header count, connection
//! cap) and the peer address put on every request. Shutdown stops accepting, lets open requests
//! finish, and gives up after a bound.
//!
//! Failures that happen before a request reaches the handler (TLS handshake, oversized or slow
//! headers, connection cap) are answered by hyper or here, so they are counted and logged here
//! with a reason of their own.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::config::ServerConfig;
use crate::ingress::PeerAddr;
use crate::metrics;
use crate::tls::ReloadableAcceptor;

const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 75\r\n\r\n{\"error\":\"connection_limit\",\"message\":\"too many connections, retry later\"}";

/// Serves until `shutdown` resolves, then drains open connections for at most
/// `config.shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    routes: BoxedFilter<(Response,)>,
    config: &ServerConfig,
    tls: Option<ReloadableAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    // hyper panics on header_read_timeout without a timer.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_headers(config.max_headers)
        .max_buf_size(config.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let handshake_timeout = config.header_timeout;
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            metrics::connection_rejected("connection_limit");
            tracing::debug!(peer = %peer, "connection limit reached; answering 503");
            if tls.is_none() {
                tokio::spawn(refuse(tcp));
            }
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        let routes = routes.clone();
        let acceptor = tls.as_ref().and_then(ReloadableAcceptor::get);
        tokio::spawn(async move {
            let _permit = permit;
            let inner = TowerToHyperService::new(warp::service(routes));
            let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                inner.call(req)
            });
            let result = match acceptor {
                None => serve_conn(&builder, watcher, tcp, svc).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_conn(&builder, watcher, stream, svc).await,
                        Ok(Err(e)) => {
                            metrics::connection_rejected("tls_handshake");
                            tracing::info!(peer = %peer, error = %e, reason = "tls_handshake", "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics::connection_rejected("tls_handshake_timeout");
                            tracing::info!(peer = %peer, reason = "tls_handshake_timeout", "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = result {
                let reason = classify(e.as_ref());
                metrics::connection_rejected(reason);
                tracing::info!(peer = %peer, reason, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(
        open = graceful.count(),
        "stopped accepting; draining connections"
    );
    if tokio::time::timeout(config.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown timeout reached with requests still open");
    }
}

type ConnResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

async fn serve_conn<I, S>(
    builder: &Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    io: I,
    svc: S,
) -> ConnResult
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            http::Request<Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    watcher.watch(conn.into_owned()).await
}

/// A plain-text 503 for a connection over the cap, then close.
async fn refuse(mut tcp: TcpStream) {
    let written = tokio::time::timeout(Duration::from_secs(1), async {
        tcp.write_all(OVER_CAPACITY).await?;
        tcp.shutdown().await
    })
    .await;
    if let Ok(Err(e)) = written {
        tracing::debug!(error = %e, "writing the over-capacity answer");
    }
}

/// A reason code for a connection-level failure reported by hyper.
fn classify(e: &(dyn std::error::Error + 'static)) -> &'static str {
    match e.downcast_ref::<hyper::Error>() {
        Some(h) if h.is_parse_too_large() => "header_too_large",
        Some(h) if h.is_timeout() => "header_timeout",
        Some(h) if h.is_parse() || h.is_parse_status() => "malformed_http",
        Some(h) if h.is_incomplete_message() => "incomplete_request",
        Some(_) => "connection_error",
        None => "connection_error",
    }
}
