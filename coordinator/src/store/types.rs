//! Plain types of the store API (beside the `tsweep_proto::v1` messages it returns).

use std::time::Duration;

/// A setting whose value in a resubmitted file differs from what existing cells recorded:
/// the dotted field in the cell spec, the recorded and the submitted value (JSON), cells.
pub use tsweep_proto::v1::SettingChange;
use tsweep_proto::v1::{Regime, Stage};

/// A task's state (the wire's enum; `tsweep_proto::vocab` names it and says which states
/// are terminal).
pub use tsweep_proto::v1::TaskState;

/// Settings of a [`super::Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long a lease lives without a renewal (measured on the Redis server's clock).
    pub lease_ttl: Duration,
    /// First part of every key (`<prefix>:{<sweep>}:...`); lets tests and several
    /// installations share one Redis.
    pub key_prefix: String,
    /// Consecutive lost-worker/preempted attempts without checkpoint progress after which
    /// a task fails for good ("lost too many times"), so a task that kills its worker
    /// cannot loop forever.
    pub max_lost_attempts: u32,
    /// Cells written per submit script call (the service's `batch_cells`).
    pub submit_batch: usize,
    /// Tasks moved per cancel/retry/reap/delete script call (the service's `batch_cells`).
    pub bulk_batch: usize,
    /// Reconnect backoff: first and longest delay.
    pub reconnect_min_delay: Duration,
    pub reconnect_max_delay: Duration,
    /// Per-command response timeout (a command that takes longer fails as retryable).
    pub response_timeout: Duration,
    /// Timeout of one connection attempt.
    pub connection_timeout: Duration,
    /// A worker not seen (register or renew) for this long is no longer counted.
    pub worker_forget: Duration,
    /// A gap this long between two liveness beats of the control plane is an outage
    /// ([`super::Store::beat`]): leases are extended by it before any reaping.
    pub dark_after: Duration,
}

impl StoreOptions {
    /// How long a worker's registration lives after its last authenticated call: three
    /// lease TTLs (nine missed heartbeats). A lapsed worker registers again; until then
    /// its id cannot be taken by another process.
    pub fn worker_record_ttl(&self) -> Duration {
        (self.lease_ttl * 3).max(Duration::from_secs(1))
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            lease_ttl: Duration::from_secs(30),
            key_prefix: "tsweep".to_string(),
            max_lost_attempts: 20,
            submit_batch: crate::config::DEFAULT_BATCH_CELLS as usize,
            bulk_batch: crate::config::DEFAULT_BATCH_CELLS as usize,
            reconnect_min_delay: Duration::from_millis(50),
            reconnect_max_delay: Duration::from_secs(2),
            response_timeout: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(2),
            worker_forget: Duration::from_secs(120),
            dark_after: Duration::from_secs(6),
        }
    }
}

/// What a submission did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubmitOutcome {
    pub sweep: String,
    /// Cells in the expanded file.
    pub total: u64,
    /// New cells written now.
    pub added: u64,
    /// Cells already known, kept with their state and results.
    pub existing: u64,
    /// Cancelled cells put back to pending because the sweep was cancelled and is
    /// submitted again.
    pub reactivated: u64,
    /// Per (regime, stage): cells in the file and how many of them are new.
    pub per_stage: Vec<StageSubmitCount>,
    /// Existing cells whose spec in the file differs from the recorded one (a setting
    /// outside the cell's identity changed), and how many of them took the new spec
    /// (`update`: cells that had not succeeded).
    pub changed: u64,
    pub updated: u64,
    /// What differs, per (field, recorded, submitted) (at most [`MAX_SETTING_CHANGES`]).
    pub changes: Vec<SettingChange>,
}

/// Distinct setting changes one submission reports (the cells are all counted).
pub const MAX_SETTING_CHANGES: usize = 32;

/// How far one bounded call of a submission got ([`super::Store::submit_part`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubmitPart {
    pub sweep: String,
    /// Cells in the file.
    pub total: u64,
    /// Where the next call starts; equals `total` once every cell is written.
    pub next: u64,
    /// Every batch landed and the submit marker is cleared.
    pub complete: bool,
    /// Cells an interrupted submission of the same file had written already (0: none);
    /// this call went on from there.
    pub resumed_at: u64,
    /// Of the cells this call wrote: new ones, existing ones (same or changed spec).
    pub added: u64,
    pub existing: u64,
    pub changed: u64,
    pub updated: u64,
    pub reactivated: u64,
    pub changes: Vec<SettingChange>,
    /// Cells in the file per (regime, stage), with the new ones of this call.
    pub per_stage: Vec<StageSubmitCount>,
}

