//! The paper's analysis as pure functions (Kornblith, Shlens & Le 2019, §3 and Figure 1).
//!
//! * **Reported score** of a (model, dataset, regime): the mean over its seeds of each
//!   seed's score, with the spread (sample standard deviation, n − 1) when two or more
//!   seeds have one. A seed's score: for finetune and scratch, the test score of its
//!   selection group's current final (refit on train+val; the coordinator's store decides
//!   which final is current, per seed, and the report reads it from `TaskInfo`); while
//!   there is none (pending, or it failed) the test score of the seed's best-validation
//!   grid point, marked. For linear, the test score of the seed's linear task (its L2
//!   strength was selected inside the task). Log-odds are taken of the mean.
//! * **Scale**: accuracies are fractions p in [0, 1]. If any finite score of the input
//!   exceeds 1 the whole input is read as percentages and divided by 100 (decided once per
//!   input, never per value: a diverged run's 0.99 % must not become 99 %). ImageNet top-1
//!   is normalised the same way, separately.
//! * **Log-odds**: `logit(p) = ln(p / (1 - p))` with p clamped to `[eps, 1 - eps]`,
//!   eps = 1e-4 by default (so |logit| <= 9.21).
//! * **Mean log-odds** of a model: the arithmetic mean of its per-dataset log-odds. Only a
//!   model scored on every dataset of the regime enters the correlation (datasets differ
//!   in difficulty, so a partial mean is not comparable); partial means are shown, marked.
//! * **Pearson r** of mean log-odds against ImageNet top-1, across models that have a
//!   top-1 (the others are reported and noted), at least 3 of them. Per-dataset r uses
//!   that dataset's log-odds and every model scored on it.
//! * **Bootstrap interval**: resample the n models with replacement B times (default
//!   10,000, ChaCha8 seeded, default seed 2019), recompute r, skip resamples where r is
//!   undefined (all points equal in x or y), and take the 2.5th and 97.5th percentiles
//!   (linear interpolation between order statistics).
//! * **Fit line**: ordinary least squares of mean log-odds on ImageNet top-1 (percent).
//! * **Pretrained models**: a model whose backbone a pretrain cell of the sweep trained
//!   has that cell's source test score as its x-axis value in place of an ImageNet top-1
//!   (on the cells' scale; a typed `imagenet_top1` wins). The regularizer study
//!   ([`crate::pretraining`]) sets each pretrain setting's source accuracy against its
//!   model's mean transfer log-odds per regime. Pretrain cells are in no regime's table.
//! * **Scratch vs fine-tune**, per dataset, over models with both scores: mean accuracy of
//!   each, mean paired difference in accuracy and in log-odds, models where fine-tuning wins.

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tsweep_proto::cell::{Metric, Regime, Stage};
use tsweep_proto::v1::TaskState;

use crate::input::{AnalysisSettings, CellRow, DatasetInfo, ReportInput};
use crate::selection::select_best;

/// Below this many models the percentile bootstrap of r is noted as rough.
pub const SMALL_SAMPLE: usize = 8;

/// `ln(p / (1 - p))` with p clamped to `[epsilon, 1 - epsilon]`. NaN stays NaN.
pub fn log_odds(p: f64, epsilon: f64) -> f64 {
    let p = p.clamp(epsilon, 1.0 - epsilon);
    (p / (1.0 - p)).ln()
}

