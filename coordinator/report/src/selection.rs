//! The selection rule: which grid point of a (model, dataset, regime) wins.
//! The signature is the contract with the coordinator's store, which calls it when every
//! grid point of a group has ended and schedules the final (refit on train+val) with the
//! winner's hyperparameters; the report calls it to say which final is current.

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

impl GridPoint {
    /// Whether it may win: not diverged and a finite validation score.
    pub fn is_eligible(&self) -> bool {
        !self.diverged && self.val_score.is_some_and(f64::is_finite)
    }
}

/// Index of the best point by validation score (higher is better); diverged and failed
/// points (and NaN or infinite scores) never win; exact ties go to the smallest task id,
/// so the choice does not depend on the order of `points`. None when no point is eligible.
pub fn select_best(points: &[GridPoint]) -> Option<usize> {
    points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.is_eligible())
        .max_by(|(_, a), (_, b)| {
            let (sa, sb) = (a.val_score.unwrap_or(f64::NEG_INFINITY), b.val_score.unwrap_or(f64::NEG_INFINITY));
            sa.total_cmp(&sb).then_with(|| b.task_id.cmp(&a.task_id))
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(id: &str, val: Option<f64>, diverged: bool) -> GridPoint {
        GridPoint {
            task_id: id.to_string(),
            hparams: BTreeMap::from([("lr".to_string(), 0.1)]),
            val_score: val,
            diverged,
        }
    }

    #[test]
    fn highest_validation_score_wins() {
        let points = [point("a", Some(0.7), false), point("b", Some(0.9), false), point("c", Some(0.8), false)];
        assert_eq!(select_best(&points), Some(1));
    }

    #[test]
    fn ties_go_to_the_smallest_task_id_whatever_the_order() {
        let points = [point("c", Some(0.9), false), point("a", Some(0.9), false), point("b", Some(0.9), false)];
        assert_eq!(select_best(&points), Some(1));
        let mut reversed = points.to_vec();
        reversed.reverse();
        assert_eq!(reversed[select_best(&reversed).unwrap_or(99)].task_id, "a");
    }

    #[test]
    fn diverged_points_never_win_even_with_a_higher_score() {
        let points = [point("a", Some(0.99), true), point("b", Some(0.5), false)];
        assert_eq!(select_best(&points), Some(1));
    }

    #[test]
    fn failed_and_non_finite_points_never_win() {
        let points = [
            point("a", None, false),
            point("b", Some(f64::NAN), false),
            point("c", Some(f64::INFINITY), false),
            point("d", Some(0.1), false),
        ];
        assert_eq!(select_best(&points), Some(3));
    }

    #[test]
    fn nothing_eligible_gives_none() {
        assert_eq!(select_best(&[]), None);
        assert_eq!(select_best(&[point("a", None, false), point("b", Some(0.9), true)]), None);
    }

    #[test]
    fn negative_scores_are_compared_too() {
        let points = [point("a", Some(-3.0), false), point("b", Some(-1.0), false)];
        assert_eq!(select_best(&points), Some(1));
    }
}
