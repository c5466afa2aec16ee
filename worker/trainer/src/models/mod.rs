//! Backbones and the network a cell trains: backbone (pooled penultimate features) + a new
//! linear head `tsweep_head` for the target's classes.
//!
//! Built in Rust with torchvision's parameter names (so converted torchvision weights load
//! by name) and the cell's BatchNorm momentum: resnet18/34/50/101/152,
//! densenet121/169/201, mobilenet_v2 (+ `_140`), inception_v3, efficientnet_b0 and
//! efficientnet_lite0/1/2 (TensorFlow's networks, under torchvision-style names); each
//! returns the pooled penultimate feature (no classifier). `tsweep_proto::arch` lists
//! them with their feature widths. TorchScript modules
//! (`source = torchscript`) must return the penultimate features; they are trained through
//! `TrainableCModule`.

pub mod densenet;
pub mod efficientnet;
pub mod inception;
pub mod mobilenet;
pub mod resnet;

use std::path::{Path, PathBuf};

use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};
use tsweep_proto::arch::Normalize;
use tsweep_proto::cell::{ModelSource, ModelSpec};

use crate::error::TrainerError;
use crate::weights;

/// Variable-store path of the new linear head.
pub const HEAD: &str = "tsweep_head";

/// Variable-store path of an auxiliary classifier (torchvision's name for Inception v3's).
pub const AUX_LOGITS: &str = "AuxLogits";

/// A builtin backbone: pooled penultimate features, and for a network with an auxiliary
/// classifier (`tsweep_proto::arch`'s `aux_head`) the activation that classifier reads.
pub(crate) trait FeatureNet: ModuleT {
    /// The features and, where the network has one, the auxiliary classifier's input.
    fn forward_tapped(&self, xs: &Tensor, train: bool) -> (Tensor, Option<Tensor>) {
        (self.forward_t(xs, train), None)
    }
}

/// Settings the builders need.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    /// BatchNorm running-stat momentum (PyTorch convention: new = (1-m) old + m batch).
    pub bn_momentum: f64,
}

pub(crate) fn conv(p: nn::Path, i: i64, o: i64, k: i64, stride: i64, padding: i64, groups: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding,
        groups,
        bias: false,
        // torchvision's init: kaiming normal, fan_out, relu
        ws_init: nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        },
        ..Default::default()
    };
    nn::conv2d(p, i, o, k, cfg)
}

pub(crate) fn bn(p: nn::Path, c: i64, cfg: &NetConfig) -> nn::BatchNorm {
    bn_eps(p, c, 1e-5, cfg)
}

/// BatchNorm with another epsilon than PyTorch's 1e-5 (TensorFlow's networks use 1e-3).
pub(crate) fn bn_eps(p: nn::Path, c: i64, eps: f64, cfg: &NetConfig) -> nn::BatchNorm {
    nn::batch_norm2d(p, c, nn::BatchNormConfig { momentum: cfg.bn_momentum, eps, ..Default::default() })
}

/// The builtin backbone `arch` (a `tsweep_proto::arch` name) and its feature width, or
/// None for a name no builder knows. `transform_input`: Inception's rescale of inputs
/// normalised this way to [-1, 1], which torchvision's pretrained weights expect.
fn builtin(
    root: &nn::Path,
    arch: &str,
    transform_input: Option<Normalize>,
    cfg: &NetConfig,
) -> Option<(Box<dyn FeatureNet>, i64)> {
    fn boxed(m: impl FeatureNet + 'static, d: i64) -> Option<(Box<dyn FeatureNet>, i64)> {
        Some((Box::new(m), d))
    }
    if let Some((bottleneck, stages)) = resnet::layout(arch) {
        let m = resnet::ResNet::new(root, bottleneck, stages, cfg);
        let d = m.feature_dim;
        boxed(m, d)
    } else if let Some(blocks) = densenet::layout(arch) {
        let m = densenet::DenseNet::new(root, blocks, cfg);
        let d = m.feature_dim;
        boxed(m, d)
    } else if let Some(w) = mobilenet::width(arch) {
        let m = mobilenet::MobileNetV2::new(root, w, cfg);
        let d = m.feature_dim;
        boxed(m, d)
    } else if arch == "inception_v3" {
        let m = inception::InceptionV3::new(root, transform_input, cfg);
        let d = m.feature_dim;
        boxed(m, d)
    } else if let Some(variant) = efficientnet::variant(arch) {
        let m = efficientnet::EfficientNet::new(root, variant, cfg);
        let d = m.feature_dim;
        boxed(m, d)
    } else {
        None
    }
}

