//! Live training progress, from the metrics workers stream (the consumer in
//! `server/metrics_consumer.rs` reads the stream and calls [`Store::merge_progress`]):
//! - the hash `<p>:{<sweep>}:metrics:progress` (field = task id, JSON [`ProgressRecord`]):
//!   the latest step of each task's current attempt, merged by `lua/merge_progress.lua`
//!   so that an older attempt or an older step never overwrites a newer one;
//! - the list `<p>:{<sweep>}:curve:<task id>`: the task's training curve, one JSON
//!   [`CurveEntry`] per accepted entry, capped at [`CURVE_POINTS_PER_TASK`] (the oldest
//!   points are dropped first).
//!
//! Both are removed with the sweep (`lua/delete_batch.lua`).

use std::collections::HashMap;

use redis::aio::ConnectionLike;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tsweep_proto::v1;

use super::scripts::SCRIPTS;
use super::{validate_sweep_name, Store, StoreError, TaskState};

/// Curve points kept per task (about 120 bytes each). A trainer reports about a hundred
/// times per run (`worker/trainer/src/finetune.rs`) plus its evaluations.
pub const CURVE_POINTS_PER_TASK: u32 = 256;
/// Running tasks a summary carries at most.
pub const MAX_RUNNING_SHOWN: u32 = 64;

/// The stored record of a task's current attempt's progress (JSON in the progress hash),
/// merged from its metrics entries; [`ProgressRecord::to_proto`] is what GetSweep shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ProgressRecord {
    pub attempt: u32,
    pub step: u64,
    pub total_steps: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub images_per_s: Option<f64>,
    /// Best validation score this attempt reported so far.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub best_val: Option<f64>,
    pub ts_ms: i64,
    /// Step and worker clock of the attempt's first merged entry (the merge script keeps
    /// them); absent in records written before they existed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_step: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_ts_ms: Option<i64>,
}

impl ProgressRecord {
    /// Steps per second over the attempt's entries so far (None before two entries apart
    /// in time and step).
    pub fn steps_per_s(&self) -> Option<f64> {
        let (first_step, first_ts) = (self.first_step?, self.first_ts_ms?);
        let (steps, ms) = (self.step.checked_sub(first_step)?, self.ts_ms - first_ts);
        (steps > 0 && ms > 0).then(|| steps as f64 * 1000.0 / ms as f64)
    }

    /// The record of one entry (the merge script folds it into the stored one).
    pub fn of_point(point: &v1::MetricPoint) -> Self {
        ProgressRecord {
            attempt: point.attempt,
            step: point.step,
            total_steps: point.total_steps,
            loss: point.loss,
            lr: point.lr,
            images_per_s: point.images_per_s,
            best_val: point.val_score,
            ts_ms: point.ts_ms,
            first_step: None,
            first_ts_ms: None,
        }
    }

    pub fn to_proto(&self) -> v1::TaskProgress {
        let steps_per_s = self.steps_per_s();
        v1::TaskProgress {
            // (the record keeps the attempt's best, not the latest entry's own score)
            latest: Some(v1::MetricPoint {
                attempt: self.attempt,
                step: self.step,
                total_steps: self.total_steps,
                loss: self.loss,
                lr: self.lr,
                images_per_s: self.images_per_s,
                val_score: None,
                ts_ms: self.ts_ms,
            }),
            best_val: self.best_val,
            steps_per_s,
            eta_s: steps_per_s.map(|rate| self.total_steps.saturating_sub(self.step) as f64 / rate),
        }
    }
}

/// One point of a task's curve as stored (short field names: a curve has hundreds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CurveEntry {
    #[serde(rename = "a")]
    pub attempt: u32,
    #[serde(rename = "s")]
    pub step: u64,
    #[serde(rename = "n")]
    pub total_steps: u64,
    #[serde(rename = "l", skip_serializing_if = "Option::is_none", default)]
    pub loss: Option<f64>,
    #[serde(rename = "r", skip_serializing_if = "Option::is_none", default)]
    pub lr: Option<f64>,
    #[serde(rename = "i", skip_serializing_if = "Option::is_none", default)]
    pub images_per_s: Option<f64>,
    #[serde(rename = "v", skip_serializing_if = "Option::is_none", default)]
    pub val_score: Option<f64>,
    #[serde(rename = "t")]
    pub ts_ms: i64,
}

impl From<&v1::MetricPoint> for CurveEntry {
    fn from(point: &v1::MetricPoint) -> Self {
        CurveEntry {
            attempt: point.attempt,
            step: point.step,
            total_steps: point.total_steps,
            loss: point.loss,
            lr: point.lr,
            images_per_s: point.images_per_s,
            val_score: point.val_score,
            ts_ms: point.ts_ms,
        }
    }
}

