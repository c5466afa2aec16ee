//! The three metrics of the paper: top-1, mean per-class accuracy, 11-point mAP. Pure
//! functions of scores and labels (row-major `n x k` scores).

/// Fraction of rows whose arg-max is the label.
pub fn top1(scores: &[f32], k: usize, labels: &[i64]) -> f64 {
    if labels.is_empty() || k == 0 {
        return 0.0;
    }
    let hits = labels.iter().enumerate().filter(|(i, &y)| argmax(&scores[i * k..(i + 1) * k]) as i64 == y).count();
    hits as f64 / labels.len() as f64
}

/// Accuracy per class, averaged over the classes present in `labels`.
pub fn mean_per_class(scores: &[f32], k: usize, labels: &[i64]) -> f64 {
    let mut total = vec![0usize; k];
    let mut hits = vec![0usize; k];
    for (i, &y) in labels.iter().enumerate() {
        let Some(slot) = usize::try_from(y).ok().filter(|&c| c < k) else { continue };
        total[slot] += 1;
        if argmax(&scores[i * k..(i + 1) * k]) == slot {
            hits[slot] += 1;
        }
    }
    let present: Vec<f64> = (0..k).filter(|&c| total[c] > 0).map(|c| hits[c] as f64 / total[c] as f64).collect();
    if present.is_empty() {
        0.0
    } else {
        present.iter().sum::<f64>() / present.len() as f64
    }
}

/// 11-point interpolated average precision of one class (PASCAL VOC 2007): the mean over
/// recall thresholds 0, 0.1, ..., 1 of the best precision at recall >= threshold.
/// `targets` are 0/1. A class without positives has AP 0.
pub fn average_precision_11(scores: &[f32], targets: &[f32]) -> f64 {
    let positives = targets.iter().filter(|&&t| t > 0.5).count();
    if positives == 0 {
        return 0.0;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut tp = 0usize;
    let mut curve = Vec::with_capacity(order.len()); // (recall, precision)
    for (rank, &i) in order.iter().enumerate() {
        if targets[i] > 0.5 {
            tp += 1;
        }
        curve.push((tp as f64 / positives as f64, tp as f64 / (rank + 1) as f64));
    }
    (0..=10)
        .map(|t| {
            let threshold = t as f64 / 10.0;
            curve
                .iter()
                .filter(|(recall, _)| *recall >= threshold - 1e-12)
                .map(|(_, precision)| *precision)
                .fold(0.0, f64::max)
        })
        .sum::<f64>()
        / 11.0
}

/// Mean over classes of the 11-point AP; `targets` is `n x k` multi-hot.
pub fn map11(scores: &[f32], k: usize, targets: &[f32]) -> f64 {
    if k == 0 || scores.is_empty() {
        return 0.0;
    }
    let n = scores.len() / k;
    let mut total = 0.0;
    for c in 0..k {
        let s: Vec<f32> = (0..n).map(|i| scores[i * k + c]).collect();
        let t: Vec<f32> = (0..n).map(|i| targets[i * k + c]).collect();
        total += average_precision_11(&s, &t);
    }
    total / k as f64
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (j, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = j;
        }
    }
    best
}

/// Labels of an evaluation set, single- or multi-label.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalTargets {
    Labels(Vec<i64>),
    /// `n x k` multi-hot.
    MultiHot(Vec<f32>),
}

/// Scores `scores` (`n x k`) with the cell's metric.
pub fn score(metric: tsweep_proto::cell::Metric, scores: &[f32], k: usize, targets: &EvalTargets) -> f64 {
    use tsweep_proto::cell::Metric;
    match (metric, targets) {
        (Metric::Top1, EvalTargets::Labels(y)) => top1(scores, k, y),
        (Metric::MeanPerClass, EvalTargets::Labels(y)) => mean_per_class(scores, k, y),
        (Metric::Map11, EvalTargets::MultiHot(t)) => map11(scores, k, t),
        // Multi-label data scored by a single-label metric or the reverse: the run loop
        // refuses such cells before training; score as chance here.
        _ => chance_level(metric, k, targets),
    }
}

/// What a model without information scores: 1/k for the accuracies, the mean class
/// prevalence for mAP. A diverged run reports this.
pub fn chance_level(metric: tsweep_proto::cell::Metric, k: usize, targets: &EvalTargets) -> f64 {
    use tsweep_proto::cell::Metric;
    match (metric, targets) {
        (Metric::Map11, EvalTargets::MultiHot(t)) if !t.is_empty() => {
            t.iter().map(|&v| f64::from(v)).sum::<f64>() / t.len() as f64
        }
        _ => 1.0 / k.max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top1_counts_argmax_hits() {
        let scores = [0.1, 0.9, 0.8, 0.2, 0.3, 0.7];
        assert_eq!(top1(&scores, 2, &[1, 0, 0]), 2.0 / 3.0);
        assert_eq!(top1(&[], 2, &[]), 0.0);
    }

    #[test]
    fn mean_per_class_weights_classes_equally() {
        // class 0: 3 images, all right; class 1: 1 image, wrong -> (1 + 0) / 2
        let scores = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        assert_eq!(mean_per_class(&scores, 2, &[0, 0, 0, 1]), 0.5);
        assert_eq!(top1(&scores, 2, &[0, 0, 0, 1]), 0.75);
    }

    #[test]
    fn ap11_of_a_perfect_ranking_is_one() {
        assert!((average_precision_11(&[0.9, 0.8, 0.1], &[1.0, 1.0, 0.0]) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn ap11_matches_the_voc_devkit_on_a_small_case() {
        // ranking: pos, neg, pos -> (recall, precision) = (.5, 1), (.5, .5), (1, 2/3)
        // thresholds 0..=0.5 (6 points): 1.0; 0.6..=1.0 (5 points): 2/3
        let ap = average_precision_11(&[0.9, 0.8, 0.7], &[1.0, 0.0, 1.0]);
        assert!((ap - (6.0 + 5.0 * 2.0 / 3.0) / 11.0).abs() < 1e-12, "{ap}");
        assert_eq!(average_precision_11(&[0.3], &[0.0]), 0.0);
    }

    #[test]
    fn map11_averages_classes() {
        // 3 images x 2 classes; class 0 perfect, class 1 as above
        let scores = [0.9, 0.9, 0.8, 0.8, 0.1, 0.7];
        let targets = [1.0, 1.0, 1.0, 0.0, 0.0, 1.0];
        let expected = (1.0 + (6.0 + 5.0 * 2.0 / 3.0) / 11.0) / 2.0;
        assert!((map11(&scores, 2, &targets) - expected).abs() < 1e-12);
    }

    #[test]
    fn chance_levels() {
        use tsweep_proto::cell::Metric;
        assert_eq!(chance_level(Metric::Top1, 4, &EvalTargets::Labels(vec![0])), 0.25);
        assert_eq!(chance_level(Metric::Map11, 2, &EvalTargets::MultiHot(vec![1.0, 0.0, 0.0, 0.0])), 0.25);
    }
}
