//! Runs one attempt in a child process (`<this exe> run-task --executor X`) and watches it.
//!
//! The child is put in its own process group (terminal signals reach only the agent, which
//! stops children in order) and gets `PR_SET_PDEATHSIG = SIGKILL`, so a SIGKILL'd agent
//! leaves no orphan trainer behind. Signals go to the child's whole process group.
//!
//! Every stop goes the same way: SIGTERM (the child checkpoints and exits), SIGKILL after
//! the grace period. Stops come from a drain (SIGTERM to the agent: reported preempted),
//! a stop order (CANCELLED, LEASE_LOST: nothing reported), or the cell's limits: no
//! progress event (started, progress, checkpoint) for `train.stall_timeout_s`, or a run
//! longer than `train.max_runtime_s`, which fail the attempt as retryable with a message
//! saying which limit it hit (a result sent before the child stopped is still reported).

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use tsweep_proto::cell::CellSpec;
use tsweep_proto::v1::{LeaseRef, MetricPoint, TaskResult};

use super::leases::{LeaseTable, StopCommand};
use super::metrics::{MetricsSink, StreamedPoint};
use crate::child_protocol::{exit_code, Checkpoint, ChildEvent, ExecutorKind, FailureClass, TaskInput, TrainingEvent};
use crate::logging::LogFormat;

/// How to start children.
#[derive(Debug, Clone)]
pub struct ChildLauncher {
    pub exe: PathBuf,
    pub executor: ExecutorKind,
    pub log_format: LogFormat,
}

/// The slot's GPUs, as `CUDA_VISIBLE_DEVICES` sees them; `None` leaves the variable alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuAssignment(pub Option<String>);

/// How an attempt ended, as far as the agent is concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    Completed(Box<TaskResult>),
    Failed {
        class: FailureClass,
        message: String,
    },
    /// Stopped by a LEASE_LOST order: report nothing.
    LeaseLost,
    /// Stopped by a CANCELLED order before it had a result: report nothing.
    Cancelled,
}

/// How long a child gets between SIGTERM (drain, cancel, lost lease, stall) and SIGKILL.
#[derive(Debug, Clone, Copy)]
pub struct DrainPolicy {
    pub child_grace: Duration,
}

/// The cell's limits on one attempt (`train.stall_timeout_s`, `train.max_runtime_s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptLimits {
    /// No progress event (started, progress, checkpoint) for this long: the child is
    /// stopped and the attempt fails as retryable.
    pub stall_timeout: Duration,
    /// The attempt may run at most this long (None: no limit).
    pub max_runtime: Option<Duration>,
}

impl AttemptLimits {
    pub fn of(spec: &CellSpec) -> Self {
        AttemptLimits {
            stall_timeout: Duration::from_secs(spec.train.stall_timeout_s.max(1)),
            max_runtime: spec.train.max_runtime_s.map(|s| Duration::from_secs(s.max(1))),
        }
    }
}

fn executor_arg(kind: ExecutorKind) -> &'static str {
    match kind {
        ExecutorKind::Trainer => "trainer",
        ExecutorKind::Fake => "fake",
    }
}

fn signal_group(pid: u32, signal: Signal) {
    let Ok(pid) = i32::try_from(pid) else { return };
    if let Err(e) = killpg(Pid::from_raw(pid), signal) {
        debug!(pid, ?signal, error = %e, "cannot signal the child's process group");
    }
}

/// Maps an exit without a final event to a failure.
pub fn classify_exit(status: Option<ExitStatus>) -> (FailureClass, String) {
    use std::os::unix::process::ExitStatusExt;
    let Some(status) = status else {
        return (FailureClass::Retryable, "child process: cannot wait for it".to_string());
    };
    match (status.code(), status.signal()) {
        (Some(exit_code::FATAL), _) => {
            (FailureClass::Fatal, "child exited with the fatal code and no message".to_string())
        }
        (Some(exit_code::PREEMPTED), _) => {
            (FailureClass::Preempted, "child exited as preempted without a message".to_string())
        }
        (Some(exit_code::OUT_OF_MEMORY), _) => {
            (FailureClass::OutOfMemory, "child exited as out of accelerator memory without a message".to_string())
        }
        (Some(code), _) => (FailureClass::Retryable, format!("child crashed: exit code {code} without a result")),
        (None, Some(signal)) => (FailureClass::Retryable, format!("child crashed: killed by signal {signal}")),
        (None, None) => (FailureClass::Retryable, "child crashed".to_string()),
    }
}

