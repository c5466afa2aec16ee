//! The pretraining settings of the paper's second finding on real libtorch: label smoothing
//! and dropout before the head against hand-computed values on a tiny batch, BatchNorm
//! scale fixed at 1, and a pretrain cell handing its backbone (safetensors with the source
//! score in the metadata) to a fine-tune cell that loads it.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard};

use tch::{Device, Kind, Tensor};
use tsweep_proto::cell::{Regime, Regularizers, Stage};
use tsweep_trainer::finetune::training_loss;
use tsweep_trainer::models::{Init, NetConfig, Network};
use tsweep_trainer::tensors::{loss, smoothed_loss};
use tsweep_trainer::{run_task, weights};

/// libtorch has one generator per process: tests that seed it run one at a time.
static TORCH_GENERATOR: Mutex<()> = Mutex::new(());

fn torch_lock() -> MutexGuard<'static, ()> {
    TORCH_GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn label_smoothing_matches_the_hand_computed_loss() {
    // logits [[1, 2, 3], [0, 0, 0]], labels [2, 0], ε = 0.1.
    // row 1: log p = [1, 2, 3] − ln(e + e² + e³) = [−2.40761, −1.40761, −0.40761]
    // row 2: log p = −ln 3 = −1.09861 for every class
    // NLL = (0.40761 + 1.09861) / 2 = 0.75311; mean −log p over classes: (1.40761 + 1.09861) / 2 = 1.25311
    // smoothed = 0.9 · 0.75311 + 0.1 · 1.25311 = 0.80311
    let logits = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 0.0, 0.0, 0.0]).view([2, 3]);
    let labels = Tensor::from_slice(&[2i64, 0]);
    let plain = f64::try_from(loss(&logits, &labels).unwrap()).unwrap();
    let eps0 = f64::try_from(smoothed_loss(&logits, &labels, 0.0).unwrap()).unwrap();
    let smoothed = f64::try_from(smoothed_loss(&logits, &labels, 0.1).unwrap()).unwrap();
    assert!(close(plain, 0.753_109_1, 1e-5), "plain loss {plain}");
    assert_eq!(plain, eps0, "ε = 0 is the plain loss");
    assert!(close(smoothed, 0.803_109_1, 1e-5), "smoothed loss {smoothed}");

    // multi-hot: each binary target t becomes 0.9 t + 0.05; one logit 0 against t = 1:
    // BCE = −(0.95 ln σ(0) + 0.05 ln(1 − σ(0))) = ln 2
    let one = Tensor::from_slice(&[0.0f32]).view([1, 1]);
    let target = Tensor::from_slice(&[1.0f32]).view([1, 1]);
    let bce = f64::try_from(smoothed_loss(&one, &target, 0.1).unwrap()).unwrap();
    assert!(close(bce, std::f64::consts::LN_2, 1e-6), "smoothed BCE {bce}");
    // logit 2 against t = 1: −(0.95 ln σ(2) + 0.05 ln σ(−2)) = 0.95 · 0.126928 + 0.05 · 2.126928
    let two = Tensor::from_slice(&[2.0f32]).view([1, 1]);
    let bce = f64::try_from(smoothed_loss(&two, &target, 0.1).unwrap()).unwrap();
    assert!(close(bce, 0.95 * 0.126_928_01 + 0.05 * 2.126_928_01, 1e-6), "smoothed BCE {bce}");
}

