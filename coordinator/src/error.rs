//! The coordinator's service error and its ONE mapping to gRPC status codes.
//!
//! | variant                         | code                |
//! |---------------------------------|---------------------|
//! | `InvalidArgument`, `SweepFile`  | INVALID_ARGUMENT    |
//! | `SweepNotFound`, `TaskNotFound` | NOT_FOUND           |
//! | `ProtocolMismatch`              | FAILED_PRECONDITION |
//! | `SweepUnfinished` (delete)      | FAILED_PRECONDITION |
//! | `Precondition` (being deleted, another submission) | FAILED_PRECONDITION |
//! | `Unavailable` (Redis away)      | UNAVAILABLE         |
//! | `RedisFull` (`maxmemory`)       | RESOURCE_EXHAUSTED  |
//! | `Unauthenticated`               | UNAUTHENTICATED     |
//! | `WorkerUnregistered`, `WorkerSecretMismatch` | UNAUTHENTICATED + trailer `tsweep-worker-refusal` |
//! | `WorkerIdInUse` (register)      | ALREADY_EXISTS      |
//! | `Internal` (corrupt record ...) | INTERNAL            |
//!
//! UNAVAILABLE is the only retryable code: clients (worker agent, CLI) back off and repeat.

use crate::store::StoreError;
use crate::sweepfile::SweepFileError;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The sweep file was refused; its message (file, line, field) is passed on intact.
    #[error("{0}")]
    SweepFile(#[from] SweepFileError),
    #[error("sweep {sweep} not found")]
    SweepNotFound { sweep: String },
    #[error("sweep {sweep} has no task {task_id}")]
    TaskNotFound { sweep: String, task_id: String },
    #[error(
        "protocol version mismatch: worker speaks {worker}, coordinator speaks {coordinator} \
         (upgrade the older side)"
    )]
    ProtocolMismatch { worker: u32, coordinator: u32 },
    /// The sweep still has work: delete it after `tsweep cancel` (or with `--force`).
    #[error("{0}")]
    SweepUnfinished(String),
    /// The sweep is in a state that refuses the call now (a delete not finished, another
    /// submission under way); the message says what to run.
    #[error("{0}")]
    Precondition(String),
    /// Redis is unreachable (restarting, network); retry after a short wait.
    #[error("state store unavailable, retry later: {0}")]
    Unavailable(String),
    /// Redis refuses writes: its memory reached `maxmemory`. Retrying does not help until
    /// memory is freed (delete sweeps) or `maxmemory` raised.
    #[error(
        "redis is out of memory (maxmemory reached; nothing of this call was written by the refused step): \
         delete sweeps you no longer need or raise maxmemory, then run the command again ({0})"
    )]
    RedisFull(String),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The worker id has no live registration: the worker registers again.
    #[error("worker {worker_id} is not registered (or its registration lapsed): register again")]
    WorkerUnregistered { worker_id: String },
    /// The call carried another secret than the worker id's registration.
    #[error("worker {worker_id}: the worker secret does not match its registration")]
    WorkerSecretMismatch { worker_id: String },
    /// RegisterWorker for an id another live process holds.
    #[error(
        "worker id {worker_id} is registered by another live worker; it lapses {expires_in_ms} ms after that \
         worker's last call (give each worker its own id)"
    )]
    WorkerIdInUse { worker_id: String, expires_in_ms: u64 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl CoordinatorError {
    pub fn code(&self) -> tonic::Code {
        match self {
            CoordinatorError::InvalidArgument(_) | CoordinatorError::SweepFile(_) => tonic::Code::InvalidArgument,
            CoordinatorError::SweepNotFound { .. } | CoordinatorError::TaskNotFound { .. } => tonic::Code::NotFound,
            CoordinatorError::ProtocolMismatch { .. }
            | CoordinatorError::SweepUnfinished(_)
            | CoordinatorError::Precondition(_) => tonic::Code::FailedPrecondition,
            CoordinatorError::Unavailable(_) => tonic::Code::Unavailable,
            CoordinatorError::RedisFull(_) => tonic::Code::ResourceExhausted,
            CoordinatorError::Unauthenticated(_)
            | CoordinatorError::WorkerUnregistered { .. }
            | CoordinatorError::WorkerSecretMismatch { .. } => tonic::Code::Unauthenticated,
            CoordinatorError::WorkerIdInUse { .. } => tonic::Code::AlreadyExists,
            CoordinatorError::Internal(_) => tonic::Code::Internal,
        }
    }

    /// The same error (same code) with `note` added to its message.
    pub fn with_note(self, note: &str) -> CoordinatorError {
        let add = |message: String| format!("{message}; {note}");
        match self {
            CoordinatorError::InvalidArgument(m) => CoordinatorError::InvalidArgument(add(m)),
            CoordinatorError::SweepUnfinished(m) => CoordinatorError::SweepUnfinished(add(m)),
            CoordinatorError::Precondition(m) => CoordinatorError::Precondition(add(m)),
            CoordinatorError::Unavailable(m) => CoordinatorError::Unavailable(add(m)),
            CoordinatorError::RedisFull(m) => CoordinatorError::RedisFull(add(m)),
            CoordinatorError::Unauthenticated(m) => CoordinatorError::Unauthenticated(add(m)),
            CoordinatorError::Internal(m) => CoordinatorError::Internal(add(m)),
            other @ (CoordinatorError::SweepFile(_)
            | CoordinatorError::SweepNotFound { .. }
            | CoordinatorError::TaskNotFound { .. }
            | CoordinatorError::ProtocolMismatch { .. }
            | CoordinatorError::WorkerUnregistered { .. }
            | CoordinatorError::WorkerSecretMismatch { .. }
            | CoordinatorError::WorkerIdInUse { .. }) => other,
        }
    }

    /// The typed refusal a worker reads from the status (see `tsweep_proto::auth`).
    pub fn worker_refusal(&self) -> Option<tsweep_proto::auth::WorkerRefusal> {
        use tsweep_proto::auth::WorkerRefusal;
        match self {
            CoordinatorError::WorkerUnregistered { .. } => Some(WorkerRefusal::Unregistered),
            CoordinatorError::WorkerSecretMismatch { .. } => Some(WorkerRefusal::WrongSecret),
            _ => None,
        }
    }

    /// Whether the caller may repeat the same call after a wait.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CoordinatorError::Unavailable(_))
    }
}

