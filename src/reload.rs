//! Reloading the configuration without a restart. On SIGHUP the file is read and validated
//! again and the sources (keys, rules, limits, allowlists, event locators, approval settings)
//! are swapped in whole, in one atomic store: a request runs to its end on the map it started
//! with, the next one sees the new map. Owns comparing the new file with the running one and
//! the swap, and building a source's route (`RouteBuilder`), which startup uses too.
//!
//! What a reload may change is `[sources]`. Every other section is held by running parts (the
//! listeners' sockets, the sinks' broker connections, the spool file and its drainers, the
//! stores' connections), so a change there refuses the whole reload, naming each changed section,
//! and the running configuration keeps serving; so does an invalid file, with every error
//! logged. A source whose table did not change keeps its route as it was: its rate buckets and
//! its decision service's connection. Sinks are never touched by a reload, so none loses its
//! connection.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::callback::service::{DecisionService, Reply};
use crate::config::{self, Written};
use crate::ingress::{Route, Routes, State};
use crate::plan::SourceSpec;
use crate::sink::Sinks;
use crate::sink::spec::SinkSpec;

/// What a successful reload did, by source.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub kept: usize,
}

/// The reload of one running service: where its file is, and what is running.
pub struct Reloader {
    path: PathBuf,
    /// The running file as written. The lock also makes reloads one at a time.
    running: tokio::sync::Mutex<Written>,
    builder: RouteBuilder,
    /// The longest ack deadline at startup: the dedup store's pending claims were sized for it.
    longest_deadline: Duration,
}

impl Reloader {
    pub(crate) fn new(
        path: PathBuf,
        running: Written,
        builder: RouteBuilder,
        longest_deadline: Duration,
    ) -> Self {
        Self {
            path,
            running: tokio::sync::Mutex::new(running),
            builder,
            longest_deadline,
        }
    }

    /// Reads the file again and swaps in its sources, logging and counting the outcome.
    pub async fn reload(&self, state: &State) {
        match self.try_reload(state).await {
            Ok(s) => {
                crate::metrics::config_reloaded(true);
                tracing::info!(
                    path = %self.path.display(),
                    added = ?s.added, changed = ?s.changed, removed = ?s.removed, unchanged = s.kept,
                    "configuration reloaded"
                );
            }
            Err(errors) => {
                crate::metrics::config_reloaded(false);
                for e in &errors {
                    tracing::error!(path = %self.path.display(), "reload refused: {e}");
                }
                tracing::error!(
                    path = %self.path.display(), errors = errors.len(),
                    "configuration not reloaded; the running configuration keeps serving"
                );
            }
        }
    }

    /// # Errors
    /// Every reason the new file cannot be swapped in (nothing was changed then).
    pub async fn try_reload(&self, state: &State) -> Result<Summary, Vec<String>> {
        let config = config::load_file(&self.path).map_err(|e| e.0)?;
        let mut running = self.running.lock().await;
        let mut refused = restart_needed(&running, &config.written);
        let longest = config.sources.iter().map(|s| s.ack_deadline).max();
        if let Some(longest) = longest.filter(|l| *l > self.longest_deadline) {
            refused.push(format!(
                "sources: the longest ack_deadline_ms grows from {} to {}, beyond what the dedup store's pending claims were sized for at startup; restart to raise it",
                self.longest_deadline.as_millis(),
                longest.as_millis()
            ));
        }
        if !refused.is_empty() {
            return Err(refused);
        }
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        let old = state.routes.load_full();
        let mut routes = Routes::new();
        let mut summary = Summary::default();
        for spec in config.sources {
            let name = spec.name.clone();
            let same = running.entry("sources", &name) == config.written.entry("sources", &name);
            match old.get(&name) {
                Some(route) if same => {
                    summary.kept += 1;
                    routes.insert(name, Arc::clone(route));
                    continue;
                }
                Some(_) => summary.changed.push(name.clone()),
                None => summary.added.push(name.clone()),
            }
            match self.builder.route(spec, &state.sinks).await {
                Ok(route) => {
                    routes.insert(name, Arc::new(route));
                }
                Err(e) => {
                    // Nothing was swapped: close the decision services started for it.
                    let fresh = routes.values().filter(|r| !is_running(&old, r));
                    for service in fresh.filter_map(|r| r.service.clone()) {
                        service.close().await;
                    }
                    return Err(vec![format!("sources.{name}: {e:#}")]);
                }
            }
        }
        summary.removed = old
            .keys()
            .filter(|n| !routes.contains_key(*n))
            .cloned()
            .collect();
        summary.removed.sort();
        // Replaced routes' decision services close once the requests that hold them are done.
        let replaced = old.values().filter(|r| !is_running(&routes, r));
        let retired: Vec<_> = replaced.filter_map(|r| r.service.clone()).collect();
        state.routes.store(Arc::new(routes));
        state
            .retired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(retired);
        *running = config.written;
        Ok(summary)
    }
}

