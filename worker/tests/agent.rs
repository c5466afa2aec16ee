//! The agent process (`tsweep-worker agent --executor fake`) against a scripted in-test
//! coordinator (a `WorkerService` that hands out given tasks and records every call) and a
//! real `redis-server` for the metrics stream. The lease store itself is tested in the
//! coordinator crate and end to end in the `tests/` suites.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tsweep_proto::auth::WorkerRefusal;
use tsweep_proto::cell::{
    CellSpec, DatasetFormat, DatasetSpec, FakeSettings, Metric, ModelSource, ModelSpec, Regime, Stage, TrainSettings,
    ValPolicy,
};
use tsweep_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use tsweep_proto::v1::{
    AcquireTaskRequest, AcquireTaskResponse, Checkpoint, CompleteTaskRequest, FailTaskRequest, FailureClass,
    HeartbeatRequest, HeartbeatResponse, HeldLease, LeaseRef, RegisterWorkerRequest, RegisterWorkerResponse,
    ReportOutcome, ReportResponse, StopOrder, StopReason, TaskAssignment,
};

// ------------------------------------------------------------ scripted coordinator

#[derive(Default)]
struct State {
    queue: VecDeque<TaskAssignment>,
    registers: Vec<RegisterWorkerRequest>,
    acquires: usize,
    heartbeats: Vec<HeartbeatRequest>,
    stop_next_heartbeat: Vec<StopOrder>,
    completes: Vec<CompleteTaskRequest>,
    fails: Vec<FailTaskRequest>,
    authorization: Vec<String>,
    /// Answer this many CompleteTask calls with UNAVAILABLE first.
    refuse_completes: usize,
    complete_calls: usize,
    /// When set, acquire and complete answer UNAUTHENTICATED unless this token comes.
    require_token: Option<String>,
    /// Secrets handed out by RegisterWorker so far.
    secrets_issued: u64,
    /// The secret the worker's calls must carry (None: not registered, as after Redis
    /// lost the record); acquire, heartbeat and reports are refused as the coordinator does.
    current_secret: Option<String>,
    /// Calls refused with a worker refusal.
    refusals: Vec<WorkerRefusal>,
}

#[derive(Clone, Default)]
struct Scripted(Arc<Mutex<State>>);

impl Scripted {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
    fn note_auth<T>(&self, request: &Request<T>) {
        let value = request.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        self.with(|s| s.authorization.push(value));
    }
    /// Refuses a call whose secret is not the registered one, as the coordinator does.
    fn check_secret(&self, presented: &str) -> Result<(), Status> {
        self.with(|s| {
            let refusal = match &s.current_secret {
                None => WorkerRefusal::Unregistered,
                Some(secret) if secret == presented => return Ok(()),
                Some(_) => WorkerRefusal::WrongSecret,
            };
            s.refusals.push(refusal);
            Err(refusal.status("refused by the scripted coordinator"))
        })
    }
    fn check_token<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(expected) = self.with(|s| s.require_token.clone()) else { return Ok(()) };
        let presented = request.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        if presented == format!("Bearer {expected}") {
            Ok(())
        } else {
            Err(Status::unauthenticated("bad token"))
        }
    }
}

fn accepted() -> Response<ReportResponse> {
    Response::new(ReportResponse { outcome: ReportOutcome::Accepted as i32, task_state: 0 })
}

