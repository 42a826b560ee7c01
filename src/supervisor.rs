//! The one reconnect loop. Every connection hookbridge keeps to a broker or store (the RabbitMQ
//! and Kafka sinks, the decision services' transports, Redis) is owned by a supervisor task
//! that connects with backoff, publishes the connection in a slot with a readiness flag while it
//! holds, notices when it is lost (or a user reports it broken), tears it down, and reconnects;
//! until it is stopped, once, through a [`CancellationToken`], and then closes what it holds.
//!
//! What differs between backends is a [`Connector`]: how to connect, how to tell the connection
//! is gone, how to close it. Users never wait for a reconnect: [`Link::get`] answers at once,
//! `None` while disconnected.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Waits between connection attempts: doubling from `min` to `max`, back to `min` once a
/// connection held.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

// Builds without broker clients supervise only Redis.
#[cfg_attr(not(any(feature = "kafka", feature = "rabbitmq")), allow(dead_code))]
impl Backoff {
    /// 100 ms doubling to 5 s: the brokers' and Redis's restart times.
    pub const BROKER: Self = Self {
        min: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };
}

/// One backend's way of connecting, holding and closing.
///
/// A connection comes in two parts: `Shared`, published in the [`Link`]'s slot for users (a
/// channel pool, a producer), and `Held`, owned by the supervisor while it holds (event
/// streams, consumers) for [`Connector::hold`] to watch.
pub trait Connector: Send + 'static {
    type Shared: Send + Sync + 'static;
    type Held: Send + 'static;

    /// Names the connection in logs (`sink kafka`, `decisions on rabbit`).
    fn describe(&self) -> String;

    /// One connection attempt, bounded in time by the implementation.
    fn connect(
        &mut self,
    ) -> impl Future<Output = anyhow::Result<(Self::Shared, Self::Held)>> + Send;

    /// Runs while the connection is up and resolves, with the reason, once it is lost. It is
    /// dropped when the link stops, so it must be cancel-safe.
    fn hold(
        &mut self,
        shared: &Arc<Self::Shared>,
        held: &mut Self::Held,
    ) -> impl Future<Output = String> + Send;

    /// Tears a connection down: after a loss (`stopping = false`), or at stop, when it should
    /// also finish what is in flight (outstanding confirms, buffered messages).
    fn close(
        &mut self,
        shared: Arc<Self::Shared>,
        held: Self::Held,
        stopping: bool,
    ) -> impl Future<Output = ()> + Send;

    /// Readiness changed (metrics and logs beyond the supervisor's own).
    fn on_ready(&self, _ready: bool) {}
}

/// The users' side of a supervised connection.
pub struct Link<T> {
    slot: RwLock<Option<Arc<T>>>,
    ready: AtomicBool,
    /// A user found the current connection dead (a closed channel under a publish).
    broken: Notify,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl<T: Send + Sync + 'static> Link<T> {
    /// The current connection, or `None` at once while there is none.
    pub fn get(&self) -> Option<Arc<T>> {
        self.slot.read().ok().and_then(|s| s.clone())
    }

    /// Connected (cheap: one atomic load).
    #[cfg_attr(not(any(feature = "kafka", feature = "rabbitmq")), allow(dead_code))]
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Marks `conn` broken so the supervisor replaces it. A report about a connection that was
    /// already replaced is ignored: it must not tear down its healthy successor.
    #[cfg_attr(not(any(feature = "kafka", feature = "rabbitmq")), allow(dead_code))]
    pub fn report_broken(&self, conn: &Arc<T>) {
        let current = self.get().is_some_and(|c| Arc::ptr_eq(&c, conn));
        if current {
            self.ready.store(false, Ordering::SeqCst);
            // `notify_one` keeps a permit when the supervisor is not waiting yet: never lost.
            self.broken.notify_one();
        }
    }

    /// Stops the supervisor and waits until it has closed what it held. Idempotent.
    pub async fn stop(&self) {
        self.stop.cancel();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _stopped = task.await;
        }
    }

    /// A link that never connects (unit tests of code that holds one).
    #[cfg(test)]
    pub(crate) fn unconnected() -> Arc<Self> {
        Arc::new(Self {
            slot: RwLock::new(None),
            ready: AtomicBool::new(false),
            broken: Notify::new(),
            stop: CancellationToken::new(),
            task: Mutex::new(None),
        })
    }

    fn set(&self, conn: Option<Arc<T>>) {
        let ready = conn.is_some();
        if let Ok(mut slot) = self.slot.write() {
            *slot = conn;
        }
        self.ready.store(ready, Ordering::SeqCst);
    }
}

/// Starts a supervisor for `connector`; it runs until [`Link::stop`].
pub fn supervise<C: Connector>(connector: C, backoff: Backoff) -> Arc<Link<C::Shared>> {
    let link = Arc::new(Link {
        slot: RwLock::new(None),
        ready: AtomicBool::new(false),
        broken: Notify::new(),
        stop: CancellationToken::new(),
        task: Mutex::new(None),
    });
    let task = tokio::spawn(run(connector, backoff, Arc::clone(&link)));
    if let Ok(mut t) = link.task.lock() {
        *t = Some(task);
    }
    link
}

