//! The per-task child process (`tsweep-worker run-task --executor trainer|fake`,
//! `tsweep-fake-task run-task --executor fake`).
//!
//! The contract (see [`crate::child_protocol`]): one `TaskInput` as JSON on stdin; events
//! as JSON lines on stdout, ending with exactly one `result` or `failed`; logs on stderr;
//! the exit code says the same as the last event ([`exit_code`]). SIGTERM or SIGINT raise a
//! stop flag: the executor checkpoints, emits `checkpoint`, then `failed { preempted }`.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{error, info, warn};
use tsweep_proto::v1::TaskResult;

use crate::child_protocol::{exit_code, ChildEvent, ExecutorKind, FailureClass, TaskInput};

/// Raised by SIGTERM / SIGINT in the child.
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

/// How an executor failed, classified by type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{class:?}: {message}")]
pub struct ExecutorFailure {
    pub class: FailureClass,
    pub message: String,
}

impl ExecutorFailure {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { class: FailureClass::Retryable, message: message.into() }
    }
    pub fn fatal(message: impl Into<String>) -> Self {
        Self { class: FailureClass::Fatal, message: message.into() }
    }
    pub fn preempted(message: impl Into<String>) -> Self {
        Self { class: FailureClass::Preempted, message: message.into() }
    }
}

/// The exit code that goes with a failure class.
pub fn failure_exit_code(class: FailureClass) -> i32 {
    match class {
        FailureClass::Retryable | FailureClass::LostWorker | FailureClass::Unspecified => exit_code::RETRYABLE,
        FailureClass::Fatal => exit_code::FATAL,
        FailureClass::Preempted => exit_code::PREEMPTED,
        FailureClass::OutOfMemory => exit_code::OUT_OF_MEMORY,
    }
}

extern "C" fn on_stop_signal(_signal: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// Makes SIGTERM and SIGINT raise the stop flag instead of killing the process.
pub fn install_stop_handler() -> Result<(), nix::Error> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(SigHandler::Handler(on_stop_signal), SaFlags::SA_RESTART, SigSet::empty());
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        sigaction(Signal::SIGTERM, &action)?;
        sigaction(Signal::SIGINT, &action)?;
    }
    Ok(())
}

/// An executor: runs one task, emitting events, polling the stop flag.
pub type Execute<'a> =
    dyn FnMut(&TaskInput, &mut dyn FnMut(ChildEvent), &AtomicBool) -> Result<TaskResult, ExecutorFailure> + 'a;

/// Runs the child: stdin → `execute` → stdout. Returns the process exit code. `executor`
/// is the `--executor` it was started with (checked against the input). `tsweep-worker
/// run-task` passes its executors (trainer, fake); `tsweep-fake-task` only the fake one.
pub fn run_child_with(executor: ExecutorKind, execute: &mut Execute<'_>) -> i32 {
    if let Err(e) = install_stop_handler() {
        warn!(error = %e, "cannot install the SIGTERM handler; a stop will kill the task without a checkpoint");
    }
    let mut text = String::new();
    let stdout = std::io::stdout();
    let mut emit_line = |event: ChildEvent| {
        let mut out = stdout.lock();
        // A closed pipe means the agent is gone; the task is then lost either way.
        let _ = writeln!(out, "{}", event.to_line());
        let _ = out.flush();
    };
    if let Err(e) = std::io::stdin().read_to_string(&mut text) {
        let message = format!("run-task: cannot read the task input from stdin: {e}");
        error!("{message}");
        emit_line(ChildEvent::Failed { class: FailureClass::Retryable, message });
        return exit_code::RETRYABLE;
    }
    let input: TaskInput = match serde_json::from_str(&text) {
        Ok(input) => input,
        Err(e) => {
            let message = format!("run-task: stdin line {} column {}: not a task input: {e}", e.line(), e.column());
            error!("{message}");
            emit_line(ChildEvent::Failed { class: FailureClass::Fatal, message });
            return exit_code::FATAL;
        }
    };
    if input.executor != executor {
        warn!(task_id = %input.task_id, flag = ?executor, input = ?input.executor,
              "the task input names another executor; running the one given by --executor");
    }
    info!(task_id = %input.task_id, attempt = input.attempt, executor = ?executor,
          resume_step = input.job.resume.as_ref().map(|r| r.step), "task starting");
    let input = drop_missing_resume(input, &mut emit_line);
    match execute(&input, &mut emit_line, &STOP_REQUESTED) {
        Ok(result) => {
            info!(task_id = %input.task_id, attempt = input.attempt, val_score = ?result.val_score,
                  steps = result.steps, "task finished");
            emit_line(ChildEvent::Result { result });
            if executor == ExecutorKind::Fake {
                let linger = Duration::from_millis(input.job.spec.fake.as_ref().map_or(0, |f| f.linger_ms));
                crate::fake::linger(linger, &STOP_REQUESTED);
            }
            exit_code::OK
        }
        Err(failure) => {
            info!(task_id = %input.task_id, attempt = input.attempt, class = ?failure.class,
                  message = %failure.message, "task failed");
            let code = failure_exit_code(failure.class);
            emit_line(ChildEvent::Failed { class: failure.class, message: failure.message });
            code
        }
    }
}

/// A resume checkpoint whose file is gone (a cleaned scratch disk, a checkpoint root that
/// is not shared): says so with a `resume_failed` event and runs the attempt from step 0.
pub fn drop_missing_resume(mut input: TaskInput, emit: &mut dyn FnMut(ChildEvent)) -> TaskInput {
    if let Some(resume) = input.job.resume.take_if(|resume| !Path::new(&resume.path).is_file()) {
        let reason = format!("checkpoint {} (step {}) is missing", resume.path, resume.step);
        warn!(task_id = %input.task_id, attempt = input.attempt, checkpoint = %resume.path,
              step = resume.step, "the checkpoint to resume from is missing: starting from step 0");
        emit(ChildEvent::ResumeFailed { path: resume.path.into(), step: resume.step, reason });
    }
    input
}
