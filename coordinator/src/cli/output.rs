//! Tables, CSV and JSON the CLI prints. Tables go to stdout for people; `--format json`
//! and `csv` print exactly one document to stdout for scripts.

use std::collections::BTreeMap;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{CellAlignment, ContentArrangement, Table};
use serde_json::{json, Value};
use tsweep_proto::cell::Stage;
use tsweep_proto::v1::{
    BestScore, MetricPoint, PendingBlock, PretrainStatus, RunningTask, SubmitSweepResponse, SweepStatus, SweepSummary,
    TaskCounts, TaskInfo, TaskProgress, TaskState,
};

use crate::sweepfile::{StageCount, SweepPlan};

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
    table.set_header(header.iter().copied());
    table
}

fn align_right(table: &mut Table, columns: &[usize]) {
    for &i in columns {
        if let Some(column) = table.column_mut(i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// When the cells of a row start: pretrain cells and plain grid cells now, transfer
/// cells of a pretrained model once their pretrain cell succeeded, finals after selection.
fn when_text(c: &StageCount) -> String {
    const AFTER: &str = "after their pretrain cell succeeds";
    match c.stage {
        Stage::Pretrain => "now (source models trained from scratch; their transfer cells wait)".to_string(),
        Stage::Grid if c.after_pretrain == 0 => "now".to_string(),
        Stage::Grid if c.after_pretrain == c.cells => AFTER.to_string(),
        Stage::Grid => format!("{} now, {} {AFTER}", c.cells - c.after_pretrain, c.after_pretrain),
        Stage::Final => "after selection (refit on train+val, scored on test)".to_string(),
        Stage::Unspecified => String::new(),
    }
}

/// `submit --dry-run`: cells per regime and stage, then the total.
pub fn dry_run_table(sweep: &SweepPlan, file: &str) -> String {
    let counts = sweep.stage_counts();
    let mut t = table(&["regime", "stage", "cells", "when"]);
    for c in &counts {
        t.add_row(vec![c.regime.name().to_string(), c.stage.name().to_string(), c.cells.to_string(), when_text(c)]);
    }
    let sum = |stage: Stage| counts.iter().filter(|c| c.stage == stage).map(|c| c.cells).sum::<u64>();
    let (pretrain, grid, finals) = (sum(Stage::Pretrain), sum(Stage::Grid), sum(Stage::Final));
    let waiting: u64 = counts.iter().filter(|c| c.stage == Stage::Grid).map(|c| c.after_pretrain).sum();
    t.add_row(vec!["total".to_string(), String::new(), (pretrain + grid + finals).to_string(), String::new()]);
    align_right(&mut t, &[2]);
    let pretrain_line = if pretrain > 0 {
        format!("{pretrain} pretrain cells now; {waiting} of the grid cells wait for theirs\n")
    } else {
        String::new()
    };
    format!(
        "sweep {} from {file} (dry run: nothing submitted)\n{t}\n{pretrain_line}{} grid cells now, {finals} final refits after selection\n",
        sweep.name,
        grid - waiting
    )
}

pub fn stage_counts_json(counts: &[StageCount]) -> Value {
    Value::Array(
        counts
            .iter()
            .map(|c| {
                json!({ "regime": c.regime.name(), "stage": c.stage.name(), "cells": c.cells, "after_pretrain": c.after_pretrain })
            })
            .collect(),
    )
}

pub fn dry_run_json(sweep: &SweepPlan) -> Value {
    let counts = sweep.stage_counts();
    let total: u64 = counts.iter().map(|c| c.cells).sum();
    let of_stage = |stage: Stage| counts.iter().filter(|c| c.stage == stage).map(|c| c.cells).sum::<u64>();
    json!({
        "sweep": sweep.name,
        "dry_run": true,
        "grid_cells": of_stage(Stage::Grid),
        "pretrain_cells": of_stage(Stage::Pretrain),
        "cells_with_finals": total,
        "max_attempts": sweep.settings.max_attempts,
        "per_stage": stage_counts_json(&counts),
    })
}

pub fn submit_table(response: &SubmitSweepResponse) -> String {
    let mut t = table(&["regime", "stage", "cells"]);
    for c in sorted_stages(response) {
        t.add_row(vec![c.regime().to_string(), c.stage().to_string(), c.cells.to_string()]);
    }
    align_right(&mut t, &[2]);
    let mut text = format!(
        "sweep {}: {} cells, {} added, {} already known (kept with their results)\n{t}\n",
        response.sweep, response.cells_total, response.cells_added, response.cells_existing
    );
    if response.resumed_at > 0 {
        text.push_str(&format!(
            "finished an interrupted submission: its first {} cells had been written already\n",
            response.resumed_at
        ));
    }
    if response.reactivated > 0 {
        text.push_str(&format!("{} cancelled cell(s) back to pending\n", response.reactivated));
    }
    if response.cells_changed > 0 {
        let kept = response.cells_changed - response.cells_updated;
        if response.cells_updated > 0 {
            text.push_str(&format!(
                "{} existing cell(s) have other settings in the file: {} updated, {} kept (succeeded: their results stay)\n",
                response.cells_changed, response.cells_updated, kept
            ));
        } else {
            text.push_str(&format!(
                "{} existing cell(s) have other settings in the file; the recorded ones are kept (pass --update to apply the file's to cells that have not succeeded):\n",
                response.cells_changed
            ));
        }
        for change in &response.changes {
            text.push_str(&format!(
                "  {}: {} -> {} ({} cell(s))\n",
                change.field, change.recorded, change.submitted, change.cells
            ));
        }
    }
    text
}

/// Per-stage counts: pretrain cells first, then regime order (linear, finetune,
/// scratch), grid before final.
fn sorted_stages(response: &SubmitSweepResponse) -> Vec<&tsweep_proto::v1::StageCount> {
    let mut rows: Vec<_> = response.per_stage.iter().collect();
    rows.sort_by_key(|c| (c.stage() != Stage::Pretrain, c.regime(), c.stage() != Stage::Grid));
    rows
}

pub fn submit_json(response: &SubmitSweepResponse) -> Value {
    json!({
        "sweep": response.sweep,
        "cells_total": response.cells_total,
        "cells_added": response.cells_added,
        "cells_existing": response.cells_existing,
        "cells_changed": response.cells_changed,
        "cells_updated": response.cells_updated,
        "resumed_at": response.resumed_at,
        "reactivated": response.reactivated,
        "changes": response.changes.iter().map(|c| json!({
            "field": c.field, "recorded": c.recorded, "submitted": c.submitted, "cells": c.cells,
        })).collect::<Vec<_>>(),
        "per_stage": sorted_stages(response).into_iter().map(|c| json!({ "regime": c.regime(), "stage": c.stage(), "cells": c.cells })).collect::<Vec<_>>(),
    })
}

pub fn counts_json(c: &TaskCounts) -> Value {
    json!({
        "pending": c.pending, "leased": c.leased, "running": c.running,
        "succeeded": c.succeeded, "failed": c.failed, "cancelled": c.cancelled, "total": c.total,
    })
}

/// `pending 3 · leased 1 · running 2 · succeeded 10 · failed 0 · cancelled 0`
pub fn counts_line(c: &TaskCounts) -> String {
    format!(
        "pending {} · leased {} · running {} · succeeded {} · failed {} · cancelled {}",
        c.pending, c.leased, c.running, c.succeeded, c.failed, c.cancelled
    )
}

pub fn summary_json(s: &SweepSummary) -> Value {
    json!({
        "sweep": s.sweep,
        "status": s.status(),
        "counts": s.counts.as_ref().map(counts_json),
        "stale_reports": s.stale_reports,
        "lease_expiries": s.lease_expiries,
        "created_unix_ms": s.created_unix_ms,
        "submit_written": s.submit_written,
        "submit_total": s.submit_total,
        "best": s.best.iter().map(|b| json!({
            "model": b.model, "dataset": b.dataset, "regime": b.regime(), "val_score": b.val_score, "task_id": b.task_id,
        })).collect::<Vec<_>>(),
        "pretrain": s.pretrain.iter().map(|p| json!({
            "task_id": p.task_id, "model": p.model, "dataset": p.dataset, "state": p.state(),
            "test_score": p.test_score, "dependents": p.dependents, "waiting": p.waiting, "error": p.error,
        })).collect::<Vec<_>>(),
        "workers": s.workers,
        "blocked": s.blocked.iter().map(|b| json!({
            "gpus": b.gpus, "cells": b.cells, "workers": b.workers,
            "min_worker_gpus": b.min_worker_gpus, "max_worker_gpus": b.max_worker_gpus, "reason": blocked_line(b),
        })).collect::<Vec<_>>(),
        "running": s.running.iter().map(running_json).collect::<Vec<_>>(),
    })
}

fn running_json(r: &RunningTask) -> Value {
    let task = r.task.clone().unwrap_or_default();
    let p = r.progress.unwrap_or_default();
    let latest = p.latest.unwrap_or_default();
    json!({
        "task_id": task.task_id, "cell": cell_label(&task), "state": task.state(), "worker": task.worker,
        "attempt": task.attempt, "step": latest.step, "total_steps": latest.total_steps, "loss": latest.loss,
        "lr": latest.lr, "images_per_s": latest.images_per_s, "best_val": p.best_val,
        "steps_per_s": p.steps_per_s, "eta_s": p.eta_s,
    })
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Why queued cells wait: `6 pending cells need 1 GPU; the 2 registered workers have 0`.
pub fn blocked_line(b: &PendingBlock) -> String {
    let need =
        format!("{} need {}", plural(b.cells, "pending cell", "pending cells"), plural(b.gpus.into(), "GPU", "GPUs"));
    if b.workers == 0 {
        return format!("{need}; no worker is registered");
    }
    let have = if b.min_worker_gpus == b.max_worker_gpus {
        b.max_worker_gpus.to_string()
    } else {
        format!("{} to {}", b.min_worker_gpus, b.max_worker_gpus)
    };
    match b.workers {
        1 => format!("{need}; the 1 registered worker has {have}"),
        n => format!("{need}; the {n} registered workers have {have}"),
    }
}

/// `m1/d1/finetune lr=0.01`, with the stage when it is not a grid point.
pub fn cell_label(task: &TaskInfo) -> String {
    let stage = match task.stage() {
        Stage::Grid | Stage::Unspecified => String::new(),
        stage => format!(" ({stage})"),
    };
    let hparams = hparams_text(task);
    let label = format!("{}/{}/{}{stage}", task.model, task.dataset, task.regime());
    if hparams.is_empty() {
        label
    } else {
        format!("{label} {hparams}")
    }
}

/// `1h02m`, `3m05s`, `42s`.
pub fn format_duration_s(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return String::new();
    }
    let s = seconds.round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, min, sec) => format!("{min}m{sec:02}s"),
        (h, min, _) => format!("{h}h{min:02}m"),
    }
}

fn format_opt(value: Option<f64>, digits: usize) -> String {
    value.filter(|v| v.is_finite()).map_or(String::new(), |v| format!("{v:.digits$}"))
}

/// The cells of one running task's row: cell, worker, attempt, step/total, loss, img/s,
/// best val, ETA (empty fields until its worker streamed them).
pub fn running_row(r: &RunningTask) -> Vec<String> {
    let task = r.task.clone().unwrap_or_default();
    let (step, loss, speed, best, eta) = match &r.progress {
        Some(p) => progress_cells(p),
        None => (format!("({})", task.state()), String::new(), String::new(), String::new(), String::new()),
    };
    vec![cell_label(&task), task.worker.clone(), task.attempt.to_string(), step, loss, speed, best, eta]
}

fn progress_cells(p: &TaskProgress) -> (String, String, String, String, String) {
    let latest = p.latest.unwrap_or_default();
    (
        format!("{}/{}", latest.step, latest.total_steps),
        format_opt(latest.loss, 4),
        format_opt(latest.images_per_s, 1),
        format_opt(p.best_val, 4),
        p.eta_s.map_or(String::new(), format_duration_s),
    )
}

pub const RUNNING_COLUMNS: [&str; 8] = ["cell", "worker", "attempt", "step", "loss", "img/s", "best val", "ETA"];

/// The running tasks, one row each (Ray Tune's console table is the model).
pub fn running_table(running: &[RunningTask]) -> String {
    let mut t = table(&RUNNING_COLUMNS);
    for r in running {
        t.add_row(running_row(r));
    }
    align_right(&mut t, &[2, 3, 4, 5, 6, 7]);
    format!("{t}\n")
}

/// One running task as a plain line: `running m1/d1/linear worker=w1 attempt=1 step=3/10 loss=0.5123 ...`.
pub fn running_line(r: &RunningTask) -> String {
    let row = running_row(r);
    let mut line = format!("running {}", row[0]);
    for (name, value) in RUNNING_COLUMNS.iter().zip(&row).skip(1) {
        if !value.is_empty() {
            line.push_str(&format!(" {}={value}", name.replace([' ', '/'], "_")));
        }
    }
    line
}

/// A task's curve as CSV (the report's CSV writer), one row per point:
/// attempt,step,total_steps,loss,lr,images_per_s,val_score,ts_ms.
pub fn curve_csv(points: &[MetricPoint]) -> Result<String, tsweep_report::ReportError> {
    let cell = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    let header = ["attempt", "step", "total_steps", "loss", "lr", "images_per_s", "val_score", "ts_ms"];
    let rows = points.iter().map(|p| {
        [
            p.attempt.to_string(),
            p.step.to_string(),
            p.total_steps.to_string(),
            cell(p.loss),
            cell(p.lr),
            cell(p.images_per_s),
            cell(p.val_score),
            p.ts_ms.to_string(),
        ]
    });
    tsweep_report::export::csv_document(&header, rows)
}

pub fn curve_json(sweep: &str, task_id: &str, points: &[MetricPoint], kept_at_most: u32) -> Value {
    json!({
        "sweep": sweep,
        "task_id": task_id,
        "kept_at_most": kept_at_most,
        "points": points.iter().map(|p| json!({
            "attempt": p.attempt, "step": p.step, "total_steps": p.total_steps, "loss": p.loss, "lr": p.lr,
            "images_per_s": p.images_per_s, "val_score": p.val_score, "ts_ms": p.ts_ms,
        })).collect::<Vec<_>>(),
    })
}

/// The pretrain stage: one row per pretrain cell, its state, source score and what its
/// transfer cells are doing about it (waiting, released, failed with it).
pub fn pretrain_table(pretrain: &[PretrainStatus]) -> String {
    let mut t = table(&["pretrain (model)", "source", "state", "source test", "transfer cells"]);
    for p in pretrain {
        let transfer = match p.state() {
            _ if p.waiting > 0 => format!("{} wait for it (held until it succeeds)", p.waiting),
            TaskState::Succeeded => format!("{} released", p.dependents),
            TaskState::Failed => format!("{} failed with it", p.dependents),
            _ => format!("{}", p.dependents),
        };
        t.add_row(vec![
            p.model.clone(),
            p.dataset.clone(),
            p.state().to_string(),
            format_score(p.test_score),
            transfer,
        ]);
    }
    align_right(&mut t, &[3]);
    format!("{t}\n")
}

pub fn sweeps_table(sweeps: &[SweepSummary]) -> String {
    if sweeps.is_empty() {
        return "no sweeps\n".to_string();
    }
    let mut t =
        table(&["sweep", "status", "total", "pending", "leased", "running", "succeeded", "failed", "cancelled"]);
    for s in sweeps {
        let c = s.counts.unwrap_or_default();
        t.add_row(vec![
            s.sweep.clone(),
            s.status().to_string(),
            c.total.to_string(),
            c.pending.to_string(),
            c.leased.to_string(),
            c.running.to_string(),
            c.succeeded.to_string(),
            c.failed.to_string(),
            c.cancelled.to_string(),
        ]);
    }
    align_right(&mut t, &[2, 3, 4, 5, 6, 7, 8]);
    format!("{t}\n")
}

pub fn summary_text(s: &SweepSummary) -> String {
    let c = s.counts.unwrap_or_default();
    let mut text = format!("sweep {} ({}): {} cells\n{}\n", s.sweep, s.status(), c.total, counts_line(&c));
    match s.status() {
        SweepStatus::Submitting => text.push_str(&format!(
            "submission not finished: {} of {} cells written; nothing of this sweep is leased until `tsweep submit {}` finishes it\n",
            s.submit_written,
            s.submit_total,
            if s.submit_file.is_empty() { "FILE" } else { s.submit_file.as_str() }
        )),
        SweepStatus::Deleting => text.push_str(&format!(
            "a delete has not finished: run `tsweep delete {}` to finish it\n",
            s.sweep
        )),
        _ => {}
    }
    if s.stale_reports > 0 || s.lease_expiries > 0 {
        text.push_str(&format!("stale reports refused: {} · leases expired: {}\n", s.stale_reports, s.lease_expiries));
    }
    if !s.pretrain.is_empty() {
        text.push_str(&pretrain_table(&s.pretrain));
    }
    for block in &s.blocked {
        text.push_str(&format!("waiting: {}\n", blocked_line(block)));
    }
    if !s.running.is_empty() {
        text.push_str(&running_table(&s.running));
    }
    if !s.best.is_empty() {
        text.push_str(&best_table(&s.best));
    }
    text
}

/// Best validation score so far per (model, dataset, regime).
pub fn best_table(best: &[BestScore]) -> String {
    let mut rows: Vec<&BestScore> = best.iter().collect();
    rows.sort_by(|a, b| (a.regime(), &a.model, &a.dataset).cmp(&(b.regime(), &b.model, &b.dataset)));
    let mut t = table(&["regime", "model", "dataset", "best val"]);
    for b in rows {
        t.add_row(vec![b.regime().to_string(), b.model.clone(), b.dataset.clone(), format_score(Some(b.val_score))]);
    }
    align_right(&mut t, &[3]);
    format!("{t}\n")
}

fn format_score(score: Option<f64>) -> String {
    match score {
        Some(v) if v.is_finite() => format!("{v:.4}"),
        Some(v) => v.to_string(),
        None => String::new(),
    }
}

fn format_number(v: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else if (1e-3..1e4).contains(&v.abs()) {
        let s = format!("{v:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.3e}")
    }
}

/// `lr=0.001 weight_decay=0`, plus what the task selected itself (`l2=...` for linear).
pub fn hparams_text(task: &TaskInfo) -> String {
    let mut parts: Vec<String> =
        sorted(&task.hparams).into_iter().map(|(k, v)| format!("{k}={}", format_number(v))).collect();
    if task.hparams.is_empty() && task.result.as_ref().is_none_or(|r| r.selected.is_empty()) {
        // Linear: one task fits the whole L2 path; say which, until it reports its choice.
        if let Ok(spec) = tsweep_proto::cell::CellSpec::from_json(&task.spec_json) {
            if let (Some(first), Some(last)) = (spec.train.l2_path.first(), spec.train.l2_path.last()) {
                parts.push(format!(
                    "l2 path {}..{} ({})",
                    format_number(*first),
                    format_number(*last),
                    spec.train.l2_path.len()
                ));
            }
        }
    }
    if let Some(result) = &task.result {
        parts.extend(sorted(&result.selected).into_iter().map(|(k, v)| format!("{k}={} (selected)", format_number(v))));
    }
    parts.join(" ")
}

fn sorted(map: &std::collections::HashMap<String, f64>) -> BTreeMap<String, f64> {
    map.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

/// Rows in a stable, readable order: regime, model, dataset, stage (grid before final),
/// hyperparameters ascending.
pub fn sort_tasks(tasks: &mut [TaskInfo]) {
    tasks.sort_by_cached_key(|t| {
        // Hyperparameters are >= 0, where the bit pattern orders like the value.
        let hparams: Vec<(String, u64)> = sorted(&t.hparams).into_iter().map(|(k, v)| (k, v.abs().to_bits())).collect();
        (t.regime(), t.model.clone(), t.dataset.clone(), t.stage() != Stage::Grid, hparams, t.task_id.clone())
    });
}

pub fn results_table(tasks: &[TaskInfo]) -> String {
    if tasks.is_empty() {
        return "no cells\n".to_string();
    }
    let mut t = table(&["regime", "stage", "model", "dataset", "hyperparameters", "state", "val", "test", "attempts"]);
    for task in tasks {
        let (val, test) = task.result.as_ref().map_or((None, None), |r| (r.val_score, r.test_score));
        let diverged = task.result.as_ref().is_some_and(|r| r.diverged);
        let state = if diverged {
            format!("{} (diverged)", task.state())
        } else if task.state() == TaskState::Failed && !task.error.is_empty() {
            let error: String = task.error.chars().take(60).collect();
            let more = if task.error.chars().count() > 60 { "…" } else { "" };
            format!("failed: {error}{more}")
        } else {
            task.state().to_string()
        };
        t.add_row(vec![
            task.regime().to_string(),
            task.stage().to_string(),
            task.model.clone(),
            task.dataset.clone(),
            hparams_text(task),
            state,
            format_score(val),
            format_score(test),
            task.attempt.to_string(),
        ]);
    }
    align_right(&mut t, &[6, 7, 8]);
    format!("{t}\n")
}

pub fn results_json(tasks: &[TaskInfo]) -> Value {
    Value::Array(
        tasks
            .iter()
            .map(|task| {
                let result = task.result.as_ref().map(|r| {
                    json!({
                        "metric": r.metric(), "val_score": r.val_score, "test_score": r.test_score,
                        "train_loss": r.train_loss, "diverged": r.diverged, "steps": r.steps,
                        "images_per_s": r.images_per_s, "duration_s": r.duration_s,
                        "selected": sorted(&r.selected), "extra": sorted(&r.extra),
                        "resumed_from_step": r.resumed_from_step,
                    })
                });
                json!({
                    "task_id": task.task_id, "sweep": task.sweep, "regime": task.regime(), "stage": task.stage(),
                    "model": task.model, "dataset": task.dataset, "state": task.state(),
                    "hparams": sorted(&task.hparams), "attempt": task.attempt, "retries_used": task.retries_used,
                    "worker": task.worker, "error": task.error,
                    "error_class": tsweep_proto::v1::FailureClass::try_from(task.error_class).map(|c| c.name()).unwrap_or("unspecified"),
                    "checkpoint_step": task.checkpoint.as_ref().map_or(0, |c| c.step),
                    "started_unix_ms": task.started_unix_ms, "finished_unix_ms": task.finished_unix_ms,
                    "result": result,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short() {
        assert_eq!(format_number(0.001), "0.001");
        assert_eq!(format_number(0.0), "0");
        assert_eq!(format_number(1e-6), "1.000e-6");
        assert_eq!(format_number(31.622776601683793), "31.622777");
    }
}
