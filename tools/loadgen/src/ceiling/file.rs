//! The bare durable append standing in for a file sink in the one-process floor
//! (`http-ceiling --publish-file`): one writer thread, group commit (every body queued while
//! the last batch synced shares the next `write` + `fdatasync`), each publish answered once
//! its batch is synced. The least a durable file sink can do per event.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;

use tokio::sync::{mpsc, oneshot};

type Job = (bytes::Bytes, oneshot::Sender<bool>);

pub struct Appender {
    tx: mpsc::Sender<Job>,
}

impl Appender {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, mut rx) = mpsc::channel::<Job>(8192);
        std::thread::Builder::new()
            .name("floor-append".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(256 * 1024);
                let mut batch = Vec::new();
                while let Some(first) = rx.blocking_recv() {
                    let mut job = Some(first);
                    while let Some((body, done)) = job.take() {
                        buf.extend_from_slice(&body);
                        buf.push(b'\n');
                        batch.push(done);
                        job = rx.try_recv().ok();
                    }
                    let ok = file.write_all(&buf).and_then(|()| file.sync_data()).is_ok();
                    for done in batch.drain(..) {
                        let _gone = done.send(ok);
                    }
                    buf.clear();
                }
            })?;
        Ok(Self { tx })
    }

    /// Appends `body` as a line; whether it was written and synced.
    pub async fn append(&self, body: bytes::Bytes) -> bool {
        let (done, wait) = oneshot::channel();
        self.tx.send((body, done)).await.is_ok() && wait.await.unwrap_or(false)
    }
}
