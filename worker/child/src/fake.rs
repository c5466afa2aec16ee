//! The fake executor (`--executor fake`): the **test executor** for cluster tests, fault
//! injection and benchmarks. It trains nothing; it behaves like a trainer on the wire.
//!
//! Driven by the cell's [`FakeSettings`] (`fake` in the sweep file's defaults):
//! - sleeps `sleep_ms` in total, split into `steps` steps (at least one); after each step it
//!   writes a small checkpoint file atomically (temp file + rename) into the attempt's
//!   `checkpoint_dir` and emits `checkpoint`, then `progress`;
//! - with `resume` set, it reads that checkpoint and continues after its step (it emits
//!   `started { resumed_from_step }` and logs `resumed_from_step`);
//! - when the stop flag is raised (SIGTERM) it checkpoints the steps it finished and fails
//!   as `preempted`;
//! - `fail = "retryable" | "fatal" | "out_of_memory"` fails with that class half-way through, `"crash"` aborts
//!   the process there (no result, killed by SIGABRT); with `fail_attempts = N > 0` only
//!   attempts 1..=N fail;
//! - with `linger_ms` the child stays that long after its result (or until SIGTERM), so a
//!   stop order can arrive between the result and the exit;
//! - `hang_after_step = N` hangs after step N (no events, SIGTERM ignored) until killed,
//!   like a deadlocked trainer (also limited by `fail_attempts`);
//! - an unreadable resume checkpoint is a `resume_failed` event, then a run from step 0;
//! - the score is `score`, or a deterministic function of the model and the hyperparameters
//!   (peaked at lr = 1e-2, weight_decay = 1e-4, higher for a model with a higher
//!   `imagenet_top1`), so that selection and the report have something to pick.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};
use tsweep_proto::cell::{CellSpec, FakeSettings};
use tsweep_proto::v1::TaskResult;

use crate::child_protocol::{ChildEvent, FailureClass, StepProgress, TaskInput, TrainingEvent};
use crate::run_task::ExecutorFailure;

/// File name of the fake checkpoint inside the attempt's checkpoint directory.
pub const CHECKPOINT_FILE: &str = "fake-checkpoint.json";

/// How often a sleeping step looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(10);

/// What the fake checkpoint holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeCheckpoint {
    pub task_id: String,
    pub attempt: u32,
    pub step: u64,
}

/// What `fake.fail` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InjectedFault {
    Fail(FailureClass),
    Crash,
}

pub fn run(
    input: &TaskInput,
    emit: &mut dyn FnMut(ChildEvent),
    stop: &AtomicBool,
) -> Result<TaskResult, ExecutorFailure> {
    let started = Instant::now();
    let settings = input.job.spec.fake.clone().unwrap_or_default();
    let total_steps = settings.steps.max(1);
    let step_sleep = Duration::from_millis(settings.sleep_ms) / u32::try_from(total_steps).unwrap_or(u32::MAX);
    let fault = injected_fault(&settings, input.attempt)?;
    let hang_after = settings.hang_after_step.filter(|_| fault_applies(&settings, input.attempt));

    std::fs::create_dir_all(&input.job.checkpoint_dir).map_err(|e| {
        ExecutorFailure::retryable(format!("cannot create checkpoint dir {}: {e}", input.job.checkpoint_dir.display()))
    })?;

    let resumed_from_step = match &input.job.resume {
        Some(resume) => match read_checkpoint(Path::new(&resume.path)) {
            Ok(checkpoint) => {
                let step = checkpoint.step.min(total_steps);
                info!(task_id = %input.task_id, attempt = input.attempt, resumed_from_step = step,
                      checkpoint = %resume.path, "resuming from checkpoint");
                step
            }
            Err(e) => {
                warn!(task_id = %input.task_id, attempt = input.attempt, error = %e,
                      "cannot read the checkpoint to resume from, starting at step 0");
                emit(ChildEvent::ResumeFailed { path: PathBuf::from(&resume.path), step: resume.step, reason: e });
                0
            }
        },
        None => 0,
    };
    emit(TrainingEvent::Started { resumed_from_step }.into());

    let fault_step = (total_steps / 2).max(resumed_from_step);
    let mut done = resumed_from_step;
    let mut loss = loss_at(done);
    loop {
        if let Some(fault) = fault {
            if done >= fault_step {
                match fault {
                    InjectedFault::Crash => {
                        warn!(task_id = %input.task_id, attempt = input.attempt, step = done, "fake executor crashing on request");
                        std::process::abort();
                    }
                    InjectedFault::Fail(class) => {
                        return Err(ExecutorFailure {
                            class,
                            message: format!("fake executor failing as asked (fake.fail) at step {done}"),
                        });
                    }
                }
            }
        }
        if hang_after == Some(done) {
            hang(input, done);
        }
        if done >= total_steps {
            break;
        }
        if !sleep_unless_stopped(step_sleep, stop) {
            let path = write_checkpoint(input, done)?;
            emit(TrainingEvent::Checkpoint { path, step: done }.into());
            return Err(ExecutorFailure::preempted(format!("stopped by signal after step {done}")));
        }
        done += 1;
        loss = loss_at(done);
        let path = write_checkpoint(input, done)?;
        emit(TrainingEvent::Checkpoint { path, step: done }.into());
        let images_per_s = if step_sleep.is_zero() { 0.0 } else { 32.0 / step_sleep.as_secs_f64() };
        emit(
            TrainingEvent::Progress(StepProgress {
                step: done,
                total_steps,
                loss,
                lr: input.job.spec.hparams.get("lr").copied().unwrap_or(0.0),
                images_per_s,
                val_score: None,
            })
            .into(),
        );
    }

    let score = settings.score.unwrap_or_else(|| deterministic_score(&input.job.spec));
    let duration_s = started.elapsed().as_secs_f64();
    let ran = total_steps - resumed_from_step;
    Ok(TaskResult {
        metric: input.job.spec.dataset.metric.into(),
        val_score: Some(score),
        test_score: Some((score - 0.01).max(0.0)),
        train_loss: Some(loss),
        diverged: false,
        steps: total_steps,
        images_per_s: if duration_s > 0.0 { 32.0 * ran as f64 / duration_s } else { 0.0 },
        duration_s,
        selected: Default::default(),
        extra: [("fake".to_string(), 1.0)].into_iter().collect(),
        resumed_from_step,
        backbone_top1: None,
    })
}

