//! `tsweep.v1.WorkerService`: what worker agents call. Every request's bounds
//! (`tsweep_proto::limits`), protocol version and worker id are checked first (`admit`). RegisterWorker hands
//! the worker a fresh secret (the store keeps only its SHA-256); every acquire, heartbeat
//! and report must carry it, so a worker id is no longer self-asserted: an unregistered id
//! or another secret is refused before the store is touched (`UNAUTHENTICATED` with a
//! typed `tsweep-worker-refusal` trailer). Every report is then fenced by the store on
//! `(task, attempt)`. A result whose scores are out of range is refused (INVALID_ARGUMENT)
//! and its attempt failed as fatal: a trainer that reports such a score would only report
//! it again.

use std::time::{Duration, Instant};

use rand::Rng;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};
use tsweep_proto::limits::CheckLimits;
use tsweep_proto::v1::worker_service_server::WorkerService;
use tsweep_proto::v1::{
    AcquireTaskRequest, AcquireTaskResponse, CompleteTaskRequest, FailTaskRequest, FailureClass, HeartbeatRequest,
    HeartbeatResponse, LeaseRef, RegisterWorkerRequest, RegisterWorkerResponse, ReportOutcome, ReportResponse,
};

use super::state::{bounded, Shared};
use crate::error::{check_protocol, CoordinatorError};
use crate::store::{new_worker_secret, RegisterOutcome, Store, TaskState, WorkerAuth, WorkerInfo};
use crate::telemetry::StaleKind;

#[derive(Clone)]
pub struct WorkerServiceImpl {
    shared: Shared,
}

impl WorkerServiceImpl {
    pub fn new(shared: Shared) -> Self {
        Self { shared }
    }

    /// What an idle worker waits before asking again: the configured value ±20 %, so a
    /// fleet that found nothing does not come back in lockstep.
    fn retry_after_ms(&self) -> u64 {
        let base = self.shared.config.acquire_retry_after_ms;
        let spread = base / 5;
        if spread == 0 {
            return base;
        }
        rand::rng().random_range(base - spread..=base + spread)
    }
}

/// What every worker call carries: the protocol version and the worker's id and secret.
trait WorkerCall: CheckLimits {
    fn protocol_version(&self) -> u32;
    fn worker_id(&self) -> &str;
    fn worker_secret(&self) -> &str;
}

macro_rules! worker_call {
    ($($request:ty),*) => {$(
        impl WorkerCall for $request {
            fn protocol_version(&self) -> u32 { self.protocol_version }
            fn worker_id(&self) -> &str { &self.worker_id }
            fn worker_secret(&self) -> &str { &self.worker_secret }
        }
    )*};
}
worker_call!(RegisterWorkerRequest, AcquireTaskRequest, HeartbeatRequest, CompleteTaskRequest, FailTaskRequest);

/// The checks every worker call passes first, in this order: its bounds, its protocol
/// version, a worker id.
fn admit<R: WorkerCall>(request: Request<R>) -> Result<R, CoordinatorError> {
    request.get_ref().check_limits()?;
    let request = request.into_inner();
    check_protocol(request.protocol_version())?;
    if request.worker_id().trim().is_empty() {
        return Err(CoordinatorError::InvalidArgument("worker_id is empty".into()));
    }
    Ok(request)
}

impl WorkerServiceImpl {
    /// [`admit`], then the store, and the caller's secret checked against its
    /// registration: what acquire, heartbeat and the reports start with.
    async fn admit_registered<R: WorkerCall>(&self, request: Request<R>) -> Result<(R, Store), CoordinatorError> {
        let request = admit(request)?;
        let store = self.shared.store_for_call()?;
        authenticate(&store, request.worker_id(), request.worker_secret()).await?;
        Ok((request, store))
    }
}

/// Refuses a call whose secret is not the one `worker_id` registered with.
async fn authenticate(store: &Store, worker_id: &str, secret: &str) -> Result<(), CoordinatorError> {
    match bounded(store.authenticate_worker(worker_id, secret)).await? {
        WorkerAuth::Verified => Ok(()),
        WorkerAuth::Unregistered => Err(CoordinatorError::WorkerUnregistered { worker_id: worker_id.to_string() }),
        WorkerAuth::WrongSecret => {
            info!(worker_id = %worker_id, "call with a wrong worker secret refused");
            Err(CoordinatorError::WorkerSecretMismatch { worker_id: worker_id.to_string() })
        }
    }
}

fn require_lease(lease: Option<&LeaseRef>) -> Result<&LeaseRef, CoordinatorError> {
    let lease = lease.ok_or_else(|| CoordinatorError::InvalidArgument("lease is missing".into()))?;
    if lease.sweep.is_empty() || lease.task_id.is_empty() {
        return Err(CoordinatorError::InvalidArgument("lease.sweep and lease.task_id must be set".into()));
    }
    Ok(lease)
}

