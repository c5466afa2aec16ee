//! What a CLI command can fail with, and the exit code each failure maps to.

use std::path::PathBuf;

use crate::sweepfile::SweepFileError;

/// Exit code: bad input (sweep file, arguments, unknown sweep).
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code: the coordinator, Redis or a process `local` needs is unavailable.
pub const EXIT_UNAVAILABLE: u8 = 3;
/// Exit code: the sweep ended and some cells failed for good (`watch`, `local`).
pub const EXIT_CELLS_FAILED: u8 = 4;
/// Exit code: anything else.
pub const EXIT_OTHER: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    SweepFile(#[from] SweepFileError),
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A sweep file over [`tsweep_proto::limits::MAX_SWEEP_FILE_BYTES`] (read no further).
    #[error("{path}: the file is larger than {limit} bytes, the limit for a sweep file")]
    FileTooLarge { path: PathBuf, limit: usize },
    /// A bad argument or an answer of the coordinator that says the request was wrong.
    #[error("{0}")]
    BadInput(String),
    /// The coordinator (or something `local` starts) cannot be reached or is not ready.
    #[error("{0}")]
    Unavailable(String),
    /// The sweep ended with cells that failed for good.
    #[error("sweep {sweep} ended with {failed} failed cell(s){}", if *cancelled > 0 { format!(" and {cancelled} cancelled") } else { String::new() })]
    CellsFailed { sweep: String, failed: u64, cancelled: u64 },
    #[error("{0}")]
    Other(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::SweepFile(_)
            | CliError::ReadFile { .. }
            | CliError::FileTooLarge { .. }
            | CliError::BadInput(_) => EXIT_BAD_INPUT,
            CliError::Unavailable(_) => EXIT_UNAVAILABLE,
            CliError::CellsFailed { .. } => EXIT_CELLS_FAILED,
            CliError::Other(_) => EXIT_OTHER,
        }
    }

    /// The same failure (same exit code) with `note` added to its message.
    pub fn with_note(self, note: &str) -> CliError {
        match self {
            CliError::BadInput(m) => CliError::BadInput(format!("{m}; {note}")),
            CliError::Unavailable(m) => CliError::Unavailable(format!("{m}; {note}")),
            CliError::Other(m) => CliError::Other(format!("{m}; {note}")),
            other @ (CliError::SweepFile(_)
            | CliError::ReadFile { .. }
            | CliError::FileTooLarge { .. }
            | CliError::CellsFailed { .. }) => {
                let code = other.exit_code();
                let message = format!("{other}; {note}");
                match code {
                    EXIT_BAD_INPUT => CliError::BadInput(message),
                    EXIT_UNAVAILABLE => CliError::Unavailable(message),
                    _ => CliError::Other(message),
                }
            }
        }
    }

    /// The reason on one line (no newlines, no trailing period).
    pub fn one_line(&self) -> String {
        one_line(&self.to_string())
    }

    /// Maps a gRPC status from the coordinator by its code (never by its text).
    pub fn from_status(what: &str, status: tonic::Status) -> CliError {
        use tonic::Code;
        let message = format!("{what}: {}", one_line(status.message()));
        match status.code() {
            Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::OutOfRange => CliError::BadInput(message),
            Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted => {
                CliError::Unavailable(message)
            }
            Code::Unauthenticated | Code::PermissionDenied => {
                CliError::BadInput(format!("{message} (check --token / user_token / auth_token)"))
            }
            _ => CliError::Other(message),
        }
    }
}

/// Joins lines with "; " and trims a trailing period.
pub fn one_line(text: &str) -> String {
    let joined = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
    joined.trim_end_matches('.').to_string()
}
