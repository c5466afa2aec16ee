//! Soak benchmark: one long sweep (100,000 cells by default) worked by 1,000 simulated
//! workers over real gRPC against `tsweep serve` on a real redis-server, for 10 minutes.
//! Each simulated worker loops acquire → "train" (`--task-ms`, with heartbeats and one
//! metrics stream entry per step, as the agent sends them) → complete. Every `--sample-s`
//! it prints Redis memory (`used_memory`), the metrics stream's length and memory, the
//! coordinator's RSS, and acquire latency (p50/p99) of that window: memory must stay flat
//! (the consumer trims the stream after acking) and p99 acquire steady.
//!
//! `cargo run --release -p tsweep-tests --bin soak-bench -- --cells 100000 --workers 1000 --seconds 600`
//! (build the binaries first: `cargo build --release --bins`).

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use tonic::transport::Channel;
use tsweep_coordinator::redis_server::RedisServer;
use tsweep_proto::v1::sweep_service_client::SweepServiceClient;
use tsweep_proto::v1::worker_service_client::WorkerServiceClient;
use tsweep_proto::v1::{
    AcquireTaskRequest, CompleteTaskRequest, HeartbeatRequest, HeldLease, LeaseRef, RegisterWorkerRequest,
    SubmitSweepRequest, TaskResult,
};
use tsweep_proto::PROTOCOL_VERSION;
use tsweep_tests::cluster::linear_sweep_text;
use tsweep_tests::process::{bin_path, free_port, wait_for, Proc};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100_000)]
    cells: usize,
    #[arg(long, default_value_t = 1_000)]
    workers: usize,
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// How long one simulated task "trains".
    #[arg(long, default_value_t = 6_000)]
    task_ms: u64,
    /// Metrics entries per task (one per step).
    #[arg(long, default_value_t = 3)]
    steps: u64,
    #[arg(long, default_value_t = 10)]
    sample_s: u64,
    /// gRPC connections the simulated workers share.
    #[arg(long, default_value_t = 8)]
    channels: usize,
    #[arg(long, default_value_t = 30_000)]
    lease_ttl_ms: u64,
}

#[derive(Default)]
struct Shared {
    acquire_ms: Mutex<Vec<f64>>,
    completed: AtomicU64,
    entries: AtomicU64,
    errors: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let redis = RedisServer::start_in(dir.path(), 0)?;
    let port = free_port()?;
    let mut cmd = Command::new(bin_path("tsweep")?);
    cmd.arg("serve")
        .env("TSWEEP__LISTEN", format!("127.0.0.1:{port}"))
        .env("TSWEEP__METRICS_LISTEN", "")
        .env("TSWEEP__REDIS_URL", redis.url())
        .env("TSWEEP__LEASE_TTL_MS", args.lease_ttl_ms.to_string())
        .env("RUST_LOG", "warn");
    let coordinator = Proc::spawn("coordinator", cmd, &dir.path().join("coordinator.log"))?;
    let coordinator_pid = coordinator.pid().context("coordinator pid")?.as_raw();
    let url = format!("http://127.0.0.1:{port}");
    wait_for("the coordinator", Duration::from_secs(30), || {
        let url = url.clone();
        async move {
            let mut client = SweepServiceClient::connect(url).await.ok()?;
            client.list_sweeps(tsweep_proto::v1::ListSweepsRequest {}).await.ok()
        }
    })
    .await?;
    let submitted = submit(&url, "soak", args.cells).await?;
    let mut admin = redis::Client::open(redis.url())?.get_multiplexed_async_connection().await?;
    println!(
        "soak: {submitted} cells, {} simulated workers, {} s, task {} ms with {} metrics entries, lease TTL {} ms",
        args.workers, args.seconds, args.task_ms, args.steps, args.lease_ttl_ms
    );

