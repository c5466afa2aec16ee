//! Big-operations benchmark: a sweep of N cells (default 1,000,000) through the real CLI
//! against `tsweep serve` on a real redis-server (AOF on, as shipped): submit, submit
//! again (every cell known), cancel, retry and `delete --force`.
//!
//! Per phase it prints the wall time, the coordinator's peak RSS (sampled every 50 ms from
//! /proc), the scripts Redis ran and their mean duration (`INFO commandstats`), Redis's
//! CPU time per script (`INFO cpu`: unlike wall times, not inflated by a busy machine), the
//! longest Redis command of the phase (SLOWLOG, every command over 1 ms is logged) and how
//! many took over 50 ms, and what another sweep's `GetSweep` calls saw
//! meanwhile (one every 10 ms: slowest answer, failures).
//!
//! `cargo run --release -p tsweep-tests --bin bigops-bench -- --cells 1000000`
//! (`--tsweep PATH`: another build of the `tsweep` binary, e.g. an older one, to compare).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use tonic::transport::Channel;
use tsweep_coordinator::redis_server::RedisServer;
use tsweep_proto::v1::sweep_service_client::SweepServiceClient;
use tsweep_proto::v1::{GetSweepRequest, SubmitSweepRequest};
use tsweep_tests::process::{bin_path, free_port, wait_for, Proc};

#[derive(Parser)]
struct Args {
    /// Cells of the big sweep (a multiple of 10,000: 10 models × 10 datasets × lr × wd).
    #[arg(long, default_value_t = 1_000_000)]
    cells: u64,
    /// The `tsweep` binary to run (default: the one built beside this bench).
    #[arg(long)]
    tsweep: Option<PathBuf>,
    /// Phases to run, comma-separated, in this order.
    #[arg(long, value_delimiter = ',', default_value = "submit,resubmit,cancel,retry,delete")]
    phases: Vec<String>,
}

/// The big sweep's file: 10 models × 10 datasets × a lr × wd grid (fake executor settings).
fn sweep_file(cells: u64) -> Result<String> {
    if !cells.is_multiple_of(10_000) || cells == 0 {
        bail!("--cells must be a positive multiple of 10000");
    }
    let per_pair = cells / 100;
    let lrs = (per_pair as f64).sqrt().floor() as u64;
    let lrs = (1..=lrs).rev().find(|n| per_pair.is_multiple_of(*n)).unwrap_or(1);
    let wds = per_pair / lrs;
    let mut text = String::from(
        "name = \"big\"\nallow_random_init = true\n[defaults]\nsteps = 10\nbatch_size = 8\ngpus = 0\n[fake]\nsleep_ms = 10\n",
    );
    for m in 0..10 {
        text.push_str(&format!(
            "[[models]]\nname = \"m{m}\"\nsource = \"builtin\"\narch = \"resnet18\"\nimage_size = 32\n"
        ));
    }
    for d in 0..10 {
        text.push_str(&format!(
            "[[datasets]]\nname = \"d{d}\"\nformat = \"imagefolder\"\npath = \"/data/d{d}\"\nval = {{ kind = \"official\" }}\n"
        ));
    }
    text.push_str(&format!(
        "[regimes.scratch]\nlr = {{ logspace = [-6, -1, {lrs}] }}\nweight_decay = {{ logspace = [-7, -2, {wds}] }}\n"
    ));
    Ok(text)
}

/// Peak RSS (KiB) of a process, sampled while `running`.
fn sample_rss(pid: i32, running: Arc<AtomicBool>, peak: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while running.load(Ordering::Relaxed) {
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                let rss = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                    .unwrap_or(0);
                peak.fetch_max(rss, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

/// Scripts run since the last reset and their mean duration (µs), from `INFO commandstats`
/// (`cmdstat_evalsha`); resets the statistics.
async fn script_stats(conn: &mut redis::aio::MultiplexedConnection) -> Result<(u64, f64)> {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await?;
    let mut calls = 0;
    let mut mean = 0.0;
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_evalsha:") else { continue };
        for part in rest.split(',') {
            match part.split_once('=') {
                Some(("calls", n)) => calls = n.parse().unwrap_or(0),
                Some(("usec_per_call", us)) => mean = us.parse().unwrap_or(0.0),
                _ => {}
            }
        }
    }
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(conn).await?;
    Ok((calls, mean))
}

/// CPU seconds Redis has used (user + system, `INFO cpu`): on a shared machine the
/// slowlog's wall times include the time Redis waited for a core; its CPU time does not.
async fn redis_cpu(conn: &mut redis::aio::MultiplexedConnection) -> Result<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    let field = |name: &str| {
        info.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0)
    };
    Ok(field("used_cpu_user:") + field("used_cpu_sys:"))
}

/// The slowest command since the last reset (µs, name) and how many took over 50 ms.
async fn slowlog(conn: &mut redis::aio::MultiplexedConnection) -> Result<(u64, String, usize)> {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG").arg("GET").arg(-1).query_async(conn).await?;
    let mut slowest = (0u64, String::new());
    let mut over_50ms = 0;
    for entry in entries {
        let redis::Value::Array(fields) = entry else { continue };
        let micros = match fields.get(2) {
            Some(redis::Value::Int(us)) => *us as u64,
            _ => continue,
        };
        let name = match fields.get(3) {
            Some(redis::Value::Array(args)) => match args.first() {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            },
            _ => String::new(),
        };
        if micros > 50_000 {
            over_50ms += 1;
        }
        if micros > slowest.0 {
            slowest = (micros, name);
        }
    }
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query_async(conn).await?;
    Ok((slowest.0, slowest.1, over_50ms))
}