#[tonic::async_trait]
impl WorkerService for Scripted {
    async fn register_worker(
        &self,
        request: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerResponse>, Status> {
        self.note_auth(&request);
        let worker_secret = self.with(|s| {
            s.registers.push(request.into_inner());
            s.secrets_issued += 1;
            let secret = format!("secret-{}", s.secrets_issued);
            s.current_secret = Some(secret.clone());
            secret
        });
        Ok(Response::new(RegisterWorkerResponse {
            lease_ttl_ms: 3_000,
            heartbeat_interval_ms: 100,
            metrics_stream_pattern: "tsweep:{{sweep}}:metrics".into(),
            worker_secret,
        }))
    }

    async fn acquire_task(
        &self,
        request: Request<AcquireTaskRequest>,
    ) -> Result<Response<AcquireTaskResponse>, Status> {
        self.note_auth(&request);
        self.check_token(&request)?;
        self.check_secret(&request.get_ref().worker_secret)?;
        let task = self.with(|s| {
            s.acquires += 1;
            s.queue.pop_front()
        });
        Ok(Response::new(AcquireTaskResponse { task, retry_after_ms: 50 }))
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        self.check_secret(&request.get_ref().worker_secret)?;
        let stop = self.with(|s| {
            s.heartbeats.push(request.into_inner());
            std::mem::take(&mut s.stop_next_heartbeat)
        });
        Ok(Response::new(HeartbeatResponse { stop, lease_ttl_ms: 3_000 }))
    }

    async fn complete_task(&self, request: Request<CompleteTaskRequest>) -> Result<Response<ReportResponse>, Status> {
        self.note_auth(&request);
        self.check_token(&request)?;
        self.check_secret(&request.get_ref().worker_secret)?;
        let refuse = self.with(|s| {
            s.complete_calls += 1;
            if s.refuse_completes > 0 {
                s.refuse_completes -= 1;
                return true;
            }
            s.completes.push(request.into_inner());
            false
        });
        if refuse {
            return Err(Status::unavailable("coordinator restarting"));
        }
        Ok(accepted())
    }

    async fn fail_task(&self, request: Request<FailTaskRequest>) -> Result<Response<ReportResponse>, Status> {
        self.check_secret(&request.get_ref().worker_secret)?;
        self.with(|s| s.fails.push(request.into_inner()));
        Ok(accepted())
    }
}

async fn start_coordinator(script: Scripted) -> SocketAddr {
    start_coordinator_at(script, "127.0.0.1:0".parse().unwrap()).await
}

async fn start_coordinator_at(script: Scripted, addr: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(WorkerServiceServer::new(script))
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    addr
}

// ------------------------------------------------------------ redis-server, agent process

struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("/usr/bin/redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let redis = Redis { child, port, _dir: dir };
        wait_for(Duration::from_secs(10), || redis.connection().is_some());
        redis
    }
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
    fn connection(&self) -> Option<redis::Connection> {
        redis::Client::open(self.url()).ok()?.get_connection().ok()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(coordinator: SocketAddr, redis_url: &str, dir: &Path, slots: u32) -> Agent {
        Agent::start_with_token(coordinator, redis_url, dir, slots, &["--token", "t0ken"])
    }
    fn start_with_token(coordinator: SocketAddr, redis_url: &str, dir: &Path, slots: u32, token: &[&str]) -> Agent {
        Agent::start_with_grace(coordinator, redis_url, dir, slots, token, "10")
    }
    fn start_with_grace(
        coordinator: SocketAddr,
        redis_url: &str,
        dir: &Path,
        slots: u32,
        token: &[&str],
        grace_s: &str,
    ) -> Agent {
        let log = dir.join("agent.log");
        let child = Command::new(env!("CARGO_BIN_EXE_tsweep-worker"))
            .arg("agent")
            .args(["--coordinator", &format!("http://{coordinator}")])
            .args(["--redis-url", redis_url])
            .args(["--slots", &slots.to_string(), "--gpus", "0", "--device", "cpu", "--executor", "fake"])
            .args(["--worker-id", "w-test", "--grace-period", grace_s])
            .args(token)
            .arg("--checkpoint-root")
            .arg(dir.join("checkpoints"))
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent { child, log }
    }
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// SIGTERM, then the exit code (None: killed by a signal).
    fn terminate(&mut self, within: Duration) -> Option<i32> {
        kill(self.pid(), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "agent did not exit within {within:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for the agent to exit by itself; its exit code (None: killed by a signal).
async fn exited(agent: &mut Agent, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            return status.code();
        }
        assert!(Instant::now() < deadline, "agent kept running:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "condition not met within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn wait_until(timeout: Duration, agent: &Agent, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "condition not met within {timeout:?}; agent log:\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Children of `parent` (by /proc), for checking that none outlives the agent.
fn children_of(parent: Pid) -> Vec<Pid> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid ...
        let Some(after_comm) = stat.rsplit_once(')').map(|(_, rest)| rest) else { continue };
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(parent.as_raw()) && fields[0] != "Z" {
            found.push(Pid::from_raw(pid));
        }
    }
    found
}

fn alive(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw()))
        .map(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

// ------------------------------------------------------------ tasks

fn assignment(task_id: &str, attempt: u32, fake: FakeSettings, resume: Option<(&Path, u64)>) -> TaskAssignment {
    let spec = CellSpec {
        sweep: "s1".into(),
        stage: Stage::Grid,
        regime: Regime::Finetune,
        model: ModelSpec {
            name: "r18".into(),
            source: ModelSource::Builtin,
            arch: "resnet18".into(),
            weights: None,
            imagenet_top1: Some(0.7),
            image_size: 32,
            pretrained: None,
            normalize: Default::default(),
        },
        dataset: DatasetSpec {
            name: "toy".into(),
            format: DatasetFormat::Imagefolder,
            path: "/nonexistent".into(),
            metric: Metric::Top1,
            val: ValPolicy::Official,
            num_classes: None,
        },
        hparams: BTreeMap::from([("lr".to_string(), 0.01)]),
        train: TrainSettings {
            steps: 10,
            batch_size: 8,
            checkpoint_every: 0,
            loader_threads: 1,
            lbfgs_max_iter: 10,
            ..TrainSettings::defaults_for(Regime::Finetune)
        },
        seed: 1,
        precision: Default::default(),
        gpus: 0,
        max_attempts: 3,
        fake: Some(fake),
    };
    TaskAssignment {
        sweep: "s1".into(),
        task_id: task_id.into(),
        attempt,
        spec_json: spec.to_json().unwrap(),
        gpus: 0,
        resume: resume.map(|(p, step)| Checkpoint { path: p.display().to_string(), step }),
        lease_ttl_ms: 3_000,
    }
}

fn fake(sleep_ms: u64, steps: u64) -> FakeSettings {
    FakeSettings { sleep_ms, steps, ..Default::default() }
}

fn lease(task_id: &str, attempt: u32) -> LeaseRef {
    LeaseRef { sweep: "s1".into(), task_id: task_id.into(), attempt }
}

// ------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_tasks_reports_them_heartbeats_and_forwards_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    // The coordinator creates a sweep's stream at submit; the agent only appends to an
    // existing one (XADD NOMKSTREAM).
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("tsweep:{s1}:metrics")
        .arg("tsweep-coordinator")
        .arg("0")
        .arg("MKSTREAM")
        .query(&mut redis.connection().unwrap())
        .unwrap();
    let script = Scripted::default();
    // A checkpoint an earlier attempt of task "b" left behind (at step 2 of 4).
    let old = dir.path().join("old-ckpt.json");
    std::fs::write(&old, r#"{"task_id":"b","attempt":1,"step":2}"#).unwrap();
    script.with(|s| {
        s.queue.push_back(assignment("a", 1, fake(600, 6), None));
        s.queue.push_back(assignment("b", 2, fake(100, 4), Some((&old, 2))));
        s.queue.push_back(assignment("c", 1, FakeSettings { fail: Some("crash".into()), ..fake(40, 4) }, None));
        s.queue.push_back(assignment("d", 1, FakeSettings { fail: Some("fatal".into()), ..fake(0, 2) }, None));
        s.queue.push_back(assignment("e", 1, FakeSettings { fail: Some("out_of_memory".into()), ..fake(0, 2) }, None));
    });
    let coordinator = start_coordinator(script.clone()).await;
    let mut agent = Agent::start(coordinator, &redis.url(), dir.path(), 1);

    wait_until(Duration::from_secs(60), &agent, || script.with(|s| s.completes.len() == 2 && s.fails.len() == 3)).await;
    let (registers, completes, fails, heartbeats, auth) = script.with(|s| {
        (s.registers.clone(), s.completes.clone(), s.fails.clone(), s.heartbeats.clone(), s.authorization.clone())
    });

    assert_eq!(registers[0].worker_id, "w-test");
    assert_eq!(registers[0].protocol_version, tsweep_proto::PROTOCOL_VERSION);
    assert_eq!(registers[0].worker_secret, "", "a first registration presents no secret");
    assert!(auth.iter().all(|a| a == "Bearer t0ken"), "{auth:?}");
    // Every call carried the secret RegisterWorker handed out (the script refuses others).
    assert_eq!(registers.len(), 1);
    assert!(script.with(|s| s.refusals.is_empty()));
    assert!(
        completes.iter().all(|c| c.worker_secret == "secret-1") && fails.iter().all(|f| f.worker_secret == "secret-1")
    );

    let a = completes.iter().find(|c| c.lease == Some(lease("a", 1))).expect("task a completed");
    let a_result = a.result.clone().unwrap();
    assert_eq!(a_result.steps, 6);
    assert!(a_result.val_score.is_some());
    let b = completes.iter().find(|c| c.lease == Some(lease("b", 2))).expect("task b completed");
    assert_eq!(b.result.as_ref().unwrap().resumed_from_step, 2);
    assert!(agent.log().contains("resumed_from_step=2"), "{}", agent.log());

    let c = fails.iter().find(|f| f.lease == Some(lease("c", 1))).expect("task c failed");
    assert_eq!(c.class, FailureClass::Retryable as i32, "a crash is retryable: {c:?}");
    assert!(c.message.contains("crash"), "{}", c.message);
    assert_eq!(step_of(&c.checkpoint), 2, "the crashed attempt's last checkpoint is reported");
    let d = fails.iter().find(|f| f.lease == Some(lease("d", 1))).expect("task d failed");
    assert_eq!(d.class, FailureClass::Fatal as i32);
    let e = fails.iter().find(|f| f.lease == Some(lease("e", 1))).expect("task e failed");
    assert_eq!(e.class, FailureClass::OutOfMemory as i32, "an accelerator OOM keeps its own class: {e:?}");

    // Heartbeats renewed task a while it ran, with its running flag and checkpoints.
    let a_beats: Vec<_> =
        heartbeats.iter().flat_map(|h| h.leases.iter()).filter(|l| l.lease == Some(lease("a", 1))).collect();
    assert!(a_beats.len() >= 2, "{a_beats:?}");
    assert!(a_beats.iter().any(|l| l.running && step_of(&l.checkpoint) > 0 && !path_of(&l.checkpoint).is_empty()));
    // After the reports, the agent holds nothing.
    let beats_before = script.with(|s| s.heartbeats.len());
    wait_until(Duration::from_secs(5), &agent, || script.with(|s| s.heartbeats.len() > beats_before + 1)).await;
    assert!(script.with(|s| s.heartbeats.last().unwrap().leases.is_empty()));

    // Progress reached the sweep's stream.
    let mut redis_conn = redis.connection().unwrap();
    let mut entries: Vec<(String, Vec<String>)> = Vec::new();
    for _ in 0..100 {
        entries = redis::cmd("XRANGE").arg("tsweep:{s1}:metrics").arg("-").arg("+").query(&mut redis_conn).unwrap();
        if entries.len() >= 8 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let a_steps: Vec<String> = entries
        .iter()
        .filter(|(_, f)| f.chunks(2).any(|kv| kv[0] == "task_id" && kv[1] == "a"))
        .filter_map(|(_, f)| f.chunks(2).find(|kv| kv[0] == "step").map(|kv| kv[1].clone()))
        .collect();
    assert_eq!(a_steps, ["1", "2", "3", "4", "5", "6"]);
    let fields: Vec<&str> = entries[0].1.chunks(2).map(|kv| kv[0].as_str()).collect();
    for field in ["task_id", "attempt", "step", "total_steps", "loss", "lr", "images_per_s", "ts_ms"] {
        assert!(fields.contains(&field), "{fields:?}");
    }

    assert_eq!(agent.terminate(Duration::from_secs(10)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_running_tasks_as_preempted_with_their_checkpoint_even_without_redis() {
    let dir = tempfile::tempdir().unwrap();
    let script = Scripted::default();
    script.with(|s| {
        s.queue.push_back(assignment("long1", 1, fake(60_000, 600), None));
        s.queue.push_back(assignment("long2", 3, fake(60_000, 600), None));
    });
    let coordinator = start_coordinator(script.clone()).await;
    // Nothing listens on this port: metrics cannot be delivered, tasks must not care.
    let dead_redis = format!("redis://127.0.0.1:{}/", free_port());
    let mut agent = Agent::start(coordinator, &dead_redis, dir.path(), 2);

    let progressed = |s: &State, task: &str| {
        s.heartbeats
            .iter()
            .flat_map(|h| h.leases.iter())
            .any(|l| l.lease.as_ref().is_some_and(|r| r.task_id == task) && l.running && step_of(&l.checkpoint) >= 2)
    };
    wait_until(Duration::from_secs(30), &agent, || script.with(|s| progressed(s, "long1") && progressed(s, "long2")))
        .await;
    let children = children_of(agent.pid());
    assert_eq!(children.len(), 2, "one child per slot");
    let acquires_before = script.with(|s| s.acquires);

    assert_eq!(agent.terminate(Duration::from_secs(10)), Some(0), "{}", agent.log());
    let (fails, completes, acquires) = script.with(|s| (s.fails.clone(), s.completes.clone(), s.acquires));
    assert!(completes.is_empty());
    assert_eq!(fails.len(), 2, "{fails:?}");
    for fail in &fails {
        assert_eq!(fail.class, FailureClass::Preempted as i32, "{fail:?}");
        assert!(step_of(&fail.checkpoint) >= 2, "{fail:?}");
        let on_disk = tsweep_worker::fake::read_checkpoint(Path::new(path_of(&fail.checkpoint))).unwrap();
        assert_eq!(on_disk.step, step_of(&fail.checkpoint));
        assert_eq!(Some(on_disk.attempt), fail.lease.as_ref().map(|l| l.attempt));
    }
    assert!(acquires <= acquires_before + 2, "no acquiring while draining ({acquires_before} -> {acquires})");
    for child in children {
        assert!(!alive(child), "child {child} outlived the agent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_orders_end_children_silently_and_sigkill_of_the_agent_takes_children_along() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let script = Scripted::default();
    script.with(|s| {
        s.queue.push_back(assignment("cancelled", 1, fake(60_000, 600), None));
        s.queue.push_back(assignment("lost", 1, fake(60_000, 600), None));
        s.queue.push_back(assignment("orphan", 1, fake(60_000, 600), None));
    });
    let coordinator = start_coordinator(script.clone()).await;
    let mut agent = Agent::start(coordinator, &redis.url(), dir.path(), 1);

    let running = |s: &State, task: &str| {
        s.heartbeats
            .last()
            .is_some_and(|h| h.leases.iter().any(|l| l.lease.as_ref().is_some_and(|r| r.task_id == task) && l.running))
    };
    // CANCELLED: the child is stopped (SIGTERM), nothing is reported, the slot moves on.
    wait_until(Duration::from_secs(30), &agent, || script.with(|s| running(s, "cancelled"))).await;
    let cancelled_child = children_of(agent.pid());
    assert_eq!(cancelled_child.len(), 1);
    script.with(|s| {
        s.stop_next_heartbeat
            .push(StopOrder { lease: Some(lease("cancelled", 1)), reason: StopReason::Cancelled as i32 })
    });
    wait_until(Duration::from_secs(30), &agent, || script.with(|s| running(s, "lost"))).await;
    assert!(!alive(cancelled_child[0]), "the cancelled task's child was stopped");
    let first_child = children_of(agent.pid());
    assert_eq!(first_child.len(), 1);
    script.with(|s| {
        s.stop_next_heartbeat.push(StopOrder { lease: Some(lease("lost", 1)), reason: StopReason::LeaseLost as i32 })
    });
    // The slot is free again: it takes the next task.
    wait_until(Duration::from_secs(30), &agent, || script.with(|s| running(s, "orphan"))).await;
    assert!(!alive(first_child[0]), "the lost lease's child was killed");
    assert!(
        script.with(|s| s.fails.is_empty() && s.completes.is_empty()),
        "nothing reported for a cancelled or lost lease"
    );
    assert!(script.with(|s| !s.heartbeats.last().unwrap().leases.iter().any(|l| l.lease == Some(lease("lost", 1)))));

    let orphan = children_of(agent.pid());
    assert_eq!(orphan.len(), 1);
    agent.child.kill().unwrap(); // SIGKILL: no drain possible
    agent.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(orphan[0]) {
        assert!(Instant::now() < deadline, "child {} outlived a SIGKILL'd agent", orphan[0]);
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_that_arrived_before_a_cancel_order_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let script = Scripted::default();
    // The child reports its result after 100 ms, then stays (linger) until it is stopped.
    let task = assignment("finished", 1, FakeSettings { linger_ms: 120_000, ..fake(100, 2) }, None);
    script.with(|s| s.queue.push_back(task));
    let coordinator = start_coordinator(script.clone()).await;
    let agent = Agent::start(coordinator, &redis.url(), dir.path(), 1);

    wait_until(Duration::from_secs(30), &agent, || agent.log().contains("task finished")).await;
    assert!(script.with(|s| s.completes.is_empty()), "the child has not exited: nothing reported yet");
    script.with(|s| {
        s.stop_next_heartbeat
            .push(StopOrder { lease: Some(lease("finished", 1)), reason: StopReason::Cancelled as i32 })
    });
    wait_until(Duration::from_secs(30), &agent, || script.with(|s| !s.completes.is_empty())).await;
    let complete = script.with(|s| s.completes[0].clone());
    assert_eq!(complete.lease, Some(lease("finished", 1)));
    assert!(complete.result.as_ref().and_then(|r| r.val_score).is_some(), "the result is reported as it was");
    assert!(script.with(|s| s.fails.is_empty()), "no failure reported for a task that had its result");
    assert!(agent.log().contains("result arrived before the cancel order"), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_a_late_coordinator_and_retries_reports_it_could_not_deliver() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let script = Scripted::default();
    script.with(|s| {
        s.queue.push_back(assignment("late", 1, fake(50, 2), None));
        s.refuse_completes = 3;
    });
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut agent = Agent::start(addr, &redis.url(), dir.path(), 1);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(agent.child.try_wait().unwrap(), None, "the agent keeps trying to register");
    start_coordinator_at(script.clone(), addr).await;

    wait_until(Duration::from_secs(30), &agent, || script.with(|s| s.completes.len() == 1)).await;
    let (calls, completes) = script.with(|s| (s.complete_calls, s.completes.clone()));
    assert_eq!(calls, 4, "three refused deliveries, then the accepted one");
    assert_eq!(completes[0].lease, Some(lease("late", 1)));
    assert_eq!(agent.terminate(Duration::from_secs(10)), Some(0));
}

#[tokio::test]
async fn a_token_file_is_read_again_when_the_coordinator_refuses_it_so_a_rotated_secret_works() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "old-token\n").unwrap();
    let script = Scripted::default();
    script.with(|s| s.require_token = Some("old-token".into()));
    let coordinator = start_coordinator(script.clone()).await;
    let token_arg = token_file.to_str().unwrap().to_string();
    let mut agent = Agent::start_with_token(coordinator, &redis.url(), dir.path(), 1, &["--token-file", &token_arg]);
    wait_until(Duration::from_secs(30), &agent, || script.with(|s| s.acquires > 0)).await;

    // The Secret is rotated: the coordinator takes only the new token, the file changes.
    std::fs::write(&token_file, "new-token\n").unwrap();
    script.with(|s| {
        s.require_token = Some("new-token".into());
        s.queue.push_back(assignment("rotated", 1, fake(50, 2), None));
    });
    wait_until(Duration::from_secs(30), &agent, || script.with(|s| s.completes.len() == 1)).await;
    let auth = script.with(|s| s.authorization.clone());
    assert_eq!(auth.first().map(String::as_str), Some("Bearer old-token"));
    assert_eq!(auth.last().map(String::as_str), Some("Bearer new-token"), "{auth:?}");
    assert_eq!(agent.terminate(Duration::from_secs(10)), Some(0));
}

#[tokio::test]
async fn a_missing_token_file_stops_the_agent_at_startup_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-token");
    let missing_arg = missing.to_str().unwrap().to_string();
    let mut agent = Agent::start_with_token(
        "127.0.0.1:9".parse().unwrap(),
        "redis://127.0.0.1:9/",
        dir.path(),
        1,
        &["--token-file", &missing_arg],
    );
    let code = exited(&mut agent, Duration::from_secs(20)).await;
    assert_ne!(code, Some(0));
    let log = agent.log();
    assert!(log.contains("token_file") && log.contains(&missing_arg), "{log}");
}

/// A task whose cell sets the attempt limits.
fn limited(task_id: &str, fake: FakeSettings, stall_timeout_s: u64, max_runtime_s: Option<u64>) -> TaskAssignment {
    let mut a = assignment(task_id, 1, fake, None);
    let mut spec = CellSpec::from_json(&a.spec_json).unwrap();
    spec.train.stall_timeout_s = stall_timeout_s;
    spec.train.max_runtime_s = max_runtime_s;
    a.spec_json = spec.to_json().unwrap();
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_child_is_killed_after_its_stall_timeout_and_a_long_one_after_max_runtime_both_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let script = Scripted::default();
    script.with(|s| {
        // Hangs after its first step and ignores SIGTERM: SIGKILL after the grace period.
        let hung = FakeSettings { hang_after_step: Some(1), ..fake(400, 4) };
        s.queue.push_back(limited("hung", hung, 1, None));
        // Makes progress, but past its hard limit: SIGTERM, it checkpoints and exits.
        s.queue.push_back(limited("slow", fake(60_000, 600), 3_600, Some(1)));
    });
    let coordinator = start_coordinator(script.clone()).await;
    let started = Instant::now();
    let agent = Agent::start_with_grace(coordinator, &redis.url(), dir.path(), 1, &[], "2");
    wait_until(Duration::from_secs(60), &agent, || script.with(|s| s.fails.len() == 2)).await;
    let fails = script.with(|s| s.fails.clone());

    let hung = fails.iter().find(|f| f.lease == Some(lease("hung", 1))).expect("the hung task failed");
    assert_eq!(hung.class, FailureClass::Retryable as i32, "{hung:?}");
    assert!(hung.message.contains("no progress") && hung.message.contains("stall_timeout_s"), "{}", hung.message);
    assert_eq!(step_of(&hung.checkpoint), 1, "its last checkpoint goes with the report: {hung:?}\n{}", agent.log());
    let log = agent.log();
    assert!(log.contains("child did not stop in time: SIGKILL"), "the hung child ignored SIGTERM:\n{log}");

    let slow = fails.iter().find(|f| f.lease == Some(lease("slow", 1))).expect("the slow task failed");
    assert_eq!(slow.class, FailureClass::Retryable as i32, "{slow:?}");
    assert!(slow.message.contains("max_runtime_s = 1"), "{}", slow.message);
    assert!(step_of(&slow.checkpoint) >= 1, "it checkpointed on SIGTERM: {slow:?}");
    assert!(log.contains("stopped by signal after step"), "the slow child stopped on SIGTERM:\n{log}");
    assert!(started.elapsed() < Duration::from_secs(30), "limits took {:?}", started.elapsed());
    assert!(script.with(|s| s.completes.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_stops_the_child_with_sigterm_and_sigkills_only_one_that_ignores_it() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let script = Scripted::default();
    script.with(|s| {
        s.queue.push_back(assignment("lost", 1, fake(60_000, 600), None));
        s.queue.push_back(assignment("deaf", 1, FakeSettings { hang_after_step: Some(2), ..fake(60_000, 600) }, None));
        s.queue.push_back(assignment("next", 1, fake(60_000, 600), None));
    });
    let coordinator = start_coordinator(script.clone()).await;
    let agent = Agent::start_with_grace(coordinator, &redis.url(), dir.path(), 1, &[], "2");
    let running = |s: &State, task: &str, step: u64| {
        s.heartbeats.last().is_some_and(|h| {
            h.leases.iter().any(|l| {
                l.lease.as_ref().is_some_and(|r| r.task_id == task) && l.running && step_of(&l.checkpoint) >= step
            })
        })
    };
    wait_until(Duration::from_secs(30), &agent, || script.with(|s| running(s, "lost", 2))).await;
    let child = children_of(agent.pid());
    assert_eq!(child.len(), 1);
    script.with(|s| {
        s.stop_next_heartbeat.push(StopOrder { lease: Some(lease("lost", 1)), reason: StopReason::LeaseLost as i32 })
    });
    wait_until(Duration::from_secs(30), &agent, || script.with(|s| running(s, "deaf", 2))).await;
    assert!(!alive(child[0]));
    let log = agent.log();
    assert!(log.contains("lease lost: stopping the child"), "{log}");
    assert!(log.contains("stopped by signal after step"), "the child checkpointed and exited on SIGTERM:\n{log}");
    assert!(!log.contains("did not stop in time"), "no SIGKILL for a child that stops by itself:\n{log}");
    let on_disk =
        tsweep_worker::fake::read_checkpoint(&dir.path().join("checkpoints/s1/lost/attempt-1/fake-checkpoint.json"))
            .unwrap();
    assert!(on_disk.step >= 2);

    // A child that ignores SIGTERM is killed after the grace period (2 s agent grace).
    let deaf = children_of(agent.pid());
    script.with(|s| {
        s.stop_next_heartbeat.push(StopOrder { lease: Some(lease("deaf", 1)), reason: StopReason::LeaseLost as i32 })
    });
    let ordered = Instant::now();
    wait_until(Duration::from_secs(30), &agent, || script.with(|s| running(s, "next", 0))).await;
    assert!(!alive(deaf[0]));
    assert!(ordered.elapsed() >= Duration::from_millis(1_000), "SIGKILL came before the grace period");
    assert!(agent.log().contains("child did not stop in time: SIGKILL"), "{}", agent.log());
    assert!(script.with(|s| s.fails.is_empty() && s.completes.is_empty()), "nothing reported for lost leases");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_resume_checkpoint_is_reported_and_the_attempt_runs_from_step_zero() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let script = Scripted::default();
    let gone = dir.path().join("gone/fake-checkpoint.json");
    script.with(|s| s.queue.push_back(assignment("gone", 2, fake(600, 3), Some((&gone, 5)))));
    let coordinator = start_coordinator(script.clone()).await;
    let agent = Agent::start(coordinator, &redis.url(), dir.path(), 1);
    wait_until(Duration::from_secs(30), &agent, || script.with(|s| s.completes.len() == 1)).await;

    let result = script.with(|s| s.completes[0].result.clone().unwrap());
    assert_eq!(result.resumed_from_step, 0);
    assert_eq!(result.steps, 3);
    let beats: Vec<HeldLease> = script.with(|s| {
        s.heartbeats
            .iter()
            .flat_map(|h| h.leases.iter())
            .filter(|l| l.lease == Some(lease("gone", 2)))
            .cloned()
            .collect()
    });
    let reported: Vec<&HeldLease> = beats.iter().filter(|l| !l.resume_error.is_empty()).collect();
    assert!(!reported.is_empty(), "the heartbeats say the checkpoint is gone: {beats:?}");
    assert!(reported[0].resume_error.contains(&gone.display().to_string()), "{:?}", reported[0]);
    assert!(reported[0].resume_error.contains("missing"), "{:?}", reported[0]);
    for beat in &reported {
        assert_ne!(path_of(&beat.checkpoint), gone.display().to_string(), "the missing checkpoint is not passed on");
    }
    assert!(
        reported.iter().any(|l| step_of(&l.checkpoint) > 0
            && step_of(&l.checkpoint) < 5
            && path_of(&l.checkpoint).contains("attempt-2")),
        "its own checkpoints go out instead: {reported:?}"
    );
    assert!(agent.log().contains("cannot resume from the recorded checkpoint"), "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_the_coordinator_forgot_registers_again_and_its_running_task_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let script = Scripted::default();
    script.with(|s| s.queue.push_back(assignment("long", 1, fake(300, 10), None)));
    let coordinator = start_coordinator(script.clone()).await;
    let mut agent = Agent::start(coordinator, &redis.url(), dir.path(), 1);
    let running = |s: &State| s.heartbeats.iter().flat_map(|h| &h.leases).any(|l| l.running);
    wait_until(Duration::from_secs(30), &agent, || script.with(|s| running(s))).await;

    // Redis lost the worker's record: every call is answered "unregistered" until the
    // worker registers again.
    script.with(|s| s.current_secret = None);
    wait_until(Duration::from_secs(30), &agent, || script.with(|s| s.completes.len() == 1)).await;
    let (registers, completes, refusals) =
        script.with(|s| (s.registers.clone(), s.completes.clone(), s.refusals.clone()));
    assert_eq!(registers.len(), 2, "one registration again, however many calls were refused: {registers:?}");
    assert_eq!(registers[1].worker_secret, "secret-1", "the second registration presents the first secret");
    assert!(refusals.iter().all(|r| *r == WorkerRefusal::Unregistered) && !refusals.is_empty());
    let done = &completes[0];
    assert_eq!(done.lease, Some(lease("long", 1)), "the same attempt finished");
    assert_eq!(done.worker_secret, "secret-2");
    let result = done.result.clone().unwrap();
    assert_eq!((result.steps, result.resumed_from_step), (10, 0), "the child was never restarted");
    assert!(script.with(|s| s.fails.is_empty()));
    assert!(agent.log().contains("registering again"), "{}", agent.log());
    assert_eq!(agent.terminate(Duration::from_secs(10)), Some(0));
}

#[tokio::test]
async fn a_worker_whose_id_another_process_took_stops_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    let script = Scripted::default();
    let coordinator = start_coordinator(script.clone()).await;
    let mut agent = Agent::start(coordinator, &redis.url(), dir.path(), 1);
    wait_until(Duration::from_secs(30), &agent, || script.with(|s| s.acquires > 0)).await;
    script.with(|s| s.current_secret = Some("another-process".into()));
    let code = exited(&mut agent, Duration::from_secs(20)).await;
    assert_ne!(code, Some(0));
    assert!(agent.log().contains("another process registered under this"), "{}", agent.log());
    assert_eq!(script.with(|s| s.registers.len()), 1, "a wrong secret is not answered by registering again");
}

/// The step of a reported checkpoint (0: none).
fn step_of(checkpoint: &Option<Checkpoint>) -> u64 {
    checkpoint.as_ref().map_or(0, |c| c.step)
}

/// The path of a reported checkpoint ("": none).
fn path_of(checkpoint: &Option<Checkpoint>) -> &str {
    checkpoint.as_ref().map_or("", |c| c.path.as_str())
}
