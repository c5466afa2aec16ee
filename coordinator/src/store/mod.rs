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
//! Errors classify themselves: [`StoreError::is_retryable`] (connection dropped, Redis
//! restarting or loading) versus everything else. The connection manager reconnects in
//! the background with exponential backoff but does not repeat the failed command:
//! callers repeat retryable calls (every script is safe to repeat: a repeated report is
//! `DUPLICATE`, a repeated submit adds nothing).

mod bulk;
mod error;
mod keys;
mod plane;
mod progress;
mod scripts;
mod types;
mod waiting;

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
pub use progress::{CurveEntry, ProgressRecord, CURVE_POINTS_PER_TASK, MAX_RUNNING_SHOWN};
pub use types::{
    Beat, BulkProgress, Checkpoint, DeleteOutcome, FailOutcome, GroupInfo, Outage, RedisMemory, RegisterOutcome,
    SettingChange, StageSubmitCount, StoreOptions, SubmitOutcome, SubmitPart, TaskPage, TaskState, WorkerAuth,
    WorkerInfo, MAX_SETTING_CHANGES,
};
pub use waiting::PendingFit;

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

    /// Leases the first pending task that needs at most `free_gpus` GPUs, going round the
    /// active sweeps (one script call per sweep, starting one sweep further each call).
    /// None when nothing fits now.
    pub async fn acquire(&self, worker_id: &str, free_gpus: u32) -> Result<Option<TaskAssignment>, StoreError> {
        if worker_id.is_empty() {
            return Err(StoreError::InvalidArgument("acquire: empty worker id".into()));
        }
        let sweeps = self.sorted_members(self.keys.active(), "smembers active").await?;
        if sweeps.is_empty() {
            return Ok(None);
        }
        let mut conn = self.conn.clone();
        let start = self.round_robin.fetch_add(1, Ordering::Relaxed);
        let ttl_ms = self.lease_ttl_ms();
        for offset in 0..sweeps.len() {
            let sweep = &sweeps[(start + offset) % sweeps.len()];
            let reply: Vec<String> = SCRIPTS
                .acquire
                .key(self.keys.sweep_base(sweep))
                .arg(worker_id)
                .arg(free_gpus)
                .arg(ttl_ms)
                .invoke_async(&mut conn)
                .await
                .map_err(StoreError::redis("acquire script"))?;
            match reply.first().map(String::as_str) {
                Some("ok") if reply.len() >= 7 => {
                    let task_id = reply[1].clone();
                    let attempt = parse_num::<u32>(&reply[2], &task_id, "attempt")?;
                    let gpus = parse_num::<u32>(&reply[4], &task_id, "gpus")?;
                    let step = parse_num::<u64>(&reply[6], &task_id, "ckpt_step")?;
                    debug!(sweep = %sweep, task_id = %task_id, attempt, worker = %worker_id, "leased");
                    return Ok(Some(TaskAssignment {
                        sweep: sweep.clone(),
                        task_id,
                        attempt,
                        spec_json: reply[3].clone(),
                        gpus,
                        resume: (!reply[5].is_empty()).then(|| Checkpoint { path: reply[5].clone(), step }),
                        lease_ttl_ms: ttl_ms,
                    }));
                }
                Some("idle") => self.deactivate_if_idle(sweep).await?,
                Some("none") | Some("inactive") => {}
                other => {
                    return Err(StoreError::Corrupt {
                        key: self.keys.meta(sweep),
                        field: "acquire reply".into(),
                        detail: format!("unexpected {other:?}"),
                    })
                }
            }
        }
        Ok(None)
    }

    /// The heartbeat: extends every lease the worker still holds; answers a stop order
    /// for each lease it lost (`LEASE_LOST`) or whose sweep was cancelled (`CANCELLED`).
    /// One script call per sweep.
    pub async fn renew(&self, worker_id: &str, leases: &[HeldLease]) -> Result<Vec<StopOrder>, StoreError> {
        if worker_id.is_empty() {
            return Err(StoreError::InvalidArgument("renew: empty worker id".into()));
        }
        let mut by_sweep: BTreeMap<&str, Vec<(&LeaseRef, &HeldLease)>> = BTreeMap::new();
        for held in leases {
            if let Some(lease) = held.lease.as_ref() {
                by_sweep.entry(lease.sweep.as_str()).or_default().push((lease, held));
            }
        }
        self.touch_worker(worker_id).await?;
        let mut conn = self.conn.clone();
        let mut stops = Vec::new();
        for (sweep, held) in by_sweep {
            if validate_sweep_name(sweep).is_err() {
                stops.extend(held.iter().map(|(lease, _)| stop(lease, StopReason::LeaseLost)));
                continue;
            }
            let mut invocation = SCRIPTS.renew.key(self.keys.sweep_base(sweep));
            invocation.arg(worker_id).arg(self.lease_ttl_ms());
            for (lease, h) in &held {
                invocation
                    .arg(&lease.task_id)
                    .arg(lease.attempt)
                    .arg(if h.running { "1" } else { "0" })
                    .arg(h.checkpoint.as_ref().map_or("", |c| c.path.as_str()))
                    .arg(h.checkpoint.as_ref().map_or(0, |c| c.step))
                    .arg(&h.resume_error);
            }
            let answers: Vec<String> =
                invocation.invoke_async(&mut conn).await.map_err(StoreError::redis("renew script"))?;
            for ((lease, _), answer) in held.iter().zip(answers.iter()) {
                match answer.as_str() {
                    "ok" => {}
                    "cancelled" => stops.push(stop(lease, StopReason::Cancelled)),
                    _ => {
                        debug!(sweep = %sweep, task_id = %lease.task_id, attempt = lease.attempt, worker = %worker_id, "lease lost");
                        stops.push(stop(lease, StopReason::LeaseLost));
                    }
                }
            }
        }
        Ok(stops)
    }

    /// Records a result. Fenced: `ACCEPTED` only from the worker holding the current
    /// attempt's lease; the same attempt again after its success is `DUPLICATE`;
    /// anything else `STALE` (counted in the sweep's `stale_reports`).
    pub async fn complete(
        &self,
        worker_id: &str,
        lease: &LeaseRef,
        result: &TaskResult,
    ) -> Result<ReportOutcome, StoreError> {
        validate_report(worker_id, lease)?;
        let result = finite_result(result);
        let result_json =
            serde_json::to_string(&result).map_err(|source| StoreError::Json { what: "task result", source })?;
        let val = result.val_score.filter(|v| v.is_finite()).map(|v| v.to_string()).unwrap_or_default();
        let mut conn = self.conn.clone();
        let reply: Vec<String> = SCRIPTS
            .complete
            .key(self.keys.sweep_base(&lease.sweep))
            .arg(worker_id)
            .arg(&lease.task_id)
            .arg(lease.attempt)
            .arg(result_json)
            .arg(val)
            .arg(if result.diverged { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::redis("complete script"))?;
        let outcome = parse_outcome(&reply, &self.keys.task(&lease.sweep, &lease.task_id))?;
        match outcome {
            ReportOutcome::Stale => {
                warn!(sweep = %lease.sweep, task_id = %lease.task_id, attempt = lease.attempt, worker = %worker_id, "stale completion refused")
            }
            _ => {
                debug!(sweep = %lease.sweep, task_id = %lease.task_id, attempt = lease.attempt, outcome = ?outcome, "completion")
            }
        }
        Ok(outcome)
    }

    /// Records a classified failure of the current attempt (fenced like `complete`) and
    /// the attempt's last checkpoint. Lost worker / preempted: back to pending, not
    /// counted; retryable: counted, pending while budget remains; out of memory: counted
    /// like retryable, and the task's second OOM fails it; fatal: failed now.
    pub async fn fail(
        &self,
        worker_id: &str,
        lease: &LeaseRef,
        class: FailureClass,
        message: &str,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<FailOutcome, StoreError> {
        self.fail_with_resume_error(worker_id, lease, class, message, checkpoint, "").await
    }

    /// As [`Store::fail`], for an attempt that could not read the checkpoint it was to
    /// resume from (`resume_error`, recorded on the task; see [`Store::renew`]).
    pub async fn fail_with_resume_error(
        &self,
        worker_id: &str,
        lease: &LeaseRef,
        class: FailureClass,
        message: &str,
        checkpoint: Option<&Checkpoint>,
        resume_error: &str,
    ) -> Result<FailOutcome, StoreError> {
        validate_report(worker_id, lease)?;
        let (path, step) = checkpoint.map(|c| (c.path.as_str(), c.step)).unwrap_or(("", 0));
        let mut conn = self.conn.clone();
        let reply: Vec<String> = SCRIPTS
            .fail
            .key(self.keys.sweep_base(&lease.sweep))
            .arg(worker_id)
            .arg(&lease.task_id)
            .arg(lease.attempt)
            .arg(class.name())
            .arg(message)
            .arg(path)
            .arg(step)
            .arg(self.options.max_lost_attempts.max(1))
            .arg(resume_error)
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::redis("fail script"))?;
        let outcome = parse_outcome(&reply, &self.keys.task(&lease.sweep, &lease.task_id))?;
        let state = reply.get(1).and_then(|s| TaskState::from_name(s));
        info!(sweep = %lease.sweep, task_id = %lease.task_id, attempt = lease.attempt, worker = %worker_id,
            class = class.name(), outcome = ?outcome, state = ?state, "failure reported");
        Ok(FailOutcome { outcome, state })
    }

    /// Takes back every lease of the sweep whose deadline (Redis server time) has passed:
    /// the task goes back to pending as a lost worker, not counted against its budget.
    /// Control-plane outages ([`Store::beat`]) the sweep has not seen yet are applied
    /// first, in the same script: leases nobody could renew are extended by the outage.
    /// Safe to run from several coordinators at once. Returns how many were taken back.
    pub async fn reap_expired(&self, sweep: &str) -> Result<u64, StoreError> {
        let outages = self.outages().await?;
        self.reap_sweep(sweep, &outages).await
    }

    async fn reap_sweep(&self, sweep: &str, outages: &[Outage]) -> Result<u64, StoreError> {
        validate_sweep_name(sweep)?;
        let mut conn = self.conn.clone();
        let key = self.keys.meta(sweep);
        let mut total = 0u64;
        loop {
            let mut invocation = SCRIPTS.reap.key(self.keys.sweep_base(sweep));
            invocation
                .arg(self.options.max_lost_attempts.max(1))
                .arg(self.options.bulk_batch.max(1))
                .arg(self.lease_ttl_ms());
            for outage in outages {
                invocation.arg(outage.start_ms).arg(outage.end_ms);
            }
            let reply: Vec<String> =
                invocation.invoke_async(&mut conn).await.map_err(StoreError::redis("reap script"))?;
            let field =
                |i: usize, name: &str| parse_num::<u64>(reply.get(i).map(String::as_str).unwrap_or(""), &key, name);
            let reaped = field(0, "reaped")?;
            let extended = field(2, "extended")?;
            if extended > 0 {
                info!(sweep = %sweep, leases = extended, outage_ms = field(3, "dark_ms")?,
                      "leases extended by the control-plane outage before reaping");
            }
            for lost in reply.get(4..).unwrap_or_default().chunks(4) {
                match lost {
                    [task_id, worker, attempt, state] if state == "leased" => {
                        info!(sweep = %sweep, task_id = %task_id, worker = %worker, attempt = %attempt,
                              "lease expired before its worker started it (the worker died first, or the acquire reply never reached it): task back to pending");
                    }
                    [task_id, worker, attempt, _] => {
                        info!(sweep = %sweep, task_id = %task_id, worker = %worker, attempt = %attempt,
                              "lease expired: attempt lost, task back to pending");
                    }
                    _ => {}
                }
            }
            total += reaped;
            if reply.get(1).map(String::as_str) != Some("1") {
                break;
            }
        }
        if total > 0 {
            info!(sweep = %sweep, reaped = total, "expired leases taken back");
        }
        Ok(total)
    }

    /// [`Store::reap_expired`] over every active sweep.
    pub async fn reap_all(&self) -> Result<u64, StoreError> {
        let outages = self.outages().await?;
        let mut total = 0;
        for sweep in self.active_sweeps().await? {
            total += self.reap_sweep(&sweep, &outages).await?;
        }
        Ok(total)
    }

    /// Sweeps that may have work (pending, leased or running tasks, or a selection
    /// waiting); what the timers (reaper, finals) go over.
    pub async fn active_sweeps(&self) -> Result<Vec<String>, StoreError> {
        self.sorted_members(self.keys.active(), "smembers active").await
    }

    /// The members of a Redis set, sorted (`operation` names the read in errors).
    async fn sorted_members(&self, key: String, operation: &'static str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let mut members: Vec<String> = conn.smembers(key).await.map_err(StoreError::redis(operation))?;
        members.sort();
        Ok(members)
    }

    /// Drains the sweep's closed selection groups: for each, picks the best grid point
    /// with [`select_best`] and creates its `final` task (deterministic id, so a group
    /// whose winner did not change creates nothing new). Returns the ids of the final
    /// tasks created now. Safe to run from several coordinators at once.
    pub async fn schedule_finals(&self, sweep: &str) -> Result<Vec<String>, StoreError> {
        validate_sweep_name(sweep)?;
        let mut conn = self.conn.clone();
        // A submission still landing its batches: its groups may be missing points.
        let submitting: bool = conn
            .hexists(self.keys.meta(sweep), "submit_fp")
            .await
            .map_err(StoreError::redis("hexists submit marker"))?;
        if submitting {
            return Ok(Vec::new());
        }
        let closed: Vec<String> =
            conn.smembers(self.keys.closed(sweep)).await.map_err(StoreError::redis("smembers closed"))?;
        let mut created = Vec::new();
        for group in closed {
            let version: Option<u64> = conn
                .hget(self.keys.group(sweep, &group), "version")
                .await
                .map_err(StoreError::redis("hget group version"))?;
            let version = version.unwrap_or(0);
            let members: Vec<String> = conn
                .smembers(self.keys.group_members(sweep, &group))
                .await
                .map_err(StoreError::redis("smembers group members"))?;
            let mut pipe = redis::pipe();
            for id in &members {
                pipe.cmd("HMGET").arg(self.keys.task(sweep, id)).arg(&["state", "val", "diverged", "spec"]);
            }
            let rows: Vec<Vec<Option<String>>> =
                pipe.query_async(&mut conn).await.map_err(StoreError::redis("read group members"))?;
            let mut points = Vec::with_capacity(members.len());
            let mut specs = Vec::with_capacity(members.len());
            let mut still_open = false;
            let mut any_cancelled = false;
            for (id, row) in members.iter().zip(rows) {
                let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
                let state = TaskState::from_name(&field(0));
                match state {
                    Some(TaskState::Cancelled) => any_cancelled = true,
                    Some(s) if s.is_terminal() => {}
                    _ => still_open = true,
                }
                let spec_json = field(3);
                let spec = CellSpec::from_json(&spec_json).map_err(|e| StoreError::Corrupt {
                    key: self.keys.task(sweep, id),
                    field: "spec".into(),
                    detail: e.to_string(),
                })?;
                let succeeded = state == Some(TaskState::Succeeded);
                points.push(GridPoint {
                    task_id: id.clone(),
                    hparams: spec.hparams.clone(),
                    val_score: if succeeded { field(1).parse::<f64>().ok() } else { None },
                    diverged: field(2) == "1",
                });
                specs.push(spec);
            }
            let mut invocation = SCRIPTS.create_final.key(self.keys.sweep_base(sweep));
            invocation.arg(&group).arg(version);
            let mode = if any_cancelled { "incomplete" } else { "select" };
            match select_best(&points).filter(|_| !still_open && !any_cancelled) {
                Some(best) => {
                    let winner = &specs[best];
                    let final_cell = sweepfile::final_cell(winner);
                    let spec_json =
                        final_cell.spec.to_json().map_err(|source| StoreError::Json { what: "final spec", source })?;
                    invocation
                        .arg(&points[best].task_id)
                        .arg(&final_cell.id)
                        .arg(spec_json)
                        .arg(final_cell.spec.gpus)
                        .arg(final_cell.spec.regime.name())
                        .arg(final_cell.spec.max_attempts.max(1))
                        .arg(mode);
                }
                None => {
                    invocation.arg("").arg("").arg("").arg(0).arg("").arg(1).arg(mode);
                }
            }
            let reply: Vec<String> =
                invocation.invoke_async(&mut conn).await.map_err(StoreError::redis("create_final script"))?;
            let what = reply.first().map(String::as_str).unwrap_or("");
            let final_id = reply.get(1).cloned().unwrap_or_default();
            info!(sweep = %sweep, group = %group, outcome = what, final_id = %final_id, "selection");
            if what == "created" {
                created.push(final_id);
            }
        }
        if !created.is_empty() {
            self.mark_active(sweep).await?;
        }
        Ok(created)
    }

    /// [`Store::schedule_finals`] over every active sweep.
    pub async fn schedule_finals_all(&self) -> Result<Vec<String>, StoreError> {
        let mut created = Vec::new();
        for sweep in self.active_sweeps().await? {
            created.extend(self.schedule_finals(&sweep).await?);
        }
        Ok(created)
    }

    /// The sweep's counts and status in O(1), without the best-score board (which has an
    /// entry per model, dataset and regime: [`Store::best_scores`]). Status `submitting`
    /// while a submission has not landed its last batch, `deleting` while a delete has not
    /// finished.
    pub async fn summary(&self, sweep: &str) -> Result<SweepSummary, StoreError> {
        validate_sweep_name(sweep)?;
        let mut conn = self.conn.clone();
        type Fields = HashMap<String, String>;
        let (mut meta, counts, closed): (Fields, Fields, u64) = redis::pipe()
            .hgetall(self.keys.meta(sweep))
            .hgetall(self.keys.counts(sweep))
            .scard(self.keys.closed(sweep))
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("read summary"))?;
        let deleting = meta.is_empty();
        if deleting {
            meta = conn.hgetall(self.keys.deleting(sweep)).await.map_err(StoreError::redis("read tombstone"))?;
        }
        if meta.is_empty() {
            return Err(StoreError::SweepNotFound { sweep: sweep.to_string() });
        }
        let count = |state: &str| counts.get(state).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0).max(0) as u64;
        let counts = TaskCounts {
            pending: count("pending"),
            leased: count("leased"),
            running: count("running"),
            succeeded: count("succeeded"),
            failed: count("failed"),
            cancelled: count("cancelled"),
            total: count("total"),
        };
        let meta_num = |field: &str| meta.get(field).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let in_flight = counts.pending + counts.leased + counts.running;
        let submitting = meta.contains_key("submit_fp");
        let cancelled = meta.get("status").map(String::as_str) == Some(SweepStatus::Cancelled.name());
        let status = match () {
            _ if deleting => SweepStatus::Deleting,
            _ if submitting => SweepStatus::Submitting,
            _ if cancelled => SweepStatus::Cancelled,
            _ if in_flight == 0 && closed == 0 => SweepStatus::Done,
            _ => SweepStatus::Active,
        };
        let pretrain = self.pretrain_status(sweep, cancelled).await?;
        Ok(SweepSummary {
            sweep: sweep.to_string(),
            status: status.into(),
            counts: Some(counts),
            stale_reports: meta_num("stale_reports").max(0) as u64,
            lease_expiries: meta_num("lease_expiries").max(0) as u64,
            created_unix_ms: meta_num("created_ms"),
            submit_written: if submitting { meta_num("submit_next").max(0) as u64 } else { 0 },
            submit_total: if submitting { meta_num("submit_total").max(0) as u64 } else { 0 },
            submit_file: if submitting { meta.get("submit_file").cloned().unwrap_or_default() } else { String::new() },
            pretrain,
            ..SweepSummary::default()
        })
    }

    /// The sweep's pretrain cells with their state and the transfer cells that wait for
    /// them (all of a cell's dependents while it has not ended; none in a cancelled
    /// sweep). One read per pretrain cell: a sweep has few.
    pub async fn pretrain_status(&self, sweep: &str, cancelled: bool) -> Result<Vec<PretrainStatus>, StoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> =
            conn.smembers(self.keys.pretrains(sweep)).await.map_err(StoreError::redis("smembers pretrains"))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET").arg(self.keys.task(sweep, id)).arg(&["state", "spec", "result", "error"]);
            pipe.scard(self.keys.dependents(sweep, id));
        }
        let replies: Vec<redis::Value> =
            pipe.query_async(&mut conn).await.map_err(StoreError::redis("read pretrain cells"))?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, pair) in ids.iter().zip(replies.chunks(2)) {
            let key = self.keys.task(sweep, id);
            let corrupt = |detail: String| StoreError::Corrupt { key: key.clone(), field: "pretrain".into(), detail };
            let [row, deps] = pair else { return Err(corrupt("short reply".into())) };
            let row: Vec<Option<String>> =
                redis::from_redis_value(row.clone()).map_err(|e| corrupt(format!("fields: {e}")))?;
            let dependents: u64 = redis::from_redis_value(deps.clone()).map_err(|e| corrupt(format!("scard: {e}")))?;
            let field = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
            let state = TaskState::from_name(&field(0)).unwrap_or_default();
            let spec: serde_json::Value = serde_json::from_str(&field(1)).unwrap_or_default();
            let name_of = |part: &str| spec[part]["name"].as_str().unwrap_or_default().to_string();
            let test_score = serde_json::from_str::<TaskResult>(&field(2)).ok().and_then(|r| r.test_score);
            let open = state != TaskState::Unspecified && !state.is_terminal();
            out.push(PretrainStatus {
                task_id: id.clone(),
                model: name_of("model"),
                dataset: name_of("dataset"),
                waiting: if open && !cancelled { dependents } else { 0 },
                state: state.into(),
                test_score,
                dependents,
                error: field(3),
            });
        }
        out.sort_by(|a, b| (&a.model, &a.task_id).cmp(&(&b.model, &b.task_id)));
        Ok(out)
    }

    /// Every sweep's summary, by name.
    pub async fn list_sweeps(&self) -> Result<Vec<SweepSummary>, StoreError> {
        let names = self.sorted_members(self.keys.sweeps(), "smembers sweeps").await?;
        let mut summaries = Vec::with_capacity(names.len());
        for name in names {
            match self.summary(&name).await {
                Ok(summary) => summaries.push(summary),
                Err(StoreError::SweepNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(summaries)
    }

    /// One page of the sweep's tasks in submission order, optionally of one state.
    /// `page_size` 0 means 100; at most 1000. `page_token` is empty for the first page,
    /// then the previous page's `next_page_token`.
    pub async fn list_tasks(
        &self,
        sweep: &str,
        state: Option<TaskState>,
        page_size: u32,
        page_token: &str,
    ) -> Result<TaskPage, StoreError> {
        validate_sweep_name(sweep)?;
        let size = match page_size {
            0 => 100,
            n => n.min(1000),
        } as isize;
        let after: u64 = if page_token.is_empty() {
            0
        } else {
            page_token
                .parse()
                .map_err(|_| StoreError::InvalidArgument(format!("list_tasks: bad page token {page_token:?}")))?
        };
        let index = match state {
            Some(state) => self.keys.state_index(sweep, state),
            None => self.keys.all(sweep),
        };
        let mut conn = self.conn.clone();
        let exists: bool = conn.exists(self.keys.meta(sweep)).await.map_err(StoreError::redis("exists meta"))?;
        if !exists {
            return Err(StoreError::SweepNotFound { sweep: sweep.to_string() });
        }
        let ids: Vec<(String, f64)> = conn
            .zrangebyscore_limit_withscores(&index, format!("({after}"), "+inf", 0, size)
            .await
            .map_err(StoreError::redis("zrangebyscore tasks"))?;
        let mut pipe = redis::pipe();
        for (id, _) in &ids {
            pipe.hgetall(self.keys.task(sweep, id));
        }
        let rows: Vec<HashMap<String, String>> = if ids.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn).await.map_err(StoreError::redis("read tasks"))?
        };
        // A page stays well inside one gRPC message whatever its cells' sizes: it ends
        // early (the next page goes on after its last task) once its text passes half the
        // message limit.
        let mut tasks = Vec::with_capacity(rows.len());
        let mut page_bytes = 0usize;
        let mut last_seq = None;
        for ((id, seq), row) in ids.iter().zip(rows) {
            if page_bytes > tsweep_proto::limits::MAX_MESSAGE_BYTES / 2 {
                break;
            }
            page_bytes += row.values().map(String::len).sum::<usize>();
            last_seq = Some(*seq);
            if !row.is_empty() {
                tasks.push(self.task_info(sweep, id, &row)?);
            }
        }
        self.mark_current_finals(&mut conn, sweep, &mut tasks).await?;
        let full = last_seq != ids.last().map(|(_, seq)| *seq) || ids.len() as isize == size;
        let next_page_token = match last_seq {
            Some(seq) if full => format!("{}", seq as u64),
            _ => String::new(),
        };
        Ok(TaskPage { tasks, next_page_token })
    }

    /// One task, or None if the sweep has no such task.
    pub async fn task(&self, sweep: &str, task_id: &str) -> Result<Option<TaskInfo>, StoreError> {
        validate_sweep_name(sweep)?;
        let mut conn = self.conn.clone();
        let row: HashMap<String, String> =
            conn.hgetall(self.keys.task(sweep, task_id)).await.map_err(StoreError::redis("hgetall task"))?;
        if row.is_empty() {
            return Ok(None);
        }
        let mut task = [self.task_info(sweep, task_id, &row)?];
        self.mark_current_finals(&mut conn, sweep, &mut task).await?;
        let [task] = task;
        Ok(Some(task))
    }

    /// Sets `current_final` on the finals among `tasks`: the final its group's latest
    /// selection made (`current_final` of the group hash, the fact `create_final` keeps).
    async fn mark_current_finals(
        &self,
        conn: &mut ConnectionManager,
        sweep: &str,
        tasks: &mut [TaskInfo],
    ) -> Result<(), StoreError> {
        let finals: Vec<usize> = (0..tasks.len())
            .filter(|&i| tasks[i].stage() == Stage::Final && !tasks[i].selection_group.is_empty())
            .collect();
        if finals.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for &i in &finals {
            pipe.hget(self.keys.group(sweep, &tasks[i].selection_group), "current_final");
        }
        let current: Vec<Option<String>> =
            pipe.query_async(conn).await.map_err(StoreError::redis("read current finals"))?;
        for (&i, current) in finals.iter().zip(current) {
            tasks[i].current_final = current.as_deref() == Some(tasks[i].task_id.as_str());
        }
        Ok(())
    }

    /// Records a worker's registration with the SHA-256 of `secret` (never the secret
    /// itself). The record lives [`StoreOptions::worker_record_ttl`] after the worker's
    /// last authenticated call. A live record holding another secret is left alone
    /// ([`RegisterOutcome::InUse`]) unless the caller presents that secret (`presented`:
    /// the secret of its earlier registration, empty when it has none).
    pub async fn register_worker(
        &self,
        worker: &WorkerInfo,
        secret: &str,
        presented: &str,
    ) -> Result<RegisterOutcome, StoreError> {
        if worker.worker_id.is_empty() {
            return Err(StoreError::InvalidArgument("register_worker: empty worker id".into()));
        }
        if secret.is_empty() {
            return Err(StoreError::InvalidArgument("register_worker: empty secret".into()));
        }
        let mut conn = self.conn.clone();
        let key = self.keys.worker(&worker.worker_id);
        let reply: Vec<String> = SCRIPTS
            .register_worker
            .key(&key)
            .key(self.keys.workers())
            .arg(&worker.worker_id)
            .arg(secret_digest(secret))
            .arg(if presented.is_empty() { String::new() } else { secret_digest(presented) })
            .arg(self.worker_record_ttl_ms())
            .arg(&worker.hostname)
            .arg(worker.slots)
            .arg(worker.gpus)
            .arg(&worker.version)
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::redis("register_worker script"))?;
        match reply.first().map(String::as_str) {
            Some("ok") => {
                info!(worker = %worker.worker_id, hostname = %worker.hostname, slots = worker.slots, gpus = worker.gpus, "worker registered");
                Ok(RegisterOutcome::Registered)
            }
            Some("in_use") => {
                let expires_in_ms = reply.get(1).and_then(|ms| ms.parse::<i64>().ok()).unwrap_or(0).max(0) as u64;
                Ok(RegisterOutcome::InUse { expires_in_ms })
            }
            other => Err(StoreError::Corrupt {
                key,
                field: "register_worker reply".into(),
                detail: format!("unexpected {other:?}"),
            }),
        }
    }

    /// Checks the secret a worker presents against its registration and, when it
    /// matches, keeps the record alive for another [`StoreOptions::worker_record_ttl`].
    pub async fn authenticate_worker(&self, worker_id: &str, presented: &str) -> Result<WorkerAuth, StoreError> {
        if worker_id.is_empty() {
            return Err(StoreError::InvalidArgument("authenticate_worker: empty worker id".into()));
        }
        let mut conn = self.conn.clone();
        let key = self.keys.worker(worker_id);
        let reply: String = SCRIPTS
            .worker_auth
            .key(&key)
            .arg(if presented.is_empty() { String::new() } else { secret_digest(presented) })
            .arg(self.worker_record_ttl_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::redis("worker_auth script"))?;
        match reply.as_str() {
            "ok" => Ok(WorkerAuth::Verified),
            "unregistered" => Ok(WorkerAuth::Unregistered),
            "wrong" => Ok(WorkerAuth::WrongSecret),
            other => Err(StoreError::Corrupt {
                key,
                field: "worker_auth reply".into(),
                detail: format!("unexpected {other:?}"),
            }),
        }
    }

    fn worker_record_ttl_ms(&self) -> u64 {
        (self.options.worker_record_ttl().as_millis() as u64).max(1)
    }

    /// Workers that registered or renewed within the last `worker_forget` (see
    /// [`StoreOptions::worker_forget`]).
    pub async fn worker_count(&self) -> Result<u64, StoreError> {
        self.touch_worker("").await
    }

    async fn touch_worker(&self, worker_id: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let forget_ms = (self.options.worker_forget.as_millis() as u64).max(1);
        let count: String = SCRIPTS
            .touch_worker
            .key(self.keys.workers())
            .arg(worker_id)
            .arg(forget_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::redis("touch_worker script"))?;
        parse_num(&count, &self.keys.workers(), "count")
    }

    /// Counts a metrics record of an attempt that no longer holds its lease.
    pub async fn record_stale_metric(&self, sweep: &str) -> Result<(), StoreError> {
        validate_sweep_name(sweep)?;
        let mut conn = self.conn.clone();
        let _: String = SCRIPTS
            .stale_metric
            .key(self.keys.sweep_base(sweep))
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::redis("stale_metric script"))?;
        Ok(())
    }

    /// Whether `attempt` is the task's current lease (leased or running): metrics of any
    /// other attempt are stale.
    pub async fn is_current_attempt(&self, sweep: &str, task_id: &str, attempt: u32) -> Result<bool, StoreError> {
        validate_sweep_name(sweep)?;
        let mut conn = self.conn.clone();
        let (state, current): (Option<String>, Option<u32>) = redis::cmd("HMGET")
            .arg(self.keys.task(sweep, task_id))
            .arg("state")
            .arg("attempt")
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("hmget task attempt"))?;
        Ok(matches!(state.as_deref(), Some("leased") | Some("running")) && current == Some(attempt))
    }

    /// The best validation score so far per (model, dataset, regime) among succeeded,
    /// non-diverged grid points.
    pub async fn best_scores(&self, sweep: &str) -> Result<Vec<BestScore>, StoreError> {
        validate_sweep_name(sweep)?;
        let mut conn = self.conn.clone();
        let best: HashMap<String, String> =
            conn.hgetall(self.keys.best(sweep)).await.map_err(StoreError::redis("hgetall best"))?;
        Ok(parse_best(best))
    }

    /// The sweep's selection groups with their current final, by key.
    pub async fn groups(&self, sweep: &str) -> Result<Vec<GroupInfo>, StoreError> {
        validate_sweep_name(sweep)?;
        let keys = self.sorted_members(self.keys.groups(sweep), "smembers groups").await?;
        let mut conn = self.conn.clone();
        let mut groups = Vec::with_capacity(keys.len());
        for key in keys {
            let (row, finals): (HashMap<String, String>, Vec<String>) = redis::pipe()
                .hgetall(self.keys.group(sweep, &key))
                .lrange(self.keys.group_finals(sweep, &key), 0, -1)
                .query_async(&mut conn)
                .await
                .map_err(StoreError::redis("read group"))?;
            let num = |field: &str| row.get(field).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0).max(0) as u64;
            groups.push(GroupInfo {
                points: num("points"),
                open: num("open"),
                current_final: row.get("current_final").cloned().unwrap_or_default(),
                winner: row.get("winner").cloned().unwrap_or_default(),
                finals,
                key,
            });
        }
        Ok(groups)
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

    fn task_info(&self, sweep: &str, task_id: &str, row: &HashMap<String, String>) -> Result<TaskInfo, StoreError> {
        let key = self.keys.task(sweep, task_id);
        let text = |field: &str| row.get(field).cloned().unwrap_or_default();
        let number = |field: &str| row.get(field).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let spec_json = text("spec");
        let spec: serde_json::Value = serde_json::from_str(&spec_json).map_err(|e| StoreError::Corrupt {
            key: key.clone(),
            field: "spec".into(),
            detail: e.to_string(),
        })?;
        let name_of = |part: &str| spec[part]["name"].as_str().unwrap_or_default().to_string();
        let hparams = spec["hparams"]
            .as_object()
            .map(|m| m.iter().filter_map(|(k, v)| v.as_f64().map(|v| (k.clone(), v))).collect())
            .unwrap_or_default();
        let result = match row.get("result") {
            Some(json) if !json.is_empty() => Some(serde_json::from_str::<TaskResult>(json).map_err(|e| {
                StoreError::Corrupt { key: key.clone(), field: "result".into(), detail: e.to_string() }
            })?),
            _ => None,
        };
        let error_class =
            row.get("error_class").and_then(|c| FailureClass::from_name(c)).unwrap_or(FailureClass::Unspecified);
        Ok(TaskInfo {
            task_id: task_id.to_string(),
            sweep: sweep.to_string(),
            state: TaskState::from_name(&text("state")).unwrap_or_default().into(),
            model: name_of("model"),
            dataset: name_of("dataset"),
            regime: Regime::from_name(&text("regime")).unwrap_or_default().into(),
            stage: Stage::from_name(&text("stage")).unwrap_or_default().into(),
            hparams,
            attempt: number("attempt").max(0) as u32,
            retries_used: number("retries_used").max(0) as u32,
            worker: text("worker"),
            result,
            error: text("error"),
            error_class: error_class as i32,
            checkpoint: row
                .get("ckpt_path")
                .filter(|path| !path.is_empty())
                .map(|path| Checkpoint { path: path.clone(), step: number("ckpt_step").max(0) as u64 }),
            started_unix_ms: number("started_ms"),
            finished_unix_ms: number("finished_ms"),
            accepted_completions: number("accepted").max(0) as u32,
            spec_json,
            resume_error: text("resume_error"),
            // Grid points carry their group, finals the group they were selected for.
            selection_group: row
                .get("group")
                .filter(|g| !g.is_empty())
                .or_else(|| row.get("final_of"))
                .cloned()
                .unwrap_or_default(),
            current_final: false,
        })
    }
}

