//! The `finetune` and `scratch` regimes: SGD (Nesterov) with cosine decay over
//! `train.steps` steps of `train.batch_size`, BatchNorm in train mode with momentum
//! min(10/s, 0.1), checkpoints every `train.checkpoint_every` steps and on stop. The
//! forward pass and the loss run in the cell's precision (`precision`): autocast for bf16
//! and fp16, with dynamic loss scaling for fp16.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tch::{Device, Kind, Tensor};
use tsweep_data::{steps_per_epoch, Loader, LoaderConfig, Mode};
use tsweep_proto::cell::{CellSpec, Regime, Regularizers};
use tsweep_proto::v1::TaskResult;

use crate::error::{guard_torch, TrainerError};
use crate::eval;
use crate::models::{Init, NetConfig, Network};
use crate::precision::{self, GradScaler};
use crate::sgd::Sgd;
use crate::tensors::{smoothed_loss, Normalizer};
use crate::{cell_fingerprint, checkpoint, device, weights, StepProgress, TrainJob, TrainingEvent};

/// The BatchNorm momentum of a cell: the setting, else min(10 / steps_per_epoch, 0.1).
pub fn bn_momentum(spec: &CellSpec, train_images: usize) -> f64 {
    spec.train.bn_momentum.unwrap_or_else(|| {
        let s = steps_per_epoch(train_images, spec.train.batch_size.max(1) as usize).max(1);
        (10.0 / s as f64).min(0.1)
    })
}

fn hparam(spec: &CellSpec, key: &str) -> Result<f64, TrainerError> {
    let v = spec
        .hparams
        .get(key)
        .copied()
        .ok_or_else(|| TrainerError::InvalidCell(format!("{} regime needs hparams.{key}", spec.regime.name())))?;
    if !v.is_finite() || v < 0.0 {
        return Err(TrainerError::InvalidCell(format!("hparams.{key} = {v} must be finite and >= 0")));
    }
    Ok(v)
}

/// The loss of one training batch: cross-entropy with `label_smoothing` on the head's logits
/// (dropout before the head), plus `aux_weight` times the same loss on the auxiliary
/// classifier's logits where the network trains one (torchvision's Inception recipe:
/// `loss + 0.4 * aux_loss`). Losses are computed on f32 logits.
pub fn training_loss(
    net: &Network,
    x: &Tensor,
    y: &Tensor,
    regularizers: &Regularizers,
) -> Result<Tensor, TrainerError> {
    let (logits, aux) = net.forward_train(x, regularizers.dropout)?;
    let loss = smoothed_loss(&logits.f_to_kind(Kind::Float)?, y, regularizers.label_smoothing)?;
    match aux {
        Some(aux) if regularizers.aux_weight > 0.0 => {
            let aux_loss = smoothed_loss(&aux.f_to_kind(Kind::Float)?, y, regularizers.label_smoothing)?;
            Ok(loss.f_add(&aux_loss.f_mul_scalar(regularizers.aux_weight)?)?)
        }
        _ => Ok(loss),
    }
}

/// Seed of the torch generator at a step (dropout): a function of (seed, step) only.
fn step_seed(seed: u64, step: u64) -> i64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

