//! The collector every config section reports into: errors and warnings, each message led by
//! the path of what it is about (`sources.x.verify.secrets[0]: …`), so a builder takes one
//! [`Scope`] instead of a path and two vectors. Also deserializes one section at a time, so a
//! serde error names its field too and one broken section does not hide the next one's errors.

use std::fmt::Display;

use serde::de::DeserializeOwned;

use super::env;

/// Everything found wrong (errors) or worth a loud line at startup (warnings), in the order
/// found.
#[derive(Debug, Default)]
pub struct Problems {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl Problems {
    /// A scope whose messages are about `path` (`"sources.x"`).
    pub fn at(&mut self, path: impl Into<String>) -> Scope<'_> {
        Scope {
            problems: self,
            path: path.into(),
        }
    }

    /// An error that already says where it is.
    pub fn error(&mut self, message: impl Into<String>) {
        self.errors.push(message.into());
    }

    /// A warning that already says where it is.
    pub fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    /// Deserializes the top-level section `name`; an absent or broken one is its default (a
    /// broken one recorded).
    pub fn section_or_default<T: DeserializeOwned + Default>(
        &mut self,
        name: &str,
        value: Option<toml::Value>,
    ) -> T {
        value
            .and_then(|v| self.at(name).section(v))
            .unwrap_or_default()
    }
}

/// The problems of one place in the file: `error("field", …)` records `"<path>.field: …"`.
pub struct Scope<'a> {
    problems: &'a mut Problems,
    path: String,
}

impl Scope<'_> {
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The scope of a field under this one: `<path>.<field>`.
    pub fn child(&mut self, field: &str) -> Scope<'_> {
        let path = format!("{}.{field}", self.path);
        Scope {
            problems: self.problems,
            path,
        }
    }

    /// The scope of one entry of a list: `<path>[<index>]`.
    pub fn item(&mut self, index: usize) -> Scope<'_> {
        let path = format!("{}[{index}]", self.path);
        Scope {
            problems: self.problems,
            path,
        }
    }

    /// Records `"<path>.<field>: <message>"`.
    pub fn error(&mut self, field: &str, message: impl Display) {
        self.problems
            .error(format!("{}.{field}: {message}", self.path));
    }

    /// Records `"<path>: <message>"`.
    pub fn error_here(&mut self, message: impl Display) {
        self.problems.error(format!("{}: {message}", self.path));
    }

    /// Records errors that start with the field they are about, relative to this path (what a
    /// verifier's constructor returns: `public_keys[0]: …`).
    pub fn errors_within(&mut self, errors: impl IntoIterator<Item = String>) {
        for e in errors {
            self.problems.error(format!("{}.{e}", self.path));
        }
    }

    /// `"<field>: must be greater than 0"` when `value` is zero.
    pub fn check_nonzero<T: Default + PartialEq>(&mut self, field: &str, value: T) {
        if value == T::default() {
            self.error(field, "must be greater than 0");
        }
    }

    /// Records the warning `"<path>.<subject>: <message>"`; the subject may carry the value
    /// (`timeout_ms = 3000`).
    pub fn warn(&mut self, subject: &str, message: impl Display) {
        self.problems
            .warn(format!("{}.{subject}: {message}", self.path));
    }

    /// The whole collector, for messages that are not about this path.
    pub fn problems(&mut self) -> &mut Problems {
        self.problems
    }

    /// Errors recorded so far, everywhere: a builder compares counts to know whether it added
    /// any.
    pub fn error_count(&self) -> usize {
        self.problems.errors.len()
    }

    /// Deserializes the value at this path, recording an error with its full path on failure.
    pub fn section<T: DeserializeOwned>(&mut self, value: toml::Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let at = if inner == "." || inner.is_empty() {
                    self.path.clone()
                } else {
                    format!("{}.{inner}", self.path)
                };
                // toml appends "in `path`" lines; the path is already in front of the message.
                let message = e.into_inner().to_string();
                let first = message.lines().next().unwrap_or_default().trim();
                self.problems
                    .error(format!("{at}: {}", env::redact_values(first)));
                None
            }
        }
    }
}
