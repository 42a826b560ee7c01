//! The accept loop: hyper serving the warp filter over plain TCP or TLS, HTTP/1.1 or HTTP/2
//! (ALPN on TLS, prior knowledge in cleartext), with the limits warp's own server does not
//! expose (header read timeout, head size, header count, connection caps overall and per client
//! address) and the peer address put on every request. Shutdown stops accepting, lets open
//! requests finish, and gives up after a bound.
//!
//! Every connection is driven here (`drive`) under deadlines of its own, whatever its
//! protocol, so that no connection holds a permit without doing work:
//! - the first request must arrive within `header_timeout` (a silent HTTP/2 preface or a TLS
//!   handshake with ALPN `h2` and then nothing is closed, counted as `header_timeout`);
//! - with no request in progress for `idle_timeout` it is closed (HTTP/1 keep-alive) or sent
//!   GOAWAY (HTTP/2 with no open stream);
//! - past `max_connection_age` it is asked to close once its requests finish;
//! - HTTP/2 PINGs an idle peer and drops one that does not answer; streams per connection and
//!   the header list are capped.
//!
//! Failures that happen before a request reaches the handler (TLS handshake, oversized or slow
//! headers, connection cap) are answered by hyper or here, so they are counted and logged here
//! with a reason of their own.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::config::ServerConfig;
use crate::ingress::PeerAddr;
use crate::ingress::client::{self, Client, RateKey};
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
    let builder = Arc::new(Protocols::new(config));
    // `stop` tells every connection to wind down; the tracker says when the last one has.
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let per_ip = Arc::new(PerClient {
        open: Mutex::default(),
        max: config.max_connections_per_ip,
    });
    let handshake_timeout = config.header_timeout;
    let deadlines = Deadlines {
        first_request: config.header_timeout,
        idle: config.idle_timeout,
        max_age: config.max_connection_age,
        // Only a safety net for peers that ignore GOAWAY: long enough for any request that
        // was already under way (its headers, its body, then the ack deadline within shutdown).
        drain: config.header_timeout + config.body_timeout + config.shutdown_timeout,
    };
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
        let Some(held) = admit(&permits, &per_ip, config, peer) else {
            if tls.is_none() {
                tokio::spawn(refuse(tcp));
            }
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let accepted = Accepted {
            tcp,
            peer,
            acceptor: tls.as_ref().and_then(ReloadableAcceptor::get),
            held,
        };
        let shared = Shared {
            protocols: Arc::clone(&builder),
            stop: stop.clone(),
            deadlines,
            handshake_timeout,
        };
        connections.spawn(connection(accepted, routes.clone(), shared));
    }
    drop(listener);
    tracing::info!(
        open = connections.len(),
        "stopped accepting; draining connections"
    );
    stop.cancel();
    connections.close();
    if tokio::time::timeout(config.shutdown_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown timeout reached with requests still open");
    }
}

impl Protocols {
    /// hyper's HTTP/1.1 and HTTP/2 servers with the configured limits.
    fn new(config: &ServerConfig) -> Self {
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
            .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(config.http2_max_concurrent_streams)
            .keep_alive_interval(Some(config.http2_keepalive_interval))
            .keep_alive_timeout(config.http2_keepalive_timeout);
        Self { h1, h2 }
    }
}

/// A connection's permits: one of `max_connections`, and one of its client address's
/// `max_connections_per_ip` (behind a load balancer every connection comes from it: trusted
/// proxies are not capped). `None`, counted and logged: over a limit.
fn admit(
    permits: &Arc<Semaphore>,
    per_ip: &Arc<PerClient>,
    config: &ServerConfig,
    peer: std::net::SocketAddr,
) -> Option<(tokio::sync::OwnedSemaphorePermit, Option<ClientSlot>)> {
    let Ok(permit) = Arc::clone(permits).try_acquire_owned() else {
        metrics::connection_rejected("connection_limit");
        tracing::debug!(peer = %peer, "connection limit reached; answering 503");
        return None;
    };
    let peer_ip = client::canonical(peer.ip());
    if config.proxies.trusted.iter().any(|n| n.contains(&peer_ip)) {
        return Some((permit, None));
    }
    let key = RateKey::of(Client::Addr(peer_ip), config.ipv6_prefix);
    let Some(slot) = PerClient::enter(per_ip, key) else {
        metrics::connection_rejected("connection_limit_per_ip");
        tracing::debug!(peer = %peer, "per-address connection limit reached; answering 503");
        return None;
    };
    Some((permit, Some(slot)))
}

/// A connection just accepted, with the permits it holds until it ends.
struct Accepted {
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    held: (tokio::sync::OwnedSemaphorePermit, Option<ClientSlot>),
}

/// What every connection of one listener shares.
struct Shared {
    protocols: Arc<Protocols>,
    stop: CancellationToken,
    deadlines: Deadlines,
    handshake_timeout: Duration,
}

