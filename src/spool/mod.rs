//! The durable local spool: events a broker could not confirm in time (or that a source wants
//! acknowledged on local durability alone) are written here, fsync'd, and only then answered
//! 2xx. A drainer per sink publishes them in order once the broker is back and removes each only
//! after the broker confirmed it.
//!
//! Storage is redb: a single file with checksummed pages and copy-on-write commits, so a crash
//! mid-commit (SIGKILL, power loss) rolls back to the last committed state on open: a torn tail
//! is detected and discarded, and it was never acknowledged. One writer thread owns every write
//! and group-commits: all appends waiting while the previous commit was syncing share the next
//! transaction and its one fsync. Removals commit without their own fsync, and are made durable
//! by the next append's commit or, when none comes, by a commit of their own at most
//! [`REMOVALS_DURABLE_WITHIN`] after the first of them: a crash republishes only what the drainer
//! removed within that last stretch (a re-publish, which the event ID deduplicates downstream),
//! never the whole drained backlog.
//!
//! A record the drainer cannot read (damage, or a format from another version after an upgrade
//! or rollback) is moved to the sink's quarantine table (`spool-quarantine:<sink>`, same key,
//! same bytes) and counted, instead of being read again before every batch: the events behind it
//! keep draining. Tables of sinks no longer configured are reported at startup; they are kept,
//! not drained.
//!
//! Dead letters: an event its sink refused for good (unroutable, too large, not authorised) is
//! kept in the sink's dead-letter table (`spool-dead:<sink>`) with the time and the reason,
//! committed with fsync like an append, so a source with `on_refused = "dead-letter"` can answer
//! 2xx instead of 503s the provider retries in vain. The drainer moves an event it finds refused
//! there too (in one transaction), instead of retrying it forever. `hookbridge spool dead replay`
//! ([`cli`]) publishes them again once the broker is fixed.

pub mod cli;

mod record;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    StorageError, TableDefinition, TableHandle as _,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::normalize::Envelope;
use crate::sink::{PublishError, Sink};

/// Most appends committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Events the drainer publishes concurrently, in spool order.
const DRAIN_BATCH: usize = 128;
const DRAIN_BACKOFF_MIN: Duration = Duration::from_millis(100);
const DRAIN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest a drainer waits for one broker confirmation.
const DRAIN_PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a committed removal (a drained or forgotten event) stays non-durable: past it the
/// writer commits with fsync even when no append comes to carry it. A SIGKILL or power loss
/// republishes at most what was drained in this window. One extra fsync per window while the
/// drainer works; none when idle.
pub const REMOVALS_DURABLE_WITHIN: Duration = Duration::from_millis(200);
/// Table-name prefixes: a sink's queue, and where its unreadable records are moved.
const QUEUE_PREFIX: &str = "spool:";
const QUARANTINE_PREFIX: &str = "spool-quarantine:";
const DEAD_PREFIX: &str = "spool-dead:";

#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    #[error("spool is full ({0} bytes)")]
    Full(u64),
    #[error("spool write failed: {0}")]
    Io(String),
    #[error("spool is closed")]
    Closed,
}

impl SpoolError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Full(_) => "spool_full",
            Self::Io(_) | Self::Closed => "spool_unavailable",
        }
    }
}

/// Where an appended event sits in the spool.
#[derive(Debug, Clone, Copy)]
pub struct Spooled {
    seq: u64,
    size: u64,
}

type TableName = &'static str;
type Done = oneshot::Sender<Result<(), SpoolError>>;

enum Op {
    Append {
        table: TableName,
        record: Vec<u8>,
        done: Done,
    },
    Remove {
        table: TableName,
        keys: Vec<u64>,
        freed: u64,
        done: Done,
    },
    /// Moves records, as they are, from a sink's queue to its quarantine table.
    Quarantine {
        table: TableName,
        quarantine: TableName,
        keys: Vec<u64>,
        done: Done,
    },
    /// Keeps a refused event in a dead-letter table (fsync'd like an append); from the drainer,
    /// also removes it from the queue in the same transaction.
    DeadLetter {
        dead: TableName,
        key: u64,
        record: Vec<u8>,
        from: Option<(TableName, u64)>,
        done: Done,
    },
}

