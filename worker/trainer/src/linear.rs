//! The `linear` regime: frozen backbone in eval mode, penultimate features extracted once
//! per (weights, dataset, split, preprocessing, precision) and cached under
//! `cache_dir/features` (extracted under autocast for bf16/fp16, stored as f32);
//! L2 logistic regression (see [`crate::lbfgs`] for the objective: `l2` is the
//! coefficient of `(l2/2)||W||^2` added to the mean loss, i.e. scikit-learn's
//! `C = 1 / (l2 * n)`) over the whole `train.l2_path`, from the strongest penalty down,
//! each fit warm-started from the previous one; the value with the best val score is
//! refit on train+val (warm-started from its train solution) and scored on test. One task
//! does all of it, whatever its stage.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};
use tsweep_data::{Dataset, Split};
use tsweep_proto::cell::{CellSpec, ModelSource, Regime};
use tsweep_proto::v1::TaskResult;

use crate::error::{guard_torch, TrainerError};
use crate::eval;
use crate::lbfgs::{fit, LbfgsOptions, Problem};
use crate::metrics::{self, EvalTargets};
use crate::models::{Init, NetConfig, Network};
use crate::precision;
use crate::tensors::{to_vec_f32, Normalizer};
use crate::{device, weights, StepProgress, TrainJob, TrainingEvent};

/// Features and targets of one split.
pub struct Features {
    /// `[n, d]` f32
    pub x: Tensor,
    /// `[n]` i64 labels or `[n, k]` f32 multi-hot
    pub y: Tensor,
}

impl Features {
    fn eval_targets(&self) -> Result<EvalTargets, TrainerError> {
        Ok(if self.y.kind() == Kind::Int64 {
            EvalTargets::Labels(Vec::<i64>::try_from(&self.y.f_to_device(Device::Cpu)?.f_contiguous()?)?)
        } else {
            EvalTargets::MultiHot(to_vec_f32(&self.y)?)
        })
    }
}

/// The identity of a backbone's weights for the feature cache.
fn weights_identity(spec: &CellSpec) -> Result<String, TrainerError> {
    Ok(match &spec.model.weights {
        Some(path) => {
            if !path.is_file() {
                let what =
                    if spec.model.source == ModelSource::Torchscript { "torchscript module" } else { "weights file" };
                return Err(TrainerError::MissingFile { what: what.into(), path: path.clone() });
            }
            weights::file_sha256(path)?
        }
        None => format!("random-init-seed-{}", spec.seed),
    })
}

/// Bumped whenever a backbone's computation or the eval preprocessing changes (v2: tsweep's
/// own inception_v3 with torchvision's input rescale and efficientnet_b0 with torchvision's
/// padding; v3: torchvision's Resize + CenterCrop exactly, with Pillow's resize and
/// whole-pixel crop offsets), so features cached by an older worker are not reused.
const FEATURES_VERSION: u32 = 3;

fn cache_path(job: &TrainJob, ds: &Dataset, split: Split, weights_id: &str) -> PathBuf {
    let spec = &job.spec;
    let mut key = serde_json::json!({
        "v": FEATURES_VERSION, "weights": weights_id, "source": spec.model.source, "arch": spec.model.arch,
        "data": ds.manifest().content_hash, "val": spec.dataset.val, "split": split.name(),
        "size": spec.model.image_size, "resize": eval::resize_short(spec), "normalize": spec.model.normalize,
    });
    // only when not fp32, so fp32 features cached before precision existed are still found
    if !spec.precision.is_fp32() {
        key["precision"] = serde_json::json!(spec.precision);
    }
    let hash = hex::encode(Sha256::digest(key.to_string().as_bytes()));
    job.cache_dir.join("features").join(format!("{}-{}-{}.safetensors", ds.name(), split.name(), &hash[..24]))
}

fn read_cached(path: &Path, device: Device) -> Option<Features> {
    let named = Tensor::read_safetensors(path).ok()?;
    let get = |n: &str| named.iter().find(|(k, _)| k == n).map(|(_, t)| t.shallow_clone());
    Some(Features { x: get("x")?.to_device(device), y: get("y")?.to_device(device) })
}