/// Pearson's correlation coefficient. None with fewer than 2 pairs, lengths that differ,
/// a non-finite value, or no variance in x or y.
pub fn pearson(xs: &[f64], ys: &[f64]) -> Option<f64> {
    let n = xs.len();
    if n < 2 || ys.len() != n || xs.iter().chain(ys).any(|v| !v.is_finite()) {
        return None;
    }
    let mean_x = xs.iter().sum::<f64>() / n as f64;
    let mean_y = ys.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in xs.iter().zip(ys) {
        let (dx, dy) = (x - mean_x, y - mean_y);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    // Relative threshold: a column of equal values leaves only rounding noise.
    let tiny = |s: f64, m: f64| s <= 1e-24 * (1.0 + m * m) * n as f64;
    if tiny(sxx, mean_x) || tiny(syy, mean_y) {
        return None;
    }
    Some((sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0))
}

/// Ordinary least squares `y = intercept + slope * x`; None where x has no variance.
pub fn least_squares(xs: &[f64], ys: &[f64]) -> Option<(f64, f64)> {
    let n = xs.len();
    if n < 2 || ys.len() != n {
        return None;
    }
    let mean_x = xs.iter().sum::<f64>() / n as f64;
    let mean_y = ys.iter().sum::<f64>() / n as f64;
    let sxx: f64 = xs.iter().map(|x| (x - mean_x).powi(2)).sum();
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mean_x) * (y - mean_y)).sum();
    if sxx <= 0.0 || !sxx.is_finite() || !sxy.is_finite() {
        return None;
    }
    let slope = sxy / sxx;
    Some((mean_y - slope * mean_x, slope))
}

/// Quantile q of sorted values, linear interpolation between order statistics (R type 7).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    Some(sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo]))
}

/// A percentile bootstrap interval of Pearson r.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BootstrapInterval {
    pub low: f64,
    pub high: f64,
    pub level: f64,
    pub resamples: usize,
    /// Resamples where r was defined (the others drew one distinct x or y value).
    pub valid_resamples: usize,
}

/// Percentile bootstrap over pairs: `resamples` draws of n pairs with replacement
/// (ChaCha8 seeded with `seed`), r of each, the `(1 - level) / 2` and `(1 + level) / 2`
/// quantiles of the defined ones. None with fewer than 3 pairs or when fewer than half
/// of the resamples give a defined r.
pub fn bootstrap_pearson(xs: &[f64], ys: &[f64], resamples: usize, seed: u64, level: f64) -> Option<BootstrapInterval> {
    let n = xs.len();
    if n < 3 || ys.len() != n || resamples == 0 || !(0.0..1.0).contains(&level) {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rs = Vec::with_capacity(resamples);
    let (mut bx, mut by) = (vec![0.0; n], vec![0.0; n]);
    for _ in 0..resamples {
        for k in 0..n {
            let i = rng.random_range(0..n);
            bx[k] = xs[i];
            by[k] = ys[i];
        }
        if let Some(r) = pearson(&bx, &by) {
            rs.push(r);
        }
    }
    if rs.len() * 2 < resamples {
        return None;
    }
    rs.sort_by(f64::total_cmp);
    Some(BootstrapInterval {
        low: quantile_sorted(&rs, (1.0 - level) / 2.0)?,
        high: quantile_sorted(&rs, (1.0 + level) / 2.0)?,
        level,
        resamples,
        valid_resamples: rs.len(),
    })
}

/// How the input's numbers are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreScale {
    Fraction,
    Percent,
}

impl ScoreScale {
    /// Percent if any finite value exceeds 1, else fraction.
    pub fn detect(values: impl IntoIterator<Item = f64>) -> Self {
        if values.into_iter().any(|v| v.is_finite() && v > 1.0 + 1e-9) {
            Self::Percent
        } else {
            Self::Fraction
        }
    }
    pub fn to_fraction(self, value: f64) -> f64 {
        match self {
            Self::Fraction => value,
            Self::Percent => value / 100.0,
        }
    }
}

/// Where a reported score comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreSource {
    /// The test score of the group's current final (refit on train+val).
    Final,
    /// The linear regime's task (L2 selected inside it).
    Linear,
    /// No final yet: the best-validation grid point's test score.
    BestGridNoFinal,
    /// The current final failed or was cancelled: the best grid point's test score.
    BestGridFinalFailed,
    /// No score (see [`MissingReason`]).
    Missing,
}

/// Why a group has no score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingReason {
    /// Some of its cells have not ended.
    Pending,
    /// Every grid point that ended diverged.
    Diverged,
    /// Its cells failed (or have no test score).
    Failed,
    /// Its cells were cancelled.
    Cancelled,
}

