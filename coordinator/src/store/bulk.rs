//! Big operations in bounded batches: submit, cancel, retry and delete.
//!
//! Each runs as a sequence of short scripts (one batch of cells or tasks each, so no call
//! blocks Redis for long whatever the sweep's size: figures in BENCHMARKS.md). The `_part`
//! calls stop after their [`Budget`] (always after at least one batch) and say how far
//! they got; calling again goes on. Every step is safe to repeat, and an operation that
//! was interrupted (a killed coordinator, a client gone, Redis full) is finished by
//! running it again:
//! - submit keeps a marker on the sweep until its last batch landed (`submit_meta.lua`):
//!   status `submitting`, nothing leased, no final scheduled; the same file submitted again
//!   resumes where it stopped;
//! - a delete renames the meta to a tombstone first (`delete_begin.lua`), so nothing
//!   writes to the sweep any more, then removes the rest batch by batch
//!   (`delete_batch.lua`); status says `deleting` until it finished.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::AsyncCommands;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tracing::{debug, info};
use tsweep_proto::cell::{CellSpec, Stage};

use super::replies::{
    CellWrite, DeleteBatchReply, DeleteBeginReply, MoveReply, SubmitCellsReply, SubmitFinishReply, SubmitMetaReply,
};
use super::scripts::SCRIPTS;
use super::types::{
    BulkProgress, DeleteOutcome, SettingChange, StageSubmitCount, SubmitOutcome, SubmitPart, TaskState,
    MAX_SETTING_CHANGES,
};
use super::{checkpoint_dir_of, selection_group, validate_sweep_name, Store, StoreError, METRICS_GROUP};
use crate::sweepfile::SweepCells;

/// When a bounded call stops: once its deadline passed, checked between batches (so a
/// call always does at least one batch and never stops in the middle of one).
#[derive(Debug, Clone, Copy, Default)]
pub struct Budget {
    deadline: Option<Instant>,
}

impl Budget {
    /// No deadline: the operation runs to its end.
    pub fn unlimited() -> Budget {
        Budget { deadline: None }
    }

    /// Stops after about `duration`.
    pub fn of(duration: Duration) -> Budget {
        Budget { deadline: Some(Instant::now() + duration) }
    }

    fn spent(&self) -> bool {
        self.deadline.is_some_and(|deadline| Instant::now() >= deadline)
    }
}

/// What one submission call is asked to do.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// First cell (file order) to write: 0 starts, or resumes an interrupted submission of
    /// the same file; then the previous call's [`SubmitPart::next`].
    pub start: u64,
    /// Apply changed settings to existing cells that have not succeeded.
    pub update: bool,
    pub budget: Budget,
    /// The sweep file's name, for `status` while the submission has not landed.
    pub file: String,
}

