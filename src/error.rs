//! Typed errors raised at start-up and at the edges. Per-record problems are `ingest::Reject`, counted, not raised.

use std::path::PathBuf;

/// A configuration problem, with the key path that caused it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// A key is invalid (`key` is its path, e.g. `window.slide`).
    #[error("invalid config{}: {reason}", if key.is_empty() { String::new() } else { format!(" key `{key}`") })]
    Invalid { key: String, reason: String },
    /// The same, located in a file.
    #[error("{path}: {inner}")]
    InFile { path: PathBuf, inner: Box<ConfigError> },
}

impl ConfigError {
    /// Attaches the file the problem was found in.
    pub fn in_file(self, path: &std::path::Path) -> ConfigError {
        ConfigError::InFile {
            path: path.to_owned(),
            inner: Box::new(self),
        }
    }
}

/// A registry file (sensors, stations) that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {entry}: {problem}")]
pub struct RegistryError {
    /// The file.
    pub file: PathBuf,
    /// Which entry (`entry 3 (id "bund-cam-07")`, or `the file` for whole-file problems).
    pub entry: String,
    /// What is wrong, and how to fix it.
    pub problem: String,
}

/// Errors of the crate's long-running parts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Start-up configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A registry file.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Reading or writing a file.
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// Building Arrow batches.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
