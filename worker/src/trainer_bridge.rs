//! `--executor trainer`: runs the libtorch trainer (crate `tsweep-trainer`) in the child and
//! passes its events on as they are and turns its errors into failure classes.

use std::sync::atomic::AtomicBool;

use tsweep_proto::v1::TaskResult;

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
    tsweep_trainer::run_task(&input.job, &mut |event| emit(ChildEvent::Training(event)), stop)
        .map_err(|error| ExecutorFailure { class: error.class(), message: error.to_string() })
}
