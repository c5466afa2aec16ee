//! EfficientNet-B0 with torchvision's parameter names (`features.0.0`, `features.1.0.block.0.0`,
//! `features.2.0.block.2.fc1`, `features.8.1`, ...) and torchvision's layers: symmetric
//! padding, BatchNorm eps 1e-5 (torchvision's b0 uses the default; tch's port used TF's 1e-3
//! and "same" padding), momentum from the cell, SiLU, squeeze-excitation and stochastic depth
//! (0.2 * block index / 16, training only). No classifier: the output is the pooled 1280-d
//! feature, before the classifier's dropout.
//! Based on tch 0.24's `vision::efficientnet` (MIT/Apache-2.0, Laurent Mazare).

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::{bn, conv, NetConfig};

/// torchvision's `Conv2dNormActivation`: conv (no bias, padding (k-1)/2) + BatchNorm, then
/// SiLU unless it is a block's projection.
#[derive(Debug)]
struct ConvBnSilu {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    silu: bool,
}

impl ConvBnSilu {
    fn new(p: nn::Path, i: i64, o: i64, k: i64, stride: i64, groups: i64, cfg: &NetConfig) -> Self {
        ConvBnSilu { conv: conv(&p / 0, i, o, k, stride, (k - 1) / 2, groups), bn: bn(&p / 1, o, cfg), silu: true }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut h = xs.apply(&self.conv).apply_t(&self.bn, train);
        if self.silu {
            h.silu_()
        } else {
            h
        }
    }
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
struct MBConv {
    expand: Option<ConvBnSilu>,
    depthwise: ConvBnSilu,
    se_fc1: nn::Conv2D,
    se_fc2: nn::Conv2D,
    project: ConvBnSilu,
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
        let scale = h.adaptive_avg_pool2d([1, 1]).apply(&self.se_fc1).silu_().apply(&self.se_fc2).sigmoid_();
        let mut out = self.project.forward_t(&(h * scale), train);
        if self.residual {
            if train && self.stochastic_depth > 0.0 {
                // torchvision's stochastic_depth(mode = "row"): keep each sample's branch with
                // probability 1 - p, scaled by 1 / (1 - p)
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
    stem: ConvBnSilu,
    blocks: Vec<MBConv>,
    last: ConvBnSilu,
    pub feature_dim: i64,
}

impl EfficientNet {
    /// EfficientNet-B0 (width and depth 1.0: every channel count below is already a
    /// multiple of 8, so torchvision's `_make_divisible` leaves them as they are).
    pub fn b0(p: &nn::Path, cfg: &NetConfig) -> EfficientNet {
        // (expand ratio, kernel, stride, in channels, out channels, layers), torchvision's b0
        let stages: [(i64, i64, i64, i64, i64, usize); 7] = [
            (1, 3, 1, 32, 16, 1),
            (6, 3, 2, 16, 24, 2),
            (6, 5, 2, 24, 40, 2),
            (6, 3, 2, 40, 80, 3),
            (6, 5, 1, 80, 112, 3),
            (6, 5, 2, 112, 192, 4),
            (6, 3, 1, 192, 320, 1),
        ];
        let stochastic_depth_prob = 0.2;
        let total_blocks: usize = stages.iter().map(|s| s.5).sum();
        let f = p / "features";
        let stem = ConvBnSilu::new(&f / 0, 3, stages[0].3, 3, 2, 1, cfg);
        let mut blocks = Vec::with_capacity(total_blocks);
        for (stage, &(expand_ratio, k, stage_stride, stage_in, out_c, layers)) in stages.iter().enumerate() {
            for j in 0..layers {
                let (in_c, stride) = if j == 0 { (stage_in, stage_stride) } else { (out_c, 1) };
                let bp = &f / (stage + 1) / j / "block";
                let hidden = in_c * expand_ratio;
                let (expand, dw) = if hidden != in_c {
                    (Some(ConvBnSilu::new(&bp / 0, in_c, hidden, 1, 1, 1, cfg)), 1)
                } else {
                    (None, 0)
                };
                let squeeze = (in_c / 4).max(1);
                blocks.push(MBConv {
                    expand,
                    depthwise: ConvBnSilu::new(&bp / dw, hidden, hidden, k, stride, hidden, cfg),
                    se_fc1: conv1x1_bias(&bp / (dw + 1) / "fc1", hidden, squeeze),
                    se_fc2: conv1x1_bias(&bp / (dw + 1) / "fc2", squeeze, hidden),
                    project: ConvBnSilu { silu: false, ..ConvBnSilu::new(&bp / (dw + 2), hidden, out_c, 1, 1, 1, cfg) },
                    residual: stride == 1 && in_c == out_c,
                    stochastic_depth: stochastic_depth_prob * blocks.len() as f64 / total_blocks as f64,
                });
            }
        }
        let last_in = stages[stages.len() - 1].4;
        let feature_dim = 4 * last_in;
        let last = ConvBnSilu::new(&f / (stages.len() + 1), last_in, feature_dim, 1, 1, 1, cfg);
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn build(bn_momentum: f64) -> (nn::VarStore, EfficientNet) {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = EfficientNet::b0(&vs.root(), &NetConfig { bn_momentum });
        (vs, net)
    }

    #[test]
    fn gives_pooled_1280_features_in_train_and_eval_mode() {
        tch::set_num_threads(2);
        let (_vs, net) = build(0.1);
        assert_eq!(net.feature_dim, 1280);
        assert_eq!(net.blocks.len(), 16);
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let train = net.forward_t(&x, true);
        assert_eq!(train.size(), vec![2, 1280]);
        train.sum(Kind::Float).backward(); // in-place SiLU / sigmoid / residual add keep autograd valid
        let eval = tch::no_grad(|| net.forward_t(&x, false));
        assert_eq!(eval.size(), vec![2, 1280]);
        // eval mode is deterministic (no stochastic depth)
        let again = tch::no_grad(|| net.forward_t(&x, false));
        assert_eq!(f64::try_from((&eval - &again).abs().max()).unwrap(), 0.0);
    }

    #[test]
    fn stochastic_depth_grows_with_depth_as_torchvision() {
        let (_vs, net) = build(0.1);
        let probs: Vec<f64> = net.blocks.iter().map(|b| b.stochastic_depth).collect();
        assert_eq!(probs[0], 0.0);
        assert!((probs[15] - 0.2 * 15.0 / 16.0).abs() < 1e-12);
        assert_eq!(net.blocks.iter().filter(|b| b.residual).count(), 9);
    }

    #[test]
    fn batchnorm_running_stats_move_by_the_configured_momentum() {
        tch::set_num_threads(2);
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let mut means = Vec::new();
        for momentum in [0.1, 0.5] {
            let (vs, net) = build(momentum);
            let _ = tch::no_grad(|| net.forward_t(&x, true));
            means.push(vs.variables()["features.0.1.running_mean"].shallow_clone());
        }
        let batch_mean = &means[0] / 0.1;
        assert!(f64::try_from(batch_mean.abs().max()).unwrap() > 1e-3);
        let diff = f64::try_from((&means[1] - &batch_mean * 0.5).abs().max()).unwrap();
        assert!(diff < 1e-5, "running_mean with momentum 0.5 is off by {diff}");
    }
}
