//! `--executor trainer`: runs the libtorch trainer (crate `tsweep-trainer`) in the child and
//! turns its events and errors into the child protocol's events and failure classes.

use std::sync::atomic::AtomicBool;

use tsweep_proto::v1::TaskResult;
use tsweep_trainer::TrainerEvent;

use crate::child_protocol::{ChildEvent, TaskInput};
use crate::run_task::ExecutorFailure;

pub fn run(
    input: &TaskInput,
    emit: &mut dyn FnMut(ChildEvent),
    stop: &AtomicBool,
) -> Result<TaskResult, ExecutorFailure> {
    if let Some(threads) = input.cpu_threads {
        tsweep_trainer::set_cpu_threads(threads);
    }
    let mut forward = |event: TrainerEvent| emit(child_event(event));
    tsweep_trainer::run_task(&input.job, &mut forward, stop)
        .map_err(|error| ExecutorFailure { class: error.class(), message: error.to_string() })
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
