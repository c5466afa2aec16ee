//! The sweep file as written (serde, unknown keys rejected everywhere). Fields that are
//! checked after parsing keep their spans so errors point at their line.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;
use tsweep_proto::cell::{DatasetFormat, FakeSettings, Metric, ModelSource, Precision, ValPolicy};

use super::axis::{Axis, BoolAxis};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SweepFile {
    pub name: Spanned<String>,
    pub max_attempts: Option<Spanned<u32>>,
    pub seeds: Option<Spanned<Vec<u64>>>,
    /// Directory that relative `weights` and dataset `path`s resolve against: absolute, or
    /// relative to the sweep file's directory. Default: the sweep file's directory.
    pub root: Option<PathBuf>,
    /// Lets linear and finetune cells run on models without pretrained weights
    /// (`examples/synthetic.toml`; never for a real sweep).
    #[serde(default)]
    pub allow_random_init: bool,
    #[serde(default)]
    pub defaults: Settings,
    #[serde(default)]
    pub models: Vec<Spanned<ModelEntry>>,
    #[serde(default)]
    pub datasets: Vec<Spanned<DatasetEntry>>,
    /// Source models trained from scratch here, one per grid point of their settings;
    /// a `[[models]]` entry with `pretrain = "<name>"` transfers each of them.
    #[serde(default)]
    pub pretrain: Vec<Spanned<PretrainEntry>>,
    pub regimes: Option<Spanned<Regimes>>,
    /// Test executor behaviour for every cell (`tsweep-worker --executor fake`).
    pub fake: Option<FakeSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelEntry {
    pub name: Spanned<String>,
    /// Required, except with `pretrain` (the backbone is builtin, from that entry).
    pub source: Option<ModelSource>,
    /// Builtin architecture (resnet50, ...); defaults to the model's name.
    pub arch: Option<Spanned<String>>,
    /// The `[[pretrain]]` entry whose trained backbones this model stands for: one model
    /// per grid point of that entry, instead of `weights`.
    pub pretrain: Option<Spanned<String>>,
    pub weights: Option<PathBuf>,
    pub imagenet_top1: Option<Spanned<f64>>,
    pub image_size: Option<Spanned<u32>>,
    /// This model's precision in every regime (wins over `[defaults]` and the regime's).
    pub precision: Option<Precision>,
    /// Input normalisation; default: the builtin architecture's (ImageNet for TorchScript).
    pub normalize: Option<Spanned<NormalizeEntry>>,
}

/// `normalize = { mean = [r, g, b], std = [r, g, b] }` on pixels scaled to [0, 1].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NormalizeEntry {
    pub mean: Spanned<Vec<f64>>,
    pub std: Spanned<Vec<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DatasetEntry {
    pub name: Spanned<String>,
    pub format: DatasetFormat,
    pub path: PathBuf,
    pub metric: Option<Spanned<Metric>>,
    pub val: Option<Spanned<ValPolicy>>,
    pub num_classes: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Regimes {
    pub linear: Option<Spanned<RegimeSection>>,
    pub finetune: Option<Spanned<RegimeSection>>,
    pub scratch: Option<Spanned<RegimeSection>>,
}

use tsweep_proto::cell::Schedule;

/// Declares a struct holding every training setting (all optional, spanned) plus the
/// extra fields given, so `[defaults]` and `[regimes.*]` share one list without `flatten`
/// (which serde cannot combine with `deny_unknown_fields`).
/// `steps` is written as `steps: TYPE => CONVERSION` (the `[[pretrain]]` tables make it
/// an axis, which [`Settings`] does not carry).
macro_rules! settings_struct {
    ($(#[$attr:meta])* $name:ident steps: $sty:ty => $sconv:expr, { $($(#[$fattr:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$attr])*
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct $name {
            pub steps: Option<$sty>,
            pub batch_size: Option<Spanned<u32>>,
            pub momentum: Option<Spanned<f64>>,
            pub nesterov: Option<bool>,
            pub schedule: Option<Schedule>,
            pub bn_momentum: Option<Spanned<f64>>,
            pub eval_every: Option<u64>,
            pub checkpoint_every: Option<u64>,
            pub eval_resize: Option<Spanned<u32>>,
            pub loader_threads: Option<Spanned<u32>>,
            pub lbfgs_max_iter: Option<Spanned<u32>>,
            pub gpus: Option<Spanned<u32>>,
            pub stall_timeout_s: Option<Spanned<u64>>,
            pub max_runtime_s: Option<Spanned<u64>>,
            pub precision: Option<Precision>,
            $($(#[$fattr])* pub $field: $ty,)*
        }
        impl $name {
            #[allow(dead_code)]
            pub fn settings(&self) -> Settings {
                let steps: fn(&Option<$sty>) -> Option<Spanned<u64>> = $sconv;
                Settings {
                    steps: steps(&self.steps),
                    batch_size: self.batch_size.clone(),
                    momentum: self.momentum.clone(),
                    nesterov: self.nesterov,
                    schedule: self.schedule,
                    bn_momentum: self.bn_momentum.clone(),
                    eval_every: self.eval_every,
                    checkpoint_every: self.checkpoint_every,
                    eval_resize: self.eval_resize.clone(),
                    loader_threads: self.loader_threads.clone(),
                    lbfgs_max_iter: self.lbfgs_max_iter.clone(),
                    gpus: self.gpus.clone(),
                    stall_timeout_s: self.stall_timeout_s.clone(),
                    max_runtime_s: self.max_runtime_s.clone(),
                    precision: self.precision,
                }
            }
        }
    };
}

settings_struct!(
    /// `[defaults]`: training settings every regime starts from.
    #[derive(Default)]
    Settings steps: Spanned<u64> => Clone::clone, {}
);

settings_struct!(
    /// `[regimes.<name>]`: the regime's axes, optional model/dataset filters, and
    /// overrides of `[defaults]`.
    #[derive(Default)]
    RegimeSection steps: Spanned<u64> => Clone::clone, {
        /// Linear: the L2 path (one task per (model, dataset) fits all of it).
        l2: Option<Spanned<Axis>>,
        /// Finetune / scratch: learning rate.
        lr: Option<Spanned<Axis>>,
        /// Finetune / scratch: weight decay as in the paper; the trainer's coefficient is wd / lr.
        weight_decay: Option<Spanned<Axis>>,
        /// Only these models (by name); default all.
        models: Option<Vec<Spanned<String>>>,
        /// Only these datasets (by name); default all.
        datasets: Option<Vec<Spanned<String>>>,
        /// Replaces the top-level `[fake]` for this regime's cells.
        fake: Option<FakeSettings>,
    }
);

settings_struct!(
    /// `[[pretrain]]`: a source model trained from scratch on one of the `[[datasets]]`,
    /// one cell per point of its axes; its training settings override `[defaults]`.
    PretrainEntry steps: Spanned<Axis> => |_| None, {
        name: Spanned<String>,
        /// Builtin architecture (resnet18, inception_v3, ...).
        arch: Spanned<String>,
        /// The source dataset: the name of one `[[datasets]]` entry (train+val trains it,
        /// test scores it).
        dataset: Option<Spanned<String>>,
        image_size: Option<Spanned<u32>>,
        /// The seed of its cells (default 0), whatever the sweep's `seeds`.
        seed: Option<u64>,
        /// Axes: learning rate (required, > 0) and weight decay (>= 0, default [0]).
        lr: Option<Spanned<Axis>>,
        weight_decay: Option<Spanned<Axis>>,
        /// Axes of the regularizers: label smoothing and dropout in [0, 1), the auxiliary
        /// head's loss weight >= 0 (architectures with one), BatchNorm scale trained or not.
        label_smoothing: Option<Spanned<Axis>>,
        dropout: Option<Spanned<Axis>>,
        aux_head: Option<Spanned<Axis>>,
        bn_scale: Option<Spanned<BoolAxis>>,
        /// Replaces the top-level `[fake]` for the pretrain cells.
        fake: Option<FakeSettings>,
    }
);

impl Settings {
    /// `self` with every field `over` sets replaced.
    pub fn overridden_by(&self, over: &Settings) -> Settings {
        Settings {
            steps: over.steps.clone().or_else(|| self.steps.clone()),
            batch_size: over.batch_size.clone().or_else(|| self.batch_size.clone()),
            momentum: over.momentum.clone().or_else(|| self.momentum.clone()),
            nesterov: over.nesterov.or(self.nesterov),
            schedule: over.schedule.or(self.schedule),
            bn_momentum: over.bn_momentum.clone().or_else(|| self.bn_momentum.clone()),
            eval_every: over.eval_every.or(self.eval_every),
            checkpoint_every: over.checkpoint_every.or(self.checkpoint_every),
            eval_resize: over.eval_resize.clone().or_else(|| self.eval_resize.clone()),
            loader_threads: over.loader_threads.clone().or_else(|| self.loader_threads.clone()),
            lbfgs_max_iter: over.lbfgs_max_iter.clone().or_else(|| self.lbfgs_max_iter.clone()),
            gpus: over.gpus.clone().or_else(|| self.gpus.clone()),
            stall_timeout_s: over.stall_timeout_s.clone().or_else(|| self.stall_timeout_s.clone()),
            max_runtime_s: over.max_runtime_s.clone().or_else(|| self.max_runtime_s.clone()),
            precision: over.precision.or(self.precision),
        }
    }
}
