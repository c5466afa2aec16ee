//! EfficientNet-B0 and EfficientNet-Lite0/1/2, one builder with torchvision's parameter
//! names (`features.0.0`, `features.1.0.block.0.0`, `features.2.0.block.2.fc1`,
//! `features.8.1`, ...), the cell's BatchNorm momentum and stochastic depth (0.2 * block
//! index / blocks, training only). No classifier: the output is the pooled 1280-d feature,
//! before the classifier's dropout.
//!
//! - **B0** as torchvision builds it: symmetric padding, BatchNorm eps 1e-5, SiLU,
//!   squeeze-excitation (tch's port used TF's 1e-3 and "same" padding).
//! - **Lite** as Google's TensorFlow original (`efficientnet_lite_builder.py`; the PyTorch
//!   reference is tools/efficientnet_lite.py): B0's stages scaled by width (channels
//!   rounded to multiples of 8) and depth (repeats rounded up), with no squeeze-excitation,
//!   ReLU6, the stem fixed at 32 channels and the head at 1280 (the first and last stages
//!   keep one block), BatchNorm eps 1e-3 and TensorFlow's "SAME" padding, which for a
//!   stride-2 convolution depends on the input size and puts the odd row and column at the
//!   bottom and right. Block `k` indices skip the squeeze-excitation: expand, depthwise,
//!   project (or depthwise, project).
//!
//! Based on tch 0.24's `vision::efficientnet` (MIT/Apache-2.0, Laurent Mazare).

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::{bn_eps, conv, NetConfig};

/// Which network of the family.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Variant {
    /// torchvision's EfficientNet-B0.
    B0,
    /// TensorFlow's EfficientNet-Lite with these width and depth multipliers.
    Lite { width: f64, depth: f64 },
}

/// The variant a builtin arch name stands for.
pub fn variant(arch: &str) -> Option<Variant> {
    Some(match arch {
        "efficientnet_b0" => Variant::B0,
        "efficientnet_lite0" => Variant::Lite { width: 1.0, depth: 1.0 },
        "efficientnet_lite1" => Variant::Lite { width: 1.0, depth: 1.1 },
        "efficientnet_lite2" => Variant::Lite { width: 1.1, depth: 1.2 },
        _ => return None,
    })
}

/// (expand ratio, kernel, stride, in channels, out channels, layers): EfficientNet-B0's
/// stages, which every variant scales.
const B0_STAGES: [(i64, i64, i64, i64, i64, usize); 7] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
];
const STOCHASTIC_DEPTH: f64 = 0.2;
/// Lite's fixed stem and head widths.
const LITE_STEM: i64 = 32;
const LITE_HEAD: i64 = 1280;