enum Backbone {
    Native(Box<dyn FeatureNet>),
    Script(tch::TrainableCModule),
}

/// The network of a cell.
pub struct Network {
    pub vs: nn::VarStore,
    backbone: Backbone,
    head: nn::Linear,
    /// The auxiliary classifier, when the cell trains one (see [`Network::with_aux_head`]).
    aux: Option<inception::AuxLogits>,
    pub feature_dim: i64,
    pub num_classes: i64,
    pub arch: String,
    /// For TorchScript backbones: the module file (checkpoints save the module itself,
    /// because its BatchNorm buffers are not in the variable store).
    pub script_path: Option<PathBuf>,
    /// Builtin backbones on the CPU keep their 4-d weights and activations channels-last
    /// (NHWC strides): oneDNN's convolutions then run without reordering each tensor to
    /// and from its blocked layout, which made ResNet-50 training 1.1-1.3x and feature
    /// extraction 1.5x faster on a 2-core CPU (BENCHMARKS.md).
    channels_last: bool,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network").field("arch", &self.arch).field("feature_dim", &self.feature_dim).finish()
    }
}

/// What to initialise the backbone from.
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    Random,
    Pretrained(PathBuf),
}

impl Network {
    /// Builds the network of `spec`. `tch::manual_seed` should be set before for a
    /// reproducible random init. Pretrained weights (builtin) are loaded by name; a
    /// missing file is a fatal error naming it.
    pub fn build(
        spec: &ModelSpec,
        init: &Init,
        num_classes: i64,
        device: Device,
        cfg: NetConfig,
    ) -> Result<Network, TrainerError> {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let arch = spec.arch.to_lowercase();
        let (backbone, feature_dim, script_path): (Backbone, i64, Option<PathBuf>) = match spec.source {
            ModelSource::Torchscript => {
                let path = spec.weights.clone().ok_or_else(|| {
                    TrainerError::InvalidCell(format!(
                        "model {}: a torchscript model needs `weights` (the module file)",
                        spec.name
                    ))
                })?;
                let module = load_script(&path, &root / "backbone")?;
                let dim = probe_feature_dim(&module, spec.image_size, device, &path)?;
                (Backbone::Script(module), dim, Some(path))
            }
            ModelSource::Builtin => {
                // the registry is the one list of builtin names; every entry has a builder
                // whose feature width agrees with it (tested below)
                let known = tsweep_proto::arch::lookup(&arch).map(|a| a.name);
                // torchvision's pretrained Inception expects inputs scaled to [-1, 1]
                let transform_input = matches!(init, Init::Pretrained(_)).then_some(spec.normalize);
                let Some((m, d)) = known.and_then(|name| builtin(&root, name, transform_input, &cfg)) else {
                    return Err(TrainerError::UnknownArch(spec.arch.clone()));
                };
                (Backbone::Native(m), d, None)
            }
        };
        let head = nn::linear(&root / HEAD, feature_dim, num_classes, Default::default());
        let mut net = Network {
            vs,
            backbone,
            head,
            aux: None,
            feature_dim,
            num_classes,
            arch: arch.clone(),
            script_path,
            channels_last: false,
        };
        if let (ModelSource::Builtin, Init::Pretrained(path)) = (spec.source, init) {
            weights::load_into(&net.vs, path, &arch, &[HEAD.to_string()])?;
        }
        if device == Device::Cpu && matches!(spec.source, ModelSource::Builtin) {
            net.set_channels_last(true)?;
        }
        Ok(net)
    }

