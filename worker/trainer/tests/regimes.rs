//! Each regime learns the generated dataset well above chance (0.25), on real libtorch.

mod common;

use common::*;
use tsweep_proto::cell::{Precision, Regime};
use tsweep_proto::v1::FailureClass;
use tsweep_trainer::{StepProgress, TrainerError, TrainingEvent};

fn dataset(dir: &std::path::Path) -> std::path::PathBuf {
    let data = dir.join("data");
    make_imagefolder(&data, 30, 10, 11);
    data
}

/// Random-init resnet18 weights saved under torchvision names: the "pretrained" model.
fn saved_weights(dir: &std::path::Path) -> std::path::PathBuf {
    tch::manual_seed(123);
    let spec = cell(Regime::Scratch, dir, "resnet18", None);
    let net = tsweep_trainer::models::Network::build(
        &spec.model,
        &tsweep_trainer::models::Init::Random,
        1000,
        tch::Device::Cpu,
        tsweep_trainer::models::NetConfig { bn_momentum: 0.1 },
    )
    .unwrap();
    let named: Vec<(String, tch::Tensor)> =
        net.state().into_iter().map(|(n, t)| (n.replace("tsweep_head", "fc"), t.contiguous())).collect();
    let path = dir.join("resnet18.safetensors");
    tch::Tensor::write_safetensors(&named, &path).unwrap();
    path
}

#[test]
fn scratch_learns_above_chance_and_reports_progress() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let spec = cell(Regime::Scratch, &data, "resnet18", None);
    let (r, events) = run(&job(spec, dir.path(), "scratch"));
    let r = r.unwrap();
    assert!(!r.diverged);
    assert_eq!(r.steps, 40);
    assert_eq!(r.metric(), tsweep_proto::v1::Metric::Top1);
    let (val, test) = (r.val_score.unwrap(), r.test_score.unwrap());
    assert!(val > 0.5 && test > 0.5, "val {val} test {test}");
    assert!(matches!(events.first(), Some(TrainingEvent::Started { resumed_from_step: 0 })));
    assert!(events
        .iter()
        .any(|e| matches!(e, TrainingEvent::Progress(StepProgress { step: 40, total_steps: 40, .. }))));
}

#[test]
fn finetune_loads_torchvision_named_weights_and_learns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let weights = saved_weights(dir.path());
    let mut spec = cell(Regime::Finetune, &data, "resnet18", Some(weights));
    spec.stage = tsweep_proto::cell::Stage::Final;
    let (r, _) = run(&job(spec, dir.path(), "finetune"));
    let r = r.unwrap();
    assert!(r.val_score.is_none(), "the final stage scores test only");
    assert!(r.test_score.unwrap() > 0.5, "{r:?}");
}

#[test]
fn linear_probe_selects_on_val_and_scores_test() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let weights = saved_weights(dir.path());
    let spec = cell(Regime::Linear, &data, "resnet18", Some(weights));
    let j = job(spec, dir.path(), "linear");
    let (r, events) = run(&j);
    let r = r.unwrap();
    assert!(r.val_score.unwrap() > 0.5 && r.test_score.unwrap() > 0.5, "{r:?}");
    let l2 = r.selected["l2"];
    assert!(j.spec.train.l2_path.contains(&l2));
    let path_points = events.iter().filter(|e| matches!(e, TrainingEvent::Progress(_))).count();
    assert_eq!(path_points, j.spec.train.l2_path.len() + 1);
    // features are cached: a second run extracts nothing and gives the same answer
    let cached = std::fs::read_dir(dir.path().join("cache/features")).unwrap().count();
    assert_eq!(cached, 3, "train, val and test features");
    let (again, _) = run(&j);
    let again = again.unwrap();
    assert_eq!(again.selected["l2"], l2);
    assert_eq!(again.test_score, r.test_score);
}