/// How far one bounded call of a cancel or retry got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BulkProgress {
    /// Tasks moved by this call.
    pub moved: u64,
    /// Tasks still to move.
    pub remaining: u64,
    pub complete: bool,
}

/// Redis's memory against `maxmemory` (policy noeviction: writes over it are refused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisMemory {
    /// What `maxmemory` is compared with (`used_memory` less replication and AOF buffers).
    pub used_bytes: u64,
    /// 0: no limit.
    pub max_bytes: u64,
    /// Commands Redis refused with `OOM` since it started (`INFO errorstats`).
    pub refused_writes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSubmitCount {
    pub regime: Regime,
    pub stage: Stage,
    pub cells: u64,
    pub added: u64,
}

/// A checkpoint an attempt wrote (the wire's message).
pub use tsweep_proto::v1::Checkpoint;

/// What `fail` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailOutcome {
    pub outcome: tsweep_proto::v1::ReportOutcome,
    /// The task's state after the call (pending or failed when accepted; unchanged otherwise).
    pub state: Option<TaskState>,
}

/// One page of `list_tasks`.
#[derive(Debug, Clone, Default)]
pub struct TaskPage {
    pub tasks: Vec<tsweep_proto::v1::TaskInfo>,
    /// Empty when there is no next page.
    pub next_page_token: String,
}

/// A worker as it registered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkerInfo {
    pub worker_id: String,
    pub hostname: String,
    pub slots: u32,
    pub gpus: u32,
    pub version: String,
}

/// What [`super::Store::register_worker`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// Recorded with the new secret.
    Registered,
    /// Another live registration holds the id; it lapses in `expires_in_ms` unless that
    /// worker calls again.
    InUse { expires_in_ms: u64 },
}

/// What [`super::Store::authenticate_worker`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerAuth {
    /// The secret matches; the record was kept alive.
    Verified,
    /// No live registration for this id (never registered, lapsed, lost with Redis' data).
    Unregistered,
    /// The id is registered with another secret.
    WrongSecret,
}

/// A (model, dataset, regime) selection group of finetune/scratch grid points.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GroupInfo {
    /// `model/dataset/regime/seed` ([`super::selection_group`]).
    pub key: String,
    /// Grid points in the group.
    pub points: u64,
    /// Grid points not ended yet (pending, leased or running).
    pub open: u64,
    /// The final task of the latest selection (empty: none yet, or no eligible point).
    pub current_final: String,
    /// The grid point that won the latest selection (empty: none).
    pub winner: String,
    /// Every final task ever created for this group, oldest first.
    pub finals: Vec<String>,
}

/// What [`super::Store::delete_sweep`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOutcome {
    /// Redis keys deleted (task hashes, indexes, queues, groups, metrics stream, meta ...).
    pub keys_deleted: u64,
    /// Task hashes among them.
    pub tasks_deleted: u64,
    /// Pending tasks cancelled first (`force`).
    pub cancelled: u64,
    /// The sweep's checkpoint directory as the tasks recorded it
    /// (`<checkpoint_root>/<sweep>`), when any task checkpointed; files are not removed.
    pub checkpoint_dir: Option<String>,
    /// Only leftovers of an already deleted sweep were found (its metrics stream or
    /// progress hash, recreated by a worker that was still stopping).
    pub leftovers_only: bool,
    /// Every key is gone; false: the delete stopped at its deadline, call again to go on
    /// (the totals above count everything since the delete began).
    pub complete: bool,
    /// Tasks the sweep had when the delete began.
    pub tasks_total: u64,
}

/// A control-plane outage: the gap between two liveness beats that was longer than
/// [`StoreOptions::dark_after`] (both on the Redis server's clock, ms). Redis down, every
/// coordinator down, or Redis too slow to answer all look the same: nobody could renew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    pub start_ms: u64,
    pub end_ms: u64,
}

impl Outage {
    pub fn duration_ms(&self) -> u64 {
        self.end_ms.saturating_sub(self.start_ms)
    }
}

/// What one liveness beat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    /// Since the previous beat of any coordinator (0 for the very first).
    pub gap_ms: u64,
    /// Set when the gap was an outage (now recorded for the reapers).
    pub outage: Option<Outage>,
    /// Redis's run id changed since the previous beat: it restarted (from its AOF).
    pub redis_restarted: bool,
}
