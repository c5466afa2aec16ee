//! The coordinator server over real gRPC, on a real redis-server (started by PID on a free
//! loopback port in a temp dir, killed at the end): protocol version check, bearer-token
//! auth, lease fencing (STALE / LEASE_LOST), sweep file errors, health (liveness vs
//! readiness), the metrics endpoint and stream consumer, and Redis going away and back.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tsweep_coordinator::config::{ConfigError, ServiceConfig};
use tsweep_coordinator::redis_server::RedisServer;
use tsweep_coordinator::server::{self, RunningCoordinator, ServeError, READINESS_SERVICE};
use tsweep_coordinator::store::{Store, StoreOptions};
use tsweep_proto::auth::{TokenInterceptor, WorkerRefusal};
use tsweep_proto::v1::sweep_service_client::SweepServiceClient;
use tsweep_proto::v1::worker_service_client::WorkerServiceClient;
use tsweep_proto::v1::*;
use tsweep_proto::PROTOCOL_VERSION;

mod support;

type Interceptor = tonic::service::interceptor::InterceptedService<Channel, TokenInterceptor>;

/// The worker service with the secret each worker id registered with.
struct Workers {
    client: WorkerServiceClient<Interceptor>,
    secrets: HashMap<String, String>,
}

impl Workers {
    fn secret(&self, worker_id: &str) -> String {
        self.secrets.get(worker_id).cloned().unwrap_or_default()
    }
}

fn sweep_file() -> String {
    support::sweep_file("svc", &[0.01, 0.1, 0.2])
}

struct Harness {
    redis: RedisServer,
    coordinator: Option<RunningCoordinator>,
    channel: Channel,
}

fn test_config(redis_url: &str, token: Option<&str>) -> ServiceConfig {
    ServiceConfig {
        listen: "127.0.0.1:0".into(),
        metrics_listen: "127.0.0.1:0".into(),
        redis_url: redis_url.into(),
        lease_ttl_ms: 1_500,
        reaper_interval_ms: 100,
        finals_interval_ms: 200,
        gauges_interval_ms: 100,
        acquire_retry_after_ms: 50,
        auth_token: token.map(String::from),
        ..ServiceConfig::default()
    }
}

impl Harness {
    async fn start(token: Option<&str>) -> Harness {
        let redis = tokio::task::spawn_blocking(RedisServer::start_temp).await.unwrap().unwrap();
        let coordinator = server::start(test_config(&redis.url(), token)).await.unwrap();
        let channel = Endpoint::from_shared(coordinator.url()).unwrap().connect().await.unwrap();
        let harness = Harness { redis, coordinator: Some(coordinator), channel };
        harness.wait_ready(ServingStatus::Serving).await;
        harness
    }

    fn coordinator(&self) -> &RunningCoordinator {
        self.coordinator.as_ref().unwrap()
    }

    fn sweeps(&self, token: Option<&str>) -> SweepServiceClient<Interceptor> {
        SweepServiceClient::with_interceptor(
            self.channel.clone(),
            TokenInterceptor::inline(token.map(String::from)).unwrap(),
        )
    }

    fn workers(&self, token: Option<&str>) -> Workers {
        let client = WorkerServiceClient::with_interceptor(
            self.channel.clone(),
            TokenInterceptor::inline(token.map(String::from)).unwrap(),
        );
        Workers { client, secrets: HashMap::new() }
    }

    async fn health(&self, service: &str) -> ServingStatus {
        let mut health = HealthClient::new(self.channel.clone());
        let reply = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        ServingStatus::try_from(reply.status).unwrap()
    }

    async fn wait_ready(&self, want: ServingStatus) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.health(READINESS_SERVICE).await != want {
            assert!(Instant::now() < deadline, "readiness never became {want:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(coordinator) = self.coordinator.take() {
            coordinator.shutdown().await.unwrap();
        }
        self.redis.kill();
    }
}

