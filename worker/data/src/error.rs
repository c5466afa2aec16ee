//! The one error type of the data crate.

use std::path::PathBuf;

/// Everything that can go wrong reading, preparing or loading a dataset.
///
/// Classification for the worker: [`DataError::is_retryable`] is true only for I/O
/// errors that may be transient (a flaky network file system); bad or missing data is
/// fatal for the cell.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("missing {what}: {path}")]
    Missing { what: String, path: PathBuf },
    #[error("bad format in {path}: {detail}")]
    Format { path: PathBuf, detail: String },
    #[error("cannot decode image {path}: {detail}")]
    Decode { path: PathBuf, detail: String },
    #[error("json error in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("manifest mismatch in {path}: {detail}")]
    Mismatch { path: PathBuf, detail: String },
    #[error("loader worker stopped: {0}")]
    LoaderStopped(String),
}

impl DataError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), source }
    }
    pub fn format(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        DataError::Format { path: path.into(), detail: detail.into() }
    }
    pub fn missing(what: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        DataError::Missing { what: what.into(), path: path.into() }
    }
    /// True for errors worth retrying on the same or another worker (transient I/O).
    pub fn is_retryable(&self) -> bool {
        match self {
            DataError::Io { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::InvalidData
            ),
            DataError::LoaderStopped(_) => true,
            _ => false,
        }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
