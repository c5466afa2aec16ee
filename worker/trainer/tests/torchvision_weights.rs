//! Weights converted by tools/convert_weights.py from (randomly initialised) torchvision
//! models load into the Rust backbones by name and give torchvision's features; a
//! TorchScript export trains through TrainableCModule. Needs python3 with torch,
//! torchvision and safetensors on PATH (scripts/env.sh's venv): without them a test fails
//! under CI and says SKIPPED elsewhere (`common::reference_python`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use tch::{Device, Kind, Tensor};
use tsweep_proto::cell::{ModelSource, Regime};
use tsweep_trainer::models::{Init, NetConfig, Network};

fn tool() -> PathBuf {
    tools_dir().join("convert_weights.py")
}

/// torch + torchvision (+ safetensors, which the converter writes with).
const MODULES: &[&str] = &["torch", "torchvision", "safetensors"];

fn convert(dir: &Path, arch: &str, size: u32, extra: &[&str]) -> (PathBuf, PathBuf) {
    let weights = dir.join(format!("{arch}.safetensors"));
    let reference = dir.join(format!("{arch}.ref.safetensors"));
    let out = Command::new("python3")
        .arg(tool())
        .args(["--arch", arch, "--random-init", "--size", &size.to_string()])
        .arg("--out")
        .arg(&weights)
        .arg("--reference")
        .arg(&reference)
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (weights, reference)
}

fn reference(path: &Path) -> (Tensor, Tensor) {
    let named = Tensor::read_safetensors(path).unwrap();
    let get = |n: &str| named.iter().find(|(k, _)| k == n).unwrap().1.shallow_clone();
    (get("input"), get("features"))
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let diff = f64::try_from((a - b).abs().max()).unwrap();
    let scale = f64::try_from(b.abs().max()).unwrap().max(1e-6);
    diff / scale
}

#[test]
fn converted_torchvision_weights_give_torchvision_features() {
    if reference_python(MODULES).is_none() {
        return;
    }
    tch::set_num_threads(2);
    let dir = tempfile::tempdir().unwrap();
    for (arch, size) in [
        ("resnet18", 64),
        ("resnet50", 64),
        ("densenet121", 64),
        ("mobilenet_v2", 64),
        ("inception_v3", 96),
        ("efficientnet_b0", 64),
    ] {
        let (weights, reference_file) = convert(dir.path(), arch, size, &[]);
        let mut spec = cell(Regime::Finetune, dir.path(), arch, Some(weights.clone()));
        spec.model.image_size = size;
        let net =
            Network::build(&spec.model, &Init::Pretrained(weights), 10, Device::Cpu, NetConfig { bn_momentum: 0.1 })
                .unwrap_or_else(|e| panic!("{arch}: {e}"));
        let (x, expected) = reference(&reference_file);
        let got = tch::no_grad(|| net.features(&x, false)).unwrap();
        assert_eq!(got.size(), expected.size(), "{arch}");
        let rel = max_rel_diff(&got, &expected);
        assert!(rel < 1e-3, "{arch}: features differ from torchvision's by {rel} (relative)");
        assert_eq!(net.forward(&x, false).unwrap().size(), vec![2, 10]);
    }
}

#[test]
fn weights_of_another_architecture_are_fatal() {
    if reference_python(MODULES).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // its metadata says resnet18: refused before any tensor is compared
    let (weights, _) = convert(dir.path(), "resnet18", 64, &[]);
    let spec = cell(Regime::Finetune, dir.path(), "resnet34", Some(weights.clone()));
    let err = Network::build(
        &spec.model,
        &Init::Pretrained(weights.clone()),
        10,
        Device::Cpu,
        NetConfig { bn_momentum: 0.1 },
    )
    .unwrap_err();
    assert_eq!(err.class(), tsweep_proto::v1::FailureClass::Fatal);
    let msg = err.to_string();
    assert!(msg.contains(&weights.display().to_string()) && msg.contains("holds resnet18 weights"), "{msg}");
}

#[test]
fn torchscript_backbone_extracts_and_trains() {
    if reference_python(MODULES).is_none() {
        return;
    }
    tch::set_num_threads(2);
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("resnet18.pt");
    let (_, reference_file) = convert(dir.path(), "resnet18", 32, &["--torchscript", module.to_str().unwrap()]);
    let data = dir.path().join("data");
    make_imagefolder(&data, 30, 10, 5);

    let mut spec = cell(Regime::Finetune, &data, "resnet18", Some(module.clone()));
    spec.model.source = ModelSource::Torchscript;
    let net =
        Network::build(&spec.model, &Init::Pretrained(module.clone()), 4, Device::Cpu, NetConfig { bn_momentum: 0.1 })
            .unwrap();
    assert_eq!(net.feature_dim, 512);
    let (x, expected) = reference(&reference_file);
    let got = tch::no_grad(|| net.features(&x, false)).unwrap();
    assert!(max_rel_diff(&got, &expected.to_kind(Kind::Float)) < 1e-4);
    drop(net);

    spec.train.steps = 30;
    spec.train.checkpoint_every = 10;
    let (r, events) = run(&job(spec.clone(), dir.path(), "ts-finetune"));
    let r = r.unwrap();
    assert!(r.test_score.unwrap() > 0.4, "{r:?}");
    assert!(events.iter().any(|e| matches!(e, tsweep_trainer::TrainingEvent::Checkpoint { step: 20, .. })));
    assert!(
        dir.path().join("ckpt/ts-finetune/ckpt-0000000020.pt").is_file(),
        "the module is saved beside the checkpoint"
    );

    spec.regime = Regime::Linear;
    spec.hparams.clear();
    let (r, _) = run(&job(spec, dir.path(), "ts-linear"));
    assert!(r.unwrap().test_score.unwrap() > 0.5);
}

#[test]
fn missing_torchscript_module_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = cell(Regime::Finetune, dir.path(), "resnet18", Some("/no/such/module.pt".into()));
    spec.model.source = ModelSource::Torchscript;
    let err = Network::build(&spec.model, &Init::Random, 4, Device::Cpu, NetConfig { bn_momentum: 0.1 }).unwrap_err();
    assert_eq!(err.class(), tsweep_proto::v1::FailureClass::Fatal);
    assert!(err.to_string().contains("/no/such/module.pt"));
}
