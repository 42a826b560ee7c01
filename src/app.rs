//! Wiring: turns a validated [`Config`] into running parts (sinks, routes, listeners) and runs
//! them until shutdown. The only module that does startup I/O.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::callback::service::DecisionService;
use crate::callback::store::DecisionStore;
use crate::config::{Config, DedupBackend, ServerConfig};
use crate::dedup::Dedup;
use crate::ingress::{self, Route, Serve, State};
use crate::sink::Sinks;
use crate::spool::Spool;
use crate::tls::ReloadableAcceptor;

/// Decision replies recorded at once.
const REPLIES_IN_FLIGHT: usize = 64;

pub struct App {
    listener: TcpListener,
    /// Replies from decision services, recorded by a task of [`App::run`].
    replies: Option<tokio::sync::mpsc::Receiver<crate::callback::service::Reply>>,
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
        let spool = match &config.spool {
            Some(s) => {
                let names: Vec<String> = config.sinks.iter().map(|s| s.name.clone()).collect();
                let spool = Spool::open(&s.path, &names, s.max_bytes)?;
                tracing::info!(path = %s.path.display(), max_bytes = s.max_bytes, "spool open");
                Some(Arc::new(spool))
            }
            None => None,
        };
        let longest_deadline = config
            .sources
            .iter()
            .map(|s| s.ack_deadline)
            .max()
            .unwrap_or_default();
        let pending = crate::dedup::pending_ttl(longest_deadline);
        let dedup = match config.dedup.backend {
            DedupBackend::Memory => {
                Dedup::memory(config.dedup.ttl, pending, config.dedup.max_entries)
            }
            DedupBackend::Redis => Dedup::redis(
                config.dedup.redis_url.as_deref().unwrap_or_default(),
                config.dedup.ttl,
                pending,
                config.dedup.key_prefix.clone(),
            )?,
        };
        tracing::info!(
            backend = dedup.backend(),
            ttl_secs = config.dedup.ttl.as_secs(),
            "dedup ready"
        );
        let limits = crate::callback::store::Limits {
            ttl: config.decisions.store.ttl,
            asked_ttl: config.decisions.asked_ttl,
            max_entries: usize::try_from(config.decisions.store.max_entries).unwrap_or(usize::MAX),
        };
        let decisions = match config.decisions.store.backend {
            DedupBackend::Memory => DecisionStore::memory(limits),
            DedupBackend::Redis => DecisionStore::redis(
                config
                    .decisions
                    .store
                    .redis_url
                    .as_deref()
                    .unwrap_or_default(),
                limits,
                config.decisions.store.key_prefix.clone(),
                // Config refuses a Redis store without a secret when approvals exist; without
                // approvals nothing is ever stored, and a random key seals nothing.
                config.decisions.secret.clone().unwrap_or_else(|| {
                    crate::callback::MacKey::new(uuid::Uuid::new_v4().as_bytes())
                }),
            )?,
        };
        // Bounded: a flood of replies is dropped (and logged) rather than buffered without end;
        // a dropped reply only means the callback's retry asks again.
        let (reply_tx, reply_rx) = tokio::sync::mpsc::channel(4096);
        let mut routes = HashMap::new();
        for spec in config.sources {
            let sink = Arc::clone(
                sinks
                    .get(&spec.sink)
                    .context("source refers to a missing sink")?,
            );
            let service = match spec.kind.approval().and_then(|a| a.service.as_ref()) {
                Some(svc) => {
                    let sink_spec = config
                        .sinks
                        .iter()
                        .find(|s| s.name == svc.sink)
                        .context("decision service refers to a missing sink")?;
                    Some(Arc::new(
                        DecisionService::start(&spec.name, svc, sink_spec, reply_tx.clone())
                            .await?,
                    ))
                }
                None => None,
            };
            tracing::info!(
                source = %spec.name, route = %spec.route(), kind = spec.kind.name(),
                scheme = spec.verifier.scheme().name(), sink = %spec.sink, "source ready"
            );
            let client_limits = (config.server.ipv6_prefix, config.server.max_rate_clients);
            routes.insert(
                spec.name.clone(),
                Route::new(spec, sink, service, client_limits),
            );
        }
        let replies = routes
            .values()
            .any(|r| r.service.is_some())
            .then_some(reply_rx);
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
        let state = Arc::new(State {
            routes,
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
        });
        Ok(Self {
            listener,
            replies,
            admin,
            tls,
            state,
            server: config.server,
        })
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