pub fn run(
    job: &TrainJob,
    device: Device,
    events: &mut dyn FnMut(TrainingEvent),
    stop: &AtomicBool,
) -> Result<TaskResult, TrainerError> {
    let started = Instant::now();
    let spec = &job.spec;
    let lr = hparam(spec, "lr")?;
    let wd = spec.hparams.get("weight_decay").copied().unwrap_or(0.0);
    if lr <= 0.0 {
        return Err(TrainerError::InvalidCell(format!("hparams.lr = {lr} must be > 0")));
    }
    if spec.train.steps == 0 || spec.train.batch_size == 0 {
        return Err(TrainerError::InvalidCell("train.steps and train.batch_size must be > 0".into()));
    }
    let regularizers = Regularizers::from_hparams(&spec.hparams).map_err(TrainerError::InvalidCell)?;
    let batch_size = spec.train.batch_size as usize;
    let dev_name = device::name(device);
    let ds = eval::open_dataset(spec, &job.cache_dir)?;
    let (train_split, val_split, test_split) = eval::stage_splits(spec);
    let train_view = eval::split(&ds, train_split)?;
    let num_classes = ds.num_classes() as i64;
    let cfg = NetConfig { bn_momentum: bn_momentum(spec, train_view.len()) };
    let fingerprint = cell_fingerprint(spec);
    let backbone_top1 = weights::backbone_top1(spec)?;

    // Resume: a checkpoint that has gone missing restarts the cell (the cell is still
    // correct, only slower); one of another cell is fatal.
    let resume = match &job.resume {
        Some(r) if Path::new(&r.path).is_file() => Some(r.clone()),
        Some(r) => {
            tracing::warn!(path = %r.path, step = r.step, "checkpoint to resume from is missing: starting from step 0");
            None
        }
        None => None,
    };
    let mut model = spec.model.clone();
    if let Some(r) = &resume {
        let script = checkpoint::script_path(Path::new(&r.path));
        if script.is_file() {
            model.weights = Some(script);
        }
    }
    let init = match (spec.regime, &model.weights) {
        (Regime::Scratch, _) | (_, None) => Init::Random,
        (_, Some(path)) => Init::Pretrained(path.clone()),
    };
    tch::manual_seed(spec.seed as i64);
    let mut net = guard_torch("building the model", &dev_name, batch_size, || {
        let net = Network::build(&model, &init, num_classes, device, cfg)?;
        if regularizers.aux_weight > 0.0 {
            return net.with_aux_head(cfg).map_err(|e| match e {
                TrainerError::InvalidCell(why) => TrainerError::InvalidCell(format!(
                    "hparams.{} = {}: {why}",
                    Regularizers::AUX_HEAD,
                    regularizers.aux_weight
                )),
                other => other,
            });
        }
        Ok(net)
    })?;
    if !regularizers.bn_scale {
        let fixed = net.fix_bn_scale()?;
        tracing::info!(fixed, "BatchNorm scales fixed at 1");
    }
    let mut sgd = Sgd::new(net.trainable(), spec.train.momentum, spec.train.nesterov, wd / lr)?;
    let mut scaler = GradScaler::for_precision(spec.precision, device)?;
    let mut start_step = 0;
    if let Some(r) = &resume {
        let loaded = checkpoint::read(Path::new(&r.path), &fingerprint)?;
        loaded.restore(Path::new(&r.path), &net, &mut sgd, scaler.as_mut())?;
        start_step = loaded.step;
    }
    net.set_train(true)?;
    events(TrainingEvent::Started { resumed_from_step: start_step });
    tracing::info!(
        arch = %net.arch, classes = num_classes, train_images = train_view.len(), bn_momentum = cfg.bn_momentum,
        lr, wd, start_step, steps = spec.train.steps, precision = spec.precision.name(), "training"
    );

    let total = spec.train.steps;
    let loader_cfg = LoaderConfig {
        batch_size,
        image_size: spec.model.image_size,
        resize_short: eval::resize_short(spec),
        seed: spec.seed,
        threads: spec.train.loader_threads as usize,
        prefetch: 2 * spec.train.loader_threads.max(1) as usize,
    };
    let norm = Normalizer::new(device, &spec.model.normalize)?;
    let mut loader = Loader::new(train_view, loader_cfg, Mode::Train { start_step })
        .map_err(|e| TrainerError::data(ds.name(), e))?;
    let report_every = (total / 100).clamp(1, 50);
    let mut last_loss = f64::NAN;
    let mut window_start = Instant::now();
    let mut window_images = 0usize;
    let mut train_images = 0usize;
    let train_started = Instant::now();
    // A diverged run (a loss that is not finite, or fp16 gradients that overflow step after
    // step) is a result at chance level, not an error.
    let diverged = |step: u64, train_images: usize, (loss, why): (f64, &str)| {
        tracing::warn!(step, loss, "{why}: the run diverged");
        let chance = eval::chance(spec, &ds);
        let mut result = base_result(spec, step, started, train_images, train_started);
        result.diverged = true;
        result.backbone_top1 = backbone_top1;
        result.train_loss = Some(loss);
        result.val_score = val_split.map(|_| chance);
        result.test_score = Some(chance);
        result.resumed_from_step = start_step;
        result
    };
    // Losses (and fp16's skipped-step flags) stay on the device until read: every
    // `report_every` steps and before an eval, a checkpoint, a stop and the end. Reading one
    // waits for the device, so reading every step would idle a GPU while the next step is
    // launched.
    let mut log = StepLog::default();
    let mut step = start_step;
    while step < total {
        if stop.load(Ordering::Relaxed) {
            if let Some(why) = log.read(scaler.as_mut())? {
                let result = diverged(step, train_images, why);
                hand_on(job, &net, &result)?;
                return Ok(result);
            }
            let path = checkpoint::save(&job.checkpoint_dir, step, &fingerprint, &net, &sgd, scaler.as_ref())?;
            events(TrainingEvent::Checkpoint { path: path.clone(), step });
            return Err(TrainerError::Preempted { step, checkpoint: Some(path) });
        }
        let batch = loader.next_batch().map_err(|e| TrainerError::data(ds.name(), e))?.ok_or_else(|| {
            TrainerError::data(ds.name(), tsweep_data::DataError::LoaderStopped("training loader ended".into()))
        })?;
        let rate = spec.train.schedule.learning_rate(lr, step, total);
        let (loss, skipped) = guard_torch("a training step", &dev_name, batch_size, || {
            tch::manual_seed(step_seed(spec.seed, step));
            let x = norm.images(&batch)?;
            let y = norm.targets(&batch)?;
            // autocast covers the forward pass and the loss (on f32 logits, as autocast's
            // own policy computes losses); backward runs outside it
            let loss = precision::autocast(spec.precision, device, || training_loss(&net, &x, &y, &regularizers))?;
            sgd.zero_grad();
            let skipped = match scaler.as_mut() {
                Some(scaler) => {
                    scaler.scale_loss(&loss)?.f_backward()?;
                    Some(sgd.step_scaled(rate, scaler)?)
                }
                None => {
                    loss.f_backward()?;
                    sgd.step(rate)?;
                    None
                }
            };
            Ok((loss.f_detach()?, skipped))
        })?;
        log.push(loss, skipped);
        step += 1;
        train_images += batch.batch_size;
        window_images += batch.batch_size;
        let eval_now = spec.train.eval_every > 0 && step % spec.train.eval_every == 0 && step < total;
        let checkpoint_now = spec.train.checkpoint_every > 0 && step % spec.train.checkpoint_every == 0 && step < total;
        if step % report_every != 0 && step != total && !eval_now && !checkpoint_now {
            continue;
        }
        let read = guard_torch("reading the losses", &dev_name, batch_size, || log.read(scaler.as_mut()))?;
        if let Some(why) = read {
            let result = diverged(step, train_images, why);
            hand_on(job, &net, &result)?;
            return Ok(result);
        }
        last_loss = log.recent.last().copied().unwrap_or(last_loss);
        if let Some(scaler) = &scaler {
            tracing::debug!(step, skipped_steps = scaler.skipped_steps, "fp16 loss scaling");
        }
        let val_score = match (eval_now, val_split) {
            (true, Some(v)) => Some(eval::score_split(&mut net, &ds, v, spec, device)?.0),
            _ => None,
        };
        let secs = window_start.elapsed().as_secs_f64().max(1e-9);
        events(TrainingEvent::Progress(StepProgress {
            step,
            total_steps: total,
            loss: last_loss,
            lr: rate,
            images_per_s: window_images as f64 / secs,
            val_score,
        }));
        window_start = Instant::now();
        window_images = 0;
        if checkpoint_now {
            let path = checkpoint::save(&job.checkpoint_dir, step, &fingerprint, &net, &sgd, scaler.as_ref())?;
            events(TrainingEvent::Checkpoint { path, step });
        }
    }
    drop(loader);
    let train_secs = train_started.elapsed().as_secs_f64();
    let val_score = match val_split {
        Some(v) => Some(eval::score_split(&mut net, &ds, v, spec, device)?.0),
        None => None,
    };
    let (test_score, _) = eval::score_split(&mut net, &ds, test_split, spec, device)?;
    let mut result = base_result(spec, step, started, train_images, train_started);
    result.val_score = val_score;
    result.test_score = Some(test_score);
    result.train_loss = Some(last_loss);
    result.resumed_from_step = start_step;
    result.backbone_top1 = backbone_top1;
    let mut extra = HashMap::new();
    let recent = &log.recent;
    extra.insert("train_loss_mean_last_100".to_string(), recent.iter().sum::<f64>() / recent.len().max(1) as f64);
    extra.insert("bn_momentum".to_string(), cfg.bn_momentum);
    extra.insert("train_seconds".to_string(), train_secs);
    if let Some(scaler) = &scaler {
        extra.insert("skipped_steps".to_string(), scaler.skipped_steps as f64);
        extra.insert("loss_scale".to_string(), scaler.scale_value()?);
    }
    result.extra = extra;
    hand_on(job, &net, &result)?;
    Ok(result)
}