impl Store {
    /// One bounded call of a submission: writes the cells from `options.start` on, in
    /// batches of `submit_batch` (one `submit_cells` script each), until every cell is
    /// written or the budget is spent. The first call (`start` = 0) records the sweep and
    /// sets its submit marker (or finds an interrupted submission of the same file and
    /// goes on from where it stopped); the call that writes the last batch reactivates a
    /// cancelled sweep's cells, marks the sweep active and clears the marker
    /// (`complete`). Existing cells keep their state, attempts and results; those whose
    /// settings differ are counted and their differences listed (`update`: cells that
    /// have not succeeded take the new settings).
    pub async fn submit_part(&self, sweep: &dyn SweepCells, options: &SubmitOptions) -> Result<SubmitPart, StoreError> {
        let name = sweep.name();
        validate_sweep_name(name)?;
        let total = sweep.total();
        let fingerprint = submit_fingerprint(&sweep.fingerprint(), options.update);
        let mut conn = self.conn.clone();
        let base = self.keys.sweep_base(name);
        let meta_key = self.keys.meta(name);
        let mut part = SubmitPart {
            sweep: name.to_string(),
            total,
            per_stage: sweep
                .stage_counts()
                .into_iter()
                .map(|c| StageSubmitCount { regime: c.regime, stage: c.stage, cells: c.cells, added: 0 })
                .collect(),
            ..SubmitPart::default()
        };
        let mut next = options.start.min(total);
        if options.start == 0 {
            let settings = serde_json::json!({ "max_attempts": sweep.settings().max_attempts }).to_string();
            let reply: SubmitMetaReply = SCRIPTS
                .submit_meta
                .key(&base)
                .arg(name)
                .arg(settings)
                .arg(METRICS_GROUP)
                .arg(&fingerprint)
                .arg(total)
                .arg(&options.file)
                .invoke_async(&mut conn)
                .await
                .map_err(StoreError::redis("submit_meta script"))?;
            match reply {
                SubmitMetaReply::Recorded { resume_at } => {
                    next = resume_at.min(total);
                    part.resumed_at = next;
                }
                SubmitMetaReply::Deleting => return Err(StoreError::SweepDeleting { sweep: name.to_string() }),
            }
            let _: () = conn.sadd(self.keys.sweeps(), name).await.map_err(StoreError::redis("sadd sweeps"))?;
            if next > 0 {
                info!(sweep = %name, resumed_at = next, total, "resuming an interrupted submission");
            }
        }

        let batch = self.options.submit_batch.max(1) as u64;
        let mut changes: BTreeMap<(String, String, String), u64> = BTreeMap::new();
        let mut wrote = false;
        while next < total {
            if wrote && options.budget.spent() {
                break;
            }
            let end = (next + batch).min(total);
            let cells = sweep.batch(next..end);
            let mut invocation = SCRIPTS.submit_cells.key(&base);
            invocation.arg(&fingerprint).arg(next).arg(if options.update { "1" } else { "0" });
            for cell in &cells {
                if cell.id.is_empty() {
                    return Err(StoreError::InvalidArgument(format!(
                        "sweep {name}: cell {} has an empty task id",
                        cell.spec.group_key()
                    )));
                }
                let spec_json = cell.spec.to_json().map_err(|source| StoreError::Json { what: "cell spec", source })?;
                invocation
                    .arg(&cell.id)
                    .arg(spec_json)
                    .arg(cell.spec.gpus)
                    .arg(cell.spec.stage.name())
                    .arg(cell.spec.regime.name())
                    .arg(selection_group(&cell.spec).unwrap_or_default())
                    .arg(cell.spec.max_attempts.max(1))
                    .arg(if cell.spec.stage == Stage::Grid { cell.spec.group_key() } else { String::new() })
                    .arg(cell.after.as_deref().unwrap_or(""));
            }
            let reply: SubmitCellsReply =
                invocation.invoke_async(&mut conn).await.map_err(StoreError::redis("submit_cells script"))?;
            let writes = match reply {
                SubmitCellsReply::Written(writes) => writes,
                SubmitCellsReply::Superseded => return Err(StoreError::SubmitSuperseded { sweep: name.to_string() }),
                SubmitCellsReply::Gone => return Err(StoreError::SweepNotFound { sweep: name.to_string() }),
            };
            for (cell, write) in cells.iter().zip(writes) {
                match write {
                    CellWrite::Added => {
                        part.added += 1;
                        let (regime, stage) = (cell.spec.regime, cell.spec.stage);
                        match part.per_stage.iter_mut().find(|c| c.regime == regime && c.stage == stage) {
                            Some(count) => count.added += 1,
                            None => part.per_stage.push(StageSubmitCount { regime, stage, cells: 0, added: 1 }),
                        }
                    }
                    CellWrite::Existing => part.existing += 1,
                    CellWrite::Changed { updated, recorded } => {
                        part.existing += 1;
                        part.changed += 1;
                        if updated {
                            part.updated += 1;
                        }
                        for difference in spec_differences(&recorded, &cell.spec) {
                            let room = changes.len() < MAX_SETTING_CHANGES;
                            match changes.get_mut(&difference) {
                                Some(cells) => *cells += 1,
                                None if room => {
                                    changes.insert(difference, 1);
                                }
                                None => {}
                            }
                        }
                    }
                }
            }
            next = end;
            wrote = true;
        }
        part.next = next;
        part.changes = changes
            .into_iter()
            .map(|((field, recorded, submitted), cells)| SettingChange { field, recorded, submitted, cells })
            .collect();
        if next < total {
            debug!(sweep = %name, next, total, "submission call stopped at its budget");
            return Ok(part);
        }

        // Every cell landed: a cancelled sweep's cells back to pending, then active, then
        // the marker goes (acquire leases from the sweep from then on).
        let reactivate: Option<String> =
            conn.hget(&meta_key, "submit_reactivate").await.map_err(StoreError::redis("hget submit_reactivate"))?;
        if reactivate.as_deref() == Some("1") {
            let moved = self.move_back_part(name, "cancelled", options.budget).await?;
            part.reactivated = moved.moved;
            if !moved.complete {
                return Ok(part);
            }
        }
        self.mark_active(name).await?;
        let finish: SubmitFinishReply = SCRIPTS
            .submit_finish
            .key(&base)
            .arg(&fingerprint)
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::redis("submit_finish script"))?;
        match finish {
            SubmitFinishReply::Done => part.complete = true,
            SubmitFinishReply::Superseded => return Err(StoreError::SubmitSuperseded { sweep: name.to_string() }),
            SubmitFinishReply::Gone => return Err(StoreError::SweepNotFound { sweep: name.to_string() }),
        }
        info!(sweep = %name, total, added = part.added, changed = part.changed, updated = part.updated,
              reactivated = part.reactivated, "submission landed");
        Ok(part)
    }

    /// Records the sweep and writes every cell Redis does not have yet, in batches
    /// ([`Store::submit_part`] until complete). Existing cells keep their state, attempts
    /// and results. Submitting a cancelled sweep again re-activates it and puts its
    /// cancelled cells back to pending.
    pub async fn submit(&self, sweep: &dyn SweepCells) -> Result<SubmitOutcome, StoreError> {
        self.submit_with(sweep, false).await
    }

    /// [`Store::submit`]; with `update`, existing cells that have not succeeded take the
    /// settings of the file.
    pub async fn submit_with(&self, sweep: &dyn SweepCells, update: bool) -> Result<SubmitOutcome, StoreError> {
        let mut options = SubmitOptions { update, budget: Budget::unlimited(), ..SubmitOptions::default() };
        let mut outcome = SubmitOutcome { sweep: sweep.name().to_string(), ..SubmitOutcome::default() };
        loop {
            let part = self.submit_part(sweep, &options).await?;
            outcome.total = part.total;
            outcome.added += part.added;
            outcome.existing += part.existing;
            outcome.changed += part.changed;
            outcome.updated += part.updated;
            outcome.reactivated += part.reactivated;
            merge_changes(&mut outcome.changes, part.changes);
            if outcome.per_stage.is_empty() {
                outcome.per_stage = part.per_stage;
            } else {
                for count in part.per_stage {
                    if let Some(existing) =
                        outcome.per_stage.iter_mut().find(|c| c.regime == count.regime && c.stage == count.stage)
                    {
                        existing.added += count.added;
                    }
                }
            }
            if part.complete {
                break;
            }
            options.start = part.next;
        }
        Ok(outcome)
    }

    /// One bounded call of a cancel: the sweep is marked cancelled at once (nothing is
    /// leased from it, running tasks are told to stop), then pending tasks become
    /// cancelled in batches of `bulk_batch` until none is left or the budget is spent.
    pub async fn cancel_part(&self, sweep: &str, budget: Budget) -> Result<BulkProgress, StoreError> {
        self.require_sweep(sweep).await?;
        let mut cancel = SCRIPTS.cancel.key(self.keys.sweep_base(sweep));
        cancel.arg(self.options.bulk_batch.max(1));
        let progress = self.move_in_batches(&cancel, "cancel script", budget).await?;
        info!(sweep = %sweep, cancelled = progress.moved, remaining = progress.remaining, "sweep cancelled");
        Ok(progress)
    }

    /// Cancels the sweep: pending tasks become cancelled now; leased and running ones are
    /// told to stop (renew answers `CANCELLED`) and end cancelled when they report a
    /// failure or their lease runs out (a completion that arrives first is still
    /// recorded). Returns how many pending tasks were cancelled.
    pub async fn cancel_sweep(&self, sweep: &str) -> Result<u64, StoreError> {
        Ok(self.cancel_part(sweep, Budget::unlimited()).await?.moved)
    }

    /// One bounded call of a retry: failed and/or cancelled tasks back to pending with a
    /// fresh budget, in batches, and the sweep active again.
    pub async fn retry_part(
        &self,
        sweep: &str,
        failed: bool,
        cancelled: bool,
        budget: Budget,
    ) -> Result<BulkProgress, StoreError> {
        self.require_sweep(sweep).await?;
        let mut progress = BulkProgress::default();
        let states: Vec<TaskState> = [(failed, TaskState::Failed), (cancelled, TaskState::Cancelled)]
            .into_iter()
            .filter_map(|(wanted, state)| wanted.then_some(state))
            .collect();
        for (i, from) in states.iter().enumerate() {
            let moved = self.move_back_part(sweep, from.name(), budget).await?;
            progress.moved += moved.moved;
            if !moved.complete {
                let mut conn = self.conn.clone();
                let mut remaining = moved.remaining;
                for later in &states[i + 1..] {
                    let left: u64 = conn
                        .zcard(self.keys.state_index(sweep, *later))
                        .await
                        .map_err(StoreError::redis("zcard state"))?;
                    remaining += left;
                }
                progress.remaining = remaining;
                self.mark_active(sweep).await?;
                return Ok(progress);
            }
        }
        if !states.is_empty() {
            // Marks the sweep active even when nothing moved (un-cancels it).
            if progress.moved == 0 {
                let mut conn = self.conn.clone();
                let _: () = conn
                    .hset(self.keys.meta(sweep), "status", "active")
                    .await
                    .map_err(StoreError::redis("hset status"))?;
            }
            self.mark_active(sweep).await?;
        }
        progress.complete = true;
        info!(sweep = %sweep, requeued = progress.moved, failed, cancelled, "sweep retried");
        Ok(progress)
    }

    /// Puts failed and/or cancelled tasks back to pending with a fresh budget and
    /// re-activates the sweep. Returns how many were re-queued.
    pub async fn retry_sweep(&self, sweep: &str, failed: bool, cancelled: bool) -> Result<u64, StoreError> {
        Ok(self.retry_part(sweep, failed, cancelled, Budget::unlimited()).await?.moved)
    }

    /// Moves tasks of `from` (failed | cancelled) back to pending, in batches, until none
    /// is left or the budget is spent.
    pub(super) async fn move_back_part(
        &self,
        sweep: &str,
        from: &str,
        budget: Budget,
    ) -> Result<BulkProgress, StoreError> {
        let mut retry = SCRIPTS.retry.key(self.keys.sweep_base(sweep));
        retry.arg(from).arg(self.options.bulk_batch.max(1));
        self.move_in_batches(&retry, "retry script", budget).await
    }

    /// Runs `script` (one batch per call; it answers {moved, remaining}) until nothing is
    /// left or the budget is spent: the one loop of cancel and retry.
    async fn move_in_batches(
        &self,
        script: &redis::ScriptInvocation<'_>,
        what: &'static str,
        budget: Budget,
    ) -> Result<BulkProgress, StoreError> {
        let mut conn = self.conn.clone();
        let mut progress = BulkProgress::default();
        loop {
            let reply: MoveReply = script.invoke_async(&mut conn).await.map_err(StoreError::redis(what))?;
            progress.moved += reply.moved;
            progress.remaining = reply.remaining;
            if progress.remaining == 0 {
                progress.complete = true;
                return Ok(progress);
            }
            if budget.spent() {
                return Ok(progress);
            }
        }
    }

    /// One bounded call of a delete ([`Store::delete_sweep`]): with `force` the sweep is
    /// cancelled first (in batches too); then the meta becomes a tombstone and the keys go
    /// batch by batch until none is left (`complete`) or the budget is spent. A delete that
    /// stopped is finished by calling again (with or without `force`).
    pub async fn delete_part(&self, sweep: &str, force: bool, budget: Budget) -> Result<DeleteOutcome, StoreError> {
        validate_sweep_name(sweep)?;
        let mut conn = self.conn.clone();
        let mut cancelled = 0;
        if force {
            match self.cancel_part(sweep, budget).await {
                Ok(progress) if !progress.complete => {
                    return Ok(DeleteOutcome { cancelled: progress.moved, ..DeleteOutcome::default() });
                }
                Ok(progress) => cancelled = progress.moved,
                Err(StoreError::SweepNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // Out of `active` first, so that no timer (reaper, finals, metrics consumer) picks
        // the sweep up again while its keys go; put back if the delete is refused.
        let was_active: bool = conn.srem(self.keys.active(), sweep).await.map_err(StoreError::redis("srem active"))?;
        let begun: Result<DeleteBeginReply, StoreError> = SCRIPTS
            .delete_begin
            .key(self.keys.sweep_base(sweep))
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::redis("delete_begin script"));
        if was_active && !matches!(begun, Ok(DeleteBeginReply::Begun { .. })) {
            self.mark_active(sweep).await?;
        }
        let tasks_total = match begun? {
            DeleteBeginReply::Begun { tasks_total } => tasks_total,
            DeleteBeginReply::Leftovers { keys_deleted } => {
                let _: () = conn.srem(self.keys.sweeps(), sweep).await.map_err(StoreError::redis("srem sweeps"))?;
                info!(sweep = %sweep, keys = keys_deleted, "leftovers of a deleted sweep removed");
                return Ok(DeleteOutcome {
                    keys_deleted,
                    leftovers_only: true,
                    complete: true,
                    ..DeleteOutcome::default()
                });
            }
            DeleteBeginReply::NotFound => {
                let _: () = conn.srem(self.keys.sweeps(), sweep).await.map_err(StoreError::redis("srem sweeps"))?;
                return Err(StoreError::SweepNotFound { sweep: sweep.to_string() });
            }
            DeleteBeginReply::Unfinished { pending, leased, running, selections } => {
                return Err(StoreError::SweepUnfinished {
                    sweep: sweep.to_string(),
                    pending,
                    leased,
                    running,
                    selections,
                });
            }
        };
        // Out of `active` again now that the tombstone exists: a repair pass that read the
        // sweep's meta before it became the tombstone may have put it back in between.
        let _: () = conn.srem(self.keys.active(), sweep).await.map_err(StoreError::redis("srem active"))?;
        loop {
            let reply: DeleteBatchReply = SCRIPTS
                .delete_batch
                .key(self.keys.sweep_base(sweep))
                .arg(self.options.bulk_batch.max(1))
                .invoke_async(&mut conn)
                .await
                .map_err(StoreError::redis("delete_batch script"))?;
            let outcome = match reply {
                DeleteBatchReply::Deleted { done, keys_deleted, tasks_deleted, checkpoint } => DeleteOutcome {
                    keys_deleted,
                    tasks_deleted,
                    cancelled,
                    checkpoint_dir: checkpoint_dir_of(&checkpoint, sweep),
                    leftovers_only: false,
                    complete: done,
                    tasks_total,
                },
                // Another coordinator finished this delete in the meantime.
                DeleteBatchReply::NotFound => {
                    DeleteOutcome { cancelled, complete: true, tasks_total, ..DeleteOutcome::default() }
                }
            };
            if outcome.complete {
                let _: () = conn.srem(self.keys.sweeps(), sweep).await.map_err(StoreError::redis("srem sweeps"))?;
                info!(sweep = %sweep, keys = outcome.keys_deleted, tasks = outcome.tasks_deleted, "sweep deleted");
                return Ok(outcome);
            }
            if budget.spent() {
                debug!(sweep = %sweep, tasks = outcome.tasks_deleted, tasks_total, "delete call stopped at its budget");
                return Ok(outcome);
            }
        }
    }

    /// Deletes every Redis key of the sweep (batches of `bulk_batch`: `lua/delete_begin.lua`,
    /// `lua/delete_batch.lua`) and removes its name from the global sets (`sweeps`,
    /// `active`). Refused with [`StoreError::SweepUnfinished`] while the sweep has pending,
    /// leased or running tasks or a selection waiting, unless it was cancelled first;
    /// `force` cancels it first. Leases still held by workers of a cancelled sweep become
    /// stale: renew answers `LEASE_LOST`, reports `STALE`, and nothing of the sweep is
    /// written again. Files (checkpoints, feature caches, exported reports) are not touched.
    pub async fn delete_sweep(&self, sweep: &str, force: bool) -> Result<DeleteOutcome, StoreError> {
        self.delete_part(sweep, force, Budget::unlimited()).await
    }
}

/// The marker's fingerprint: what the cells are made from, and whether they update.
fn submit_fingerprint(cells: &str, update: bool) -> String {
    let digest = Sha256::digest(format!("{cells}\0update={update}").as_bytes());
    hex::encode(&digest[..16])
}

/// Adds `more` into `into` (same field and values: cells summed), keeping at most
/// [`MAX_SETTING_CHANGES`] distinct entries.
pub fn merge_changes(into: &mut Vec<SettingChange>, more: Vec<SettingChange>) {
    for change in more {
        let same = into
            .iter()
            .position(|c| c.field == change.field && c.recorded == change.recorded && c.submitted == change.submitted);
        match same {
            Some(i) => into[i].cells += change.cells,
            None if into.len() < MAX_SETTING_CHANGES => into.push(change),
            None => {}
        }
    }
}

/// Longest value shown in a setting change.
const MAX_VALUE_CHARS: usize = 120;

/// The leaves in which the recorded spec (JSON) and the submitted one differ:
/// (dotted field, recorded JSON, submitted JSON).
fn spec_differences(recorded: &str, submitted: &CellSpec) -> Vec<(String, String, String)> {
    // Read back through `CellSpec`, so a field added since the cell was recorded (with a
    // serde default) compares as its default, not as missing.
    let old: Value = serde_json::from_str::<CellSpec>(recorded)
        .ok()
        .and_then(|spec| serde_json::to_value(spec).ok())
        .or_else(|| serde_json::from_str(recorded).ok())
        .unwrap_or(Value::Null);
    let new = serde_json::to_value(submitted).unwrap_or(Value::Null);
    let mut out = Vec::new();
    differences("", &old, &new, &mut out);
    out
}

fn differences(path: &str, old: &Value, new: &Value, out: &mut Vec<(String, String, String)>) {
    if let (Value::Object(a), Value::Object(b)) = (old, new) {
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            differences(&child, a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null), out);
        }
    } else if old != new {
        out.push((path.to_string(), short_json(old), short_json(new)));
    }
}