/// TensorFlow's `round_filters` (torchvision's `_make_divisible`, divisor 8): the nearest
/// multiple of 8, never more than 10% below.
fn round_filters(channels: i64, width: f64) -> i64 {
    let scaled = channels as f64 * width;
    let rounded = (((scaled + 4.0) as i64) / 8 * 8).max(8);
    if (rounded as f64) < 0.9 * scaled {
        rounded + 8
    } else {
        rounded
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    Silu,
    Relu6,
}

/// How a variant builds its layers.
#[derive(Debug, Clone, Copy)]
struct Style {
    activation: Activation,
    squeeze_excitation: bool,
    tf_same_padding: bool,
    bn_eps: f64,
}

impl Variant {
    fn style(self) -> Style {
        match self {
            Variant::B0 => {
                Style { activation: Activation::Silu, squeeze_excitation: true, tf_same_padding: false, bn_eps: 1e-5 }
            }
            Variant::Lite { .. } => {
                Style { activation: Activation::Relu6, squeeze_excitation: false, tf_same_padding: true, bn_eps: 1e-3 }
            }
        }
    }

    /// The stages after width and depth scaling (B0's are B0_STAGES as they are).
    fn stages(self) -> Vec<(i64, i64, i64, i64, i64, usize)> {
        let Variant::Lite { width, depth } = self else { return B0_STAGES.to_vec() };
        let last = B0_STAGES.len() - 1;
        B0_STAGES
            .iter()
            .enumerate()
            .map(|(i, &(e, k, s, cin, cout, layers))| {
                let fixed = i == 0 || i == last;
                let layers = if fixed { layers } else { (depth * layers as f64).ceil() as usize };
                let cin = if i == 0 { LITE_STEM } else { round_filters(cin, width) };
                (e, k, s, cin, round_filters(cout, width), layers)
            })
            .collect()
    }
}

/// torchvision's `Conv2dNormActivation`: conv (no bias) + BatchNorm, then the activation
/// unless it is a block's projection. With TensorFlow's SAME padding a stride-2 conv pads
/// its input itself (by the input's size); stride 1 with an odd kernel is symmetric.
#[derive(Debug)]
struct ConvBnAct {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    activation: Option<Activation>,
    /// (kernel, stride) of a conv that pads its input as TensorFlow's SAME
    same: Option<(i64, i64)>,
}

impl ConvBnAct {
    #[allow(clippy::too_many_arguments)]
    fn new(p: nn::Path, i: i64, o: i64, k: i64, stride: i64, groups: i64, style: &Style, cfg: &NetConfig) -> Self {
        let same = (style.tf_same_padding && stride > 1).then_some((k, stride));
        let padding = if same.is_some() { 0 } else { (k - 1) / 2 };
        ConvBnAct {
            conv: conv(&p / 0, i, o, k, stride, padding, groups),
            bn: bn_eps(&p / 1, o, style.bn_eps, cfg),
            activation: Some(style.activation),
            same,
        }
    }

    fn projection(self) -> Self {
        ConvBnAct { activation: None, ..self }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let h = match self.same {
            Some((k, s)) => tf_same_pad(xs, k, s).apply(&self.conv),
            None => xs.apply(&self.conv),
        };
        let mut h = h.apply_t(&self.bn, train);
        match self.activation {
            Some(Activation::Silu) => h.silu_(),
            Some(Activation::Relu6) => h.clamp_(0.0, 6.0),
            None => h,
        }
    }
}

/// TensorFlow's SAME padding of `xs` for a `kernel` x `kernel` conv of `stride`: per axis
/// `max((ceil(n / s) - 1) * s + k - n, 0)` in all, the smaller half before, the rest after.
fn tf_same_pad(xs: &Tensor, kernel: i64, stride: i64) -> Tensor {
    let size = xs.size();
    let total = |n: i64| (((n + stride - 1) / stride - 1) * stride + kernel - n).max(0);
    let (ph, pw) = (total(size[2]), total(size[3]));
    if ph == 0 && pw == 0 {
        return xs.shallow_clone();
    }
    xs.constant_pad_nd([pw / 2, pw - pw / 2, ph / 2, ph - ph / 2])
}

/// A 1x1 conv with a bias (the squeeze-excitation's fc1/fc2): kaiming-normal weights
/// (fan out), zero bias, as torchvision's init.
fn conv1x1_bias(p: nn::Path, i: i64, o: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        bias: true,
        ws_init: nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        },
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    nn::conv2d(p, i, o, 1, cfg)
}

#[derive(Debug)]
struct SqueezeExcitation {
    fc1: nn::Conv2D,
    fc2: nn::Conv2D,
}

#[derive(Debug)]
struct MBConv {
    expand: Option<ConvBnAct>,
    depthwise: ConvBnAct,
    squeeze_excitation: Option<SqueezeExcitation>,
    project: ConvBnAct,
    /// stride 1 and as many channels out as in
    residual: bool,
    /// probability of dropping the residual branch of a sample (training only)
    stochastic_depth: f64,
}

impl MBConv {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let h = match &self.expand {
            Some(e) => e.forward_t(xs, train),
            None => xs.shallow_clone(),
        };
        let h = self.depthwise.forward_t(&h, train);
        // not in place: the activation before it keeps its output for the backward pass
        let h = match &self.squeeze_excitation {
            Some(se) => {
                let scale = h.adaptive_avg_pool2d([1, 1]).apply(&se.fc1).silu_().apply(&se.fc2).sigmoid_();
                h * scale
            }
            None => h,
        };
        let mut out = self.project.forward_t(&h, train);
        if self.residual {
            if train && self.stochastic_depth > 0.0 {
                // torchvision's stochastic_depth(mode = "row") and TensorFlow's drop connect:
                // keep each sample's branch with probability 1 - p, scaled by 1 / (1 - p)
                let survival = 1.0 - self.stochastic_depth;
                let mut keep = Tensor::empty([out.size()[0], 1, 1, 1], (out.kind(), out.device()));
                let keep = keep.bernoulli_float_(survival) / survival;
                out *= keep;
            }
            let _ = out.g_add_(xs);
        }
        out
    }
}