/// How the grid points of a group ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GridCounts {
    pub total: usize,
    pub succeeded: usize,
    pub diverged: usize,
    pub failed: usize,
    pub cancelled: usize,
    /// Pending, leased or running.
    pub unfinished: usize,
}

/// One seed's score of a (model, dataset, regime): its selection group's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedScore {
    pub seed: u64,
    /// The coordinator's selection group (empty for linear cells).
    pub selection_group: String,
    /// Test accuracy as a fraction.
    pub accuracy: Option<f64>,
    pub val_score: Option<f64>,
    pub source: ScoreSource,
    pub diverged: bool,
    pub selected: BTreeMap<String, f64>,
    pub task_id: Option<String>,
}

/// The score the report shows for one (model, dataset, regime), over its seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportedScore {
    pub model: String,
    pub dataset: String,
    pub regime: Regime,
    pub metric: Metric,
    /// Test accuracy as a fraction: the mean over the seeds that have one.
    pub accuracy: Option<f64>,
    /// Sample standard deviation (n − 1) of the seeds' accuracies; None below two seeds.
    pub spread: Option<f64>,
    /// Log-odds of `accuracy`.
    pub log_odds: Option<f64>,
    /// Where the score comes from; over several seeds the weakest source of any of them
    /// (a final's score only when every scored seed has its final).
    pub source: ScoreSource,
    pub missing: Option<MissingReason>,
    /// The run the score comes from diverged (chance-level score).
    pub diverged: bool,
    /// Validation score (fraction) of the selected grid point or the linear task (mean
    /// over the seeds).
    pub val_score: Option<f64>,
    /// Selected hyperparameters: the winning grid point's, or what the linear task chose;
    /// empty when the seeds selected differently (see `seeds`).
    pub selected: BTreeMap<String, f64>,
    /// The task whose test score is reported (with one seed).
    pub task_id: Option<String>,
    pub grid: GridCounts,
    pub finals: usize,
    /// Each seed (selection group) with its own score, by seed.
    pub seeds: Vec<SeedScore>,
    /// Seeds with a score (the mean is over these).
    pub seeds_scored: usize,
}

