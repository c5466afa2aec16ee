//! ResNet-18/34/50/101/152 with torchvision's parameter names (`conv1`, `bn1`,
//! `layer1.0.conv1`, `layer1.0.downsample.0`, ...), written with in-place ReLU and an
//! in-place residual add: the stock tch::vision ResNets allocate a fresh tensor for each
//! and train about 7% slower than PyTorch (shared/bench/README.md).

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::{bn, conv, NetConfig};

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a handful per network, built once
enum Block {
    Basic {
        conv1: nn::Conv2D,
        bn1: nn::BatchNorm,
        conv2: nn::Conv2D,
        bn2: nn::BatchNorm,
        downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
    },
    Bottleneck {
        conv1: nn::Conv2D,
        bn1: nn::BatchNorm,
        conv2: nn::Conv2D,
        bn2: nn::BatchNorm,
        conv3: nn::Conv2D,
        bn3: nn::BatchNorm,
        downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
    },
}

impl Block {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let (mut out, downsample) = match self {
            Block::Basic { conv1, bn1, conv2, bn2, downsample } => {
                let h = xs.apply(conv1).apply_t(bn1, train).relu_();
                (h.apply(conv2).apply_t(bn2, train), downsample)
            }
            Block::Bottleneck { conv1, bn1, conv2, bn2, conv3, bn3, downsample } => {
                let h = xs.apply(conv1).apply_t(bn1, train).relu_();
                let h = h.apply(conv2).apply_t(bn2, train).relu_();
                (h.apply(conv3).apply_t(bn3, train), downsample)
            }
        };
        match downsample {
            Some((c, b)) => {
                let _ = out.g_add_(&xs.apply(c).apply_t(b, train));
            }
            None => {
                let _ = out.g_add_(xs);
            }
        }
        out.relu_()
    }
}

#[derive(Debug)]
pub struct ResNet {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    blocks: Vec<Block>,
    pub feature_dim: i64,
}

/// (bottleneck?, blocks per stage)
pub fn layout(arch: &str) -> Option<(bool, [usize; 4])> {
    Some(match arch {
        "resnet18" => (false, [2, 2, 2, 2]),
        "resnet34" => (false, [3, 4, 6, 3]),
        "resnet50" => (true, [3, 4, 6, 3]),
        "resnet101" => (true, [3, 4, 23, 3]),
        "resnet152" => (true, [3, 8, 36, 3]),
        _ => return None,
    })
}

impl ResNet {
    pub fn new(p: &nn::Path, bottleneck: bool, stages: [usize; 4], cfg: &NetConfig) -> ResNet {
        let expansion = if bottleneck { 4 } else { 1 };
        let conv1 = conv(p / "conv1", 3, 64, 7, 2, 3, 1);
        let bn1 = bn(p / "bn1", 64, cfg);
        let mut blocks = Vec::new();
        let mut in_c = 64;
        for (stage, &n) in stages.iter().enumerate() {
            let width = 64 << stage;
            let lp = p / format!("layer{}", stage + 1);
            for i in 0..n {
                let stride = if i == 0 && stage > 0 { 2 } else { 1 };
                let bp = &lp / i;
                let out_c = width * expansion;
                let downsample = (stride != 1 || in_c != out_c).then(|| {
                    (conv(&bp / "downsample" / 0, in_c, out_c, 1, stride, 0, 1), bn(&bp / "downsample" / 1, out_c, cfg))
                });
                let block = if bottleneck {
                    Block::Bottleneck {
                        conv1: conv(&bp / "conv1", in_c, width, 1, 1, 0, 1),
                        bn1: bn(&bp / "bn1", width, cfg),
                        conv2: conv(&bp / "conv2", width, width, 3, stride, 1, 1),
                        bn2: bn(&bp / "bn2", width, cfg),
                        conv3: conv(&bp / "conv3", width, out_c, 1, 1, 0, 1),
                        bn3: bn(&bp / "bn3", out_c, cfg),
                        downsample,
                    }
                } else {
                    Block::Basic {
                        conv1: conv(&bp / "conv1", in_c, width, 3, stride, 1, 1),
                        bn1: bn(&bp / "bn1", width, cfg),
                        conv2: conv(&bp / "conv2", width, width, 3, 1, 1, 1),
                        bn2: bn(&bp / "bn2", width, cfg),
                        downsample,
                    }
                };
                blocks.push(block);
                in_c = out_c;
            }
        }
        ResNet { conv1, bn1, blocks, feature_dim: in_c }
    }
}

impl ModuleT for ResNet {
    /// Pooled penultimate features, `[batch, feature_dim]`.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut h =
            xs.apply(&self.conv1).apply_t(&self.bn1, train).relu_().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for block in &self.blocks {
            h = block.forward_t(&h, train);
        }
        h.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}

impl super::FeatureNet for ResNet {}