struct Probe {
    stop: Arc<AtomicBool>,
    slowest_us: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

fn probe(mut client: SweepServiceClient<Channel>) -> Probe {
    let (stop, slowest_us, failed, calls) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let task = {
        let (stop, slowest_us, failed, calls) = (stop.clone(), slowest_us.clone(), failed.clone(), calls.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let answer = client.get_sweep(GetSweepRequest { sweep: "probe".into() }).await;
                slowest_us.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                calls.fetch_add(1, Ordering::Relaxed);
                if answer.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    Probe { stop, slowest_us, failed, calls, task }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let tsweep = match &args.tsweep {
        Some(path) => path.clone(),
        None => bin_path("tsweep")?,
    };
    let dir = tempfile::tempdir()?;
    let redis = RedisServer::start_in(dir.path(), 0)?;
    let mut admin = redis::Client::open(redis.url())?.get_multiplexed_async_connection().await?;
    for (key, value) in [("slowlog-log-slower-than", "1000"), ("slowlog-max-len", "100000")] {
        let _: () = redis::cmd("CONFIG").arg("SET").arg(key).arg(value).query_async(&mut admin).await?;
    }
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let mut serve = Command::new(&tsweep);
    serve
        .arg("serve")
        .env("TSWEEP__LISTEN", format!("127.0.0.1:{port}"))
        .env("TSWEEP__METRICS_LISTEN", "")
        .env("TSWEEP__REDIS_URL", redis.url())
        .env("RUST_LOG", "warn");
    let coordinator = Proc::spawn("coordinator", serve, &dir.path().join("coordinator.log"))?;
    let pid = coordinator.pid().context("coordinator pid")?.as_raw();
    let client = wait_for("the coordinator and its store", Duration::from_secs(30), || {
        let url = url.clone();
        async move {
            let mut client = SweepServiceClient::connect(url).await.ok()?;
            client.list_sweeps(tsweep_proto::v1::ListSweepsRequest {}).await.ok()?;
            Some(client)
        }
    })
    .await?;
    let probe_file = sweep_file(10_000)?.replace("name = \"big\"", "name = \"probe\"");
    client
        .clone()
        .submit_sweep(SubmitSweepRequest {
            file_text: probe_file,
            file_name: "probe.toml".into(),
            base_dir: "/".into(),
            ..Default::default()
        })
        .await
        .context("submitting the probe sweep")?;
    let file = dir.path().join("big.toml");
    std::fs::write(&file, sweep_file(args.cells)?)?;
    println!("tsweep: {}", tsweep.display());
    println!("cells: {}", args.cells);
    println!();
    println!(
        "| phase | wall s | CLI exit | coordinator peak RSS MiB | scripts | mean script ms | Redis CPU ms per script | longest Redis command ms | commands > 50 ms | other sweep: slowest GetSweep ms | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let _ = slowlog(&mut admin).await?;
    let _ = script_stats(&mut admin).await?;
    for phase in &args.phases {
        let cli: Vec<&str> = match phase.as_str() {
            "submit" | "resubmit" => vec!["submit", "big.toml"],
            "cancel" => vec!["cancel", "big"],
            "retry" => vec!["retry", "big"],
            "delete" => vec!["delete", "--force", "big"],
            other => bail!("unknown phase {other}"),
        };
        let running = Arc::new(AtomicBool::new(true));
        let peak = Arc::new(AtomicU64::new(0));
        let sampler = sample_rss(pid, running.clone(), peak.clone());
        let probe = probe(client.clone());
        let started = Instant::now();
        let cpu_before = redis_cpu(&mut admin).await?;
        let status = run_cli(&tsweep, dir.path(), &url, &cli)?;
        let cpu = redis_cpu(&mut admin).await? - cpu_before;
        let wall = started.elapsed();
        running.store(false, Ordering::Relaxed);
        let _ = sampler.join();
        probe.stop.store(true, Ordering::Relaxed);
        let _ = probe.task.await;
        let (slowest_us, command, over_50ms) = slowlog(&mut admin).await?;
        let (scripts, mean_us) = script_stats(&mut admin).await?;
        println!(
            "| {phase} | {:.1} | {} | {:.0} | {scripts} | {:.1} | {:.1} | {:.1} ({command}) | {over_50ms} | {:.1} | {} of {} |",
            wall.as_secs_f64(),
            status.map_or("signal".to_string(), |c| c.to_string()),
            peak.load(Ordering::Relaxed) as f64 / 1024.0,
            mean_us / 1000.0,
            cpu * 1000.0 / scripts.max(1) as f64,
            slowest_us as f64 / 1000.0,
            probe.slowest_us.load(Ordering::Relaxed) as f64 / 1000.0,
            probe.failed.load(Ordering::Relaxed),
            probe.calls.load(Ordering::Relaxed),
        );
    }
    drop(coordinator);
    Ok(())
}

fn run_cli(tsweep: &Path, dir: &Path, url: &str, args: &[&str]) -> Result<Option<i32>> {
    let out = Command::new(tsweep).current_dir(dir).args(["--coordinator", url]).args(args).output()?;
    if !out.status.success() {
        eprintln!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.status.code())
}
