//! A validated sweep as its axes: every cell can be built from its index in file order
//! without building the others, so a grid of a million cells is written in bounded batches
//! and never held in memory at once. Pretrain cells (few: one per point of a
//! `[[pretrain]]` entry) are kept built and come first, so that a batch never holds a
//! transfer cell before the pretrain cell it waits for has been written.

use std::collections::BTreeMap;
use std::ops::Range;

use sha2::{Digest, Sha256};
use tsweep_proto::cell::{CellSpec, DatasetSpec, FakeSettings, ModelSpec, Precision, Regime, Stage, TrainSettings};

use super::{regime_has_final, task_id, Cell, ExpandedSweep, StageCount, SweepSettings};

/// A regime's grid point axes (finetune / scratch: lr × weight decay; linear: one point).
#[derive(Debug, Clone)]
pub(super) struct Points {
    /// Finetune / scratch axes (empty for linear).
    pub lrs: Vec<f64>,
    pub weight_decays: Vec<f64>,
    /// Linear: the L2 path of its single task.
    pub l2_path: Vec<f64>,
}

impl Points {
    pub fn count(&self) -> usize {
        if self.lrs.is_empty() {
            1
        } else {
            self.lrs.len() * self.weight_decays.len()
        }
    }

    /// The hparams of point `index` (lr-major; linear: the one empty map).
    pub fn get(&self, index: usize) -> BTreeMap<String, f64> {
        if self.lrs.is_empty() {
            return BTreeMap::new();
        }
        let width = self.weight_decays.len().max(1);
        let lr = self.lrs[(index / width).min(self.lrs.len() - 1)];
        let wd = self.weight_decays.get(index % width).copied().unwrap_or(0.0);
        BTreeMap::from([("lr".to_string(), lr), ("weight_decay".to_string(), wd)])
    }
}

/// A model of a regime's grid and the precision its cells train in (the model's own, or
/// the regime's, or `[defaults]`); `after`: the pretrain cell its cells wait for (a
/// pretrained model in the linear and finetune regimes).
#[derive(Debug, Clone)]
pub(super) struct GridModel {
    pub spec: ModelSpec,
    pub precision: Precision,
    pub after: Option<String>,
}

/// One regime's cells: models × datasets × seeds × points, in that order.
#[derive(Debug, Clone)]
pub(super) struct RegimeGrid {
    pub regime: Regime,
    pub models: Vec<GridModel>,
    pub datasets: Vec<DatasetSpec>,
    pub points: Points,
    pub train: TrainSettings,
    pub gpus: u32,
    pub fake: Option<FakeSettings>,
}

impl RegimeGrid {
    fn count(&self, seeds: usize) -> u64 {
        self.count_of(self.models.len(), seeds)
    }

    /// Cells of `models` of this grid's models.
    fn count_of(&self, models: usize, seeds: usize) -> u64 {
        [models, self.datasets.len(), seeds, self.points.count()]
            .iter()
            .fold(1u64, |acc, n| acc.saturating_mul(*n as u64))
    }

    /// Of this grid's models, those whose cells wait for a pretrain cell.
    fn waiting_models(&self) -> usize {
        self.models.iter().filter(|m| m.after.is_some()).count()
    }
}

/// A parsed and validated sweep file whose cells are built on demand
/// (`sweepfile::parse_plan`).
#[derive(Debug, Clone)]
pub struct SweepPlan {
    pub name: String,
    pub settings: SweepSettings,
    pub(super) seeds: Vec<u64>,
    /// The pretrain cells, in file order (first in the sweep's cell order).
    pub(super) pretrains: Vec<Cell>,
    pub(super) grids: Vec<RegimeGrid>,
    /// sha256 of what the cells are made from (file text and base directory).
    pub(super) fingerprint: String,
}

impl SweepPlan {
    /// Pretrain and grid cells in the file (finals come later, from the coordinator).
    pub fn total(&self) -> u64 {
        self.grids.iter().map(|g| g.count(self.seeds.len())).fold(self.pretrains.len() as u64, u64::saturating_add)
    }

    /// The cell at `index` in file order: the pretrain cells, then the grid cells (regime,
    /// model, dataset, seed, lr, weight decay).
    pub fn cell(&self, index: u64) -> Option<Cell> {
        if let Some(cell) = usize::try_from(index).ok().and_then(|i| self.pretrains.get(i)) {
            return Some(cell.clone());
        }
        let mut rest = index - self.pretrains.len() as u64;
        for grid in &self.grids {
            let count = grid.count(self.seeds.len());
            if rest >= count {
                rest -= count;
                continue;
            }
            let points = grid.points.count() as u64;
            let seeds = self.seeds.len() as u64;
            let datasets = grid.datasets.len() as u64;
            let point = (rest % points) as usize;
            rest /= points;
            let seed = self.seeds[(rest % seeds) as usize];
            rest /= seeds;
            let dataset = &grid.datasets[(rest % datasets) as usize];
            let model = &grid.models[(rest / datasets) as usize];
            let spec = self.spec(grid, model, dataset, seed, grid.points.get(point));
            return Some(Cell { id: task_id(&spec), spec, after: model.after.clone() });
        }
        None
    }

