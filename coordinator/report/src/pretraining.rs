//! The regularizer study (Kornblith, Shlens & Le 2019, §4.2 and its figure on training
//! settings): the same architecture pretrained under different settings (label smoothing,
//! dropout, an auxiliary head, weight decay, BatchNorm scale), each setting's source
//! accuracy set against how well its penultimate features transfer.
//!
//! * A **setting** is one pretrain cell (stage `pretrain`): its hparams are the setting,
//!   its test score the source accuracy, its model name the model the trained backbone
//!   becomes in the transfer regimes.
//! * **Transfer score** of a setting in a regime: the mean log-odds of that model over
//!   the regime's datasets (the same [`crate::analysis::ModelSummary`] as Figure 1),
//!   with the mean accuracy beside it.
//! * **Per regime** (linear and finetune side by side): Pearson r of the mean log-odds
//!   against the source accuracy over the settings scored on every dataset, with the
//!   same bootstrap and fit as Figure 1 (rough with few settings: the figure is for
//!   reading the direction of each setting's move).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use tsweep_proto::cell::{Regime, Regularizers, Stage};
use tsweep_proto::v1::TaskState;

use crate::analysis::{correlation, Correlation, RegimeAnalysis, ScoreScale};
use crate::input::{AnalysisSettings, CellRow};

/// The regimes the figure shows side by side: the two that transfer the trained backbone.
pub const STUDY_REGIMES: [Regime; 2] = [Regime::Linear, Regime::Finetune];

/// Seed offset of the study's bootstrap intervals (Figure 1 uses 0..3000).
const SEED_OFFSET: u64 = 9_000;

/// Source scores of the pretrained models, as fractions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceScores {
    /// Model name → its pretrain cell's test score (succeeded cells only).
    pub scores: BTreeMap<String, f64>,
    /// The source datasets, sorted.
    pub datasets: Vec<String>,
}

/// The source test score of every succeeded pretrain cell, on the input's scale.
pub fn source_scores(cells: &[CellRow], scale: ScoreScale) -> SourceScores {
    let mut out = SourceScores::default();
    let mut datasets = BTreeSet::new();
    for cell in cells.iter().filter(|c| c.stage == Stage::Pretrain) {
        datasets.insert(cell.dataset.clone());
        if cell.status != TaskState::Succeeded {
            continue;
        }
        if let Some(score) = cell.test_score.filter(|v| v.is_finite()) {
            out.scores.insert(cell.model.clone(), scale.to_fraction(score));
        }
    }
    out.datasets = datasets.into_iter().collect();
    out
}

/// How one setting's model transferred in one regime.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegimeTransfer {
    pub regime: Regime,
    /// Mean log-odds over the datasets scored.
    pub mean_log_odds: Option<f64>,
    /// Mean test accuracy (fraction) over the datasets scored.
    pub mean_accuracy: Option<f64>,
    pub datasets_scored: usize,
    pub datasets_total: usize,
}

/// One pretraining setting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PretrainSetting {
    /// The model its backbone becomes.
    pub model: String,
    pub task_id: String,
    /// The source dataset.
    pub source: String,
    pub status: TaskState,
    pub diverged: bool,
    /// The setting: lr, weight_decay, steps and the regularizers.
    pub hparams: BTreeMap<String, f64>,
    /// What sets it apart from the other settings (`ls0.1 do0.5`; `baseline`).
    pub label: String,
    /// Source test score (fraction).
    pub source_accuracy: Option<f64>,
    /// Per regime that transferred it (linear, finetune, scratch).
    pub transfer: Vec<RegimeTransfer>,
    pub error: String,
}

impl PretrainSetting {
    pub fn transfer(&self, regime: Regime) -> Option<&RegimeTransfer> {
        self.transfer.iter().find(|t| t.regime == regime)
    }
}

/// One panel of the regularizer figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StudyPanel {
    pub regime: Regime,
    /// Mean log-odds against source accuracy over the settings scored on every dataset.
    pub correlation: Option<Correlation>,
}

/// The whole study; None in an analysis without pretrain cells.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegularizerStudy {
    pub settings: Vec<PretrainSetting>,
    pub panels: Vec<StudyPanel>,
}

