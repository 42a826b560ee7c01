//! The embedded default sink: CloudEvents appended to a JSON Lines file, fsync'd before the
//! 2xx. Line breaks inside an event (a pretty-printed provider body) become spaces. A single
//! writer thread does group commit: every event that arrived while the previous batch was
//! syncing shares the next `write` + `fdatasync`, so throughput scales with load instead of
//! being capped at one fsync per request.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::PublishError;
use crate::normalize::Envelope;

/// Most events written per fsync; bounds the latency one batch adds to the next.
const MAX_BATCH: usize = 1024;
/// Bound on events waiting for the writer (backpressure instead of unbounded memory).
const QUEUE: usize = 8192;

type Job = (Bytes, oneshot::Sender<Result<(), PublishError>>);

pub struct FileSink {
    tx: mpsc::Sender<Job>,
    healthy: Arc<AtomicBool>,
}

impl FileSink {
    /// # Errors
    /// When the file or its directory cannot be created or opened for appending.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {} for appending", path.display()))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let healthy = Arc::new(AtomicBool::new(true));
        let h = Arc::clone(&healthy);
        std::thread::Builder::new()
            .name("file-sink".into())
            .spawn(move || writer(file, rx, &h))
            .context("spawning the file sink writer")?;
        Ok(Self { tx, healthy })
    }

    pub async fn publish(&self, envelope: &Envelope) -> Result<(), PublishError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((envelope.json().clone(), done))
            .await
            .map_err(|_| PublishError::Unavailable("file sink writer stopped".into()))?;
        wait.await
            .map_err(|_| PublishError::Unavailable("file sink writer stopped".into()))?
    }

    pub fn is_ready(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.tx.is_closed()
    }

    /// Waits until every accepted event has been synced: the writer answers jobs in order, so
    /// a sentinel job completing means all before it did.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send((Bytes::new(), done)).await.is_ok() {
            let _ignored = wait.await;
        }
    }
}

fn writer(mut file: File, mut rx: mpsc::Receiver<Job>, healthy: &AtomicBool) {
    let mut buf = Vec::with_capacity(256 * 1024);
    let mut batch: Vec<oneshot::Sender<Result<(), PublishError>>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        let mut job = Some(first);
        while let Some((line, done)) = job.take() {
            if !line.is_empty() {
                // JSON Lines: a raw CR/LF in valid JSON text can only be insignificant whitespace
                // (strings must escape them), so replacing it with a space keeps the event
                // identical as JSON. Brokers get the exact bytes; this file gets one line each.
                buf.extend(
                    line.iter()
                        .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
                );
                buf.push(b'\n');
            }
            batch.push(done);
            if batch.len() < MAX_BATCH {
                job = rx.try_recv().ok();
            }
        }
        let result = file.write_all(&buf).and_then(|()| file.sync_data());
        healthy.store(result.is_ok(), Ordering::Relaxed);
        let outcome = result.map_err(|e| {
            tracing::error!(error = %e, "file sink write failed");
            PublishError::Unavailable(format!("file sink write failed: {}", e.kind()))
        });
        for done in batch.drain(..) {
            let _receiver_gone = done.send(outcome.clone());
        }
        buf.clear();
    }
}
