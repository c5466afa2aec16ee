//! VOC-style multi-label data: one-vs-rest heads, 11-point mAP, official val split.

mod common;

use common::*;
use tsweep_proto::cell::{DatasetFormat, Metric, Regime, ValPolicy};

#[test]
fn linear_and_scratch_score_map11_above_chance() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("voc");
    make_multilabel(&data, [120, 40, 40], 9);
    for regime in [Regime::Linear, Regime::Scratch] {
        let mut spec = cell(regime, &data, "resnet18", None);
        spec.dataset.format = DatasetFormat::MultilabelList;
        spec.dataset.metric = Metric::Map11;
        spec.dataset.val = ValPolicy::Official;
        spec.train.steps = 30;
        let (r, _) = run(&job(spec, dir.path(), regime.name()));
        let r = r.unwrap();
        assert_eq!(r.metric(), tsweep_proto::v1::Metric::Map11);
        // chance (mean prevalence) is about 0.37 here
        assert!(r.val_score.unwrap() > 0.6 && r.test_score.unwrap() > 0.6, "{}: {r:?}", regime.name());
    }
}

#[test]
fn a_single_label_metric_on_multi_label_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("voc");
    make_multilabel(&data, [8, 4, 4], 2);
    let mut spec = cell(Regime::Linear, &data, "resnet18", None);
    spec.dataset.format = DatasetFormat::MultilabelList;
    spec.dataset.val = ValPolicy::Official;
    let err = run(&job(spec, dir.path(), "bad")).0.unwrap_err();
    assert_eq!(err.class(), tsweep_proto::v1::FailureClass::Fatal, "{err}");
}
