//! trainer-bench: throughput figures for BENCHMARKS.md ("Trainer").
//!
//! `trainer-bench train --model resnet50 --batch 16 --size 224 --threads 2 [--data DIR | --synthetic] [--device cuda:0]
//!                     [--precision fp32|bf16|fp16] [--layout auto|channels-last|contiguous] [--features]`
//!   images/s of training steps (forward, backward, SGD Nesterov update), end to end from
//!   images on disk through tsweep-data's loader (`--data`: an ImageFolder, generated if
//!   empty), or on one random batch reused every step (`--synthetic`, what
//!   shared/bench/train_step.py measures). `--precision` runs the step as the finetune
//!   loop does in that precision (autocast; fp16 with loss scaling), `--layout` overrides
//!   the backbone's memory layout (auto: channels-last on the CPU, contiguous on CUDA),
//!   `--features` times feature extraction instead (eval mode, no grad, one autocast
//!   region, as the linear regime extracts). Prints one JSON line.
//! `trainer-bench linear --features FILE.safetensors --l2 1e-4,1e-3,...`
//!   times the linear regime's L2 path (warm-started L-BFGS) on features written by
//!   worker/trainer/bench/linear_path.py (which times scikit-learn on the same data).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tch::{Device, Kind, Tensor};
use tsweep_data::{Dataset, Loader, LoaderConfig, Mode, Split};
use tsweep_proto::cell::{DatasetFormat, DatasetSpec, Metric, ModelSource, ModelSpec, Precision, ValPolicy};
use tsweep_trainer::lbfgs::{fit, LbfgsOptions, Problem};
use tsweep_trainer::models::{Init, NetConfig, Network};
use tsweep_trainer::precision::{self, GradScaler};
use tsweep_trainer::sgd::Sgd;
use tsweep_trainer::tensors::{loss, Normalizer};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Train {
        #[arg(long, default_value = "resnet18")]
        model: String,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[arg(long, default_value_t = 224)]
        size: u32,
        #[arg(long, default_value_t = 2)]
        threads: i32,
        #[arg(long, default_value_t = 3)]
        warmup: u64,
        #[arg(long, default_value_t = 10)]
        steps: u64,
        #[arg(long, default_value_t = 1000)]
        classes: i64,
        /// ImageFolder to read (generated here if it does not exist).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Reuse one random batch (no data loading), like shared/bench/train_step.py.
        #[arg(long)]
        synthetic: bool,
        #[arg(long, default_value = "cpu")]
        device: tsweep_proto::cell::Device,
        /// Loader threads (0: every core).
        #[arg(long, default_value_t = 2)]
        loader_threads: usize,
        /// fp32, bf16 or fp16 (as the cell's `precision`).
        #[arg(long, default_value = "fp32")]
        precision: Precision,
        /// auto (the trainer's choice), channels-last or contiguous.
        #[arg(long, default_value = "auto")]
        layout: Layout,
        /// Time feature extraction (eval mode, no grad) instead of training steps.
        #[arg(long)]
        features: bool,
    },
    Linear {
        #[arg(long)]
        features: PathBuf,
        /// Comma-separated L2 values (the `l2` of the trainer's objective).
        #[arg(long, value_delimiter = ',')]
        l2: Vec<f64>,
        #[arg(long, default_value_t = 2)]
        threads: i32,
        #[arg(long, default_value_t = 1000)]
        max_iter: u32,
        #[arg(long, default_value = "cpu")]
        device: tsweep_proto::cell::Device,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Layout {
    Auto,
    ChannelsLast,
    Contiguous,
}

/// What one `train` run measures.
struct Run {
    precision: Precision,
    layout: Layout,
    features: bool,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Train {
            model,
            batch,
            size,
            threads,
            warmup,
            steps,
            classes,
            data,
            synthetic,
            device,
            loader_threads,
            precision,
            layout,
            features,
        } => {
            tch::set_num_threads(threads);
            let device = tsweep_trainer::device::resolve(device)?;
            precision::check(precision, device)?;
            let run = Run { precision, layout, features };
            train(&model, batch, size, warmup, steps, classes, data.as_deref(), synthetic, device, loader_threads, &run)
        }
        Command::Linear { features, l2, threads, max_iter, device } => {
            tch::set_num_threads(threads);
            let device = tsweep_trainer::device::resolve(device)?;
            linear(&features, &l2, max_iter, device)
        }
    }
}

