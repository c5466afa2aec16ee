//! Applying a validation policy: which records make up Train, Val, TrainVal and Test.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tsweep_proto::cell::ValPolicy;

use crate::error::{DataError, Result};
use crate::index::{DatasetIndex, Origin, Split};

/// Indices (ascending) of the records in `split` under `policy`.
///
/// `Official` uses the distribution's own val split (an error when it has none).
/// `HeldOut { fraction, seed }` pools the distribution's train and val, and holds out
/// `round(fraction * n_c)` images of every class `c` (at least one when the class has two
/// or more), chosen by a seeded shuffle: the same seed always gives the same split.
pub fn select(origins: &[Origin], strata: &[u32], policy: &ValPolicy, split: Split) -> Result<Vec<usize>> {
    if origins.len() != strata.len() {
        return Err(DataError::Invalid("origins and strata differ in length".into()));
    }
    let by_origin = |o: Origin| -> Vec<usize> { (0..origins.len()).filter(|&i| origins[i] == o).collect() };
    match policy {
        ValPolicy::Official => {
            let train = by_origin(Origin::Train);
            let val = by_origin(Origin::Val);
            let test = by_origin(Origin::Test);
            if val.is_empty() && matches!(split, Split::Val) {
                return Err(DataError::Invalid(
                    "val policy is official but the dataset has no val split (use held_out)".into(),
                ));
            }
            Ok(match split {
                Split::Train => train,
                Split::Val => val,
                Split::TrainVal => {
                    let mut all = train;
                    all.extend(val);
                    all.sort_unstable();
                    all
                }
                Split::Test => test,
            })
        }
        ValPolicy::HeldOut { fraction, seed } => {
            if !(0.0..1.0).contains(fraction) {
                return Err(DataError::Invalid(format!("held-out fraction {fraction} is not in [0, 1)")));
            }
            if matches!(split, Split::Test) {
                return Ok(by_origin(Origin::Test));
            }
            let pool: Vec<usize> = (0..origins.len()).filter(|&i| origins[i] != Origin::Test).collect();
            if matches!(split, Split::TrainVal) {
                return Ok(pool);
            }
            let held = held_out(&pool, strata, *fraction, *seed);
            let mut is_val = vec![false; origins.len()];
            for i in held {
                is_val[i] = true;
            }
            let want_val = matches!(split, Split::Val);
            Ok(pool.into_iter().filter(|&i| is_val[i] == want_val).collect())
        }
    }
}

/// `round(fraction * n_c)` members of every class `c` of `pool` (at least one when the
/// class has two or more, never all of them), chosen by a seeded shuffle per class.
pub(crate) fn held_out(pool: &[usize], strata: &[u32], fraction: f64, seed: u64) -> Vec<usize> {
    let mut per_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for &i in pool {
        per_class.entry(strata[i]).or_default().push(i);
    }
    let mut held = Vec::new();
    for (class, mut members) in per_class {
        let n = members.len();
        let mut k = (fraction * n as f64).round() as usize;
        if k == 0 && fraction > 0.0 && n >= 2 {
            k = 1;
        }
        k = k.min(n.saturating_sub(1));
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (u64::from(class).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        members.shuffle(&mut rng);
        held.extend_from_slice(&members[..k]);
    }
    held
}

/// At most `max` members of every class of `pool`, chosen by a seeded shuffle per class;
/// ascending.
fn at_most_per_class(pool: &[usize], strata: &[u32], max: usize, seed: u64) -> Vec<usize> {
    let mut per_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for &i in pool {
        per_class.entry(strata[i]).or_default().push(i);
    }
    let mut kept = Vec::new();
    for (class, mut members) in per_class {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (u64::from(class).wrapping_mul(0x2545_F491_4F6C_DD1D)));
        members.shuffle(&mut rng);
        members.truncate(max);
        kept.extend(members);
    }
    kept.sort_unstable();
    kept
}

/// Per-class caps of a subsampled prepare: the distribution's train (+ val) and test
/// images are sampled separately, so the split structure is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subsample {
    /// At most this many train + val images per class (None: all).
    pub trainval_per_class: Option<usize>,
    /// At most this many test images per class (None: all).
    pub test_per_class: Option<usize>,
}

impl Subsample {
    /// Keeps, per class, at most the caps of train + val and of test records (seeded).
    pub fn apply(&self, index: &mut DatasetIndex, seed: u64) {
        let strata: Vec<u32> = index.records.iter().map(|r| r.label.stratum()).collect();
        let mut keep = vec![false; index.records.len()];
        for (is_test, cap) in [(false, self.trainval_per_class), (true, self.test_per_class)] {
            let pool: Vec<usize> =
                (0..index.records.len()).filter(|&i| (index.records[i].origin == Origin::Test) == is_test).collect();
            let kept = match cap {
                Some(max) => at_most_per_class(&pool, &strata, max, seed ^ u64::from(is_test)),
                None => pool,
            };
            for i in kept {
                keep[i] = true;
            }
        }
        let mut flags = keep.into_iter();
        index.records.retain(|_| flags.next().unwrap_or(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_is_stratified_deterministic_and_disjoint() {
        let origins: Vec<Origin> = (0..110).map(|i| if i < 100 { Origin::Train } else { Origin::Test }).collect();
        let strata: Vec<u32> = (0..110).map(|i| (i % 5) as u32).collect();
        let policy = ValPolicy::HeldOut { fraction: 0.2, seed: 7 };
        let train = select(&origins, &strata, &policy, Split::Train).unwrap();
        let val = select(&origins, &strata, &policy, Split::Val).unwrap();
        assert_eq!(val.len(), 20);
        assert_eq!(train.len(), 80);
        for c in 0..5 {
            assert_eq!(val.iter().filter(|&&i| strata[i] == c).count(), 4);
        }
        assert!(val.iter().all(|i| !train.contains(i)));
        assert_eq!(val, select(&origins, &strata, &policy, Split::Val).unwrap());
        let other = select(&origins, &strata, &ValPolicy::HeldOut { fraction: 0.2, seed: 8 }, Split::Val).unwrap();
        assert_ne!(val, other);
        assert_eq!(select(&origins, &strata, &policy, Split::Test).unwrap().len(), 10);
        assert_eq!(select(&origins, &strata, &policy, Split::TrainVal).unwrap().len(), 100);
    }

    #[test]
    fn official_without_val_is_an_error() {
        let origins = vec![Origin::Train, Origin::Test];
        assert!(select(&origins, &[0, 0], &ValPolicy::Official, Split::Val).is_err());
    }
}
