//! `tsweep local FILE --workers N`: a whole sweep on one machine.
//!
//! 1. parse and expand the file (bad input stops here, nothing started);
//! 2. without `--redis-url`, start a private `redis-server` with its data in `<out>/redis/`
//!    on a free loopback port (the shipped `deploy/redis/redis.conf`, AOF on), by PID, and
//!    restart it with its AOF if it stops answering. The data outlives the run: running
//!    the same file with the same `--out` again resumes a stopped or failed run (cells
//!    that succeeded keep their results, cut runs resume from their checkpoints);
//! 3. start the coordinator in this process on a free loopback port (no /metrics);
//! 4. spawn N `tsweep-worker` processes (one slot each), logs in `<out>/logs/`;
//! 5. submit, watch to the end, print the results table, write the report to `<out>`
//!    (default `./tsweep-out/<sweep>`) and print its path;
//! 6. stop what it started (workers with SIGTERM, then the coordinator, then Redis), also
//!    on Ctrl-C, SIGTERM or SIGHUP (a closed terminal). The workers and redis-server run in
//!    process groups of their own, so a signal from the terminal reaches only `local`,
//!    which stops them in that order.
//!
//! Exit code: 0 when every cell succeeded (diverged runs are results, not failures);
//! 4 when the sweep ended with failed cells (the results table and the report are still
//! written); 3 when Redis, the coordinator or a worker could not be started; 2 for a bad
//! sweep file; 1 when interrupted.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::client::{self, SweepClient};
use super::output;
use super::watch::watch_until_done;
use super::{
    default_out_dir, failed_cells_error, serve_error, wait_for_shutdown_signal, write_report, Cli, CliError, LocalArgs,
    SweepSource, WATCH_SETTLE,
};
use crate::config::{ConfigOverrides, ServiceConfig};
use crate::redis_server::RedisServer;
use crate::server::RunningCoordinator;

/// Name of the worker binary looked up next to `tsweep`.
pub const WORKER_BINARY: &str = "tsweep-worker";
/// How long the in-process coordinator may take to answer.
const COORDINATOR_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long workers get to drain after SIGTERM before they are killed.
const WORKER_STOP_GRACE: Duration = Duration::from_secs(30);
/// How long the private redis-server may take to write its AOF out and exit on SIGTERM.
const REDIS_STOP_GRACE: Duration = Duration::from_secs(10);
/// How often `local` checks that its private redis-server still answers.
const REDIS_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long `local` waits for its workers to register before it checks they can take
/// every cell.
const WORKERS_REGISTER_WAIT: Duration = Duration::from_secs(15);
/// Refits are scheduled this often in local mode (snappier than the service default).
const LOCAL_FINALS_INTERVAL_MS: u64 = 500;

