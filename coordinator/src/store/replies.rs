//! The scripts' replies as types. A script answers an array whose first item names its
//! outcome and whose other items are that outcome's fields, in the order the script
//! returns them (`lua/*.lua`); each reply type reads them by name through
//! [`FromRedisValue`], so a call site matches on an enum and never indexes a reply.
//!
//! A reply of another shape (a script and the binary from different versions) is a
//! [`ParsingError`] naming the script and the field; [`super::StoreError::is_retryable`]
//! says no to it.

use std::str::FromStr;

use redis::{FromRedisValue, ParsingError, Value};
use tsweep_proto::v1::{Checkpoint, ReportOutcome, TaskState};

/// A reply's items, taken in order by field name.
struct Items {
    script: &'static str,
    items: std::vec::IntoIter<Value>,
}

impl Items {
    fn of(script: &'static str, value: Value) -> Result<Self, ParsingError> {
        match value {
            Value::Array(items) => Ok(Items { script, items: items.into_iter() }),
            other => Err(format!("{script} reply: not an array: {other:?}").into()),
        }
    }

    /// The next item as text (a missing one is an error naming `field`).
    fn text(&mut self, field: &str) -> Result<String, ParsingError> {
        let value = self.items.next().ok_or_else(|| format!("{} reply: no `{field}`", self.script))?;
        String::from_redis_value(value).map_err(|e| format!("{} reply: `{field}`: {e}", self.script).into())
    }

    fn num<T: FromStr>(&mut self, field: &str) -> Result<T, ParsingError> {
        let text = self.text(field)?;
        self.parse(field, &text)
    }

    fn parse<T: FromStr>(&self, field: &str, text: &str) -> Result<T, ParsingError> {
        text.parse().map_err(|_| format!("{} reply: `{field}` is not a number: {text:?}", self.script).into())
    }

    fn is_empty(&self) -> bool {
        self.items.as_slice().is_empty()
    }

    /// The outcome's name (the first item).
    fn outcome(&mut self) -> Result<String, ParsingError> {
        self.text("outcome")
    }

    fn unknown<T>(&self, outcome: &str) -> Result<T, ParsingError> {
        Err(format!("{} reply: unknown outcome {outcome:?}", self.script).into())
    }

    /// The items left, as text.
    fn rest(self) -> Result<Vec<String>, ParsingError> {
        let script = self.script;
        self.items.map(|v| String::from_redis_value(v).map_err(|e| format!("{script} reply: {e}").into())).collect()
    }
}

/// `acquire.lua`.
#[derive(Debug)]
pub(super) enum AcquireReply {
    Leased(LeasedTask),
    /// The sweep has nothing left to do: it may leave the active set.
    Idle,
    /// Nothing this worker can take now (nothing pending that fits, a submission landing,
    /// or the sweep not active).
    NothingFits,
}

#[derive(Debug)]
pub(super) struct LeasedTask {
    pub task_id: String,
    pub attempt: u32,
    pub spec_json: String,
    pub gpus: u32,
    pub resume: Option<Checkpoint>,
}

impl FromRedisValue for AcquireReply {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let mut items = Items::of("acquire", value)?;
        match items.outcome()?.as_str() {
            "ok" => {
                let task_id = items.text("task_id")?;
                let attempt = items.num("attempt")?;
                let spec_json = items.text("spec")?;
                let gpus = items.num("gpus")?;
                let path = items.text("ckpt_path")?;
                let step = items.num("ckpt_step")?;
                let resume = (!path.is_empty()).then_some(Checkpoint { path, step });
                Ok(AcquireReply::Leased(LeasedTask { task_id, attempt, spec_json, gpus, resume }))
            }
            "idle" => Ok(AcquireReply::Idle),
            "none" | "inactive" => Ok(AcquireReply::NothingFits),
            other => items.unknown(other),
        }
    }
}

/// `renew.lua`: one answer per lease, in the order they were sent.
#[derive(Debug, PartialEq)]
pub(super) enum RenewAnswer {
    Held,
    Cancelled,
    Lost,
}

impl FromRedisValue for RenewAnswer {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        Ok(match String::from_redis_value(value)?.as_str() {
            "ok" => RenewAnswer::Held,
            "cancelled" => RenewAnswer::Cancelled,
            _ => RenewAnswer::Lost,
        })
    }
}

/// `complete.lua` and `fail.lua`: the outcome and the task's state after it (none when
/// the task is gone).
#[derive(Debug)]
pub(super) struct ReportReply {
    pub outcome: ReportOutcome,
    pub state: Option<TaskState>,
}

