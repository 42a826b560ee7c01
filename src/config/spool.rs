//! `[spool]`: the local durable queue used when a broker does not confirm in time. On by
//! default when any sink is a broker, so it is settled once the sinks and sources are known.

use std::path::PathBuf;

use super::problems::Problems;
use super::raw::RawSpool;
use crate::plan::{AckMode, SourceSpec};
use crate::sink::spec::{SinkKind, SinkSpec};

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub path: PathBuf,
    pub max_bytes: u64,
}

/// The spool, `None` when disabled; a source acknowledged by the spool needs it.
pub fn build(
    problems: &mut Problems,
    raw: RawSpool,
    sinks: &[SinkSpec],
    sources: &[SourceSpec],
) -> Option<SpoolConfig> {
    let brokers = sinks
        .iter()
        .any(|s| !matches!(s.kind, SinkKind::File { .. }));
    let spool = raw.enabled.unwrap_or(brokers).then_some(SpoolConfig {
        path: raw.path,
        max_bytes: raw.max_bytes,
    });
    if spool.is_none() {
        for s in sources.iter().filter(|s| s.ack == AckMode::Spool) {
            problems.error(format!(
                "sources.{}.ack: \"spool\" needs the spool ([spool] enabled = true)",
                s.name
            ));
        }
    }
    spool
}
