//! The loader: shapes, targets, determinism and resume, eval passes, the shard cache.

use std::path::Path;

use tsweep_data::*;
use tsweep_proto::cell::{DatasetFormat, DatasetSpec, Metric, ValPolicy};

fn spec(format: DatasetFormat, path: &Path, val: ValPolicy) -> DatasetSpec {
    DatasetSpec { name: "syn".into(), format, path: path.to_path_buf(), metric: Metric::Top1, val, num_classes: None }
}

fn imagefolder(dir: &Path) -> Dataset {
    let opts =
        SynthOptions { classes: 3, train_per_class: 10, val_per_class: 2, test_per_class: 3, image_size: 40, seed: 1 };
    make_dataset(SynthKind::Imagefolder, &dir.join("raw"), &opts).unwrap();
    Dataset::open(
        &spec(DatasetFormat::Imagefolder, &dir.join("raw"), ValPolicy::Official),
        &dir.join("cache"),
        36,
        &|_| {},
    )
    .unwrap()
}

fn cfg(batch: usize, size: u32, threads: usize) -> LoaderConfig {
    LoaderConfig { batch_size: batch, image_size: size, resize_short: size * 8 / 7, seed: 9, threads, prefetch: 4 }
}

#[test]
fn train_batches_have_shapes_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let ds = imagefolder(dir.path());
    assert_eq!(ds.num_classes(), 3);
    let train = ds.split(Split::Train).unwrap();
    assert_eq!(train.len(), 30);
    let mut loader = Loader::new(train, cfg(8, 32, 2), Mode::Train { start_step: 0 }).unwrap();
    assert_eq!(loader.steps_per_epoch(), 4);
    // Infinite: more batches than one epoch, all full.
    for step in 0..9 {
        let b = loader.next_batch().unwrap().unwrap();
        assert_eq!((b.batch_size, b.height, b.width, b.step), (8, 32, 32, step));
        assert_eq!(b.images.len(), 8 * 32 * 32 * 3);
        let Targets::Labels(l) = &b.targets else { panic!("single label") };
        assert!(l.iter().all(|&c| (0..3).contains(&c)));
    }
}

#[test]
fn an_epoch_visits_every_image_once() {
    let dir = tempfile::tempdir().unwrap();
    let ds = imagefolder(dir.path());
    let train = ds.split(Split::Train).unwrap();
    let mut loader = Loader::new(train, cfg(5, 16, 3), Mode::Train { start_step: 0 }).unwrap();
    let mut seen: Vec<usize> = (0..6).flat_map(|_| loader.next_batch().unwrap().unwrap().indices).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..30).collect::<Vec<_>>());
}

#[test]
fn batches_are_deterministic_and_resume_at_a_step() {
    let dir = tempfile::tempdir().unwrap();
    let ds = imagefolder(dir.path());
    let train = ds.split(Split::Train).unwrap();
    let run = |start: u64, threads: usize, n: usize| -> Vec<Batch> {
        let mut l = Loader::new(train.clone(), cfg(7, 24, threads), Mode::Train { start_step: start }).unwrap();
        (0..n).map(|_| l.next_batch().unwrap().unwrap()).collect()
    };
    let full = run(0, 1, 10);
    let again = run(0, 3, 10);
    assert_eq!(full, again, "thread count must not change batches");
    let resumed = run(6, 2, 4);
    assert_eq!(&full[6..], &resumed[..]);
    let mut other_cfg = cfg(7, 24, 2);
    other_cfg.seed = 10;
    let mut other = Loader::new(train, other_cfg, Mode::Train { start_step: 0 }).unwrap();
    assert_ne!(other.next_batch().unwrap().unwrap().images, full[0].images);
}