async fn submit(sweeps: &mut SweepServiceClient<Interceptor>) -> SubmitSweepResponse {
    sweeps
        .submit_sweep(SubmitSweepRequest {
            file_text: sweep_file(),
            file_name: "svc.toml".into(),
            base_dir: "/data".into(),
            allow_huge: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn register(workers: &mut Workers, worker_id: &str) -> RegisterWorkerResponse {
    register_with_gpus(workers, worker_id, 0).await
}

async fn register_with_gpus(workers: &mut Workers, worker_id: &str, gpus: u32) -> RegisterWorkerResponse {
    let response = workers
        .client
        .register_worker(RegisterWorkerRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: worker_id.into(),
            hostname: "test".into(),
            slots: 1,
            gpus,
            version: "test".into(),
            worker_secret: workers.secret(worker_id),
        })
        .await
        .unwrap()
        .into_inner();
    workers.secrets.insert(worker_id.to_string(), response.worker_secret.clone());
    response
}

/// Runs a worker call with the worker's secret; a worker whose registration lapsed (a
/// test that keeps it silent for longer than three lease TTLs) registers again and
/// repeats it, as the agent does.
async fn call<T, F, Fut>(workers: &mut Workers, worker_id: &str, mut send: F) -> T
where
    F: FnMut(WorkerServiceClient<Interceptor>, String) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match send(workers.client.clone(), workers.secret(worker_id)).await {
        Ok(reply) => reply.into_inner(),
        Err(status) if WorkerRefusal::of(&status) == Some(WorkerRefusal::Unregistered) => {
            register(workers, worker_id).await;
            send(workers.client.clone(), workers.secret(worker_id)).await.unwrap().into_inner()
        }
        Err(status) => panic!("{worker_id}: {status:?}"),
    }
}

async fn acquire(workers: &mut Workers, worker_id: &str) -> Option<TaskAssignment> {
    let id = worker_id.to_string();
    call(workers, worker_id, |mut client, worker_secret| {
        let request = AcquireTaskRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: id.clone(),
            free_gpus: 0,
            slot: 0,
            worker_secret,
        };
        async move { client.acquire_task(request).await }
    })
    .await
    .task
}

fn lease_of(task: &TaskAssignment) -> LeaseRef {
    LeaseRef { sweep: task.sweep.clone(), task_id: task.task_id.clone(), attempt: task.attempt }
}

async fn complete(workers: &mut Workers, worker_id: &str, lease: LeaseRef) -> ReportOutcome {
    let id = worker_id.to_string();
    let reply = call(workers, worker_id, |mut client, worker_secret| {
        let request = CompleteTaskRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: id.clone(),
            lease: Some(lease.clone()),
            result: Some(TaskResult {
                metric: tsweep_proto::v1::Metric::Top1.into(),
                val_score: Some(0.5),
                ..Default::default()
            }),
            worker_secret,
        };
        async move { client.complete_task(request).await }
    })
    .await;
    ReportOutcome::try_from(reply.outcome).unwrap()
}

