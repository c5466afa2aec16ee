//! The resolved cell a worker runs: everything the trainer needs, no reference back to
//! the sweep file. The coordinator writes it as JSON on the task; the worker reads it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::arch::Normalize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Regime {
    /// Logistic regression on frozen penultimate features, whole L2 path in one task.
    Linear,
    /// ImageNet weights + new head, all weights trained.
    Finetune,
    /// Same recipe from random initialisation.
    Scratch,
}

impl Regime {
    pub const ALL: [Regime; 3] = [Regime::Linear, Regime::Finetune, Regime::Scratch];
    pub fn name(self) -> &'static str {
        match self {
            Regime::Linear => "linear",
            Regime::Finetune => "finetune",
            Regime::Scratch => "scratch",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// A grid point: trained on train, scored on val (and test, for the record).
    Grid,
    /// The refit of the selected grid point on train+val, scored on test.
    Final,
    /// A source model trained from scratch on a source dataset (train+val) under one
    /// setting of a `[[pretrain]]` grid, scored on the source test split; its backbone
    /// weights feed the transfer cells of the model it stands for ([`PretrainedBy`]).
    Pretrain,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Pretrain, Stage::Grid, Stage::Final];
    pub fn name(self) -> &'static str {
        match self {
            Stage::Grid => "grid",
            Stage::Final => "final",
            Stage::Pretrain => "pretrain",
        }
    }
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Where a backbone comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelSource {
    /// A backbone built in Rust (`arch` names it: resnet50, densenet121, ...).
    Builtin,
    /// A TorchScript module file (`weights` is the .pt file) that returns penultimate features.
    Torchscript,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The name the sweep file gives it (unique in the sweep).
    pub name: String,
    pub source: ModelSource,
    /// Architecture for builtin backbones, e.g. "resnet50"; informational for torchscript.
    pub arch: String,
    /// Pretrained weights (.safetensors or .ot for builtin; the module for torchscript).
    /// None: random init (required for the scratch regime, refused for finetune/linear
    /// unless the sweep says `allow_random_init`).
    pub weights: Option<PathBuf>,
    pub imagenet_top1: Option<f64>,
    /// Native input resolution (224, 299, 331).
    pub image_size: u32,
    /// Input normalisation of pixels in [0, 1]: the sweep file's `normalize`, else
    /// [`Normalize::default_for`] the arch. Left out of the JSON when it is ImageNet's, the
    /// value every spec written before this field existed meant, so that those specs (and
    /// the checkpoint fingerprints computed from them) read back unchanged.
    #[serde(default, skip_serializing_if = "Normalize::is_imagenet")]
    pub normalize: Normalize,
    /// The backbone comes from a pretrain cell of this sweep (its `weights` are None in the
    /// spec: the worker finds the file from the pretrain cell's task id). Left out of the
    /// JSON when None, so specs written before it existed read back the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<PretrainedBy>,
}

/// The pretrain cell whose backbone a model is: what the worker needs to find its weights
/// and the report to put the model at its source accuracy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainedBy {
    /// Task id of the pretrain cell (same sweep).
    pub task_id: String,
    /// The `[[pretrain]]` entry's name.
    pub pretrain: String,
    /// The source dataset it was trained on.
    pub dataset: String,
}

/// The regularizers of a training run, a typed view of the grid point's hparams (the
/// `[[pretrain]]` axes `label_smoothing`, `dropout`, `aux_head`, `bn_scale`). A key that
/// is absent means the neutral value, so cells without them train as before.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Regularizers {
    /// Label smoothing ε in [0, 1): the target is (1 − ε)·one-hot + ε/K.
    pub label_smoothing: f64,
    /// Dropout probability in [0, 1) on the pooled features, before the classifier.
    pub dropout: f64,
    /// Weight (≥ 0) of the auxiliary classifier's loss (Inception v3's `AuxLogits`); 0: none.
    pub aux_weight: f64,
    /// BatchNorm scale γ trained (true) or fixed at 1 (false).
    pub bn_scale: bool,
}