/// Per sink: the table and a wake-up for its drainer.
struct SinkQueue {
    table: TableName,
    quarantine: TableName,
    dead: TableName,
    next_seq: AtomicU64,
    next_dead: AtomicU64,
    appended: Notify,
}

pub struct Spool {
    db: Arc<Database>,
    tx: mpsc::Sender<Op>,
    queues: HashMap<String, Arc<SinkQueue>>,
    bytes: Arc<AtomicU64>,
    max_bytes: u64,
    unconfigured: Vec<(String, u64)>,
}

/// What an opened spool file means for the operator: why it cannot be used, and what to do.
fn open_error(path: &Path, e: DatabaseError) -> anyhow::Error {
    let p = path.display();
    match e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            anyhow::anyhow!(
                "spool {p} is in use by another process: each instance needs its own [spool] path"
            )
        }
        // redb reports a file that is not its format (a bad magic number) as InvalidData.
        DatabaseError::Storage(StorageError::Io(e))
            if e.kind() != std::io::ErrorKind::InvalidData =>
        {
            anyhow::anyhow!("cannot open spool {p}: {e}")
        }
        e => anyhow::anyhow!(
            "spool {p} is damaged or not a spool file ({e}). To start, move it aside \
             (mv {p} {p}.damaged): hookbridge then starts with an empty spool, and the events \
             in the moved file are not published; keep it to recover them"
        ),
    }
}

/// The spool's page cache.
const SPOOL_CACHE_BYTES: usize = 16 << 20;