/// A new worker secret: 32 bytes from the thread-local CSPRNG (ChaCha, seeded by the
/// OS), hex. Only its [`secret_digest`] is stored.
pub fn new_worker_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// SHA-256 of a worker secret, hex: what Redis keeps. The secret is random and long, so
/// a plain hash (no salt, no slow KDF) is enough.
fn secret_digest(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// The selection group of a cell: finetune/scratch grid points of one
/// (model, dataset, regime, seed); None for linear cells and finals.
pub fn selection_group(spec: &CellSpec) -> Option<String> {
    (spec.stage == Stage::Grid && sweepfile::regime_has_final(spec.regime))
        .then(|| format!("{}/{}", spec.group_key(), spec.seed))
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

fn validate_report(worker_id: &str, lease: &LeaseRef) -> Result<(), StoreError> {
    validate_sweep_name(&lease.sweep)?;
    if worker_id.is_empty() {
        return Err(StoreError::InvalidArgument("report: empty worker id".into()));
    }
    if lease.task_id.is_empty() {
        return Err(StoreError::InvalidArgument("report: empty task id".into()));
    }
    Ok(())
}

fn stop(lease: &LeaseRef, reason: StopReason) -> StopOrder {
    StopOrder { lease: Some(lease.clone()), reason: reason as i32 }
}

fn parse_num<T: std::str::FromStr>(text: &str, key: &str, field: &str) -> Result<T, StoreError> {
    text.parse::<T>().map_err(|_| StoreError::Corrupt {
        key: key.to_string(),
        field: field.to_string(),
        detail: format!("not a number: {text:?}"),
    })
}

fn parse_outcome(reply: &[String], key: &str) -> Result<ReportOutcome, StoreError> {
    match reply.first().map(String::as_str) {
        Some("accepted") => Ok(ReportOutcome::Accepted),
        Some("duplicate") => Ok(ReportOutcome::Duplicate),
        Some("stale") => Ok(ReportOutcome::Stale),
        other => Err(StoreError::Corrupt {
            key: key.to_string(),
            field: "report reply".into(),
            detail: format!("unexpected {other:?}"),
        }),
    }
}

/// JSON has no NaN or infinity: non-finite optional scores become unset, other
/// non-finite numbers 0 (a diverged run says so with `diverged`).
fn finite_result(result: &TaskResult) -> TaskResult {
    let finite_opt = |v: Option<f64>| v.filter(|x| x.is_finite());
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    let mut clean = result.clone();
    clean.val_score = finite_opt(result.val_score);
    clean.test_score = finite_opt(result.test_score);
    clean.train_loss = finite_opt(result.train_loss);
    clean.backbone_top1 = finite_opt(result.backbone_top1);
    clean.images_per_s = finite(result.images_per_s);
    clean.duration_s = finite(result.duration_s);
    clean.selected.retain(|_, v| v.is_finite());
    clean.extra.retain(|_, v| v.is_finite());
    clean
}

/// The best-score board: field `model/dataset/regime`, value `score<TAB>task_id`.
fn parse_best(best: HashMap<String, String>) -> Vec<BestScore> {
    let mut scores: Vec<BestScore> = best
        .into_iter()
        .filter_map(|(key, value)| {
            let (score, task_id) = value.split_once('\t')?;
            let val_score = score.parse::<f64>().ok()?;
            let (rest, regime) = key.rsplit_once('/')?;
            let (model, dataset) = rest.split_once('/')?;
            Some(BestScore {
                model: model.to_string(),
                dataset: dataset.to_string(),
                regime: Regime::from_name(regime)?.into(),
                val_score,
                task_id: task_id.to_string(),
            })
        })
        .collect();
    scores.sort_by(|a, b| (&a.regime, &a.model, &a.dataset).cmp(&(&b.regime, &b.model, &b.dataset)));
    scores
}
