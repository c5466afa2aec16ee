//! What a report is made from: one row per cell (grid point or final) plus the models'
//! ImageNet top-1. [`ReportInput::from_task_infos`] builds it from what the coordinator's
//! `ListTasks` returns, so the CLI only passes what it fetched.

use std::collections::BTreeMap;

use serde::Serialize;
use tsweep_proto::cell::{CellSpec, Metric, Regime, Stage};
use tsweep_proto::v1::{MetricPoint, TaskInfo, TaskState};

use crate::selection::GridPoint;
use crate::ReportError;

/// (model, dataset, regime): one score of the report, over its seeds.
pub type GroupKey = (String, String, Regime);

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
    pub status: TaskState,
    /// Attempts started (acquires).
    pub attempts: u32,
    pub val_score: Option<f64>,
    pub test_score: Option<f64>,
    /// How the cell's dataset is scored (Unspecified when neither its result nor its spec
    /// says).
    pub metric: Metric,
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
    /// The cell's seed (one replicate of its (model, dataset, regime)).
    pub seed: u64,
    /// The coordinator's selection group (`model/dataset/regime/seed`) of a finetune or
    /// scratch grid point, or the group a final answers; empty for linear cells.
    pub selection_group: String,
    /// For finals: whether it is its group's current final, as the coordinator's store
    /// recorded it (the report never recomputes the selection the store made).
    pub is_current_final: bool,
}

impl CellRow {
    /// `model/dataset/regime`: the cells of one score of the report (every seed).
    pub fn group_key(&self) -> GroupKey {
        (self.model.clone(), self.dataset.clone(), self.regime)
    }

    /// The replicate a cell belongs to inside its (model, dataset, regime): its selection
    /// group when it has one, else its seed (linear cells select inside their task).
    pub fn replicate_key(&self) -> String {
        if self.selection_group.is_empty() {
            format!("seed {}", self.seed)
        } else {
            self.selection_group.clone()
        }
    }

    pub fn grid_point(&self) -> GridPoint {
        GridPoint {
            task_id: self.task_id.clone(),
            hparams: self.hparams.clone(),
            val_score: if self.status == TaskState::Succeeded { self.val_score } else { None },
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
    pub metric: Metric,
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
    /// Training curves (metrics entries, oldest first, as `GetCurve` answers them) of the
    /// runs the report draws, by task id: the CLI fetches them for
    /// [`ReportInput::selected_runs`]. Empty: no curve figure.
    #[serde(skip)]
    pub curves: BTreeMap<String, Vec<MetricPoint>>,
}

impl ReportInput {
    /// Builds the input from the coordinator's `ListTasks` pages (every state).
    ///
    /// Scores come from `result`, the ImageNet top-1, the metric and the seed from
    /// `spec_json` (a [`CellSpec`]); a model whose sweep file gives no top-1 takes the one
    /// its weights file carries (`result.backbone_top1`, reported by the trainer). A task
    /// with no spec keeps what `TaskInfo` itself says. Datasets are listed by name. The
    /// selection group and which final is current come from `TaskInfo`
    /// (`selection_group`, `current_final`): the store owns them.
    pub fn from_task_infos(tasks: &[TaskInfo]) -> Result<Self, ReportError> {
        let mut cells = Vec::with_capacity(tasks.len());
        let mut models: BTreeMap<String, Option<f64>> = BTreeMap::new();
        // the top-1 the workers found in the weights files' metadata, for models whose
        // sweep file gives none
        let mut weights_top1: BTreeMap<String, f64> = BTreeMap::new();
        let mut datasets: BTreeMap<String, Metric> = BTreeMap::new();
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
                None => known(&task.task_id, "regime", task.regime(), task.regime)?,
            };
            let stage = match &spec {
                Some(spec) => spec.stage,
                None => known(&task.task_id, "stage", task.stage(), task.stage)?,
            };
            let model = spec.as_ref().map_or_else(|| task.model.clone(), |s| s.model.name.clone());
            let dataset = spec.as_ref().map_or_else(|| task.dataset.clone(), |s| s.dataset.name.clone());
            let top1 = spec.as_ref().and_then(|s| s.model.imagenet_top1);
            let entry = models.entry(model.clone()).or_insert(None);
            if entry.is_none() {
                *entry = top1;
            }
            let result = task.result.as_ref();
            if let Some(top1) = result.and_then(|r| r.backbone_top1) {
                weights_top1.entry(model.clone()).or_insert(top1);
            }
            let metric = match (result.map(|r| r.metric()), &spec) {
                (Some(m), _) if m != Metric::Unspecified => m,
                (_, Some(spec)) => spec.dataset.metric,
                _ => Metric::Unspecified,
            };
            let dataset_metric = datasets.entry(dataset.clone()).or_default();
            if *dataset_metric == Metric::Unspecified {
                *dataset_metric = metric;
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
                status: task.state(),
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
                seed: spec.as_ref().map_or(0, |s| s.seed),
                selection_group: task.selection_group.clone(),
                is_current_final: stage == Stage::Final && task.current_final,
            });
        }
        Ok(Self {
            sweep: tasks.first().map(|t| t.sweep.clone()).unwrap_or_default(),
            cells,
            models: models
                .into_iter()
                .map(|(name, top1)| {
                    let imagenet_top1 = top1.or_else(|| weights_top1.get(&name).copied());
                    ModelInfo { name, imagenet_top1 }
                })
                .collect(),
            datasets: datasets.into_iter().map(|(name, metric)| DatasetInfo { name, metric }).collect(),
            settings: AnalysisSettings::default(),
            curves: BTreeMap::new(),
        })
    }

    /// The runs whose training the report draws: each current final of a fine-tune or
    /// scratch group (the refit of the grid point the coordinator selected) that
    /// succeeded, in cell order.
    pub fn selected_runs(&self) -> impl Iterator<Item = &CellRow> {
        self.cells.iter().filter(|c| c.is_current_final && c.status == TaskState::Succeeded)
    }
}

/// The loss of one task's curve as (step, loss), in step order: a later attempt that
/// resumed from a checkpoint takes over from the step it resumed at (the earlier attempt's
/// points from there on are dropped); entries without a finite loss are left out.
pub fn loss_curve(points: &[MetricPoint]) -> Vec<(f64, f64)> {
    let mut kept: Vec<&MetricPoint> = Vec::new();
    for point in points {
        while kept.last().is_some_and(|k| k.attempt < point.attempt && k.step >= point.step) {
            kept.pop();
        }
        kept.push(point);
    }
    kept.iter().filter_map(|p| Some((p.step as f64, p.loss.filter(|l| l.is_finite())?))).collect()
}

/// A regime or stage the task info carries, refused when unset or newer than this report.
fn known<T: PartialEq + Default>(task_id: &str, field: &'static str, value: T, number: i32) -> Result<T, ReportError> {
    if value == T::default() {
        return Err(ReportError::UnknownValue { task_id: task_id.to_string(), field, value: number.to_string() });
    }
    Ok(value)
}
