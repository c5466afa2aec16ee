//! The coordinator server: `tsweep.v1.SweepService` (users), `tsweep.v1.WorkerService`
//! (worker agents), `grpc.health.v1` (tonic-health) and server reflection
//! (`grpc.reflection.v1` and `v1alpha`) on one gRPC port; Prometheus `/metrics` on another; the background loops (Redis connection,
//! readiness, reaper, finals scheduler, gauges, metrics stream consumer) under one
//! cancellation token.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tsweep_coordinator::config::{ConfigOverrides, ServiceConfig};
//! let config = ServiceConfig::load(None, ConfigOverrides::default())?;
//! tsweep_coordinator::server::serve(config, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! Health: the empty service name (liveness) is SERVING as long as the process serves
//! and never depends on Redis; [`READINESS_SERVICE`] is SERVING only while Redis answers.
//! Auth: `SweepService` requires the user credential and `WorkerService` the worker
//! credential, each `authorization: Bearer <token>` ([`tsweep_proto::auth`], roles in
//! [`auth`]); health and reflection stay open. Token files are re-read while the server
//! runs ([`auth`]): a rotated Secret is picked up without a restart, the previous token
//! accepted for a grace window. On top of the worker credential every worker carries the
//! secret RegisterWorker gave it ([`worker_service`]).

pub mod auth;
pub mod loops;
pub mod metrics_consumer;
pub mod state;
pub mod sweep_service;
pub mod worker_service;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tracing::{info, warn};
use tsweep_proto::v1::sweep_service_server::SweepServiceServer;
use tsweep_proto::v1::worker_service_server::WorkerServiceServer;

use crate::config::{ConfigError, Role, ServiceConfig};
use crate::store::StoreOptions;
use crate::telemetry::{self, Telemetry};
use auth::{RoleTokens, TokenReload};
use state::Shared;
use sweep_service::SweepServiceImpl;
use worker_service::WorkerServiceImpl;

/// Health service name of liveness (the server as a whole): always SERVING while it runs.
pub const LIVENESS_SERVICE: &str = "";
/// Health service name of readiness: SERVING only while Redis answers.
pub const READINESS_SERVICE: &str = "tsweep.ready";
/// How long in-flight calls get to finish on shutdown before the server is dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("tls: cannot read {path}: {source}")]
    TlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tls: {0}")]
    Tls(#[source] tonic::transport::Error),
    #[error("grpc server: {0}")]
    Transport(#[source] tonic::transport::Error),
    #[error("metrics endpoint: {0}")]
    Metrics(#[source] std::io::Error),
    #[error("grpc server task ended abnormally: {0}")]
    Task(String),
}

/// A coordinator started by [`start`]: its bound addresses and the handle to stop it.
pub struct RunningCoordinator {
    /// The gRPC address actually bound (port 0 in the config resolves here).
    pub grpc_addr: SocketAddr,
    /// The `/metrics` address actually bound; `None` when disabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Whether clients must use TLS (`https://`).
    pub tls: bool,
    cancel: CancellationToken,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<JoinHandle<()>>,
    metrics: Option<JoinHandle<std::io::Result<()>>>,
}

impl std::fmt::Debug for RunningCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningCoordinator")
            .field("grpc_addr", &self.grpc_addr)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

impl RunningCoordinator {
    /// `http://addr` or `https://addr`, for clients.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.grpc_addr)
    }

    /// The token that stops everything (cancel it, then call [`Self::shutdown`]).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops accepting calls, lets in-flight calls finish (up to [`SHUTDOWN_GRACE`]),
    /// stops the loops and the metrics endpoint.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.cancel.cancel();
        self.join().await
    }

    /// Runs until `shutdown` resolves, `cancel_token()` is cancelled, or the gRPC server
    /// fails; then shuts down as [`Self::shutdown`].
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let early = tokio::select! {
            _ = shutdown => None,
            _ = self.cancel.cancelled() => None,
            ended = &mut self.server => Some(ended),
        };
        self.cancel.cancel();
        if let Some(ended) = early {
            self.join_background().await;
            return match ended {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(ServeError::Transport(error)),
                Err(join) => Err(ServeError::Task(join.to_string())),
            };
        }
        self.join().await
    }

    async fn join(mut self) -> Result<(), ServeError> {
        let server = match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.server).await {
            Ok(Ok(result)) => result.map_err(ServeError::Transport),
            Ok(Err(join)) => Err(ServeError::Task(join.to_string())),
            Err(_) => {
                warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "in-flight calls did not finish in time, dropping them");
                self.server.abort();
                Ok(())
            }
        };
        self.join_background().await;
        info!("coordinator stopped");
        server
    }

    async fn join_background(&mut self) {
        for handle in self.background.drain(..) {
            if tokio::time::timeout(SHUTDOWN_GRACE, handle).await.is_err() {
                warn!("a background loop did not stop in time");
            }
        }
        if let Some(metrics) = self.metrics.take() {
            match tokio::time::timeout(SHUTDOWN_GRACE, metrics).await {
                Ok(Ok(Err(error))) => warn!(%error, "metrics endpoint ended with an error"),
                Err(_) => warn!("metrics endpoint did not stop in time"),
                _ => {}
            }
        }
    }
}

/// Runs the coordinator until `shutdown` resolves (what `tsweep serve` calls).
pub async fn serve(config: ServiceConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    start(config).await?.run_until(shutdown).await
}