impl Spool {
    /// Opens (or creates) the spool file, recovering from any unclean shutdown, and counts
    /// what is still waiting per sink.
    ///
    /// # Errors
    /// When the file cannot be opened or is not a spool.
    pub fn open(path: &Path, sinks: &[String], max_bytes: u64) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // redb caches up to 1 GiB of pages by default; a spool is written once and read once by
        // the drainer, so a large cache only held every spooled event in memory (about 400 MB
        // peak RSS after 120 k events in bench/).
        let db = Database::builder()
            .set_cache_size(SPOOL_CACHE_BYTES)
            .create(path)
            .map_err(|e| open_error(path, e))?;
        let mut queues = HashMap::new();
        let mut bytes = 0u64;
        {
            let txn = db.begin_write()?;
            for sink in sinks {
                let table: TableName = Box::leak(format!("{QUEUE_PREFIX}{sink}").into_boxed_str());
                let quarantine: TableName =
                    Box::leak(format!("{QUARANTINE_PREFIX}{sink}").into_boxed_str());
                let t = txn.open_table(TableDefinition::<u64, &[u8]>::new(table))?;
                let mut next = 0;
                for entry in t.iter()? {
                    let (k, v) = entry?;
                    next = k.value() + 1;
                    bytes += v.value().len() as u64;
                }
                let dead: TableName = Box::leak(format!("{DEAD_PREFIX}{sink}").into_boxed_str());
                let d = txn.open_table(TableDefinition::<u64, &[u8]>::new(dead))?;
                let mut next_dead = 0;
                for entry in d.iter()? {
                    let (k, v) = entry?;
                    next_dead = k.value() + 1;
                    bytes += v.value().len() as u64;
                }
                let dead_letters = d.len()?;
                if dead_letters > 0 {
                    tracing::warn!(sink = %sink, events = dead_letters, "spool holds dead letters (events the sink refused); see hookbridge spool dead list");
                }
                metrics::dead_letters(sink, dead_letters);
                let waiting = t.len()?;
                if waiting > 0 {
                    tracing::warn!(sink = %sink, events = waiting, "spool holds events from an earlier run; draining them");
                }
                metrics::spool_depth(sink, waiting);
                queues.insert(
                    sink.clone(),
                    Arc::new(SinkQueue {
                        table,
                        quarantine,
                        dead,
                        next_seq: AtomicU64::new(next),
                        next_dead: AtomicU64::new(next_dead),
                        appended: Notify::new(),
                    }),
                );
            }
            txn.commit()?;
        }
        let unconfigured = report_leftovers(&db, sinks)?;
        let db = Arc::new(db);
        let bytes = Arc::new(AtomicU64::new(bytes));
        let (tx, rx) = mpsc::channel(8192);
        {
            let db = Arc::clone(&db);
            let bytes = Arc::clone(&bytes);
            // The writer's own clock, to commit pending removals on time while no op arrives.
            let clock = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .context("starting the spool writer's timer")?;
            std::thread::Builder::new()
                .name("spool-writer".into())
                .spawn(move || writer(&db, rx, &bytes, &clock))
                .context("spawning the spool writer")?;
        }
        Ok(Self {
            db,
            tx,
            queues,
            bytes,
            max_bytes,
            unconfigured,
        })
    }

    /// Sink tables in the file whose sink is no longer configured, with their event counts: kept,
    /// never drained (reported at startup).
    pub fn unconfigured(&self) -> &[(String, u64)] {
        &self.unconfigured
    }

    /// Appends an event for `sink`; resolves once it is fsync'd, with a handle that can take it
    /// back out ([`Spool::forget`]).
    ///
    /// # Errors
    /// [`SpoolError::Full`] past `max_bytes`; I/O errors; no spool for this sink.
    pub async fn append(&self, sink: &str, envelope: &Envelope) -> Result<Spooled, SpoolError> {
        let queue = self.queues.get(sink).ok_or(SpoolError::Closed)?;
        let record = record::encode(envelope);
        let used = self.bytes.load(Ordering::Relaxed);
        if used + record.len() as u64 > self.max_bytes {
            return Err(SpoolError::Full(used));
        }
        let (done, wait) = oneshot::channel();
        // The sequence is taken here, in arrival order; the writer keeps that order per table.
        let seq = queue.next_seq.fetch_add(1, Ordering::SeqCst);
        let mut keyed = seq.to_be_bytes().to_vec();
        keyed.extend_from_slice(&record);
        self.tx
            .send(Op::Append {
                table: queue.table,
                record: keyed,
                done,
            })
            .await
            .map_err(|_| SpoolError::Closed)?;
        wait.await.map_err(|_| SpoolError::Closed)??;
        queue.appended.notify_one();
        Ok(Spooled {
            seq,
            size: record.len() as u64,
        })
    }

    /// Keeps an event `sink` refused for good as a dead letter, with `reason`; resolves once it
    /// is fsync'd (the caller may then answer 2xx).
    ///
    /// # Errors
    /// [`SpoolError::Full`] past `max_bytes`; I/O errors; no spool for this sink.
    pub async fn dead_letter(
        &self,
        sink: &str,
        envelope: &Envelope,
        reason: &str,
    ) -> Result<(), SpoolError> {
        let queue = self.queues.get(sink).ok_or(SpoolError::Closed)?;
        let record = record::encode_dead(now_ms(), reason, &record::encode(envelope));
        let used = self.bytes.load(Ordering::Relaxed);
        if used + record.len() as u64 > self.max_bytes {
            return Err(SpoolError::Full(used));
        }
        self.send_dead(sink, queue, record, None).await
    }

    async fn send_dead(
        &self,
        sink: &str,
        queue: &SinkQueue,
        record: Vec<u8>,
        from: Option<(TableName, u64)>,
    ) -> Result<(), SpoolError> {
        let (done, wait) = oneshot::channel();
        let key = queue.next_dead.fetch_add(1, Ordering::SeqCst);
        self.tx
            .send(Op::DeadLetter {
                dead: queue.dead,
                key,
                record,
                from,
                done,
            })
            .await
            .map_err(|_| SpoolError::Closed)?;
        wait.await.map_err(|_| SpoolError::Closed)??;
        metrics::dead_lettered(sink);
        Ok(())
    }

    /// Dead letters kept for `sink`.
    pub fn dead_depth(&self, sink: &str) -> u64 {
        self.queues.get(sink).map_or(0, |q| self.table_len(q.dead))
    }

    /// Removes a spooled event that reached the broker by another way (its original publish
    /// confirmed after all), so the drainer does not publish it a second time.
    pub async fn forget(&self, sink: &str, spooled: Spooled) {
        self.remove(sink, vec![spooled.seq], spooled.size).await;
    }

    /// The next `max` records waiting for `sink`, oldest first: the readable ones, and the keys
    /// of those that are not (to be quarantined).
    fn read_batch(&self, sink: &str, max: usize) -> anyhow::Result<Batch> {
        let mut batch = Batch::default();
        let Some(queue) = self.queues.get(sink) else {
            return Ok(batch);
        };
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TableDefinition::<u64, &[u8]>::new(queue.table))?;
        for entry in table.iter()?.take(max) {
            let (k, v) = entry?;
            let bytes = v.value();
            match record::decode(bytes) {
                Some(env) => batch.events.push((k.value(), env, bytes.len() as u64)),
                None => batch.unreadable.push(k.value()),
            }
        }
        Ok(batch)
    }

    /// Moves unreadable records out of the way of the drainer. They were written by a program
    /// after verification, so unreadable means damage or another version's format: kept as they
    /// are (never lost), counted, and no longer read before every batch.
    async fn quarantine(&self, sink: &str, keys: Vec<u64>) {
        let Some(queue) = self.queues.get(sink) else {
            return;
        };
        let n = keys.len() as u64;
        let (done, wait) = oneshot::channel();
        let op = Op::Quarantine {
            table: queue.table,
            quarantine: queue.quarantine,
            keys,
            done,
        };
        if self.tx.send(op).await.is_err() {
            return;
        }
        match wait.await {
            Ok(Ok(())) => {
                metrics::spool_quarantined(sink, n);
                tracing::error!(
                    sink,
                    records = n,
                    table = queue.quarantine,
                    "unreadable spool records moved to quarantine; the events behind them drain"
                );
            }
            Ok(Err(e)) => {
                tracing::error!(sink, error = %e, "quarantining unreadable spool records failed")
            }
            Err(_) => {}
        }
    }

    /// Events waiting for `sink`.
    pub fn depth(&self, sink: &str) -> u64 {
        self.queues.get(sink).map_or(0, |q| self.table_len(q.table))
    }

    /// Records in `table` (0 when it cannot be read: a metric, not a decision).
    fn table_len(&self, table: TableName) -> u64 {
        self.db
            .begin_read()
            .ok()
            .and_then(|t| t.open_table(TableDefinition::<u64, &[u8]>::new(table)).ok())
            .and_then(|t| t.len().ok())
            .unwrap_or(0)
    }

    /// Whether the spool can take writes (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        !self.tx.is_closed() && self.bytes.load(Ordering::Relaxed) < self.max_bytes
    }

    pub fn has_sink(&self, sink: &str) -> bool {
        self.queues.contains_key(sink)
    }

    /// Removes published events. Waits for the commit: the drainer's next read must not see
    /// them again, or they would be published twice.
    async fn remove(&self, sink: &str, keys: Vec<u64>, freed: u64) {
        let Some(queue) = self.queues.get(sink) else {
            return;
        };
        let (done, wait) = oneshot::channel();
        if self
            .tx
            .send(Op::Remove {
                table: queue.table,
                keys,
                freed,
                done,
            })
            .await
            .is_err()
        {
            tracing::warn!(sink, "spool writer stopped; removal not recorded");
            return;
        }
        if let Ok(Err(e)) = wait.await {
            tracing::warn!(sink, error = %e, "recording published spool events failed; they will be published again");
        }
    }

    /// Publishes what is spooled for `sink`, in order, until `stop` turns true.
    pub async fn drain(self: Arc<Self>, name: String, sink: Arc<Sink>, stop: CancellationToken) {
        let Some(queue) = self.queues.get(&name).cloned() else {
            return;
        };
        let mut backoff = DRAIN_BACKOFF_MIN;
        loop {
            if !sink.is_ready() {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    () = stop.cancelled() => return,
                }
            }
            let this = Arc::clone(&self);
            let n = name.clone();
            let Batch {
                events: batch,
                unreadable,
            } = match tokio::task::spawn_blocking(move || this.read_batch(&n, DRAIN_BATCH)).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    tracing::error!(sink = %name, error = %e, "reading the spool failed");
                    Batch::default()
                }
                Err(_) => Batch::default(),
            };
            if !unreadable.is_empty() {
                self.quarantine(&name, unreadable).await;
                if batch.is_empty() {
                    continue;
                }
            }
            if batch.is_empty() {
                metrics::spool_depth(&name, 0);
                tokio::select! {
                    () = queue.appended.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.cancelled() => return,
                }
                continue;
            }
            let (published, failed) = self.publish_batch(&name, &queue, &sink, &batch).await;
            tracing::debug!(sink = %name, published, failed, "spool drain batch");
            if failed > 0 {
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(DRAIN_BACKOFF_MAX);
            } else {
                backoff = DRAIN_BACKOFF_MIN;
            }
        }
    }

    /// Publishes one batch, in spool order (pipelined); removes each event only once confirmed,
    /// and moves those the sink refuses for good to the dead letters. Returns how many were
    /// published and how many are still to do.
    async fn publish_batch(
        &self,
        name: &str,
        queue: &SinkQueue,
        sink: &Sink,
        batch: &[(u64, Envelope, u64)],
    ) -> (usize, usize) {
        // Issued in spool order (pipelined); each is removed only once confirmed.
        let results = futures_util::future::join_all(batch.iter().map(|(_, env, _)| async {
            match tokio::time::timeout(DRAIN_PUBLISH_TIMEOUT, sink.publish(env)).await {
                Ok(r) => r,
                Err(_) => Err(PublishError::Unavailable("drain publish timed out".into())),
            }
        }))
        .await;
        let mut done = Vec::new();
        let mut freed = 0;
        let mut failed = 0;
        for ((key, env, size), result) in batch.iter().zip(&results) {
            match result {
                Ok(()) => {
                    done.push(*key);
                    freed += size;
                }
                // Retrying cannot help until someone changes the broker: kept aside so it
                // neither blocks the queue nor is lost.
                Err(e @ PublishError::Refused(_)) => {
                    let reason = e.to_string();
                    let record = record::encode_dead(now_ms(), &reason, &record::encode(env));
                    let moved = self
                        .send_dead(name, queue, record, Some((queue.table, *key)))
                        .await;
                    match moved {
                        Ok(()) => tracing::error!(
                            sink = %name,
                            event_id = %env.id(),
                            error = %e,
                            "sink refused a spooled event; kept as a dead letter"
                        ),
                        Err(err) => {
                            failed += 1;
                            tracing::error!(sink = %name, event_id = %env.id(), error = %err, "keeping a refused spooled event as a dead letter failed; it stays queued");
                        }
                    }
                }
                Err(e) => {
                    failed += 1;
                    if failed == 1 {
                        tracing::warn!(sink = %name, error = %e, "spooled event not published yet");
                    }
                }
            }
        }
        let published = done.len();
        if !done.is_empty() {
            self.remove(name, done, freed).await;
            metrics::spool_drained(name, published as u64);
        }
        (published, failed)
    }

    /// Publishes the current depth of every sink's queue (for `/metrics`).
    pub fn report_depths(&self) {
        metrics::spool_bytes(self.bytes.load(Ordering::Relaxed), self.max_bytes);
        for sink in self.queues.keys() {
            metrics::spool_depth(sink, self.depth(sink));
            metrics::dead_letters(sink, self.dead_depth(sink));
        }
    }

    /// Waits until every append accepted so far is committed.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self
            .tx
            .send(Op::Append {
                table: "",
                record: Vec::new(),
                done,
            })
            .await
            .is_ok()
        {
            let _committed = wait.await;
        }
    }
}

