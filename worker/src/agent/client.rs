//! The coordinator's `WorkerService` as the agent uses it: the bearer token
//! ([`tsweep_proto::auth`]) and the protocol
//! version on every call, a timeout on every call, and reports retried with backoff.

use std::time::Duration;

use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::{info, warn};
use tsweep_proto::v1::worker_service_client::WorkerServiceClient;
use tsweep_proto::v1::{
    AcquireTaskRequest, AcquireTaskResponse, CompleteTaskRequest, FailTaskRequest, HeartbeatRequest, HeartbeatResponse,
    HeldLease, LeaseRef, RegisterWorkerRequest, RegisterWorkerResponse, ReportOutcome, ReportResponse,
};
use tsweep_proto::PROTOCOL_VERSION;

use super::backoff::Backoff;
use super::AgentError;
use crate::token::{TokenInterceptor, TokenSource};

type Inner = WorkerServiceClient<InterceptedService<Channel, TokenInterceptor>>;

/// Cheap to clone; every clone shares one HTTP/2 connection.
#[derive(Clone)]
pub struct CoordinatorClient {
    inner: Inner,
    /// Shared with `inner`: re-reads a token file after an UNAUTHENTICATED answer.
    token: TokenInterceptor,
    worker_id: String,
    call_timeout: Duration,
}

/// Whether a failed call may succeed when repeated (coordinator restarting, network blip).
pub fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
    )
}

impl CoordinatorClient {
    /// Connects lazily: a coordinator that is down now is retried on each call. A token
    /// file is read now and re-read while the agent runs ([`TokenInterceptor`]).
    pub fn new(url: &str, token: &TokenSource, worker_id: String) -> Result<Self, AgentError> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| AgentError::Coordinator(format!("coordinator url `{url}`: {e}")))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10));
        let channel = endpoint.connect_lazy();
        let token = TokenInterceptor::new(token).map_err(|e| AgentError::Coordinator(e.to_string()))?;
        Ok(Self {
            inner: WorkerServiceClient::with_interceptor(channel, token.clone())
                .max_decoding_message_size(tsweep_proto::limits::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(tsweep_proto::limits::MAX_MESSAGE_BYTES),
            token,
            worker_id,
            call_timeout: Duration::from_secs(10),
        })
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    async fn with_timeout<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(Err(status)) if status.code() == Code::Unauthenticated => {
                // A rotated token file: read it again on the next call.
                self.token.expire();
                Err(status)
            }
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_) => {
                Err(Status::deadline_exceeded(format!("coordinator did not answer within {:?}", self.call_timeout)))
            }
        }
    }

    pub async fn register(&self, hostname: String, slots: u32, gpus: u32) -> Result<RegisterWorkerResponse, Status> {
        let request = RegisterWorkerRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: self.worker_id.clone(),
            hostname,
            slots,
            gpus,
            version: tsweep_proto::VERSION.to_string(),
        };
        let mut client = self.inner.clone();
        self.with_timeout(client.register_worker(request)).await
    }

    pub async fn acquire(&self, slot: u32, free_gpus: u32) -> Result<AcquireTaskResponse, Status> {
        let request = AcquireTaskRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: self.worker_id.clone(),
            free_gpus,
            slot,
        };
        let mut client = self.inner.clone();
        self.with_timeout(client.acquire_task(request)).await
    }

    pub async fn heartbeat(&self, leases: Vec<HeldLease>) -> Result<HeartbeatResponse, Status> {
        let request =
            HeartbeatRequest { protocol_version: PROTOCOL_VERSION, worker_id: self.worker_id.clone(), leases };
        let mut client = self.inner.clone();
        self.with_timeout(client.heartbeat(request)).await
    }

    pub async fn complete(
        &self,
        lease: LeaseRef,
        result: tsweep_proto::v1::TaskResult,
    ) -> Result<ReportResponse, Status> {
        let request = CompleteTaskRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: self.worker_id.clone(),
            lease: Some(lease),
            result: Some(result),
        };
        let mut client = self.inner.clone();
        self.with_timeout(client.complete_task(request)).await
    }

    pub async fn fail(&self, mut request: FailTaskRequest) -> Result<ReportResponse, Status> {
        request.protocol_version = PROTOCOL_VERSION;
        request.worker_id = self.worker_id.clone();
        let mut client = self.inner.clone();
        self.with_timeout(client.fail_task(request)).await
    }
}

/// A report the agent owes the coordinator for one attempt.
#[derive(Debug, Clone)]
pub enum Report {
    Complete { lease: LeaseRef, result: tsweep_proto::v1::TaskResult },
    Fail(FailTaskRequest),
}

/// How delivering a report ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The coordinator answered with this outcome (accepted, duplicate or stale).
    Answered(ReportOutcome),
    /// The coordinator refused it for good (bad request, auth); logged.
    Refused(Code),
    /// The deadline passed while the coordinator was unreachable; the lease will expire.
    GaveUp,
}

impl CoordinatorClient {
    /// Sends a report until the coordinator answers or `deadline` passes. Safe to repeat:
    /// reports are idempotent per attempt (a repeat is answered DUPLICATE).
    pub async fn deliver(&self, report: &Report, deadline: Instant) -> Delivery {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let (task_id, attempt) = match report {
            Report::Complete { lease, .. } => (lease.task_id.clone(), lease.attempt),
            Report::Fail(request) => request.lease.as_ref().map(|l| (l.task_id.clone(), l.attempt)).unwrap_or_default(),
        };
        loop {
            let answer = match report {
                Report::Complete { lease, result } => self.complete(lease.clone(), result.clone()).await,
                Report::Fail(request) => self.fail(request.clone()).await,
            };
            match answer {
                Ok(response) => {
                    let outcome = ReportOutcome::try_from(response.outcome).unwrap_or(ReportOutcome::Unspecified);
                    info!(task_id = %task_id, attempt, outcome = outcome.as_str_name(), task_state = %response.task_state,
                          "report delivered");
                    return Delivery::Answered(outcome);
                }
                // With a token file, UNAUTHENTICATED may be a Secret rotated on the
                // coordinator first: the file is read again and the report retried.
                Err(status)
                    if is_transient(&status) || (status.code() == Code::Unauthenticated && self.token.from_file()) =>
                {
                    let wait = backoff.next_delay();
                    if Instant::now() + wait >= deadline {
                        warn!(task_id = %task_id, attempt, error = %status.message(),
                              "giving up on the report: coordinator unreachable until the deadline");
                        return Delivery::GaveUp;
                    }
                    warn!(task_id = %task_id, attempt, code = ?status.code(), error = %status.message(),
                          retry_in_ms = wait.as_millis() as u64, "report failed, retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(status) => {
                    warn!(task_id = %task_id, attempt, code = ?status.code(), error = %status.message(),
                          "coordinator refused the report");
                    return Delivery::Refused(status.code());
                }
            }
        }
    }
}
