//! The analysis fed known numbers: log-odds, Pearson r, bootstrap intervals, the
//! reported-score rules, scale handling, exclusions and the scratch/fine-tune comparison.

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tsweep_proto::cell::{Regime, Stage};
use tsweep_proto::v1::TaskState;
use tsweep_report::analysis::{
    analyze, bootstrap_pearson, least_squares, log_odds, pearson, quantile_sorted, reported_score, MissingReason,
    ScoreScale, ScoreSource,
};
use tsweep_report::{CellRow, ModelInfo, ReportInput};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn log_odds_transform_values() {
    assert_eq!(log_odds(0.5, 1e-4), 0.0);
    assert!(close(log_odds(0.75, 1e-4), 3f64.ln(), 1e-12));
    assert!(close(log_odds(0.9, 1e-4), 9f64.ln(), 1e-12));
    for p in [0.01, 0.2, 0.6, 0.97] {
        assert!(close(log_odds(1.0 - p, 1e-4), -log_odds(p, 1e-4), 1e-12), "symmetry at {p}");
    }
    // Clamped at epsilon: perfect and zero accuracy stay finite.
    assert!(close(log_odds(1.0, 1e-4), 9999f64.ln(), 1e-9));
    assert!(close(log_odds(0.0, 1e-4), -(9999f64.ln()), 1e-9));
    assert!(close(log_odds(1.0, 1e-3), 999f64.ln(), 1e-9));
    assert!(log_odds(f64::NAN, 1e-4).is_nan());
}

#[test]
fn pearson_known_values() {
    let x = [1.0, 2.0, 3.0, 4.0, 5.0];
    assert!(close(pearson(&x, &[2.0, 4.0, 5.0, 4.0, 5.0]).unwrap_or(f64::NAN), 0.6f64.sqrt(), 1e-12));
    assert!(close(pearson(&x, &[3.0, 5.0, 7.0, 9.0, 11.0]).unwrap_or(f64::NAN), 1.0, 1e-12));
    assert!(close(pearson(&x, &[5.0, 4.0, 3.0, 2.0, 1.0]).unwrap_or(f64::NAN), -1.0, 1e-12));
    assert_eq!(pearson(&x, &[1.0; 5]), None, "no variance in y");
    assert_eq!(pearson(&[1.0], &[1.0]), None);
    assert_eq!(pearson(&x, &[1.0, 2.0]), None, "lengths differ");
    assert_eq!(pearson(&[1.0, f64::NAN, 3.0], &[1.0, 2.0, 3.0]), None);
    assert_eq!(least_squares(&x, &[3.0, 5.0, 7.0, 9.0, 11.0]), Some((1.0, 2.0)));
}

#[test]
fn quantiles_interpolate_between_order_statistics() {
    let v = [1.0, 2.0, 3.0, 4.0, 5.0];
    assert_eq!(quantile_sorted(&v, 0.0), Some(1.0));
    assert_eq!(quantile_sorted(&v, 0.5), Some(3.0));
    assert_eq!(quantile_sorted(&v, 0.125), Some(1.5));
    assert_eq!(quantile_sorted(&v, 1.0), Some(5.0));
    assert_eq!(quantile_sorted(&[], 0.5), None);
}

/// Unit vectors of `TOP1` centred, and of a fixed vector orthogonal to it and to 1.
fn orthonormal_pair() -> (Vec<f64>, Vec<f64>) {
    let n = TOP1.len() as f64;
    let mx = TOP1.iter().sum::<f64>() / n;
    let xc: Vec<f64> = TOP1.iter().map(|x| x - mx).collect();
    let z: Vec<f64> = (0..TOP1.len()).map(|i| (i as f64 * 1.7).sin()).collect();
    let mz = z.iter().sum::<f64>() / n;
    let zc: Vec<f64> = z.iter().map(|v| v - mz).collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
    let k = dot(&zc, &xc) / dot(&xc, &xc);
    let zo: Vec<f64> = zc.iter().zip(&xc).map(|(z, x)| z - k * x).collect();
    let (nx, nz) = (dot(&xc, &xc).sqrt(), dot(&zo, &zo).sqrt());
    (xc.iter().map(|v| v / nx).collect(), zo.iter().map(|v| v / nz).collect())
}

