//! The sweep file as written (serde, unknown keys rejected everywhere). Fields that are
//! checked after parsing keep their spans so errors point at their line.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;
use tsweep_proto::cell::{DatasetFormat, FakeSettings, Metric, ModelSource, Precision, ValPolicy};

use super::axis::Axis;

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
    pub regimes: Option<Spanned<Regimes>>,
    /// Test executor behaviour for every cell (`tsweep-worker --executor fake`).
    pub fake: Option<FakeSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelEntry {
    pub name: Spanned<String>,
    pub source: ModelSource,
    /// Builtin architecture (resnet50, ...); defaults to the model's name.
    pub arch: Option<Spanned<String>>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Schedule {
    Cosine,
    Constant,
}

impl Schedule {
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Cosine => "cosine",
            Schedule::Constant => "constant",
        }
    }
}

/// Declares a struct holding every training setting (all optional, spanned) plus the
/// extra fields given, so `[defaults]` and `[regimes.*]` share one list without `flatten`
/// (which serde cannot combine with `deny_unknown_fields`).
macro_rules! settings_struct {
    ($(#[$attr:meta])* $name:ident { $($(#[$fattr:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$attr])*
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct $name {
            pub steps: Option<Spanned<u64>>,
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
                Settings {
                    steps: self.steps.clone(),
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
    Settings {}
);

settings_struct!(
    /// `[regimes.<name>]`: the regime's axes, optional model/dataset filters, and
    /// overrides of `[defaults]`.
    RegimeSection {
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
