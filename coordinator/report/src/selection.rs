//! The selection rule: which grid point of a (model, dataset, regime) wins.
//! OWNER: report helper. The signature is the contract with the coordinator's store.

use std::collections::BTreeMap;

/// One ended grid point of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct GridPoint {
    pub task_id: String,
    pub hparams: BTreeMap<String, f64>,
    /// None when the point failed for good or has no validation score.
    pub val_score: Option<f64>,
    pub diverged: bool,
}

/// Index of the best point by validation score (higher is better); diverged and failed
/// points never win; ties go to the smallest task id. None when no point is eligible.
pub fn select_best(points: &[GridPoint]) -> Option<usize> {
    points
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.diverged && p.val_score.is_some_and(f64::is_finite))
        .max_by(|(_, a), (_, b)| {
            let (sa, sb) = (a.val_score.unwrap_or(f64::NEG_INFINITY), b.val_score.unwrap_or(f64::NEG_INFINITY));
            sa.total_cmp(&sb).then_with(|| b.task_id.cmp(&a.task_id))
        })
        .map(|(i, _)| i)
}
