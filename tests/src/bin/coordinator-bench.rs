//! Coordinator benchmark: N simulated workers over real gRPC against `tsweep serve` on a
//! real redis-server, each looping acquire → complete as fast as it can.
//!
//! Prints task lifecycles per second and acquire latency (p50/p99) per worker count.
//! `cargo run --release -p tsweep-tests --bin coordinator-bench -- --workers 10,100,1000 --seconds 10`
//! (`--think-ms 50`: each worker pauses after a completion, for latency at an offered load).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use tonic::transport::Channel;
use tsweep_coordinator::redis_server::RedisServer;
use tsweep_proto::v1::sweep_service_client::SweepServiceClient;
use tsweep_proto::v1::worker_service_client::WorkerServiceClient;
use tsweep_proto::v1::{
    AcquireTaskRequest, CompleteTaskRequest, LeaseRef, RegisterWorkerRequest, SubmitSweepRequest, TaskResult,
};
use tsweep_proto::PROTOCOL_VERSION;
use tsweep_tests::cluster::linear_sweep_text;
use tsweep_tests::process::{free_port, serve_command, wait_for, Proc};

#[derive(Parser)]
struct Args {
    /// Simulated worker counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    workers: Vec<usize>,
    /// Measuring time per worker count.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// gRPC connections the simulated workers share (HTTP/2 multiplexes the rest).
    #[arg(long, default_value_t = 8)]
    channels: usize,
    /// Each simulated worker "trains" this long after a completion (0: closed loop, the
    /// coordinator's saturation throughput; >0: latency at an offered load).
    #[arg(long, default_value_t = 0)]
    think_ms: u64,
    /// Redis's AOF fsync policy for the run (`everysec` is what tsweep ships; `always`
    /// fsyncs before every reply).
    #[arg(long, default_value = "everysec", value_parser = ["everysec", "always", "no"])]
    appendfsync: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let redis = RedisServer::start_in(dir.path(), 0)?;
    let mut admin = redis::Client::open(redis.url())?.get_multiplexed_async_connection().await?;
    let _: () =
        redis::cmd("CONFIG").arg("SET").arg("appendfsync").arg(&args.appendfsync).query_async(&mut admin).await?;
    println!("redis appendfsync {}", args.appendfsync);
    let port = free_port()?;
    let mut cmd = serve_command(port, "", &redis.url())?;
    cmd.env("RUST_LOG", "warn");
    let _coordinator = Proc::spawn("coordinator", cmd, &dir.path().join("coordinator.log"))?;
    let url = format!("http://127.0.0.1:{port}");
    wait_for("the coordinator and its store", Duration::from_secs(30), || {
        let url = url.clone();
        async move {
            let mut client = SweepServiceClient::connect(url).await.ok()?;
            client.list_sweeps(tsweep_proto::v1::ListSweepsRequest {}).await.ok()
        }
    })
    .await?;

    println!("| simulated workers | lifecycles/s | acquire p50 ms | acquire p99 ms | complete p50 ms |");
    println!("|---|---|---|---|---|");
    for (round, &workers) in args.workers.iter().enumerate() {
        let sweep = format!("bench{round}");
        let cells = submit_bench_sweep(&url, &sweep, 60_000).await?;
        let think = Duration::from_millis(args.think_ms);
        let figures =
            run_round(&url, workers, args.channels.min(workers), Duration::from_secs(args.seconds), think).await?;
        println!(
            "| {workers} | {:.0} | {:.2} | {:.2} | {:.2} |",
            figures.lifecycles as f64 / figures.elapsed.as_secs_f64(),
            percentile(&figures.acquire_ms, 0.50),
            percentile(&figures.acquire_ms, 0.99),
            percentile(&figures.complete_ms, 0.50),
        );
        if figures.lifecycles as u64 >= cells {
            eprintln!("note: the sweep ran dry ({cells} cells); raise its size for a longer run");
        }
    }
    Ok(())
}