/// Serves one accepted connection to its end: the TLS handshake or the HTTP/2 sniff, then
/// hyper under the connection's deadlines; how it ended is counted and logged here.
async fn connection(accepted: Accepted, routes: BoxedFilter<(Response,)>, shared: Shared) {
    let Accepted {
        tcp,
        peer,
        acceptor,
        held: _held,
    } = accepted;
    let Shared {
        protocols,
        stop,
        deadlines,
        handshake_timeout,
    } = shared;
    let activity = Arc::new(Activity::new());
    let inner = TowerToHyperService::new(warp::service(routes));
    let seen = Arc::clone(&activity);
    let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        // Ends with the request, also when its HTTP/2 stream is reset and it is dropped.
        let busy = Busy::enter(&seen);
        let answer = inner.call(req);
        async move {
            let answered = answer.await;
            drop(busy);
            answered
        }
    });
    let conn = Conn {
        protocols: &protocols,
        watcher: stop,
        activity: &activity,
        deadlines: &deadlines,
    };
    let result = match acceptor {
        None => match sniff_h2(&tcp, handshake_timeout).await {
            Some(h2) => conn.serve(h2, tcp, svc).await,
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
                    Box::pin(conn.serve(h2, stream, svc)).await
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
}

/// Open connections per client address (IPv6: per /64), for `max_connections_per_ip`.
struct PerClient {
    open: Mutex<HashMap<RateKey, usize>>,
    max: usize,
}

/// One of a client's open connections; given back on drop.
struct ClientSlot {
    table: Arc<PerClient>,
    key: RateKey,
}

impl PerClient {
    fn enter(table: &Arc<Self>, key: RateKey) -> Option<ClientSlot> {
        let mut open = table.open.lock().ok()?;
        let n = open.entry(key).or_default();
        if *n >= table.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            table: Arc::clone(table),
            key,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.table.open.lock()
            && let Some(n) = open.get_mut(&self.key)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// What one connection's requests have been doing, for its deadlines.
struct Activity {
    born: Instant,
    /// Requests in progress.
    open: AtomicUsize,
    /// Whether any request has arrived.
    seen: AtomicBool,
    /// When the last request ended, in ms after `born`.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            born: Instant::now(),
            open: AtomicUsize::new(0),
            seen: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    fn since_born_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A request in progress on a connection.
struct Busy(Arc<Activity>);

impl Busy {
    fn enter(activity: &Arc<Activity>) -> Self {
        activity.seen.store(true, Ordering::Relaxed);
        activity.open.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(activity))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0
            .idle_since_ms
            .store(self.0.since_born_ms(), Ordering::Relaxed);
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's deadlines (see the module docs).
#[derive(Clone, Copy)]
struct Deadlines {
    first_request: Duration,
    idle: Duration,
    max_age: Option<Duration>,
    /// How long a connection asked to close (idle, age, shutdown) may take to finish its
    /// requests before it is dropped. Server shutdown is bounded separately.
    drain: Duration,
}

/// How a connection ended on our side, as the `connection_rejected` reason.
#[derive(Debug)]
struct Closed(&'static str);

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Closed {}

/// Drives `conn` to its end under the deadlines; `graceful` asks it to finish what it has and
/// close (HTTP/2: GOAWAY).
async fn drive<C, E>(
    conn: C,
    graceful: impl Fn(Pin<&mut C>),
    activity: &Activity,
    deadlines: &Deadlines,
    stop: CancellationToken,
) -> ConnResult
where
    C: Future<Output = Result<(), E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut conn = std::pin::pin!(conn);
    let mut closing: Option<Instant> = None;
    // Deadlines are checked a few times per shortest deadline: cheap, and precise enough.
    let tick = (deadlines.first_request.min(deadlines.idle) / 4)
        .clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            done = conn.as_mut() => return done.map_err(Into::into),
            () = stop.cancelled(), if closing.is_none() => {
                graceful(conn.as_mut());
                closing = Some(Instant::now());
            }
            _ = interval.tick() => {
                if let Some(since) = closing {
                    if since.elapsed() >= deadlines.drain {
                        return Err(Box::new(Closed("drain_timeout")));
                    }
                    continue;
                }
                let age = activity.born.elapsed();
                if !activity.seen.load(Ordering::Relaxed) {
                    if age >= deadlines.first_request {
                        // Nothing to finish: drop it (closes the socket).
                        return Err(Box::new(Closed("header_timeout")));
                    }
                    continue;
                }
                let idle_for = Duration::from_millis(
                    activity
                        .since_born_ms()
                        .saturating_sub(activity.idle_since_ms.load(Ordering::Relaxed)),
                );
                let idle = activity.open.load(Ordering::Relaxed) == 0 && idle_for >= deadlines.idle;
                let old = deadlines.max_age.is_some_and(|max| age >= max);
                if idle || old {
                    graceful(conn.as_mut());
                    closing = Some(Instant::now());
                }
            }
        }
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

/// One accepted connection, about to be served.
struct Conn<'a> {
    protocols: &'a Protocols,
    watcher: CancellationToken,
    activity: &'a Activity,
    deadlines: &'a Deadlines,
}

impl Conn<'_> {
    async fn serve<I, S>(self, h2: bool, io: I, svc: S) -> ConnResult
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
        let (activity, deadlines, stop) = (self.activity, self.deadlines, self.watcher);
        // No upgrades: nothing here speaks WebSocket or h2c-by-upgrade.
        if h2 {
            let conn = self.protocols.h2.serve_connection(TokioIo::new(io), svc);
            drive(conn, |c| c.graceful_shutdown(), activity, deadlines, stop).await
        } else {
            let conn = self.protocols.h1.serve_connection(TokioIo::new(io), svc);
            drive(conn, |c| c.graceful_shutdown(), activity, deadlines, stop).await
        }
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
    if let Some(closed) = e.downcast_ref::<Closed>() {
        return closed.0;
    }
    match e.downcast_ref::<hyper::Error>() {
        Some(h) if h.is_parse_too_large() => "header_too_large",
        Some(h) if h.is_timeout() => "header_timeout",
        Some(h) if h.is_parse() || h.is_parse_status() => "malformed_http",
        Some(h) if h.is_incomplete_message() => "incomplete_request",
        Some(_) => "connection_error",
        None => "connection_error",
    }
}