#[derive(Debug)]
pub struct EfficientNet {
    stem: ConvBnAct,
    blocks: Vec<MBConv>,
    last: ConvBnAct,
    pub feature_dim: i64,
}

impl EfficientNet {
    pub fn new(p: &nn::Path, variant: Variant, cfg: &NetConfig) -> EfficientNet {
        let style = variant.style();
        let stages = variant.stages();
        let total_blocks: usize = stages.iter().map(|s| s.5).sum();
        let f = p / "features";
        let stem = ConvBnAct::new(&f / 0, 3, stages[0].3, 3, 2, 1, &style, cfg);
        let mut blocks = Vec::with_capacity(total_blocks);
        for (stage, &(expand_ratio, k, stage_stride, stage_in, out_c, layers)) in stages.iter().enumerate() {
            for j in 0..layers {
                let (in_c, stride) = if j == 0 { (stage_in, stage_stride) } else { (out_c, 1) };
                let bp = &f / (stage + 1) / j / "block";
                let hidden = in_c * expand_ratio;
                // block.{k}: [expand,] depthwise, [squeeze-excitation,] project
                let dw = usize::from(hidden != in_c);
                let se = usize::from(style.squeeze_excitation);
                let expand = (dw == 1).then(|| ConvBnAct::new(&bp / 0, in_c, hidden, 1, 1, 1, &style, cfg));
                let depthwise = ConvBnAct::new(&bp / dw, hidden, hidden, k, stride, hidden, &style, cfg);
                let squeeze_excitation = style.squeeze_excitation.then(|| {
                    let squeeze = (in_c / 4).max(1);
                    SqueezeExcitation {
                        fc1: conv1x1_bias(&bp / (dw + 1) / "fc1", hidden, squeeze),
                        fc2: conv1x1_bias(&bp / (dw + 1) / "fc2", squeeze, hidden),
                    }
                });
                let project = ConvBnAct::new(&bp / (dw + 1 + se), hidden, out_c, 1, 1, 1, &style, cfg).projection();
                blocks.push(MBConv {
                    expand,
                    depthwise,
                    squeeze_excitation,
                    project,
                    residual: stride == 1 && in_c == out_c,
                    stochastic_depth: STOCHASTIC_DEPTH * blocks.len() as f64 / total_blocks as f64,
                });
            }
        }
        let last_in = stages[stages.len() - 1].4;
        let feature_dim = match variant {
            Variant::B0 => 4 * last_in,
            Variant::Lite { .. } => LITE_HEAD,
        };
        let last = ConvBnAct::new(&f / (stages.len() + 1), last_in, feature_dim, 1, 1, 1, &style, cfg);
        EfficientNet { stem, blocks, last, feature_dim }
    }
}

impl ModuleT for EfficientNet {
    /// Pooled penultimate features, `[batch, 1280]`.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut h = self.stem.forward_t(xs, train);
        for block in &self.blocks {
            h = block.forward_t(&h, train);
        }
        self.last.forward_t(&h, train).adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}