    let mut pool = Vec::new();
    for _ in 0..args.channels.max(1) {
        pool.push(Channel::from_shared(url.clone())?.connect().await?);
    }
    let metrics = redis::Client::open(redis.url())?.get_multiplexed_async_connection().await?;
    let shared = Arc::new(Shared::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut handles = Vec::new();
    for w in 0..args.workers {
        let client = WorkerServiceClient::new(pool[w % pool.len()].clone());
        let worker = SimWorker {
            client,
            metrics: metrics.clone(),
            id: format!("soak-{w}"),
            task: Duration::from_millis(args.task_ms),
            steps: args.steps.max(1),
            heartbeat: Duration::from_millis(args.lease_ttl_ms / 3),
            shared: shared.clone(),
            stop: stop.clone(),
        };
        // Spread the start over one task length, as a fleet scaling up would.
        let delay = Duration::from_millis(args.task_ms * w as u64 / args.workers.max(1) as u64);
        handles.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            worker.run().await
        }));
    }

    println!("| t s | completed | redis used_memory MiB | stream entries | stream MiB | coordinator RSS MiB | acquire p50 ms | acquire p99 ms |");
    println!("|---|---|---|---|---|---|---|---|");
    let stream = "tsweep:{soak}:metrics";
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(args.seconds) {
        tokio::time::sleep(Duration::from_secs(args.sample_s)).await;
        let window: Vec<f64> = shared.acquire_ms.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default();
        let info: String = redis::cmd("INFO").arg("memory").query_async(&mut admin).await?;
        let used = info_field(&info, "used_memory").unwrap_or(0.0) / 1048576.0;
        let xlen: u64 = redis::cmd("XLEN").arg(stream).query_async(&mut admin).await.unwrap_or(0);
        let stream_bytes: Option<u64> =
            redis::cmd("MEMORY").arg("USAGE").arg(stream).query_async(&mut admin).await.unwrap_or(None);
        let rss = rss_mib(coordinator_pid);
        let row = (
            started.elapsed().as_secs(),
            shared.completed.load(Ordering::Relaxed),
            used,
            xlen,
            stream_bytes.unwrap_or(0) as f64 / 1048576.0,
            rss,
            percentile(&window, 0.50),
            percentile(&window, 0.99),
        );
        println!(
            "| {} | {} | {:.1} | {} | {:.2} | {:.1} | {:.2} | {:.2} |",
            row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7
        );
        samples.push(row);
        if shared.completed.load(Ordering::Relaxed) as usize >= submitted {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        let _ = handle.await;
    }
    let entries = shared.entries.load(Ordering::Relaxed);
    let errors = shared.errors.load(Ordering::Relaxed);
    println!("metrics entries written {entries}, call errors {errors}");
    // Memory the coordinator keeps once the load is gone: a leak keeps growing with the
    // work done, memory an allocator keeps for reuse stays at the busiest moment's level.
    tokio::time::sleep(Duration::from_secs(args.sample_s)).await;
    println!("coordinator RSS {:.1} MiB after {} s without load", rss_mib(coordinator_pid), args.sample_s);
    if let (Some(first), Some(last)) = (samples.get(samples.len().min(2).saturating_sub(1)), samples.last()) {
        println!(
            "from t={} s to t={} s: redis {:.1} -> {:.1} MiB, stream {} -> {} entries, coordinator RSS {:.1} -> {:.1} MiB, \
             acquire p99 {:.2} -> {:.2} ms",
            first.0, last.0, first.2, last.2, first.3, last.3, first.5, last.5, first.7, last.7
        );
    }
    drop(coordinator);
    Ok(())
}