#[test]
fn transfer_accuracy_linear_in_imagenet_log_odds_gives_r_one() {
    let names = model_names();
    let models: Vec<(&str, Option<f64>)> = names.iter().zip(TOP1).map(|(n, t)| (n.as_str(), Some(t))).collect();
    let datasets = ["d0", "d1", "d2"];
    // logit(acc) = a_d + b_d * (top1 - 76): the mean over datasets is linear in top-1.
    let input = linear_input(&models, &datasets, |m, d| {
        sigmoid(0.5 * d as f64 - 0.3 + (0.05 + 0.02 * d as f64) * (TOP1[m] - 76.0))
    });
    let analysis = analyze(&input);
    let regime = analysis.regime(Regime::Linear).expect("linear regime analysed");
    let c = regime.correlation.as_ref().expect("r computed");
    assert_eq!(c.n, 16);
    assert!(close(c.r, 1.0, 1e-9), "r = {}", c.r);
    // The fit recovers the mean slope and intercept (top-1 in percent).
    assert!(close(c.slope, 0.07, 1e-9), "slope {}", c.slope);
    assert!(close(c.intercept + c.slope * 76.0, 0.2, 1e-9));
    let i = c.interval.expect("bootstrap interval");
    assert!(close(i.low, 1.0, 1e-9) && close(i.high, 1.0, 1e-9));
    for dc in &regime.per_dataset {
        assert!(close(dc.correlation.as_ref().map_or(0.0, |c| c.r), 1.0, 1e-9), "{}", dc.dataset);
    }
    // A model that does worse on ImageNet ranks below on transfer: r = -1 when reversed.
    let reversed = linear_input(&models, &datasets, |m, _| sigmoid(-(TOP1[m] - 76.0) * 0.1));
    let r = analyze(&reversed).regimes[0].correlation.as_ref().map(|c| c.r);
    assert!(close(r.unwrap_or(0.0), -1.0, 1e-9));
}

#[test]
fn known_correlation_is_recovered_exactly() {
    let (xh, zh) = orthonormal_pair();
    let names = model_names();
    let models: Vec<(&str, Option<f64>)> = names.iter().zip(TOP1).map(|(n, t)| (n.as_str(), Some(t))).collect();
    for target in [0.8_f64, 0.3, -0.5] {
        let (c, s) = (target, (1.0 - target * target).sqrt());
        // Mean log-odds = 1 + 0.6 (c x + s z): r with ImageNet top-1 is exactly c; dataset
        // offsets that cancel in the mean leave it unchanged.
        let input = linear_input(&models, &["a", "b"], |m, d| {
            sigmoid(1.0 + 0.6 * (c * xh[m] + s * zh[m]) + if d == 0 { 0.4 } else { -0.4 })
        });
        let analysis = analyze(&input);
        let corr = analysis.regimes[0].correlation.clone().expect("r");
        assert!(close(corr.r, target, 1e-9), "r = {} want {target}", corr.r);
        let i = corr.interval.expect("interval");
        assert!(i.low <= corr.r && corr.r <= i.high, "{i:?}");
    }
}

fn bivariate_normal(rng: &mut ChaCha8Rng, n: usize, rho: f64) -> (Vec<f64>, Vec<f64>) {
    let mut normal = || {
        let (u1, u2): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    };
    let mut xs = Vec::with_capacity(n);
    let mut ys = Vec::with_capacity(n);
    for _ in 0..n {
        let (a, b) = (normal(), normal());
        xs.push(a);
        ys.push(rho * a + (1.0 - rho * rho).sqrt() * b);
    }
    (xs, ys)
}

#[test]
fn bootstrap_interval_covers_the_true_r_on_a_known_case() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (xs, ys) = bivariate_normal(&mut rng, 200, 0.6);
    let i = bootstrap_pearson(&xs, &ys, 10_000, 5, 0.95).expect("interval");
    assert!(i.low < 0.6 && 0.6 < i.high, "{i:?}");
    assert!(i.high - i.low < 0.3, "200 pairs give a narrow interval: {i:?}");
    assert_eq!(i.valid_resamples, 10_000);
    // Seeded: the same input and seed give the same interval.
    assert_eq!(bootstrap_pearson(&xs, &ys, 10_000, 5, 0.95), Some(i));
}

