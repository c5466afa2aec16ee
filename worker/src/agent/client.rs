//! The coordinator's `WorkerService` as the agent uses it: the bearer token (the worker
//! credential, [`tsweep_proto::auth`]), the protocol version and this worker's secret on
//! every call, a timeout on every call, and reports retried with backoff. The channel is
//! TLS for an `https://` coordinator ([`tsweep_proto::tls`]).
//!
//! **Identity.** [`CoordinatorClient::register`] keeps the secret the coordinator hands
//! out; every acquire, heartbeat and report carries it. When the coordinator answers that
//! this id is not registered (its record lapsed, or Redis lost it), the client registers
//! again, once for all slots, and repeats the call: running tasks go on, their leases are
//! untouched. When it answers that the id holds another secret, another process has taken
//! the id: [`CoordinatorClient::identity_lost`] fires and the agent drains.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::{error, info, warn};
use tsweep_proto::auth::{TokenInterceptor, TokenSource, WorkerRefusal};
use tsweep_proto::v1::worker_service_client::WorkerServiceClient;
use tsweep_proto::v1::{
    AcquireTaskRequest, AcquireTaskResponse, CompleteTaskRequest, FailTaskRequest, HeartbeatRequest, HeartbeatResponse,
    HeldLease, LeaseRef, RegisterWorkerRequest, RegisterWorkerResponse, ReportOutcome, ReportResponse,
};
use tsweep_proto::PROTOCOL_VERSION;

use super::AgentError;
use tsweep_proto::backoff::Backoff;

type Inner = WorkerServiceClient<InterceptedService<Channel, TokenInterceptor>>;

/// Cheap to clone; every clone shares one HTTP/2 connection and one identity.
#[derive(Clone)]
pub struct CoordinatorClient {
    inner: Inner,
    /// Shared with `inner`: re-reads a token file after an UNAUTHENTICATED answer.
    token: TokenInterceptor,
    /// The channel's settings, for [`Self::probe`].
    endpoint: Endpoint,
    identity: Arc<Identity>,
    call_timeout: Duration,
}

/// What this worker registers with (again, when the coordinator forgot it).
#[derive(Debug, Clone)]
pub struct Registration {
    pub hostname: String,
    pub slots: u32,
    pub gpus: u32,
}

