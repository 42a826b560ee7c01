//! The accept loop: hyper serving the warp filter over plain TCP or TLS, HTTP/1.1 or HTTP/2
//! (ALPN on TLS, prior knowledge in cleartext), with the limits warp's own server does not
//! expose (header read timeout, head size, header count, connection cap) and the peer address
//! put on every request. Shutdown stops accepting, lets open requests finish, and gives up after
//! a bound.
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
    let mut h1 = hyper::server::conn::http1::Builder::new();
    // hyper panics on header_read_timeout without a timer.
    h1.timer(TokioTimer::new())
        // Without half-close, hyper probes a busy connection for EOF while the handler runs: a
        // fresh 8-16 KB read buffer per in-flight request (the old one is still referenced by the
        // request), the largest per-connection cost under load. And a client that hangs up then
        // cancels the handler mid-publish, leaving the event's dedup claim pending; with it, the
        // handler finishes, the event is durable, and the provider's retry is a duplicate.
        .half_close(true)
        .header_read_timeout(config.header_timeout)
        .max_headers(config.max_headers)
        .max_buf_size(config.max_header_bytes);
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(Protocols { h1, h2 });
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
                None => match sniff_h2(&tcp, handshake_timeout).await {
                    Some(h2) => serve_conn(&builder, h2, watcher, tcp, svc).await,
                    None => {
                        metrics::connection_rejected("header_timeout");
                        tracing::info!(peer = %peer, reason = "header_timeout", "no request before the header timeout");
                        return;
                    }
                },
                Some(acceptor) => {
                    // Boxed: a TLS stream held inline would size every connection's task,
                    // plain ones included, for TLS.
                    let handshake = Box::pin(tokio::time::timeout(
                        handshake_timeout,
                        acceptor.accept(tcp),
                    ));
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                            Box::pin(serve_conn(&builder, h2, watcher, stream, svc)).await
                        }
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

/// Both protocols' settings. The protocol is chosen before hyper reads anything (ALPN on TLS,
/// [`sniff_h2`] in cleartext) rather than by hyper-util's auto builder: that one reads the first
/// bytes itself and replays them, which grows hyper's HTTP/1 read buffer to 16 KB on every
/// connection.
struct Protocols {
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

/// Whether a cleartext connection opens with the HTTP/2 preface (prior knowledge: `PRI * HTTP/2.0`),
/// from a peek that leaves the bytes for hyper. `None`: nothing arrived within `within`.
async fn sniff_h2(tcp: &TcpStream, within: Duration) -> Option<bool> {
    const PREFACE: &[u8] = b"PRI ";
    let mut buf = [0u8; 4];
    tokio::time::timeout(within, async {
        loop {
            // An error or EOF goes to hyper, which reports it the usual way.
            let Ok(n) = tcp.peek(&mut buf).await else {
                return false;
            };
            if n == 0 || n >= PREFACE.len() || buf[..n] != PREFACE[..n] {
                return buf[..n] == *PREFACE;
            }
            // A few bytes of what may be the preface: peek returns at once while they sit
            // unread, so wait for the rest instead of spinning.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .ok()
}

async fn serve_conn<I, S>(
    protocols: &Protocols,
    h2: bool,
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
    // No upgrades: nothing here speaks WebSocket or h2c-by-upgrade.
    if h2 {
        let conn = protocols.h2.serve_connection(TokioIo::new(io), svc);
        Ok(watcher.watch(conn).await?)
    } else {
        let conn = protocols.h1.serve_connection(TokioIo::new(io), svc);
        Ok(watcher.watch(conn).await?)
    }
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
