//! Inception v3 with torchvision's parameter names (`Conv2d_1a_3x3.conv`, `Conv2d_1a_3x3.bn`,
//! `Mixed_5b.branch1x1.conv`, `Mixed_7c.branch3x3dbl_3b.bn`, ...), BatchNorm eps 0.001 and
//! momentum from the cell. No `fc`: the output is the pooled 2048-d feature, before the
//! dropout. The auxiliary classifier (torchvision's `AuxLogits`, which only feeds the aux
//! loss in training) is [`AuxLogits`], added to a network by `Network::with_aux_head`.
//! Based on tch 0.24's `vision::inception` (MIT/Apache-2.0, Laurent Mazare).

use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};
use tsweep_proto::arch::Normalize;

use super::NetConfig;

/// torchvision's `BasicConv2d`: conv (no bias) + BatchNorm(eps 0.001) + ReLU.
#[derive(Debug)]
struct BasicConv2d {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
}

impl BasicConv2d {
    fn new(p: nn::Path, i: i64, o: i64, kernel: [i64; 2], stride: i64, padding: [i64; 2], cfg: &NetConfig) -> Self {
        // torchvision's init_weights: truncated normal, std 0.1, cut at +-2 (20 std: a plain normal)
        Self::with_init(p, i, o, kernel, stride, padding, 0.1, cfg)
    }

    /// Weights drawn from N(0, `stdev`²) (torchvision sets 0.01 for the aux head's `conv1`).
    #[allow(clippy::too_many_arguments)]
    fn with_init(
        p: nn::Path,
        i: i64,
        o: i64,
        kernel: [i64; 2],
        stride: i64,
        padding: [i64; 2],
        stdev: f64,
        cfg: &NetConfig,
    ) -> Self {
        let conv_cfg = nn::ConvConfigND::<[i64; 2]> {
            stride: [stride, stride],
            padding,
            bias: false,
            ws_init: nn::Init::Randn { mean: 0.0, stdev },
            ..Default::default()
        };
        let bn_cfg = nn::BatchNormConfig { momentum: cfg.bn_momentum, eps: 0.001, ..Default::default() };
        BasicConv2d { conv: nn::conv(&p / "conv", i, o, kernel, conv_cfg), bn: nn::batch_norm2d(&p / "bn", o, bn_cfg) }
    }

    /// A square `k`x`k` kernel.
    fn square(p: nn::Path, i: i64, o: i64, k: i64, stride: i64, padding: i64, cfg: &NetConfig) -> Self {
        Self::new(p, i, o, [k, k], stride, [padding, padding], cfg)
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply(&self.conv).apply_t(&self.bn, train).relu_()
    }
}

/// Applies `convs` one after the other.
fn chain(xs: &Tensor, convs: &[BasicConv2d], train: bool) -> Tensor {
    convs.iter().fold(xs.shallow_clone(), |h, c| c.forward_t(&h, train))
}

fn avg_pool_3x3(xs: &Tensor) -> Tensor {
    // F.avg_pool2d(x, 3, stride=1, padding=1): count_include_pad is true
    xs.avg_pool2d([3, 3], [1, 1], [1, 1], false, true, None::<i64>)
}