    /// Serves until `shutdown` resolves, drains requests, then flushes and closes the sinks.
    pub async fn run(mut self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            stop_tx.send_replace(true);
        });
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            // Err means the sender is gone, which also means stop.
            let _stopped = rx.wait_for(|s| *s).await;
        };
        if let Some(tls) = &self.tls {
            tls.reload_on_sighup();
        }
        // The one periodic task: metric upkeep and spool depths every 5 s, idle rate buckets
        // pruned every minute.
        let housekeeping = {
            let state = Arc::clone(&self.state);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                let mut n: u64 = 0;
                loop {
                    tick.tick().await;
                    n += 1;
                    if let Some(metrics) = &state.metrics {
                        metrics.run_upkeep();
                    }
                    if n.is_multiple_of(12) {
                        state.routes.values().for_each(Route::prune_limiters);
                    }
                    if let Some(spool) = &state.spool {
                        let spool = Arc::clone(spool);
                        let _joined =
                            tokio::task::spawn_blocking(move || spool.report_depths()).await;
                    }
                }
            })
        };
        let reply_task = self.replies.take().map(|mut rx| {
            let state = Arc::clone(&self.state);
            // Each reply waits for its durable audit event: one slow publish must not hold the
            // others past their requests' deadlines. Bounded, so a flood of replies (from
            // whoever can publish to the reply address) queues instead of spawning without end.
            let permits = Arc::new(tokio::sync::Semaphore::new(REPLIES_IN_FLIGHT));
            tokio::spawn(async move {
                while let Some(reply) = rx.recv().await {
                    let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                        return;
                    };
                    let state = Arc::clone(&state);
                    tokio::spawn(async move {
                        ingress::callback::on_reply(&state, reply).await;
                        drop(permit);
                    });
                }
            })
        });
        let (drain_stop, drain_rx) = watch::channel(false);
        let mut drainers = Vec::new();
        if let Some(spool) = &self.state.spool {
            for (name, sink) in self.state.sinks.iter() {
                let task =
                    Arc::clone(spool).drain(name.clone(), Arc::clone(sink), drain_rx.clone());
                drainers.push(tokio::spawn(task));
            }
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        tracing::info!(addr = %self.local_addr().map(|a| a.to_string()).unwrap_or_default(), scheme, "listening");
        let admin_task = self.admin.map(|admin| {
            tracing::info!(addr = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin listening");
            let routes = ingress::routes(Arc::clone(&self.state), Serve::Admin);
            let server = self.server.clone();
            let stop = stopped(stop_rx.clone());
            tokio::spawn(async move { crate::server::serve(admin, routes, &server, None, stop).await })
        });
        // A public main listener does not name the sources and sinks to anyone who asks.
        let serve = if self.server.admin_on_main {
            Serve::All
        } else {
            Serve::Hooks
        };
        let routes = ingress::routes(Arc::clone(&self.state), serve);
        crate::server::serve(
            self.listener,
            routes,
            &self.server,
            self.tls,
            stopped(stop_rx),
        )
        .await;
        if let Some(t) = admin_task {
            let _admin_done = t.await;
        }
        housekeeping.abort();
        for route in self.state.routes.values() {
            if let Some(service) = &route.service {
                service.close();
            }
        }
        if let Some(t) = reply_task {
            t.abort();
        }
        // Requests are drained; stop the spool drainers, flush the sinks, then make sure every
        // spooled event is committed. Anything left in the spool is drained on the next start.
        drain_stop.send_replace(true);
        let close_all = async {
            for d in drainers {
                let _stopped = d.await;
            }
            for (name, sink) in self.state.sinks.iter() {
                sink.close().await;
                tracing::info!(sink = %name, "sink closed");
            }
            if let Some(spool) = &self.state.spool {
                spool.close().await;
                tracing::info!("spool closed");
            }
        };
        if tokio::time::timeout(self.server.shutdown_timeout, close_all)
            .await
            .is_err()
        {
            tracing::warn!("sinks did not close within the shutdown timeout");
        }
    }
}
