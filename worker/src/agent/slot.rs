//! One slot: acquire → run the attempt in a child → report, until the agent drains.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tsweep_proto::cell::{CellSpec, Device, Stage, TrainJob};
use tsweep_proto::v1::{FailTaskRequest, LeaseRef, TaskAssignment};

use super::child::{AttemptOutcome, ChildLauncher, DrainPolicy, GpuAssignment};
use super::client::{is_transient, CoordinatorClient, Delivery, Report};
use super::leases::LeaseTable;
use super::metrics::MetricsSink;
use crate::child_protocol::{FailureClass, TaskInput};
use tsweep_proto::backoff::Backoff;

/// Everything a slot needs; shared by all slots of the agent.
pub struct SlotShared {
    pub client: CoordinatorClient,
    pub leases: LeaseTable,
    pub metrics: MetricsSink,
    pub launcher: ChildLauncher,
    pub shutdown: CancellationToken,
    pub checkpoint_root: PathBuf,
    pub cache_dir: PathBuf,
    /// libtorch threads each child uses on the CPU.
    pub cpu_threads: u32,
    pub grace: Duration,
    pub report_timeout: Duration,
}

impl SlotShared {
    /// Time the children get after SIGTERM; the rest of the grace period is for the reports.
    pub fn child_grace(&self) -> Duration {
        self.grace.saturating_sub(report_reserve(self.grace))
    }
}

/// The part of the grace period kept for reporting after the children stopped.
pub fn report_reserve(grace: Duration) -> Duration {
    (grace / 5).min(Duration::from_secs(5))
}

/// `free_gpus` of a slot pinned to the CPU: any task fits.
pub const CPU_SLOT_FREE_GPUS: u32 = u32::MAX;

pub struct Slot {
    pub index: u32,
    /// GPUs this slot owns (indices on this machine); empty on a CPU slot.
    pub gpus: Vec<u32>,
    /// `auto` | `cpu` | `cuda:N` as configured.
    pub device: Device,
    pub shared: Arc<SlotShared>,
}

impl Slot {
    /// What the slot offers on acquire. A slot pinned to the CPU (`--device cpu`) runs any
    /// task there whatever its GPU count, so it takes them all (dev clusters, fake-executor
    /// tests); otherwise the slot's own GPUs, and a GPU-less slot only takes `gpus = 0` tasks.
    fn free_gpus(&self) -> u32 {
        if self.device == Device::Cpu {
            return CPU_SLOT_FREE_GPUS;
        }
        u32::try_from(self.gpus.len()).unwrap_or(u32::MAX)
    }

    fn gpu_assignment(&self) -> GpuAssignment {
        match (&self.device, self.gpus.is_empty()) {
            (Device::Cpu, _) => GpuAssignment(Some(String::new())),
            (Device::Cuda(_), _) => GpuAssignment(None),
            (Device::Auto, false) => {
                GpuAssignment(Some(self.gpus.iter().map(u32::to_string).collect::<Vec<_>>().join(",")))
            }
            (Device::Auto, true) => GpuAssignment(Some(String::new())),
        }
    }

    /// The device the child gets.
    fn child_device(&self) -> Device {
        match (&self.device, self.gpus.is_empty()) {
            (Device::Cpu, _) | (Device::Auto, true) => Device::Cpu,
            (Device::Auto, false) => Device::Cuda(0),
            (Device::Cuda(n), _) => Device::Cuda(*n),
        }
    }

