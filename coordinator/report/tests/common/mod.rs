//! Builders shared by the report's tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use tsweep_proto::cell::{Metric, Regime, Stage};
use tsweep_proto::v1::TaskState;
use tsweep_report::{AnalysisSettings, CellRow, DatasetInfo, ModelInfo, ReportInput};

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

pub fn cell(id: &str, model: &str, dataset: &str, regime: Regime, stage: Stage) -> CellRow {
    CellRow {
        task_id: id.to_string(),
        sweep: "s".to_string(),
        model: model.to_string(),
        dataset: dataset.to_string(),
        regime,
        stage,
        hparams: BTreeMap::new(),
        status: TaskState::Succeeded,
        attempts: 1,
        val_score: None,
        test_score: None,
        metric: Metric::Top1,
        diverged: false,
        selected: BTreeMap::new(),
        duration_s: Some(1.0),
        worker: "w0".to_string(),
        error: String::new(),
        error_class: String::new(),
        seed: 0,
        selection_group: String::new(),
        is_current_final: false,
    }
}

pub fn hp(lr: f64, wd: f64) -> BTreeMap<String, f64> {
    BTreeMap::from([("lr".to_string(), lr), ("weight_decay".to_string(), wd)])
}

/// A grid point with scores.
pub fn grid(
    id: &str,
    model: &str,
    dataset: &str,
    regime: Regime,
    hparams: BTreeMap<String, f64>,
    val: f64,
    test: f64,
) -> CellRow {
    let mut c = cell(id, model, dataset, regime, Stage::Grid);
    c.hparams = hparams;
    c.val_score = Some(val);
    c.test_score = Some(test);
    c
}

/// A linear-regime task with its chosen l2.
pub fn linear(model: &str, dataset: &str, test: f64) -> CellRow {
    let mut c = cell(&format!("lin-{model}-{dataset}"), model, dataset, Regime::Linear, Stage::Grid);
    c.val_score = Some(test);
    c.test_score = Some(test);
    c.selected.insert("l2".to_string(), 1e-3);
    c
}

/// An input of linear cells only: `acc(model, dataset)` gives each test score.
pub fn linear_input(
    models: &[(&str, Option<f64>)],
    datasets: &[&str],
    acc: impl Fn(usize, usize) -> f64,
) -> ReportInput {
    let mut cells = Vec::new();
    for (mi, (m, _)) in models.iter().enumerate() {
        for (di, d) in datasets.iter().enumerate() {
            cells.push(linear(m, d, acc(mi, di)));
        }
    }
    ReportInput {
        sweep: "s".to_string(),
        cells,
        models: models.iter().map(|(m, t)| ModelInfo { name: m.to_string(), imagenet_top1: *t }).collect(),
        datasets: datasets.iter().map(|d| DatasetInfo { name: d.to_string(), metric: Metric::Top1 }).collect(),
        settings: AnalysisSettings { bootstrap_resamples: 2000, ..AnalysisSettings::default() },
        curves: Default::default(),
    }
}

/// Sixteen ImageNet top-1 values (percent), spread like the paper's networks.
pub const TOP1: [f64; 16] =
    [70.6, 71.8, 73.2, 74.0, 74.4, 74.7, 74.8, 75.6, 76.1, 76.9, 77.4, 78.0, 78.3, 80.2, 80.4, 82.7];

pub fn model_names() -> Vec<String> {
    (0..16).map(|i| format!("net{i:02}")).collect()
}