fn write_cached(path: &Path, f: &Features) -> Result<(), TrainerError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let cpu = [("x", f.x.f_to_device(Device::Cpu)?), ("y", f.y.f_to_device(Device::Cpu)?)];
    Tensor::write_safetensors(&cpu, &tmp)
        .map_err(|e| TrainerError::Torch { during: format!("writing {}", tmp.display()), detail: e.to_string() })?;
    std::fs::rename(&tmp, path).map_err(|e| TrainerError::io(path, e))?;
    Ok(())
}

/// Extracts (or reads from the cache) the features of one split.
pub fn features(
    job: &TrainJob,
    net: &mut Option<Network>,
    build: &dyn Fn() -> Result<Network, TrainerError>,
    ds: &Dataset,
    split: Split,
    weights_id: &str,
    device: Device,
) -> Result<Features, TrainerError> {
    let path = cache_path(job, ds, split, weights_id);
    if let Some(f) = read_cached(&path, device) {
        tracing::info!(path = %path.display(), split = split.name(), "features from cache");
        return Ok(f);
    }
    if net.is_none() {
        *net = Some(build()?);
    }
    let Some(network) = net.as_mut() else { return Err(TrainerError::InvalidCell("no network".into())) };
    network.set_train(false)?;
    let view = eval::split(ds, split)?;
    let mut loader = eval::eval_loader(view, &job.spec)?;
    let norm = Normalizer::new(device, &job.spec.model.normalize)?;
    let mut xs = Vec::new();
    let mut targets = None;
    let dev_name = device::name(device);
    let batch_size = job.spec.train.batch_size as usize;
    // one autocast region for the whole split: the frozen weights are cast once
    precision::autocast(job.spec.precision, device, || -> Result<(), TrainerError> {
        while let Some(batch) = loader.next_batch().map_err(|e| TrainerError::data(ds.name(), e))? {
            let f = guard_torch("feature extraction", &dev_name, batch_size, || {
                let x = norm.images(&batch)?;
                tch::no_grad(|| network.features(&x, false))
            })?;
            xs.push(f.f_to_kind(Kind::Float)?);
            eval::push_targets(&mut targets, &batch.targets);
        }
        Ok(())
    })?;
    let x = Tensor::f_cat(&xs, 0)?;
    let y = match targets {
        Some(EvalTargets::Labels(y)) => Tensor::from_slice(&y),
        Some(EvalTargets::MultiHot(t)) => Tensor::from_slice(&t).f_view([x.size()[0], ds.num_classes() as i64])?,
        None => return Err(TrainerError::InvalidCell(format!("split {} is empty", split.name()))),
    }
    .f_to_device(device)?;
    let f = Features { x, y };
    write_cached(&path, &f)?;
    tracing::info!(path = %path.display(), split = split.name(), rows = f.x.size()[0], "features extracted");
    Ok(f)
}