    pub async fn run(self) {
        let shared = self.shared.clone();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        info!(slot = self.index, gpus = ?self.gpus, device = %self.child_device(), "slot started");
        while !shared.shutdown.is_cancelled() {
            // Never abandoned half-way: an acquire that lands after SIGTERM is released below.
            let wait = match shared.client.acquire(self.index, self.free_gpus()).await {
                Ok(response) => match response.task {
                    Some(assignment) => {
                        backoff.reset();
                        self.run_assignment(assignment).await;
                        continue;
                    }
                    None => {
                        backoff.reset();
                        Duration::from_millis(response.retry_after_ms.clamp(20, 5_000))
                    }
                },
                Err(status) => {
                    let wait = backoff.next_delay();
                    if is_transient(&status) {
                        warn!(slot = self.index, code = ?status.code(), error = %status.message(),
                              retry_in_ms = wait.as_millis() as u64, "acquire failed, retrying");
                    } else {
                        error!(slot = self.index, code = ?status.code(), error = %status.message(),
                               retry_in_ms = wait.as_millis() as u64, "coordinator refused acquire");
                    }
                    wait
                }
            };
            tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        info!(slot = self.index, "slot stopped");
    }

    async fn run_assignment(&self, assignment: TaskAssignment) {
        let shared = &self.shared;
        let key = LeaseRef {
            sweep: assignment.sweep.clone(),
            task_id: assignment.task_id.clone(),
            attempt: assignment.attempt,
        };
        let stop_orders = shared.leases.insert(key.clone());
        let resume = assignment.resume.clone().filter(|c| !c.path.is_empty());
        if let Some(resume) = &resume {
            // Until this attempt writes its own, the checkpoint to pass on is the one it resumes
            // from (a release or failure before the first checkpoint must not lose it).
            shared.leases.set_checkpoint(&key, resume.clone());
        }
        info!(slot = self.index, sweep = %key.sweep, task_id = %key.task_id, attempt = key.attempt,
              resume_step = resume.as_ref().map(|c| c.step), "leased");

        let outcome = if shared.shutdown.is_cancelled() {
            AttemptOutcome::Failed {
                class: FailureClass::Preempted,
                message: "worker draining: task released before it started".to_string(),
            }
        } else {
            match CellSpec::from_json(&assignment.spec_json) {
                Err(e) => AttemptOutcome::Failed {
                    class: FailureClass::Fatal,
                    message: format!("task {}: spec_json line {} column {}: {e}", key.task_id, e.line(), e.column()),
                },
                Ok(mut spec) => {
                    // A transfer cell of a pretrained model loads the backbone its pretrain
                    // cell wrote; a pretrain cell writes it there.
                    if let Some(by) = &spec.model.pretrained {
                        spec.model.weights = Some(pretrained_weights(&shared.checkpoint_root, &key.sweep, &by.task_id));
                    }
                    let pretrained_out = (spec.stage == Stage::Pretrain)
                        .then(|| pretrained_weights(&shared.checkpoint_root, &key.sweep, &key.task_id));
                    let input = TaskInput {
                        task_id: key.task_id.clone(),
                        attempt: key.attempt,
                        job: TrainJob {
                            spec,
                            resume,
                            checkpoint_dir: checkpoint_dir(&shared.checkpoint_root, &key),
                            cache_dir: shared.cache_dir.clone(),
                            device: self.child_device(),
                            pretrained_out,
                        },
                        cpu_threads: Some(shared.cpu_threads),
                        executor: shared.launcher.executor,
                    };
                    shared
                        .launcher
                        .run(
                            &input,
                            &key,
                            &self.gpu_assignment(),
                            &shared.leases,
                            &shared.metrics,
                            stop_orders,
                            &shared.shutdown,
                            DrainPolicy { child_grace: shared.child_grace() },
                        )
                        .await
                }
            }
        };
        self.report(&key, outcome).await;
        shared.leases.remove(&key);
    }

    async fn report(&self, key: &LeaseRef, outcome: AttemptOutcome) {
        let shared = &self.shared;
        let report = match outcome {
            AttemptOutcome::LeaseLost | AttemptOutcome::Cancelled => {
                info!(task_id = %key.task_id, attempt = key.attempt, ?outcome, "attempt stopped by the coordinator; nothing to report");
                return;
            }
            AttemptOutcome::Completed(result) => {
                info!(task_id = %key.task_id, attempt = key.attempt, val_score = ?result.val_score, "attempt succeeded");
                Report::Complete { lease: key.clone(), result: *result }
            }
            AttemptOutcome::Failed { class, message } => {
                let checkpoint = shared.leases.checkpoint(key);
                info!(task_id = %key.task_id, attempt = key.attempt, class = ?class, message = %message,
                      checkpoint_step = checkpoint.as_ref().map(|c| c.step), "attempt failed");
                Report::Fail(FailTaskRequest {
                    protocol_version: 0,
                    worker_id: String::new(),
                    lease: Some(key.clone()),
                    class: class.as_reported_by_task() as i32,
                    // The coordinator refuses longer ones (tsweep_proto::limits).
                    message: tsweep_proto::limits::truncate_message(&message),
                    checkpoint,
                    resume_error: shared.leases.resume_error(key).unwrap_or_default(),
                    // The client fills in the protocol version, worker id and secret.
                    worker_secret: String::new(),
                })
            }
        };
        let deadline = if shared.shutdown.is_cancelled() {
            Instant::now() + report_reserve(shared.grace).max(Duration::from_secs(1))
        } else {
            Instant::now() + shared.report_timeout
        };
        if let Delivery::GaveUp = shared.client.deliver(&report, deadline).await {
            error!(task_id = %key.task_id, attempt = key.attempt,
                   "report not delivered; the lease will expire and the task run again");
        }
    }
}

/// `<root>/<sweep>/<task>/pretrained.safetensors`: the backbone a pretrain cell trained,
/// next to its attempts' checkpoint directories. The coordinator knows no worker paths: the
/// workers of its transfer cells find it from the pretrain cell's task id under the same
/// (shared) checkpoint root.
pub fn pretrained_weights(root: &std::path::Path, sweep: &str, pretrain_task_id: &str) -> PathBuf {
    root.join(sweep).join(pretrain_task_id).join(PRETRAINED_FILE)
}

/// File name of a pretrain cell's trained backbone.
pub const PRETRAINED_FILE: &str = "pretrained.safetensors";

/// `<root>/<sweep>/<task>/attempt-<n>`: each attempt writes its own checkpoints, so a late
/// writer of an old attempt never overwrites a newer one's.
pub fn checkpoint_dir(root: &std::path::Path, key: &LeaseRef) -> PathBuf {
    root.join(&key.sweep).join(&key.task_id).join(format!("attempt-{}", key.attempt))
}
