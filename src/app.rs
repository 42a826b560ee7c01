//! Wiring: turns a validated [`Config`] into running parts (sinks, routes, listeners) and runs
//! them until shutdown. The only module that does startup I/O.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::callback::service::{DecisionService, Reply};
use crate::callback::store::DecisionStore;
use crate::config::{Config, DedupBackend, ServerConfig};
use crate::dedup::Dedup;
use crate::ingress::{self, Serve, State};
use crate::reload::{Reloader, RouteBuilder};
use crate::sink::Sinks;
use crate::spool::Spool;
use crate::tls::ReloadableAcceptor;

/// Decision replies recorded at once.
const REPLIES_IN_FLIGHT: usize = 64;

pub struct App {
    listener: TcpListener,
    /// Replies from decision services, recorded by a task of [`App::run`].
    replies: Option<mpsc::Receiver<Reply>>,
    /// What a reload needs; reloads happen once [`App::reload_from`] named the file.
    reload: Option<Reload>,
    reload_path: Option<std::path::PathBuf>,
    /// The trace exporter, when tracing is on; run by [`App::run`].
    exporter: Option<crate::otel::Exporter>,
    admin: Option<TcpListener>,
    tls: Option<ReloadableAcceptor>,
    state: Arc<State>,
    server: ServerConfig,
}