/// A pretrain cell's last step: its trained backbone (without the head of its source
/// classes) goes to [`TrainJob::pretrained_out`] with the architecture, the source test
/// score and the source dataset in the file's metadata. Other cells write nothing.
fn hand_on(job: &TrainJob, net: &Network, result: &TaskResult) -> Result<(), TrainerError> {
    let Some(path) = &job.pretrained_out else { return Ok(()) };
    let mut metadata = HashMap::from([
        (weights::META_ARCH.to_string(), net.arch.clone()),
        (weights::META_SOURCE_DATASET.to_string(), job.spec.dataset.name.clone()),
    ]);
    if let Some(score) = result.test_score {
        metadata.insert(weights::META_SOURCE_SCORE.to_string(), score.to_string());
    }
    weights::write_safetensors(path, &net.backbone_state(), metadata)?;
    tracing::info!(path = %path.display(), test_score = ?result.test_score, "pretrained backbone written");
    Ok(())
}

/// The per-step values of the steps not read yet (on the device), and the losses read.
#[derive(Default)]
struct StepLog {
    losses: Vec<Tensor>,
    /// fp16: each step's "skipped" flag (f32 0-d), parallel to `losses`.
    skipped: Vec<Tensor>,
    /// The last 100 losses read (of steps that were not skipped).
    recent: Vec<f64>,
}

