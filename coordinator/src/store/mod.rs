//! The durable task state and the lease protocol, in Redis.
//!
//! [`Store`] is one cheap-to-clone handle (a redis `ConnectionManager` plus options):
//! clone it into every gRPC handler and timer. It holds no state Redis does not have, so
//! any number of coordinators may share one Redis and any of them may be killed at any
//! moment.
//!
//! Every state transition is one Lua script (`store/lua/*.lua`, one file per transition,
//! loaded with `include_str!`), atomic in Redis, validating before it mutates. Keys of one
//! sweep share the hash tag `{<sweep>}` (see [`keys`]), so a script touches one slot.
//!
//! The protocol, in short (docs/ARCHITECTURE.md, "Task state and the lease protocol"):
//! - [`Store::submit`] writes new cells only; existing cells keep state and results.
//!   Submit, cancel, retry and delete run in bounded batches and can be resumed
//!   (`bulk.rs`: [`Store::submit_part`], [`Store::cancel_part`], [`Store::retry_part`],
//!   [`Store::delete_part`]).
//! - [`Store::acquire`] leases the first pending task that fits the worker's free GPUs:
//!   `attempt += 1`, deadline = Redis server `TIME` + lease TTL.
//! - [`Store::renew`] extends the leases a worker still holds, and answers stop orders
//!   for leases it lost or tasks that were cancelled.
//! - [`Store::complete`] / [`Store::fail`] are fenced: accepted only from the worker that
//!   holds the current attempt's lease; a repeat of an accepted report is `DUPLICATE`,
//!   anything else `STALE` (counted).
//! - [`Store::reap_expired`] returns expired leases to pending (lost worker, not counted
//!   against the retry budget); safe to run from several coordinators at once.
//! - [`Store::schedule_finals`] creates the `final` task of every selection group whose
//!   grid points have all ended.
//! - A transfer cell of a pretrained model (`Cell::after`) is held, pending but not
//!   queued, until its pretrain cell succeeds (then queued, in the same script that
//!   records the result) or fails for good (then failed with a message naming it).
//!
//! Files: `lifecycle.rs` (the transitions), `finals.rs` (selection), `queries.rs` (reads),
//! `workers.rs` (registration), `bulk.rs` (big operations), `progress.rs` (live progress
//! and curves), `waiting.rs` (why pending cells wait), `plane.rs` (outages), `keys.rs`.
//!
//! Errors classify themselves: [`StoreError::is_retryable`] (connection dropped, Redis
//! restarting or loading) versus everything else. The connection manager reconnects in
//! the background with exponential backoff but does not repeat the failed command:
//! callers repeat retryable calls (every script is safe to repeat: a repeated report is
//! `DUPLICATE`, a repeated submit adds nothing).

mod bulk;
mod error;
mod finals;
mod keys;
mod lifecycle;
mod plane;
mod progress;
mod queries;
mod replies;
mod scripts;
mod types;
mod waiting;
mod workers;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use tracing::{debug, info, warn};
use tsweep_proto::cell::{CellSpec, Regime, Stage};
use tsweep_proto::v1::{
    BestScore, FailureClass, HeldLease, LeaseRef, PretrainStatus, ReportOutcome, StopOrder, StopReason, SweepStatus,
    SweepSummary, TaskAssignment, TaskCounts, TaskInfo, TaskResult,
};
use tsweep_redis::RedisTlsFiles;
use tsweep_report::selection::{select_best, GridPoint};

use crate::sweepfile;
use scripts::SCRIPTS;

pub use bulk::{merge_changes, Budget, SubmitOptions};
pub use error::StoreError;
pub use finals::selection_group;
pub use progress::{CurveEntry, ProgressRecord, CURVE_POINTS_PER_TASK, MAX_RUNNING_SHOWN};
pub use types::{
    Beat, BulkProgress, Checkpoint, DeleteOutcome, FailOutcome, GroupInfo, Outage, RedisMemory, RegisterOutcome,
    SettingChange, StageSubmitCount, StoreOptions, SubmitOutcome, SubmitPart, TaskPage, TaskState, WorkerAuth,
    WorkerInfo, MAX_SETTING_CHANGES,
};
pub use waiting::PendingFit;
pub use workers::new_worker_secret;