impl ChildLauncher {
    /// Runs `input` to its end. Updates `leases` (running, checkpoints), forwards progress to
    /// `metrics`, obeys stop orders, and on `shutdown` sends SIGTERM and waits up to the
    /// drain grace before SIGKILL.
    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        &self,
        input: &TaskInput,
        key: &LeaseRef,
        gpus: &GpuAssignment,
        leases: &LeaseTable,
        metrics: &MetricsSink,
        mut stop_orders: mpsc::UnboundedReceiver<StopCommand>,
        shutdown: &CancellationToken,
        drain: DrainPolicy,
    ) -> AttemptOutcome {
        let mut command = Command::new(&self.exe);
        command
            .arg("run-task")
            .arg("--executor")
            .arg(executor_arg(self.executor))
            .arg("--log-format")
            .arg(self.log_format.name())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(visible) = &gpus.0 {
            command.env("CUDA_VISIBLE_DEVICES", visible);
        }
        let agent_pid = std::process::id();
        // SAFETY: only async-signal-safe libc calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The agent may have died between fork and prctl.
                if libc::getppid() as u32 != agent_pid {
                    libc::_exit(exit_code::PREEMPTED);
                }
                Ok(())
            });
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                return AttemptOutcome::Failed {
                    class: FailureClass::Retryable,
                    message: format!("cannot start the child {}: {e}", self.exe.display()),
                }
            }
        };
        let pid = child.id().unwrap_or(0);
        info!(task_id = %key.task_id, attempt = key.attempt, pid, cuda_visible_devices = ?gpus.0, "child started");

        if let Some(mut stdin) = child.stdin.take() {
            let mut text = match serde_json::to_vec(input) {
                Ok(text) => text,
                Err(e) => {
                    signal_group(pid, Signal::SIGKILL);
                    let _ = child.wait().await;
                    return AttemptOutcome::Failed {
                        class: FailureClass::Fatal,
                        message: format!("cannot encode the task input: {e}"),
                    };
                }
            };
            text.push(b'\n');
            if let Err(e) = stdin.write_all(&text).await {
                warn!(task_id = %key.task_id, error = %e, "cannot write the task input to the child");
            }
            drop(stdin);
        }
        let Some(stdout) = child.stdout.take() else {
            signal_group(pid, Signal::SIGKILL);
            let _ = child.wait().await;
            return AttemptOutcome::Failed {
                class: FailureClass::Retryable,
                message: "child has no stdout".to_string(),
            };
        };
        let mut lines = BufReader::new(stdout).lines();

        let limits = AttemptLimits::of(&input.job.spec);
        let started = Instant::now();
        let runtime_ends = limits.max_runtime.map(|limit| started + limit);
        let mut watch = Watch { key, leases, metrics, terminal: None, last_progress: started };
        // Set when the agent stopped the child for a limit (stall, run time): the message.
        let mut limit_hit: Option<String> = None;
        let mut stop_reason: Option<StopCommand> = None;
        let mut orders_open = true;
        let mut draining = false;
        let mut stdout_open = true;
        let mut kill_at: Option<Instant> = None;
        let far = Duration::from_secs(86_400 * 365);

        let status = loop {
            let kill_timer = tokio::time::sleep_until(kill_at.unwrap_or_else(|| Instant::now() + far));
            let stall_at = watch.last_progress + limits.stall_timeout;
            let limit_timer = tokio::time::sleep_until(runtime_ends.map_or(stall_at, |ends| ends.min(stall_at)));
            let watching_limits = limit_hit.is_none() && stop_reason.is_none() && !draining;
            tokio::select! {
                line = lines.next_line(), if stdout_open => match line {
                    Ok(Some(line)) => watch.on_line(&line),
                    Ok(None) => stdout_open = false,
                    Err(e) => {
                        warn!(task_id = %key.task_id, error = %e, "cannot read the child's stdout");
                        stdout_open = false;
                    }
                },
                status = child.wait() => break status.ok(),
                order = stop_orders.recv(), if orders_open && stop_reason.is_none() => match order {
                    Some(StopCommand::LeaseLost) => {
                        warn!(task_id = %key.task_id, attempt = key.attempt, grace_ms = drain.child_grace.as_millis() as u64,
                              "lease lost: stopping the child (SIGTERM, SIGKILL after the grace period), reporting nothing");
                        stop_reason = Some(StopCommand::LeaseLost);
                        signal_group(pid, Signal::SIGTERM);
                        let deadline = Instant::now() + drain.child_grace;
                        kill_at = Some(kill_at.map_or(deadline, |at| at.min(deadline)));
                    }
                    Some(StopCommand::Cancelled) => {
                        info!(task_id = %key.task_id, attempt = key.attempt, "task cancelled: stopping the child");
                        stop_reason = Some(StopCommand::Cancelled);
                        signal_group(pid, Signal::SIGTERM);
                        let deadline = Instant::now() + drain.child_grace;
                        kill_at = Some(kill_at.map_or(deadline, |at| at.min(deadline)));
                    }
                    None => orders_open = false,
                },
                _ = shutdown.cancelled(), if !draining => {
                    draining = true;
                    info!(task_id = %key.task_id, attempt = key.attempt, grace_ms = drain.child_grace.as_millis() as u64,
                          "worker draining: asking the child to checkpoint");
                    signal_group(pid, Signal::SIGTERM);
                    let deadline = Instant::now() + drain.child_grace;
                    kill_at = Some(kill_at.map_or(deadline, |at| at.min(deadline)));
                }
                _ = limit_timer, if watching_limits => {
                    let message = if runtime_ends.is_some_and(|ends| Instant::now() >= ends) {
                        format!("attempt ran longer than max_runtime_s = {} s: child stopped",
                                limits.max_runtime.unwrap_or_default().as_secs())
                    } else {
                        format!("no progress event from the child for {} s (stall_timeout_s): child stopped as hung",
                                limits.stall_timeout.as_secs())
                    };
                    warn!(task_id = %key.task_id, attempt = key.attempt, grace_ms = drain.child_grace.as_millis() as u64,
                          reason = %message, "stopping the child (SIGTERM, SIGKILL after the grace period)");
                    signal_group(pid, Signal::SIGTERM);
                    let deadline = Instant::now() + drain.child_grace;
                    kill_at = Some(kill_at.map_or(deadline, |at| at.min(deadline)));
                    limit_hit = Some(message);
                }
                _ = kill_timer, if kill_at.is_some() => {
                    warn!(task_id = %key.task_id, attempt = key.attempt, "child did not stop in time: SIGKILL");
                    signal_group(pid, Signal::SIGKILL);
                    kill_at = None;
                }
            }
        };
        // Lines the child wrote just before exiting.
        while stdout_open {
            match tokio::time::timeout(Duration::from_secs(1), lines.next_line()).await {
                Ok(Ok(Some(line))) => watch.on_line(&line),
                _ => stdout_open = false,
            }
        }

        match (stop_reason, &watch.terminal) {
            (Some(StopCommand::LeaseLost), _) => return AttemptOutcome::LeaseLost,
            // A result that arrived is a result, even if a cancel order followed before the
            // child exited: the coordinator records a completion of a cancelled sweep.
            (Some(StopCommand::Cancelled), Some(AttemptOutcome::Completed(_))) => {
                info!(task_id = %key.task_id, attempt = key.attempt, "result arrived before the cancel order: reporting it");
            }
            (Some(StopCommand::Cancelled), _) => return AttemptOutcome::Cancelled,
            (None, _) => {}
        }
        if let Some(message) = limit_hit {
            // A result the child sent before it stopped is still a result.
            if !matches!(watch.terminal, Some(AttemptOutcome::Completed(_))) {
                return AttemptOutcome::Failed { class: FailureClass::Retryable, message };
            }
        }
        match watch.terminal {
            Some(outcome) => outcome,
            None if draining => AttemptOutcome::Failed {
                class: FailureClass::Preempted,
                message: format!("worker draining: child stopped without a final event ({status:?})"),
            },
            None => {
                let (class, message) = classify_exit(status);
                AttemptOutcome::Failed { class, message }
            }
        }
    }
}