#[test]
fn missing_weights_are_fatal_and_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    for regime in [Regime::Finetune, Regime::Linear] {
        let spec = cell(regime, &data, "resnet50", Some("/no/such/resnet50.safetensors".into()));
        let (r, _) = run(&job(spec, dir.path(), regime.name()));
        let err = r.unwrap_err();
        assert_eq!(err.class(), FailureClass::Fatal, "{err}");
        assert!(matches!(err, TrainerError::MissingFile { .. }), "{err}");
        assert!(err.to_string().contains("/no/such/resnet50.safetensors"), "{err}");
    }
    let spec = cell(Regime::Scratch, &data, "resnet7", None);
    let err = run(&job(spec, dir.path(), "unknown")).0.unwrap_err();
    assert!(matches!(err, TrainerError::UnknownArch(_)) && err.class() == FailureClass::Fatal, "{err}");
}

#[test]
fn a_diverged_run_is_a_result_at_chance() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let mut spec = cell(Regime::Scratch, &data, "resnet18", None);
    spec.hparams.insert("lr".into(), 1e12);
    spec.train.steps = 30;
    let (r, _) = run(&job(spec, dir.path(), "nan"));
    let r = r.unwrap();
    assert!(r.diverged, "{r:?}");
    assert!(r.steps <= 30);
    assert_eq!(r.test_score, Some(0.25));
    assert_eq!(r.val_score, Some(0.25));
}

#[test]
fn bf16_scratch_learns_with_f32_weights_and_fp16_on_the_cpu_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let mut spec = cell(Regime::Scratch, &data, "resnet18", None);
    spec.precision = Precision::Bf16;
    spec.train.checkpoint_every = 20;
    let (r, events) = run(&job(spec.clone(), dir.path(), "bf16"));
    let r = r.unwrap();
    assert!(!r.diverged && r.steps == 40, "{r:?}");
    let (val, test) = (r.val_score.unwrap(), r.test_score.unwrap());
    assert!(val > 0.5 && test > 0.5, "val {val} test {test}");
    assert!(!r.extra.contains_key("skipped_steps"), "bf16 has no loss scaling");
    // master weights, BatchNorm statistics and momentum stay f32 in the checkpoint
    let ckpt = events
        .iter()
        .find_map(|e| match e {
            TrainingEvent::Checkpoint { path, step: 20 } => Some(path.clone()),
            _ => None,
        })
        .unwrap();
    let saved = tch::Tensor::read_safetensors(&ckpt).unwrap();
    let floats: Vec<&(String, tch::Tensor)> =
        saved.iter().filter(|(n, _)| n.starts_with("model.") || n.starts_with("momentum.")).collect();
    assert!(floats.iter().any(|(n, _)| n.ends_with("running_var")));
    for (name, t) in floats {
        if !name.ends_with("num_batches_tracked") {
            assert_eq!(t.kind(), tch::Kind::Float, "{name}");
        }
    }

    spec.precision = Precision::Fp16;
    let err = run(&job(spec, dir.path(), "fp16")).0.unwrap_err();
    assert_eq!(err.class(), FailureClass::Fatal, "{err}");
    assert!(matches!(err, TrainerError::PrecisionUnsupported { .. }), "{err}");
    assert!(err.to_string().contains("fp16 needs a CUDA GPU"), "{err}");
}

#[test]
fn bf16_linear_probe_extracts_its_own_cached_features() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let weights = saved_weights(dir.path());
    let fp32 = cell(Regime::Linear, &data, "resnet18", Some(weights));
    let (r32, _) = run(&job(fp32.clone(), dir.path(), "linear-fp32"));
    let r32 = r32.unwrap();
    let mut bf16 = fp32.clone();
    bf16.precision = Precision::Bf16;
    let (r16, _) = run(&job(bf16, dir.path(), "linear-bf16"));
    let r16 = r16.unwrap();
    let cached = std::fs::read_dir(dir.path().join("cache/features")).unwrap().count();
    assert_eq!(cached, 6, "the precision is part of the feature-cache key: 3 splits each");
    assert!(r16.val_score.unwrap() > 0.5 && r16.test_score.unwrap() > 0.5, "{r16:?}");
    assert_eq!(r16.extra["feature_dim"], r32.extra["feature_dim"]);
    let (t32, t16) = (r32.test_score.unwrap(), r16.test_score.unwrap());
    assert!((t32 - t16).abs() <= 0.1, "bf16 features score as fp32 ones do: {t16} vs {t32}");
}