impl FromRedisValue for ReportReply {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let mut items = Items::of("report", value)?;
        let outcome = match items.outcome()?.as_str() {
            "accepted" => ReportOutcome::Accepted,
            "duplicate" => ReportOutcome::Duplicate,
            "stale" => ReportOutcome::Stale,
            other => return items.unknown(other),
        };
        let state = TaskState::from_name(&items.text("state")?);
        Ok(ReportReply { outcome, state })
    }
}

/// `reap.lua`: one batch of expired leases taken back.
#[derive(Debug)]
pub(super) struct ReapReply {
    pub reaped: u64,
    /// The batch was full: call again.
    pub more: bool,
    /// Leases extended by a control-plane outage first, and the outage's length.
    pub extended: u64,
    pub dark_ms: u64,
    pub lost: Vec<LostLease>,
}

#[derive(Debug)]
pub(super) struct LostLease {
    pub task_id: String,
    pub worker: String,
    pub attempt: String,
    /// Leased (never started) or running.
    pub state: String,
}

impl FromRedisValue for ReapReply {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let mut items = Items::of("reap", value)?;
        let reaped = items.num("reaped")?;
        let more = items.text("more")? == "1";
        let extended = items.num("extended")?;
        let dark_ms = items.num("dark_ms")?;
        let lost = items
            .rest()?
            .chunks_exact(4)
            .map(|lost| LostLease {
                task_id: lost[0].clone(),
                worker: lost[1].clone(),
                attempt: lost[2].clone(),
                state: lost[3].clone(),
            })
            .collect();
        Ok(ReapReply { reaped, more, extended, dark_ms, lost })
    }
}

/// `register_worker.lua`.
#[derive(Debug)]
pub(super) enum RegisterReply {
    Registered,
    /// Another live registration holds the id for `pttl_ms` more.
    InUse {
        pttl_ms: i64,
    },
}

impl FromRedisValue for RegisterReply {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let mut items = Items::of("register_worker", value)?;
        match items.outcome()?.as_str() {
            "ok" => Ok(RegisterReply::Registered),
            "in_use" => Ok(RegisterReply::InUse { pttl_ms: items.num("pttl_ms")? }),
            other => items.unknown(other),
        }
    }
}

/// `plane_beat.lua`.
#[derive(Debug)]
pub(super) struct BeatReply {
    /// Since the previous beat of any coordinator.
    pub gap_ms: u64,
    /// The previous beat's time when the gap was longer than the dark threshold: an
    /// outage began then.
    pub dark_since_ms: Option<u64>,
    pub redis_restarted: bool,
}

impl FromRedisValue for BeatReply {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let mut items = Items::of("plane_beat", value)?;
        let dark = match items.outcome()?.as_str() {
            "dark" => true,
            "ok" | "first" => false,
            other => return items.unknown(other),
        };
        let gap_ms = items.num("gap_ms")?;
        let last = items.text("last_ms")?;
        let dark_since_ms = if dark { Some(items.parse("last_ms", &last)?) } else { None };
        let redis_restarted = items.text("restarted")? == "1";
        Ok(BeatReply { gap_ms, dark_since_ms, redis_restarted })
    }
}

/// `pending_fit.lua`: per GPU count of the queued pending cells, how many cells and how
/// many of the given workers could take one.
#[derive(Debug)]
pub(super) struct PendingFitRow {
    pub gpus: u32,
    pub cells: u64,
    pub takers: u64,
}

/// The rows of a `pending_fit.lua` reply.
#[derive(Debug)]
pub(super) struct PendingFitReply(pub Vec<PendingFitRow>);

impl FromRedisValue for PendingFitReply {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let mut items = Items::of("pending_fit", value)?;
        let mut rows = Vec::new();
        while !items.is_empty() {
            rows.push(PendingFitRow {
                gpus: items.num("gpus")?,
                cells: items.num("cells")?,
                takers: items.num("takers")?,
            });
        }
        Ok(PendingFitReply(rows))
    }
}

/// `create_final.lua`: what became of a closed group, and the final's id when one was
/// created or exists.
#[derive(Debug)]
pub(super) struct CreateFinalReply {
    /// created, exists, none, incomplete, reopened, changed, gone.
    pub outcome: String,
    pub final_id: String,
}

impl FromRedisValue for CreateFinalReply {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let mut items = Items::of("create_final", value)?;
        let outcome = items.outcome()?;
        match outcome.as_str() {
            "created" | "exists" | "none" | "incomplete" | "reopened" | "changed" | "gone" => {
                Ok(CreateFinalReply { outcome, final_id: items.text("final_id")? })
            }
            other => items.unknown(other),
        }
    }
}