    /// Lays a builtin backbone's 4-d weights (and so its activations) out channels-last or
    /// contiguous. `build` picks channels-last on the CPU and contiguous on CUDA;
    /// `trainer-bench --layout` measures the other on a GPU. Call it before creating the
    /// optimizer (its flat buffers take the layout the weights have then). TorchScript
    /// backbones keep their module's layout.
    pub fn set_channels_last(&mut self, on: bool) -> Result<(), TrainerError> {
        if matches!(self.backbone, Backbone::Script(_)) || on == self.channels_last {
            return Ok(());
        }
        for (_, mut var) in self.vs.variables() {
            if var.dim() == 4 {
                let laid_out = tch::no_grad(|| if on { to_channels_last(&var) } else { Ok(var.f_contiguous()?) })?;
                var.f_set_data(&laid_out)?;
            }
        }
        self.channels_last = on;
        Ok(())
    }

    /// Whether the backbone runs channels-last (see [`Network::set_channels_last`]).
    pub fn is_channels_last(&self) -> bool {
        self.channels_last
    }

    /// Adds a new auxiliary classifier for the network's classes (Inception v3's
    /// `AuxLogits`), trained next to the head: [`Network::forward_train`] then returns its
    /// logits too. It always starts from a random init (pretrained weights are loaded before
    /// it exists) and is not handed on ([`Network::backbone_state`]). Call it before
    /// creating the optimizer. A network without one is an invalid cell.
    pub fn with_aux_head(mut self, cfg: NetConfig) -> Result<Network, TrainerError> {
        let has_one = tsweep_proto::arch::lookup(&self.arch).is_some_and(|a| a.aux_head);
        if !has_one || !matches!(self.backbone, Backbone::Native(_)) {
            let with: Vec<&str> = tsweep_proto::arch::ARCHS.iter().filter(|a| a.aux_head).map(|a| a.name).collect();
            return Err(TrainerError::InvalidCell(format!(
                "{} has no auxiliary classifier (builtin networks with one: {})",
                self.arch,
                with.join(", ")
            )));
        }
        self.aux = Some(inception::AuxLogits::new(&(self.vs.root() / AUX_LOGITS), self.num_classes, &cfg));
        if self.channels_last {
            for (name, mut var) in self.vs.variables() {
                if var.dim() == 4 && name.starts_with(&format!("{AUX_LOGITS}.")) {
                    let laid_out = tch::no_grad(|| to_channels_last(&var))?;
                    var.f_set_data(&laid_out)?;
                }
            }
        }
        Ok(self)
    }

    /// The input in the layout the backbone runs in (inputs come channels-last from the
    /// loader, contiguous from elsewhere; either conversion is a no-op when it fits).
    fn laid_out(&self, xs: &Tensor) -> Result<Tensor, TrainerError> {
        Ok(match self.channels_last && xs.dim() == 4 {
            true if is_channels_last(xs) => xs.shallow_clone(),
            true => to_channels_last(xs)?,
            false => xs.f_contiguous()?,
        })
    }

    /// Pooled penultimate features `[batch, feature_dim]`.
    pub fn features(&self, xs: &Tensor, train: bool) -> Result<Tensor, TrainerError> {
        let xs = self.laid_out(xs)?;
        match &self.backbone {
            Backbone::Native(m) => Ok(m.forward_t(&xs, train)),
            Backbone::Script(m) => Ok(m.forward_ts(&[xs])?.flatten(1, -1)),
        }
    }