#[test]
fn bootstrap_interval_coverage_is_near_nominal() {
    // 200 samples of 40 pairs with rho = 0.5; a 95% interval should cover rho in roughly
    // 95% of them (the percentile bootstrap runs a little under at small n).
    let mut rng = ChaCha8Rng::seed_from_u64(2019);
    let trials = 200;
    let mut covered = 0;
    for t in 0..trials {
        let (xs, ys) = bivariate_normal(&mut rng, 40, 0.5);
        if let Some(i) = bootstrap_pearson(&xs, &ys, 1000, t, 0.95) {
            if i.low <= 0.5 && 0.5 <= i.high {
                covered += 1;
            }
        }
    }
    let coverage = covered as f64 / trials as f64;
    assert!((0.87..=0.99).contains(&coverage), "coverage {coverage}");
}

#[test]
fn bootstrap_needs_three_pairs() {
    assert_eq!(bootstrap_pearson(&[1.0, 2.0], &[1.0, 2.0], 100, 1, 0.95), None);
}

#[test]
fn final_score_is_reported_and_grid_best_is_the_fallback() {
    let (m, d, r) = ("net", "cars", Regime::Finetune);
    let mut cells = vec![
        grid("g1", m, d, r, hp(0.1, 0.0), 0.70, 0.69),
        grid("g2", m, d, r, hp(0.01, 0.0), 0.80, 0.78),
        grid("g3", m, d, r, hp(0.001, 0.0), 0.99, 0.10),
    ];
    cells[2].diverged = true;
    let mut fin = cell("f1", m, d, r, Stage::Final);
    fin.hparams = hp(0.01, 0.0);
    fin.test_score = Some(0.81);
    fin.is_current_final = true;

    // The current final's test score, with the winning grid point's hparams and val.
    let mut with_final = cells.clone();
    with_final.push(fin.clone());
    let refs: Vec<_> = with_final.iter().collect();
    let s = reported_score(&refs, ScoreScale::Fraction, 1e-4).expect("score");
    assert_eq!(s.source, ScoreSource::Final);
    assert_eq!(s.accuracy, Some(0.81));
    assert!(close(s.log_odds.unwrap_or(0.0), log_odds(0.81, 1e-4), 1e-12));
    assert_eq!(s.selected, hp(0.01, 0.0));
    assert_eq!(s.val_score, Some(0.80));
    assert_eq!((s.grid.total, s.grid.succeeded, s.grid.diverged), (3, 2, 1));
    assert_eq!(s.mark(), "");

    // No final yet (pending): the best grid point's test score, marked.
    let mut pending = with_final.clone();
    pending[3].status = TaskState::Pending;
    pending[3].test_score = None;
    let refs: Vec<_> = pending.iter().collect();
    let s = reported_score(&refs, ScoreScale::Fraction, 1e-4).expect("score");
    assert_eq!((s.source, s.accuracy, s.mark().as_str()), (ScoreSource::BestGridNoFinal, Some(0.78), "*"));

    // The final failed for good: the same fallback, marked differently.
    let mut failed = with_final.clone();
    failed[3].status = TaskState::Failed;
    failed[3].test_score = None;
    let refs: Vec<_> = failed.iter().collect();
    let s = reported_score(&refs, ScoreScale::Fraction, 1e-4).expect("score");
    assert_eq!((s.source, s.mark().as_str()), (ScoreSource::BestGridFinalFailed, "!"));

    // A superseded final (not current) is ignored.
    let mut stale = with_final.clone();
    stale[3].is_current_final = false;
    let refs: Vec<_> = stale.iter().collect();
    assert_eq!(reported_score(&refs, ScoreScale::Fraction, 1e-4).map(|s| s.source), Some(ScoreSource::BestGridNoFinal));

    // A diverged final is still a result: reported, marked D.
    let mut diverged = with_final;
    diverged[3].diverged = true;
    diverged[3].test_score = Some(0.01);
    let refs: Vec<_> = diverged.iter().collect();
    let s = reported_score(&refs, ScoreScale::Fraction, 1e-4).expect("score");
    assert_eq!((s.source, s.diverged, s.mark().as_str()), (ScoreSource::Final, true, " D"));
}

