//! `[audit]`: where the one-line-per-request audit log goes.

use std::path::PathBuf;

use super::problems::Problems;
use super::raw::{AuditOutput, RawAudit};

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub output: AuditOutput,
    pub path: Option<PathBuf>,
}

/// Reads and checks `[audit]` (stdout when absent).
pub fn load(problems: &mut Problems, value: Option<toml::Value>) -> AuditConfig {
    let raw: RawAudit = problems.section_or_default("audit", value);
    if raw.output == AuditOutput::File && raw.path.is_none() {
        problems
            .at("audit")
            .error("path", "required when output = \"file\"");
    }
    AuditConfig {
        output: raw.output,
        path: raw.path,
    }
}
