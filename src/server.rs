//! The accept loop: hyper-util serving the warp filter, with limits warp's own server does not
//! expose (header read timeout, header count, connection cap) and the peer address put on every
//! request. Shutdown stops accepting, lets open requests finish, and gives up after a bound.

use std::future::Future;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::config::ServerConfig;
use crate::ingress::PeerAddr;

/// Serves until `shutdown` resolves, then drains open connections for at most
/// `config.shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    routes: BoxedFilter<(Response,)>,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    // hyper panics on header_read_timeout without a timer; the timer also enables the default.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_headers(config.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(64 * 1024);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        // Waiting for a permit before accepting leaves excess connections in the kernel backlog
        // instead of holding file descriptors and memory for them.
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        let routes = routes.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let inner = TowerToHyperService::new(warp::service(routes));
            let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                inner.call(req)
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(error = %e, peer = %peer, "connection ended with an error");
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