/// The regularizers of a setting that are away from their neutral value, in a fixed
/// order: `ls0.1` (label smoothing), `do0.5` (dropout), `aux0.4` (aux head weight),
/// `nobnscale`. The one spelling of a setting: the sweep file names a pretrained model's
/// variants with it, the report labels the settings with it.
pub fn regularizer_parts(r: &Regularizers) -> Vec<String> {
    let mut parts = Vec::new();
    if r.label_smoothing != 0.0 {
        parts.push(format!("ls{}", r.label_smoothing));
    }
    if r.dropout != 0.0 {
        parts.push(format!("do{}", r.dropout));
    }
    if r.aux_weight != 0.0 {
        parts.push(format!("aux{}", r.aux_weight));
    }
    if !r.bn_scale {
        parts.push("nobnscale".to_string());
    }
    parts
}

/// The settings' short labels: every regularizer away from its neutral value, and lr,
/// steps or weight decay where the settings differ in them; `baseline` when nothing is.
fn labels(cells: &[&CellRow]) -> Vec<String> {
    let varies = |key: &str| {
        let values: BTreeSet<u64> =
            cells.iter().map(|c| c.hparams.get(key).copied().unwrap_or(0.0).to_bits()).collect();
        values.len() > 1
    };
    let (vary_lr, vary_steps, vary_wd) = (varies("lr"), varies("steps"), varies("weight_decay"));
    cells
        .iter()
        .map(|c| {
            let get = |key: &str| c.hparams.get(key).copied().unwrap_or(0.0);
            let r = Regularizers::from_hparams(&c.hparams).unwrap_or_default();
            let mut parts = Vec::new();
            if vary_lr {
                parts.push(format!("lr{}", get("lr")));
            }
            if vary_steps {
                parts.push(format!("s{}", get("steps")));
            }
            if vary_wd {
                parts.push(format!("wd{}", get("weight_decay")));
            }
            parts.extend(regularizer_parts(&r));
            if parts.is_empty() {
                "baseline".to_string()
            } else {
                parts.join(" ")
            }
        })
        .collect()
}

/// The study from the cells and the regimes' analyses (for the transfer scores).
pub fn study(
    cells: &[CellRow],
    regimes: &[RegimeAnalysis],
    scale: ScoreScale,
    analysis: &AnalysisSettings,
) -> Option<RegularizerStudy> {
    let pretrain: Vec<&CellRow> = cells.iter().filter(|c| c.stage == Stage::Pretrain).collect();
    if pretrain.is_empty() {
        return None;
    }
    let finite = |v: Option<f64>| v.filter(|v| v.is_finite()).map(|v| scale.to_fraction(v));
    let settings: Vec<PretrainSetting> = pretrain
        .iter()
        .zip(labels(&pretrain))
        .map(|(cell, label)| {
            let transfer = regimes
                .iter()
                .filter_map(|r| {
                    let summary = r.models.iter().find(|m| m.model == cell.model)?;
                    let accuracies: Vec<f64> =
                        r.scores.iter().filter(|s| s.model == cell.model).filter_map(|s| s.accuracy).collect();
                    Some(RegimeTransfer {
                        regime: r.regime,
                        mean_log_odds: summary.mean_log_odds,
                        mean_accuracy: (!accuracies.is_empty())
                            .then(|| accuracies.iter().sum::<f64>() / accuracies.len() as f64),
                        datasets_scored: summary.datasets_scored,
                        datasets_total: summary.datasets_total,
                    })
                })
                .collect();
            PretrainSetting {
                model: cell.model.clone(),
                task_id: cell.task_id.clone(),
                source: cell.dataset.clone(),
                status: cell.status,
                diverged: cell.diverged,
                hparams: cell.hparams.clone(),
                label,
                source_accuracy: if cell.status == TaskState::Succeeded { finite(cell.test_score) } else { None },
                transfer,
                error: cell.error.clone(),
            }
        })
        .collect();
    let panels = STUDY_REGIMES
        .iter()
        .enumerate()
        .filter(|(_, regime)| settings.iter().any(|s| s.transfer(**regime).is_some()))
        .map(|(i, &regime)| {
            let (xs, ys): (Vec<f64>, Vec<f64>) = settings
                .iter()
                .filter_map(|s| {
                    let t = s.transfer(regime).filter(|t| t.datasets_scored == t.datasets_total)?;
                    Some((s.source_accuracy?, t.mean_log_odds?))
                })
                .unzip();
            StudyPanel { regime, correlation: correlation(&xs, &ys, analysis, SEED_OFFSET + i as u64) }
        })
        .collect();
    Some(RegularizerStudy { settings, panels })
}