/// What the drainer read: events in key order, and the keys of records it could not decode.
#[derive(Default)]
struct Batch {
    events: Vec<(u64, Envelope, u64)>,
    unreadable: Vec<u64>,
}

/// Queue keys to move, with the quarantine table they go to.
type Move = (TableName, TableName, Vec<u64>, Done);
/// A dead letter: its table, key and record, and the queue entry it leaves (from the drainer).
type DeadOp = (TableName, u64, Vec<u8>, Option<(TableName, u64)>, Done);

/// Milliseconds since the Unix epoch, for a dead letter's time.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The one writer thread: takes every operation waiting, commits them in one transaction (with
/// fsync when appends or dead letters are about to be acknowledged, or removals have waited
/// [`REMOVALS_DURABLE_WITHIN`]), answers each. One loop on purpose: its state (what is waiting,
/// since when removals are not durable) is the group commit.
fn writer(
    db: &Database,
    mut rx: mpsc::Receiver<Op>,
    bytes: &AtomicU64,
    clock: &tokio::runtime::Runtime,
) {
    let mut appends: Vec<(TableName, Vec<u8>, Done)> = Vec::new();
    let mut removes: Vec<(TableName, Vec<u64>, u64, Done)> = Vec::new();
    let mut moves: Vec<Move> = Vec::new();
    let mut deads: Vec<DeadOp> = Vec::new();
    // When the oldest removal not yet durable was committed.
    let mut unsynced: Option<Instant> = None;
    loop {
        let first = match unsynced {
            None => clock.block_on(rx.recv()),
            Some(since) => {
                let left =
                    (since + REMOVALS_DURABLE_WITHIN).saturating_duration_since(Instant::now());
                // The timer must be made inside the runtime that drives it.
                match clock.block_on(async { tokio::time::timeout(left, rx.recv()).await }) {
                    Ok(op) => op,
                    Err(_idle) => {
                        unsynced = sync(db, since);
                        continue;
                    }
                }
            }
        };
        let Some(first) = first else {
            // Every sender is gone: what was removed is made durable before the thread ends.
            if let Some(since) = unsynced {
                sync(db, since);
            }
            return;
        };
        let mut next = Some(first);
        while let Some(op) = next.take() {
            match op {
                Op::Append {
                    table,
                    record,
                    done,
                } => appends.push((table, record, done)),
                Op::Remove {
                    table,
                    keys,
                    freed,
                    done,
                } => removes.push((table, keys, freed, done)),
                Op::Quarantine {
                    table,
                    quarantine,
                    keys,
                    done,
                } => moves.push((table, quarantine, keys, done)),
                Op::DeadLetter {
                    dead,
                    key,
                    record,
                    from,
                    done,
                } => deads.push((dead, key, record, from, done)),
            }
            if appends.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        // Only appends (and the close sentinel) need their own fsync: they are about to be
        // acknowledged. Removals ride on the next one, unless they have waited long enough.
        let durable = !appends.is_empty()
            || !deads.is_empty()
            || unsynced.is_some_and(|since| since.elapsed() >= REMOVALS_DURABLE_WITHIN);
        let result = commit(db, &appends, &removes, &moves, &deads, durable, bytes);
        match &result {
            Err(e) => tracing::error!(error = %e, "spool commit failed"),
            Ok(()) if durable => unsynced = None,
            Ok(()) if !removes.is_empty() || !moves.is_empty() => {
                unsynced = unsynced.or_else(|| Some(Instant::now()));
            }
            Ok(()) => {}
        }
        let outcome = result.map_err(|e| SpoolError::Io(e.to_string()));
        for (_, _, done) in appends.drain(..) {
            let _receiver_gone = done.send(outcome.clone());
        }
        for (_, _, _, done) in removes.drain(..) {
            let _receiver_gone = done.send(outcome.clone());
        }
        for (_, _, _, done) in moves.drain(..) {
            let _receiver_gone = done.send(outcome.clone());
        }
        for (_, _, _, _, done) in deads.drain(..) {
            let _receiver_gone = done.send(outcome.clone());
        }
    }
}

/// Makes every commit so far durable (an empty commit with fsync). Returns when to try again:
/// never after success, one window later after a failure.
fn sync(db: &Database, since: Instant) -> Option<Instant> {
    let result = (|| -> Result<(), redb::Error> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.commit()?;
        Ok(())
    })();
    match result {
        Ok(()) => None,
        Err(e) => {
            tracing::error!(error = %e, "making spool removals durable failed; retrying");
            Some(since.max(Instant::now()))
        }
    }
}

