//! A run stopped mid-way (stop flag = SIGTERM, or killed right after a periodic
//! checkpoint) and resumed ends at the same step count and final loss as an uninterrupted
//! run with the same seed, in fp32 and in bf16 (autocast; fp16 needs a GPU: its scaler's
//! checkpointed state is tested in `precision.rs`).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use common::*;
use tsweep_proto::cell::{Precision, Regime};
use tsweep_trainer::{run_task, Checkpoint, StepProgress, TrainerError, TrainingEvent};

#[test]
fn resumed_runs_match_an_uninterrupted_run() {
    resumed_runs_match(Precision::Fp32);
}

#[test]
fn resumed_bf16_runs_match_an_uninterrupted_bf16_run() {
    resumed_runs_match(Precision::Bf16);
}

/// libtorch's generator is one per process and every run reseeds it, so two runs that
/// must be step-for-step identical cannot interleave with another test's draws.
static TORCH_GENERATOR: Mutex<()> = Mutex::new(());

fn resumed_runs_match(precision: Precision) {
    let _generator = TORCH_GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::set_num_threads(2);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_imagefolder(&data, 12, 4, 21);
    let mut spec = cell(Regime::Scratch, &data, "resnet18", None);
    spec.precision = precision;
    spec.train.steps = 16;
    spec.train.checkpoint_every = 5;
    spec.train.batch_size = 8;

    let (whole, _) = run(&job(spec.clone(), dir.path(), "whole"));
    let whole = whole.unwrap();
    assert_eq!(whole.steps, 16);

    // interrupted: keep a copy of the step-5 checkpoint (what a kill -9 after it leaves),
    // then set the stop flag at step 12
    let interrupted = job(spec.clone(), dir.path(), "interrupted");
    let kill9_copy = dir.path().join("kill9.safetensors");
    let stop = AtomicBool::new(false);
    let r = run_task(
        &interrupted,
        &mut |e| match e {
            TrainingEvent::Checkpoint { path, step: 5 } => {
                std::fs::copy(&path, &kill9_copy).unwrap();
            }
            TrainingEvent::Progress(StepProgress { step: 12, .. }) => stop.store(true, Ordering::Relaxed),
            _ => {}
        },
        &stop,
    );
    let (step, preempted_ckpt) = match r {
        Err(TrainerError::Preempted { step, checkpoint: Some(path) }) => (step, path),
        other => panic!("expected preempted, got {other:?}"),
    };
    assert_eq!(step, 12);
    assert!(preempted_ckpt.is_file());

    for (name, path, from) in [("after-stop", preempted_ckpt, 12), ("after-kill9", kill9_copy, 5)] {
        let mut resumed = job(spec.clone(), dir.path(), name);
        resumed.resume = Some(Checkpoint { path: path.display().to_string(), step: from });
        let (r, events) = run(&resumed);
        let r = r.unwrap();
        assert!(
            matches!(events.first(), Some(TrainingEvent::Started { resumed_from_step }) if *resumed_from_step == from)
        );
        assert_eq!(r.resumed_from_step, from);
        assert_eq!(r.steps, whole.steps, "{name}");
        let (a, b) = (r.train_loss.unwrap(), whole.train_loss.unwrap());
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{name}: final loss {a} vs uninterrupted {b}");
        assert_eq!(r.test_score, whole.test_score, "{name}");
    }

    // a checkpoint of another cell is refused as fatal
    let mut other = spec.clone();
    other.seed += 1;
    let mut wrong = job(other, dir.path(), "wrong");
    wrong.resume = Some(Checkpoint {
        path: dir.path().join("ckpt/interrupted").join(tsweep_trainer::checkpoint::file_name(12)).display().to_string(),
        step: 12,
    });
    let err = run(&wrong).0.unwrap_err();
    assert!(matches!(err, TrainerError::BadCheckpoint { .. }), "{err}");

    // and so is one of the same cell in another precision: it is another cell
    let mut other = spec.clone();
    other.precision = if precision == Precision::Fp32 { Precision::Bf16 } else { Precision::Fp32 };
    let mut wrong = job(other, dir.path(), "other-precision");
    wrong.resume = Some(Checkpoint {
        path: dir.path().join("ckpt/interrupted").join(tsweep_trainer::checkpoint::file_name(12)).display().to_string(),
        step: 12,
    });
    let err = run(&wrong).0.unwrap_err();
    assert!(matches!(err, TrainerError::BadCheckpoint { .. }), "{err}");
}