#[tonic::async_trait]
impl WorkerService for WorkerServiceImpl {
    async fn register_worker(
        &self,
        request: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerResponse>, Status> {
        let request = admit(request)?;
        let store = self.shared.store_for_call()?;
        let worker = WorkerInfo {
            worker_id: request.worker_id.clone(),
            hostname: request.hostname,
            slots: request.slots,
            gpus: request.gpus,
            version: request.version,
        };
        let secret = new_worker_secret();
        match bounded(store.register_worker(&worker, &secret, &request.worker_secret)).await? {
            RegisterOutcome::Registered => {}
            RegisterOutcome::InUse { expires_in_ms } => {
                info!(worker_id = %worker.worker_id, hostname = %worker.hostname, expires_in_ms, "registration refused: the id is held by a live worker");
                return Err(CoordinatorError::WorkerIdInUse { worker_id: worker.worker_id, expires_in_ms }.into());
            }
        }
        self.shared.roster.seen(&worker.worker_id);
        info!(worker_id = %worker.worker_id, hostname = %worker.hostname, slots = worker.slots, gpus = worker.gpus, version = %worker.version, "worker registered");
        let config = &self.shared.config;
        Ok(Response::new(RegisterWorkerResponse {
            lease_ttl_ms: config.lease_ttl_ms,
            heartbeat_interval_ms: duration_ms(config.heartbeat_interval()),
            metrics_stream_pattern: store.metrics_stream_pattern(),
            worker_secret: secret,
        }))
    }

    async fn acquire_task(
        &self,
        request: Request<AcquireTaskRequest>,
    ) -> Result<Response<AcquireTaskResponse>, Status> {
        let started = Instant::now();
        let (request, store) = self.admit_registered(request).await?;
        let task = bounded(store.acquire(&request.worker_id, request.free_gpus)).await?;
        self.shared.telemetry.observe_acquire(started.elapsed());
        let retry_after_ms = match &task {
            Some(task) => {
                debug!(worker_id = %request.worker_id, sweep = %task.sweep, task_id = %task.task_id, attempt = task.attempt, slot = request.slot, "leased");
                0
            }
            None => self.retry_after_ms(),
        };
        Ok(Response::new(AcquireTaskResponse { task, retry_after_ms }))
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        let (request, store) = self.admit_registered(request).await?;
        self.shared.roster.seen(&request.worker_id);
        let stop = bounded(store.renew(&request.worker_id, &request.leases)).await?;
        if !stop.is_empty() {
            debug!(worker_id = %request.worker_id, stop_orders = stop.len(), "heartbeat answered with stop orders");
        }
        Ok(Response::new(HeartbeatResponse { stop, lease_ttl_ms: self.shared.config.lease_ttl_ms }))
    }

    async fn complete_task(&self, request: Request<CompleteTaskRequest>) -> Result<Response<ReportResponse>, Status> {
        let (request, store) = self.admit_registered(request).await?;
        let lease = require_lease(request.lease.as_ref())?;
        let result = request.result.clone().unwrap_or_default();
        if let Some(problem) = result.score_problem() {
            // Fenced like any report: only the attempt that holds the lease is failed.
            let message = format!("result refused: {problem}");
            let failed = bounded(store.fail(&request.worker_id, lease, FailureClass::Fatal, &message, None)).await?;
            warn!(worker_id = %request.worker_id, sweep = %lease.sweep, task_id = %lease.task_id, attempt = lease.attempt,
                  outcome = ?failed.outcome, %problem, "result refused; attempt failed as fatal");
            if failed.outcome == ReportOutcome::Accepted {
                self.shared.notify_sweep(&lease.sweep);
            }
            return Err(CoordinatorError::InvalidArgument(format!(
                "{message}; the attempt was failed as fatal (task {})",
                lease.task_id
            ))
            .into());
        }
        let outcome = bounded(store.complete(&request.worker_id, lease, &result)).await?;
        match outcome {
            ReportOutcome::Accepted => {
                info!(worker_id = %request.worker_id, sweep = %lease.sweep, task_id = %lease.task_id, attempt = lease.attempt, "completed");
                self.shared.notify_sweep(&lease.sweep);
            }
            ReportOutcome::Stale => {
                info!(worker_id = %request.worker_id, sweep = %lease.sweep, task_id = %lease.task_id, attempt = lease.attempt, "stale completion refused");
                self.shared.telemetry.add_stale_reports(StaleKind::Complete, 1);
            }
            ReportOutcome::Duplicate | ReportOutcome::Unspecified => {}
        }
        Ok(Response::new(ReportResponse { outcome: outcome as i32, task_state: TaskState::Unspecified.into() }))
    }

    async fn fail_task(&self, request: Request<FailTaskRequest>) -> Result<Response<ReportResponse>, Status> {
        let (request, store) = self.admit_registered(request).await?;
        let lease = require_lease(request.lease.as_ref())?;
        let class = FailureClass::try_from(request.class)
            .map_err(|_| CoordinatorError::InvalidArgument(format!("unknown failure class {}", request.class)))?;
        let checkpoint = request.checkpoint.as_ref().filter(|c| !c.path.is_empty());
        let outcome = bounded(store.fail_with_resume_error(
            &request.worker_id,
            lease,
            class,
            &request.message,
            checkpoint,
            &request.resume_error,
        ))
        .await?;
        let task_state = outcome.state.unwrap_or_default();
        match outcome.outcome {
            ReportOutcome::Accepted => {
                info!(worker_id = %request.worker_id, sweep = %lease.sweep, task_id = %lease.task_id, attempt = lease.attempt, class = class.name(), state = %task_state, message = %request.message, "failure recorded");
                self.shared.notify_sweep(&lease.sweep);
            }
            ReportOutcome::Stale => {
                info!(worker_id = %request.worker_id, sweep = %lease.sweep, task_id = %lease.task_id, attempt = lease.attempt, "stale failure refused");
                self.shared.telemetry.add_stale_reports(StaleKind::Fail, 1);
            }
            ReportOutcome::Duplicate | ReportOutcome::Unspecified => {}
        }
        Ok(Response::new(ReportResponse { outcome: outcome.outcome as i32, task_state: task_state.into() }))
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