async fn run<C: Connector>(mut connector: C, backoff: Backoff, link: Arc<Link<C::Shared>>) {
    let what = connector.describe();
    let mut wait = backoff.min;
    let mut failures: u32 = 0;
    loop {
        let connected = tokio::select! {
            c = connector.connect() => c,
            () = link.stop.cancelled() => return,
        };
        let (shared, mut held) = match connected {
            Ok(c) => c,
            Err(e) => {
                failures += 1;
                let retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                // An outage of minutes is a handful of lines, not one per attempt.
                if failures.is_power_of_two() {
                    tracing::warn!(connection = %what, error = format!("{e:#}"), failures, retry_in_ms, "connect failed");
                } else {
                    tracing::debug!(connection = %what, error = format!("{e:#}"), failures, retry_in_ms, "connect failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = link.stop.cancelled() => return,
                }
                wait = (wait * 2).min(backoff.max);
                continue;
            }
        };
        (wait, failures) = (backoff.min, 0);
        let shared = Arc::new(shared);
        link.set(Some(Arc::clone(&shared)));
        connector.on_ready(true);
        tracing::info!(connection = %what, "connected");

        let stopping = tokio::select! {
            reason = connector.hold(&shared, &mut held) => {
                tracing::warn!(connection = %what, reason, "connection lost; reconnecting");
                false
            }
            () = link.broken.notified() => {
                tracing::warn!(connection = %what, "connection found broken; reconnecting");
                false
            }
            () = link.stop.cancelled() => true,
        };
        link.set(None);
        connector.on_ready(false);
        connector.close(shared, held, stopping).await;
        if stopping {
            return;
        }
        // A connection that keeps dropping is not reconnected in a tight loop.
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = link.stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Fails its first `fail` attempts, then holds until told the connection is lost.
    struct Flaky {
        attempts: Arc<AtomicUsize>,
        fail: usize,
        lose: Arc<Notify>,
        closed: Arc<Mutex<Vec<bool>>>,
    }

    impl Connector for Flaky {
        type Shared = usize;
        type Held = ();

        fn describe(&self) -> String {
            "flaky".into()
        }

        async fn connect(&mut self) -> anyhow::Result<(usize, ())> {
            let n = self.attempts.fetch_add(1, Ordering::SeqCst);
            anyhow::ensure!(n >= self.fail, "attempt {n} refused");
            Ok((n, ()))
        }

        async fn hold(&mut self, _: &Arc<usize>, (): &mut ()) -> String {
            self.lose.notified().await;
            "lost".into()
        }

        async fn close(&mut self, _: Arc<usize>, (): (), stopping: bool) {
            if let Ok(mut c) = self.closed.lock() {
                c.push(stopping);
            }
        }
    }

    async fn until(mut f: impl FnMut() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("condition not reached");
    }

    const FAST: Backoff = Backoff {
        min: Duration::from_millis(1),
        max: Duration::from_millis(4),
    };

    #[tokio::test]
    async fn reconnects_after_failures_and_losses_and_closes_once_at_stop() {
        let (attempts, lose, closed) = (Arc::default(), Arc::new(Notify::new()), Arc::default());
        let link = supervise(
            Flaky {
                attempts: Arc::clone(&attempts),
                fail: 3,
                lose: Arc::clone(&lose),
                closed: Arc::clone(&closed),
            },
            FAST,
        );
        until(|| link.is_ready()).await;
        assert_eq!(
            link.get().as_deref(),
            Some(&3),
            "the fourth attempt connects"
        );
        lose.notify_one();
        until(|| link.get().as_deref() == Some(&4)).await;
        assert!(link.is_ready());
        link.stop().await;
        assert!(!link.is_ready() && link.get().is_none());
        assert_eq!(*closed.lock().unwrap(), vec![false, true]);
        link.stop().await;
        assert_eq!(closed.lock().unwrap().len(), 2, "stop is idempotent");
    }

    #[tokio::test]
    async fn a_broken_report_replaces_only_the_current_connection() {
        let (attempts, closed) = (Arc::default(), Arc::default());
        let link = supervise(
            Flaky {
                attempts: Arc::clone(&attempts),
                fail: 0,
                lose: Arc::new(Notify::new()),
                closed: Arc::clone(&closed),
            },
            FAST,
        );
        until(|| link.is_ready()).await;
        let first = link.get().unwrap();
        link.report_broken(&first);
        until(|| link.get().is_some_and(|c| *c == 1)).await;
        // A late report about the replaced connection leaves its successor alone.
        link.report_broken(&first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(link.get().as_deref(), Some(&1));
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        link.stop().await;
    }
}