#[test]
fn eval_is_one_ordered_pass_with_center_crop() {
    let dir = tempfile::tempdir().unwrap();
    let ds = imagefolder(dir.path());
    let test = ds.split(Split::Test).unwrap();
    let loader = Loader::new(test.clone(), cfg(4, 32, 2), Mode::Eval).unwrap();
    assert_eq!(loader.num_batches(), Some(3));
    let batches: Vec<Batch> = loader.map(|b| b.unwrap()).collect();
    assert_eq!(batches.iter().map(|b| b.batch_size).collect::<Vec<_>>(), vec![4, 4, 1]);
    let order: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(order, (0..9).collect::<Vec<_>>());
    let labels: Vec<i64> = batches
        .iter()
        .flat_map(|b| match &b.targets {
            Targets::Labels(l) => l.clone(),
            Targets::MultiHot(..) => panic!("single label"),
        })
        .collect();
    assert_eq!(labels, vec![0, 0, 0, 1, 1, 1, 2, 2, 2]);
    let again: Vec<Batch> = Loader::new(test, cfg(4, 32, 1), Mode::Eval).unwrap().map(|b| b.unwrap()).collect();
    assert_eq!(batches, again);
}

#[test]
fn multilabel_batches_are_multi_hot() {
    let dir = tempfile::tempdir().unwrap();
    let opts =
        SynthOptions { classes: 5, train_per_class: 4, val_per_class: 0, test_per_class: 2, image_size: 32, seed: 2 };
    make_dataset(SynthKind::Multilabel, &dir.path().join("raw"), &opts).unwrap();
    let policy = ValPolicy::HeldOut { fraction: 0.25, seed: 1 };
    let mut s = spec(DatasetFormat::MultilabelList, &dir.path().join("raw"), policy);
    let err = Dataset::open(&s, &dir.path().join("cache"), 32, &|_| {}).unwrap_err().to_string();
    assert!(err.contains("multi-label") && err.contains("top1"), "{err}");
    s.metric = Metric::Map11;
    let ds = Dataset::open(&s, &dir.path().join("cache"), 32, &|_| {}).unwrap();
    assert!(ds.is_multi_label());
    let test = ds.split(Split::Test).unwrap();
    let b = Loader::new(test.clone(), cfg(10, 16, 1), Mode::Eval).unwrap().next_batch().unwrap().unwrap();
    let Targets::MultiHot(t, k) = &b.targets else { panic!("multi-hot") };
    assert_eq!((*k, t.len()), (5, 50));
    for i in 0..10 {
        let row = &t[i * 5..(i + 1) * 5];
        let want = test.label(i).classes();
        for (c, &v) in row.iter().enumerate() {
            assert_eq!(v == 1.0, want.contains(&(c as u32)));
        }
    }
}

