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

use crate::config::{Config, ServerConfig};
use crate::ingress::{self, Route, Serve, State};
use crate::sink::Sinks;
use crate::tls::ReloadableAcceptor;

pub struct App {
    listener: TcpListener,
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
        let mut routes = HashMap::new();
        for spec in config.sources {
            let sink = Arc::clone(
                sinks
                    .get(&spec.sink)
                    .context("source refers to a missing sink")?,
            );
            tracing::info!(
                source = %spec.name, route = %spec.route(), scheme = spec.verifier.scheme().name(),
                sink = %spec.sink, "source ready"
            );
            routes.insert(spec.name.clone(), Route::new(spec, sink));
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
            trusted_proxies: config.server.trusted_proxies.clone(),
            require_tls: config.server.require_tls,
            tls_listener: tls.is_some(),
        });
        Ok(Self {
            listener,
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
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
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
        let pruner = {
            let state = Arc::clone(&self.state);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    state.routes.values().for_each(Route::prune_limiters);
                }
            })
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        tracing::info!(addr = %self.local_addr().map(|a| a.to_string()).unwrap_or_default(), scheme, "listening");
        let admin_task = self.admin.map(|admin| {
            tracing::info!(addr = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin listening");
            let routes = ingress::routes(Arc::clone(&self.state), Serve::Admin);
            let server = self.server.clone();
            let stop = stopped(stop_rx.clone());
            tokio::spawn(async move { crate::server::serve(admin, routes, &server, None, stop).await })
        });
        let serve = if admin_task.is_some() {
            Serve::Hooks
        } else {
            Serve::All
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
        pruner.abort();
        let close_all = async {
            for (name, sink) in self.state.sinks.iter() {
                sink.close().await;
                tracing::info!(sink = %name, "sink closed");
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