#[test]
fn groups_without_a_score_say_why() {
    let (m, d, r) = ("net", "cars", Regime::Scratch);
    let reason = |cells: &[tsweep_report::CellRow]| {
        let refs: Vec<_> = cells.iter().collect();
        reported_score(&refs, ScoreScale::Fraction, 1e-4).and_then(|s| s.missing)
    };
    let mut all_diverged =
        vec![grid("a", m, d, r, hp(1.0, 0.0), 0.01, 0.01), grid("b", m, d, r, hp(0.1, 0.0), 0.01, 0.01)];
    all_diverged.iter_mut().for_each(|c| c.diverged = true);
    assert_eq!(reason(&all_diverged), Some(MissingReason::Diverged));

    let mut all_failed = vec![grid("a", m, d, r, hp(1.0, 0.0), 0.5, 0.5)];
    all_failed[0].status = TaskState::Failed;
    assert_eq!(reason(&all_failed), Some(MissingReason::Failed));

    let mut running = all_failed.clone();
    running.push(cell("b", m, d, r, Stage::Grid));
    running[1].status = TaskState::Running;
    assert_eq!(reason(&running), Some(MissingReason::Pending));

    let mut cancelled = all_failed;
    cancelled[0].status = TaskState::Cancelled;
    assert_eq!(reason(&cancelled), Some(MissingReason::Cancelled));
}

#[test]
fn percentages_are_read_as_percentages_for_the_whole_input() {
    let names = model_names();
    let models: Vec<(&str, Option<f64>)> = names.iter().zip(TOP1).map(|(n, t)| (n.as_str(), Some(t))).collect();
    let acc =
        |m: usize, d: usize| sigmoid(0.3 * d as f64 + 0.08 * (TOP1[m] - 76.0) + 0.05 * ((m * 7 + d) as f64).sin());
    let fractions = linear_input(&models, &["a", "b"], acc);
    let mut percents = linear_input(&models, &["a", "b"], |m, d| 100.0 * acc(m, d));
    // ImageNet top-1 as fractions this time: also normalised.
    percents.models =
        models.iter().map(|(n, t)| ModelInfo { name: n.to_string(), imagenet_top1: t.map(|t| t / 100.0) }).collect();
    let (a, b) = (analyze(&fractions), analyze(&percents));
    assert_eq!((a.score_scale, b.score_scale), (ScoreScale::Fraction, ScoreScale::Percent));
    let (ra, rb) = (&a.regimes[0], &b.regimes[0]);
    let (ca, cb) = (ra.correlation.as_ref().expect("r"), rb.correlation.as_ref().expect("r"));
    assert!(close(ca.r, cb.r, 1e-12));
    assert!(close(ca.slope, cb.slope, 1e-9), "fit is per top-1 percentage point either way");
    for (sa, sb) in ra.scores.iter().zip(&rb.scores) {
        assert!(close(sa.accuracy.unwrap_or(-1.0), sb.accuracy.unwrap_or(-2.0), 1e-12));
    }
    assert!(b.notes.iter().any(|n| n.contains("percentage")));
}

#[test]
fn models_without_top1_or_with_missing_datasets_are_reported_but_left_out() {
    let names = model_names();
    let mut models: Vec<(&str, Option<f64>)> = names.iter().zip(TOP1).map(|(n, t)| (n.as_str(), Some(t))).collect();
    models[3].1 = None;
    let mut input = linear_input(&models, &["a", "b"], |m, d| sigmoid(0.1 * d as f64 + 0.07 * (TOP1[m] - 76.0)));
    // net05 has no score on "b" (its task failed).
    let lost = input.cells.iter_mut().find(|c| c.model == "net05" && c.dataset == "b").expect("cell");
    lost.status = TaskState::Failed;
    lost.test_score = None;
    let analysis = analyze(&input);
    let regime = &analysis.regimes[0];
    let c = regime.correlation.as_ref().expect("r");
    assert_eq!(c.n, 14);
    assert!(close(c.r, 1.0, 1e-9));
    let net03 = regime.models.iter().find(|m| m.model == "net03").expect("reported");
    assert!(!net03.in_correlation && net03.mean_log_odds.is_some());
    assert_eq!(regime.models.last().map(|m| m.model.as_str()), Some("net03"), "unknown top-1 sorts last");
    let net05 = regime.models.iter().find(|m| m.model == "net05").expect("reported");
    assert_eq!((net05.in_correlation, net05.datasets_scored, net05.datasets_total), (false, 1, 2));
    assert!(regime.notes.iter().any(|n| n.contains("net03") && n.contains("no ImageNet top-1")));
    assert!(regime.notes.iter().any(|n| n.contains("net05") && n.contains("1 of 2")));
    assert!(analysis.notes.iter().any(|n| n.contains("net03")));
    // Per-dataset r uses every model scored there with a top-1.
    let per: Vec<usize> = regime.per_dataset.iter().map(|d| d.n).collect();
    assert_eq!(per, vec![15, 14]);
    // Rows by ImageNet top-1, best first.
    let top: Vec<f64> = regime.models.iter().filter_map(|m| m.imagenet_top1).collect();
    assert!(top.windows(2).all(|w| w[0] >= w[1]));
}

