//! Wiring: turns a validated [`Config`] into running parts (sinks, routes, listener) and runs
//! them until shutdown. The only module that does startup I/O.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::config::{Config, ServerConfig};
use crate::ingress::{self, Route, State};
use crate::sink::Sinks;

pub struct App {
    listener: TcpListener,
    state: Arc<State>,
    server: ServerConfig,
}

impl App {
    /// Starts the sinks and binds the listener. Broker sinks start even if their broker is
    /// down: the service then reports not-ready and answers 503 until it connects.
    ///
    /// # Errors
    /// When the listener cannot bind or a sink cannot work with its configuration.
    pub async fn build(config: Config, metrics: Option<PrometheusHandle>) -> anyhow::Result<Self> {
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
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
            routes.insert(spec.name.clone(), Route { spec, sink });
        }
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding {}", config.server.listen))?;
        let state = Arc::new(State {
            routes,
            sinks,
            body_timeout: config.server.body_timeout,
            metrics,
        });
        Ok(Self {
            listener,
            state,
            server: config.server,
        })
    }

    /// The bound address (useful with port 0 in tests).
    ///
    /// # Errors
    /// When the socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, drains requests, then flushes and closes the sinks.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tracing::info!(addr = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "listening");
        let routes = ingress::routes(Arc::clone(&self.state));
        crate::server::serve(self.listener, routes, &self.server, shutdown).await;
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
