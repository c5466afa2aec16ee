//! Big operations and bounded input, end to end: the real `tsweep serve` binary on a real
//! redis-server (each on a free loopback port, killed at the end), driven by the real CLI
//! binary and by gRPC clients.
//! - A submission killed midway leaves a sweep marked `submitting` that leases nothing;
//!   submitting the file again finishes it.
//! - Redis at `maxmemory`: the submit fails with one clear line, readiness is NOT_SERVING,
//!   and the sweep stays `submitting` until it is submitted again.
//! - Cancel, retry and delete run in batches, stopped ones show where they are and the
//!   CLI finishes them; other sweeps answer all along.
//! - Every string and message from clients has a bound; out-of-range scores are refused
//!   and fail their attempt; a resubmission with other settings lists them and `--update`
//!   applies them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tsweep_coordinator::redis_server::RedisServer;
use tsweep_coordinator::server::READINESS_SERVICE;
use tsweep_coordinator::store::{Budget, Store, StoreOptions};
use tsweep_coordinator::sweepfile;
use tsweep_proto::v1::sweep_service_client::SweepServiceClient;
use tsweep_proto::v1::worker_service_client::WorkerServiceClient;
use tsweep_proto::v1::*;
use tsweep_proto::PROTOCOL_VERSION;

mod support;

const TSWEEP: &str = env!("CARGO_BIN_EXE_tsweep");

