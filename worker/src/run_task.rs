//! `tsweep-worker run-task --executor trainer|fake`: the per-task child process. The loop
//! (stdin → executor → stdout, SIGTERM handling) is `tsweep_child::run_task`, re-exported
//! here; this module adds the libtorch trainer to the executors.

use std::sync::atomic::AtomicBool;

pub use tsweep_child::run_task::*;
use tsweep_proto::v1::TaskResult;

use crate::child_protocol::{ChildEvent, ExecutorKind, TaskInput};

/// Runs the child with `executor`: stdin → executor → stdout. Returns the exit code.
pub fn run_child(executor: ExecutorKind) -> i32 {
    run_child_with(executor, &mut |input, emit, stop| execute(executor, input, emit, stop))
}

/// Runs one executor in this process.
pub fn execute(
    executor: ExecutorKind,
    input: &TaskInput,
    emit: &mut dyn FnMut(ChildEvent),
    stop: &AtomicBool,
) -> Result<TaskResult, ExecutorFailure> {
    match executor {
        ExecutorKind::Fake => crate::fake::run(input, emit, stop),
        ExecutorKind::Trainer => crate::trainer_bridge::run(input, emit, stop),
    }
}