fn commit(
    db: &Database,
    appends: &[(TableName, Vec<u8>, Done)],
    removes: &[(TableName, Vec<u64>, u64, Done)],
    moves: &[Move],
    deads: &[DeadOp],
    durable: bool,
    bytes: &AtomicU64,
) -> anyhow::Result<()> {
    let mut txn = db.begin_write()?;
    txn.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    })?;
    let mut added = 0u64;
    for (table, record, _) in appends.iter().filter(|(t, _, _)| !t.is_empty()) {
        let mut t = txn.open_table(TableDefinition::<u64, &[u8]>::new(table))?;
        let (seq, value) = record.split_at(8);
        let seq = u64::from_be_bytes(seq.try_into()?);
        t.insert(seq, value)?;
        added += value.len() as u64;
    }
    let mut freed = 0u64;
    for (table, keys, f, _) in removes {
        let mut t = txn.open_table(TableDefinition::<u64, &[u8]>::new(table))?;
        for k in keys {
            t.remove(k)?;
        }
        freed += f;
    }
    for (table, quarantine, keys, _) in moves {
        let mut from = txn.open_table(TableDefinition::<u64, &[u8]>::new(table))?;
        let mut to = txn.open_table(TableDefinition::<u64, &[u8]>::new(quarantine))?;
        for k in keys {
            if let Some(record) = from.remove(k)? {
                let record = record.value().to_vec();
                freed += record.len() as u64;
                to.insert(k, record.as_slice())?;
            }
        }
    }
    for (dead, key, record, from, _) in deads {
        let mut t = txn.open_table(TableDefinition::<u64, &[u8]>::new(dead))?;
        t.insert(key, record.as_slice())?;
        added += record.len() as u64;
        if let Some((queue, k)) = from {
            let mut q = txn.open_table(TableDefinition::<u64, &[u8]>::new(queue))?;
            if let Some(old) = q.remove(k)? {
                freed += old.value().len() as u64;
            }
        }
    }
    txn.commit()?;
    bytes.fetch_add(added, Ordering::Relaxed);
    bytes.fetch_sub(freed.min(bytes.load(Ordering::Relaxed)), Ordering::Relaxed);
    Ok(())
}