/// `models` × 1 dataset × `lrs` × `wds` scratch grid points of sweep `name` (fake executor
/// settings, no GPU), with `steps` and `max_attempts` as given.
fn grid_file(name: &str, models: usize, lrs: usize, wds: usize, steps: u32, max_attempts: u32) -> String {
    let mut text = format!(
        "name = \"{name}\"\nallow_random_init = true\nmax_attempts = {max_attempts}\n[defaults]\nsteps = {steps}\nbatch_size = 8\ngpus = 0\n"
    );
    for m in 0..models {
        text.push_str(&format!(
            "[[models]]\nname = \"m{m}\"\nsource = \"builtin\"\narch = \"resnet18\"\nimage_size = 32\n"
        ));
    }
    text.push_str(
        "[[datasets]]\nname = \"d\"\nformat = \"imagefolder\"\npath = \"/data/d\"\nval = { kind = \"official\" }\n",
    );
    text.push_str(&format!(
        "[regimes.scratch]\nlr = {{ logspace = [-5, -1, {lrs}] }}\nweight_decay = {{ logspace = [-6, -2, {wds}] }}\n"
    ));
    text
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `tsweep serve` on a fixed loopback port (so a restart comes back at the same address).
struct Coordinator {
    child: Option<Child>,
    port: u16,
    redis_url: String,
    log: PathBuf,
}

impl Coordinator {
    fn start(redis_url: &str, dir: &Path) -> Coordinator {
        let mut coordinator = Coordinator {
            child: None,
            port: free_port(),
            redis_url: redis_url.to_string(),
            log: dir.join("serve.log"),
        };
        coordinator.spawn();
        coordinator
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(TSWEEP)
            .arg("serve")
            .env("TSWEEP__LISTEN", format!("127.0.0.1:{}", self.port))
            .env("TSWEEP__METRICS_LISTEN", "")
            .env("TSWEEP__REDIS_URL", &self.redis_url)
            .env("TSWEEP__LEASE_TTL_MS", "30000")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn channel(&self) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(channel) = Endpoint::from_shared(self.url()).unwrap().connect().await {
                return channel;
            }
            assert!(Instant::now() < deadline, "coordinator never listened:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// None while the answer is not a health reply (a connection reset by a process that
    /// is still starting, or stopping, on this port).
    async fn readiness(&self) -> Option<ServingStatus> {
        let mut health = HealthClient::new(self.channel().await);
        let reply = health.check(HealthCheckRequest { service: READINESS_SERVICE.into() }).await.ok()?;
        ServingStatus::try_from(reply.into_inner().status).ok()
    }

    async fn wait_readiness(&self, want: ServingStatus) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.readiness().await != Some(want) {
            assert!(Instant::now() < deadline, "readiness never became {want:?}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn sweeps(&self) -> SweepServiceClient<Channel> {
        SweepServiceClient::new(self.channel().await)
            .max_decoding_message_size(tsweep_proto::limits::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    async fn workers(&self) -> WorkerServiceClient<Channel> {
        WorkerServiceClient::new(self.channel().await).max_encoding_message_size(64 * 1024 * 1024)
    }

    /// The CLI pointed at this coordinator, run in `dir`.
    fn cli(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(TSWEEP)
            .current_dir(dir)
            .args(["--coordinator", &self.url()])
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }

    fn cli_spawn(&self, dir: &Path, args: &[&str]) -> Child {
        Command::new(TSWEEP)
            .current_dir(dir)
            .args(["--coordinator", &self.url()])
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Setup {
    dir: tempfile::TempDir,
    redis: RedisServer,
    coordinator: Coordinator,
    /// Direct access to Redis for what a test checks or arranges.
    store: Store,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let redis = tokio::task::spawn_blocking(RedisServer::start_temp).await.unwrap().expect("redis-server starts");
    let coordinator = Coordinator::start(&redis.url(), dir.path());
    coordinator.wait_readiness(ServingStatus::Serving).await;
    let store = Store::connect(&redis.url(), StoreOptions::default()).await.unwrap();
    Setup { dir, redis, coordinator, store }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Exactly one line `error: ...` on stderr with every needle, and this exit code.
fn assert_one_line_error(out: &Output, code: i32, needles: &[&str]) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err:?}");
    assert!(err.starts_with("error: "), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "expected {needle:?} in {err}");
    }
}

async fn redis_cmd<T: redis::FromRedisValue>(store: &Store, args: &[&str]) -> T {
    let mut conn = store.connection();
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut conn).await.unwrap()
}

async fn submit_next(store: &Store, sweep: &str) -> u64 {
    let next: Option<u64> = redis_cmd(store, &["HGET", &format!("tsweep:{{{sweep}}}:meta"), "submit_next"]).await;
    next.unwrap_or(0)
}

async fn keys_of(store: &Store, sweep: &str) -> std::collections::BTreeSet<String> {
    support::scan(store, &format!("tsweep:{{{sweep}}}:*")).await
}

/// GetSweep, repeated while the coordinator answers UNAVAILABLE (its readiness loop says
/// Redis did not answer a PING within a second: it happens on a loaded test machine).
async fn summary(sweeps: &mut SweepServiceClient<Channel>, sweep: &str) -> SweepSummary {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match sweeps.get_sweep(GetSweepRequest { sweep: sweep.into() }).await {
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            answer => return answer.unwrap().into_inner(),
        }
    }
}

/// Registers worker `w1` and returns its secret (every later call of the worker carries it).
async fn register(workers: &mut WorkerServiceClient<Channel>) -> String {
    workers
        .register_worker(RegisterWorkerRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "w1".into(),
            hostname: "test".into(),
            slots: 1,
            gpus: 0,
            version: "test".into(),
            worker_secret: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .worker_secret
}

async fn acquire(workers: &mut WorkerServiceClient<Channel>, secret: &str) -> Option<TaskAssignment> {
    workers
        .acquire_task(AcquireTaskRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "w1".into(),
            free_gpus: 8,
            slot: 0,
            worker_secret: secret.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
}

fn lease(task: &TaskAssignment) -> LeaseRef {
    LeaseRef { sweep: task.sweep.clone(), task_id: task.task_id.clone(), attempt: task.attempt }
}

async fn complete(
    workers: &mut WorkerServiceClient<Channel>,
    secret: &str,
    task: &TaskAssignment,
    val: f64,
    test: f64,
) -> Result<ReportResponse, tonic::Status> {
    workers
        .complete_task(CompleteTaskRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "w1".into(),
            worker_secret: secret.into(),
            lease: Some(lease(task)),
            result: Some(TaskResult {
                metric: tsweep_proto::v1::Metric::Top1.into(),
                val_score: Some(val),
                test_score: Some(test),
                steps: 10,
                ..Default::default()
            }),
        })
        .await
        .map(tonic::Response::into_inner)
}

// ------------------------------------------------------------------ submit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_killed_midway_stays_submitting_and_submitting_again_finishes_it() {
    let mut s = setup().await;
    let file = s.dir.path().join("big.toml");
    std::fs::write(&file, grid_file("big", 6, 100, 100, 10, 3)).unwrap(); // 60,000 cells

    let mut cli = s.coordinator.cli_spawn(s.dir.path(), &["submit", "big.toml"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while submit_next(&s.store, "big").await == 0 {
        assert!(Instant::now() < deadline, "no batch landed:\n{}", s.coordinator.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The coordinator dies midway, and the user's CLI with it.
    s.coordinator.kill9();
    cli.kill().unwrap();
    cli.wait().unwrap();
    let written = submit_next(&s.store, "big").await;
    assert!(written > 0 && written < 60_000, "killed midway: {written} of 60000 written");

    s.coordinator.spawn();
    s.coordinator.wait_readiness(ServingStatus::Serving).await;
    let mut sweeps = s.coordinator.sweeps().await;
    let mut workers = s.coordinator.workers().await;
    let secret = register(&mut workers).await;
    let half = summary(&mut sweeps, "big").await;
    assert_eq!(half.status(), tsweep_proto::v1::SweepStatus::Submitting);
    assert_eq!((half.submit_written, half.submit_total), (written, 60_000));
    assert_eq!(half.submit_file, "big.toml");
    assert!(acquire(&mut workers, &secret).await.is_none(), "nothing is leased from a sweep whose submit did not land");
    let status = s.coordinator.cli(s.dir.path(), &["status", "big"]);
    assert_success(&status);
    assert!(
        text(&status.stdout).contains(&format!("submission not finished: {written} of 60000 cells written")),
        "{}",
        text(&status.stdout)
    );

    // Submitting the same file again goes on where the last landed batch stopped.
    let again = s.coordinator.cli(s.dir.path(), &["submit", "big.toml"]);
    assert_success(&again);
    let out = text(&again.stdout);
    assert!(out.contains("sweep big: 60000 cells"), "{out}");
    assert!(out.contains(&format!("its first {written} cells had been written already")), "{out}");
    let whole = summary(&mut sweeps, "big").await;
    assert_eq!(whole.status(), tsweep_proto::v1::SweepStatus::Active);
    let counts = whole.counts.unwrap();
    assert_eq!((counts.total, counts.pending), (60_000, 60_000), "every cell once");
    assert_eq!(whole.submit_total, 0, "the marker is gone");
    assert!(acquire(&mut workers, &secret).await.is_some(), "the sweep leases once its submit landed");
    s.redis.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_at_maxmemory_fails_the_submit_clearly_and_readiness_follows() {
    let mut s = setup().await;
    let mut workers = s.coordinator.workers().await;
    let secret = register(&mut workers).await;
    std::fs::write(s.dir.path().join("big.toml"), grid_file("big", 6, 100, 100, 10, 3)).unwrap();
    let info: String = redis_cmd(&s.store, &["INFO", "memory"]).await;
    let used: u64 =
        info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).unwrap();
    let limit = (used + 24 * 1024 * 1024).to_string();
    let _: () = redis_cmd(&s.store, &["CONFIG", "SET", "maxmemory", &limit]).await;

    let out = s.coordinator.cli(s.dir.path(), &["submit", "big.toml"]);
    assert_one_line_error(
        &out,
        3,
        &["redis is out of memory (maxmemory reached", "of 60000 cells written", "run `tsweep submit big.toml` again"],
    );
    s.coordinator.wait_readiness(ServingStatus::NotServing).await;
    let mut sweeps = s.coordinator.sweeps().await;
    let half = summary(&mut sweeps, "big").await;
    assert_eq!(half.status(), tsweep_proto::v1::SweepStatus::Submitting, "an incomplete submit never looks complete");
    assert!(half.submit_written < 60_000);
    assert_eq!(half.counts.unwrap().total, half.submit_written, "what landed is exactly what is counted");
    assert!(acquire(&mut workers, &secret).await.is_none());

    let _: () = redis_cmd(&s.store, &["CONFIG", "SET", "maxmemory", "0"]).await;
    s.coordinator.wait_readiness(ServingStatus::Serving).await;
    let again = s.coordinator.cli(s.dir.path(), &["submit", "big.toml"]);
    assert_success(&again);
    let whole = summary(&mut sweeps, "big").await;
    assert_eq!((whole.status().name(), whole.counts.unwrap().total), ("active", 60_000));
    s.redis.kill();
}

// ------------------------------------------------------------------ cancel, retry, delete

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_retry_and_delete_go_in_batches_resume_and_leave_other_sweeps_answering() {
    let mut s = setup().await;
    let mut sweeps = s.coordinator.sweeps().await;
    let request = |name: &str, text: String| SubmitSweepRequest {
        file_text: text,
        file_name: format!("{name}.toml"),
        base_dir: "/data".into(),
        ..Default::default()
    };
    sweeps.submit_sweep(request("big", grid_file("big", 6, 100, 100, 10, 3))).await.unwrap();
    sweeps.submit_sweep(request("other", grid_file("other", 1, 2, 1, 10, 3))).await.unwrap();

    // Another sweep's calls keep being answered all along.
    let stop = Arc::new(AtomicBool::new(false));
    let (probe_ok, probe_failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let probe = {
        let (stop, ok, failed) = (stop.clone(), probe_ok.clone(), probe_failed.clone());
        let mut client = s.coordinator.sweeps().await;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // UNAVAILABLE is the coordinator's readiness loop finding Redis slow to
                // answer a PING (a loaded machine); every other error is a failure. How long
                // Redis is blocked is measured by the bigops bench (BENCHMARKS.md).
                match client.get_sweep(GetSweepRequest { sweep: "other".into() }).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(status) if status.code() == Code::Unavailable => 0,
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // A cancel stopped after one batch: the sweep is cancelled already, the rest pending.
    let first = s.store.cancel_part("big", Budget::of(Duration::ZERO)).await.unwrap();
    assert!(!first.complete && first.moved > 0 && first.remaining > 0, "{first:?}");
    assert_eq!(summary(&mut sweeps, "big").await.status(), tsweep_proto::v1::SweepStatus::Cancelled);
    let out = s.coordinator.cli(s.dir.path(), &["cancel", "big"]);
    assert_success(&out);
    assert_eq!(summary(&mut sweeps, "big").await.counts.unwrap().cancelled, 60_000);

    let retry = s.store.retry_part("big", false, true, Budget::of(Duration::ZERO)).await.unwrap();
    assert!(!retry.complete && retry.remaining > 0, "{retry:?}");
    let out = s.coordinator.cli(s.dir.path(), &["retry", "big"]);
    assert_success(&out);
    let counts = summary(&mut sweeps, "big").await.counts.unwrap();
    assert_eq!((counts.pending, counts.cancelled), (60_000, 0));

    // `delete --force` stopped after a few batches (first the cancel, batch by batch, then
    // the first keys): the sweep shows `deleting`, nothing writes to it and it cannot be
    // submitted again until the delete is finished.
    let mut cancelled = 0;
    let part = loop {
        let part = s.store.delete_part("big", true, Budget::of(Duration::ZERO)).await.unwrap();
        assert!(!part.complete, "{part:?}");
        cancelled += part.cancelled;
        if part.tasks_deleted > 0 {
            break part;
        }
    };
    assert_eq!(cancelled, 60_000, "every pending cell cancelled first");
    assert_eq!(part.tasks_total, 60_000);
    assert_eq!(summary(&mut sweeps, "big").await.status(), tsweep_proto::v1::SweepStatus::Deleting);
    let status = s.coordinator.cli(s.dir.path(), &["status", "big"]);
    assert!(text(&status.stdout).contains("run `tsweep delete big` to finish it"), "{}", text(&status.stdout));
    let refused = sweeps.submit_sweep(request("big", grid_file("big", 6, 100, 100, 10, 3))).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("is being deleted"), "{}", refused.message());

    let out = s.coordinator.cli(s.dir.path(), &["delete", "--force", "big"]);
    assert_success(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("sweep big: deleted from Redis (60000 cell(s)"), "{stdout}");
    assert!(keys_of(&s.store, "big").await.is_empty(), "every key of the sweep is gone");
    assert!(!keys_of(&s.store, "other").await.is_empty(), "the other sweep is untouched");
    let again = s.coordinator.cli(s.dir.path(), &["delete", "big"]);
    assert_one_line_error(&again, 2, &["sweep big not found"]);

    stop.store(true, Ordering::Relaxed);
    probe.await.unwrap();
    assert!(probe_ok.load(Ordering::Relaxed) > 0);
    assert_eq!(probe_failed.load(Ordering::Relaxed), 0, "other sweeps' calls never failed");
    s.redis.kill();
}

// ------------------------------------------------------------------ bounds

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_string_and_message_from_clients_is_bounded() {
    let mut s = setup().await;
    let mut workers = s.coordinator.workers().await;
    let mut sweeps = s.coordinator.sweeps().await;
    let huge_id = "w".repeat(3 * 1024 * 1024);
    let refused = workers
        .register_worker(RegisterWorkerRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: huge_id.clone(),
            hostname: "h".into(),
            slots: 1,
            gpus: 0,
            version: "v".into(),
            worker_secret: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("worker_id is 3145728 bytes, more than the limit of 256"), "{refused:?}");
    let refused = workers
        .acquire_task(AcquireTaskRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: huge_id.clone(),
            free_gpus: 1,
            slot: 0,
            worker_secret: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let refused = workers
        .heartbeat(HeartbeatRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: huge_id,
            leases: vec![],
            worker_secret: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let keys: Vec<String> = redis_cmd(&s.store, &["KEYS", "tsweep:worker*"]).await;
    assert!(keys.iter().all(|k| k.len() < 1024), "no huge worker key: {:?}", keys.len());
    let workers_seen: u64 = redis_cmd(&s.store, &["ZCARD", "tsweep:workers"]).await;
    assert_eq!(workers_seen, 0, "a refused worker is not recorded");

    let refused = workers
        .fail_task(FailTaskRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "w1".into(),
            lease: Some(LeaseRef { sweep: "s".into(), task_id: "t".into(), attempt: 1 }),
            message: "e".repeat(tsweep_proto::limits::MAX_ERROR_MESSAGE_BYTES + 1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("message is"), "{refused:?}");

    // A sweep file over the limit, and a message over the gRPC limit both sides share.
    let refused = sweeps
        .submit_sweep(SubmitSweepRequest {
            file_text: format!("name = \"x\"\n# {}", "x".repeat(tsweep_proto::limits::MAX_SWEEP_FILE_BYTES)),
            file_name: "x.toml".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("file_text is"), "{refused:?}");
    let refused = sweeps
        .submit_sweep(SubmitSweepRequest {
            file_text: "x".repeat(tsweep_proto::limits::MAX_MESSAGE_BYTES + 1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(refused.code(), Code::OutOfRange | Code::ResourceExhausted), "{refused:?}");

    // A sweep file the coordinator refuses writes nothing.
    let mut bad = grid_file("bad", 1, 2, 1, 10, 3).replace("arch = \"resnet18\"", "arch = \"resnet5000\"");
    bad.push('\n');
    let refused = sweeps
        .submit_sweep(SubmitSweepRequest { file_text: bad, file_name: "bad.toml".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().starts_with("bad.toml:"), "{}", refused.message());
    assert!(refused.message().contains("models.arch: unknown builtin architecture \"resnet5000\""));
    let all: Vec<String> = redis_cmd(&s.store, &["KEYS", "*"]).await;
    assert!(all.iter().all(|k| !k.contains("{bad}")), "nothing written: {all:?}");
    s.redis.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_scores_are_refused_and_fail_their_attempt() {
    let mut s = setup().await;
    let mut sweeps = s.coordinator.sweeps().await;
    let mut workers = s.coordinator.workers().await;
    let secret = register(&mut workers).await;
    sweeps
        .submit_sweep(SubmitSweepRequest {
            file_text: grid_file("scores", 1, 3, 1, 10, 3),
            file_name: "scores.toml".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for (val, test, refused) in
        [(1e308, 0.5, Some("val_score 1e308")), (0.5, -5.0, Some("test_score -5")), (0.5, 0.4, None)]
    {
        let task = acquire(&mut workers, &secret).await.unwrap();
        let answer = complete(&mut workers, &secret, &task, val, test).await;
        let info = s.store.task("scores", &task.task_id).await.unwrap().unwrap();
        match refused {
            Some(what) => {
                let status = answer.unwrap_err();
                assert_eq!(status.code(), Code::InvalidArgument);
                assert!(status.message().contains(what), "{}", status.message());
                assert!(status.message().contains("out of range for top1: scores are fractions in [0, 1]"));
                assert_eq!(info.state(), tsweep_proto::v1::TaskState::Failed, "the attempt failed for good");
                assert_eq!(info.error_class, FailureClass::Fatal as i32);
                assert!(info.error.starts_with("result refused: "), "{}", info.error);
                assert!(info.result.is_none(), "nothing of the refused result is recorded");
            }
            None => {
                assert_eq!(answer.unwrap().outcome, ReportOutcome::Accepted as i32);
                assert_eq!(info.state(), tsweep_proto::v1::TaskState::Succeeded);
            }
        }
    }
    let counts = summary(&mut sweeps, "scores").await.counts.unwrap();
    assert_eq!((counts.failed, counts.succeeded), (2, 1));
    s.redis.kill();
}

// ------------------------------------------------------------------ changed settings

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubmission_lists_changed_settings_and_update_applies_them() {
    let mut s = setup().await;
    let mut workers = s.coordinator.workers().await;
    let secret = register(&mut workers).await;
    let dir = s.dir.path().to_path_buf();
    std::fs::write(dir.join("s.toml"), grid_file("s", 1, 3, 1, 10, 3)).unwrap();
    assert_success(&s.coordinator.cli(&dir, &["submit", "s.toml"]));
    let done = acquire(&mut workers, &secret).await.unwrap();
    assert_eq!(complete(&mut workers, &secret, &done, 0.5, 0.5).await.unwrap().outcome, ReportOutcome::Accepted as i32);

    std::fs::write(dir.join("s.toml"), grid_file("s", 1, 3, 1, 20, 5)).unwrap();
    let out = s.coordinator.cli(&dir, &["submit", "s.toml"]);
    assert_success(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("3 cells, 0 added, 3 already known"), "{stdout}");
    assert!(
        stdout.contains("3 existing cell(s) have other settings in the file; the recorded ones are kept"),
        "{stdout}"
    );
    assert!(stdout.contains("train.steps: 10 -> 20 (3 cell(s))"), "{stdout}");
    assert!(stdout.contains("max_attempts: 3 -> 5 (3 cell(s))"), "{stdout}");
    let spec = |info: &TaskInfo| tsweep_proto::cell::CellSpec::from_json(&info.spec_json).unwrap();
    let tasks = s.store.list_tasks("s", None, 0, "").await.unwrap().tasks;
    assert!(tasks.iter().all(|t| spec(t).train.steps == 10 && spec(t).max_attempts == 3), "kept as recorded");

    let out = s.coordinator.cli(&dir, &["submit", "--update", "s.toml"]);
    assert_success(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("3 existing cell(s) have other settings in the file: 2 updated, 1 kept"), "{stdout}");
    for task in s.store.list_tasks("s", None, 0, "").await.unwrap().tasks {
        let steps = spec(&task).train.steps;
        if task.task_id == done.task_id {
            assert_eq!((steps, task.state().name()), (10, "succeeded"), "a succeeded cell keeps its settings");
            assert!(task.result.is_some());
        } else {
            assert_eq!((steps, spec(&task).max_attempts), (20, 5), "updated");
        }
    }
    // The file as it is now: nothing left to change.
    let out = s.coordinator.cli(&dir, &["submit", "s.toml"]);
    assert!(text(&out.stdout).contains("1 existing cell(s) have other settings"), "{}", text(&out.stdout));
    let parsed = sweepfile::parse_plan(&grid_file("s", 1, 3, 1, 20, 5), "s.toml", &dir, false).unwrap();
    assert_eq!(parsed.total(), 3);
    s.redis.kill();
}
