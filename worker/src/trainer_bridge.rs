//! `--executor trainer`: runs the libtorch trainer (crate `tsweep-trainer`) in the child and
//! turns its events and errors into the child protocol's events and failure classes.

use std::sync::atomic::AtomicBool;

use tsweep_proto::v1::{FailureClass, TaskResult};
use tsweep_trainer::{ResumeFrom, TrainJob, TrainerEvent};

use crate::child_protocol::{ChildEvent, ChildFailure, TaskInput};
use crate::run_task::ExecutorFailure;

pub fn run(
    input: &TaskInput,
    emit: &mut dyn FnMut(ChildEvent),
    stop: &AtomicBool,
) -> Result<TaskResult, ExecutorFailure> {
    if let Some(threads) = input.cpu_threads {
        tsweep_trainer::set_cpu_threads(threads);
    }
    let job = TrainJob {
        spec: input.spec.clone(),
        resume: input.resume.as_ref().map(|r| ResumeFrom { path: r.path.clone(), step: r.step }),
        checkpoint_dir: input.checkpoint_dir.clone(),
        cache_dir: input.cache_dir.clone(),
        device: input.device.clone(),
        pretrained_out: input.pretrained_out.clone(),
    };
    let mut forward = |event: TrainerEvent| emit(child_event(event));
    tsweep_trainer::run_task(&job, &mut forward, stop)
        .map_err(|error| ExecutorFailure { class: child_failure(error.class()), message: error.to_string() })
}

fn child_event(event: TrainerEvent) -> ChildEvent {
    match event {
        TrainerEvent::Started { resumed_from_step } => ChildEvent::Started { resumed_from_step },
        TrainerEvent::Progress { step, total_steps, loss, lr, images_per_s, val_score } => {
            ChildEvent::Progress { step, total_steps, loss, lr, images_per_s, val_score }
        }
        TrainerEvent::Checkpoint { path, step } => ChildEvent::Checkpoint { path, step },
    }
}

/// The trainer classifies its errors by type; the child protocol has four classes (a lost
/// worker is the agent's and the coordinator's to decide, never the child's).
pub fn child_failure(class: FailureClass) -> ChildFailure {
    match class {
        FailureClass::Fatal => ChildFailure::Fatal,
        FailureClass::Preempted => ChildFailure::Preempted,
        FailureClass::OutOfMemory => ChildFailure::OutOfMemory,
        FailureClass::Retryable | FailureClass::LostWorker | FailureClass::Unspecified => ChildFailure::Retryable,
    }
}