/// Warns about what the drainers will not touch: queues of sinks no longer configured, and
/// quarantined records. Returns the former with their event counts.
fn report_leftovers(db: &Database, sinks: &[String]) -> anyhow::Result<Vec<(String, u64)>> {
    let txn = db.begin_read()?;
    let mut unconfigured = Vec::new();
    for handle in txn.list_tables()? {
        let name = handle.name().to_owned();
        let len = txn.open_untyped_table(handle)?.len()?;
        if let Some(sink) = name.strip_prefix(QUEUE_PREFIX) {
            if !sinks.iter().any(|s| s == sink) && len > 0 {
                tracing::warn!(
                    sink,
                    events = len,
                    "spool holds events for a sink that is no longer configured; they are kept, not published (configure the sink again to drain them)"
                );
                unconfigured.push((sink.to_owned(), len));
            }
        } else if let Some(sink) = name.strip_prefix(DEAD_PREFIX)
            && !sinks.iter().any(|s| s == sink)
            && len > 0
        {
            tracing::warn!(
                sink,
                events = len,
                "spool holds dead letters for a sink that is no longer configured; see hookbridge spool dead list"
            );
        } else if let Some(sink) = name.strip_prefix(QUARANTINE_PREFIX)
            && len > 0
        {
            tracing::warn!(sink, records = len, table = %name, "spool holds quarantined records that could not be read");
        }
    }
    unconfigured.sort();
    Ok(unconfigured)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_of_sinks_no_longer_configured_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            for (table, n) in [("spool:gone", 3), ("spool:kept", 1), ("spool:empty", 0)] {
                let mut t = txn
                    .open_table(TableDefinition::<u64, &[u8]>::new(table))
                    .unwrap();
                for k in 0..n {
                    t.insert(k, b"x".as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let spool = Spool::open(&path, &["kept".to_owned()], 1 << 20).unwrap();
        assert_eq!(spool.unconfigured(), [("gone".to_owned(), 3)]);
        assert_eq!(spool.depth("kept"), 1);
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_the_recovery_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.redb");
        std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
        let e = Spool::open(&path, &["a".to_owned()], 1 << 20)
            .err()
            .unwrap()
            .to_string();
        let p = path.display();
        assert!(e.starts_with(&format!("spool {p} is damaged")), "{e}");
        assert!(e.contains(&format!("mv {p} {p}.damaged")), "{e}");
    }

    #[test]
    fn a_file_in_use_is_an_error_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.redb");
        let _first = Spool::open(&path, &["a".to_owned()], 1 << 20).unwrap();
        let e = Spool::open(&path, &["a".to_owned()], 1 << 20)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("in use by another process"), "{e}");
    }
}