#[test]
fn cifar_cache_is_reused_and_splits_are_held_out() {
    let dir = tempfile::tempdir().unwrap();
    let opts =
        SynthOptions { classes: 10, train_per_class: 8, val_per_class: 2, test_per_class: 2, image_size: 32, seed: 2 };
    make_dataset(SynthKind::Cifar10, &dir.path().join("raw"), &opts).unwrap();
    let s = spec(DatasetFormat::CifarBinary, &dir.path().join("raw"), ValPolicy::HeldOut { fraction: 0.2, seed: 4 });
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let ds = Dataset::open(&s, &dir.path().join("cache"), 256, &|_| {
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })
    .unwrap();
    assert_eq!(ds.len(Split::Train).unwrap(), 80);
    assert_eq!(ds.len(Split::Val).unwrap(), 20);
    assert_eq!(ds.len(Split::TrainVal).unwrap(), 100);
    assert_eq!(ds.len(Split::Test).unwrap(), 20);
    let manifest = ds.manifest().clone();
    let mtime = std::fs::metadata(ds.dir().join("manifest.json")).unwrap().modified().unwrap();
    let again = Dataset::open(&s, &dir.path().join("cache"), 256, &|_| {}).unwrap();
    assert_eq!(again.manifest(), &manifest);
    assert_eq!(std::fs::metadata(again.dir().join("manifest.json")).unwrap().modified().unwrap(), mtime);
    // CIFAR at 224: stored at 32, upsampled by the loader.
    let b = Loader::new(
        ds.split(Split::Train).unwrap(),
        LoaderConfig::for_image_size(4, 224, 0),
        Mode::Train { start_step: 3 },
    )
    .unwrap()
    .next_batch()
    .unwrap()
    .unwrap();
    assert_eq!(b.images.len(), 4 * 224 * 224 * 3);
    assert!(calls.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

#[test]
fn concurrent_cache_builds_agree() {
    let dir = tempfile::tempdir().unwrap();
    let opts =
        SynthOptions { classes: 4, train_per_class: 30, val_per_class: 0, test_per_class: 5, image_size: 48, seed: 5 };
    make_dataset(SynthKind::Imagefolder, &dir.path().join("raw"), &opts).unwrap();
    let s = spec(DatasetFormat::Imagefolder, &dir.path().join("raw"), ValPolicy::HeldOut { fraction: 0.1, seed: 0 });
    let hashes: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    Dataset::open(&s, &dir.path().join("cache"), 32, &|_| {}).unwrap().manifest().content_hash.clone()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(hashes.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn regenerated_data_gets_a_fresh_cache() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("raw");
    let mut opts =
        SynthOptions { classes: 2, train_per_class: 4, val_per_class: 0, test_per_class: 2, image_size: 16, seed: 1 };
    make_dataset(SynthKind::Imagefolder, &raw, &opts).unwrap();
    let s = spec(DatasetFormat::Imagefolder, &raw, ValPolicy::HeldOut { fraction: 0.25, seed: 0 });
    let first = Dataset::open(&s, &dir.path().join("cache"), 16, &|_| {}).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    opts.seed = 2;
    make_dataset(SynthKind::Imagefolder, &raw, &opts).unwrap();
    let second = Dataset::open(&s, &dir.path().join("cache"), 16, &|_| {}).unwrap();
    assert_ne!(first.dir(), second.dir());
    assert_ne!(first.manifest().content_hash, second.manifest().content_hash);
}

/// The synthetic classes are separable by colour alone: a nearest-mean-colour classifier
/// fitted on train scores far above chance on test (a small CNN does better).
#[test]
fn synthetic_classes_are_learnable() {
    let dir = tempfile::tempdir().unwrap();
    let opts =
        SynthOptions { classes: 8, train_per_class: 20, val_per_class: 0, test_per_class: 10, image_size: 32, seed: 4 };
    make_dataset(SynthKind::Imagefolder, &dir.path().join("raw"), &opts).unwrap();
    let ds = Dataset::open(
        &spec(DatasetFormat::Imagefolder, &dir.path().join("raw"), ValPolicy::HeldOut { fraction: 0.0, seed: 0 }),
        &dir.path().join("cache"),
        32,
        &|_| {},
    )
    .unwrap();
    // Feature: mean colour of the pixels that differ from grey.
    let feature = |view: &SplitView, i: usize| -> [f32; 3] {
        let mut buf = Vec::new();
        view.read_into(i, &mut buf).unwrap();
        let mut sum = [0f32; 3];
        let mut n = 0f32;
        for px in buf.chunks(3) {
            let (mx, mn) = (px.iter().max().unwrap(), px.iter().min().unwrap());
            if mx - mn > 40 {
                for c in 0..3 {
                    sum[c] += px[c] as f32;
                }
                n += 1.0;
            }
        }
        sum.map(|v| v / n.max(1.0))
    };
    let train = ds.split(Split::Train).unwrap();
    let mut means = [[0f32; 3]; 8];
    for i in 0..train.len() {
        let f = feature(&train, i);
        let Label::Single(c) = *train.label(i) else { panic!() };
        for k in 0..3 {
            means[c as usize][k] += f[k] / 20.0;
        }
    }
    let test = ds.split(Split::Test).unwrap();
    let correct = (0..test.len())
        .filter(|&i| {
            let f = feature(&test, i);
            let best = (0..8)
                .min_by(|&a, &b| {
                    let d = |m: &[f32; 3]| (0..3).map(|k| (m[k] - f[k]).powi(2)).sum::<f32>();
                    d(&means[a]).total_cmp(&d(&means[b]))
                })
                .unwrap();
            Label::Single(best as u32) == *test.label(i)
        })
        .count();
    assert!(correct as f64 / test.len() as f64 > 0.6, "{correct}/{}", test.len());
}