/// Applies the child's events as they arrive.
struct Watch<'a> {
    key: &'a LeaseRef,
    leases: &'a LeaseTable,
    metrics: &'a MetricsSink,
    terminal: Option<AttemptOutcome>,
    /// When the child last showed progress (started, progress, checkpoint): the stall clock.
    last_progress: Instant,
}

impl Watch<'_> {
    fn on_line(&mut self, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        let event = match ChildEvent::parse_line(line) {
            Ok(event) => event,
            Err(e) => {
                debug!(task_id = %self.key.task_id, error = %e, line, "child printed a line that is not an event");
                return;
            }
        };
        if self.terminal.is_some() {
            warn!(task_id = %self.key.task_id, "child event after its final event ignored");
            return;
        }
        if !matches!(event, ChildEvent::Result { .. } | ChildEvent::Failed { .. }) {
            self.last_progress = Instant::now();
        }
        match event {
            ChildEvent::ResumeFailed { path, step, reason } => {
                warn!(task_id = %self.key.task_id, attempt = self.key.attempt, checkpoint = %path.display(), step,
                      reason = %reason, "cannot resume from the recorded checkpoint: the attempt starts from step 0");
                self.leases.set_resume_error(self.key, reason);
            }
            ChildEvent::Training(TrainingEvent::Started { resumed_from_step }) => {
                info!(task_id = %self.key.task_id, attempt = self.key.attempt, resumed_from_step, "task running");
                self.leases.set_running(self.key);
            }
            ChildEvent::Training(TrainingEvent::Progress(step)) => {
                self.metrics.send(StreamedPoint {
                    sweep: self.key.sweep.clone(),
                    task_id: self.key.task_id.clone(),
                    point: MetricPoint::of_step(self.key.attempt, &step, unix_ms()),
                });
            }
            ChildEvent::Training(TrainingEvent::Checkpoint { path, step }) => {
                debug!(task_id = %self.key.task_id, step, path = %path.display(), "checkpoint");
                self.leases.set_checkpoint(self.key, Checkpoint { path: path.to_string_lossy().into_owned(), step });
            }
            ChildEvent::Result { result } => self.terminal = Some(AttemptOutcome::Completed(Box::new(result))),
            ChildEvent::Failed { class, message } => self.terminal = Some(AttemptOutcome::Failed { class, message }),
        }
    }
}

pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
