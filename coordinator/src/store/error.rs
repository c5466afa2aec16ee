//! Store errors, classified by type: [`StoreError::is_retryable`] says whether the caller
//! may try the same call again (Redis restarting, connection dropped, timeout) or must not
//! (bad argument, corrupt record, protocol error).

use redis::{ErrorKind, RetryMethod, ServerErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A Redis command failed; see [`StoreError::is_retryable`].
    #[error("redis {operation}: {source}")]
    Redis {
        operation: &'static str,
        #[source]
        source: redis::RedisError,
    },
    /// The Redis URL and TLS files do not make a client (the message names the setting).
    #[error("redis settings: {0}")]
    Settings(#[from] tsweep_redis::RedisClientError),
    /// The Redis server runs in cluster mode, which tsweep does not support (one primary,
    /// optionally with replicas and a fail-over manager, holds all state).
    #[error(
        "redis runs in cluster mode (cluster_enabled:1): tsweep needs one redis primary (standalone, optionally \
         with replicas), not Redis Cluster"
    )]
    ClusterMode,
    /// The sweep is not known.
    #[error("sweep {sweep} not found")]
    SweepNotFound { sweep: String },
    /// The sweep has no task of that id.
    #[error("sweep {sweep} has no task {task_id}")]
    TaskNotFound { sweep: String, task_id: String },
    /// The sweep still has work and was not cancelled: deleting it is refused.
    #[error(
        "sweep {sweep} has unfinished work ({pending} pending, {leased} leased, {running} running, \
         {selections} selection(s) waiting): run `tsweep cancel {sweep}` first, or delete with --force \
         (cancels, then deletes)"
    )]
    SweepUnfinished { sweep: String, pending: u64, leased: u64, running: u64, selections: u64 },
    /// A delete of the sweep began and has not finished: it must be finished (`tsweep
    /// delete` again) before the sweep can be submitted again.
    #[error(
        "sweep {sweep} is being deleted (a delete has not finished): run `tsweep delete {sweep}` to finish it first"
    )]
    SweepDeleting { sweep: String },
    /// Another submission of the sweep (another file, or other flags) set its own submit
    /// marker while this one was landing its batches.
    #[error(
        "another submission of sweep {sweep} (another file or other flags) started while this one was being written; \
         submit again to finish yours"
    )]
    SubmitSuperseded { sweep: String },
    /// A caller passed something the store refuses (bad sweep name, empty task id, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A record in Redis does not have the shape the store wrote (key and field named).
    #[error("corrupt record {key} field {field}: {detail}")]
    Corrupt { key: String, field: String, detail: String },
    /// JSON encoding of a result or spec failed.
    #[error("json of {what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    pub(crate) fn redis(operation: &'static str) -> impl FnOnce(redis::RedisError) -> StoreError {
        move |source| StoreError::Redis { operation, source }
    }

    /// Redis refused a write because its memory reached `maxmemory` (the `OOM` error
    /// code). Not retryable: only freeing memory (deleting sweeps) or a larger
    /// `maxmemory` helps. A script that met it wrote nothing (Redis refuses a script's
    /// first write, never one in the middle).
    pub fn is_redis_full(&self) -> bool {
        match self {
            StoreError::Redis { source, .. } => source.code() == Some("OOM"),
            _ => false,
        }
    }

    /// True when the same call may succeed if repeated after a short wait: the connection
    /// dropped or was refused (Redis restarting), a timeout, Redis still loading its AOF,
    /// or a cluster fail-over. The `ConnectionManager` reconnects in the background but
    /// never repeats the failed command itself.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Redis { source, .. } => redis_error_is_retryable(source),
            _ => false,
        }
    }
}

fn redis_error_is_retryable(err: &redis::RedisError) -> bool {
    // An untrusted or refused certificate arrives as an I/O error but never heals.
    if tsweep_redis::is_tls_failure(err) {
        return false;
    }
    if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() || err.is_timeout() {
        return true;
    }
    match err.kind() {
        // A reply of a shape the store does not read (`replies.rs`): the same call would
        // get the same reply.
        ErrorKind::Parse => false,
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly,
        ) => true,
        ErrorKind::Server(_) => false,
        _ => matches!(
            err.retry_method(),
            RetryMethod::Reconnect | RetryMethod::RetryImmediately | RetryMethod::WaitAndRetry
        ),
    }
}