pub async fn run(cli: &Cli, args: &LocalArgs) -> Result<(), CliError> {
    let source = SweepSource::read(&args.file)?;
    let sweep = source.plan(args.allow_huge)?;
    if args.workers == 0 {
        return Err(CliError::BadInput("--workers must be at least 1".to_string()));
    }
    let worker_bin = find_worker_binary(args.worker_bin.as_deref())?;
    let out = default_out_dir(&sweep.name, args.out.as_deref());
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| CliError::Other(format!("cannot create {}: {e}", logs.display())))?;

    let mut stack = LocalStack::default();
    let outcome = tokio::select! {
        result = run_sweep(cli, args, &source, &sweep.name, &worker_bin, &out, &logs, &mut stack) => result,
        _ = wait_for_shutdown_signal() => {
            eprintln!("interrupted: stopping workers, coordinator and redis");
            Err(CliError::Other("interrupted".to_string()))
        }
    };
    stack.stop().await;
    if outcome.is_err() {
        eprintln!("logs: {}", logs.display());
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn run_sweep(
    cli: &Cli,
    args: &LocalArgs,
    source: &SweepSource,
    sweep: &str,
    worker_bin: &Path,
    out: &Path,
    logs: &Path,
    stack: &mut LocalStack,
) -> Result<(), CliError> {
    let redis_url = match &args.redis_url {
        Some(url) => url.clone(),
        None => {
            let dir = out.join("redis");
            std::fs::create_dir_all(&dir)
                .map_err(|e| CliError::Other(format!("cannot create {}: {e}", dir.display())))?;
            let data = dir.clone();
            let server = tokio::task::spawn_blocking(move || RedisServer::start_in(&data, 0))
                .await
                .map_err(|e| CliError::Other(format!("redis-server start: {e}")))?
                .map_err(|e| CliError::Unavailable(format!("cannot start a private redis-server: {e}")))?;
            let url = server.url();
            eprintln!(
                "redis: {url} (private, stopped at the end; data in {}: the same command resumes this run)",
                dir.display()
            );
            let server = Arc::new(Mutex::new(Some(server)));
            let stop = CancellationToken::new();
            stack.redis_watchdog = Some((stop.clone(), tokio::spawn(redis_watchdog(server.clone(), stop))));
            stack.redis = Some(server);
            url
        }
    };

    let overrides = ConfigOverrides {
        listen: Some("127.0.0.1:0".to_string()),
        metrics_listen: Some(String::new()),
        redis_url: Some(redis_url.clone()),
        finals_interval_ms: Some(LOCAL_FINALS_INTERVAL_MS),
        auth_token: cli.token.clone(),
        ..ConfigOverrides::default()
    };
    let config =
        ServiceConfig::load(cli.config.as_deref(), overrides).map_err(|e| CliError::BadInput(e.to_string()))?;
    let (user_token, worker_token) = (config.user_token(), config.worker_token());
    let coordinator = crate::server::start(config).await.map_err(serve_error)?;
    let url = coordinator.url();
    stack.coordinator = Some(coordinator);
    let mut client = wait_for_coordinator(&url, user_token).await?;
    eprintln!("coordinator: {url} (in process)");

    let checkpoint_root = args.checkpoint_root.clone().unwrap_or_else(|| out.join("checkpoints"));
    let checkpoint_root = std::path::absolute(&checkpoint_root).unwrap_or(checkpoint_root);
    for index in 0..args.workers {
        let child = spawn_worker(
            cli,
            args,
            worker_bin,
            &url,
            &redis_url,
            worker_token.as_deref(),
            &checkpoint_root,
            logs,
            index,
        )?;
        stack.workers.push(child);
    }
    eprintln!(
        "workers: {} × {} ({} executor), logs in {}",
        args.workers,
        worker_bin.display(),
        args.executor.name(),
        logs.display()
    );

    let response = source.submit(&client, args.allow_huge, false).await?;
    eprint!("{}", output::submit_table(&response));
    warn_unplaceable(&mut client, sweep, args.workers).await;

    let summary = tokio::select! {
        summary = watch_until_done(&mut client, sweep, WATCH_SETTLE, false) => summary?,
        dead = stack.all_workers_exited() => return Err(CliError::Unavailable(format!(
            "every worker exited before the sweep ended ({dead}); see {}", logs.display()
        ))),
    };
    let mut tasks = client::all_tasks(&mut client, sweep).await?;
    output::sort_tasks(&mut tasks);
    print!("{}", output::results_table(&tasks));
    println!("{}", output::counts_line(&summary.counts.unwrap_or_default()));
    // The last finals' metrics entries are merged a moment after they end.
    let written = write_report(&mut client, &tasks, out, Duration::from_secs(10)).await?;
    print!("{}", written.terminal_tables);
    println!("report: {}", written.index_html.display());
    failed_cells_error(&summary)
}

/// Once the workers registered (or after [`WORKERS_REGISTER_WAIT`]), warns about cells
/// they cannot take (the coordinator's `blocked` reasons: a cell needing GPUs on a machine
/// whose workers have none sits pending for ever).
async fn warn_unplaceable(client: &mut SweepClient, sweep: &str, workers: u32) {
    let deadline = Instant::now() + WORKERS_REGISTER_WAIT;
    loop {
        let request = tsweep_proto::v1::GetSweepRequest { sweep: sweep.to_string() };
        let Ok(summary) = client.get_sweep(request).await.map(|r| r.into_inner()) else { return };
        if summary.workers >= workers || Instant::now() >= deadline {
            for block in &summary.blocked {
                let fix = match block.max_worker_gpus {
                    0 => "`gpus = 0` in the sweep file runs them on CPU".to_string(),
                    most => format!("give them at most `gpus = {most}` in the sweep file"),
                };
                eprintln!("warning: {}; they stay pending ({fix})", output::blocked_line(block));
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What `local` started, stopped in reverse order.
#[derive(Default)]
struct LocalStack {
    redis: Option<Arc<Mutex<Option<RedisServer>>>>,
    redis_watchdog: Option<(CancellationToken, JoinHandle<()>)>,
    coordinator: Option<RunningCoordinator>,
    workers: Vec<Child>,
}

impl LocalStack {
    /// Resolves once every worker process has exited (never if there are none running).
    async fn all_workers_exited(&mut self) -> String {
        loop {
            let mut statuses = Vec::new();
            for worker in &mut self.workers {
                match worker.try_wait() {
                    Ok(Some(status)) => statuses.push(status.to_string()),
                    Ok(None) => break,
                    Err(e) => statuses.push(e.to_string()),
                }
            }
            if !self.workers.is_empty() && statuses.len() == self.workers.len() {
                statuses.dedup();
                return statuses.join(", ");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn stop(&mut self) {
        // Workers first: on SIGTERM they checkpoint, release their leases and exit.
        for worker in &self.workers {
            if let Some(pid) = worker.id() {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            }
        }
        let deadline = Instant::now() + WORKER_STOP_GRACE;
        for worker in &mut self.workers {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, worker.wait()).await.is_err() {
                tracing::warn!(pid = worker.id(), "worker did not stop after SIGTERM; killing it");
                let _ = worker.kill().await;
            }
        }
        self.workers.clear();
        if let Some(coordinator) = self.coordinator.take() {
            if let Err(error) = coordinator.shutdown().await {
                tracing::warn!(%error, "coordinator stopped with an error");
            }
        }
        if let Some((stop, watchdog)) = self.redis_watchdog.take() {
            stop.cancel();
            let _ = watchdog.await;
        }
        if let Some(redis) = self.redis.take() {
            // SIGTERM first: redis-server writes its AOF out before it exits, so a re-run
            // finds everything recorded (its data directory under `<out>` stays).
            let _ = tokio::task::spawn_blocking(move || {
                let server =
                    redis.lock().map(|mut guard| guard.take()).unwrap_or_else(|poisoned| poisoned.into_inner().take());
                if let Some(mut server) = server {
                    server.stop(REDIS_STOP_GRACE);
                }
            })
            .await;
        }
    }
}

/// Brings the private redis-server back (same port, same AOF) when it stops answering,
/// e.g. killed from outside: the coordinator and the workers reconnect with backoff and
/// the sweep goes on.
async fn redis_watchdog(server: Arc<Mutex<Option<RedisServer>>>, stop: CancellationToken) {
    let port = match server.lock() {
        Ok(guard) => guard.as_ref().map(RedisServer::port),
        Err(_) => None,
    };
    let Some(port) = port else { return };
    let mut misses = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REDIS_CHECK_EVERY) => {}
        }
        let answers = tokio::net::TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port)).await.is_ok();
        misses = if answers { 0 } else { misses + 1 };
        if misses < 2 || stop.is_cancelled() {
            continue;
        }
        tracing::warn!(port, "private redis-server stopped answering; restarting it with its AOF");
        eprintln!("redis on port {port} went away; restarting it (same data)");
        let server = server.clone();
        let restarted = tokio::task::spawn_blocking(move || match server.lock() {
            Ok(mut guard) => guard.as_mut().map(RedisServer::restart),
            Err(_) => None,
        })
        .await;
        match restarted {
            Ok(Some(Err(error))) => tracing::warn!(%error, "cannot restart the private redis-server"),
            Ok(Some(Ok(()))) => misses = 0,
            _ => {}
        }
    }
}

async fn wait_for_coordinator(url: &str, token: Option<String>) -> Result<SweepClient, CliError> {
    let started = Instant::now();
    loop {
        match client::connect(url, token.clone(), None).await {
            Ok(client) => return Ok(client),
            Err(e) if started.elapsed() > COORDINATOR_READY_TIMEOUT => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// `--worker-bin`, else `tsweep-worker` beside the running `tsweep`, else on PATH.
pub fn find_worker_binary(explicit: Option<&Path>) -> Result<PathBuf, CliError> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(CliError::BadInput(format!("--worker-bin {}: no such file", path.display())))
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(WORKER_BINARY)))
        .filter(|p| p.is_file());
    if let Some(path) = beside {
        return Ok(path);
    }
    // Test binaries live in target/<profile>/deps; the worker is one level up.
    let above = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().and_then(Path::parent).map(|dir| dir.join(WORKER_BINARY)))
        .filter(|p| p.is_file());
    if let Some(path) = above {
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join(WORKER_BINARY)).find(|p| p.is_file()))
        .unwrap_or_default();
    on_path.ok_or_else(|| {
        CliError::Unavailable(format!(
            "cannot find {WORKER_BINARY} next to tsweep or on PATH (build it: cargo build -p tsweep-worker, or pass --worker-bin)"
        ))
    })
}