impl ReportedScore {
    /// A short mark for tables: "" (a final's score or linear), "*" (no final yet),
    /// "!" (final failed), with " D" appended when the run diverged and " k/n" when only
    /// k of the n seeds have a score yet.
    pub fn mark(&self) -> String {
        let base = match self.source {
            ScoreSource::BestGridNoFinal => "*",
            ScoreSource::BestGridFinalFailed => "!",
            _ => "",
        };
        let mut mark = base.to_string();
        if self.diverged {
            mark.push_str(" D");
        }
        if self.seeds_scored < self.seeds.len() {
            mark.push_str(&format!(" {}/{}", self.seeds_scored, self.seeds.len()));
        }
        mark
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSummary {
    pub model: String,
    /// ImageNet top-1 as a fraction (for a pretrained model: its source test score).
    pub imagenet_top1: Option<f64>,
    pub mean_log_odds: Option<f64>,
    pub datasets_scored: usize,
    pub datasets_total: usize,
    pub in_correlation: bool,
    /// Why it is left out of the correlation.
    pub excluded_because: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Correlation {
    /// Models in it.
    pub n: usize,
    pub r: f64,
    pub interval: Option<BootstrapInterval>,
    /// Least-squares fit of mean log-odds on ImageNet top-1 in percent.
    pub intercept: f64,
    pub slope: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetCorrelation {
    pub dataset: String,
    /// None with fewer than 3 models or no variance.
    pub correlation: Option<Correlation>,
    pub n: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegimeAnalysis {
    pub regime: Regime,
    /// Columns: datasets with a cell in this regime, in input order.
    pub datasets: Vec<String>,
    /// Rows: models with a cell in this regime, by ImageNet top-1 descending, unknown last.
    pub models: Vec<ModelSummary>,
    /// One per (model, dataset) with cells.
    pub scores: Vec<ReportedScore>,
    /// Mean log-odds vs ImageNet top-1 across models.
    pub correlation: Option<Correlation>,
    pub per_dataset: Vec<DatasetCorrelation>,
    pub notes: Vec<String>,
}

impl RegimeAnalysis {
    pub fn score(&self, model: &str, dataset: &str) -> Option<&ReportedScore> {
        self.scores.iter().find(|s| s.model == model && s.dataset == dataset)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairedScores {
    pub model: String,
    pub imagenet_top1: Option<f64>,
    pub finetune: f64,
    pub scratch: f64,
}

/// Fine-tuning vs training from random init on one dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScratchVsFinetune {
    pub dataset: String,
    pub pairs: Vec<PairedScores>,
    pub mean_finetune: Option<f64>,
    pub mean_scratch: Option<f64>,
    /// Mean of finetune - scratch accuracy (fraction).
    pub mean_difference: Option<f64>,
    pub mean_log_odds_difference: Option<f64>,
    pub finetune_better: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    pub sweep: String,
    pub score_scale: ScoreScale,
    pub imagenet_scale: ScoreScale,
    /// What the x axis of the correlations is: "ImageNet top-1", "source top-1
    /// (fashion_mnist)" when every model is pretrained in the sweep, or both.
    pub x_axis: String,
    /// The regularizer study: one setting per pretrain cell (None without any).
    pub pretraining: Option<crate::pretraining::RegularizerStudy>,
    pub settings: AnalysisSettings,
    pub datasets: Vec<DatasetInfo>,
    pub regimes: Vec<RegimeAnalysis>,
    pub scratch_vs_finetune: Vec<ScratchVsFinetune>,
    pub notes: Vec<String>,
}

impl Analysis {
    pub fn regime(&self, regime: Regime) -> Option<&RegimeAnalysis> {
        self.regimes.iter().find(|r| r.regime == regime)
    }
}

/// The reported score of one (model, dataset, regime) from its cells (every seed): each
/// replicate ([`CellRow::replicate_key`]: the selection group, or the seed) is scored on
/// its own ([`replicate_score`]) and the scores are averaged.
pub fn reported_score(cells: &[&CellRow], scale: ScoreScale, epsilon: f64) -> Option<ReportedScore> {
    let mut replicates: BTreeMap<(u64, String), Vec<&CellRow>> = BTreeMap::new();
    for cell in cells {
        replicates.entry((cell.seed, cell.replicate_key())).or_default().push(cell);
    }
    let scores: Vec<ReportedScore> =
        replicates.values().filter_map(|cells| replicate_score(cells, scale, epsilon)).collect();
    let mut combined = scores.first()?.clone();
    let seeds: Vec<SeedScore> = scores.iter().flat_map(|s| s.seeds.iter().cloned()).collect();
    if scores.len() == 1 {
        combined.seeds = seeds;
        return Some(combined);
    }
    let scored: Vec<&ReportedScore> = scores.iter().filter(|s| s.accuracy.is_some()).collect();
    let mean = |values: &[f64]| (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64);
    let accuracies: Vec<f64> = scored.iter().filter_map(|s| s.accuracy).collect();
    combined.accuracy = mean(&accuracies);
    combined.spread = sample_std(&accuracies);
    combined.log_odds = combined.accuracy.map(|p| log_odds(p, epsilon));
    combined.val_score = mean(&scored.iter().filter_map(|s| s.val_score).collect::<Vec<_>>());
    combined.diverged = scored.iter().any(|s| s.diverged);
    combined.source = scored
        .iter()
        .map(|s| s.source)
        .max_by_key(|source| match source {
            ScoreSource::BestGridFinalFailed => 2,
            ScoreSource::BestGridNoFinal => 1,
            _ => 0,
        })
        .unwrap_or(ScoreSource::Missing);
    combined.selected = match scored.split_first() {
        Some((first, rest)) if rest.iter().all(|s| s.selected == first.selected) => first.selected.clone(),
        _ => BTreeMap::new(),
    };
    combined.task_id = None;
    combined.grid = scores.iter().fold(GridCounts::default(), |sum, s| GridCounts {
        total: sum.total + s.grid.total,
        succeeded: sum.succeeded + s.grid.succeeded,
        diverged: sum.diverged + s.grid.diverged,
        failed: sum.failed + s.grid.failed,
        cancelled: sum.cancelled + s.grid.cancelled,
        unfinished: sum.unfinished + s.grid.unfinished,
    });
    combined.finals = scores.iter().map(|s| s.finals).sum();
    combined.missing = if combined.accuracy.is_some() {
        None
    } else {
        let reasons: Vec<MissingReason> = scores.iter().filter_map(|s| s.missing).collect();
        Some(if reasons.contains(&MissingReason::Pending) {
            MissingReason::Pending
        } else if reasons.iter().all(|r| *r == MissingReason::Diverged) {
            MissingReason::Diverged
        } else if reasons.iter().all(|r| *r == MissingReason::Cancelled) {
            MissingReason::Cancelled
        } else {
            MissingReason::Failed
        })
    };
    combined.seeds_scored = scored.len();
    combined.seeds = seeds;
    Some(combined)
}

/// Sample standard deviation (n − 1); None below two values.
fn sample_std(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    Some((values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0)).sqrt())
}

/// The score of one replicate (one seed's cells of a (model, dataset, regime)): its
/// current final's test score, or the marked fallbacks (see the module docs).
pub fn replicate_score(cells: &[&CellRow], scale: ScoreScale, epsilon: f64) -> Option<ReportedScore> {
    let first = cells.first()?;
    let mut grid = GridCounts::default();
    let grid_cells: Vec<&CellRow> = cells.iter().copied().filter(|c| c.stage == Stage::Grid).collect();
    for cell in &grid_cells {
        grid.total += 1;
        match cell.status {
            TaskState::Succeeded if cell.diverged => grid.diverged += 1,
            TaskState::Succeeded => grid.succeeded += 1,
            TaskState::Failed => grid.failed += 1,
            TaskState::Cancelled => grid.cancelled += 1,
            _ => grid.unfinished += 1,
        }
    }
    let finite = |v: Option<f64>| v.filter(|v| v.is_finite()).map(|v| scale.to_fraction(v));
    let mut score = ReportedScore {
        model: first.model.clone(),
        dataset: first.dataset.clone(),
        regime: first.regime,
        metric: cells.iter().map(|c| c.metric).find(|m| *m != Metric::Unspecified).unwrap_or_default(),
        accuracy: None,
        spread: None,
        log_odds: None,
        source: ScoreSource::Missing,
        missing: None,
        diverged: false,
        val_score: None,
        selected: BTreeMap::new(),
        task_id: None,
        grid,
        finals: cells.iter().filter(|c| c.stage == Stage::Final).count(),
        seeds: Vec::new(),
        seeds_scored: 0,
    };
    let take = |score: &mut ReportedScore, cell: &CellRow, source: ScoreSource, selected: &BTreeMap<String, f64>| {
        score.accuracy = finite(cell.test_score);
        score.log_odds = score.accuracy.map(|p| log_odds(p, epsilon));
        score.source = source;
        score.diverged = cell.diverged;
        score.selected = selected.clone();
        score.task_id = Some(cell.task_id.clone());
    };
    let has_test = |c: &CellRow| c.status == TaskState::Succeeded && finite(c.test_score).is_some();

    if first.regime == Regime::Linear {
        let mut done: Vec<&CellRow> = cells.iter().copied().filter(|c| has_test(c)).collect();
        done.sort_by(|a, b| {
            (b.stage == Stage::Final)
                .cmp(&(a.stage == Stage::Final))
                .then(a.diverged.cmp(&b.diverged))
                .then(
                    finite(b.val_score)
                        .unwrap_or(f64::NEG_INFINITY)
                        .total_cmp(&finite(a.val_score).unwrap_or(f64::NEG_INFINITY)),
                )
                .then(a.task_id.cmp(&b.task_id))
        });
        if let Some(cell) = done.first() {
            let selected = if cell.selected.is_empty() { &cell.hparams } else { &cell.selected };
            take(&mut score, cell, ScoreSource::Linear, selected);
            score.val_score = finite(cell.val_score);
        }
    } else {
        let points: Vec<_> = grid_cells.iter().map(|c| c.grid_point()).collect();
        let best = select_best(&points).map(|i| grid_cells[i]);
        let current_final = cells.iter().copied().find(|c| c.stage == Stage::Final && c.is_current_final);
        if let Some(best) = best {
            score.val_score = finite(best.val_score);
            score.selected = best.hparams.clone();
        }
        match (current_final, best) {
            (Some(fin), _) if has_test(fin) => {
                let selected = score.selected.clone();
                let selected = if selected.is_empty() { fin.hparams.clone() } else { selected };
                take(&mut score, fin, ScoreSource::Final, &selected);
            }
            (fin, Some(best)) if has_test(best) => {
                let source = match fin {
                    Some(f) if matches!(f.status, TaskState::Failed | TaskState::Cancelled) => {
                        ScoreSource::BestGridFinalFailed
                    }
                    _ => ScoreSource::BestGridNoFinal,
                };
                let selected = best.hparams.clone();
                take(&mut score, best, source, &selected);
            }
            _ => {}
        }
    }
    if score.accuracy.is_none() {
        score.source = ScoreSource::Missing;
        score.missing = Some(if cells.iter().any(|c| !c.status.is_terminal()) {
            MissingReason::Pending
        } else if cells.iter().any(|c| c.status == TaskState::Succeeded && c.diverged)
            && !cells.iter().any(|c| c.status == TaskState::Succeeded && !c.diverged)
        {
            MissingReason::Diverged
        } else if cells.iter().all(|c| c.status == TaskState::Cancelled) {
            MissingReason::Cancelled
        } else {
            MissingReason::Failed
        });
    }
    score.seeds_scored = usize::from(score.accuracy.is_some());
    score.seeds = vec![SeedScore {
        seed: first.seed,
        selection_group: cells.iter().map(|c| c.selection_group.as_str()).find(|g| !g.is_empty()).unwrap_or("").into(),
        accuracy: score.accuracy,
        val_score: score.val_score,
        source: score.source,
        diverged: score.diverged,
        selected: score.selected.clone(),
        task_id: score.task_id.clone(),
    }];
    Some(score)
}

/// Runs the whole analysis.
pub fn analyze(input: &ReportInput) -> Analysis {
    let settings = &input.settings;
    let eps = settings.log_odds_epsilon;
    let score_scale = ScoreScale::detect(input.cells.iter().flat_map(|c| [c.val_score, c.test_score]).flatten());
    let imagenet_scale = ScoreScale::detect(input.models.iter().filter_map(|m| m.imagenet_top1));
    let mut notes = Vec::new();
    if score_scale == ScoreScale::Percent {
        notes.push("scores above 1 were found: every score is read as a percentage".to_string());
    }

    let mut datasets = input.datasets.clone();
    for cell in &input.cells {
        if !datasets.iter().any(|d| d.name == cell.dataset) {
            datasets.push(DatasetInfo { name: cell.dataset.clone(), metric: cell.metric });
        }
    }
    let mut top1: BTreeMap<&str, f64> = input
        .models
        .iter()
        .filter_map(|m| Some((m.name.as_str(), imagenet_scale.to_fraction(m.imagenet_top1.filter(|v| v.is_finite())?))))
        .collect();
    let typed = top1.len();
    let sources = crate::pretraining::source_scores(&input.cells, score_scale);
    let pretrained: BTreeSet<&str> =
        input.cells.iter().filter(|c| c.stage == Stage::Pretrain).map(|c| c.model.as_str()).collect();
    for (model, score) in &sources.scores {
        top1.entry(model.as_str()).or_insert(*score);
    }
    let x_axis = match (typed > 0, sources.datasets.is_empty()) {
        (_, true) => "ImageNet top-1".to_string(),
        (false, false) => format!("source top-1 ({})", sources.datasets.join(", ")),
        (true, false) => format!("ImageNet or source top-1 ({})", sources.datasets.join(", ")),
    };

    let mut groups: BTreeMap<(Regime, &str, &str), Vec<&CellRow>> = BTreeMap::new();
    for cell in input.cells.iter().filter(|c| c.stage != Stage::Pretrain) {
        groups.entry((cell.regime, cell.model.as_str(), cell.dataset.as_str())).or_default().push(cell);
    }

    let mut regimes = Vec::new();
    for regime in Regime::ALL {
        let scores: Vec<ReportedScore> = groups
            .iter()
            .filter(|((r, _, _), _)| *r == regime)
            .filter_map(|(_, cells)| reported_score(cells, score_scale, eps))
            .collect();
        if scores.is_empty() {
            continue;
        }
        regimes.push(analyze_regime(regime, scores, &datasets, &top1, &pretrained, settings));
    }

    let scratch_vs_finetune = compare_scratch_finetune(&regimes, &datasets, &top1, eps);
    let without_top1: Vec<&str> = input
        .models
        .iter()
        .filter(|m| !top1.contains_key(m.name.as_str()) && !pretrained.contains(m.name.as_str()))
        .map(|m| m.name.as_str())
        .collect();
    if !without_top1.is_empty() {
        notes.push(format!(
            "no ImageNet top-1 in the sweep file for {}: reported, left out of the correlations",
            without_top1.join(", ")
        ));
    }
    let waiting: Vec<&str> = pretrained.iter().copied().filter(|m| !top1.contains_key(m)).collect();
    if !waiting.is_empty() {
        notes.push(format!(
            "no source score yet for {} (its pretrain cell has not succeeded): left out of the correlations",
            waiting.join(", ")
        ));
    }
    let pretraining = crate::pretraining::study(&input.cells, &regimes, score_scale, settings);
    Analysis {
        sweep: input.sweep.clone(),
        score_scale,
        imagenet_scale,
        x_axis,
        pretraining,
        settings: settings.clone(),
        datasets,
        regimes,
        scratch_vs_finetune,
        notes,
    }
}

pub(crate) fn correlation(
    xs: &[f64],
    ys: &[f64],
    settings: &AnalysisSettings,
    seed_offset: u64,
) -> Option<Correlation> {
    if xs.len() < 3 {
        return None;
    }
    let r = pearson(xs, ys)?;
    let percent: Vec<f64> = xs.iter().map(|x| x * 100.0).collect();
    let (intercept, slope) = least_squares(&percent, ys)?;
    Some(Correlation {
        n: xs.len(),
        r,
        interval: bootstrap_pearson(
            xs,
            ys,
            settings.bootstrap_resamples,
            settings.bootstrap_seed.wrapping_add(seed_offset),
            settings.confidence_level,
        ),
        intercept,
        slope,
    })
}

fn analyze_regime(
    regime: Regime,
    scores: Vec<ReportedScore>,
    all_datasets: &[DatasetInfo],
    top1: &BTreeMap<&str, f64>,
    pretrained: &BTreeSet<&str>,
    settings: &AnalysisSettings,
) -> RegimeAnalysis {
    let present: BTreeSet<&str> = scores.iter().map(|s| s.dataset.as_str()).collect();
    let datasets: Vec<String> =
        all_datasets.iter().filter(|d| present.contains(d.name.as_str())).map(|d| d.name.clone()).collect();
    let mut model_names: Vec<String> =
        scores.iter().map(|s| s.model.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    model_names.sort_by(|a, b| {
        let (ta, tb) = (top1.get(a.as_str()), top1.get(b.as_str()));
        match (ta, tb) {
            (Some(x), Some(y)) => y.total_cmp(x).then(a.cmp(b)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.cmp(b),
        }
    });
    let mut notes = Vec::new();
    let models: Vec<ModelSummary> = model_names
        .iter()
        .map(|model| {
            let lo: Vec<f64> = scores.iter().filter(|s| &s.model == model).filter_map(|s| s.log_odds).collect();
            let mean = (!lo.is_empty()).then(|| lo.iter().sum::<f64>() / lo.len() as f64);
            let top = top1.get(model.as_str()).copied();
            let excluded_because = if top.is_none() && pretrained.contains(model.as_str()) {
                Some("no source score yet".to_string())
            } else if top.is_none() {
                Some("no ImageNet top-1".to_string())
            } else if lo.len() < datasets.len() {
                Some(format!("scored on {} of {} datasets", lo.len(), datasets.len()))
            } else {
                None
            };
            ModelSummary {
                model: model.clone(),
                imagenet_top1: top,
                mean_log_odds: mean,
                datasets_scored: lo.len(),
                datasets_total: datasets.len(),
                in_correlation: excluded_because.is_none(),
                excluded_because,
            }
        })
        .collect();
    for m in models.iter().filter(|m| !m.in_correlation) {
        if let Some(why) = &m.excluded_because {
            notes.push(format!("{} left out of the correlation: {why}", m.model));
        }
    }
    let (xs, ys): (Vec<f64>, Vec<f64>) =
        models.iter().filter(|m| m.in_correlation).filter_map(|m| Some((m.imagenet_top1?, m.mean_log_odds?))).unzip();
    let regime_offset = Regime::ALL.iter().position(|r| *r == regime).unwrap_or(0) as u64 * 1000;
    let corr = correlation(&xs, &ys, settings, regime_offset);
    if let Some(c) = corr.as_ref().filter(|c| c.n < SMALL_SAMPLE) {
        notes.push(format!("only {} models in r: its bootstrap interval is rough below {SMALL_SAMPLE}", c.n));
    }
    if corr.is_none() {
        notes.push(format!(
            "no correlation: {} model(s) with a top-1 and every dataset scored (3 needed, with spread)",
            xs.len()
        ));
    }
    let per_dataset = datasets
        .iter()
        .enumerate()
        .map(|(i, dataset)| {
            let (xs, ys): (Vec<f64>, Vec<f64>) = scores
                .iter()
                .filter(|s| &s.dataset == dataset)
                .filter_map(|s| Some((*top1.get(s.model.as_str())?, s.log_odds?)))
                .unzip();
            DatasetCorrelation {
                dataset: dataset.clone(),
                n: xs.len(),
                correlation: correlation(&xs, &ys, settings, regime_offset + 1 + i as u64),
            }
        })
        .collect();
    RegimeAnalysis { regime, datasets, models, scores, correlation: corr, per_dataset, notes }
}

fn compare_scratch_finetune(
    regimes: &[RegimeAnalysis],
    datasets: &[DatasetInfo],
    top1: &BTreeMap<&str, f64>,
    eps: f64,
) -> Vec<ScratchVsFinetune> {
    let find = |regime| regimes.iter().find(|r| r.regime == regime);
    let (Some(finetune), Some(scratch)) = (find(Regime::Finetune), find(Regime::Scratch)) else {
        return Vec::new();
    };
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    datasets
        .iter()
        .filter(|d| finetune.datasets.contains(&d.name) && scratch.datasets.contains(&d.name))
        .map(|d| {
            let pairs: Vec<PairedScores> = finetune
                .models
                .iter()
                .filter_map(|m| {
                    Some(PairedScores {
                        model: m.model.clone(),
                        imagenet_top1: top1.get(m.model.as_str()).copied(),
                        finetune: finetune.score(&m.model, &d.name)?.accuracy?,
                        scratch: scratch.score(&m.model, &d.name)?.accuracy?,
                    })
                })
                .collect();
            let diffs: Vec<f64> = pairs.iter().map(|p| p.finetune - p.scratch).collect();
            let lo_diffs: Vec<f64> =
                pairs.iter().map(|p| log_odds(p.finetune, eps) - log_odds(p.scratch, eps)).collect();
            ScratchVsFinetune {
                dataset: d.name.clone(),
                mean_finetune: mean(&pairs.iter().map(|p| p.finetune).collect::<Vec<_>>()),
                mean_scratch: mean(&pairs.iter().map(|p| p.scratch).collect::<Vec<_>>()),
                mean_difference: mean(&diffs),
                mean_log_odds_difference: mean(&lo_diffs),
                finetune_better: diffs.iter().filter(|d| **d > 0.0).count(),
                pairs,
            }
        })
        .collect()
}
