//! The pipe between the agent and the per-task child process (`tsweep-worker run-task`).
//!
//! The agent writes one [`TaskInput`] as JSON to the child's stdin and closes it. The
//! child writes [`ChildEvent`]s as JSON lines to stdout (anything else it prints goes to
//! stderr), ending with exactly one `result` or `failed` event. A child that exits
//! without one crashed: the agent reports a retryable failure.
//!
//! SIGTERM to the child means "checkpoint now and exit": it writes a `checkpoint` event,
//! then `failed` with class `preempted`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tsweep_proto::cell::TrainJob;
pub use tsweep_proto::progress::{StepProgress, TrainingEvent};
use tsweep_proto::v1::TaskResult;

/// Which executor the child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// The libtorch trainer.
    Trainer,
    /// Test executor for cluster tests and benchmarks: sleeps, reports steps, fails on request.
    Fake,
}

/// What the agent writes to a child's stdin: the attempt, the job its executor runs (the
/// trainer takes it as it is; a pretrain cell's `pretrained_out` comes from
/// `crate::agent::slot::pretrained_weights`), and the process's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskInput {
    pub task_id: String,
    pub attempt: u32,
    #[serde(flatten)]
    pub job: TrainJob,
    /// libtorch threads on the CPU (None: libtorch's default, every core).
    #[serde(default)]
    pub cpu_threads: Option<u32>,
    pub executor: ExecutorKind,
}

/// A checkpoint an attempt wrote (the wire's message; JSON `{"path": ..., "step": ...}`),
/// and how a failed attempt classifies its failure (`"class": "out_of_memory"`).
pub use tsweep_proto::v1::{Checkpoint, FailureClass};

/// A child's stdout line: its training run's events as the run reported them, then the
/// attempt's end.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ChildEvent {
    /// The checkpoint this attempt was to resume from could not be read (missing or not a
    /// checkpoint of this cell): the attempt starts from step 0. The agent logs it and puts
    /// it on the task (`resume_error`); the task's recorded checkpoint then follows this
    /// attempt's own.
    ResumeFailed {
        path: PathBuf,
        step: u64,
        reason: String,
    },
    Result {
        result: TaskResult,
    },
    Failed {
        class: FailureClass,
        message: String,
    },
    /// Started, a step's progress, a checkpoint written (`{"event": "progress", ...}`).
    #[serde(untagged)]
    Training(TrainingEvent),
}

impl From<TrainingEvent> for ChildEvent {
    fn from(event: TrainingEvent) -> Self {
        ChildEvent::Training(event)
    }
}

impl ChildEvent {
    /// One JSON line, as the child prints it.
    pub fn to_line(&self) -> String {
        // Serialising these plain structs cannot fail; fall back to a failure event anyway.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"event":"failed","class":"retryable","message":"cannot encode event: {e}"}}"#)
        })
    }
    pub fn parse_line(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// Exit codes of `tsweep-worker run-task`, a fallback when no `failed` line was read.
pub mod exit_code {
    pub const OK: i32 = 0;
    pub const RETRYABLE: i32 = 3;
    pub const FATAL: i32 = 4;
    pub const PREEMPTED: i32 = 5;
    pub const OUT_OF_MEMORY: i32 = 6;
}