#[allow(clippy::too_many_arguments)]
fn spawn_worker(
    cli: &Cli,
    args: &LocalArgs,
    worker_bin: &Path,
    coordinator: &str,
    redis_url: &str,
    token: Option<&str>,
    checkpoint_root: &Path,
    logs: &Path,
    index: u32,
) -> Result<Child, CliError> {
    let log_path = logs.join(format!("worker-{index}.log"));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| CliError::Other(format!("cannot create {}: {e}", log_path.display())))?;
    let log_err = log.try_clone().map_err(|e| CliError::Other(format!("cannot open {}: {e}", log_path.display())))?;
    let mut command = Command::new(worker_bin);
    command
        .arg("--coordinator")
        .arg(coordinator)
        .arg("--redis-url")
        .arg(redis_url)
        .arg("--slots")
        .arg("1")
        // The workers share this machine's cores: each task gets its share, no oversubscription.
        .arg("--cpu-threads")
        .arg(cpu_threads_per_worker(args.workers).to_string())
        .arg("--executor")
        .arg(args.executor.name())
        .arg("--checkpoint-root")
        .arg(checkpoint_root)
        .arg("--worker-id")
        .arg(format!("local-{}-{index}", std::process::id()))
        .arg("--log-format")
        .arg(cli.log_format.name());
    if let Some(device) = &args.device {
        command.arg("--device").arg(device);
    }
    if let Some(cache) = &args.cache_dir {
        command.arg("--cache-dir").arg(cache);
    }
    if let Some(token) = token {
        command.arg("--token").arg(token);
    }
    // A process group of its own: Ctrl-C or a closed terminal signals `local` only, which
    // then stops the workers in order (they would otherwise die at once, unreaped).
    command.stdin(Stdio::null()).stdout(log).stderr(log_err).kill_on_drop(true).process_group(0);
    command.spawn().map_err(|e| CliError::Unavailable(format!("cannot start {}: {e}", worker_bin.display())))
}

/// Cores / workers (at least 1): libtorch threads for each local worker's tasks.
fn cpu_threads_per_worker(workers: u32) -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    (cores / workers.max(1)).max(1)
}
