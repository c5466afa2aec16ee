//! The resolved cell a worker runs: everything the trainer needs, no reference back to
//! the sweep file. The coordinator writes it as JSON on the task; the worker reads it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::arch::Normalize;

/// Regime, stage and metric are the wire's enums (`tsweep.v1`); [`crate::vocab`] gives
/// them their names, in the spec's JSON as everywhere.
pub use crate::v1::{Metric, Regime, Stage};

/// The learning-rate schedule of finetune, scratch and pretrain cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Half a cosine from the base rate down to zero over the run, no warmup.
    #[default]
    Cosine,
    /// The base rate throughout.
    Constant,
}

impl Schedule {
    /// The rate at `step` of `total` for base rate `base`.
    pub fn learning_rate(self, base: f64, step: u64, total: u64) -> f64 {
        match self {
            Schedule::Constant => base,
            Schedule::Cosine => 0.5 * base * (1.0 + (std::f64::consts::PI * step as f64 / total.max(1) as f64).cos()),
        }
    }
}

/// One attempt of a cell as a trainer runs it: the worker's child gets it inside its
/// task input (`tsweep-worker run-task`) and hands it to the trainer as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainJob {
    pub spec: CellSpec,
    /// A checkpoint written by an earlier attempt of this cell.
    pub resume: Option<crate::v1::Checkpoint>,
    /// Where this attempt writes its checkpoints (created if missing).
    pub checkpoint_dir: PathBuf,
    /// Shared cache: prepared dataset shards (`datasets/`) and extracted features (`features/`).
    pub cache_dir: PathBuf,
    pub device: Device,
    /// A pretrain cell writes its trained backbone here (safetensors); the workers of its
    /// transfer cells load it from the same place. None for every other cell.
    #[serde(default)]
    pub pretrained_out: Option<PathBuf>,
}

/// Where a task runs: `auto` (the first GPU the process sees, else the CPU), `cpu` or
/// `cuda:N`. The one grammar of the worker's `device` setting and of the device its child
/// and trainer get; written and read as that text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Auto,
    Cpu,
    Cuda(u32),
}

/// A device text that is not `auto`, `cpu` or `cuda:N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not auto, cpu or cuda:N")]
pub struct DeviceParseError(pub String);

impl std::str::FromStr for Device {
    type Err = DeviceParseError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<u32>().ok())
                .map(Device::Cuda)
                .ok_or_else(|| DeviceParseError(other.to_string())),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
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
    pub schedule: Schedule,
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

impl TrainSettings {
    /// The settings of a cell of `regime` whose sweep file sets none: the sweep file's
    /// defaults, with the paper's step counts (the linear regime's L2 path comes from its
    /// `l2` axis).
    pub fn defaults_for(regime: Regime) -> Self {
        TrainSettings {
            steps: match regime {
                Regime::Linear | Regime::Unspecified => 0,
                Regime::Finetune => 20_000,
                Regime::Scratch => 40_000,
            },
            batch_size: 256,
            momentum: 0.9,
            nesterov: true,
            schedule: Schedule::default(),
            bn_momentum: None,
            eval_every: 0,
            checkpoint_every: 1000,
            eval_resize: None,
            loader_threads: 4,
            l2_path: Vec::new(),
            lbfgs_max_iter: 100,
            stall_timeout_s: DEFAULT_STALL_TIMEOUT_S,
            max_runtime_s: None,
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::{Device, Schedule};

    #[test]
    fn device_text_round_trips_and_anything_else_is_refused() {
        for device in [Device::Auto, Device::Cpu, Device::Cuda(0), Device::Cuda(7)] {
            assert_eq!(device.to_string().parse::<Device>(), Ok(device));
            let json = serde_json::to_string(&device).unwrap();
            assert_eq!(serde_json::from_str::<Device>(&json).unwrap(), device);
        }
        for bad in ["gpu", "cuda", "cuda:x", "cuda:-1", ""] {
            let err = bad.parse::<Device>().unwrap_err().to_string();
            assert!(err.ends_with("is not auto, cpu or cuda:N"), "{bad}: {err}");
        }
    }

    #[test]
    fn cosine_decays_to_zero_and_constant_keeps_the_rate() {
        assert_eq!(Schedule::Cosine.learning_rate(0.1, 0, 100), 0.1);
        assert!((Schedule::Cosine.learning_rate(0.1, 50, 100) - 0.05).abs() < 1e-12);
        assert!(Schedule::Cosine.learning_rate(0.1, 100, 100).abs() < 1e-12);
        assert_eq!(Schedule::Constant.learning_rate(0.1, 70, 100), 0.1);
        assert_eq!(serde_json::from_str::<Schedule>("\"constant\"").unwrap(), Schedule::Constant);
        assert!(serde_json::from_str::<Schedule>("\"linear\"").is_err(), "an unknown schedule is refused");
    }
}