    /// A training forward pass: the head's logits with dropout of probability `p` on the
    /// pooled features (as [`Network::forward_with_dropout`]), and the auxiliary
    /// classifier's logits when the network has one ([`Network::with_aux_head`]).
    pub fn forward_train(&self, xs: &Tensor, p: f64) -> Result<(Tensor, Option<Tensor>), TrainerError> {
        let (features, aux) = match (&self.backbone, &self.aux) {
            (Backbone::Native(m), Some(aux)) => {
                let (features, tapped) = m.forward_tapped(&self.laid_out(xs)?, true);
                (features, tapped.map(|t| aux.forward_t(&t, true)))
            }
            _ => (self.features(xs, true)?, None),
        };
        Ok((self.head_with_dropout(features, true, p)?, aux))
    }

    /// Logits `[batch, num_classes]`.
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor, TrainerError> {
        self.forward_with_dropout(xs, train, 0.0)
    }

    /// Logits with dropout of probability `p` on the pooled features, before the head (in
    /// train mode only; `p` = 0 is [`Network::forward`]). It draws from libtorch's generator.
    pub fn forward_with_dropout(&self, xs: &Tensor, train: bool, p: f64) -> Result<Tensor, TrainerError> {
        self.head_with_dropout(self.features(xs, train)?, train, p)
    }

    fn head_with_dropout(&self, features: Tensor, train: bool, p: f64) -> Result<Tensor, TrainerError> {
        let features = if train && p > 0.0 { features.f_dropout(p, true)? } else { features };
        Ok(features.apply(&self.head))
    }

    /// Fixes every BatchNorm scale γ at 1 and out of training (the `bn_scale = false`
    /// setting): a BatchNorm's γ is the 1-d `<name>.weight` next to a `<name>.running_mean`.
    /// Call it before creating the optimizer. Returns how many were fixed.
    pub fn fix_bn_scale(&self) -> Result<usize, TrainerError> {
        let vars = self.vs.variables();
        let mut fixed = 0;
        for (name, var) in &vars {
            let Some(base) = name.strip_suffix(".weight") else { continue };
            if var.dim() != 1 || !vars.contains_key(&format!("{base}.running_mean")) {
                continue;
            }
            tch::no_grad(|| -> Result<(), TrainerError> {
                let mut v = var.shallow_clone();
                let _ = v.f_fill_(1.0)?;
                Ok(())
            })?;
            let _ = var.set_requires_grad(false);
            fixed += 1;
        }
        Ok(fixed)
    }

    /// The backbone's variables (parameters and BatchNorm buffers) by name, sorted: what a
    /// pretrain cell hands on, without the head and the auxiliary classifier of its source
    /// classes.
    pub fn backbone_state(&self) -> Vec<(String, Tensor)> {
        let heads = [HEAD, AUX_LOGITS];
        self.state()
            .into_iter()
            .filter(|(name, _)| !heads.iter().any(|h| name == h || name.starts_with(&format!("{h}."))))
            .collect()
    }

    /// Switches TorchScript modules between train and eval mode (builtin backbones take
    /// the mode per call).
    pub fn set_train(&mut self, train: bool) -> Result<(), TrainerError> {
        if let Backbone::Script(m) = &mut self.backbone {
            if train {
                m.f_set_train()?;
            } else {
                m.f_set_eval()?;
            }
        }
        Ok(())
    }

    /// The trained parameters, by name, in a fixed order.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> =
            self.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Every variable (parameters and BatchNorm buffers), by name, sorted.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Saves a TorchScript backbone's module (with its buffers) to `path`.
    pub fn save_script(&self, path: &Path) -> Result<bool, TrainerError> {
        match &self.backbone {
            Backbone::Script(m) => {
                m.save(path)?;
                Ok(true)
            }
            Backbone::Native(_) => Ok(false),
        }
    }

    pub fn head_parameters(&self) -> (&Tensor, Option<&Tensor>) {
        (&self.head.ws, self.head.bs.as_ref())
    }
}