/// `submit_meta.lua`.
#[derive(Debug)]
pub(super) enum SubmitMetaReply {
    /// Recorded; an interrupted submission of the same file resumes at `resume_at`.
    Recorded {
        resume_at: u64,
    },
    Deleting,
}

impl FromRedisValue for SubmitMetaReply {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let mut items = Items::of("submit_meta", value)?;
        match items.outcome()?.as_str() {
            "ok" => {
                items.text("previous")?;
                Ok(SubmitMetaReply::Recorded { resume_at: items.num("resume_at")? })
            }
            "deleting" => Ok(SubmitMetaReply::Deleting),
            other => items.unknown(other),
        }
    }
}

/// `submit_cells.lua`: what became of each cell sent, in order.
#[derive(Debug)]
pub(super) enum SubmitCellsReply {
    Written(Vec<CellWrite>),
    Superseded,
    Gone,
}

/// One cell of a `submit_cells.lua` batch (its flag `0`..`3`).
#[derive(Debug, PartialEq)]
pub(super) enum CellWrite {
    /// Recorded as it was sent (`0`).
    Existing,
    /// New (`1`).
    Added,
    /// Recorded with other settings (`2`), and updated to the sent ones when the submit
    /// asked for it (`3`): `recorded` is the spec as it was.
    Changed { updated: bool, recorded: String },
}

impl FromRedisValue for SubmitCellsReply {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let mut items = Items::of("submit_cells", value)?;
        match items.outcome()?.as_str() {
            "ok" => {
                let flags = items.text("flags")?;
                let mut writes = Vec::with_capacity(flags.len());
                for flag in flags.chars() {
                    writes.push(match flag {
                        '0' => CellWrite::Existing,
                        '1' => CellWrite::Added,
                        '2' | '3' => {
                            CellWrite::Changed { updated: flag == '3', recorded: items.text("recorded spec")? }
                        }
                        other => return Err(format!("submit_cells reply: unknown cell flag {other:?}").into()),
                    });
                }
                Ok(SubmitCellsReply::Written(writes))
            }
            "superseded" => Ok(SubmitCellsReply::Superseded),
            "gone" => Ok(SubmitCellsReply::Gone),
            other => items.unknown(other),
        }
    }
}

/// `submit_finish.lua` (a plain string).
#[derive(Debug)]
pub(super) enum SubmitFinishReply {
    Done,
    Superseded,
    Gone,
}

impl FromRedisValue for SubmitFinishReply {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        match String::from_redis_value(value)?.as_str() {
            "done" => Ok(SubmitFinishReply::Done),
            "superseded" => Ok(SubmitFinishReply::Superseded),
            "gone" => Ok(SubmitFinishReply::Gone),
            other => Err(format!("submit_finish reply: unknown outcome {other:?}").into()),
        }
    }
}

/// `cancel.lua` and `retry.lua`: one batch moved, and how many are left to move.
#[derive(Debug)]
pub(super) struct MoveReply {
    pub moved: u64,
    pub remaining: u64,
}

impl FromRedisValue for MoveReply {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let mut items = Items::of("move", value)?;
        Ok(MoveReply { moved: items.num("moved")?, remaining: items.num("remaining")? })
    }
}

/// `delete_begin.lua`.
#[derive(Debug)]
pub(super) enum DeleteBeginReply {
    /// The tombstone is in place (now, or by an earlier call): the batches may run.
    Begun {
        tasks_total: u64,
    },
    /// No sweep, but keys of a deleted one were left and are now gone.
    Leftovers {
        keys_deleted: u64,
    },
    NotFound,
    Unfinished {
        pending: u64,
        leased: u64,
        running: u64,
        selections: u64,
    },
}

impl FromRedisValue for DeleteBeginReply {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let mut items = Items::of("delete_begin", value)?;
        match items.outcome()?.as_str() {
            "started" | "resumed" => Ok(DeleteBeginReply::Begun { tasks_total: items.num("tasks_total")? }),
            "leftovers" => Ok(DeleteBeginReply::Leftovers { keys_deleted: items.num("keys_deleted")? }),
            "not_found" => Ok(DeleteBeginReply::NotFound),
            "unfinished" => Ok(DeleteBeginReply::Unfinished {
                pending: items.num("pending")?,
                leased: items.num("leased")?,
                running: items.num("running")?,
                selections: items.num("selections")?,
            }),
            other => items.unknown(other),
        }
    }
}

/// `delete_batch.lua`: totals so far; `done` when no key is left.
#[derive(Debug)]
pub(super) enum DeleteBatchReply {
    Deleted {
        done: bool,
        keys_deleted: u64,
        tasks_deleted: u64,
        checkpoint: String,
    },
    /// Another coordinator finished the delete.
    NotFound,
}

