//! `results.csv`, `results.json` (every cell, scores as the trainer reported them) and
//! `analysis.json` (what the tables and plots show).

use std::collections::BTreeSet;

use serde::Serialize;

use crate::analysis::Analysis;
use crate::input::{CellRow, ReportInput};
use crate::ReportError;

fn opt(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| v.to_string())
}

/// One row per cell (RFC 4180, the `csv` crate): the one column set of `results.csv` and
/// `tsweep results --format csv`. Hyperparameters get a column each (`hparam_<name>`, and
/// `selected_<name>` for what a task chose itself); absent values are empty.
pub fn results_csv(cells: &[CellRow]) -> Result<String, ReportError> {
    let hparam_keys: BTreeSet<&str> = cells.iter().flat_map(|c| c.hparams.keys().map(String::as_str)).collect();
    let selected_keys: BTreeSet<&str> = cells.iter().flat_map(|c| c.selected.keys().map(String::as_str)).collect();
    let mut header: Vec<String> = [
        "task_id",
        "sweep",
        "model",
        "dataset",
        "regime",
        "stage",
        "seed",
        "selection_group",
        "status",
        "attempts",
        "val_score",
        "test_score",
        "metric",
        "diverged",
        "current_final",
        "duration_s",
        "worker",
        "error_class",
        "error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    header.extend(hparam_keys.iter().map(|k| format!("hparam_{k}")));
    header.extend(selected_keys.iter().map(|k| format!("selected_{k}")));
    let rows = cells.iter().map(|c| {
        let mut fields = vec![
            c.task_id.clone(),
            c.sweep.clone(),
            c.model.clone(),
            c.dataset.clone(),
            c.regime.name().to_string(),
            c.stage.name().to_string(),
            c.seed.to_string(),
            c.selection_group.clone(),
            c.status.name().to_string(),
            c.attempts.to_string(),
            opt(c.val_score),
            opt(c.test_score),
            c.metric.to_string(),
            c.diverged.to_string(),
            c.is_current_final.to_string(),
            opt(c.duration_s),
            c.worker.clone(),
            c.error_class.clone(),
            c.error.clone(),
        ];
        fields.extend(hparam_keys.iter().map(|k| opt(c.hparams.get(*k).copied())));
        fields.extend(selected_keys.iter().map(|k| opt(c.selected.get(*k).copied())));
        fields
    });
    csv_document(&header, rows)
}

/// A CSV document (RFC 4180, the `csv` crate): the header, then one record per row. The
/// one CSV writer of the project (`results.csv`, `tsweep results` and `tsweep curve`).
pub fn csv_document<H, R>(header: &[H], rows: impl Iterator<Item = R>) -> Result<String, ReportError>
where
    H: AsRef<[u8]>,
    R: IntoIterator,
    R::Item: AsRef<[u8]>,
{
    let csv_error = |e: &dyn std::fmt::Display| ReportError::Csv(e.to_string());
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(header).map_err(|e| csv_error(&e))?;
    for row in rows {
        out.write_record(row).map_err(|e| csv_error(&e))?;
    }
    let bytes = out.into_inner().map_err(|e| csv_error(&e))?;
    String::from_utf8(bytes).map_err(|e| csv_error(&e))
}

#[derive(Serialize)]
struct ResultsFile<'a> {
    sweep: &'a str,
    cells: &'a [CellRow],
}

/// `{"sweep": ..., "cells": [...]}`, compact (a paper-size sweep has ~22k cells); non-finite
/// numbers become null.
pub fn results_json(input: &ReportInput) -> Result<String, ReportError> {
    serde_json::to_string(&ResultsFile { sweep: &input.sweep, cells: &input.cells })
        .map_err(|source| ReportError::Json { what: "results", source })
}

pub fn analysis_json(analysis: &Analysis) -> Result<String, ReportError> {
    serde_json::to_string_pretty(analysis).map_err(|source| ReportError::Json { what: "analysis", source })
}
