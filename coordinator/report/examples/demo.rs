//! Writes a report from synthetic numbers: 16 models x 12 datasets x 3 regimes, a small
//! grid per (model, dataset) for finetune and scratch, a few failed and diverged cells.
//!
//! `cargo run -p tsweep-report --example demo -- OUT_DIR`
//!
//! The numbers are made up (transfer log-odds a linear function of ImageNet top-1 plus
//! noise; scratch independent of it); they only show what a report looks like.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tsweep_proto::cell::{Metric, Regime, Stage};
use tsweep_proto::v1::TaskState;
use tsweep_report::{CellRow, DatasetInfo, ModelInfo, ReportInput};

const MODELS: [(&str, f64); 16] = [
    ("Inception v1", 73.2),
    ("BN-Inception", 74.8),
    ("Inception v3", 78.0),
    ("Inception v4", 80.2),
    ("Inc-ResNet v2", 80.4),
    ("ResNet-50", 76.1),
    ("ResNet-101", 77.4),
    ("ResNet-152", 78.3),
    ("DenseNet-121", 74.4),
    ("DenseNet-169", 75.6),
    ("DenseNet-201", 76.9),
    ("MobileNet v1", 70.6),
    ("MobileNet v2", 71.8),
    ("MobileNet v2 1.4", 74.7),
    ("NASNet Mobile", 74.0),
    ("NASNet Large", 82.7),
];

/// (name, metric, logit at top-1 76 for linear/finetune/scratch, slope per top-1 point)
const DATASETS: [(&str, &str, [f64; 3], f64); 12] = [
    ("food101", "top1", [1.3, 2.0, 1.8], 0.06),
    ("cifar10", "top1", [2.6, 3.6, 3.4], 0.09),
    ("cifar100", "top1", [1.0, 1.9, 1.5], 0.08),
    ("birdsnap", "top1", [0.1, 1.0, 0.7], 0.07),
    ("sun397", "top1", [0.3, 0.5, 0.2], 0.05),
    ("cars", "top1", [-0.2, 2.3, 2.2], 0.05),
    ("aircraft", "mean_per_class", [-0.3, 1.6, 1.6], 0.05),
    ("voc2007", "map11", [1.7, 1.9, 0.6], 0.07),
    ("dtd", "top1", [0.6, 0.7, -0.3], 0.06),
    ("pets", "mean_per_class", [2.1, 2.5, 0.9], 0.10),
    ("caltech101", "mean_per_class", [2.3, 2.6, 1.1], 0.08),
    ("flowers", "mean_per_class", [3.2, 3.9, 2.7], 0.07),
];

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let (u1, u2): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "report-demo".to_string()));
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut cells = Vec::new();
    let mut next_id = 0u32;
    let mut row =
        |model: &str, dataset: &str, metric: &str, regime: Regime, stage: Stage, hparams: BTreeMap<String, f64>| {
            next_id += 1;
            CellRow {
                task_id: format!("t{next_id:05}"),
                sweep: "kornblith2019-demo".to_string(),
                model: model.to_string(),
                dataset: dataset.to_string(),
                regime,
                stage,
                hparams,
                status: TaskState::Succeeded,
                attempts: 1,
                val_score: None,
                test_score: None,
                metric: Metric::from_name(metric).unwrap_or_default(),
                diverged: false,
                selected: BTreeMap::new(),
                duration_s: Some(600.0),
                worker: format!("gpu-node-{}", next_id % 4),
                error: String::new(),
                error_class: String::new(),
                seed: 0,
                selection_group: String::new(),
                is_current_final: false,
            }
        };
    for (mi, (model, top1)) in MODELS.iter().enumerate() {
        for (di, (dataset, metric, base, slope)) in DATASETS.iter().enumerate() {
            for (ri, regime) in Regime::ALL.into_iter().enumerate() {
                let effect = if regime == Regime::Scratch { 0.0 } else { *slope };
                let truth = base[ri] + effect * (top1 - 76.0) + 0.08 * normal(&mut rng);
                if regime == Regime::Linear {
                    let mut cell = row(model, dataset, metric, regime, Stage::Grid, BTreeMap::new());
                    cell.val_score = Some(sigmoid(truth + 0.05 * normal(&mut rng)));
                    cell.test_score = Some(sigmoid(truth));
                    cell.selected.insert("l2".to_string(), 10f64.powf(-6.0 + 0.25 * rng.random_range(0..45) as f64));
                    cells.push(cell);
                    continue;
                }
                let mut grid = Vec::new();
                for lr in [1e-3, 1e-2, 1e-1] {
                    for wd in [0.0, 1e-5] {
                        let hp = BTreeMap::from([("lr".to_string(), lr), ("weight_decay".to_string(), wd)]);
                        let mut cell = row(model, dataset, metric, regime, Stage::Grid, hp);
                        let quality = -0.4 * (lr.log10() + 2.0).powi(2) - if wd > 0.0 { 0.0 } else { 0.05 };
                        cell.val_score = Some(sigmoid(truth + quality + 0.1 * normal(&mut rng)));
                        cell.test_score = Some(sigmoid(truth + quality + 0.05 * normal(&mut rng)));
                        grid.push(cell);
                    }
                }
                // A few things going wrong, as in a real sweep.
                if mi == 15 && regime == Regime::Finetune {
                    let point = &mut grid[5];
                    point.diverged = true;
                    point.val_score = Some(0.01);
                    point.test_score = Some(0.01);
                }
                if mi == 11 && di == 3 && regime == Regime::Scratch {
                    let point = &mut grid[0];
                    point.status = TaskState::Failed;
                    point.attempts = 3;
                    point.val_score = None;
                    point.test_score = None;
                    point.error = "CUDA out of memory".to_string();
                    point.error_class = "retryable".to_string();
                }
                let best = grid
                    .iter()
                    .filter(|c| !c.diverged && c.status == TaskState::Succeeded)
                    .max_by(|a, b| a.val_score.unwrap_or(0.0).total_cmp(&b.val_score.unwrap_or(0.0)))
                    .map(|c| c.hparams.clone())
                    .unwrap_or_default();
                let mut fin = row(model, dataset, metric, regime, Stage::Final, best);
                // The store records each group's current final; here there is one final per group.
                fin.is_current_final = true;
                fin.test_score = Some(sigmoid(truth + 0.03 + 0.03 * normal(&mut rng)));
                if mi == 5 && di == 6 && regime == Regime::Finetune {
                    fin.status = TaskState::Failed;
                    fin.test_score = None;
                    fin.attempts = 3;
                    fin.error = "checkpoint store unreachable".to_string();
                    fin.error_class = "retryable".to_string();
                }
                if mi == 2 && di == 0 && regime == Regime::Scratch {
                    fin.status = TaskState::Running;
                    fin.test_score = None;
                }
                cells.extend(grid);
                cells.push(fin);
            }
        }
    }
    let input = ReportInput {
        sweep: "kornblith2019-demo".to_string(),
        cells,
        models: MODELS
            .iter()
            .map(|(name, top1)| ModelInfo { name: name.to_string(), imagenet_top1: Some(*top1) })
            .collect(),
        datasets: DATASETS
            .iter()
            .map(|(name, metric, ..)| DatasetInfo {
                name: name.to_string(),
                metric: Metric::from_name(metric).unwrap_or_default(),
            })
            .collect(),
        settings: Default::default(),
        curves: Default::default(),
    };
    print!("{}", tsweep_report::render_terminal_tables(&input));
    let paths = tsweep_report::write_report(&input, &out)?;
    for file in paths.files() {
        println!("wrote {}", file.display());
    }
    Ok(())
}
