//! Sweep files: parsing (TOML, unknown keys rejected, errors with file:line:column and
//! the field), axes, grid expansion into cells with deterministic ids.
//! OWNER: sweep-file helper. `parse_and_expand` and `task_id` are the contract with the
//! store/server. The schema is documented in docs/ARCHITECTURE.md ("Sweep files and the
//! CLI") and by `examples/*.toml`.

mod axis;
mod expand;
mod identity;
mod location;
mod plan;
mod schema;

use std::path::Path;

use tsweep_proto::cell::{CellSpec, Regime, Stage};

pub use axis::{Axis, AxisError};
pub use expand::{IMAGE_SIZE_RANGE, MAX_BATCH_SIZE, MAX_GPUS, MAX_LBFGS_ITER, MAX_LOADER_THREADS, MAX_STEPS};
pub use identity::identity_json;
pub use location::Location;
pub use plan::{SweepCells, SweepPlan};

/// Grids larger than this are refused unless the caller passes `allow_huge`.
pub const MAX_CELLS: u64 = 1_000_000;
/// Grids larger than this are refused even with `allow_huge` (they would not fit in memory).
pub const HARD_MAX_CELLS: u64 = 50_000_000;

/// Sweep-wide settings that are not part of any one cell.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepSettings {
    /// Attempts that may fail with a retryable error before a cell fails for good.
    pub max_attempts: u32,
}

/// One cell with its deterministic id ([`task_id`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub id: String,
    pub spec: CellSpec,
    /// The pretrain cell this one waits for (a transfer cell of a pretrained model): it is
    /// held, not leasable, until that cell succeeds, and fails with it.
    pub after: Option<String>,
}

/// Cells of one (regime, stage). Final counts of a file are projections: one refit per
/// (model, dataset, seed) of the finetune and scratch regimes, scheduled by the
/// coordinator once that group's grid points have ended. Pretrain cells are counted
/// under the scratch regime (they train from scratch) with stage `pretrain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageCount {
    pub regime: Regime,
    pub stage: Stage,
    pub cells: u64,
    /// Of these, the cells that wait for their pretrain cell to succeed.
    pub after_pretrain: u64,
}

#[derive(Debug, Clone)]
pub struct ExpandedSweep {
    pub name: String,
    pub settings: SweepSettings,
    /// Pretrain cells first (file order), then grid cells in file order (regime, model,
    /// dataset, seed, lr, weight decay).
    pub cells: Vec<Cell>,
}

impl ExpandedSweep {
    /// Pretrain cells, then grid cells per regime and the finals that will follow them, in
    /// regime order. Regimes without cells are left out.
    pub fn stage_counts(&self) -> Vec<StageCount> {
        let mut counts = Vec::new();
        let pretrain = self.cells.iter().filter(|c| c.spec.stage == Stage::Pretrain).count() as u64;
        if pretrain > 0 {
            counts.push(StageCount {
                regime: Regime::Scratch,
                stage: Stage::Pretrain,
                cells: pretrain,
                after_pretrain: 0,
            });
        }
        for regime in Regime::ALL {
            let cells: Vec<&Cell> =
                self.cells.iter().filter(|c| c.spec.regime == regime && c.spec.stage == Stage::Grid).collect();
            if cells.is_empty() {
                continue;
            }
            let waiting = cells.iter().filter(|c| c.after.is_some()).count() as u64;
            counts.push(StageCount { regime, stage: Stage::Grid, cells: cells.len() as u64, after_pretrain: waiting });
            if regime_has_final(regime) {
                let mut groups: Vec<(&str, &str, u64, bool)> = cells
                    .iter()
                    .map(|c| (c.spec.model.name.as_str(), c.spec.dataset.name.as_str(), c.spec.seed, c.after.is_some()))
                    .collect();
                groups.sort_unstable();
                groups.dedup();
                let waiting = groups.iter().filter(|g| g.3).count() as u64;
                counts.push(StageCount {
                    regime,
                    stage: Stage::Final,
                    cells: groups.len() as u64,
                    after_pretrain: waiting,
                });
            }
        }
        counts
    }
}

/// Whether the coordinator schedules a `final` refit after a regime's grid points. The
/// linear regime selects its L2 strength, refits on train+val and scores test inside its
/// one task per (model, dataset), so it has none.
pub fn regime_has_final(regime: Regime) -> bool {
    !matches!(regime, Regime::Linear)
}

/// The refit of a selected grid point: the same cell as stage `final` (trained on
/// train+val, scored on test), with its own deterministic id.
pub fn final_cell(winner: &CellSpec) -> Cell {
    let mut spec = winner.clone();
    spec.stage = Stage::Final;
    Cell { id: task_id(&spec), spec, after: None }
}

/// Why a sweep file was refused. Every message is one line that names the file and,
/// where there is one, the line, column and field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SweepFileError {
    /// Not valid TOML, a key the schema does not know, a wrong type, or a value out of range.
    #[error("{location}: {}{message}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Invalid { location: Location, field: Option<String>, message: String },
    /// The file expands to no cell at all.
    #[error("{file}: the grid is empty: {reason}")]
    EmptyGrid { file: String, reason: String },
    /// More cells than [`MAX_CELLS`] without `allow_huge` (or than [`HARD_MAX_CELLS`]).
    #[error("{file}: the grid has {cells} cells, more than the limit of {limit}{}", if *limit == MAX_CELLS { "; pass --allow-huge to submit it anyway" } else { "" })]
    TooLarge { file: String, cells: u64, limit: u64 },
}

/// Parses and validates a sweep file without building its cells: the plan builds any cell
/// from its index (bounded memory whatever the grid size). `base_dir` resolves relative
/// paths.
pub fn parse_plan(text: &str, file_name: &str, base_dir: &Path, allow_huge: bool) -> Result<SweepPlan, SweepFileError> {
    expand::parse_plan(text, file_name, base_dir, allow_huge)
}

/// Parses a sweep file and expands its whole grid in memory ([`parse_plan`], then
/// [`SweepPlan::expand`]).
pub fn parse_and_expand(
    text: &str,
    file_name: &str,
    base_dir: &Path,
    allow_huge: bool,
) -> Result<ExpandedSweep, SweepFileError> {
    parse_plan(text, file_name, base_dir, allow_huge).map(|plan| plan.expand())
}

/// The cell's identity: hash of (sweep, stage, model, dataset, regime, hparams, seed).
/// A pretrain cell's hparams hold every axis of its entry; a pretrained model's name
/// holds its setting, so its transfer cells are told apart by model as any other.
pub fn task_id(spec: &CellSpec) -> String {
    identity::task_id(spec)
}

#[cfg(test)]
mod tests;