impl super::FeatureNet for EfficientNet {}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn build(variant: Variant, bn_momentum: f64) -> (nn::VarStore, EfficientNet) {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = EfficientNet::new(&vs.root(), variant, &NetConfig { bn_momentum });
        (vs, net)
    }

    #[test]
    fn gives_pooled_1280_features_in_train_and_eval_mode() {
        tch::set_num_threads(2);
        for (arch, blocks) in [("efficientnet_b0", 16), ("efficientnet_lite0", 16), ("efficientnet_lite2", 21)] {
            let Some(variant) = variant(arch) else { panic!("{arch}") };
            let (_vs, net) = build(variant, 0.1);
            assert_eq!(net.feature_dim, 1280);
            assert_eq!(net.blocks.len(), blocks, "{arch}");
            // 33: an odd size, where SAME padding of a stride-2 conv is symmetric
            for size in [32, 33] {
                let x = Tensor::randn([2, 3, size, size], (Kind::Float, Device::Cpu));
                let train = net.forward_t(&x, true);
                assert_eq!(train.size(), vec![2, 1280]);
                train.sum(Kind::Float).backward(); // in-place SiLU / sigmoid / residual add keep autograd valid
                let eval = tch::no_grad(|| net.forward_t(&x, false));
                assert_eq!(eval.size(), vec![2, 1280]);
                // eval mode is deterministic (no stochastic depth)
                let again = tch::no_grad(|| net.forward_t(&x, false));
                assert_eq!(f64::try_from((&eval - &again).abs().max()).unwrap(), 0.0);
            }
        }
    }

    #[test]
    fn lite_stages_scale_as_tensorflow() {
        let Some(lite2) = variant("efficientnet_lite2") else { panic!() };
        let stages: Vec<(i64, i64, usize)> = lite2.stages().iter().map(|s| (s.3, s.4, s.5)).collect();
        assert_eq!(
            stages,
            vec![(32, 16, 1), (16, 24, 3), (24, 48, 3), (48, 88, 4), (88, 120, 4), (120, 208, 5), (208, 352, 1)]
        );
        let Some(lite1) = variant("efficientnet_lite1") else { panic!() };
        assert_eq!(lite1.stages().iter().map(|s| s.5).sum::<usize>(), 21);
        assert_eq!(round_filters(112, 1.1), 120);
        assert_eq!(round_filters(32, 1.0), 32);
    }

    #[test]
    fn tf_same_padding_is_asymmetric_for_even_inputs() {
        let x = Tensor::ones([1, 1, 8, 8], (Kind::Float, Device::Cpu));
        // k3 s2 on 8: total (4-1)*2+3-8 = 1 -> 0 before, 1 after
        assert_eq!(tf_same_pad(&x, 3, 2).size(), vec![1, 1, 9, 9]);
        let padded = tf_same_pad(&x, 3, 2);
        assert_eq!(f64::try_from(padded.get(0).get(0).get(8).sum(Kind::Float)).unwrap(), 0.0, "bottom row padded");
        assert_eq!(f64::try_from(padded.get(0).get(0).get(0).sum(Kind::Float)).unwrap(), 8.0, "top row not");
        // k5 s2 on 8: total 3 -> 1 before, 2 after
        assert_eq!(tf_same_pad(&x, 5, 2).size(), vec![1, 1, 11, 11]);
        // k3 s2 on 15: total 2 -> 1 and 1
        let odd = Tensor::ones([1, 1, 15, 15], (Kind::Float, Device::Cpu));
        assert_eq!(tf_same_pad(&odd, 3, 2).size(), vec![1, 1, 17, 17]);
    }

    #[test]
    fn stochastic_depth_grows_with_depth_as_torchvision() {
        let (_vs, net) = build(Variant::B0, 0.1);
        let probs: Vec<f64> = net.blocks.iter().map(|b| b.stochastic_depth).collect();
        assert_eq!(probs[0], 0.0);
        assert!((probs[15] - 0.2 * 15.0 / 16.0).abs() < 1e-12);
        assert_eq!(net.blocks.iter().filter(|b| b.residual).count(), 9);
    }

    #[test]
    fn batchnorm_running_stats_move_by_the_configured_momentum() {
        tch::set_num_threads(2);
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        for variant in [Variant::B0, Variant::Lite { width: 1.0, depth: 1.0 }] {
            let (slow_vs, slow) = build(variant, 0.1);
            let (mut fast_vs, fast) = build(variant, 0.5);
            // the same weights in both, whatever other tests draw from libtorch's one
            // generator between the two builds
            fast_vs.copy(&slow_vs).unwrap();
            let mut means = Vec::new();
            for (vs, net) in [(&slow_vs, &slow), (&fast_vs, &fast)] {
                let _ = tch::no_grad(|| net.forward_t(&x, true));
                means.push(vs.variables()["features.0.1.running_mean"].shallow_clone());
            }
            let batch_mean = &means[0] / 0.1;
            assert!(f64::try_from(batch_mean.abs().max()).unwrap() > 1e-3);
            let diff = f64::try_from((&means[1] - &batch_mean * 0.5).abs().max()).unwrap();
            assert!(diff < 1e-5, "{variant:?}: running_mean with momentum 0.5 is off by {diff}");
        }
    }
}
