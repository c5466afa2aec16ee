//! Shared by the trainer's integration tests: a tiny generated ImageFolder dataset, cell
//! specs for it, and the reference python that the PyTorch comparisons run.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use rand::{Rng, SeedableRng};
use tsweep_proto::cell::*;
use tsweep_trainer::{run_task, TaskResult, TrainJob, TrainerError, TrainingEvent};

pub const CLASSES: usize = 4;

/// 32x32 PNGs: class c is a square of colour c at a random place on a noisy background.
pub fn make_imagefolder(root: &Path, train_per_class: usize, test_per_class: usize, seed: u64) {
    let colours: [[u8; 3]; CLASSES] = [[220, 40, 40], [40, 200, 40], [40, 60, 220], [220, 210, 40]];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for (split, n) in [("train", train_per_class), ("test", test_per_class)] {
        for (c, colour) in colours.iter().enumerate() {
            let dir = root.join(split).join(format!("class{c}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let mut img = image::RgbImage::new(32, 32);
                for p in img.pixels_mut() {
                    let g: u8 = rng.random_range(60..160);
                    *p = image::Rgb([g, g, g]);
                }
                let side = rng.random_range(10..18);
                let (x0, y0) = (rng.random_range(0..32 - side), rng.random_range(0..32 - side));
                for y in y0..y0 + side {
                    for x in x0..x0 + side {
                        img.put_pixel(x, y, image::Rgb(*colour));
                    }
                }
                img.save(dir.join(format!("{i:03}.png"))).unwrap();
            }
        }
    }
}

pub fn cell(regime: Regime, data: &Path, arch: &str, weights: Option<PathBuf>) -> CellSpec {
    let mut hparams = BTreeMap::new();
    if regime != Regime::Linear {
        hparams.insert("lr".to_string(), 0.05);
        hparams.insert("weight_decay".to_string(), 1e-5);
    }
    CellSpec {
        sweep: "trainer-test".into(),
        stage: Stage::Grid,
        regime,
        model: ModelSpec {
            name: arch.into(),
            source: ModelSource::Builtin,
            arch: arch.into(),
            weights,
            imagenet_top1: None,
            image_size: 32,
            pretrained: None,
            normalize: tsweep_proto::arch::Normalize::default_for(arch, true),
        },
        dataset: DatasetSpec {
            name: "colours".into(),
            format: DatasetFormat::Imagefolder,
            path: data.to_path_buf(),
            metric: Metric::Top1,
            val: ValPolicy::HeldOut { fraction: 0.2, seed: 3 },
            num_classes: Some(CLASSES as u32),
        },
        hparams,
        train: TrainSettings {
            steps: 40,
            batch_size: 16,
            checkpoint_every: 0,
            eval_resize: Some(32),
            loader_threads: 1,
            l2_path: vec![1e-4, 1e-3, 1e-2, 1e-1, 1.0],
            lbfgs_max_iter: 200,
            ..TrainSettings::defaults_for(regime)
        },
        seed: 7,
        precision: Default::default(),
        gpus: 0,
        max_attempts: 3,
        fake: None,
    }
}

pub fn job(spec: CellSpec, work: &Path, name: &str) -> TrainJob {
    TrainJob {
        spec,
        resume: None,
        checkpoint_dir: work.join("ckpt").join(name),
        cache_dir: work.join("cache"),
        device: tsweep_proto::cell::Device::Cpu,
        pretrained_out: None,
    }
}

pub fn run(job: &TrainJob) -> (Result<TaskResult, TrainerError>, Vec<TrainingEvent>) {
    tch::set_num_threads(2);
    let stop = AtomicBool::new(false);
    let mut events = Vec::new();
    let r = run_task(job, &mut |e| events.push(e), &stop);
    (r, events)
}

/// Multi-label list format: each 32x32 PNG holds one or two squares of different class
/// colours; its labels are the colours present. Official val split (`val.txt`).
pub fn make_multilabel(root: &Path, per_split: [usize; 3], seed: u64) {
    let colours: [[u8; 3]; CLASSES] = [[220, 40, 40], [40, 200, 40], [40, 60, 220], [220, 210, 40]];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    std::fs::create_dir_all(root.join("img")).unwrap();
    let names: Vec<String> = (0..CLASSES).map(|c| format!("class{c}")).collect();
    std::fs::write(root.join("classes.txt"), names.join("\n")).unwrap();
    for (split, n) in ["train", "val", "test"].iter().zip(per_split) {
        let mut lines = Vec::new();
        for i in 0..n {
            let mut img = image::RgbImage::new(32, 32);
            for p in img.pixels_mut() {
                let g: u8 = rng.random_range(60..160);
                *p = image::Rgb([g, g, g]);
            }
            let first = rng.random_range(0..CLASSES);
            let mut present = vec![first];
            if rng.random_bool(0.5) {
                present.push((first + rng.random_range(1..CLASSES)) % CLASSES);
            }
            for (j, &c) in present.iter().enumerate() {
                let (x0, y0) = (rng.random_range(0..8) + 16 * j as u32, rng.random_range(0..20));
                for y in y0..y0 + 12 {
                    for x in x0..(x0 + 12).min(32) {
                        img.put_pixel(x, y, image::Rgb(colours[c]));
                    }
                }
            }
            let rel = format!("img/{split}{i:03}.png");
            img.save(root.join(&rel)).unwrap();
            present.sort_unstable();
            let labels: Vec<&str> = present.iter().map(|&c| names[c].as_str()).collect();
            lines.push(format!("{rel} {}", labels.join(",")));
        }
        std::fs::write(root.join(format!("{split}.txt")), lines.join("\n")).unwrap();
    }
}

/// `python3` on PATH when it can import every one of `modules` (scripts/setup.sh installs
/// them into the venv that scripts/env.sh puts first on PATH). Without it the test cannot
/// compare with PyTorch: under CI (`CI=true`) that fails the test, so a missing reference
/// tool never passes as a skip; elsewhere the test says SKIPPED on stderr and returns.
pub fn reference_python(modules: &[&str]) -> Option<&'static str> {
    let import = format!("import {}", modules.join(", "));
    let problem = match Command::new("python3").args(["-c", &import]).output() {
        Ok(out) if out.status.success() => return Some("python3"),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            format!("python3 cannot `{import}` ({})", stderr.lines().last().unwrap_or("no message"))
        }
        Err(e) => format!("python3 is not on PATH ({e})"),
    };
    let hint = "run scripts/setup.sh, then source scripts/env.sh";
    tsweep_proto::testing::skip_unless_ci(&format!("{problem}; {hint}"));
    None
}

/// Runs `python3 ARGS`, panicking with its stderr unless it succeeds; returns stdout.
pub fn python(python: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(python).args(args).output().unwrap_or_else(|e| panic!("{python}: {e}"));
    assert!(out.status.success(), "{python} {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// tools/ of the repository.
pub fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools")
}