impl From<CurveEntry> for v1::MetricPoint {
    fn from(entry: CurveEntry) -> Self {
        v1::MetricPoint {
            attempt: entry.attempt,
            step: entry.step,
            total_steps: entry.total_steps,
            loss: entry.loss,
            lr: entry.lr,
            images_per_s: entry.images_per_s,
            val_score: entry.val_score,
            ts_ms: entry.ts_ms,
        }
    }
}

fn to_json<T: Serialize>(value: &T, what: &'static str) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Json { what, source })
}

impl Store {
    /// Merges one entry of a task's current attempt into its progress and appends it to
    /// its curve, on `conn` (the consumer's dedicated connection). False when a newer
    /// attempt's progress is already recorded (nothing written).
    pub async fn merge_progress<C: ConnectionLike>(
        &self,
        conn: &mut C,
        sweep: &str,
        task_id: &str,
        point: &v1::MetricPoint,
    ) -> Result<bool, StoreError> {
        let merged: i64 = SCRIPTS
            .merge_progress
            .key(self.keys.sweep_base(sweep))
            .arg(task_id)
            .arg(to_json(&ProgressRecord::of_point(point), "task progress")?)
            .arg(to_json(&CurveEntry::from(point), "curve point")?)
            .arg(CURVE_POINTS_PER_TASK)
            .invoke_async(conn)
            .await
            .map_err(StoreError::redis("merge_progress script"))?;
        Ok(merged == 1)
    }

    /// Trims a metrics stream (`lua/trim_stream.lua`) on `conn`; the entries removed.
    pub async fn trim_stream<C: ConnectionLike>(&self, conn: &mut C, stream_key: &str) -> Result<u64, StoreError> {
        SCRIPTS.trim_stream.key(stream_key).invoke_async(conn).await.map_err(StoreError::redis("trim_stream script"))
    }

    /// Every task's progress of a sweep (tasks that streamed nothing are absent). A
    /// record that does not parse is skipped: progress is advisory.
    pub async fn read_progress(&self, sweep: &str) -> Result<HashMap<String, ProgressRecord>, StoreError> {
        validate_sweep_name(sweep)?;
        let mut conn = self.conn.clone();
        let raw: HashMap<String, String> =
            conn.hgetall(self.keys.progress(sweep)).await.map_err(StoreError::redis("hgetall progress"))?;
        Ok(raw.into_iter().filter_map(|(task, json)| Some((task, serde_json::from_str(&json).ok()?))).collect())
    }

    /// The leased and running tasks (at most [`MAX_RUNNING_SHOWN`], by task id) with the
    /// progress of their current attempt.
    pub async fn running(&self, sweep: &str) -> Result<Vec<v1::RunningTask>, StoreError> {
        let mut tasks = Vec::new();
        for state in [TaskState::Running, TaskState::Leased] {
            let room = MAX_RUNNING_SHOWN.saturating_sub(tasks.len() as u32);
            if room > 0 {
                tasks.extend(self.list_tasks(sweep, Some(state), room, "").await?.tasks);
            }
        }
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let ids: Vec<&str> = tasks.iter().map(|t| t.task_id.as_str()).collect();
        let raw: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.keys.progress(sweep))
            .arg(&ids)
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("hmget progress"))?;
        let mut running: Vec<v1::RunningTask> = tasks
            .into_iter()
            .zip(raw)
            .map(|(task, json)| {
                let progress = json
                    .and_then(|json| serde_json::from_str::<ProgressRecord>(&json).ok())
                    .filter(|p| p.attempt == task.attempt)
                    .map(|p| p.to_proto());
                v1::RunningTask { task: Some(task), progress }
            })
            .collect();
        running.sort_by(|a, b| a.task.as_ref().map(|t| &t.task_id).cmp(&b.task.as_ref().map(|t| &t.task_id)));
        Ok(running)
    }

    /// A task's curve, oldest point first. `SweepNotFound` / `TaskNotFound` for unknown
    /// names.
    pub async fn curve(&self, sweep: &str, task_id: &str) -> Result<Vec<v1::MetricPoint>, StoreError> {
        self.require_sweep(sweep).await?;
        let mut conn = self.conn.clone();
        let (exists, raw): (bool, Vec<String>) = redis::pipe()
            .exists(self.keys.task(sweep, task_id))
            .lrange(self.keys.curve(sweep, task_id), 0, -1)
            .query_async(&mut conn)
            .await
            .map_err(StoreError::redis("read curve"))?;
        if !exists {
            return Err(StoreError::TaskNotFound { sweep: sweep.to_string(), task_id: task_id.to_string() });
        }
        Ok(raw
            .iter()
            .filter_map(|json| serde_json::from_str::<CurveEntry>(json).ok())
            .map(v1::MetricPoint::from)
            .collect())
    }
}