impl FromRedisValue for DeleteBatchReply {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let mut items = Items::of("delete_batch", value)?;
        let outcome = items.outcome()?;
        match outcome.as_str() {
            "more" | "done" => Ok(DeleteBatchReply::Deleted {
                done: outcome == "done",
                keys_deleted: items.num("keys_deleted")?,
                tasks_deleted: items.num("tasks_deleted")?,
                checkpoint: items.text("checkpoint")?,
            }),
            "not_found" => Ok(DeleteBatchReply::NotFound),
            other => items.unknown(other),
        }
    }
}

/// `worker_auth.lua` (a plain string).
#[derive(Debug)]
pub(super) enum WorkerAuthReply {
    Ok,
    Unregistered,
    Wrong,
}

impl FromRedisValue for WorkerAuthReply {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        match String::from_redis_value(value)?.as_str() {
            "ok" => Ok(WorkerAuthReply::Ok),
            "unregistered" => Ok(WorkerAuthReply::Unregistered),
            "wrong" => Ok(WorkerAuthReply::Wrong),
            other => Err(format!("worker_auth reply: unknown outcome {other:?}").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|s| Value::BulkString(s.as_bytes().to_vec())).collect())
    }

    #[test]
    fn acquire_reads_the_lease_and_its_checkpoint_by_name() {
        let leased = AcquireReply::from_redis_value(reply(&["ok", "t1", "3", "{}", "2", "/c/t1.ckpt", "40"])).unwrap();
        let AcquireReply::Leased(task) = leased else { panic!("{leased:?}") };
        assert_eq!((task.task_id.as_str(), task.attempt, task.gpus), ("t1", 3, 2));
        assert_eq!(task.resume, Some(Checkpoint { path: "/c/t1.ckpt".into(), step: 40 }));
        let fresh = AcquireReply::from_redis_value(reply(&["ok", "t1", "1", "{}", "0", "", "0"])).unwrap();
        assert!(matches!(fresh, AcquireReply::Leased(LeasedTask { resume: None, .. })));
    }

    #[test]
    fn a_reply_of_another_shape_names_the_script_and_field() {
        let short = AcquireReply::from_redis_value(reply(&["ok", "t1", "x"])).unwrap_err().to_string();
        assert!(short.contains("acquire reply: `attempt` is not a number"), "{short}");
        let unknown = ReportReply::from_redis_value(reply(&["maybe", ""])).unwrap_err().to_string();
        assert!(unknown.contains("report reply: unknown outcome \"maybe\""), "{unknown}");
        let missing = DeleteBeginReply::from_redis_value(reply(&["unfinished", "1", "2"])).unwrap_err().to_string();
        assert!(missing.contains("no `running`"), "{missing}");
        // Parsing errors are never retried: the same reply would come back.
        let err: redis::RedisError = ParsingError::from("x".to_string()).into();
        assert!(!crate::store::StoreError::Redis { operation: "acquire script", source: err }.is_retryable());
    }

    #[test]
    fn reap_and_pending_fit_read_their_rows() {
        let reap = ReapReply::from_redis_value(reply(&[
            "2", "1", "0", "0", "t1", "w1", "1", "running", "t2", "w1", "4", "leased",
        ]))
        .unwrap();
        assert_eq!((reap.reaped, reap.more, reap.lost.len()), (2, true, 2));
        assert_eq!(reap.lost[1].state, "leased");
        let fit = PendingFitReply::from_redis_value(reply(&["1", "6", "0", "0", "2", "1"])).unwrap();
        assert_eq!(fit.0.len(), 2);
        assert_eq!((fit.0[0].gpus, fit.0[0].cells, fit.0[0].takers), (1, 6, 0));
        assert!(PendingFitReply::from_redis_value(reply(&["1", "6"])).is_err());
    }

    #[test]
    fn submit_cells_pairs_each_changed_cell_with_its_recorded_spec() {
        let SubmitCellsReply::Written(cells) =
            SubmitCellsReply::from_redis_value(reply(&["ok", "0132", "{\"a\":1}", "{\"b\":2}"])).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            cells,
            vec![
                CellWrite::Existing,
                CellWrite::Added,
                CellWrite::Changed { updated: true, recorded: "{\"a\":1}".into() },
                CellWrite::Changed { updated: false, recorded: "{\"b\":2}".into() },
            ]
        );
        assert!(SubmitCellsReply::from_redis_value(reply(&["ok", "2"])).is_err());
    }
}