/// Validates `config`, binds the gRPC (and metrics) listeners, starts the services and
/// loops, and returns at once. Redis need not be up: calls answer UNAVAILABLE and
/// readiness NOT_SERVING until it is.
pub async fn start(config: ServiceConfig) -> Result<RunningCoordinator, ServeError> {
    start_with_token_reload(config, TokenReload::default()).await
}

/// As [`start`], with another period and grace window for following `auth_token_file`
/// (tests use short ones).
pub async fn start_with_token_reload(
    config: ServiceConfig,
    token_reload: TokenReload,
) -> Result<RunningCoordinator, ServeError> {
    config.validate()?;
    let listen = config.listen_addr()?;
    let metrics_listen = config.metrics_addr()?;
    let tls = load_tls(&config).await?;

    let cancel = CancellationToken::new();
    let telemetry = Telemetry::new();
    let store_options = StoreOptions {
        lease_ttl: config.lease_ttl(),
        dark_after: config.dark_after(),
        submit_batch: config.batch_cells as usize,
        bulk_batch: config.batch_cells as usize,
        ..StoreOptions::default()
    };
    let roles = RoleTokens::from_config(&config);
    let (user_auth, worker_auth) = (roles.user.enabled(), roles.worker.enabled());
    if roles.shared && !listen.ip().is_loopback() {
        warn!(
            "one token (auth_token) serves users and workers: every worker may also submit, cancel and delete; \
             set user_token_file and worker_token_file to separate the roles"
        );
    }
    let shared = Shared::new(config, telemetry.clone(), cancel.clone());

    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|source| ServeError::Bind {
        what: "grpc",
        addr: listen,
        source,
    })?;
    let grpc_addr = listener.local_addr().map_err(|source| ServeError::Bind { what: "grpc", addr: listen, source })?;

    let (metrics_addr, metrics) =
        match metrics_listen {
            None => (None, None),
            Some(addr) => {
                let listener = telemetry::bind_metrics(addr).await.map_err(|source| ServeError::Bind {
                    what: "metrics",
                    addr,
                    source,
                })?;
                let bound = listener.local_addr().map_err(ServeError::Metrics)?;
                let stop = cancel.clone();
                let handle = tokio::spawn(telemetry::serve_metrics(listener, telemetry.clone(), async move {
                    stop.cancelled().await
                }));
                (Some(bound), Some(handle))
            }
        };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_service_status(READINESS_SERVICE, tonic_health::ServingStatus::NotServing).await;
    // Both reflection protocols: v1 (grpcurl, current clients) and v1alpha (older stock
    // clients, e.g. Python's grpcio-reflection), from the same descriptors.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tsweep_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 =
        reflection().build_v1().map_err(|e| ServeError::Task(format!("reflection service (v1): {e}")))?;
    let reflection_v1alpha =
        reflection().build_v1alpha().map_err(|e| ServeError::Task(format!("reflection service (v1alpha): {e}")))?;

    // One message limit for both directions and both services, the one the clients use.
    let limit = tsweep_proto::limits::MAX_MESSAGE_BYTES;
    let sweep_service = InterceptedService::new(
        SweepServiceServer::new(SweepServiceImpl::new(shared.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
        roles.guard(Role::User),
    );
    let worker_service = InterceptedService::new(
        WorkerServiceServer::new(WorkerServiceImpl::new(shared.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
        roles.guard(Role::Worker),
    );

    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    let tls_enabled = tls.is_some();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(ServeError::Tls)?;
    }
    let router = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(sweep_service)
        .add_service(worker_service);
    let stop = cancel.clone();
    // The builder's tcp_nodelay does not reach sockets from our own listener: without it
    // small replies wait out delayed ACKs (40 ms per acquire at low concurrency).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await }));

    let mut background = vec![
        tokio::spawn(loops::connect(shared.clone(), store_options)),
        tokio::spawn(loops::readiness(shared.clone(), health_reporter)),
        tokio::spawn(loops::plane(shared.clone())),
        tokio::spawn(loops::reaper(shared.clone())),
        tokio::spawn(loops::repair(shared.clone())),
        tokio::spawn(loops::finals(shared.clone())),
        tokio::spawn(loops::gauges(shared.clone())),
        tokio::spawn(metrics_consumer::run(shared.clone())),
    ];
    for (file, bearer) in roles.files {
        background.push(tokio::spawn(auth::follow_token_file(file, bearer, token_reload, cancel.clone())));
    }

    info!(
        grpc = %grpc_addr,
        metrics = ?metrics_addr,
        tls = tls_enabled,
        user_auth,
        worker_auth,
        shared_token = roles.shared,
        lease_ttl_ms = shared.config.lease_ttl_ms,
        redis_url = %loops::redact(&shared.config.redis_url),
        version = %tsweep_proto::version_line("tsweep"),
        "coordinator listening"
    );
    Ok(RunningCoordinator { grpc_addr, metrics_addr, tls: tls_enabled, cancel, server, background, metrics })
}

async fn load_tls(config: &ServiceConfig) -> Result<Option<ServerTlsConfig>, ServeError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let read = |path: PathBuf| async move {
        tokio::fs::read(&path).await.map_err(|source| ServeError::TlsFile { path, source })
    };
    let cert = read(cert.clone()).await?;
    let key = read(key.clone()).await?;
    Ok(Some(ServerTlsConfig::new().identity(Identity::from_pem(cert, key))))
}