#[test]
fn dropout_drops_pooled_features_before_the_head_in_train_mode_only() {
    let _torch = torch_lock();
    let work = tempfile::tempdir().unwrap();
    let spec = common::cell(Regime::Scratch, work.path(), "resnet18", None);
    tch::manual_seed(3);
    let net = Network::build(&spec.model, &Init::Random, 3, Device::Cpu, NetConfig { bn_momentum: 0.1 }).unwrap();
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));

    // Eval mode: dropout is off, whatever p.
    let eval = net.forward(&x, false).unwrap();
    let eval_dropped = net.forward_with_dropout(&x, false, 0.5).unwrap();
    assert!(eval.allclose(&eval_dropped, 0.0, 0.0, false));

    // Train mode: the head sees f · m / (1 − p), m the Bernoulli(1 − p) mask libtorch draws
    // from its generator; the backbone draws nothing, so the same seed gives the same mask.
    let features = net.features(&x, true).unwrap();
    tch::manual_seed(11);
    let logits = net.forward_with_dropout(&x, true, 0.5).unwrap();
    tch::manual_seed(11);
    let mask = Tensor::ones_like(&features).dropout(0.5, true);
    let kept: Vec<f32> = Vec::try_from(mask.flatten(0, -1)).unwrap();
    assert!(kept.iter().all(|&m| m == 0.0 || m == 2.0), "every feature is dropped or scaled by 1/(1 − p)");
    let dropped = kept.iter().filter(|&&m| m == 0.0).count();
    assert!(dropped > kept.len() / 4 && dropped < 3 * kept.len() / 4, "about half dropped: {dropped}/{}", kept.len());
    let (w, b) = net.head_parameters();
    let expected = (&features * &mask).matmul(&w.tr()) + b.unwrap();
    assert!(logits.allclose(&expected, 1e-5, 1e-5, false), "logits are the head of the dropped features");
    let undropped = net.forward(&x, true).unwrap();
    assert!(!logits.allclose(&undropped, 1e-3, 1e-3, false));
}

#[test]
fn bn_scale_off_fixes_every_batchnorm_gamma_at_one_and_out_of_training() {
    let _torch = torch_lock();
    let work = tempfile::tempdir().unwrap();
    let spec = common::cell(Regime::Scratch, work.path(), "resnet18", None);
    let net = Network::build(&spec.model, &Init::Random, 3, Device::Cpu, NetConfig { bn_momentum: 0.1 }).unwrap();
    let before = net.trainable().len();
    let fixed = net.fix_bn_scale().unwrap();
    // resnet18: the stem's bn1, two per basic block (8 blocks), three downsample BNs
    assert_eq!(fixed, 1 + 16 + 3);
    assert_eq!(net.trainable().len(), before - fixed);
    for (name, t) in net.state() {
        if name.ends_with("bn1.weight") || name.ends_with("bn2.weight") || name.ends_with("downsample.1.weight") {
            assert!(!t.requires_grad(), "{name} is not trained");
            assert_eq!(f64::try_from(t.min()).unwrap(), 1.0, "{name} is 1");
        }
    }
}

#[test]
fn a_pretrain_cell_writes_its_backbone_with_the_source_score_and_a_finetune_cell_loads_it() {
    let _torch = torch_lock();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("colours");
    common::make_imagefolder(&data, 6, 3, 5);

    let mut pretrain = common::cell(Regime::Scratch, &data, "resnet18", None);
    pretrain.stage = Stage::Pretrain;
    pretrain.train.steps = 4;
    pretrain.train.batch_size = 8;
    Regularizers { label_smoothing: 0.1, dropout: 0.5, aux_weight: 0.0, bn_scale: false }
        .write_hparams(&mut pretrain.hparams);
    let out = work.path().join("ckpt").join("pretrain-cell").join("pretrained.safetensors");
    let mut job = common::job(pretrain.clone(), work.path(), "pretrain");
    job.pretrained_out = Some(out.clone());
    let result = run_task(&job, &mut |_| {}, &AtomicBool::new(false)).unwrap();
    let score = result.test_score.unwrap();
    assert!(result.val_score.is_none(), "a pretrain cell trains on train+val: no validation score");

    let file = weights::read(&out).unwrap();
    assert_eq!(file.info.arch.as_deref(), Some("resnet18"));
    assert!(file.tensors.keys().all(|k| !k.starts_with("tsweep_head")), "the source head is not handed on");
    assert!(file.tensors.contains_key("layer4.1.bn2.running_var"), "BatchNorm statistics are handed on");
    let header = std::fs::read(&out).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&header).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta.get(weights::META_SOURCE_SCORE).map(|s| s.parse::<f64>().unwrap()), Some(score));
    assert_eq!(meta.get(weights::META_SOURCE_DATASET).map(String::as_str), Some("colours"));

    // The transfer cell loads it by name (the head is new) and trains.
    let finetune = common::cell(Regime::Finetune, &data, "resnet18", Some(out.clone()));
    let mut job = common::job(finetune, work.path(), "finetune");
    job.spec.train.steps = 2;
    let transferred = run_task(&job, &mut |_| {}, &AtomicBool::new(false)).unwrap();
    assert!(transferred.test_score.is_some());

    // An auxiliary head on a network without one is refused as an invalid cell (fatal).
    let mut aux = pretrain;
    aux.hparams.insert(Regularizers::AUX_HEAD.to_string(), 0.4);
    let err = run_task(&common::job(aux, work.path(), "aux"), &mut |_| {}, &AtomicBool::new(false)).unwrap_err();
    assert_eq!(err.class(), tsweep_proto::v1::FailureClass::Fatal, "{err}");
}