async fn heartbeat(workers: &mut Workers, worker_id: &str, lease: LeaseRef) -> Vec<StopOrder> {
    let id = worker_id.to_string();
    call(workers, worker_id, |mut client, worker_secret| {
        let request = HeartbeatRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: id.clone(),
            leases: vec![HeldLease { lease: Some(lease.clone()), running: true, ..Default::default() }],
            worker_secret,
        };
        async move { client.heartbeat(request).await }
    })
    .await
    .stop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_mismatch_is_refused_naming_both_versions() {
    let harness = Harness::start(None).await;
    let mut workers = harness.workers(None);
    let wrong = PROTOCOL_VERSION + 41;
    let status = workers
        .client
        .register_worker(RegisterWorkerRequest { protocol_version: wrong, worker_id: "w".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains(&wrong.to_string()), "{}", status.message());
    assert!(status.message().contains(&PROTOCOL_VERSION.to_string()), "{}", status.message());
    let status = workers
        .client
        .acquire_task(AcquireTaskRequest { protocol_version: wrong, worker_id: "w".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let registered = register(&mut workers, "w").await;
    assert_eq!(registered.lease_ttl_ms, 1_500);
    assert_eq!(registered.heartbeat_interval_ms, 500);
    // The pattern's "{sweep}" is replaced by the sweep name; the braces around it stay as
    // the Redis hash tag.
    assert_eq!(registered.metrics_stream_pattern.replace("{sweep}", "svc"), "tsweep:{svc}:metrics");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_required_on_both_services_but_not_on_health() {
    let harness = Harness::start(Some("s3cret")).await;
    for token in [None, Some("wrong")] {
        let status = harness.sweeps(token).list_sweeps(ListSweepsRequest {}).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "sweeps with {token:?}");
        let status = harness
            .workers(token)
            .client
            .register_worker(RegisterWorkerRequest {
                protocol_version: PROTOCOL_VERSION,
                worker_id: "w".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "workers with {token:?}");
    }
    harness.sweeps(Some("s3cret")).list_sweeps(ListSweepsRequest {}).await.unwrap();
    register(&mut harness.workers(Some("s3cret")), "w").await;
    assert_eq!(harness.health("").await, ServingStatus::Serving);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cannot_complete_or_renew_a_lease_it_does_not_hold() {
    let harness = Harness::start(None).await;
    let mut sweeps = harness.sweeps(None);
    let submitted = submit(&mut sweeps).await;
    assert_eq!(submitted.sweep, "svc");
    assert_eq!(submitted.cells_added, 3);
    let mut workers = harness.workers(None);
    register(&mut workers, "a").await;
    register(&mut workers, "b").await;

    // b reports on a's lease: refused, counted; a's own report is accepted once.
    let task = acquire(&mut workers, "a").await.expect("a task is pending");
    assert_eq!(complete(&mut workers, "b", lease_of(&task)).await, ReportOutcome::Stale);
    let stop = heartbeat(&mut workers, "b", lease_of(&task)).await;
    assert_eq!(stop.len(), 1);
    assert_eq!(stop[0].reason, StopReason::LeaseLost as i32);
    assert!(heartbeat(&mut workers, "a", lease_of(&task)).await.is_empty());
    assert_eq!(complete(&mut workers, "a", lease_of(&task)).await, ReportOutcome::Accepted);
    assert_eq!(complete(&mut workers, "a", lease_of(&task)).await, ReportOutcome::Duplicate);

    // a goes silent past its lease: the reaper takes it back, b gets attempt 2, and a's
    // late reports on attempt 1 are stale.
    let first = acquire(&mut workers, "a").await.expect("a second task");
    let deadline = Instant::now() + Duration::from_secs(15);
    let second = loop {
        if let Some(task) = acquire(&mut workers, "b").await {
            if task.task_id == first.task_id {
                break task;
            }
            // Another pending cell: finish it and keep waiting for the reaped one.
            assert_eq!(complete(&mut workers, "b", lease_of(&task)).await, ReportOutcome::Accepted);
        }
        assert!(Instant::now() < deadline, "the expired lease was never reaped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(second.attempt, first.attempt + 1);
    let stop = heartbeat(&mut workers, "a", lease_of(&first)).await;
    assert_eq!(stop.len(), 1, "{stop:?}");
    assert_eq!(stop[0].reason, StopReason::LeaseLost as i32);
    assert_eq!(complete(&mut workers, "a", lease_of(&first)).await, ReportOutcome::Stale);
    let worker_secret = workers.secret("a");
    let fail = workers
        .client
        .fail_task(FailTaskRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "a".into(),
            lease: Some(lease_of(&first)),
            class: FailureClass::Retryable as i32,
            message: "late".into(),
            worker_secret,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fail.outcome, ReportOutcome::Stale as i32);
    assert_eq!(complete(&mut workers, "b", lease_of(&second)).await, ReportOutcome::Accepted);

    let summary = sweeps.get_sweep(GetSweepRequest { sweep: "svc".into() }).await.unwrap().into_inner();
    let counts = summary.counts.unwrap();
    assert_eq!(counts.succeeded, 3, "{counts:?}");
    assert!(summary.stale_reports >= 3, "{summary:?}");
    assert!(summary.lease_expiries >= 1, "{summary:?}");
    let tasks = sweeps
        .list_tasks(ListTasksRequest {
            sweep: "svc".into(),
            state: tsweep_proto::v1::TaskState::Succeeded.into(),
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tasks.tasks.len(), 2);
    assert!(!tasks.next_page_token.is_empty());
    assert!(tasks.tasks.iter().all(|t| t.accepted_completions == 1));

    // The Prometheus endpoint shows the stale reports and the sweep's gauges.
    let text = scrape(harness.coordinator().metrics_addr.unwrap()).await;
    assert!(text.contains("tsweep_stale_reports_total{kind=\"complete\"}"), "{text}");
    assert!(text.contains("tsweep_queue_depth"), "{text}");
    assert!(text.contains("tsweep_acquire_latency_seconds_count"), "{text}");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sweep_file_is_invalid_argument_with_its_message_and_writes_nothing() {
    let harness = Harness::start(None).await;
    let mut sweeps = harness.sweeps(None);
    let bad = sweep_file().replace("[regimes.scratch]", "[regimes.scratch]\nlearning_rate = 3");
    let expected = tsweep_coordinator::sweepfile::parse_and_expand(&bad, "bad.toml", Path::new("/data"), false)
        .unwrap_err()
        .to_string();
    let status = sweeps
        .submit_sweep(SubmitSweepRequest {
            file_text: bad,
            file_name: "bad.toml".into(),
            base_dir: "/data".into(),
            allow_huge: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), expected);
    assert!(sweeps.list_sweeps(ListSweepsRequest {}).await.unwrap().into_inner().sweeps.is_empty());
    let unknown = sweeps.get_sweep(GetSweepRequest { sweep: "nope".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let bad_state =
        sweeps.list_tasks(ListTasksRequest { sweep: "svc".into(), state: 99, ..Default::default() }).await.unwrap_err();
    assert_eq!(bad_state.code(), Code::InvalidArgument);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_until_done_and_metrics_entries_are_fenced() {
    let harness = Harness::start(None).await;
    let mut sweeps = harness.sweeps(None);
    submit(&mut sweeps).await;
    let mut workers = harness.workers(None);
    register(&mut workers, "a").await;
    let mut stream =
        sweeps.watch_sweep(WatchSweepRequest { sweep: "svc".into(), interval_ms: 200 }).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.status(), tsweep_proto::v1::SweepStatus::Active);

    // Metrics of the current attempt update progress; of another attempt are stale.
    let task = acquire(&mut workers, "a").await.unwrap();
    let client = redis::Client::open(harness.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let stream_key = format!("tsweep:{{{}}}:metrics", task.sweep);
    for (attempt, step) in [(task.attempt, 7u64), (task.attempt + 5, 9)] {
        let _: String = redis::cmd("XADD")
            .arg(&stream_key)
            .arg("*")
            .arg(&[
                ("task_id", task.task_id.clone()),
                ("attempt", attempt.to_string()),
                ("step", step.to_string()),
                ("total_steps", "10".to_string()),
                ("loss", "0.25".to_string()),
                ("lr", "0.01".to_string()),
                ("images_per_s", "100".to_string()),
                ("val_score", "0.6".to_string()),
                ("ts_ms", "1".to_string()),
            ])
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // generous: the consumer refreshes every 2 s, but a loaded CI machine can stall it
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let progress: Option<String> = redis::cmd("HGET")
            .arg(format!("{stream_key}:progress"))
            .arg(&task.task_id)
            .query_async(&mut conn)
            .await
            .unwrap();
        let summary = sweeps.get_sweep(GetSweepRequest { sweep: "svc".into() }).await.unwrap().into_inner();
        if let Some(progress) = progress {
            if summary.stale_reports >= 1 {
                let progress: serde_json::Value = serde_json::from_str(&progress).unwrap();
                assert_eq!(progress["step"], 7, "{progress}");
                assert_eq!(progress["attempt"], task.attempt, "{progress}");
                break;
            }
        }
        assert!(Instant::now() < deadline, "metrics entries were not consumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pending: (u64, Option<String>, Option<String>, redis::Value) =
        redis::cmd("XPENDING").arg(&stream_key).arg("tsweep-coordinator").query_async(&mut conn).await.unwrap();
    assert_eq!(pending.0, 0, "every consumed entry is acked");

    complete(&mut workers, "a", lease_of(&task)).await;
    // A worker runs everything else, the refit scheduled after the grid included.
    let worker = tokio::spawn(async move {
        loop {
            match acquire(&mut workers, "a").await {
                Some(task) => {
                    complete(&mut workers, "a", lease_of(&task)).await;
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let last = tokio::time::timeout(Duration::from_secs(20), async {
        let mut last = None;
        while let Some(summary) = stream.message().await.unwrap() {
            last = Some(summary);
        }
        last
    })
    .await
    .expect("the watch stream ends when the sweep is done")
    .unwrap();
    worker.abort();
    assert_eq!(last.status(), tsweep_proto::v1::SweepStatus::Done);
    let counts = last.counts.unwrap();
    assert!(counts.succeeded >= 3, "{counts:?}");
    assert_eq!(counts.succeeded, counts.total, "{counts:?}");
    assert_eq!(last.best.len(), 1, "one (model, dataset, regime) group: {:?}", last.best);
    // ListSweeps (and the gauges loop, through the same summary) stays O(1) per sweep: the
    // counts and status, never the best-score board, which grows with the grid.
    let listed = sweeps.list_sweeps(ListSweepsRequest {}).await.unwrap().into_inner().sweeps;
    let svc = listed.iter().find(|s| s.sweep == "svc").expect("listed");
    assert_eq!((svc.status().name(), svc.counts.unwrap().succeeded), ("done", counts.succeeded));
    assert!(svc.best.is_empty() && svc.running.is_empty(), "{svc:?}");
    harness.stop().await;
}

/// The real `tsweep` binary against the harness's coordinator.
fn tsweep_cli(harness: &Harness, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tsweep"))
        .args(["--coordinator", &harness.coordinator().url()])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stdout_of(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn get_summary(sweeps: &mut SweepServiceClient<Interceptor>, sweep: &str) -> SweepSummary {
    sweeps.get_sweep(GetSweepRequest { sweep: sweep.into() }).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_why_pending_cells_wait_for_a_worker_that_can_take_them() {
    let harness = Harness::start(None).await;
    let mut sweeps = harness.sweeps(None);
    let file_text = support::sweep_file("gpu", &[0.01, 0.1, 0.2]).replace("gpus = 0", "gpus = 1");
    sweeps
        .submit_sweep(SubmitSweepRequest {
            file_text,
            file_name: "gpu.toml".into(),
            base_dir: "/data".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let summary = get_summary(&mut sweeps, "gpu").await;
    assert_eq!(summary.workers, 0);
    assert_eq!(
        summary.blocked,
        vec![PendingBlock { gpus: 1, cells: 3, workers: 0, min_worker_gpus: 0, max_worker_gpus: 0 }]
    );
    let text = stdout_of(&tsweep_cli(&harness, &["status", "gpu"]));
    assert!(text.contains("waiting: 3 pending cells need 1 GPU; no worker is registered"), "{text}");

    let mut workers = harness.workers(None);
    register(&mut workers, "cpu-a").await;
    register(&mut workers, "cpu-b").await;
    let summary = get_summary(&mut sweeps, "gpu").await;
    assert_eq!(summary.workers, 2);
    assert_eq!(
        summary.blocked,
        vec![PendingBlock { gpus: 1, cells: 3, workers: 2, min_worker_gpus: 0, max_worker_gpus: 0 }]
    );
    let text = stdout_of(&tsweep_cli(&harness, &["status", "gpu"]));
    assert!(text.contains("waiting: 3 pending cells need 1 GPU; the 2 registered workers have 0"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&stdout_of(&tsweep_cli(&harness, &["status", "gpu", "--format", "json"]))).unwrap();
    assert_eq!(json["blocked"][0]["reason"], "3 pending cells need 1 GPU; the 2 registered workers have 0", "{json}");
    // The CPU workers are refused the cells the summary says they cannot take.
    assert!(acquire(&mut workers, "cpu-a").await.is_none());

    // A worker with a GPU can take them: nothing is reported as waiting any more.
    register_with_gpus(&mut workers, "gpu-a", 1).await;
    let summary = get_summary(&mut sweeps, "gpu").await;
    assert_eq!(summary.workers, 3);
    assert!(summary.blocked.is_empty(), "{:?}", summary.blocked);
    let text = stdout_of(&tsweep_cli(&harness, &["status", "gpu"]));
    assert!(!text.contains("waiting:"), "{text}");
    harness.stop().await;
}

/// Appends one metrics entry for `task`'s attempt, as a worker does.
async fn add_metrics(
    conn: &mut redis::aio::MultiplexedConnection,
    task: &TaskAssignment,
    step: u64,
    loss: f64,
    ts_ms: i64,
) {
    let _: String = redis::cmd("XADD")
        .arg(format!("tsweep:{{{}}}:metrics", task.sweep))
        .arg("*")
        .arg(&[
            ("task_id", task.task_id.clone()),
            ("attempt", task.attempt.to_string()),
            ("step", step.to_string()),
            ("total_steps", "10".to_string()),
            ("loss", loss.to_string()),
            ("lr", "0.01".to_string()),
            ("images_per_s", "250".to_string()),
            ("val_score", (0.05 * step as f64).to_string()),
            ("ts_ms", ts_ms.to_string()),
        ])
        .query_async(conn)
        .await
        .unwrap();
}

/// Polls GetSweep until its running task shows `step`; that summary.
async fn wait_for_step(sweeps: &mut SweepServiceClient<Interceptor>, step: u64) -> SweepSummary {
    // generous: the consumer refreshes every 2 s, but a loaded CI machine can stall it
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let summary = get_summary(sweeps, "svc").await;
        if summary.running.first().and_then(|r| r.progress).and_then(|p| p.latest).is_some_and(|p| p.step == step) {
            return summary;
        }
        assert!(Instant::now() < deadline, "step {step} never showed: {:?}", summary.running);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_tasks_show_moving_step_and_loss_and_their_curve_is_kept_until_delete() {
    let harness = Harness::start(None).await;
    let mut sweeps = harness.sweeps(None);
    submit(&mut sweeps).await;
    let mut workers = harness.workers(None);
    register(&mut workers, "w1").await;
    let task = acquire(&mut workers, "w1").await.unwrap();
    let summary = get_summary(&mut sweeps, "svc").await;
    assert_eq!(summary.running.len(), 1, "{:?}", summary.running);
    let running = summary.running[0].task.clone().unwrap();
    assert_eq!(
        (running.task_id.as_str(), running.worker.as_str(), running.state().name()),
        (task.task_id.as_str(), "w1", "leased")
    );
    assert_eq!(summary.running[0].progress, None, "nothing streamed yet");

    let client = redis::Client::open(harness.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    add_metrics(&mut conn, &task, 2, 1.5, 10_000).await;
    let summary = wait_for_step(&mut sweeps, 2).await;
    let progress = summary.running[0].progress.unwrap();
    let latest = progress.latest.unwrap();
    assert_eq!((latest.loss, latest.total_steps, progress.eta_s), (Some(1.5), 10, None), "{progress:?}");
    let table = stdout_of(&tsweep_cli(&harness, &["status", "svc"]));
    assert!(table.contains("resnet18/shapes/scratch lr="), "{table}");
    assert!(table.contains("2/10") && table.contains("1.5000") && table.contains("w1"), "{table}");

    // Three more steps in 3 s of the worker's clock: 1 step/s, 5 steps left.
    add_metrics(&mut conn, &task, 5, 0.75, 13_000).await;
    let summary = wait_for_step(&mut sweeps, 5).await;
    let progress = summary.running[0].progress.unwrap();
    assert_eq!(progress.latest.unwrap().loss, Some(0.75));
    assert_eq!(progress.best_val, Some(0.25));
    assert_eq!(progress.steps_per_s, Some(1.0));
    assert_eq!(progress.eta_s, Some(5.0));
    let table = stdout_of(&tsweep_cli(&harness, &["status", "svc"]));
    assert!(
        table.contains("5/10") && table.contains("0.7500") && table.contains("250.0") && table.contains("5s"),
        "{table}"
    );
    assert!(!table.contains("2/10"), "{table}");

    // The curve keeps both points, oldest first, as CSV and JSON.
    let csv = stdout_of(&tsweep_cli(&harness, &["curve", "svc", &task.task_id]));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "attempt,step,total_steps,loss,lr,images_per_s,val_score,ts_ms", "{csv}");
    assert_eq!(
        &lines[1..],
        [
            format!("{},2,10,1.5,0.01,250,0.1,10000", task.attempt),
            format!("{},5,10,0.75,0.01,250,0.25,13000", task.attempt)
        ],
        "{csv}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout_of(&tsweep_cli(&harness, &["curve", "svc", &task.task_id, "--format", "json"])))
            .unwrap();
    assert_eq!(json["points"].as_array().unwrap().len(), 2, "{json}");
    assert_eq!(json["points"][1]["loss"], 0.75, "{json}");
    let unknown = tsweep_cli(&harness, &["curve", "svc", "no-such-task"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no task no-such-task"), "{unknown:?}");

    // Once the task ends it leaves the running table; delete removes progress and curves.
    complete(&mut workers, "w1", lease_of(&task)).await;
    assert!(get_summary(&mut sweeps, "svc").await.running.is_empty());
    let store = Store::connect(&harness.redis.url(), StoreOptions::default()).await.unwrap();
    let curve_key = format!("tsweep:{{svc}}:curve:{}", task.task_id);
    assert!(!support::scan(&store, &curve_key).await.is_empty());
    sweeps.delete_sweep(DeleteSweepRequest { sweep: "svc".into(), force: true, budget_ms: 0 }).await.unwrap();
    let left = support::scan(&store, "tsweep:{svc}:*").await;
    assert!(left.is_empty(), "{left:?}");
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_away_means_unavailable_and_not_ready_then_recovery() {
    let mut harness = Harness::start(None).await;
    let mut sweeps = harness.sweeps(None);
    submit(&mut sweeps).await;
    // appendfsync everysec: give the AOF its second before the kill.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    harness.redis.kill();
    harness.wait_ready(ServingStatus::NotServing).await;
    assert_eq!(harness.health("").await, ServingStatus::Serving, "liveness must not depend on redis");
    let status = sweeps.get_sweep(GetSweepRequest { sweep: "svc".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = harness
        .workers(None)
        .client
        .acquire_task(AcquireTaskRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "w".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    tokio::task::block_in_place(|| harness.redis.restart()).unwrap();
    harness.wait_ready(ServingStatus::Serving).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match sweeps.get_sweep(GetSweepRequest { sweep: "svc".into() }).await {
            Ok(summary) => {
                assert_eq!(summary.into_inner().counts.unwrap().total, 3, "the sweep survived in the AOF");
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(Instant::now() < deadline, "never recovered");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_started_before_redis_serves_health_and_then_becomes_ready() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let coordinator = server::start(test_config(&format!("redis://127.0.0.1:{port}/"), None)).await.unwrap();
    let channel = Endpoint::from_shared(coordinator.url()).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    let check = |service: &str| HealthCheckRequest { service: service.into() };
    assert_eq!(health.check(check("")).await.unwrap().into_inner().status, ServingStatus::Serving as i32);
    assert_eq!(
        health.check(check(READINESS_SERVICE)).await.unwrap().into_inner().status,
        ServingStatus::NotServing as i32
    );
    let status = SweepServiceClient::new(channel.clone()).list_sweeps(ListSweepsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let mut redis = tokio::task::block_in_place(|| RedisServer::start_in(dir.path(), port)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while health.check(check(READINESS_SERVICE)).await.unwrap().into_inner().status != ServingStatus::Serving as i32 {
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    SweepServiceClient::new(channel).list_sweeps(ListSweepsRequest {}).await.unwrap();
    coordinator.shutdown().await.unwrap();
    redis.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_listen_without_token_is_refused() {
    let config =
        ServiceConfig { listen: "0.0.0.0:0".into(), metrics_listen: String::new(), ..ServiceConfig::default() };
    let error = server::start(config.clone()).await.unwrap_err();
    assert!(matches!(error, ServeError::Config(ConfigError::InsecureListen { .. })), "{error}");
    assert!(error.to_string().contains("--insecure"), "{error}");
    let with_token = ServiceConfig { auth_token: Some("t".into()), ..config };
    let running = server::start(with_token).await.unwrap();
    running.shutdown().await.unwrap();
}

/// GET /metrics over plain HTTP/1.1.
async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Gauges refresh every 100 ms in these tests.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}