fn short_json(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= MAX_VALUE_CHARS {
        return text;
    }
    let cut: String = text.chars().take(MAX_VALUE_CHARS).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_the_dotted_leaf() {
        let old = serde_json::json!({ "train": { "steps": 10, "batch_size": 8 }, "max_attempts": 3, "fake": null });
        let new = serde_json::json!({ "train": { "steps": 20, "batch_size": 8 }, "max_attempts": 5, "fake": null });
        let mut out = Vec::new();
        differences("", &old, &new, &mut out);
        assert_eq!(
            out,
            vec![
                ("max_attempts".to_string(), "3".to_string(), "5".to_string()),
                ("train.steps".to_string(), "10".to_string(), "20".to_string()),
            ]
        );
    }

    #[test]
    fn merged_changes_sum_cells_and_stay_bounded() {
        let change = |field: &str, cells| SettingChange {
            field: field.to_string(),
            recorded: "1".into(),
            submitted: "2".into(),
            cells,
        };
        let mut all = vec![change("a", 1)];
        merge_changes(&mut all, vec![change("a", 2), change("b", 1)]);
        assert_eq!(all, vec![change("a", 3), change("b", 1)]);
        merge_changes(&mut all, (0..100).map(|i| change(&format!("f{i}"), 1)).collect());
        assert_eq!(all.len(), MAX_SETTING_CHANGES);
    }
}
