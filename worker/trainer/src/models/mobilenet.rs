//! MobileNet v2 (width 1.0 and 1.4) with torchvision's parameter names (`features.0.0`,
//! `features.1.conv.0.0`, `features.2.conv.1.1`, `features.18.0`, ...).

use tch::nn::{self, ModuleT};
use tch::Tensor;

use super::{bn, conv, NetConfig};

#[derive(Debug)]
struct ConvBnRelu6 {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl ConvBnRelu6 {
    fn new(p: nn::Path, i: i64, o: i64, k: i64, stride: i64, groups: i64, cfg: &NetConfig) -> Self {
        ConvBnRelu6 { conv: conv(&p / 0, i, o, k, stride, (k - 1) / 2, groups), bn: bn(&p / 1, o, cfg) }
    }
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.conv).apply_t(&self.bn, train).clamp_(0.0, 6.0)
    }
}

#[derive(Debug)]
struct InvertedResidual {
    expand: Option<ConvBnRelu6>,
    depthwise: ConvBnRelu6,
    project: nn::Conv2D,
    project_bn: nn::BatchNorm,
    residual: bool,
}

#[derive(Debug)]
pub struct MobileNetV2 {
    stem: ConvBnRelu6,
    blocks: Vec<InvertedResidual>,
    last: ConvBnRelu6,
    pub feature_dim: i64,
}

fn make_divisible(v: f64, divisor: i64) -> i64 {
    let new_v = ((v + divisor as f64 / 2.0) as i64 / divisor * divisor).max(divisor);
    if (new_v as f64) < 0.9 * v {
        new_v + divisor
    } else {
        new_v
    }
}

pub fn width(arch: &str) -> Option<f64> {
    match arch {
        "mobilenet_v2" => Some(1.0),
        "mobilenet_v2_140" => Some(1.4),
        _ => None,
    }
}

impl MobileNetV2 {
    pub fn new(p: &nn::Path, width_mult: f64, cfg: &NetConfig) -> MobileNetV2 {
        let settings: [(i64, i64, usize, i64); 7] =
            [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];
        let f = p / "features";
        let mut in_c = make_divisible(32.0 * width_mult, 8);
        let last_c = make_divisible(1280.0 * width_mult.max(1.0), 8);
        let stem = ConvBnRelu6::new(&f / 0, 3, in_c, 3, 2, 1, cfg);
        let mut blocks = Vec::new();
        let mut index = 1;
        for (t, c, n, s) in settings {
            let out_c = make_divisible(c as f64 * width_mult, 8);
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                let hidden = in_c * t;
                let cp = &f / index / "conv";
                let (expand, dw_idx) =
                    if t != 1 { (Some(ConvBnRelu6::new(&cp / 0, in_c, hidden, 1, 1, 1, cfg)), 1) } else { (None, 0) };
                blocks.push(InvertedResidual {
                    expand,
                    depthwise: ConvBnRelu6::new(&cp / dw_idx, hidden, hidden, 3, stride, hidden, cfg),
                    project: conv(&cp / (dw_idx + 1), hidden, out_c, 1, 1, 0, 1),
                    project_bn: bn(&cp / (dw_idx + 2), out_c, cfg),
                    residual: stride == 1 && in_c == out_c,
                });
                in_c = out_c;
                index += 1;
            }
        }
        let last = ConvBnRelu6::new(&f / index, in_c, last_c, 1, 1, 1, cfg);
        MobileNetV2 { stem, blocks, last, feature_dim: last_c }
    }
}

impl ModuleT for MobileNetV2 {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut h = self.stem.forward_t(xs, train);
        for b in &self.blocks {
            let mut y = match &b.expand {
                Some(e) => e.forward_t(&h, train),
                None => h.shallow_clone(),
            };
            y = b.depthwise.forward_t(&y, train).apply(&b.project).apply_t(&b.project_bn, train);
            if b.residual {
                let _ = y.g_add_(&h);
            }
            h = y;
        }
        self.last.forward_t(&h, train).adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }
}

impl super::FeatureNet for MobileNetV2 {}
