//! The Rust backbones' variables (parameters and BatchNorm buffers) are named exactly as
//! torchvision's `state_dict()` keys, less the classifier (`fc`, `classifier`), Inception's
//! auxiliary classifier (`AuxLogits`) and `num_batches_tracked`, with the same shapes: the
//! contract that lets converted torchvision weights load by name. Needs python3 with torch
//! and torchvision on PATH (scripts/env.sh's venv): without them the test fails under CI and
//! says SKIPPED elsewhere (`common::reference_python`).

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;

use common::*;
use tch::Device;
use tsweep_proto::cell::Regime;
use tsweep_trainer::models::{Init, NetConfig, Network, AUX_LOGITS, HEAD};

const ARCHS: &[&str] = &["inception_v3", "efficientnet_b0"];

/// torchvision's state_dict shapes by key, for each of `ARCHS`.
fn torchvision_keys(python: &str) -> BTreeMap<String, BTreeMap<String, Vec<i64>>> {
    let script = r#"
import json, sys, torchvision
out = {}
for arch in sys.argv[1:]:
    kwargs = {"init_weights": False} if arch == "inception_v3" else {}
    sd = getattr(torchvision.models, arch)(weights=None, **kwargs).state_dict()
    out[arch] = {k: list(v.shape) for k, v in sd.items()
                 if not k.endswith("num_batches_tracked") and k.split(".")[0] not in ("fc", "classifier", "AuxLogits")}
print(json.dumps(out))
"#;
    let mut args: Vec<&OsStr> = vec![OsStr::new("-c"), OsStr::new(script)];
    args.extend(ARCHS.iter().map(OsStr::new));
    serde_json::from_str(&common::python(python, &args)).unwrap()
}

#[test]
fn variable_names_and_shapes_are_torchvision_state_dict_keys() {
    let Some(python) = reference_python(&["torch", "torchvision"]) else {
        return;
    };
    let expected = torchvision_keys(python);
    let dir = tempfile::tempdir().unwrap();
    for &arch in ARCHS {
        let spec = cell(Regime::Finetune, dir.path(), arch, None);
        let net = Network::build(&spec.model, &Init::Random, 10, Device::Cpu, NetConfig { bn_momentum: 0.1 }).unwrap();
        let ours: BTreeMap<String, Vec<i64>> = net
            .state()
            .into_iter()
            .filter(|(name, _)| !name.starts_with(&format!("{HEAD}.")))
            .map(|(name, t)| (name, t.size()))
            .collect();
        let theirs = &expected[arch];
        let only_ours: Vec<&String> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
        let only_theirs: Vec<&String> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
        assert!(
            only_ours.is_empty() && only_theirs.is_empty(),
            "{arch}: only ours {only_ours:?}, only torchvision's {only_theirs:?}"
        );
        for (name, shape) in theirs {
            assert_eq!(&ours[name], shape, "{arch}: {name}");
        }
    }
}

/// Inception v3's auxiliary classifier, once added, is torchvision's `AuxLogits` by name and
/// shape (1,000 classes, as torchvision's).
#[test]
fn the_auxiliary_classifier_is_torchvisions_aux_logits() {
    let Some(python) = reference_python(&["torch", "torchvision"]) else {
        return;
    };
    let script = r#"
import json, torchvision
sd = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()
print(json.dumps({k: list(v.shape) for k, v in sd.items()
                  if k.startswith("AuxLogits.") and not k.endswith("num_batches_tracked")}))
"#;
    let theirs: BTreeMap<String, Vec<i64>> =
        serde_json::from_str(&common::python(python, &[OsStr::new("-c"), OsStr::new(script)])).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = cell(Regime::Scratch, dir.path(), "inception_v3", None);
    let cfg = NetConfig { bn_momentum: 0.1 };
    let net = Network::build(&spec.model, &Init::Random, 1000, Device::Cpu, cfg).unwrap().with_aux_head(cfg).unwrap();
    let ours: BTreeMap<String, Vec<i64>> = net
        .state()
        .into_iter()
        .filter(|(name, _)| name.starts_with(&format!("{AUX_LOGITS}.")))
        .map(|(name, t)| (name, t.size()))
        .collect();
    assert!(!theirs.is_empty());
    assert_eq!(ours, theirs);
}