#[test]
fn the_auxiliary_classifier_adds_its_weighted_loss_and_trains_without_being_handed_on() {
    let _torch = torch_lock();
    tch::set_num_threads(2);
    let work = tempfile::tempdir().unwrap();
    let spec = common::cell(Regime::Scratch, work.path(), "inception_v3", None);
    let cfg = NetConfig { bn_momentum: 0.1 };
    tch::manual_seed(0);
    let net = Network::build(&spec.model, &Init::Random, 3, Device::Cpu, cfg).unwrap().with_aux_head(cfg).unwrap();
    let x = Tensor::randn([2, 3, 75, 75], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 2]);
    let regularizers = Regularizers { label_smoothing: 0.1, dropout: 0.0, aux_weight: 0.4, bn_scale: true };
    let total = training_loss(&net, &x, &y, &regularizers).unwrap();
    // BatchNorm in train mode normalises with the batch's statistics: the same pass again
    // gives the same logits, from which the loss is recomputed by hand
    let (logits, aux) = net.forward_train(&x, 0.0).unwrap();
    let aux = aux.expect("the aux head's logits in training");
    assert_eq!(aux.size(), vec![2, 3]);
    let main = f64::try_from(smoothed_loss(&logits, &y, 0.1).unwrap()).unwrap();
    let aux_loss = f64::try_from(smoothed_loss(&aux, &y, 0.1).unwrap()).unwrap();
    let got = f64::try_from(&total).unwrap();
    assert!(close(got, main + 0.4 * aux_loss, 1e-5), "total {got} vs {main} + 0.4 * {aux_loss}");
    total.backward();
    let vars = net.vs.variables();
    let grad = vars["AuxLogits.fc.weight"].grad();
    assert!(f64::try_from(grad.abs().sum(Kind::Float)).unwrap() > 0.0, "the aux head is trained");
    // without the aux head the loss is the head's alone
    let plain = Regularizers { aux_weight: 0.0, ..regularizers };
    let head_only = f64::try_from(training_loss(&net, &x, &y, &plain).unwrap()).unwrap();
    assert!(close(head_only, main, 1e-5));

    // A pretrain cell with the aux head runs end to end; the handed-on backbone has neither head.
    let data = work.path().join("colours");
    common::make_imagefolder(&data, 3, 3, 2);
    let mut pretrain = common::cell(Regime::Scratch, &data, "inception_v3", None);
    pretrain.stage = Stage::Pretrain;
    pretrain.model.image_size = 75;
    pretrain.train.steps = 2;
    pretrain.train.batch_size = 4;
    Regularizers { aux_weight: 0.4, ..Regularizers::default() }.write_hparams(&mut pretrain.hparams);
    let out = work.path().join("pretrained.safetensors");
    let mut job = common::job(pretrain, work.path(), "pretrain-aux");
    job.pretrained_out = Some(out.clone());
    let result = run_task(&job, &mut |_| {}, &AtomicBool::new(false)).unwrap();
    assert!(result.test_score.is_some());
    let file = weights::read(&out).unwrap();
    assert!(file.tensors.keys().all(|k| !k.starts_with("AuxLogits") && !k.starts_with("tsweep_head")));
    assert!(file.tensors.contains_key("Mixed_6e.branch_pool.bn.running_var"));
}