impl App {
    /// Starts the sinks and binds the listeners. Broker sinks start even if their broker is
    /// down: the service then reports not-ready and answers 503 until it connects.
    ///
    /// # Errors
    /// When a listener cannot bind, the TLS files do not load, or a sink cannot work with its
    /// configuration.
    pub async fn build(config: Config, metrics: Option<PrometheusHandle>) -> anyhow::Result<Self> {
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        let tls = match &config.server.tls {
            Some(t) => Some(ReloadableAcceptor::new(&t.cert_file, &t.key_file)?),
            None => None,
        };
        let sinks = Sinks::start(&config.sinks, &config.sources).await?;
        let spool = open_spool(&config)?;
        // The dedup store's pending claims are sized for it, and a reload may not exceed it.
        let longest_deadline = config
            .sources
            .iter()
            .map(|s| s.ack_deadline)
            .max()
            .unwrap_or_default();
        let dedup = dedup_store(&config, longest_deadline)?;
        let decisions = decision_store(&config)?;
        // Bounded: a flood of replies is dropped (and logged) rather than buffered without end;
        // a dropped reply only means the callback's retry asks again.
        let (reply_tx, reply_rx) = mpsc::channel(4096);
        let builder = RouteBuilder {
            sink_specs: config.sinks.clone(),
            replies: reply_tx,
            client_limits: (config.server.ipv6_prefix, config.server.max_rate_clients),
        };
        let mut routes = ingress::Routes::new();
        for spec in config.sources {
            let route = builder.route(spec, &sinks).await?;
            routes.insert(route.spec.name.clone(), Arc::new(route));
        }
        if config.decisions.store.backend == DedupBackend::Memory
            && routes.values().any(|r| r.spec.kind.approval().is_some())
        {
            tracing::warn!(
                "callback decisions are remembered in this process only ([decisions] store = \"memory\"): with several replicas use store = \"redis\", or a retry on another replica is decided again"
            );
        }
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding {}", config.server.listen))?;
        let admin = match config.server.admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the admin listener {addr}"))?,
            ),
            None => None,
        };
        let reload = Reload {
            running: config.written,
            builder,
            longest_deadline,
        };
        let (tracer, exporter) = match &config.tracing {
            Some(t) => {
                tracing::info!(endpoint = %t.endpoint, sample_ratio = t.sample_ratio, "tracing on (OTLP/HTTP)");
                let (tracer, exporter) = crate::otel::Tracer::new(t);
                (Some(tracer), Some(exporter))
            }
            None => (None, None),
        };
        let state = Arc::new(State {
            tracer,
            routes: arc_swap::ArcSwap::from_pointee(routes),
            retired: std::sync::Mutex::default(),
            sinks,
            body_timeout: config.server.body_timeout,
            metrics,
            proxies: config.server.proxies.clone(),
            require_tls: config.server.require_tls,
            tls_listener: tls.is_some(),
            spool,
            dedup: Arc::new(dedup),
            decisions: Arc::new(decisions),
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.server.max_in_flight)),
            body_budget: Arc::new(tokio::sync::Semaphore::new(
                config.server.max_body_buffer_bytes,
            )),
            background: ingress::Background::default(),
        });
        Ok(Self {
            listener,
            // Always consumed: a reload may add a source that asks a decision service.
            replies: Some(reply_rx),
            reload: Some(reload),
            reload_path: None,
            exporter,
            admin,
            tls,
            state,
            server: config.server,
        })
    }

    /// Reloads the sources from `path` on SIGHUP (see [`crate::reload`]); without it SIGHUP
    /// reloads only the TLS certificate.
    #[must_use]
    pub fn reload_from(mut self, path: std::path::PathBuf) -> Self {
        self.reload_path = Some(path);
        self
    }

    /// The main listener's address (useful with port 0 in tests).
    ///
    /// # Errors
    /// When the socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin listener's address, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, drains requests, then stops every background part in
    /// its stage's order (see `Stage`).
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let stop = CancellationToken::new();
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                shutdown.await;
                stop.cancel();
            });
        }
        let mut parts = Parts::default();
        self.start_background(&mut parts);
        let reloader = match (self.reload_path.take(), self.reload.take()) {
            (Some(path), Some(r)) => Some(Reloader::new(
                path,
                r.running,
                r.builder,
                r.longest_deadline,
            )),
            _ => None,
        };
        let (state, tls) = (Arc::clone(&self.state), self.tls.clone());
        // Listened for before "listening" is logged: from then on a SIGHUP never kills.
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(hup) => parts.spawn(Stage::Intake, "reload on SIGHUP", |stop| {
                on_sighup(hup, state, tls, reloader, stop)
            }),
            Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP; reloads are disabled"),
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        tracing::info!(addr = %self.local_addr().map(|a| a.to_string()).unwrap_or_default(), scheme, "listening");
        let admin_task = self.admin.take().map(|admin| {
            tracing::info!(addr = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin listening");
            let routes = ingress::routes(Arc::clone(&self.state), Serve::Admin);
            let server = self.server.clone();
            let stop = stop.clone().cancelled_owned();
            tokio::spawn(async move { crate::server::serve(admin, routes, &server, None, stop).await })
        });
        // A public main listener does not name the sources and sinks to anyone who asks.
        let serve = if self.server.admin_on_main {
            Serve::All
        } else {
            Serve::Hooks
        };
        let routes = ingress::routes(Arc::clone(&self.state), serve);
        // Stops accepting once `stop` fires, and returns when every open request has finished
        // (or the shutdown timeout passed).
        crate::server::serve(
            self.listener,
            routes,
            &self.server,
            self.tls,
            stop.cancelled_owned(),
        )
        .await;
        if let Some(t) = admin_task {
            let _admin_done = t.await;
        }
        if tokio::time::timeout(self.server.shutdown_timeout, parts.stop())
            .await
            .is_err()
        {
            tracing::warn!("background parts did not stop within the shutdown timeout");
        }
    }

    /// Starts what runs beside the listeners, each registered with the stage it stops in.
    fn start_background(&mut self, parts: &mut Parts) {
        let state = &self.state;
        parts.spawn(Stage::Intake, "housekeeping", |stop| {
            housekeeping(Arc::clone(state), stop)
        });
        let services = Arc::clone(state);
        parts.add(Stage::Intake, "decision services", async move {
            let routes = services.routes.load_full();
            for service in routes.values().filter_map(|r| r.service.as_ref()) {
                service.close().await;
            }
            close_retired(&services, true).await;
        });
        if let Some(rx) = self.replies.take() {
            parts.spawn(Stage::Intake, "decision replies", |stop| {
                record_replies(Arc::clone(state), rx, stop)
            });
        }
        let background = Arc::clone(state);
        parts.add(Stage::Background, "request background work", async move {
            background.background.drain().await;
        });
        if let Some(spool) = &state.spool {
            for (name, sink) in state.sinks.iter() {
                let (spool, name, sink) = (Arc::clone(spool), name.clone(), Arc::clone(sink));
                let part = format!("spool drainer of {name}");
                parts.spawn(Stage::Drainers, part, |stop| spool.drain(name, sink, stop));
            }
        }
        for (name, sink) in state.sinks.iter() {
            let (name, sink) = (name.clone(), Arc::clone(sink));
            parts.add(Stage::Sinks, format!("sink {name}"), async move {
                sink.close().await;
                tracing::info!(sink = %name, "sink closed");
            });
        }
        if let Some(spool) = &state.spool {
            let spool = Arc::clone(spool);
            parts.add(Stage::Spool, "spool", async move {
                spool.close().await;
                tracing::info!("spool closed");
            });
        }
        if let Some(exporter) = self.exporter.take() {
            // Last: the spans of the requests that finished during shutdown go out too.
            parts.spawn(Stage::Stores, "trace exporter", |stop| exporter.run(stop));
        }
        let (dedup, decisions) = (Arc::clone(&state.dedup), Arc::clone(&state.decisions));
        parts.add(
            Stage::Stores,
            "dedup store",
            async move { dedup.close().await },
        );
        parts.add(Stage::Stores, "decision store", async move {
            decisions.close().await;
        });
    }
}

