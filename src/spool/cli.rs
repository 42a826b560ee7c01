//! `hookbridge spool …`: what an operator does with a stopped instance's spool file. Owns the
//! offline reads (`stats`, `list`, `export` of queued events with their original IDs; dead
//! letters listed with time and reason) and the moves: `drain --to-sink` of queued events and
//! `dead replay` of dead letters, each event removed only once the broker confirmed it.
//!
//! Every command first opens the file read-only, which redb refuses while another process holds
//! it (a running instance) and which never repairs or writes: a held, missing or damaged file is
//! reported with its own exit code ([`CliError::exit_code`]) and left exactly as it was.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata as _,
    StorageError, TableDefinition, TableHandle as _,
};

use super::{DEAD_PREFIX, QUARANTINE_PREFIX, QUEUE_PREFIX, record};
use crate::sink::{PublishError, Sinks};

/// Why a spool command could not run. Each has its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "spool {0} is held by another process (a running hookbridge?): stop it first; nothing was changed"
    )]
    Held(String),
    #[error("spool {0} does not exist")]
    Missing(String),
    #[error(
        "spool {path} is damaged or not a spool file ({detail}); nothing was changed. Keep a copy \
         before anything else touches it"
    )]
    Damaged { path: String, detail: String },
    /// Not closed cleanly (internal: the write open recovers it, as `serve` would).
    #[error("spool was not closed cleanly")]
    Unclean,
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// sysexits.h: EX_TEMPFAIL (stop the instance and retry), EX_NOINPUT, EX_DATAERR, EX_USAGE,
    /// EX_UNAVAILABLE (a broker refused or was away: something is left in the spool).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Held(_) => 75,
            Self::Missing(_) => 66,
            Self::Damaged { .. } | Self::Unclean => 65,
            Self::Usage(_) => 64,
            Self::Failed(_) => 69,
        }
    }
}

