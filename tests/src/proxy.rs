//! A `WorkerService` proxy between worker agents and the coordinator that delivers some
//! calls twice (the network or a retrying client repeating an RPC whose reply was lost):
//! heartbeats and reports are sent to the coordinator twice, at the same time, and the
//! worker gets the first answer. Every one of them must be safe to repeat (fencing:
//! `DUPLICATE`, never a second accepted completion). Acquire is forwarded once: a repeated
//! acquire leases a task nobody runs (it expires and is re-queued as a lost worker).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tsweep_proto::v1::worker_service_client::WorkerServiceClient;
use tsweep_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use tsweep_proto::v1::{
    AcquireTaskRequest, AcquireTaskResponse, CompleteTaskRequest, FailTaskRequest, HeartbeatRequest, HeartbeatResponse,
    RegisterWorkerRequest, RegisterWorkerResponse, ReportResponse,
};

/// Counts of what the proxy did.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub forwarded: AtomicU64,
    pub duplicated: AtomicU64,
}

#[derive(Clone)]
struct Duplicator {
    upstream: WorkerServiceClient<Channel>,
    probability: f64,
    rng: Arc<Mutex<ChaCha8Rng>>,
    stats: Arc<ProxyStats>,
}

impl Duplicator {
    fn twice(&self) -> bool {
        let draw = self.rng.lock().map(|mut rng| rng.random::<f64>()).unwrap_or(1.0);
        draw < self.probability
    }

    /// Sends `request` once, or twice at once (returning the first answer).
    async fn deliver<Req, Resp, F, Fut>(&self, request: Req, call: F) -> Result<Response<Resp>, Status>
    where
        Req: Clone,
        F: Fn(WorkerServiceClient<Channel>, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        if !self.twice() {
            return call(self.upstream.clone(), request).await;
        }
        self.stats.duplicated.fetch_add(1, Ordering::Relaxed);
        let (first, _second) =
            tokio::join!(call(self.upstream.clone(), request.clone()), call(self.upstream.clone(), request));
        first
    }
}

#[tonic::async_trait]
impl WorkerService for Duplicator {
    async fn register_worker(
        &self,
        request: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerResponse>, Status> {
        self.upstream.clone().register_worker(request.into_inner()).await
    }

    async fn acquire_task(
        &self,
        request: Request<AcquireTaskRequest>,
    ) -> Result<Response<AcquireTaskResponse>, Status> {
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        self.upstream.clone().acquire_task(request.into_inner()).await
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        self.deliver(request.into_inner(), |mut c, r| async move { c.heartbeat(r).await }).await
    }

    async fn complete_task(&self, request: Request<CompleteTaskRequest>) -> Result<Response<ReportResponse>, Status> {
        self.deliver(request.into_inner(), |mut c, r| async move { c.complete_task(r).await }).await
    }

    async fn fail_task(&self, request: Request<FailTaskRequest>) -> Result<Response<ReportResponse>, Status> {
        self.deliver(request.into_inner(), |mut c, r| async move { c.fail_task(r).await }).await
    }
}

/// A running proxy; stops when dropped.
pub struct DuplicatingProxy {
    pub addr: SocketAddr,
    pub stats: Arc<ProxyStats>,
    server: JoinHandle<()>,
}

impl DuplicatingProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port`),
    /// delivering each heartbeat and report twice with `probability` (seeded).
    pub async fn start(upstream: &str, probability: f64, seed: u64) -> Result<DuplicatingProxy> {
        let channel = Endpoint::from_shared(upstream.to_string())
            .context("proxy upstream url")?
            .connect_timeout(std::time::Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        let stats = Arc::new(ProxyStats::default());
        let service = Duplicator {
            upstream: WorkerServiceClient::new(channel),
            probability,
            rng: Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed))),
            stats: stats.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the proxy")?;
        let addr = listener.local_addr()?;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(WorkerServiceServer::new(service))
                .serve_with_incoming(incoming)
                .await;
        });
        Ok(DuplicatingProxy { addr, stats, server })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for DuplicatingProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}