    /// The cells of `range` (clamped to the grid), built one at a time.
    pub fn cells(&self, range: Range<u64>) -> impl Iterator<Item = Cell> + '_ {
        (range.start..range.end.min(self.total())).filter_map(|index| self.cell(index))
    }

    pub(super) fn spec(
        &self,
        grid: &RegimeGrid,
        model: &GridModel,
        dataset: &DatasetSpec,
        seed: u64,
        hparams: BTreeMap<String, f64>,
    ) -> CellSpec {
        CellSpec {
            sweep: self.name.clone(),
            stage: Stage::Grid,
            regime: grid.regime,
            model: model.spec.clone(),
            dataset: dataset.clone(),
            hparams,
            train: grid.train.clone(),
            seed,
            precision: model.precision,
            gpus: grid.gpus,
            max_attempts: self.settings.max_attempts,
            fake: grid.fake.clone(),
        }
    }

    /// The pretrain cells (under the scratch regime), grid cells per regime, then the
    /// finals that will follow them (one per (model, dataset, seed) of finetune and
    /// scratch), computed from the axes, each with how many wait for a pretrain cell.
    pub fn stage_counts(&self) -> Vec<StageCount> {
        let mut counts = Vec::new();
        if !self.pretrains.is_empty() {
            counts.push(StageCount {
                regime: Regime::Scratch,
                stage: Stage::Pretrain,
                cells: self.pretrains.len() as u64,
                after_pretrain: 0,
            });
        }
        let seeds = self.seeds.len();
        for regime in Regime::ALL {
            let grids: Vec<&RegimeGrid> = self.grids.iter().filter(|g| g.regime == regime).collect();
            let cells: u64 = grids.iter().map(|g| g.count(seeds)).sum();
            if cells == 0 {
                continue;
            }
            let waiting = grids.iter().map(|g| g.count_of(g.waiting_models(), seeds)).sum();
            counts.push(StageCount { regime, stage: Stage::Grid, cells, after_pretrain: waiting });
            if regime_has_final(regime) {
                let groups = |models: usize, g: &RegimeGrid| (models * g.datasets.len() * seeds) as u64;
                let finals = grids.iter().map(|g| groups(g.models.len(), g)).sum();
                let waiting = grids.iter().map(|g| groups(g.waiting_models(), g)).sum();
                counts.push(StageCount { regime, stage: Stage::Final, cells: finals, after_pretrain: waiting });
            }
        }
        counts
    }

    /// Every cell, in memory (small sweeps, tests, `tsweep local`).
    pub fn expand(&self) -> ExpandedSweep {
        ExpandedSweep {
            name: self.name.clone(),
            settings: self.settings.clone(),
            cells: self.cells(0..self.total()).collect(),
        }
    }
}

/// What the store's batched submission reads: a sweep's name, settings and cells by index
/// range. Implemented by [`SweepPlan`] (cells built on demand) and [`ExpandedSweep`].
pub trait SweepCells: Sync {
    fn name(&self) -> &str;
    fn settings(&self) -> &SweepSettings;
    /// Pretrain and grid cells in file order.
    fn total(&self) -> u64;
    /// The cells of `range`, in file order.
    fn batch(&self, range: Range<u64>) -> Vec<Cell>;
    fn stage_counts(&self) -> Vec<StageCount>;
    /// Identifies what the cells are made from: an interrupted submission is resumed only
    /// by a submission with the same fingerprint.
    fn fingerprint(&self) -> String;
}

impl SweepCells for SweepPlan {
    fn name(&self) -> &str {
        &self.name
    }
    fn settings(&self) -> &SweepSettings {
        &self.settings
    }
    fn total(&self) -> u64 {
        SweepPlan::total(self)
    }
    fn batch(&self, range: Range<u64>) -> Vec<Cell> {
        self.cells(range).collect()
    }
    fn stage_counts(&self) -> Vec<StageCount> {
        SweepPlan::stage_counts(self)
    }
    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
}

impl SweepCells for ExpandedSweep {
    fn name(&self) -> &str {
        &self.name
    }
    fn settings(&self) -> &SweepSettings {
        &self.settings
    }
    fn total(&self) -> u64 {
        self.cells.len() as u64
    }
    fn batch(&self, range: Range<u64>) -> Vec<Cell> {
        let end = (range.end as usize).min(self.cells.len());
        let start = (range.start as usize).min(end);
        self.cells[start..end].to_vec()
    }
    fn stage_counts(&self) -> Vec<StageCount> {
        ExpandedSweep::stage_counts(self)
    }
    fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        for cell in &self.cells {
            hash.update(cell.id.as_bytes());
            hash.update(cell.spec.to_json().unwrap_or_default().as_bytes());
        }
        hex::encode(hash.finalize())
    }
}

/// sha256 of a sweep file's text and the directory its paths resolve against.
pub(super) fn file_fingerprint(text: &str, base_dir: &std::path::Path) -> String {
    let mut hash = Sha256::new();
    hash.update(text.as_bytes());
    hash.update([0]);
    hash.update(base_dir.to_string_lossy().as_bytes());
    hex::encode(hash.finalize())
}