struct SimWorker {
    client: WorkerServiceClient<Channel>,
    metrics: redis::aio::MultiplexedConnection,
    id: String,
    task: Duration,
    steps: u64,
    heartbeat: Duration,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl SimWorker {
    async fn run(mut self) {
        let registered = self
            .client
            .register_worker(RegisterWorkerRequest {
                protocol_version: PROTOCOL_VERSION,
                worker_id: self.id.clone(),
                hostname: "soak".into(),
                slots: 1,
                gpus: 1,
                version: tsweep_proto::VERSION.into(),
                worker_secret: String::new(),
            })
            .await;
        let worker_secret = match registered {
            Ok(reply) => reply.into_inner().worker_secret,
            Err(_) => {
                self.shared.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        while !self.stop.load(Ordering::Relaxed) {
            let t0 = Instant::now();
            let reply = self
                .client
                .acquire_task(AcquireTaskRequest {
                    protocol_version: PROTOCOL_VERSION,
                    worker_id: self.id.clone(),
                    free_gpus: 1,
                    slot: 0,
                    worker_secret: worker_secret.clone(),
                })
                .await;
            let elapsed = t0.elapsed().as_secs_f64() * 1e3;
            if let Ok(mut v) = self.shared.acquire_ms.lock() {
                v.push(elapsed);
            }
            let task = match reply {
                Ok(reply) => match reply.into_inner() {
                    tsweep_proto::v1::AcquireTaskResponse { task: Some(task), .. } => task,
                    reply => {
                        tokio::time::sleep(Duration::from_millis(reply.retry_after_ms.max(100))).await;
                        continue;
                    }
                },
                Err(_) => {
                    self.shared.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let lease = LeaseRef { sweep: task.sweep.clone(), task_id: task.task_id.clone(), attempt: task.attempt };
            let stream = format!("tsweep:{{{}}}:metrics", task.sweep);
            let step_time = self.task / self.steps as u32;
            let mut since_beat = Duration::ZERO;
            for step in 1..=self.steps {
                tokio::time::sleep(step_time).await;
                since_beat += step_time;
                if since_beat >= self.heartbeat {
                    since_beat = Duration::ZERO;
                    let beat = HeartbeatRequest {
                        protocol_version: PROTOCOL_VERSION,
                        worker_id: self.id.clone(),
                        leases: vec![HeldLease { lease: Some(lease.clone()), running: true, ..Default::default() }],
                        worker_secret: worker_secret.clone(),
                    };
                    if self.client.heartbeat(beat).await.is_err() {
                        self.shared.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let appended: redis::RedisResult<Option<String>> = redis::cmd("XADD")
                    .arg(&stream)
                    .arg("NOMKSTREAM")
                    .arg("*")
                    .arg("task_id")
                    .arg(&task.task_id)
                    .arg("attempt")
                    .arg(task.attempt)
                    .arg("step")
                    .arg(step)
                    .arg("total_steps")
                    .arg(self.steps)
                    .arg("loss")
                    .arg(1.0 / step as f64)
                    .arg("lr")
                    .arg(0.01)
                    .arg("images_per_s")
                    .arg(100.0)
                    .arg("ts_ms")
                    .arg(0)
                    .query_async(&mut self.metrics)
                    .await;
                match appended {
                    Ok(_) => self.shared.entries.fetch_add(1, Ordering::Relaxed),
                    Err(_) => self.shared.errors.fetch_add(1, Ordering::Relaxed),
                };
            }
            let done = self
                .client
                .complete_task(CompleteTaskRequest {
                    protocol_version: PROTOCOL_VERSION,
                    worker_id: self.id.clone(),
                    lease: Some(lease),
                    result: Some(TaskResult {
                        metric: tsweep_proto::v1::Metric::Top1.into(),
                        val_score: Some(0.5),
                        ..Default::default()
                    }),
                    worker_secret: worker_secret.clone(),
                })
                .await;
            match done {
                Ok(_) => self.shared.completed.fetch_add(1, Ordering::Relaxed),
                Err(_) => self.shared.errors.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

/// Submits [`linear_sweep_text`].
async fn submit(url: &str, sweep: &str, cells: usize) -> Result<usize> {
    let text = linear_sweep_text(sweep, cells);
    let mut client = SweepServiceClient::connect(url.to_string())
        .await?
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let response = client
        .submit_sweep(SubmitSweepRequest {
            file_text: text,
            file_name: format!("{sweep}.toml"),
            base_dir: "/".into(),
            allow_huge: false,
            ..Default::default()
        })
        .await
        .context("submitting the soak sweep")?
        .into_inner();
    Ok(response.cells_added as usize)
}

fn info_field(info: &str, name: &str) -> Option<f64> {
    info.lines().find_map(|line| line.strip_prefix(&format!("{name}:")).and_then(|v| v.trim().parse().ok()))
}

fn rss_mib(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