fn injected_fault(settings: &FakeSettings, attempt: u32) -> Result<Option<InjectedFault>, ExecutorFailure> {
    let Some(fail) = settings.fail.as_deref() else { return Ok(None) };
    let fault = match fail {
        "retryable" => InjectedFault::Fail(FailureClass::Retryable),
        "fatal" => InjectedFault::Fail(FailureClass::Fatal),
        "out_of_memory" => InjectedFault::Fail(FailureClass::OutOfMemory),
        "crash" => InjectedFault::Crash,
        other => {
            return Err(ExecutorFailure::fatal(format!(
                "fake.fail: `{other}` is not one of retryable, fatal, out_of_memory, crash"
            )))
        }
    };
    Ok(fault_applies(settings, attempt).then_some(fault))
}

/// `fail_attempts`: only attempts 1..=N misbehave (0: every attempt).
fn fault_applies(settings: &FakeSettings, attempt: u32) -> bool {
    settings.fail_attempts == 0 || attempt <= settings.fail_attempts
}

/// `hang_after_step`: a trainer stuck for good (a deadlocked collective, a dead NFS mount):
/// no events, the stop flag ignored, until the agent kills the process.
fn hang(input: &TaskInput, step: u64) -> ! {
    warn!(task_id = %input.task_id, attempt = input.attempt, step, "fake executor hanging on request (fake.hang_after_step)");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// After the result: stays `total` (`fake.linger_ms`) or until the stop flag is raised.
pub fn linger(total: Duration, stop: &AtomicBool) {
    sleep_unless_stopped(total, stop);
}

/// Sleeps `total`, returning false early when `stop` is raised.
fn sleep_unless_stopped(total: Duration, stop: &AtomicBool) -> bool {
    let deadline = Instant::now() + total;
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep(STOP_POLL.min(deadline - now));
    }
}

fn loss_at(step: u64) -> f64 {
    2.3 / (1.0 + 0.1 * step as f64)
}

/// Writes `<checkpoint_dir>/fake-checkpoint.json` atomically (temp file, fsync, rename).
pub fn write_checkpoint(input: &TaskInput, step: u64) -> Result<PathBuf, ExecutorFailure> {
    let path = input.job.checkpoint_dir.join(CHECKPOINT_FILE);
    let checkpoint = FakeCheckpoint { task_id: input.task_id.clone(), attempt: input.attempt, step };
    let text = serde_json::to_vec(&checkpoint)
        .map_err(|e| ExecutorFailure::retryable(format!("cannot encode checkpoint {}: {e}", path.display())))?;
    let temp = input.job.checkpoint_dir.join(format!(".{CHECKPOINT_FILE}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)
    };
    write().map_err(|e| ExecutorFailure::retryable(format!("cannot write checkpoint {}: {e}", path.display())))?;
    Ok(path)
}

pub fn read_checkpoint(path: &Path) -> Result<FakeCheckpoint, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read checkpoint {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("checkpoint {} is not a fake checkpoint: {e}", path.display()))
}

/// A score in (0, 1) that depends only on the cell: the model's ImageNet top-1 (or a hash
/// of its name), the dataset's name, and the distance of lr / weight_decay from a sweet spot.
/// A seed other than 0 moves each grid point by up to ±0.03 (hashed from the seed, the
/// model and the hyperparameters), as a rerun with another seed would, so the seeds of one
/// (model, dataset, regime) may select different winners; seed 0 scores as before. A
/// final has its winner's hyperparameters and seed, so it scores as its winner.
pub fn deterministic_score(spec: &CellSpec) -> f64 {
    let base = match spec.model.imagenet_top1 {
        Some(top1) => {
            let top1 = if top1 > 1.0 { top1 / 100.0 } else { top1 };
            0.3 + 0.6 * top1
        }
        None => 0.5 + 0.3 * unit_hash(&spec.model.name),
    };
    let dataset_shift = 0.1 * (unit_hash(&spec.dataset.name) - 0.5);
    let penalty: f64 = spec
        .hparams
        .iter()
        .filter(|(_, value)| **value > 0.0)
        .map(|(name, value)| {
            let centre = match name.as_str() {
                "lr" => -2.0,
                "weight_decay" => -4.0,
                _ => 0.0,
            };
            let distance = value.log10() - centre;
            0.02 * distance * distance
        })
        .sum();
    let seed_shift = if spec.seed == 0 {
        0.0
    } else {
        let point: Vec<String> = spec.hparams.iter().map(|(name, value)| format!("{name}={value}")).collect();
        0.06 * (unit_hash(&format!("seed {} {} {}", spec.seed, spec.model.name, point.join(","))) - 0.5)
    };
    (base + dataset_shift - penalty + seed_shift).clamp(0.01, 0.99)
}

/// A number in [0, 1) from a string, stable across runs and machines.
fn unit_hash(text: &str) -> f64 {
    let digest = Sha256::digest(text.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}
