//! What a report is made from: one row per cell (grid point or final) plus the models'
//! ImageNet top-1. [`ReportInput::from_task_infos`] builds it from what the coordinator's
//! `ListTasks` returns, so the CLI only passes what it fetched.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};
use tsweep_proto::cell::{CellSpec, Regime, Stage};
use tsweep_proto::v1::TaskInfo;

use crate::selection::{select_best, GridPoint};
use crate::ReportError;

/// (model, dataset, regime): the group whose grid points compete in selection.
pub type GroupKey = (String, String, Regime);

/// A cell's lifecycle state as the coordinator names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CellStatus {
    Pending,
    Leased,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// A state this version of the report does not know; shown as is.
    Other(String),
}

impl CellStatus {
    pub fn from_name(name: &str) -> Self {
        match name {
            "pending" => Self::Pending,
            "leased" => Self::Leased,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            other => Self::Other(other.to_string()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Pending => "pending",
            Self::Leased => "leased",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Other(name) => name,
        }
    }

    /// Whether the cell will not change any more without a user's retry.
    pub fn has_ended(&self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

impl Serialize for CellStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// One cell of the sweep: a grid point, a final (refit on train+val) or a pretrain cell
/// (a source model trained from scratch: `dataset` is its source, `hparams` its setting,
/// `test_score` its source accuracy, `model` the model its backbone becomes).
///
/// Scores are on the scale the trainer reported them (fractions are expected; see
/// [`crate::analysis::ScoreScale`] for how percentages are recognised).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellRow {
    pub task_id: String,
    pub sweep: String,
    pub model: String,
    pub dataset: String,
    pub regime: Regime,
    pub stage: Stage,
    /// The grid point (lr, weight_decay, ...); empty for the linear regime.
    pub hparams: BTreeMap<String, f64>,
    pub status: CellStatus,
    /// Attempts started (acquires).
    pub attempts: u32,
    pub val_score: Option<f64>,
    pub test_score: Option<f64>,
    /// top1 | mean_per_class | map11.
    pub metric: String,
    /// NaN/inf loss: a result with a chance-level score, never selected.
    pub diverged: bool,
    /// Hyperparameters chosen inside the task (the linear regime's l2).
    pub selected: BTreeMap<String, f64>,
    pub duration_s: Option<f64>,
    /// Last worker that held it ("" if none).
    pub worker: String,
    /// Last failure message ("" if none).
    pub error: String,
    /// Class of the last failure (retryable, fatal, out_of_memory, lost_worker, preempted; "" if none).
    pub error_class: String,
    /// For finals: whether it is the final of its group's current selection.
    pub is_current_final: bool,
}

impl CellRow {
    /// `model/dataset/regime`, the group whose grid points compete in selection.
    pub fn group_key(&self) -> GroupKey {
        (self.model.clone(), self.dataset.clone(), self.regime)
    }

    pub fn grid_point(&self) -> GridPoint {
        GridPoint {
            task_id: self.task_id.clone(),
            hparams: self.hparams.clone(),
            val_score: if self.status == CellStatus::Succeeded { self.val_score } else { None },
            diverged: self.diverged,
        }
    }
}

/// A model of the sweep and its ImageNet top-1 (fraction or percent, as the sweep file
/// gives it; None: reported, but left out of the correlations).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub imagenet_top1: Option<f64>,
}

/// A dataset and its metric, in the order the tables show them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetInfo {
    pub name: String,
    pub metric: String,
}

/// Knobs of the analysis; the defaults are what `tsweep report` uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalysisSettings {
    /// Accuracies are clamped to [epsilon, 1 - epsilon] before the log-odds transform.
    pub log_odds_epsilon: f64,
    /// Bootstrap resamples (over models) for the confidence intervals of r.
    pub bootstrap_resamples: usize,
    pub bootstrap_seed: u64,
    /// Two-sided level of the intervals (0.95: 2.5th and 97.5th percentiles).
    pub confidence_level: f64,
}

impl Default for AnalysisSettings {
    fn default() -> Self {
        Self { log_odds_epsilon: 1e-4, bootstrap_resamples: 10_000, bootstrap_seed: 2019, confidence_level: 0.95 }
    }
}

/// Everything a report is made from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportInput {
    pub sweep: String,
    pub cells: Vec<CellRow>,
    /// Every model of the sweep. Models that appear only in `cells` are added by the
    /// analysis with no ImageNet top-1.
    pub models: Vec<ModelInfo>,
    /// Column order of the tables. Datasets that appear only in `cells` are appended.
    pub datasets: Vec<DatasetInfo>,
    pub settings: AnalysisSettings,
}