impl Default for Regularizers {
    fn default() -> Self {
        Regularizers { label_smoothing: 0.0, dropout: 0.0, aux_weight: 0.0, bn_scale: true }
    }
}

impl Regularizers {
    pub const LABEL_SMOOTHING: &'static str = "label_smoothing";
    pub const DROPOUT: &'static str = "dropout";
    pub const AUX_HEAD: &'static str = "aux_head";
    /// 1 = γ trained, 0 = fixed at 1.
    pub const BN_SCALE: &'static str = "bn_scale";

    /// Reads the regularizers from a grid point's hparams; a value out of range is an
    /// error naming its key.
    pub fn from_hparams(hparams: &BTreeMap<String, f64>) -> Result<Regularizers, String> {
        let get = |key: &str, default: f64| hparams.get(key).copied().unwrap_or(default);
        let r = Regularizers {
            label_smoothing: get(Self::LABEL_SMOOTHING, 0.0),
            dropout: get(Self::DROPOUT, 0.0),
            aux_weight: get(Self::AUX_HEAD, 0.0),
            bn_scale: get(Self::BN_SCALE, 1.0) != 0.0,
        };
        let unit = |v: f64| v.is_finite() && (0.0..1.0).contains(&v);
        if !unit(r.label_smoothing) {
            return Err(format!("hparams.{} = {} is not in [0, 1)", Self::LABEL_SMOOTHING, r.label_smoothing));
        }
        if !unit(r.dropout) {
            return Err(format!("hparams.{} = {} is not in [0, 1)", Self::DROPOUT, r.dropout));
        }
        if !(r.aux_weight.is_finite() && r.aux_weight >= 0.0) {
            return Err(format!("hparams.{} = {} must be finite and >= 0", Self::AUX_HEAD, r.aux_weight));
        }
        Ok(r)
    }

    /// Writes every regularizer into `hparams` (all four keys, so a pretrain cell's grid
    /// point is complete whatever axes its file wrote).
    pub fn write_hparams(&self, hparams: &mut BTreeMap<String, f64>) {
        hparams.insert(Self::LABEL_SMOOTHING.to_string(), self.label_smoothing);
        hparams.insert(Self::DROPOUT.to_string(), self.dropout);
        hparams.insert(Self::AUX_HEAD.to_string(), self.aux_weight);
        hparams.insert(Self::BN_SCALE.to_string(), if self.bn_scale { 1.0 } else { 0.0 });
    }

    /// Whether every regularizer is at its neutral value (plain training).
    pub fn is_neutral(&self) -> bool {
        *self == Regularizers::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetFormat {
    /// root/{train,val?,test}/CLASS/*.jpg|png
    Imagefolder,
    /// CIFAR-10/100 binary batches as distributed.
    CifarBinary,
    /// Multi-label image list (VOC2007 classification): see the worker's data module.
    MultilabelList,
    /// A directory written by `tsweep-worker data prepare` (manifest + shards).
    Prepared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Top1,
    MeanPerClass,
    /// 11-point interpolated mean average precision (multi-label).
    Map11,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Top1 => "top1",
            Metric::MeanPerClass => "mean_per_class",
            Metric::Map11 => "map11",
        }
    }
}

/// How the validation split used for selection is obtained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ValPolicy {
    /// The dataset's own val split.
    Official,
    /// A deterministic (seeded) held-out fraction of train, stratified by class.
    HeldOut { fraction: f64, seed: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    pub name: String,
    pub format: DatasetFormat,
    pub path: PathBuf,
    pub metric: Metric,
    pub val: ValPolicy,
    /// Expected number of classes, checked against the data when set.
    pub num_classes: Option<u32>,
}