impl StepLog {
    fn push(&mut self, loss: Tensor, skipped: Option<Tensor>) {
        self.losses.push(loss);
        self.skipped.extend(skipped);
    }

    /// Moves the values still on the device to the host, in one copy each. Returns the loss
    /// and the reason when the run diverged among them: a loss that is not finite, or (fp16)
    /// [`precision::MAX_SKIPPED_IN_A_ROW`] skipped steps in a row. A skipped fp16 step's loss
    /// may be inf (its forward pass overflowed): that alone is the scaler's business.
    fn read(&mut self, mut scaler: Option<&mut GradScaler>) -> Result<Option<(f64, &'static str)>, TrainerError> {
        if self.losses.is_empty() {
            return Ok(None);
        }
        let host = |values: &[Tensor]| -> Result<Vec<f64>, TrainerError> {
            let stacked = Tensor::f_stack(values, 0)?.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?;
            Ok(Vec::<f64>::try_from(&stacked)?)
        };
        let losses = host(&self.losses)?;
        let skipped = if self.skipped.is_empty() { vec![0.0; losses.len()] } else { host(&self.skipped)? };
        self.losses.clear();
        self.skipped.clear();
        for (value, skipped) in losses.into_iter().zip(skipped) {
            let skipped = skipped > 0.0;
            if let Some(scaler) = scaler.as_deref_mut() {
                if scaler.count(skipped) {
                    return Ok(Some((value, "fp16 gradients overflowed at every loss scale")));
                }
            }
            if skipped {
                continue;
            }
            if !value.is_finite() {
                return Ok(Some((value, "loss is not finite")));
            }
            self.recent.push(value);
        }
        let excess = self.recent.len().saturating_sub(100);
        self.recent.drain(..excess);
        Ok(None)
    }
}

fn base_result(spec: &CellSpec, steps: u64, started: Instant, images: usize, train_started: Instant) -> TaskResult {
    TaskResult {
        metric: spec.dataset.metric.into(),
        steps,
        images_per_s: images as f64 / train_started.elapsed().as_secs_f64().max(1e-9),
        duration_s: started.elapsed().as_secs_f64(),
        ..Default::default()
    }
}