#[test]
fn scratch_vs_finetune_per_dataset() {
    let mut cells = Vec::new();
    for (i, (m, ft, sc)) in [("a", 0.90, 0.80), ("b", 0.85, 0.86), ("c", 0.95, 0.75)].into_iter().enumerate() {
        for (regime, acc) in [(Regime::Finetune, ft), (Regime::Scratch, sc)] {
            let g = grid(&format!("g{i}{}", regime.name()), m, "cars", regime, hp(0.1, 0.0), acc, acc);
            let mut f = cell(&format!("f{i}{}", regime.name()), m, "cars", regime, Stage::Final);
            f.hparams = hp(0.1, 0.0);
            f.test_score = Some(acc);
            f.is_current_final = true;
            cells.push(g);
            cells.push(f);
        }
    }
    let input = ReportInput {
        sweep: "s".to_string(),
        cells,
        models: vec![
            ModelInfo { name: "a".into(), imagenet_top1: Some(76.0) },
            ModelInfo { name: "b".into(), imagenet_top1: Some(72.0) },
            ModelInfo { name: "c".into(), imagenet_top1: Some(80.0) },
        ],
        datasets: vec![],
        settings: Default::default(),
        curves: Default::default(),
    };
    let analysis = analyze(&input);
    assert_eq!(analysis.datasets.len(), 1, "datasets found in the cells are added");
    let c = &analysis.scratch_vs_finetune[0];
    assert_eq!((c.dataset.as_str(), c.pairs.len(), c.finetune_better), ("cars", 3, 2));
    assert!(close(c.mean_finetune.unwrap_or(0.0), 0.9, 1e-12));
    assert!(close(c.mean_scratch.unwrap_or(0.0), 0.80333333333333, 1e-9));
    assert!(close(c.mean_difference.unwrap_or(0.0), (0.10 - 0.01 + 0.20) / 3.0, 1e-12));
    let lo = (log_odds(0.9, 1e-4) - log_odds(0.8, 1e-4) + log_odds(0.85, 1e-4) - log_odds(0.86, 1e-4)
        + log_odds(0.95, 1e-4)
        - log_odds(0.75, 1e-4))
        / 3.0;
    assert!(close(c.mean_log_odds_difference.unwrap_or(0.0), lo, 1e-12));
}

#[test]
fn the_current_final_is_the_one_the_store_names_not_the_one_the_report_would_pick() {
    let (m, d, r) = ("net", "cars", Regime::Finetune);
    let mut old_final = cell("f-old", m, d, r, Stage::Final);
    old_final.hparams = hp(0.1, 0.0);
    old_final.test_score = Some(0.7);
    let mut new_final = cell("f-new", m, d, r, Stage::Final);
    new_final.hparams = hp(0.01, 0.0);
    new_final.status = TaskState::Pending;
    new_final.is_current_final = true;
    let cells = [
        grid("g1", m, d, r, hp(0.1, 0.0), 0.70, 0.70),
        old_final,
        grid("g2", m, d, r, hp(0.01, 0.0), 0.80, 0.79),
        new_final,
    ];
    let refs: Vec<_> = cells.iter().collect();
    let s = reported_score(&refs, ScoreScale::Fraction, 1e-4).expect("score");
    // The current final is pending, so the best grid point speaks (never the old final,
    // although it has a test score and hparams of a grid point).
    assert_eq!((s.source, s.accuracy), (ScoreSource::BestGridNoFinal, Some(0.79)));
}