fn open_spool(config: &Config) -> anyhow::Result<Option<Arc<Spool>>> {
    let Some(s) = &config.spool else {
        return Ok(None);
    };
    let names: Vec<String> = config.sinks.iter().map(|s| s.name.clone()).collect();
    let spool = Spool::open(&s.path, &names, s.max_bytes)?;
    tracing::info!(path = %s.path.display(), max_bytes = s.max_bytes, "spool open");
    Ok(Some(Arc::new(spool)))
}

fn dedup_store(config: &Config, longest_deadline: Duration) -> anyhow::Result<Dedup> {
    let pending = crate::dedup::pending_ttl(longest_deadline);
    let d = &config.dedup;
    let dedup = match d.backend {
        DedupBackend::Memory => Dedup::memory(d.ttl, pending, d.max_entries),
        DedupBackend::Redis => Dedup::redis(
            d.redis_url.as_deref().unwrap_or_default(),
            d.ttl,
            pending,
            d.key_prefix.clone(),
        )?,
    };
    tracing::info!(
        backend = dedup.backend(),
        ttl_secs = d.ttl.as_secs(),
        "dedup ready"
    );
    Ok(dedup)
}

fn decision_store(config: &Config) -> anyhow::Result<DecisionStore> {
    let d = &config.decisions;
    let limits = crate::callback::store::Limits {
        ttl: d.store.ttl,
        asked_ttl: d.asked_ttl,
        max_entries: usize::try_from(d.store.max_entries).unwrap_or(usize::MAX),
    };
    Ok(match d.store.backend {
        DedupBackend::Memory => DecisionStore::memory(limits),
        DedupBackend::Redis => DecisionStore::redis(
            d.store.redis_url.as_deref().unwrap_or_default(),
            limits,
            d.store.key_prefix.clone(),
            // Config refuses a Redis store without a secret when approvals exist; without
            // approvals nothing is ever stored, and a random key seals nothing.
            d.secret
                .clone()
                .unwrap_or_else(|| crate::callback::MacKey::new(uuid::Uuid::new_v4().as_bytes())),
        )?,
    })
}

/// When a background part stops, in this order, once the listeners have stopped accepting and
/// every open request has finished. Each stage waits for the one before: nothing is closed
/// while something that could still use it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// Nothing new starts: the housekeeping tick, the decision services (no more asks, no more
    /// replies consumed), the reply recorder.
    Intake,
    /// What requests and replies left behind finishes: `ack = "accept"` publishes, decisions
    /// being recorded and audited (late-confirmation watches give up).
    Background,
    /// The spool drainers stop between batches.
    Drainers,
    /// Sinks deliver what they hold (confirms, librdkafka's queue, the file's fsync) and close.
    Sinks,
    /// Every spooled event is committed; what is left is drained on the next start.
    Spool,
    /// The stores' connections (Redis) close.
    Stores,
}

type Stopping = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The background parts, each with how to stop it: the shutdown order is this data, not the
/// order of statements in [`App::run`].
#[derive(Default)]
struct Parts(Vec<(Stage, String, Stopping)>);

impl Parts {
    /// Registers `stop` (not polled until shutdown) to run in `stage`.
    fn add(
        &mut self,
        stage: Stage,
        name: impl Into<String>,
        stop: impl Future<Output = ()> + Send + 'static,
    ) {
        self.0.push((stage, name.into(), Box::pin(stop)));
    }

    /// Spawns a task that runs until its token is cancelled; stopping it cancels the token and
    /// waits for the task to return.
    fn spawn<F, T>(&mut self, stage: Stage, name: impl Into<String>, task: F)
    where
        F: FnOnce(CancellationToken) -> T,
        T: Future<Output = ()> + Send + 'static,
    {
        let token = CancellationToken::new();
        let handle = tokio::spawn(task(token.clone()));
        self.add(stage, name, async move {
            token.cancel();
            let _stopped = handle.await;
        });
    }

    /// Stops every part, stage by stage; the parts of one stage stop together.
    async fn stop(mut self) {
        self.0.sort_by_key(|(stage, _, _)| *stage);
        let mut parts = self.0.into_iter().peekable();
        while let Some((stage, name, first)) = parts.next() {
            let mut names = vec![name];
            let mut stopping = vec![first];
            while let Some((_, name, next)) = parts.next_if(|(s, _, _)| *s == stage) {
                names.push(name);
                stopping.push(next);
            }
            futures_util::future::join_all(stopping).await;
            tracing::debug!(?stage, parts = ?names, "stopped");
        }
    }
}

/// What a reload needs besides the file's path, until [`App::run`] hands it to the SIGHUP
/// task.
struct Reload {
    running: crate::config::Written,
    builder: RouteBuilder,
    longest_deadline: Duration,
}

