//! tsweep-trainer: one cell of the Kornblith et al. grid on libtorch (tch 0.24).
//! See docs/ARCHITECTURE.md ("The trainer").
//!
//! Entry point: [`run_task`]. It runs the cell's regime (linear probe, fine-tune,
//! scratch) on the device, reports [`TrainingEvent`]s, checkpoints, honours the stop flag,
//! and returns the [`TaskResult`] or a [`TrainerError`] that classifies itself
//! ([`TrainerError::class`]).

pub mod checkpoint;
pub mod device;
pub mod error;
pub mod eval;
pub mod finetune;
pub mod lbfgs;
pub mod linear;
pub mod metrics;
pub mod models;
pub mod precision;
pub mod sgd;
pub mod tensors;
pub mod weights;

use std::sync::atomic::AtomicBool;

use sha2::{Digest, Sha256};
use tsweep_proto::cell::{CellSpec, Regime};
pub use tsweep_proto::v1::TaskResult;

pub use error::TrainerError;

/// One task for the trainer, and where a resumed attempt starts from.
pub use tsweep_proto::cell::TrainJob;
pub use tsweep_proto::v1::Checkpoint;

/// What the trainer reports while it runs (the child prints them as they are).
pub use tsweep_proto::progress::{StepProgress, TrainingEvent};

/// Sets libtorch's intra-op threads for CPU work in this process (one task per process:
/// the agent gives each concurrent task its share of the cores).
pub fn set_cpu_threads(threads: u32) {
    tch::set_num_threads(threads.max(1) as i32);
}

/// Runs one cell. `stop` set (SIGTERM): a fine-tune/scratch run writes a checkpoint and
/// returns [`TrainerError::Preempted`]; the linear regime returns it between path points
/// (its features stay cached). A NaN/inf loss is a result with `diverged = true` and a
/// chance-level score, not an error.
pub fn run_task(
    job: &TrainJob,
    events: &mut dyn FnMut(TrainingEvent),
    stop: &AtomicBool,
) -> Result<TaskResult, TrainerError> {
    let device = device::resolve(job.device)?;
    tracing::info!(
        sweep = %job.spec.sweep, cell = %job.spec.group_key(), stage = job.spec.stage.name(),
        device = %device::name(device), precision = job.spec.precision.name(),
        resume = ?job.resume.as_ref().map(|r| r.step), "trainer starting"
    );
    precision::check(job.spec.precision, device)?;
    match job.spec.regime {
        Regime::Linear => linear::run(job, device, events, stop),
        Regime::Finetune | Regime::Scratch => finetune::run(job, device, events, stop),
        Regime::Unspecified => Err(TrainerError::InvalidCell("the cell has no regime".into())),
    }
}

/// The fingerprint of what a cell trains (checkpoints of another cell are refused). The
/// precision enters only when it is not fp32, so fp32 checkpoints written before it
/// existed still resume.
pub fn cell_fingerprint(spec: &CellSpec) -> String {
    let mut identity = serde_json::json!({
        "stage": spec.stage, "regime": spec.regime, "model": spec.model, "dataset": spec.dataset,
        "hparams": spec.hparams, "train": spec.train, "seed": spec.seed,
    });
    if !spec.precision.is_fp32() {
        identity["precision"] = serde_json::json!(spec.precision);
    }
    let mut h = Sha256::new();
    h.update(identity.to_string().as_bytes());
    hex::encode(&h.finalize()[..16])
}
