//! Benchmark of the store alone (no gRPC): a private redis-server, N simulated workers
//! each looping acquire → complete, printing task lifecycles per second and acquire
//! latency percentiles, plus the time to submit a large grid and the cost of the worker
//! secret check every worker call pays (`Store::authenticate_worker`, against a PING on the
//! same connection, alternating).
//!
//! `cargo run -p tsweep-coordinator --example store_bench -- [CELLS] [WORKERS,...]`
//! (defaults: 20000 cells, workers 10,100,1000).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tsweep_coordinator::redis_server::RedisServer;
use tsweep_coordinator::store::{new_worker_secret, Store, StoreOptions, WorkerAuth, WorkerInfo};
use tsweep_coordinator::sweepfile::{task_id, Cell, ExpandedSweep, SweepSettings};
use tsweep_proto::cell::{
    CellSpec, DatasetFormat, DatasetSpec, Metric, ModelSource, ModelSpec, Regime, Stage, TrainSettings, ValPolicy,
};
use tsweep_proto::v1::{LeaseRef, TaskResult};

fn cells(sweep: &str, n: usize) -> Vec<Cell> {
    (0..n)
        .map(|i| {
            let mut hparams = BTreeMap::new();
            hparams.insert("lr".to_string(), 1e-4 * (i % 57 + 1) as f64);
            hparams.insert("weight_decay".to_string(), 1e-6 * (i / 57) as f64);
            let spec = CellSpec {
                sweep: sweep.to_string(),
                stage: Stage::Grid,
                regime: Regime::Finetune,
                model: ModelSpec {
                    name: format!("model{}", i % 16),
                    source: ModelSource::Builtin,
                    arch: "resnet50".into(),
                    weights: Some(PathBuf::from("/weights/resnet50.safetensors")),
                    imagenet_top1: Some(76.1),
                    image_size: 224,
                    pretrained: None,
                    normalize: Default::default(),
                },
                dataset: DatasetSpec {
                    name: format!("dataset{}", (i / 16) % 12),
                    format: DatasetFormat::Imagefolder,
                    path: PathBuf::from("/data/ds"),
                    metric: Metric::Top1,
                    val: ValPolicy::Official,
                    num_classes: None,
                },
                hparams,
                train: TrainSettings {
                    eval_every: 1000,
                    loader_threads: 8,
                    lbfgs_max_iter: 0,
                    ..TrainSettings::defaults_for(Regime::Finetune)
                },
                seed: (i / (57 * 16 * 12)) as u64,
                precision: Default::default(),
                gpus: 1,
                max_attempts: 3,
                fake: None,
            };
            Cell { id: task_id(&spec), spec, after: None }
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let worker_counts: Vec<usize> = args
        .get(2)
        .map(|a| a.split(',').filter_map(|w| w.parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 100, 1000]);
    let server = RedisServer::start_temp()?;
    let store = Store::connect(&server.url(), StoreOptions::default()).await?;

    let big = ExpandedSweep {
        name: "submit-bench".into(),
        settings: SweepSettings { max_attempts: 3 },
        cells: cells("submit-bench", n),
    };
    let started = Instant::now();
    let outcome = store.submit(&big).await?;
    let took = started.elapsed();
    println!(
        "submit: {} cells in {:.2} s ({:.0} cells/s)",
        outcome.added,
        took.as_secs_f64(),
        outcome.added as f64 / took.as_secs_f64()
    );
    let started = Instant::now();
    let again = store.submit(&big).await?;
    println!("resubmit: {} new of {} in {:.2} s", again.added, again.total, started.elapsed().as_secs_f64());
    store.cancel_sweep("submit-bench").await?;

    // The secret check in front of every acquire, heartbeat and report: one script call.
    let secret = new_worker_secret();
    let info =
        WorkerInfo { worker_id: "auth-bench".into(), hostname: "bench".into(), slots: 1, gpus: 1, version: "b".into() };
    store.register_worker(&info, &secret, "").await?;
    let (mut ping, mut auth) = (Vec::new(), Vec::new());
    for _ in 0..2_000 {
        let t = Instant::now();
        store.ping().await?;
        ping.push(t.elapsed());
        let t = Instant::now();
        if store.authenticate_worker("auth-bench", &secret).await? != WorkerAuth::Verified {
            return Err("the bench worker's secret was refused".into());
        }
        auth.push(t.elapsed());
    }
    ping.sort();
    auth.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "worker secret check: p50 {:.0} us p99 {:.0} us; PING p50 {:.0} us p99 {:.0} us (2,000 each, alternating)",
        us(percentile(&auth, 0.5)),
        us(percentile(&auth, 0.99)),
        us(percentile(&ping, 0.5)),
        us(percentile(&ping, 0.99))
    );

    for workers in worker_counts {
        let name = format!("bench-{workers}");
        let sweep =
            ExpandedSweep { name: name.clone(), settings: SweepSettings { max_attempts: 3 }, cells: cells(&name, n) };
        store.submit(&sweep).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut handles = Vec::new();
        for w in 0..workers {
            let store = store.clone();
            let stop = stop.clone();
            handles.push(tokio::spawn(async move {
                let worker = format!("w{w}");
                let mut latencies = Vec::new();
                let mut done = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let Ok(Some(a)) = store.acquire(&worker, 1).await else { break };
                    latencies.push(t.elapsed());
                    let lease = LeaseRef { sweep: a.sweep, task_id: a.task_id, attempt: a.attempt };
                    let result = TaskResult {
                        metric: tsweep_proto::v1::Metric::Top1.into(),
                        val_score: Some(0.5),
                        ..Default::default()
                    };
                    if store.complete(&worker, &lease, &result).await.is_ok() {
                        done += 1;
                    }
                }
                (done, latencies)
            }));
        }
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        let mut all = Vec::new();
        let mut total = 0;
        let mut waiting = futures::future::join_all(handles);
        tokio::select! {
            results = &mut waiting => {
                for r in results { let (d, l) = r?; total += d; all.extend(l); }
            }
            _ = &mut deadline => {
                stop.store(true, Ordering::Relaxed);
                for r in waiting.await { let (d, l) = r?; total += d; all.extend(l); }
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        all.sort();
        println!(
            "workers {workers:>5}: {total} lifecycles in {elapsed:.2} s = {:.0}/s; acquire p50 {:.2} ms p99 {:.2} ms",
            total as f64 / elapsed,
            percentile(&all, 0.5).as_secs_f64() * 1e3,
            percentile(&all, 0.99).as_secs_f64() * 1e3
        );
        store.cancel_sweep(&name).await?;
    }
    // Server-side cost per command (Redis CPU, excluding network and queueing).
    let mut conn = store.connection();
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await?;
    for line in stats.lines().filter(|l| l.starts_with("cmdstat_evalsha") || l.starts_with("cmdstat_smembers")) {
        println!("redis {line}");
    }
    Ok(())
}