impl ReportInput {
    /// Builds the input from the coordinator's `ListTasks` pages (every state).
    ///
    /// Scores come from `result`, the ImageNet top-1 and the metric from `spec_json`
    /// (a [`CellSpec`]); a task with no spec keeps what `TaskInfo` itself says. Datasets
    /// are listed by name. Which final is current is decided by [`mark_current_finals`].
    pub fn from_task_infos(tasks: &[TaskInfo]) -> Result<Self, ReportError> {
        let mut cells = Vec::with_capacity(tasks.len());
        let mut models: BTreeMap<String, Option<f64>> = BTreeMap::new();
        let mut datasets: BTreeMap<String, String> = BTreeMap::new();
        for task in tasks {
            let spec = if task.spec_json.trim().is_empty() {
                None
            } else {
                Some(
                    CellSpec::from_json(&task.spec_json)
                        .map_err(|source| ReportError::Spec { task_id: task.task_id.clone(), source })?,
                )
            };
            let regime = match &spec {
                Some(spec) => spec.regime,
                None => parse_regime(&task.task_id, &task.regime)?,
            };
            let stage = match &spec {
                Some(spec) => spec.stage,
                None => parse_stage(&task.task_id, &task.stage)?,
            };
            let model = spec.as_ref().map_or_else(|| task.model.clone(), |s| s.model.name.clone());
            let dataset = spec.as_ref().map_or_else(|| task.dataset.clone(), |s| s.dataset.name.clone());
            let top1 = spec.as_ref().and_then(|s| s.model.imagenet_top1);
            let entry = models.entry(model.clone()).or_insert(None);
            if entry.is_none() {
                *entry = top1;
            }
            let result = task.result.as_ref();
            let metric = match (result.map(|r| r.metric.as_str()), &spec) {
                (Some(m), _) if !m.is_empty() => m.to_string(),
                (_, Some(spec)) => spec.dataset.metric.name().to_string(),
                _ => String::new(),
            };
            let dataset_metric = datasets.entry(dataset.clone()).or_default();
            if dataset_metric.is_empty() {
                dataset_metric.clone_from(&metric);
            }
            let wall_s = (task.started_unix_ms > 0 && task.finished_unix_ms >= task.started_unix_ms)
                .then(|| (task.finished_unix_ms - task.started_unix_ms) as f64 / 1000.0);
            let error_class = if task.error.is_empty() { String::new() } else { task.error_class().name().to_string() };
            cells.push(CellRow {
                task_id: task.task_id.clone(),
                sweep: task.sweep.clone(),
                model,
                dataset,
                regime,
                stage,
                hparams: spec
                    .as_ref()
                    .map_or_else(|| task.hparams.iter().map(|(k, v)| (k.clone(), *v)).collect(), |s| s.hparams.clone()),
                status: CellStatus::from_name(&task.state),
                attempts: task.attempt,
                val_score: result.and_then(|r| r.val_score),
                test_score: result.and_then(|r| r.test_score),
                metric,
                diverged: result.is_some_and(|r| r.diverged),
                selected: result.map(|r| r.selected.iter().map(|(k, v)| (k.clone(), *v)).collect()).unwrap_or_default(),
                duration_s: result.map(|r| r.duration_s).filter(|d| *d > 0.0).or(wall_s),
                worker: task.worker.clone(),
                error: task.error.clone(),
                error_class,
                is_current_final: false,
            });
        }
        mark_current_finals(&mut cells);
        Ok(Self {
            sweep: tasks.first().map(|t| t.sweep.clone()).unwrap_or_default(),
            cells,
            models: models.into_iter().map(|(name, imagenet_top1)| ModelInfo { name, imagenet_top1 }).collect(),
            datasets: datasets.into_iter().map(|(name, metric)| DatasetInfo { name, metric }).collect(),
            settings: AnalysisSettings::default(),
        })
    }
}

fn parse_regime(task_id: &str, name: &str) -> Result<Regime, ReportError> {
    Regime::ALL.into_iter().find(|r| r.name() == name).ok_or_else(|| ReportError::UnknownValue {
        task_id: task_id.to_string(),
        field: "regime",
        value: name.to_string(),
    })
}

fn parse_stage(task_id: &str, name: &str) -> Result<Stage, ReportError> {
    Stage::from_name(name).ok_or_else(|| ReportError::UnknownValue {
        task_id: task_id.to_string(),
        field: "stage",
        value: name.to_string(),
    })
}

/// Marks, per (model, dataset, regime), the final whose hyperparameters are those of the
/// best ended grid point ([`select_best`]) as current; every other final is not (an older
/// selection, superseded when the grid was extended with a better point). While some grid
/// points have not ended the mark reflects the points that have. A group with no eligible
/// grid point and exactly one final marks that final current.
pub fn mark_current_finals(cells: &mut [CellRow]) {
    // Per group: indices of its grid points and of its finals.
    let mut groups: BTreeMap<GroupKey, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    for (i, cell) in cells.iter().enumerate() {
        let (grid, finals) = groups.entry(cell.group_key()).or_default();
        match cell.stage {
            Stage::Grid => grid.push(i),
            Stage::Final => finals.push(i),
            // A pretrain cell trains a source model; it is in no selection group.
            Stage::Pretrain => {}
        }
    }
    for (grid, finals) in groups.values() {
        if finals.is_empty() {
            continue;
        }
        let points: Vec<GridPoint> = grid.iter().map(|&i| cells[i].grid_point()).collect();
        let winner = match (select_best(&points), finals.as_slice()) {
            (Some(best), _) => Some(points[best].hparams.clone()),
            // No grid point to compare with (none eligible or none in the input): a lone
            // final is current.
            (None, [only]) => Some(cells[*only].hparams.clone()),
            (None, _) => None,
        };
        for &i in finals {
            cells[i].is_current_final = winner.as_ref().is_some_and(|h| *h == cells[i].hparams);
        }
    }
}