fn max_pool_3x3_s2(xs: &Tensor) -> Tensor {
    xs.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// The `Mixed_*` blocks (torchvision's InceptionA..E); each branch is a chain of convs.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // eleven per network, built once
enum Mixed {
    /// branch1x1, branch5x5_{1,2}, branch3x3dbl_{1,2,3}, branch_pool (after a 3x3 avg pool)
    A { b1x1: BasicConv2d, b5x5: Vec<BasicConv2d>, b3x3dbl: Vec<BasicConv2d>, pool: BasicConv2d },
    /// branch3x3 (stride 2), branch3x3dbl_{1,2,3}, 3x3/2 max pool
    B { b3x3: BasicConv2d, b3x3dbl: Vec<BasicConv2d> },
    /// branch1x1, branch7x7_{1,2,3}, branch7x7dbl_{1..5}, branch_pool
    C { b1x1: BasicConv2d, b7x7: Vec<BasicConv2d>, b7x7dbl: Vec<BasicConv2d>, pool: BasicConv2d },
    /// branch3x3_{1,2}, branch7x7x3_{1..4}, 3x3/2 max pool
    D { b3x3: Vec<BasicConv2d>, b7x7x3: Vec<BasicConv2d> },
    /// branch1x1, branch3x3_1 -> {2a, 2b}, branch3x3dbl_{1,2} -> {3a, 3b}, branch_pool
    E {
        b1x1: BasicConv2d,
        b3x3_1: BasicConv2d,
        b3x3_2: [BasicConv2d; 2],
        b3x3dbl: Vec<BasicConv2d>,
        b3x3dbl_3: [BasicConv2d; 2],
        pool: BasicConv2d,
    },
}

impl Mixed {
    fn a(p: nn::Path, c_in: i64, c_pool: i64, cfg: &NetConfig) -> Self {
        let sq = |name: &str, i, o, k, pad| BasicConv2d::square(&p / name, i, o, k, 1, pad, cfg);
        Mixed::A {
            b1x1: sq("branch1x1", c_in, 64, 1, 0),
            b5x5: vec![sq("branch5x5_1", c_in, 48, 1, 0), sq("branch5x5_2", 48, 64, 5, 2)],
            b3x3dbl: vec![
                sq("branch3x3dbl_1", c_in, 64, 1, 0),
                sq("branch3x3dbl_2", 64, 96, 3, 1),
                sq("branch3x3dbl_3", 96, 96, 3, 1),
            ],
            pool: sq("branch_pool", c_in, c_pool, 1, 0),
        }
    }

    fn b(p: nn::Path, c_in: i64, cfg: &NetConfig) -> Self {
        Mixed::B {
            b3x3: BasicConv2d::square(&p / "branch3x3", c_in, 384, 3, 2, 0, cfg),
            b3x3dbl: vec![
                BasicConv2d::square(&p / "branch3x3dbl_1", c_in, 64, 1, 1, 0, cfg),
                BasicConv2d::square(&p / "branch3x3dbl_2", 64, 96, 3, 1, 1, cfg),
                BasicConv2d::square(&p / "branch3x3dbl_3", 96, 96, 3, 2, 0, cfg),
            ],
        }
    }

    fn c(p: nn::Path, c_in: i64, c7: i64, cfg: &NetConfig) -> Self {
        let one = |name: &str, i, o| BasicConv2d::square(&p / name, i, o, 1, 1, 0, cfg);
        let k1x7 = |name: &str, i, o| BasicConv2d::new(&p / name, i, o, [1, 7], 1, [0, 3], cfg);
        let k7x1 = |name: &str, i, o| BasicConv2d::new(&p / name, i, o, [7, 1], 1, [3, 0], cfg);
        Mixed::C {
            b1x1: one("branch1x1", c_in, 192),
            b7x7: vec![one("branch7x7_1", c_in, c7), k1x7("branch7x7_2", c7, c7), k7x1("branch7x7_3", c7, 192)],
            b7x7dbl: vec![
                one("branch7x7dbl_1", c_in, c7),
                k7x1("branch7x7dbl_2", c7, c7),
                k1x7("branch7x7dbl_3", c7, c7),
                k7x1("branch7x7dbl_4", c7, c7),
                k1x7("branch7x7dbl_5", c7, 192),
            ],
            pool: one("branch_pool", c_in, 192),
        }
    }

    fn d(p: nn::Path, c_in: i64, cfg: &NetConfig) -> Self {
        Mixed::D {
            b3x3: vec![
                BasicConv2d::square(&p / "branch3x3_1", c_in, 192, 1, 1, 0, cfg),
                BasicConv2d::square(&p / "branch3x3_2", 192, 320, 3, 2, 0, cfg),
            ],
            b7x7x3: vec![
                BasicConv2d::square(&p / "branch7x7x3_1", c_in, 192, 1, 1, 0, cfg),
                BasicConv2d::new(&p / "branch7x7x3_2", 192, 192, [1, 7], 1, [0, 3], cfg),
                BasicConv2d::new(&p / "branch7x7x3_3", 192, 192, [7, 1], 1, [3, 0], cfg),
                BasicConv2d::square(&p / "branch7x7x3_4", 192, 192, 3, 2, 0, cfg),
            ],
        }
    }

    fn e(p: nn::Path, c_in: i64, cfg: &NetConfig) -> Self {
        let one = |name: &str, i, o| BasicConv2d::square(&p / name, i, o, 1, 1, 0, cfg);
        let k1x3 = |name: &str| BasicConv2d::new(&p / name, 384, 384, [1, 3], 1, [0, 1], cfg);
        let k3x1 = |name: &str| BasicConv2d::new(&p / name, 384, 384, [3, 1], 1, [1, 0], cfg);
        Mixed::E {
            b1x1: one("branch1x1", c_in, 320),
            b3x3_1: one("branch3x3_1", c_in, 384),
            b3x3_2: [k1x3("branch3x3_2a"), k3x1("branch3x3_2b")],
            b3x3dbl: vec![
                one("branch3x3dbl_1", c_in, 448),
                BasicConv2d::square(&p / "branch3x3dbl_2", 448, 384, 3, 1, 1, cfg),
            ],
            b3x3dbl_3: [k1x3("branch3x3dbl_3a"), k3x1("branch3x3dbl_3b")],
            pool: one("branch_pool", c_in, 192),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let branches = match self {
            Mixed::A { b1x1, b5x5, b3x3dbl, pool } => vec![
                b1x1.forward_t(xs, train),
                chain(xs, b5x5, train),
                chain(xs, b3x3dbl, train),
                pool.forward_t(&avg_pool_3x3(xs), train),
            ],
            Mixed::B { b3x3, b3x3dbl } => {
                vec![b3x3.forward_t(xs, train), chain(xs, b3x3dbl, train), max_pool_3x3_s2(xs)]
            }
            Mixed::C { b1x1, b7x7, b7x7dbl, pool } => vec![
                b1x1.forward_t(xs, train),
                chain(xs, b7x7, train),
                chain(xs, b7x7dbl, train),
                pool.forward_t(&avg_pool_3x3(xs), train),
            ],
            Mixed::D { b3x3, b7x7x3 } => vec![chain(xs, b3x3, train), chain(xs, b7x7x3, train), max_pool_3x3_s2(xs)],
            Mixed::E { b1x1, b3x3_1, b3x3_2, b3x3dbl, b3x3dbl_3, pool } => {
                let h3 = b3x3_1.forward_t(xs, train);
                let hdbl = chain(xs, b3x3dbl, train);
                vec![
                    b1x1.forward_t(xs, train),
                    b3x3_2[0].forward_t(&h3, train),
                    b3x3_2[1].forward_t(&h3, train),
                    b3x3dbl_3[0].forward_t(&hdbl, train),
                    b3x3dbl_3[1].forward_t(&hdbl, train),
                    pool.forward_t(&avg_pool_3x3(xs), train),
                ]
            }
        };
        Tensor::cat(&branches, 1)
    }
}

#[derive(Debug)]
pub struct InceptionV3 {
    /// Conv2d_1a_3x3, Conv2d_2a_3x3, Conv2d_2b_3x3 (then a 3x3/2 max pool)
    stem1: Vec<BasicConv2d>,
    /// Conv2d_3b_1x1, Conv2d_4a_3x3 (then a 3x3/2 max pool)
    stem2: Vec<BasicConv2d>,
    mixed: Vec<Mixed>,
    /// torchvision's `transform_input` (on for its pretrained weights, which expect inputs
    /// scaled to [-1, 1]): maps inputs normalised with the model's `normalize` (ImageNet's
    /// by default, where it is torchvision's formula) to that scale.
    transform_input: Option<(Tensor, Tensor)>,
    pub feature_dim: i64,
}

impl InceptionV3 {
    /// `transform_input` as torchvision's: `Some(normalisation of the inputs)` for its
    /// pretrained weights (and weights converted from them), `None` for a random init.
    /// Whatever the inputs' normalisation, the pretrained layers then see `(x - 0.5) / 0.5`
    /// of the pixels in [0, 1], as they were trained.
    pub fn new(p: &nn::Path, transform_input: Option<Normalize>, cfg: &NetConfig) -> InceptionV3 {
        let stem1 = vec![
            BasicConv2d::square(p / "Conv2d_1a_3x3", 3, 32, 3, 2, 0, cfg),
            BasicConv2d::square(p / "Conv2d_2a_3x3", 32, 32, 3, 1, 0, cfg),
            BasicConv2d::square(p / "Conv2d_2b_3x3", 32, 64, 3, 1, 1, cfg),
        ];
        let stem2 = vec![
            BasicConv2d::square(p / "Conv2d_3b_1x1", 64, 80, 1, 1, 0, cfg),
            BasicConv2d::square(p / "Conv2d_4a_3x3", 80, 192, 3, 1, 0, cfg),
        ];
        let mixed = vec![
            Mixed::a(p / "Mixed_5b", 192, 32, cfg),
            Mixed::a(p / "Mixed_5c", 256, 64, cfg),
            Mixed::a(p / "Mixed_5d", 288, 64, cfg),
            Mixed::b(p / "Mixed_6a", 288, cfg),
            Mixed::c(p / "Mixed_6b", 768, 128, cfg),
            Mixed::c(p / "Mixed_6c", 768, 160, cfg),
            Mixed::c(p / "Mixed_6d", 768, 160, cfg),
            Mixed::c(p / "Mixed_6e", 768, 192, cfg),
            Mixed::d(p / "Mixed_7a", 768, cfg),
            Mixed::e(p / "Mixed_7b", 1280, cfg),
            Mixed::e(p / "Mixed_7c", 2048, cfg),
        ];
        let transform_input = transform_input.map(|n| {
            // x * std / 0.5 + (mean - 0.5) / 0.5, per channel (torchvision's _transform_input,
            // which has ImageNet's mean and std)
            let device = p.device();
            let per_channel =
                |v: [f64; 3]| Tensor::from_slice(&v).to_kind(Kind::Float).view([1, 3, 1, 1]).to_device(device);
            let scale = per_channel(n.std.map(|s| s / 0.5));
            let shift = per_channel(n.mean.map(|m| (m - 0.5) / 0.5));
            (scale, shift)
        });
        InceptionV3 { stem1, stem2, mixed, transform_input, feature_dim: 2048 }
    }
}

/// Index in `InceptionV3::mixed` of `Mixed_6e`, whose output the auxiliary classifier reads.
const MIXED_6E: usize = 7;

impl InceptionV3 {
    /// Pooled features, and `Mixed_6e`'s output (768 channels) when `tap` is set.
    fn run(&self, xs: &Tensor, train: bool, tap: bool) -> (Tensor, Option<Tensor>) {
        let xs = match &self.transform_input {
            Some((scale, shift)) => xs * scale.to_kind(xs.kind()) + shift.to_kind(xs.kind()),
            None => xs.shallow_clone(),
        };
        let h = max_pool_3x3_s2(&chain(&xs, &self.stem1, train));
        let mut h = max_pool_3x3_s2(&chain(&h, &self.stem2, train));
        let mut tapped = None;
        for (i, block) in self.mixed.iter().enumerate() {
            h = block.forward_t(&h, train);
            if tap && i == MIXED_6E {
                tapped = Some(h.shallow_clone());
            }
        }
        (h.adaptive_avg_pool2d([1, 1]).flatten(1, -1), tapped)
    }
}

impl ModuleT for InceptionV3 {
    /// Pooled penultimate features, `[batch, 2048]` (inputs of at least 75x75).
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.run(xs, train, false).0
    }
}

impl super::FeatureNet for InceptionV3 {
    fn forward_tapped(&self, xs: &Tensor, train: bool) -> (Tensor, Option<Tensor>) {
        self.run(xs, train, true)
    }
}

/// torchvision's `InceptionAux` (parameters under `AuxLogits.`): 5x5/3 average pool of
/// `Mixed_6e`'s output, `conv0` (1x1, 128), `conv1` (5x5, 768), global average pool, `fc`.
/// At 299 px inputs `Mixed_6e` is 17x17 and this is torchvision's head exactly. Smaller
/// inputs (where torchvision's head fails: the map is too small for the pool and the 5x5
/// conv) pool adaptively to 5x5 instead, so the head also trains at the small sizes a CPU
/// study uses.
#[derive(Debug)]
pub struct AuxLogits {
    conv0: BasicConv2d,
    conv1: BasicConv2d,
    fc: nn::Linear,
}

impl AuxLogits {
    pub fn new(p: &nn::Path, num_classes: i64, cfg: &NetConfig) -> AuxLogits {
        let fc_cfg = nn::LinearConfig {
            // torchvision: truncated normal, std 0.001 (a plain normal at that width); bias 0
            ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.001 },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        AuxLogits {
            conv0: BasicConv2d::square(p / "conv0", 768, 128, 1, 1, 0, cfg),
            conv1: BasicConv2d::with_init(p / "conv1", 128, 768, [5, 5], 1, [0, 0], 0.01, cfg),
            fc: nn::linear(p / "fc", 768, num_classes, fc_cfg),
        }
    }

    /// Logits `[batch, num_classes]` from `Mixed_6e`'s output.
    pub fn forward_t(&self, mixed_6e: &Tensor, train: bool) -> Tensor {
        let size = mixed_6e.size();
        let pooled = if size.len() == 4 && size[2] >= 17 && size[3] >= 17 {
            mixed_6e.avg_pool2d([5, 5], [3, 3], [0, 0], false, true, None::<i64>)
        } else {
            mixed_6e.adaptive_avg_pool2d([5, 5])
        };
        let h = self.conv1.forward_t(&self.conv0.forward_t(&pooled, train), train);
        h.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.fc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn build(bn_momentum: f64) -> (nn::VarStore, InceptionV3) {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = InceptionV3::new(&vs.root(), None, &NetConfig { bn_momentum });
        (vs, net)
    }

    fn running_mean(vs: &nn::VarStore, name: &str) -> Tensor {
        vs.variables()[name].shallow_clone()
    }

    #[test]
    fn gives_pooled_2048_features_on_the_smallest_input_in_train_and_eval_mode() {
        tch::set_num_threads(2);
        let (_vs, net) = build(0.1);
        let x = Tensor::randn([2, 3, 75, 75], (Kind::Float, Device::Cpu));
        let train = net.forward_t(&x, true);
        assert_eq!(train.size(), vec![2, 2048]);
        train.sum(Kind::Float).backward(); // in-place ReLUs keep autograd valid
        let eval = tch::no_grad(|| net.forward_t(&x, false));
        assert_eq!(eval.size(), vec![2, 2048]);
        assert!(f64::try_from(eval.abs().sum(Kind::Float)).unwrap() > 0.0);
    }

    #[test]
    fn batchnorm_running_stats_move_by_the_configured_momentum() {
        tch::set_num_threads(2);
        let x = Tensor::randn([2, 3, 75, 75], (Kind::Float, Device::Cpu));
        let (slow_vs, slow) = build(0.1);
        let (mut fast_vs, fast) = build(0.5);
        // the same weights in both, whatever other tests draw from libtorch's one generator
        // between the two builds
        fast_vs.copy(&slow_vs).unwrap();
        let mut means = Vec::new();
        for (vs, net) in [(&slow_vs, &slow), (&fast_vs, &fast)] {
            let _ = tch::no_grad(|| net.forward_t(&x, true));
            means.push(running_mean(vs, "Conv2d_1a_3x3.bn.running_mean"));
        }
        // from zero: running_mean = momentum * batch mean, with the same weights and input
        let batch_mean = &means[0] / 0.1;
        assert!(f64::try_from(batch_mean.abs().max()).unwrap() > 1e-3);
        let diff = f64::try_from((&means[1] - &batch_mean * 0.5).abs().max()).unwrap();
        assert!(diff < 1e-5, "running_mean with momentum 0.5 is off by {diff}");
    }

    #[test]
    fn transform_input_rescales_normalised_inputs_to_minus_one_one() {
        tch::manual_seed(0);
        for n in [Normalize::IMAGENET, Normalize { mean: [0.5, 0.4, 0.3], std: [0.5, 0.25, 1.0] }] {
            let vs = nn::VarStore::new(Device::Cpu);
            let net = InceptionV3::new(&vs.root(), Some(n), &NetConfig { bn_momentum: 0.1 });
            let (scale, shift) = net.transform_input.as_ref().unwrap();
            for c in 0..3 {
                // a pixel at 0 and at 1 (in [0, 1]) after the input normalisation of channel c
                let x = Tensor::from_slice(&[(0.0 - n.mean[c]) / n.std[c], (1.0 - n.mean[c]) / n.std[c]])
                    .to_kind(Kind::Float);
                let mapped = x * scale.view([3]).get(c as i64) + shift.view([3]).get(c as i64);
                let got = Vec::<f32>::try_from(&mapped).unwrap();
                assert!((got[0] + 1.0).abs() < 1e-5 && (got[1] - 1.0).abs() < 1e-5, "{n:?} channel {c}: {got:?}");
            }
        }
    }
}