/// Builds sources' routes, at startup and on reload: what a route needs besides its spec.
pub(crate) struct RouteBuilder {
    pub(crate) sink_specs: Vec<SinkSpec>,
    pub(crate) replies: mpsc::Sender<Reply>,
    /// `server.ipv6_prefix` and `server.max_rate_clients`, for per-client rate limits.
    pub(crate) client_limits: (u8, usize),
}

impl RouteBuilder {
    /// A source's route: its sink, and the decision service it asks (started here).
    pub(crate) async fn route(&self, spec: SourceSpec, sinks: &Sinks) -> anyhow::Result<Route> {
        let sink = Arc::clone(
            sinks
                .get(&spec.sink)
                .context("source refers to a missing sink")?,
        );
        let service = match spec.kind.approval().and_then(|a| a.service.as_ref()) {
            Some(svc) => {
                let sink_spec = self
                    .sink_specs
                    .iter()
                    .find(|s| s.name == svc.sink)
                    .context("decision service refers to a missing sink")?;
                let started =
                    DecisionService::start(&spec.name, svc, sink_spec, self.replies.clone());
                Some(Arc::new(started.await?))
            }
            None => None,
        };
        tracing::info!(
            source = %spec.name, route = %spec.route(), kind = spec.kind.name(),
            scheme = spec.verifier.scheme().name(), sink = %spec.sink, "source ready"
        );
        Ok(Route::new(spec, sink, service, self.client_limits))
    }
}

/// Whether `route` itself (not merely a route of that name) is in `routes`.
fn is_running(routes: &Routes, route: &Arc<Route>) -> bool {
    routes
        .get(&route.spec.name)
        .is_some_and(|r| Arc::ptr_eq(r, route))
}

/// The sections, other than `[sources]`, that differ between the running file and the new
/// one: each needs a restart. Table sections name the entry (`sinks.kafka`). Names only,
/// never values (they may be secrets).
fn restart_needed(running: &Written, new: &Written) -> Vec<String> {
    let mut names: Vec<&str> = running.sections().chain(new.sections()).collect();
    names.sort_unstable();
    names.dedup();
    let mut changed = Vec::new();
    for section in names.into_iter().filter(|s| *s != "sources") {
        let (a, b) = (running.section(section), new.section(section));
        if a == b {
            continue;
        }
        let entries = |v: Option<&toml::Value>| -> Vec<String> {
            v.and_then(toml::Value::as_table)
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default()
        };
        let mut keys = entries(a);
        keys.extend(entries(b));
        keys.sort_unstable();
        keys.dedup();
        let differing: Vec<String> = keys
            .into_iter()
            .filter(|k| a.and_then(|t| t.get(k)) != b.and_then(|t| t.get(k)))
            .collect();
        // A section added or removed whole is named whole.
        let what = if a.is_none() || b.is_none() || differing.is_empty() {
            vec![section.to_owned()]
        } else {
            differing.iter().map(|k| format!("{section}.{k}")).collect()
        };
        changed.extend(what.into_iter().map(|w| {
            format!("{w}: changed; a reload applies [sources] only, restart to apply this")
        }));
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(text: &str) -> Written {
        let env = |name: &str| (name == "TOKEN").then(|| "s3cret-value".to_owned());
        config::load(text, &env).unwrap().written
    }

    const BASE: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[sinks.f]\ntype = \"file\"\npath = \"/tmp/hb-reload-f.jsonl\"\n[sources.t]\nverify = { scheme = \"shared-secret\", header = \"x-token\", secrets = [\"${TOKEN}\"] }\n";

    #[test]
    fn only_sources_may_change() {
        let base = written(BASE);
        assert!(restart_needed(&base, &written(BASE)).is_empty());
        let more_sources = format!(
            "{BASE}[sources.u]\nverify = {{ scheme = \"shared-secret\", header = \"x-token\", secrets = [\"other\"] }}\n"
        );
        assert!(restart_needed(&base, &written(&more_sources)).is_empty());

        let other_sink = BASE.replace("hb-reload-f", "hb-reload-g");
        let refused = restart_needed(&base, &written(&other_sink));
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].starts_with("sinks.f: changed"), "{refused:?}");

        let spooled = format!("{BASE}[spool]\npath = \"/tmp/hb-reload.redb\"\n");
        let listen = spooled.replace("127.0.0.1:0", "127.0.0.1:1");
        let refused = restart_needed(&base, &written(&listen));
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(
            refused[0].starts_with("server.listen: changed"),
            "{refused:?}"
        );
        assert!(refused[1].starts_with("spool: changed"), "{refused:?}");
        assert!(
            !refused.iter().any(|r| r.contains("s3cret")),
            "no value is named: {refused:?}"
        );
    }
}