struct Identity {
    worker_id: String,
    registration: Registration,
    /// The current secret and how many registrations gave one.
    secret: RwLock<(String, u64)>,
    /// One re-registration at a time: slots and the heartbeat that all find the
    /// registration gone register once, then repeat their calls with the new secret.
    registering: tokio::sync::Mutex<()>,
    /// Cancelled when the coordinator says another process holds this id.
    lost: CancellationToken,
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
    /// file is read now and re-read while the agent runs ([`TokenInterceptor`]); a CA file
    /// (`https://` only) is read now.
    pub fn new(
        url: &str,
        ca_file: Option<&std::path::Path>,
        token: &TokenSource,
        worker_id: String,
        registration: Registration,
    ) -> Result<Self, AgentError> {
        let endpoint = tsweep_proto::tls::coordinator_endpoint(url, ca_file)
            .map_err(|e| AgentError::Coordinator(e.to_string()))?
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
            endpoint,
            identity: Arc::new(Identity {
                worker_id,
                registration,
                secret: RwLock::new((String::new(), 0)),
                registering: tokio::sync::Mutex::new(()),
                lost: CancellationToken::new(),
            }),
            call_timeout: Duration::from_secs(10),
        })
    }

    pub fn worker_id(&self) -> &str {
        &self.identity.worker_id
    }

    /// Cancelled once the coordinator said another process registered under this id.
    pub fn identity_lost(&self) -> CancellationToken {
        self.identity.lost.clone()
    }

    /// Connects once more to tell a refused TLS handshake (fatal) from an unreachable
    /// coordinator (retry): tonic reports both as UNAVAILABLE with the cause as text only.
    pub async fn probe(&self) -> Result<(), tsweep_proto::tls::ProbeError> {
        tsweep_proto::tls::probe(&self.endpoint, Duration::from_secs(3)).await
    }

    fn secret(&self) -> (String, u64) {
        self.identity.secret.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Runs `call` with the current secret. Not registered (any more): register again
    /// (once, whoever comes first) and run it once more. Another process's id: logged,
    /// [`Self::identity_lost`] fires.
    async fn with_identity<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let (secret, generation) = self.secret();
        let answer = match call(secret).await {
            Err(status) if WorkerRefusal::of(&status) == Some(WorkerRefusal::Unregistered) => {
                self.register_again(generation).await?;
                call(self.secret().0).await
            }
            other => other,
        };
        if let Err(status) = &answer {
            if WorkerRefusal::of(status) == Some(WorkerRefusal::WrongSecret) && !self.identity.lost.is_cancelled() {
                error!(worker_id = %self.worker_id(), error = %status.message(),
                       "another process registered under this worker id: this worker stops (give each worker its own id)");
                self.identity.lost.cancel();
            }
        }
        answer
    }

    /// Registers again unless another caller did since `generation` was current.
    async fn register_again(&self, generation: u64) -> Result<(), Status> {
        let _one_at_a_time = self.identity.registering.lock().await;
        if self.secret().1 != generation {
            return Ok(());
        }
        warn!(worker_id = %self.worker_id(), "the coordinator does not know this worker (registration lapsed or lost); registering again, running tasks go on");
        self.register().await.map(|_| ())
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

    /// Registers this worker (presenting the secret of its previous registration, if
    /// any) and keeps the secret the coordinator answers.
    pub async fn register(&self) -> Result<RegisterWorkerResponse, Status> {
        let registration = &self.identity.registration;
        let request = RegisterWorkerRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: self.worker_id().to_string(),
            hostname: registration.hostname.clone(),
            slots: registration.slots,
            gpus: registration.gpus,
            version: tsweep_proto::VERSION.to_string(),
            worker_secret: self.secret().0,
        };
        let mut client = self.inner.clone();
        let response = self.with_timeout(client.register_worker(request)).await?;
        if response.worker_secret.is_empty() {
            return Err(Status::internal("the coordinator answered RegisterWorker without a worker secret"));
        }
        let mut secret = self.identity.secret.write().unwrap_or_else(PoisonError::into_inner);
        *secret = (response.worker_secret.clone(), secret.1 + 1);
        Ok(response)
    }

    pub async fn acquire(&self, slot: u32, free_gpus: u32) -> Result<AcquireTaskResponse, Status> {
        self.with_identity(|worker_secret| {
            let request = AcquireTaskRequest {
                protocol_version: PROTOCOL_VERSION,
                worker_id: self.worker_id().to_string(),
                free_gpus,
                slot,
                worker_secret,
            };
            let mut client = self.inner.clone();
            async move { self.with_timeout(client.acquire_task(request)).await }
        })
        .await
    }

    pub async fn heartbeat(&self, leases: Vec<HeldLease>) -> Result<HeartbeatResponse, Status> {
        self.with_identity(|worker_secret| {
            let request = HeartbeatRequest {
                protocol_version: PROTOCOL_VERSION,
                worker_id: self.worker_id().to_string(),
                leases: leases.clone(),
                worker_secret,
            };
            let mut client = self.inner.clone();
            async move { self.with_timeout(client.heartbeat(request)).await }
        })
        .await
    }

    pub async fn complete(
        &self,
        lease: LeaseRef,
        result: tsweep_proto::v1::TaskResult,
    ) -> Result<ReportResponse, Status> {
        self.with_identity(|worker_secret| {
            let request = CompleteTaskRequest {
                protocol_version: PROTOCOL_VERSION,
                worker_id: self.worker_id().to_string(),
                lease: Some(lease.clone()),
                result: Some(result.clone()),
                worker_secret,
            };
            let mut client = self.inner.clone();
            async move { self.with_timeout(client.complete_task(request)).await }
        })
        .await
    }

    pub async fn fail(&self, request: FailTaskRequest) -> Result<ReportResponse, Status> {
        self.with_identity(|worker_secret| {
            let mut request = request.clone();
            request.protocol_version = PROTOCOL_VERSION;
            request.worker_id = self.worker_id().to_string();
            request.worker_secret = worker_secret;
            let mut client = self.inner.clone();
            async move { self.with_timeout(client.fail_task(request)).await }
        })
        .await
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
                    info!(task_id = %task_id, attempt, outcome = outcome.as_str_name(), task_state = %response.task_state(),
                          "report delivered");
                    return Delivery::Answered(outcome);
                }
                // With a token file, UNAUTHENTICATED may be a Secret rotated on the
                // coordinator first: the file is read again and the report retried (a
                // refusal of this worker's identity is not that).
                Err(status)
                    if is_transient(&status)
                        || (status.code() == Code::Unauthenticated
                            && WorkerRefusal::of(&status).is_none()
                            && self.token.from_file()) =>
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