pub fn run(
    job: &TrainJob,
    device: Device,
    events: &mut dyn FnMut(TrainingEvent),
    stop: &AtomicBool,
) -> Result<TaskResult, TrainerError> {
    let started = Instant::now();
    let spec = &job.spec;
    debug_assert_eq!(spec.regime, Regime::Linear);
    if spec.train.l2_path.is_empty() || spec.train.l2_path.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return Err(TrainerError::InvalidCell("train.l2_path must be non-empty, finite and >= 0".into()));
    }
    let ds = eval::open_dataset(spec, &job.cache_dir)?;
    let k = ds.num_classes() as i64;
    let weights_id = weights_identity(spec)?;
    let backbone_top1 = weights::backbone_top1(spec)?;
    events(TrainingEvent::Started { resumed_from_step: 0 });
    let model = spec.model.clone();
    let init = match &model.weights {
        Some(p) => Init::Pretrained(p.clone()),
        None => Init::Random,
    };
    let build = || {
        tch::manual_seed(spec.seed as i64);
        guard_torch("building the model", &device::name(device), 1, || {
            Network::build(&model, &init, k, device, NetConfig { bn_momentum: 0.1 })
        })
    };
    let mut net = None;
    let extract_started = Instant::now();
    let train = features(job, &mut net, &build, &ds, Split::Train, &weights_id, device)?;
    let val = features(job, &mut net, &build, &ds, Split::Val, &weights_id, device)?;
    let test = features(job, &mut net, &build, &ds, Split::Test, &weights_id, device)?;
    drop(net);
    let extract_secs = extract_started.elapsed().as_secs_f64();

    let path_started = Instant::now();
    let opts = LbfgsOptions { max_iter: spec.train.lbfgs_max_iter.max(1), ..Default::default() };
    let mut l2s = spec.train.l2_path.clone();
    l2s.sort_by(|a, b| b.total_cmp(a)); // strongest penalty first: each solution warm-starts the next
    let problem = Problem::new(&train.x, &train.y, k)?;
    let val_targets = val.eval_targets()?;
    let mut theta = problem.zeros()?;
    let mut best: Option<(f64, f64, Tensor)> = None; // (val score, l2, theta)
    let mut iterations = 0u64;
    let total = l2s.len() as u64 + 1;
    for (i, &l2) in l2s.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            return Err(TrainerError::Preempted { step: i as u64, checkpoint: None });
        }
        let t0 = Instant::now();
        let report = fit(&problem, &mut theta, l2, opts)?;
        iterations += u64::from(report.iterations);
        let scores = to_vec_f32(&problem.scores(&val.x, &theta)?)?;
        let score = metrics::score(spec.dataset.metric, &scores, k as usize, &val_targets);
        tracing::debug!(l2, score, iterations = report.iterations, value = report.value, "path point");
        events(TrainingEvent::Progress(StepProgress {
            step: i as u64 + 1,
            total_steps: total,
            loss: report.value,
            lr: l2,
            images_per_s: train.x.size()[0] as f64 * f64::from(report.evaluations)
                / t0.elapsed().as_secs_f64().max(1e-9),
            val_score: Some(score),
        }));
        // ties go to the stronger penalty (seen first)
        if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
            best = Some((score, l2, theta.f_detach()?.f_contiguous()?.copy()));
        }
    }
    let Some((val_score, best_l2, best_theta)) = best else {
        return Err(TrainerError::InvalidCell("empty l2 path".into()));
    };
    let path_secs = path_started.elapsed().as_secs_f64();

    // refit on train+val at the selected value
    let x_tv = Tensor::f_cat(&[&train.x, &val.x], 0)?;
    let y_tv = Tensor::f_cat(&[&train.y, &val.y], 0)?;
    let refit_problem = Problem::new(&x_tv, &y_tv, k)?;
    let mut theta = best_theta;
    let refit = fit(&refit_problem, &mut theta, best_l2, opts)?;
    iterations += u64::from(refit.iterations);
    let test_scores = to_vec_f32(&refit_problem.scores(&test.x, &theta)?)?;
    let test_score = metrics::score(spec.dataset.metric, &test_scores, k as usize, &test.eval_targets()?);
    events(TrainingEvent::Progress(StepProgress {
        step: total,
        total_steps: total,
        loss: refit.value,
        lr: best_l2,
        images_per_s: 0.0,
        val_score: Some(val_score),
    }));
    let n_tv = x_tv.size()[0] as f64;
    let mut selected = HashMap::new();
    selected.insert("l2".to_string(), best_l2);
    let mut extra = HashMap::new();
    extra.insert("sklearn_c".to_string(), if best_l2 > 0.0 { 1.0 / (best_l2 * n_tv) } else { f64::INFINITY });
    extra.insert("feature_seconds".to_string(), extract_secs);
    extra.insert("path_seconds".to_string(), path_secs);
    extra.insert("feature_dim".to_string(), train.x.size()[1] as f64);
    extra.insert("refit_converged".to_string(), if refit.converged { 1.0 } else { 0.0 });
    let diverged = !refit.value.is_finite();
    Ok(TaskResult {
        metric: spec.dataset.metric.into(),
        val_score: Some(val_score),
        test_score: Some(test_score),
        train_loss: Some(refit.value),
        diverged,
        steps: iterations,
        images_per_s: 0.0,
        duration_s: started.elapsed().as_secs_f64(),
        selected,
        extra,
        resumed_from_step: 0,
        backbone_top1,
    })
}