/// One seed's grid points and its current final, as the store groups them.
fn seed_group(
    m: &str,
    d: &str,
    r: Regime,
    seed: u64,
    points: &[(f64, f64, f64)],
    final_test: Option<f64>,
) -> Vec<CellRow> {
    let group = format!("{m}/{d}/{}/{seed}", r.name());
    let mut cells: Vec<CellRow> = points
        .iter()
        .enumerate()
        .map(|(i, (lr, val, test))| grid(&format!("g{seed}-{i}"), m, d, r, hp(*lr, 0.0), *val, *test))
        .collect();
    let winner = points.iter().max_by(|a, b| a.1.total_cmp(&b.1)).map(|p| p.0).unwrap_or(0.0);
    let mut fin = cell(&format!("f{seed}"), m, d, r, Stage::Final);
    fin.hparams = hp(winner, 0.0);
    fin.test_score = final_test;
    fin.status = if final_test.is_some() { TaskState::Succeeded } else { TaskState::Running };
    fin.is_current_final = true;
    cells.push(fin);
    for c in &mut cells {
        c.seed = seed;
        c.selection_group = group.clone();
    }
    cells
}

#[test]
fn seeds_are_selected_each_on_its_own_and_reported_as_mean_and_spread() {
    let (m, d, r) = ("net", "cars", Regime::Finetune);
    // Each seed has its own winner: seed 0 lr 0.1, seed 1 lr 0.01, seed 2 lr 0.1. Pooling
    // the grid points of every seed (the old report) would crown seed 1's 0.95 and mark
    // every final with lr 0.01 current.
    let mut cells = seed_group(m, d, r, 0, &[(0.1, 0.80, 0.79), (0.01, 0.70, 0.69)], Some(0.82));
    cells.extend(seed_group(m, d, r, 1, &[(0.1, 0.85, 0.84), (0.01, 0.95, 0.90)], Some(0.88)));
    cells.extend(seed_group(m, d, r, 2, &[(0.1, 0.78, 0.77), (0.01, 0.60, 0.61)], Some(0.80)));
    let refs: Vec<_> = cells.iter().collect();
    let s = reported_score(&refs, ScoreScale::Fraction, 1e-4).expect("score");
    let mean = (0.82 + 0.88 + 0.80) / 3.0;
    assert!(close(s.accuracy.unwrap_or(0.0), mean, 1e-12), "{s:?}");
    let sd =
        (((0.82 - mean) * (0.82 - mean) + (0.88 - mean) * (0.88 - mean) + (0.80 - mean) * (0.80 - mean)) / 2.0).sqrt();
    assert!(close(s.spread.unwrap_or(0.0), sd, 1e-12), "{s:?}");
    assert!(close(s.log_odds.unwrap_or(0.0), log_odds(mean, 1e-4), 1e-12));
    assert_eq!((s.source, s.seeds.len(), s.seeds_scored), (ScoreSource::Final, 3, 3));
    assert_eq!(s.seeds.iter().map(|x| x.seed).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(s.seeds[1].selected, hp(0.01, 0.0));
    assert_eq!(s.seeds[0].selected, hp(0.1, 0.0));
    assert!(s.selected.is_empty(), "the seeds selected differently");
    assert_eq!((s.grid.total, s.finals), (6, 3));
    assert_eq!(tsweep_report::tables::score_text(&s), format!("{:.1} ± {:.1}", mean * 100.0, sd * 100.0));

    // One seed's final still running: its best grid point speaks for it, the mean is
    // marked as a fallback; a seed without any score counts as missing (k/n).
    let mut partial = cells.clone();
    for c in partial.iter_mut().filter(|c| c.task_id == "f2") {
        c.status = TaskState::Running;
        c.test_score = None;
    }
    let refs: Vec<_> = partial.iter().collect();
    let s = reported_score(&refs, ScoreScale::Fraction, 1e-4).expect("score");
    assert_eq!(s.source, ScoreSource::BestGridNoFinal);
    assert!(close(s.accuracy.unwrap_or(0.0), (0.82 + 0.88 + 0.77) / 3.0, 1e-12));
    let mut missing = cells;
    missing.retain(|c| c.seed != 2 || c.stage == Stage::Final);
    for c in missing.iter_mut().filter(|c| c.task_id == "f2") {
        c.status = TaskState::Pending;
        c.test_score = None;
    }
    let refs: Vec<_> = missing.iter().collect();
    let s = reported_score(&refs, ScoreScale::Fraction, 1e-4).expect("score");
    assert_eq!((s.seeds.len(), s.seeds_scored), (3, 2));
    assert!(s.mark().ends_with(" 2/3"), "{}", s.mark());
    assert!(close(s.accuracy.unwrap_or(0.0), (0.82 + 0.88) / 2.0, 1e-12));
}