/// Submits [`linear_sweep_text`].
async fn submit_bench_sweep(url: &str, sweep: &str, cells: usize) -> Result<u64> {
    let text = linear_sweep_text(sweep, cells);
    let mut client = SweepServiceClient::connect(url.to_string()).await?;
    let started = Instant::now();
    let response = client
        .submit_sweep(SubmitSweepRequest {
            file_text: text,
            file_name: format!("{sweep}.toml"),
            base_dir: "/".into(),
            allow_huge: false,
            ..Default::default()
        })
        .await
        .context("submitting the bench sweep")?
        .into_inner();
    eprintln!("submitted {} cells in {:.2} s", response.cells_added, started.elapsed().as_secs_f64());
    Ok(response.cells_added)
}

struct Figures {
    lifecycles: usize,
    elapsed: Duration,
    acquire_ms: Vec<f64>,
    complete_ms: Vec<f64>,
}

async fn run_round(url: &str, workers: usize, channels: usize, duration: Duration, think: Duration) -> Result<Figures> {
    let mut pool = Vec::with_capacity(channels);
    for _ in 0..channels {
        pool.push(Channel::from_shared(url.to_string())?.connect().await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(workers);
    for w in 0..workers {
        let client = WorkerServiceClient::new(pool[w % channels].clone());
        handles.push(tokio::spawn(simulated_worker(
            client,
            format!("bench-{w}-{}", started.elapsed().as_nanos()),
            stop.clone(),
            think,
        )));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut figures =
        Figures { lifecycles: 0, elapsed: started.elapsed(), acquire_ms: Vec::new(), complete_ms: Vec::new() };
    for handle in handles {
        let (acquire, complete) = handle.await??;
        figures.lifecycles += complete.len();
        figures.acquire_ms.extend(acquire);
        figures.complete_ms.extend(complete);
    }
    figures.elapsed = started.elapsed();
    Ok(figures)
}

async fn simulated_worker(
    mut client: WorkerServiceClient<Channel>,
    worker_id: String,
    stop: Arc<AtomicBool>,
    think: Duration,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let worker_secret = client
        .register_worker(RegisterWorkerRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: worker_id.clone(),
            hostname: "bench".into(),
            slots: 1,
            gpus: 1,
            version: tsweep_proto::VERSION.into(),
            worker_secret: String::new(),
        })
        .await?
        .into_inner()
        .worker_secret;
    let (mut acquire_ms, mut complete_ms) = (Vec::new(), Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        let reply = client
            .acquire_task(AcquireTaskRequest {
                protocol_version: PROTOCOL_VERSION,
                worker_id: worker_id.clone(),
                free_gpus: 1,
                slot: 0,
                worker_secret: worker_secret.clone(),
            })
            .await?
            .into_inner();
        acquire_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        let Some(task) = reply.task else {
            tokio::time::sleep(Duration::from_millis(reply.retry_after_ms.max(10))).await;
            continue;
        };
        let t1 = Instant::now();
        let outcome = client
            .complete_task(CompleteTaskRequest {
                protocol_version: PROTOCOL_VERSION,
                worker_id: worker_id.clone(),
                lease: Some(LeaseRef { sweep: task.sweep, task_id: task.task_id, attempt: task.attempt }),
                result: Some(TaskResult {
                    metric: tsweep_proto::v1::Metric::Top1.into(),
                    val_score: Some(0.5),
                    ..Default::default()
                }),
                worker_secret: worker_secret.clone(),
            })
            .await?
            .into_inner();
        if outcome.outcome != tsweep_proto::v1::ReportOutcome::Accepted as i32 {
            bail!("completion refused: {outcome:?}");
        }
        complete_ms.push(t1.elapsed().as_secs_f64() * 1e3);
        if !think.is_zero() {
            tokio::time::sleep(think).await;
        }
    }
    Ok((acquire_ms, complete_ms))
}

fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
