//! Shared by the regimes: opening the cell's dataset and scoring a split.

use std::path::Path;

use tch::Device;
use tsweep_data::{Dataset, Loader, LoaderConfig, Mode, Split, SplitView, Targets};
use tsweep_proto::cell::{CellSpec, Metric};

use crate::error::TrainerError;
use crate::metrics::{self, EvalTargets};
use crate::models::Network;
use crate::precision;
use crate::tensors::{to_vec_f32, Normalizer};

/// Stored short side of the shard cache and the eval resize: `eval_resize` or
/// `image_size * 256 / 224`.
pub fn resize_short(spec: &CellSpec) -> u32 {
    spec.train.eval_resize.unwrap_or_else(|| tsweep_data::default_resize_short(spec.model.image_size))
}

/// Opens the cell's dataset (building its shard cache under `cache_dir/datasets` once)
/// and checks that its labels fit the metric.
pub fn open_dataset(spec: &CellSpec, cache_dir: &Path) -> Result<Dataset, TrainerError> {
    let name = &spec.dataset.name;
    let ds = Dataset::open(&spec.dataset, &cache_dir.join("datasets"), resize_short(spec), &|_| {})
        .map_err(|e| TrainerError::data(name, e))?;
    let multi = ds.is_multi_label();
    if multi != (spec.dataset.metric == Metric::Map11) {
        return Err(TrainerError::InvalidCell(format!(
            "dataset {name}: metric {} needs {} labels, the data is {}",
            spec.dataset.metric.name(),
            if spec.dataset.metric == Metric::Map11 { "multi-label" } else { "single" },
            if multi { "multi-label" } else { "single-label" }
        )));
    }
    Ok(ds)
}

pub fn split(ds: &Dataset, split: Split) -> Result<SplitView, TrainerError> {
    ds.split(split).map_err(|e| TrainerError::data(ds.name(), e))
}

pub fn eval_loader(view: SplitView, spec: &CellSpec) -> Result<Loader, TrainerError> {
    let cfg = LoaderConfig {
        batch_size: spec.train.batch_size.max(1) as usize,
        image_size: spec.model.image_size,
        resize_short: resize_short(spec),
        seed: spec.seed,
        threads: spec.train.loader_threads as usize,
        prefetch: 2 * (spec.train.loader_threads.max(1) as usize),
    };
    let name = view.split().name();
    Loader::new(view, cfg, Mode::Eval).map_err(|e| TrainerError::data(name, e))
}

/// Accumulates targets of eval batches.
pub fn push_targets(acc: &mut Option<EvalTargets>, targets: &Targets) {
    match (acc, targets) {
        (Some(EvalTargets::Labels(v)), Targets::Labels(y)) => v.extend_from_slice(y),
        (Some(EvalTargets::MultiHot(v)), Targets::MultiHot(t, _)) => v.extend_from_slice(t),
        (slot @ None, Targets::Labels(y)) => *slot = Some(EvalTargets::Labels(y.clone())),
        (slot @ None, Targets::MultiHot(t, _)) => *slot = Some(EvalTargets::MultiHot(t.clone())),
        _ => {}
    }
}

/// Scores the network on a split (eval mode, no augmentation, in the cell's precision):
/// (score, targets).
pub fn score_split(
    net: &mut Network,
    ds: &Dataset,
    which: Split,
    spec: &CellSpec,
    device: Device,
) -> Result<(f64, EvalTargets), TrainerError> {
    let view = split(ds, which)?;
    let mut loader = eval_loader(view, spec)?;
    let norm = Normalizer::new(device, &spec.model.normalize)?;
    net.set_train(false)?;
    let mut scores = Vec::new();
    let mut targets = None;
    // one autocast region for the whole pass: the weights do not change, so each is cast once
    precision::autocast(spec.precision, device, || -> Result<(), TrainerError> {
        while let Some(batch) = loader.next_batch().map_err(|e| TrainerError::data(ds.name(), e))? {
            let x = norm.images(&batch)?;
            let logits = tch::no_grad(|| net.forward(&x, false))?;
            scores.extend(to_vec_f32(&logits)?);
            push_targets(&mut targets, &batch.targets);
        }
        Ok(())
    })?;
    net.set_train(true)?;
    let targets = targets.unwrap_or(EvalTargets::Labels(Vec::new()));
    let k = net.num_classes as usize;
    Ok((metrics::score(spec.dataset.metric, &scores, k, &targets), targets))
}

/// The splits a stage trains on and scores: Grid trains on train and scores val (and
/// test, for the record); Final trains on train+val and scores test.
pub fn stage_splits(spec: &CellSpec) -> (Split, Option<Split>, Split) {
    match spec.stage {
        // (a spec read from JSON never has an unspecified stage)
        tsweep_proto::cell::Stage::Grid | tsweep_proto::cell::Stage::Unspecified => {
            (Split::Train, Some(Split::Val), Split::Test)
        }
        // a pretrain cell trains its source model on train+val and scores the source test split
        tsweep_proto::cell::Stage::Final | tsweep_proto::cell::Stage::Pretrain => (Split::TrainVal, None, Split::Test),
    }
}

pub fn chance(spec: &CellSpec, ds: &Dataset) -> f64 {
    let k = ds.num_classes();
    metrics::chance_level(spec.dataset.metric, k, &EvalTargets::Labels(Vec::new()))
}