/// SIGHUP reloads the TLS certificate and, when the service was started from a file, the
/// sources. One at a time: a signal that arrives during a reload runs after it.
async fn on_sighup(
    mut hup: tokio::signal::unix::Signal,
    state: Arc<State>,
    tls: Option<ReloadableAcceptor>,
    reloader: Option<Reloader>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            got = hup.recv() => if got.is_none() { return },
            () = stop.cancelled() => return,
        }
        tracing::info!("SIGHUP received");
        if let Some(tls) = &tls {
            tls.reload();
        }
        if let Some(reloader) = &reloader {
            reloader.reload(&state).await;
        }
    }
}

/// Closes the decision services a reload retired: those no request holds any more, or, at
/// shutdown (`all`), every one.
async fn close_retired(state: &State, all: bool) {
    let closing: Vec<Arc<DecisionService>> = {
        let mut retired = state
            .retired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (done, keep) = retired
            .drain(..)
            .partition(|s| all || Arc::strong_count(s) == 1);
        *retired = keep;
        done
    };
    for service in closing {
        service.close().await;
    }
}

/// The one periodic task: metric upkeep and spool depths every 5 s, idle rate buckets pruned
/// every minute.
async fn housekeeping(state: Arc<State>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        n += 1;
        if let Some(metrics) = &state.metrics {
            metrics.run_upkeep();
        }
        if n.is_multiple_of(12) {
            state
                .routes
                .load()
                .values()
                .for_each(|r| r.prune_limiters());
        }
        // Replaced by a reload, and no request holds them any more.
        close_retired(&state, false).await;
        if let Some(spool) = &state.spool {
            let spool = Arc::clone(spool);
            let _joined = tokio::task::spawn_blocking(move || spool.report_depths()).await;
        }
    }
}

/// Records decision services' replies until stopped. Each reply waits for its durable audit
/// event: one slow publish must not hold the others past their requests' deadlines, so each is
/// background work of its own (drained at shutdown). Bounded, so a flood of replies (from
/// whoever can publish to the reply address) queues instead of spawning without end.
async fn record_replies(state: Arc<State>, mut rx: mpsc::Receiver<Reply>, stop: CancellationToken) {
    let permits = Arc::new(tokio::sync::Semaphore::new(REPLIES_IN_FLIGHT));
    loop {
        let reply = tokio::select! {
            r = rx.recv() => r,
            () = stop.cancelled() => return,
        };
        let Some(reply) = reply else { return };
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => p,
            () = stop.cancelled() => return,
        };
        let Ok(permit) = permit else { return };
        let state2 = Arc::clone(&state);
        state.background.spawn(async move {
            ingress::on_reply(&state2, reply).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn parts_stop_stage_by_stage_whatever_the_order_they_were_registered_in() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut parts = Parts::default();
        for stage in [
            Stage::Stores,
            Stage::Sinks,
            Stage::Intake,
            Stage::Spool,
            Stage::Drainers,
            Stage::Background,
            Stage::Intake,
        ] {
            let order = Arc::clone(&order);
            parts.add(stage, format!("{stage:?}"), async move {
                // A slow part of an early stage still finishes before the next stage starts.
                if stage == Stage::Intake {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                order.lock().unwrap().push(stage);
            });
        }
        parts.stop().await;
        use Stage::*;
        assert_eq!(
            *order.lock().unwrap(),
            [Intake, Intake, Background, Drainers, Sinks, Spool, Stores]
        );
    }

    /// An event a request left to the background (`ack = "accept"`) is published before the
    /// sinks close, not lost with the runtime.
    #[tokio::test]
    async fn shutdown_waits_for_request_background_work_before_closing_the_sinks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("events.jsonl");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[sinks.f]\ntype = \"file\"\npath = {file:?}\n[sources.t]\nverify = {{ scheme = \"shared-secret\", header = \"x-token\", secrets = [\"tok\"] }}\n"
        );
        let cfg = crate::config::load(&text, &|_| None).unwrap();
        let app = App::build(cfg, None).await.unwrap();
        let sink = Arc::clone(app.state.sinks.get("f").unwrap());
        app.state.background.spawn(async move {
            // Still running when shutdown begins.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let event = crate::normalize::Envelope::restore(
                "late",
                "t",
                "hookbridge.webhook",
                "/hooks/t",
                "sha256",
                bytes::Bytes::from_static(b"{\"id\":\"late\"}"),
            );
            sink.publish(&event).await.unwrap();
        });
        app.run(std::future::ready(())).await;
        let written = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            written.contains("\"id\":\"late\""),
            "the background publish was cut off by shutdown: {written:?}"
        );
    }
}