/// The same 4-d tensor with channels-last strides `[h*w*c, 1, w*c, c]` (PyTorch's
/// `memory_format=torch.channels_last`; tch has no binding for memory formats).
pub fn to_channels_last(t: &Tensor) -> Result<Tensor, TrainerError> {
    Ok(t.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2])?)
}

/// Whether a 4-d tensor is laid out channels-last (see [`to_channels_last`]).
pub fn is_channels_last(t: &Tensor) -> bool {
    let (size, stride) = (t.size(), t.stride());
    size.len() == 4 && {
        let (c, h, w) = (size[1], size[2], size[3]);
        stride[1] == 1 && stride[3] == c && stride[2] == w * c && stride[0] == h * w * c
    }
}

fn load_script(path: &Path, p: nn::Path) -> Result<tch::TrainableCModule, TrainerError> {
    if !path.is_file() {
        return Err(TrainerError::MissingFile { what: "torchscript module".into(), path: path.to_path_buf() });
    }
    tch::TrainableCModule::load(path, p).map_err(|e| TrainerError::WeightsMismatch {
        path: path.to_path_buf(),
        arch: "torchscript".into(),
        detail: format!("cannot load the module: {e}"),
    })
}

fn probe_feature_dim(m: &tch::TrainableCModule, size: u32, device: Device, path: &Path) -> Result<i64, TrainerError> {
    let size = i64::from(size.max(32));
    let out = tch::no_grad(|| m.forward_ts(&[Tensor::zeros([1, 3, size, size], (Kind::Float, device))]));
    let out = out.map_err(|e| TrainerError::WeightsMismatch {
        path: path.to_path_buf(),
        arch: "torchscript".into(),
        detail: format!("forward on a 1x3x{size}x{size} input failed: {e}"),
    })?;
    let shape = out.size();
    if shape.len() < 2 || shape[0] != 1 {
        return Err(TrainerError::WeightsMismatch {
            path: path.to_path_buf(),
            arch: "torchscript".into(),
            detail: format!("the module must return [batch, features], it returned {shape:?}"),
        });
    }
    Ok(shape[1..].iter().product())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsweep_proto::arch::ARCHS;

    #[test]
    fn every_registry_architecture_builds_with_its_feature_dim() {
        tch::set_num_threads(2);
        for arch in ARCHS {
            let size = if arch.name == "inception_v3" { 75 } else { 32 };
            let spec = ModelSpec {
                name: arch.name.into(),
                source: ModelSource::Builtin,
                arch: arch.name.into(),
                weights: None,
                imagenet_top1: None,
                image_size: size,
                normalize: arch.normalize,
                pretrained: None,
            };
            tch::manual_seed(0);
            let net = Network::build(&spec, &Init::Random, 3, Device::Cpu, NetConfig { bn_momentum: 0.1 })
                .unwrap_or_else(|e| panic!("{}: {e}", arch.name));
            assert_eq!(net.feature_dim, i64::from(arch.feature_dim), "{}", arch.name);
            let x = Tensor::zeros([1, 3, i64::from(size), i64::from(size)], (Kind::Float, Device::Cpu));
            let features = tch::no_grad(|| net.features(&x, false)).unwrap();
            assert_eq!(features.size(), vec![1, i64::from(arch.feature_dim)], "{}", arch.name);
        }
    }

    #[test]
    fn names_outside_the_registry_are_unknown() {
        let spec = ModelSpec {
            name: "m".into(),
            source: ModelSource::Builtin,
            arch: "efficientnet_lite9".into(),
            weights: None,
            imagenet_top1: None,
            image_size: 32,
            normalize: Normalize::IMAGENET,
            pretrained: None,
        };
        let err = Network::build(&spec, &Init::Random, 3, Device::Cpu, NetConfig { bn_momentum: 0.1 }).unwrap_err();
        assert!(matches!(err, TrainerError::UnknownArch(ref a) if a == "efficientnet_lite9"), "{err}");
    }
}