/// Training settings of one cell (the sweep's defaults with per-regime overrides applied).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    pub steps: u64,
    pub batch_size: u32,
    pub momentum: f64,
    pub nesterov: bool,
    /// "cosine" (decay to zero, no warmup) or "constant".
    pub schedule: String,
    /// BatchNorm running-stat momentum; None: min(10 / steps_per_epoch, 0.1).
    pub bn_momentum: Option<f64>,
    /// Evaluate on val every N steps (0: only at the end).
    pub eval_every: u64,
    /// Checkpoint every N steps (0: only on SIGTERM).
    pub checkpoint_every: u64,
    /// Eval preprocessing: resize the short side to this, then center-crop image_size.
    /// None: image_size * 256 / 224.
    pub eval_resize: Option<u32>,
    /// Data-loader threads.
    pub loader_threads: u32,
    /// Linear regime: the L2 strengths of the path (ascending).
    pub l2_path: Vec<f64>,
    /// Linear regime: L-BFGS iterations per path point.
    pub lbfgs_max_iter: u32,
    /// The worker kills an attempt whose child sent no progress event (started, progress,
    /// checkpoint) for this long, and fails it as retryable with a message saying so.
    #[serde(default = "default_stall_timeout_s")]
    pub stall_timeout_s: u64,
    /// A hard limit on one attempt's run time (None: none); past it the attempt is killed
    /// and fails as retryable (the next attempt resumes from its last checkpoint).
    #[serde(default)]
    pub max_runtime_s: Option<u64>,
}

/// What `stall_timeout_s` is when the sweep file does not say: 30 minutes.
pub const DEFAULT_STALL_TIMEOUT_S: u64 = 30 * 60;

fn default_stall_timeout_s() -> u64 {
    DEFAULT_STALL_TIMEOUT_S
}

/// Behaviour of the test executor (`tsweep-worker --executor fake`), used by cluster
/// tests and benchmarks. Ignored by the real trainer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FakeSettings {
    /// How long the fake run takes.
    pub sleep_ms: u64,
    /// Steps it reports (and checkpoints) over that time.
    pub steps: u64,
    /// Fail with this class ("retryable" | "fatal" | "out_of_memory") or "crash" (abort the child).
    pub fail: Option<String>,
    /// Only the first N attempts fail (0: all of them); also limits `hang_after_step`.
    pub fail_attempts: u32,
    /// After this step the run hangs: no more events, SIGTERM ignored (a trainer stuck in a
    /// deadlock), until the agent kills it.
    pub hang_after_step: Option<u64>,
    /// The score it reports (val and test); defaults to a deterministic function of the hparams.
    pub score: Option<f64>,
    /// How long the child stays after its result before it exits (or until SIGTERM): a
    /// stop order can then arrive between the result and the exit.
    pub linger_ms: u64,
}

/// The arithmetic a cell trains and extracts features in. `Fp32` is the paper's protocol;
/// `Bf16` and `Fp16` run the forward pass and the loss under libtorch's autocast (master
/// weights, optimizer state and BatchNorm statistics stay f32; `Fp16` adds dynamic loss
/// scaling). Part of the cell's identity: a bf16 run is another cell than the fp32 run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    /// bfloat16 autocast (CPUs, and GPUs of compute capability 8.0 or newer).
    Bf16,
    /// float16 autocast with dynamic loss scaling (CUDA only).
    Fp16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Bf16, Precision::Fp16];
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }
    pub fn is_fp32(&self) -> bool {
        *self == Precision::Fp32
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    /// The sweep file's spelling: `fp32`, `bf16` or `fp16`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown precision {s:?}; expected fp32, bf16 or fp16"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellSpec {
    pub sweep: String,
    pub stage: Stage,
    pub regime: Regime,
    pub model: ModelSpec,
    pub dataset: DatasetSpec,
    /// The grid point: lr and weight_decay for finetune/scratch; empty for linear
    /// (its path is `train.l2_path`). Keys are sorted, so the JSON is canonical.
    pub hparams: BTreeMap<String, f64>,
    pub train: TrainSettings,
    pub seed: u64,
    /// Left out of the JSON when fp32, so specs written before it existed read back the same.
    #[serde(default, skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
    pub gpus: u32,
    pub max_attempts: u32,
    #[serde(default)]
    pub fake: Option<FakeSettings>,
}

impl CellSpec {
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
    /// `model/dataset/regime`: the group whose grid points are compared for selection.
    pub fn group_key(&self) -> String {
        format!("{}/{}/{}", self.model.name, self.dataset.name, self.regime.name())
    }
}
