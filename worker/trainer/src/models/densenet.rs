//! DenseNet-121/169/201 with torchvision's parameter names (`features.conv0`,
//! `features.denseblock1.denselayer1.norm1`, `features.transition1.conv`, `features.norm5`).

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::{bn, conv, NetConfig};

#[derive(Debug)]
struct DenseLayer {
    norm1: nn::BatchNorm,
    conv1: nn::Conv2D,
    norm2: nn::BatchNorm,
    conv2: nn::Conv2D,
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a handful per network, built once
enum Stage {
    Block(Vec<DenseLayer>),
    Transition { norm: nn::BatchNorm, conv: nn::Conv2D },
}

#[derive(Debug)]
pub struct DenseNet {
    conv0: nn::Conv2D,
    norm0: nn::BatchNorm,
    stages: Vec<Stage>,
    norm5: nn::BatchNorm,
    pub feature_dim: i64,
}

pub fn layout(arch: &str) -> Option<[usize; 4]> {
    Some(match arch {
        "densenet121" => [6, 12, 24, 16],
        "densenet169" => [6, 12, 32, 32],
        "densenet201" => [6, 12, 48, 32],
        _ => return None,
    })
}

impl DenseNet {
    pub fn new(p: &nn::Path, blocks: [usize; 4], cfg: &NetConfig) -> DenseNet {
        let (growth, bn_size, init) = (32i64, 4i64, 64i64);
        let f = p / "features";
        let conv0 = conv(&f / "conv0", 3, init, 7, 2, 3, 1);
        let norm0 = bn(&f / "norm0", init, cfg);
        let mut c = init;
        let mut stages = Vec::new();
        for (i, &n) in blocks.iter().enumerate() {
            let bp = &f / format!("denseblock{}", i + 1);
            let mut layers = Vec::with_capacity(n);
            for j in 0..n {
                let lp = &bp / format!("denselayer{}", j + 1);
                let in_c = c + j as i64 * growth;
                layers.push(DenseLayer {
                    norm1: bn(&lp / "norm1", in_c, cfg),
                    conv1: conv(&lp / "conv1", in_c, bn_size * growth, 1, 1, 0, 1),
                    norm2: bn(&lp / "norm2", bn_size * growth, cfg),
                    conv2: conv(&lp / "conv2", bn_size * growth, growth, 3, 1, 1, 1),
                });
            }
            stages.push(Stage::Block(layers));
            c += n as i64 * growth;
            if i != 3 {
                let tp = &f / format!("transition{}", i + 1);
                stages.push(Stage::Transition {
                    norm: bn(&tp / "norm", c, cfg),
                    conv: conv(&tp / "conv", c, c / 2, 1, 1, 0, 1),
                });
                c /= 2;
            }
        }
        let norm5 = bn(&f / "norm5", c, cfg);
        DenseNet { conv0, norm0, stages, norm5, feature_dim: c }
    }
}

impl ModuleT for DenseNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut h =
            xs.apply(&self.conv0).apply_t(&self.norm0, train).relu_().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for stage in &self.stages {
            h = match stage {
                Stage::Block(layers) => {
                    let mut feats = vec![h];
                    for l in layers {
                        let input = Tensor::cat(&feats, 1);
                        let y = input
                            .apply_t(&l.norm1, train)
                            .relu_()
                            .apply(&l.conv1)
                            .apply_t(&l.norm2, train)
                            .relu_()
                            .apply(&l.conv2);
                        feats.push(y);
                    }
                    Tensor::cat(&feats, 1)
                }
                Stage::Transition { norm, conv } => h.apply_t(norm, train).relu_().apply(conv).avg_pool2d(
                    [2, 2],
                    [2, 2],
                    [0, 0],
                    false,
                    true,
                    None::<i64>,
                ),
            };
        }
        h.apply_t(&self.norm5, train).relu_().adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}

impl super::FeatureNet for DenseNet {}