/// `n` 256x256 JPEGs in `classes` folders: smooth colour fields (decode cost like photos).
fn make_folder(root: &Path, n: usize, classes: usize) -> Result<()> {
    for i in 0..n {
        let c = i % classes;
        let dir = root.join("train").join(format!("c{c:04}"));
        std::fs::create_dir_all(&dir)?;
        let img = image::RgbImage::from_fn(256, 256, |x, y| {
            image::Rgb([(x as usize + 7 * i) as u8, (y as usize + 3 * c) as u8, ((x ^ y) as usize + i) as u8])
        });
        img.save(dir.join(format!("{i:05}.jpg")))?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn train(
    arch: &str,
    batch: usize,
    size: u32,
    warmup: u64,
    steps: u64,
    classes: i64,
    data: Option<&Path>,
    synthetic: bool,
    device: Device,
    loader_threads: usize,
    run: &Run,
) -> Result<()> {
    tch::manual_seed(0);
    let spec = ModelSpec {
        name: arch.into(),
        source: ModelSource::Builtin,
        arch: arch.into(),
        weights: None,
        imagenet_top1: None,
        image_size: size,
        pretrained: None,
        normalize: tsweep_proto::arch::Normalize::default_for(arch, true),
    };
    let mut net = Network::build(&spec, &Init::Random, classes, device, NetConfig { bn_momentum: 0.1 })?;
    match run.layout {
        Layout::Auto => {}
        Layout::ChannelsLast => net.set_channels_last(true)?,
        Layout::Contiguous => net.set_channels_last(false)?,
    }
    let mut sgd = Sgd::new(net.trainable(), 0.9, true, 0.0)?;
    let mut scaler = GradScaler::for_precision(run.precision, device)?;
    let (prec, train_mode) = (run.precision, !run.features);
    let norm = Normalizer::new(device, &spec.normalize)?;
    let mut loader = None;
    let fixed = if synthetic || data.is_none() {
        let x = Tensor::randn([batch as i64, 3, size as i64, size as i64], (Kind::Float, device));
        // laid out as the backbone runs, once (the PyTorch references do the same)
        let x = if net.is_channels_last() { tsweep_trainer::models::to_channels_last(&x)? } else { x };
        let y = Tensor::randint(classes, [batch as i64], (Kind::Int64, device));
        Some((x, y))
    } else {
        let root = data.context("--data")?;
        if !root.join("train").is_dir() {
            eprintln!("generating {} ...", root.display());
            make_folder(root, 512, 16)?;
        }
        let ds_spec = DatasetSpec {
            name: "bench".into(),
            format: DatasetFormat::Imagefolder,
            path: root.to_path_buf(),
            metric: Metric::Top1,
            val: ValPolicy::HeldOut { fraction: 0.0, seed: 0 },
            num_classes: None,
        };
        let ds = Dataset::open(&ds_spec, &root.join(".cache"), tsweep_data::default_resize_short(size), &|_| {})?;
        let cfg = LoaderConfig {
            batch_size: batch,
            image_size: size,
            resize_short: tsweep_data::default_resize_short(size),
            seed: 0,
            threads: loader_threads,
            prefetch: 2 * loader_threads.max(1),
        };
        loader = Some(Loader::new(ds.split(Split::Train)?, cfg, Mode::Train { start_step: 0 })?);
        None
    };
    let mut one = |loader: &mut Option<Loader>| -> Result<Tensor> {
        let (x, y) = match (&fixed, loader.as_mut()) {
            (Some((x, y)), _) => (x.shallow_clone(), y.shallow_clone()),
            (None, Some(l)) => {
                let b = l.next_batch()?.context("loader ended")?;
                (norm.images(&b)?, norm.targets(&b)?)
            }
            (None, None) => bail!("no input"),
        };
        if !train_mode {
            // the features' sum, so that reading it waits for the whole forward pass
            let f = tch::no_grad(|| net.features(&x, false))?;
            return Ok(f.sum(Kind::Float));
        }
        // the finetune loop's step (worker/trainer/src/finetune.rs)
        let l = precision::autocast(prec, device, || loss(&net.forward(&x, true)?.to_kind(Kind::Float), &y))?;
        sgd.zero_grad();
        match scaler.as_mut() {
            Some(s) => {
                s.scale_loss(&l)?.backward();
                let _skipped = sgd.step_scaled(0.01, s)?;
            }
            None => {
                l.backward();
                sgd.step(0.01)?;
            }
        }
        Ok(l)
    };
    // Synthetic runs read the loss every step, as the PyTorch reference does; loader runs
    // read it at the end, as the finetune loop reads it every few dozen steps.
    let read_each_step = fixed.is_some();
    // Feature extraction runs in one autocast region (the weights are cast once, as in the
    // linear regime); training steps open their own region around forward and loss.
    let region = if train_mode { Precision::Fp32 } else { prec };
    let (step_s, total, last) = precision::autocast(region, device, || -> Result<(Vec<f64>, f64, f64)> {
        for _ in 0..warmup {
            one(&mut loader)?.double_value(&[]);
        }
        let mut step_s = Vec::new();
        let t_all = Instant::now();
        let mut last = None;
        for _ in 0..steps {
            let t = Instant::now();
            let l = one(&mut loader)?;
            if read_each_step {
                l.double_value(&[]);
            }
            last = Some(l);
            step_s.push(t.elapsed().as_secs_f64());
        }
        let last = last.map_or(f64::NAN, |l| l.double_value(&[]));
        Ok((step_s, t_all.elapsed().as_secs_f64(), last))
    })?;
    let mut step_s = step_s;
    step_s.sort_by(f64::total_cmp);
    let med = step_s.get(step_s.len() / 2).copied().unwrap_or(f64::NAN);
    let mode = match (train_mode, fixed.is_some()) {
        (true, true) => "train-synthetic",
        (true, false) => "train-loader",
        (false, true) => "features-synthetic",
        (false, false) => "features-loader",
    };
    let layout = if net.is_channels_last() { "channels-last" } else { "contiguous" };
    println!(
        "{}",
        serde_json::json!({
            "impl": "tsweep", "model": arch, "mode": mode, "precision": prec.name(), "layout": layout,
            "batch": batch, "size": size, "threads": tch::get_num_threads(), "device": tsweep_trainer::device::name(device),
            "steps": steps, "seconds": total, "img_s": (batch as f64 * steps as f64 / total * 1000.0).round() / 1000.0,
            "img_s_median_step": (batch as f64 / med * 1000.0).round() / 1000.0, "last": last,
        })
    );
    Ok(())
}

fn linear(features: &Path, l2s: &[f64], max_iter: u32, device: Device) -> Result<()> {
    let named = Tensor::read_safetensors(features).with_context(|| features.display().to_string())?;
    let get = |n: &str| -> Result<Tensor> {
        Ok(named
            .iter()
            .find(|(k, _)| k == n)
            .with_context(|| format!("{n} in {}", features.display()))?
            .1
            .to_device(device))
    };
    let (x, y) = (get("x")?.to_kind(Kind::Float), get("y")?.to_kind(Kind::Int64));
    let k = i64::try_from(y.max())? + 1;
    let problem = Problem::new(&x, &y, k)?;
    let mut l2s = l2s.to_vec();
    l2s.sort_by(|a, b| b.total_cmp(a));
    let opts = LbfgsOptions { max_iter, ..Default::default() };
    let mut theta = problem.zeros()?;
    let t_all = Instant::now();
    let mut points = Vec::new();
    for &l2 in &l2s {
        let t = Instant::now();
        let r = fit(&problem, &mut theta, l2, opts)?;
        let pred = problem.scores(&x, &theta)?.argmax(1, false);
        let acc = f64::try_from(pred.eq_tensor(&y).to_kind(Kind::Float).mean(Kind::Float))?;
        points.push(serde_json::json!({"l2": l2, "seconds": t.elapsed().as_secs_f64(), "J": r.value,
            "iters": r.iterations, "evals": r.evaluations, "grad_max": r.grad_max, "converged": r.converged, "train_acc": acc}));
    }
    let total = t_all.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"impl": "tsweep-lbfgs-path", "seconds": total, "points": points,
        "threads": tch::get_num_threads(), "device": tsweep_trainer::device::name(device)})
    );
    Ok(())
}