use keys::Keys;

/// The coordinator's consumer group on every sweep's metrics stream. The stream and the
/// group are created at submit (workers append with `XADD ... NOMKSTREAM`, which never
/// creates a stream, so a late append after a delete cannot bring the key back).
pub const METRICS_GROUP: &str = "tsweep-coordinator";

/// The handle on the task state in Redis. Cheap to clone; see the module docs.
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    options: Arc<StoreOptions>,
    keys: Keys,
    /// Where the next `acquire` starts its round over the active sweeps.
    round_robin: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("options", &self.options).finish_non_exhaustive()
    }
}

impl Store {
    /// Connects to Redis (`redis://host:port/db`). Fails if the first connection fails;
    /// afterwards the manager reconnects with backoff whenever Redis goes away.
    pub async fn connect(redis_url: &str, options: StoreOptions) -> Result<Store, StoreError> {
        Self::connect_with_tls(redis_url, &RedisTlsFiles::default(), options).await
    }

    /// As [`Store::connect`], with TLS files for a `rediss://` URL (CA bundle, optional
    /// client certificate). A refused handshake is not retryable
    /// ([`StoreError::is_retryable`]).
    pub async fn connect_with_tls(
        redis_url: &str,
        tls: &RedisTlsFiles,
        options: StoreOptions,
    ) -> Result<Store, StoreError> {
        let client = tsweep_redis::build_client(redis_url, tls)?;
        if matches!(client.get_connection_info().addr(), redis::ConnectionAddr::TcpTls { .. }) {
            // The manager below retries its first connection without end, a refused
            // handshake included: one plain try first, so that a certificate problem is
            // an error now (not retryable, see `is_retryable`) instead of a silent wait.
            let probe = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(options.connection_timeout))
                .set_response_timeout(Some(options.response_timeout));
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&probe)
                .await
                .map_err(StoreError::redis("connect over tls"))?;
            let _: String =
                redis::cmd("PING").query_async(&mut conn).await.map_err(StoreError::redis("connect over tls"))?;
        }
        let config = ConnectionManagerConfig::new()
            .set_min_delay(options.reconnect_min_delay)
            .set_max_delay(options.reconnect_max_delay)
            .set_number_of_retries(usize::MAX)
            .set_response_timeout(Some(options.response_timeout))
            .set_connection_timeout(Some(options.connection_timeout));
        let mut conn =
            ConnectionManager::new_with_config(client, config).await.map_err(StoreError::redis("connect"))?;
        // One primary holds everything: the global sets (`sweeps`, `active`, `workers`)
        // live outside any sweep's slot and the metrics consumer reads several sweeps'
        // streams in one XREADGROUP, which Redis Cluster refuses (CROSSSLOT). Say so now
        // rather than fail call by call. A server that does not answer INFO is let be.
        if let Ok(info) = redis::cmd("INFO").arg("cluster").query_async::<String>(&mut conn).await {
            if info.lines().any(|line| line.trim() == "cluster_enabled:1") {
                return Err(StoreError::ClusterMode);
            }
        }
        Ok(Store {
            conn,
            keys: Keys::new(&options.key_prefix),
            options: Arc::new(options),
            round_robin: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// A clone of the underlying connection (for the metrics stream consumer).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The Redis stream workers append a sweep's metrics to.
    pub fn metrics_stream_key(&self, sweep: &str) -> String {
        self.keys.metrics(sweep)
    }

    /// The pattern handed to workers on register: `{sweep}` replaced by the sweep's name
    /// gives [`Store::metrics_stream_key`].
    pub fn metrics_stream_pattern(&self) -> String {
        self.keys.metrics_pattern()
    }

    /// PING; for readiness probes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.map_err(StoreError::redis("ping"))?;
        Ok(())
    }

    /// Redis's memory against `maxmemory` and how many writes it refused for it, from
    /// `INFO memory` and `INFO errorstats` (readiness: a full Redis is not ready).
    pub async fn memory(&self) -> Result<RedisMemory, StoreError> {
        let mut conn = self.conn.clone();
        let (memory, errors): (String, String) = redis::pipe()
            .cmd("INFO")
            .arg("memory")
            .cmd("INFO")
            .arg("errorstats")
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("info memory"))?;
        let field = |info: &str, name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(':')))
                .map(|value| value.trim().to_string())
        };
        let number = |info: &str, name: &str| field(info, name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // `errorstat_OOM:count=N`
        let refused_writes = field(&errors, "errorstat_OOM")
            .and_then(|v| v.strip_prefix("count=").and_then(|n| n.split(',').next()).and_then(|n| n.parse().ok()))
            .unwrap_or(0);
        Ok(RedisMemory {
            used_bytes: number(&memory, "used_memory").saturating_sub(number(&memory, "mem_not_counted_for_evict")),
            max_bytes: number(&memory, "maxmemory"),
            refused_writes,
        })
    }

    /// The members of a Redis set, sorted (`operation` names the read in errors).
    async fn sorted_members(&self, key: String, operation: &'static str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let mut members: Vec<String> = conn.smembers(key).await.map_err(StoreError::redis(operation))?;
        members.sort();
        Ok(members)
    }

    // ------------------------------------------------------------------ internals

    fn lease_ttl_ms(&self) -> u64 {
        (self.options.lease_ttl.as_millis() as u64).max(1)
    }

    async fn require_sweep(&self, sweep: &str) -> Result<(), StoreError> {
        validate_sweep_name(sweep)?;
        if self.has_meta(sweep).await? {
            Ok(())
        } else {
            Err(StoreError::SweepNotFound { sweep: sweep.to_string() })
        }
    }

    /// Whether the sweep has its meta hash: false for a sweep that is gone or whose delete
    /// began (its meta is the tombstone `deleting` then).
    async fn has_meta(&self, sweep: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        conn.exists(self.keys.meta(sweep)).await.map_err(StoreError::redis("exists meta"))
    }

    async fn mark_active(&self, sweep: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: () = conn.sadd(self.keys.active(), sweep).await.map_err(StoreError::redis("sadd active"))?;
        Ok(())
    }

    /// Drops a sweep that acquire found idle from the active set, then checks again and
    /// puts it back if work arrived in between (a submit, retry or final that raced).
    async fn deactivate_if_idle(&self, sweep: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: () = conn.srem(self.keys.active(), sweep).await.map_err(StoreError::redis("srem active"))?;
        let (counts, closed, meta): (Vec<Option<i64>>, u64, bool) = redis::pipe()
            .cmd("HMGET")
            .arg(self.keys.counts(sweep))
            .arg(&["pending", "leased", "running"])
            .scard(self.keys.closed(sweep))
            .exists(self.keys.meta(sweep))
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("recheck idle sweep"))?;
        let in_flight: i64 = counts.into_iter().map(|c| c.unwrap_or(0)).sum();
        // A sweep without meta (its delete began: the counts stay until its last batch)
        // has no work to come back to.
        if meta && (in_flight > 0 || closed > 0) {
            self.mark_active(sweep).await?;
        } else {
            debug!(sweep = %sweep, "sweep idle");
        }
        Ok(())
    }
}

/// `<root>/<sweep>` from a checkpoint path the worker recorded
/// (`<root>/<sweep>/<task>/attempt-<n>/...`); None when the path does not have that shape.
fn checkpoint_dir_of(path: &str, sweep: &str) -> Option<String> {
    let marker = format!("/{sweep}/");
    let at = path.find(&marker)?;
    Some(path[..at + marker.len() - 1].to_string())
}

/// Sweep names become part of keys (`{<sweep>}` is the hash tag): refuse what would
/// break them.
fn validate_sweep_name(sweep: &str) -> Result<(), StoreError> {
    if sweep.is_empty()
        || sweep.len() > 200
        || sweep.chars().any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control())
    {
        return Err(StoreError::InvalidArgument(format!(
            "sweep name {sweep:?} must be 1 to 200 characters without braces or whitespace"
        )));
    }
    Ok(())
}

fn parse_num<T: std::str::FromStr>(text: &str, key: &str, field: &str) -> Result<T, StoreError> {
    text.parse::<T>().map_err(|_| StoreError::Corrupt {
        key: key.to_string(),
        field: field.to_string(),
        detail: format!("not a number: {text:?}"),
    })
}