impl From<StoreError> for CoordinatorError {
    fn from(error: StoreError) -> Self {
        if error.is_retryable() {
            return CoordinatorError::Unavailable(error.to_string());
        }
        if error.is_redis_full() {
            return CoordinatorError::RedisFull(error.to_string());
        }
        match error {
            StoreError::SweepNotFound { sweep } => CoordinatorError::SweepNotFound { sweep },
            StoreError::TaskNotFound { sweep, task_id } => CoordinatorError::TaskNotFound { sweep, task_id },
            StoreError::InvalidArgument(message) => CoordinatorError::InvalidArgument(message),
            unfinished @ StoreError::SweepUnfinished { .. } => {
                CoordinatorError::SweepUnfinished(unfinished.to_string())
            }
            refused @ (StoreError::SweepDeleting { .. } | StoreError::SubmitSuperseded { .. }) => {
                CoordinatorError::Precondition(refused.to_string())
            }
            other => CoordinatorError::Internal(other.to_string()),
        }
    }
}

impl From<tsweep_proto::limits::LimitError> for CoordinatorError {
    fn from(error: tsweep_proto::limits::LimitError) -> Self {
        CoordinatorError::InvalidArgument(error.to_string())
    }
}

impl From<CoordinatorError> for tonic::Status {
    fn from(error: CoordinatorError) -> Self {
        let code = error.code();
        match code {
            tonic::Code::Internal => tracing::error!(%error, "internal error answered"),
            // The readiness loop reports the outage once; each refused call is detail.
            tonic::Code::Unavailable => tracing::debug!(%error, "store unavailable"),
            tonic::Code::ResourceExhausted => tracing::warn!(%error, "redis is full"),
            _ => tracing::debug!(%error, ?code, "call refused"),
        }
        match error.worker_refusal() {
            Some(refusal) => refusal.status(error.to_string()),
            None => tonic::Status::new(code, error.to_string()),
        }
    }
}

/// Refuses a worker whose protocol version differs from ours.
pub fn check_protocol(worker: u32) -> Result<(), CoordinatorError> {
    let coordinator = tsweep_proto::PROTOCOL_VERSION;
    if worker == coordinator {
        Ok(())
    } else {
        Err(CoordinatorError::ProtocolMismatch { worker, coordinator })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_maps_to_its_code() {
        let cases = [
            (CoordinatorError::InvalidArgument("x".into()), tonic::Code::InvalidArgument),
            (CoordinatorError::SweepNotFound { sweep: "s".into() }, tonic::Code::NotFound),
            (CoordinatorError::ProtocolMismatch { worker: 9, coordinator: 1 }, tonic::Code::FailedPrecondition),
            (CoordinatorError::Unavailable("down".into()), tonic::Code::Unavailable),
            (CoordinatorError::Unauthenticated("no".into()), tonic::Code::Unauthenticated),
            (CoordinatorError::SweepUnfinished("busy".into()), tonic::Code::FailedPrecondition),
            (CoordinatorError::Precondition("deleting".into()), tonic::Code::FailedPrecondition),
            (CoordinatorError::RedisFull("oom".into()), tonic::Code::ResourceExhausted),
            (CoordinatorError::WorkerIdInUse { worker_id: "w".into(), expires_in_ms: 9 }, tonic::Code::AlreadyExists),
        ];
        for (error, code) in cases {
            assert_eq!(tonic::Status::from(error).code(), code);
        }
        use tsweep_proto::auth::WorkerRefusal;
        let unregistered = tonic::Status::from(CoordinatorError::WorkerUnregistered { worker_id: "w".into() });
        assert_eq!(WorkerRefusal::of(&unregistered), Some(WorkerRefusal::Unregistered));
        let wrong = tonic::Status::from(CoordinatorError::WorkerSecretMismatch { worker_id: "w".into() });
        assert_eq!(WorkerRefusal::of(&wrong), Some(WorkerRefusal::WrongSecret));
        assert_eq!(WorkerRefusal::of(&tonic::Status::from(CoordinatorError::Unauthenticated("x".into()))), None);
    }

    #[test]
    fn protocol_mismatch_names_both_versions() {
        let status = tonic::Status::from(check_protocol(99).unwrap_err());
        assert!(status.message().contains("99"), "{}", status.message());
        assert!(status.message().contains(&tsweep_proto::PROTOCOL_VERSION.to_string()));
    }

    #[test]
    fn sweep_file_message_is_kept_intact() {
        let file_error = SweepFileError::EmptyGrid { file: "sweep.toml".into(), reason: "no models".into() };
        let message = file_error.to_string();
        let status = tonic::Status::from(CoordinatorError::from(file_error));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), message);
    }
}