fn storage(path: &Path, e: impl std::fmt::Display) -> CliError {
    CliError::Damaged {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// Opens the file without changing it: read-only, no repair.
fn open_read_only(path: &Path) -> Result<redb::ReadOnlyDatabase, CliError> {
    let p = path.display().to_string();
    if !path.exists() {
        return Err(CliError::Missing(p));
    }
    match Database::builder().open_read_only(path) {
        Ok(db) => Ok(db),
        Err(DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch) => {
            Err(CliError::Held(p))
        }
        Err(DatabaseError::RepairAborted) => Err(CliError::Unclean),
        Err(DatabaseError::Storage(StorageError::Io(e)))
            if e.kind() != std::io::ErrorKind::InvalidData =>
        {
            Err(CliError::Failed(format!("cannot open spool {p}: {e}")))
        }
        Err(e) => Err(storage(path, e)),
    }
}

/// Opens the file for writing, after the read-only open said it is a spool no one holds. A
/// file not closed cleanly is recovered to its last commit here, exactly as `serve` would.
fn open_for_write(path: &Path) -> Result<Database, CliError> {
    match open_read_only(path) {
        Ok(db) => drop(db),
        Err(CliError::Unclean) => {}
        Err(e) => return Err(e),
    }
    match Database::builder().open(path) {
        Ok(db) => Ok(db),
        Err(DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch) => {
            Err(CliError::Held(path.display().to_string()))
        }
        Err(e) => Err(storage(path, e)),
    }
}

/// The sinks that have a table with `prefix` in the file, in name order.
fn sinks_with<D: ReadableDatabase>(
    db: &D,
    path: &Path,
    prefix: &str,
) -> Result<Vec<String>, CliError> {
    let txn = db.begin_read().map_err(|e| storage(path, e))?;
    let mut names: Vec<String> = txn
        .list_tables()
        .map_err(|e| storage(path, e))?
        .filter_map(|h| h.name().strip_prefix(prefix).map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// Milliseconds since the epoch as RFC 3339, UTC.
fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// `spool dead list`: one line per dead letter (sink, key, time, ID, type, source, reason).
///
/// # Errors
/// See [`CliError`].
pub fn dead_list(path: &Path, out: &mut dyn Write) -> Result<u64, CliError> {
    let db = open_for_write(path)?;
    let mut n = 0;
    for sink in sinks_with(&db, path, DEAD_PREFIX)? {
        let table = format!("{DEAD_PREFIX}{sink}");
        let txn = db.begin_read().map_err(|e| storage(path, e))?;
        let t = txn
            .open_table(TableDefinition::<u64, &[u8]>::new(&table))
            .map_err(|e| storage(path, e))?;
        for entry in t.iter().map_err(|e| storage(path, e))? {
            let (k, v) = entry.map_err(|e| storage(path, e))?;
            n += 1;
            let line = match record::decode_dead(v.value()) {
                Some(d) => format!(
                    "{sink}\t{}\t{}\t{}\t{}\t{}\t{}",
                    k.value(),
                    rfc3339(d.at_ms),
                    d.envelope.id().as_str(),
                    d.envelope.event_type(),
                    d.envelope.source_name(),
                    d.reason
                ),
                None => format!("{sink}\t{}\tunreadable record", k.value()),
            };
            writeln!(out, "{line}").map_err(|e| CliError::Failed(e.to_string()))?;
        }
    }
    Ok(n)
}

/// What a replay or a drain did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Moved {
    pub published: u64,
    pub left: u64,
}

/// Longest a command waits for a broker sink to connect before it gives up.
const CONNECT_WAIT: Duration = Duration::from_secs(15);
/// Longest a command waits for one confirmation.
const PUBLISH_WAIT: Duration = Duration::from_secs(15);

/// `spool dead replay`: publishes every dead letter (of `only`, or of every sink) to its sink,
/// in order, and removes each once the broker confirmed it, durably (one fsync'd commit each:
/// a crash republishes at most the one in flight). One the sink still refuses stays, with its
/// new reason.
///
/// # Errors
/// See [`CliError`]; a sink not configured is [`CliError::Usage`].
pub async fn dead_replay(
    path: &Path,
    sinks: &Sinks,
    only: Option<&str>,
    out: &mut dyn Write,
) -> Result<Moved, CliError> {
    let db = open_for_write(path)?;
    let mut moved = Moved::default();
    let names: Vec<String> = sinks_with(&db, path, DEAD_PREFIX)?
        .into_iter()
        .filter(|s| only.is_none_or(|o| o == s))
        .collect();
    for name in names {
        let table = format!("{DEAD_PREFIX}{name}");
        let def = TableDefinition::<u64, &[u8]>::new(&table);
        let entries = read_table(&db, path, &table)?;
        if entries.is_empty() {
            continue;
        }
        let sink = sinks.get(&name).ok_or_else(|| {
            CliError::Usage(format!(
                "sink {name} has {} dead letter(s) but is not configured",
                entries.len()
            ))
        })?;
        wait_ready(sink, &name).await?;
        for (key, bytes) in entries {
            let Some(dead) = record::decode_dead(&bytes) else {
                writeln!(out, "{name}\t{key}\tunreadable record, left").ok();
                moved.left += 1;
                continue;
            };
            let id = dead.envelope.id().as_str().to_owned();
            match publish_then_remove(&db, path, def, key, sink, &dead.envelope).await? {
                Ok(()) => {
                    moved.published += 1;
                    writeln!(out, "{name}\t{id}\treplayed").ok();
                }
                Err(e) => {
                    moved.left += 1;
                    writeln!(out, "{name}\t{id}\tleft: {e}").ok();
                }
            }
        }
    }
    Ok(moved)
}

/// Publishes `env` and waits for the broker's confirmation; only then removes `key` from
/// `table`, in a commit of its own (fsync'd). The inner error: not published, nothing removed.
async fn publish_then_remove(
    db: &Database,
    path: &Path,
    table: TableDefinition<'_, u64, &[u8]>,
    key: u64,
    sink: &crate::sink::Sink,
    env: &crate::normalize::Envelope,
) -> Result<Result<(), PublishError>, CliError> {
    let result = tokio::time::timeout(PUBLISH_WAIT, sink.publish(env))
        .await
        .unwrap_or_else(|_| Err(PublishError::Unavailable("no confirmation".into())));
    if result.is_ok() {
        commit(db, path, |txn| {
            txn.open_table(table)?.remove(key)?;
            Ok(())
        })?;
    }
    Ok(result)
}

async fn wait_ready(sink: &crate::sink::Sink, name: &str) -> Result<(), CliError> {
    let until = tokio::time::Instant::now() + CONNECT_WAIT;
    while !sink.is_ready() {
        if tokio::time::Instant::now() >= until {
            return Err(CliError::Failed(format!(
                "sink {name} did not connect within {}s; nothing was changed for it",
                CONNECT_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// One fsync'd write transaction.
fn commit(
    db: &Database,
    path: &Path,
    f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
) -> Result<(), CliError> {
    let txn = db.begin_write().map_err(|e| storage(path, e))?;
    f(&txn).map_err(|e| storage(path, e))?;
    txn.commit().map_err(|e| storage(path, e))
}

/// Counts the dead letters of every sink in the file (for tests and `stats`).
///
/// # Errors
/// See [`CliError`].
pub fn dead_counts(path: &Path) -> Result<Vec<(String, u64)>, CliError> {
    let db = open_for_write(path)?;
    let txn = db.begin_read().map_err(|e| storage(path, e))?;
    let mut out = Vec::new();
    for sink in sinks_with(&db, path, DEAD_PREFIX)? {
        let table = format!("{DEAD_PREFIX}{sink}");
        let t = txn
            .open_table(TableDefinition::<u64, &[u8]>::new(&table))
            .map_err(|e| storage(path, e))?;
        out.push((sink, t.len().map_err(|e| storage(path, e))?));
    }
    Ok(out)
}

/// Every record of one table, in key order (empty when the table does not exist).
fn read_table(db: &Database, path: &Path, table: &str) -> Result<Vec<(u64, Vec<u8>)>, CliError> {
    let txn = db.begin_read().map_err(|e| storage(path, e))?;
    let t = match txn.open_table(TableDefinition::<u64, &[u8]>::new(table)) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(storage(path, e)),
    };
    let mut out = Vec::new();
    for entry in t.iter().map_err(|e| storage(path, e))? {
        let (k, v) = entry.map_err(|e| storage(path, e))?;
        out.push((k.value(), v.value().to_vec()));
    }
    Ok(out)
}

/// The CloudEvent's `time` (when hookbridge received it, which is when it was spooled, give or
/// take the ack deadline).
fn event_time(env: &crate::normalize::Envelope) -> String {
    serde_json::from_slice::<serde_json::Value>(env.json())
        .ok()
        .and_then(|v| v.get("time").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

fn write_line(out: &mut dyn Write, line: &str) -> Result<(), CliError> {
    writeln!(out, "{line}").map_err(|e| CliError::Failed(e.to_string()))
}

/// `spool stats`: per sink, events queued, their bytes, the oldest one's time, dead letters and
/// quarantined records.
///
/// # Errors
/// See [`CliError`].
pub fn stats(path: &Path, out: &mut dyn Write) -> Result<(), CliError> {
    let db = open_for_write(path)?;
    let mut names = sinks_with(&db, path, QUEUE_PREFIX)?;
    names.extend(sinks_with(&db, path, DEAD_PREFIX)?);
    names.extend(sinks_with(&db, path, QUARANTINE_PREFIX)?);
    names.sort();
    names.dedup();
    write_line(out, "sink\tqueued\tbytes\toldest\tdead\tquarantined")?;
    for sink in names {
        let queued = read_table(&db, path, &format!("{QUEUE_PREFIX}{sink}"))?;
        let bytes: usize = queued.iter().map(|(_, v)| v.len()).sum();
        let oldest = queued
            .iter()
            .find_map(|(_, v)| record::decode(v))
            .map_or_else(|| "-".into(), |e| event_time(&e));
        let dead = read_table(&db, path, &format!("{DEAD_PREFIX}{sink}"))?.len();
        let quarantined = read_table(&db, path, &format!("{QUARANTINE_PREFIX}{sink}"))?.len();
        write_line(
            out,
            &format!(
                "{sink}\t{}\t{bytes}\t{oldest}\t{dead}\t{quarantined}",
                queued.len()
            ),
        )?;
    }
    Ok(())
}

/// `spool list`: one line per queued event: sink, key, event ID, type, source, time.
///
/// # Errors
/// See [`CliError`].
pub fn list(path: &Path, out: &mut dyn Write) -> Result<(), CliError> {
    let db = open_for_write(path)?;
    for sink in sinks_with(&db, path, QUEUE_PREFIX)? {
        for (key, v) in read_table(&db, path, &format!("{QUEUE_PREFIX}{sink}"))? {
            let line = match record::decode(&v) {
                Some(e) => format!(
                    "{sink}\t{key}\t{}\t{}\t{}\t{}",
                    e.id().as_str(),
                    e.event_type(),
                    e.source_name(),
                    event_time(&e)
                ),
                None => format!("{sink}\t{key}\tunreadable record"),
            };
            write_line(out, &line)?;
        }
    }
    Ok(())
}

/// `spool export`: every queued event as its CloudEvent (structured JSON, original ID), one per
/// line, byte for byte as it would be published. Returns how many; unreadable records are
/// skipped and counted in the second number.
///
/// # Errors
/// See [`CliError`].
pub fn export(path: &Path, out: &mut dyn Write) -> Result<(u64, u64), CliError> {
    let db = open_for_write(path)?;
    let (mut n, mut skipped) = (0, 0);
    for sink in sinks_with(&db, path, QUEUE_PREFIX)? {
        for (_, v) in read_table(&db, path, &format!("{QUEUE_PREFIX}{sink}"))? {
            match record::decode(&v) {
                Some(e) => {
                    out.write_all(e.json())
                        .and_then(|()| out.write_all(b"\n"))
                        .map_err(|e| CliError::Failed(e.to_string()))?;
                    n += 1;
                }
                None => skipped += 1,
            }
        }
    }
    Ok((n, skipped))
}

/// `spool drain --to-sink NAME`: publishes every queued event (of `from`, or of every sink) to
/// the sink `to`, in order, removing each once it confirmed, durably. One it refuses or does
/// not confirm stays queued.
///
/// # Errors
/// See [`CliError`]; `to` not configured is [`CliError::Usage`].
pub async fn drain(
    path: &Path,
    sinks: &Sinks,
    to: &str,
    from: Option<&str>,
    out: &mut dyn Write,
) -> Result<Moved, CliError> {
    let sink = sinks
        .get(to)
        .ok_or_else(|| CliError::Usage(format!("no sink named {to} in the config")))?;
    let db = open_for_write(path)?;
    let names: Vec<String> = sinks_with(&db, path, QUEUE_PREFIX)?
        .into_iter()
        .filter(|s| from.is_none_or(|f| f == s))
        .collect();
    let mut moved = Moved::default();
    let mut connected = false;
    for name in names {
        let table = format!("{QUEUE_PREFIX}{name}");
        let def = TableDefinition::<u64, &[u8]>::new(&table);
        for (key, v) in read_table(&db, path, &table)? {
            let Some(env) = record::decode(&v) else {
                write_line(out, &format!("{name}\t{key}\tunreadable record, left"))?;
                moved.left += 1;
                continue;
            };
            if !connected {
                wait_ready(sink, to).await?;
                connected = true;
            }
            match publish_then_remove(&db, path, def, key, sink, &env).await? {
                Ok(()) => {
                    moved.published += 1;
                    write_line(
                        out,
                        &format!("{name}\t{}\tpublished to {to}", env.id().as_str()),
                    )?;
                }
                Err(e) => {
                    moved.left += 1;
                    write_line(out, &format!("{name}\t{}\tleft: {e}", env.id().as_str()))?;
                }
            }
        }
    }
    Ok(moved)
}
