//! The chaos suite: a fake sweep of thousands of cells on a real cluster (redis-server with
//! its AOF, `tsweep serve`, `tsweep-worker` agents with the fake executor) under a seeded
//! random schedule of faults, then the invariants users rely on, checked from the outside:
//!
//! - every cell succeeded exactly once (`accepted_completions == 1`);
//! - no retry budget was spent (`retries_used == 0`: lost and preempted attempts are free);
//! - no attempt of a healthy worker was lost (no lease of a worker that was never killed
//!   or stopped was reaped, and none of them was told LEASE_LOST): an outage of the
//!   control plane costs nothing;
//! - counts equal states (the counts hash, the per-state indexes and the tasks agree);
//! - the sweep reaches `done`.
//!
//! Faults: kill -9 of a worker (a fresh one replaces it), of the coordinator (down for up
//! to 3 TTLs) and of redis-server (AOF `everysec`, back on the same port); SIGSTOP/SIGCONT
//! of a worker and of a training child; a slow Redis (`DEBUG SLEEP`); and, all along,
//! duplicate delivery of heartbeats and reports for the workers behind
//! [`DuplicatingProxy`]. `cargo test -p tsweep-tests --test chaos` runs a seeded short
//! run; `chaos-bench` a long one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tsweep_proto::v1::{SweepSummary, TaskInfo};

use crate::cluster::{fake_sweep, worker_id, Cluster, ClusterOptions};
use crate::proxy::DuplicatingProxy;

/// What a chaos run does.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    pub seed: u64,
    /// The sweep: models × datasets × lrs finetune grid cells (plus a final per
    /// model × dataset).
    pub models: usize,
    pub datasets: usize,
    pub lrs: usize,
    /// Fake run time and steps of one cell.
    pub task_ms: u64,
    pub steps: u64,
    /// Worker agents (kept at this number: a killed one is replaced), slots each.
    pub workers: usize,
    pub slots: u32,
    /// How many of them talk to the coordinator through the duplicating proxy.
    pub proxied_workers: usize,
    /// Chance that the proxy delivers a heartbeat or report twice.
    pub duplicate_probability: f64,
    pub lease_ttl_ms: u64,
    pub reaper_interval_ms: u64,
    /// Faults to inject, one after the other, about `mean_gap_ms` apart.
    pub faults: usize,
    pub mean_gap_ms: u64,
    /// The sweep must be done this long after it was submitted.
    pub timeout: Duration,
}

impl ChaosConfig {
    pub fn grid_cells(&self) -> usize {
        self.models * self.datasets * self.lrs
    }

    pub fn cells(&self) -> usize {
        self.grid_cells() + self.models * self.datasets
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// kill -9 of the worker in this place of the fleet; a fresh worker takes its place.
    KillWorker { worker: usize },
    /// SIGSTOP of the worker (a partition, a frozen VM), SIGCONT after `ms`.
    StopWorker { worker: usize, ms: u64 },
    /// SIGSTOP of one of the worker's training children, SIGCONT after `ms`.
    StopChild { worker: usize, ms: u64 },
    /// kill -9 of the coordinator, restarted after `down_ms`.
    KillCoordinator { down_ms: u64 },
    /// kill -9 of redis-server, restarted on its AOF after `down_ms`.
    KillRedis { down_ms: u64 },
    /// `DEBUG SLEEP`: Redis answers nobody for `ms`.
    SlowRedis { ms: u64 },
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::KillWorker { .. } => "kill -9 worker",
            Fault::StopWorker { .. } => "SIGSTOP worker",
            Fault::StopChild { .. } => "SIGSTOP child",
            Fault::KillCoordinator { .. } => "kill -9 coordinator",
            Fault::KillRedis { .. } => "kill -9 redis-server",
            Fault::SlowRedis { .. } => "DEBUG SLEEP redis",
        }
    }

    /// How long the fault lasts before things are back (0 for a kill that is replaced).
    pub fn duration_ms(&self) -> u64 {
        match self {
            Fault::KillWorker { .. } => 0,
            Fault::StopWorker { ms, .. } | Fault::StopChild { ms, .. } | Fault::SlowRedis { ms } => *ms,
            Fault::KillCoordinator { down_ms } | Fault::KillRedis { down_ms } => *down_ms,
        }
    }
}

/// The faults of a run, at their offsets from the start of the sweep.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub seed: u64,
    pub faults: Vec<(u64, Fault)>,
}

impl Schedule {
    /// A random schedule from `config.seed`: the same seed gives the same schedule. The
    /// first six faults are one of each kind (in random order), the rest drawn at random;
    /// outages of the coordinator and of Redis last up to 3 TTLs.
    pub fn generate(config: &ChaosConfig) -> Schedule {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let ttl = config.lease_ttl_ms;
        let mut kinds: Vec<u32> = (0..6).collect();
        for i in (1..kinds.len()).rev() {
            kinds.swap(i, rng.random_range(0..=i));
        }
        let mut at = config.mean_gap_ms / 2;
        let mut faults = Vec::with_capacity(config.faults);
        for n in 0..config.faults {
            at += (config.mean_gap_ms as f64 * rng.random_range(0.5..1.5)) as u64;
            let worker = rng.random_range(0..config.workers.max(1));
            let kind = match kinds.get(n) {
                Some(kind) => *kind,
                // Weighted: outages and kills most often.
                None => match rng.random_range(0..100u32) {
                    0..=19 => 0,
                    20..=34 => 1,
                    35..=49 => 2,
                    50..=69 => 3,
                    70..=84 => 4,
                    _ => 5,
                },
            };
            let fault = match kind {
                0 => Fault::KillWorker { worker },
                1 => Fault::StopWorker { worker, ms: rng.random_range(ttl / 2..=ttl * 5 / 2) },
                2 => Fault::StopChild { worker, ms: rng.random_range(200..=ttl * 2) },
                3 => Fault::KillCoordinator { down_ms: rng.random_range(ttl..=ttl * 3) },
                4 => Fault::KillRedis { down_ms: rng.random_range(ttl..=ttl * 3) },
                _ => Fault::SlowRedis { ms: rng.random_range(ttl / 2..=ttl * 3 / 2) },
            };
            faults.push((at, fault.clone()));
            at += fault.duration_ms();
        }
        Schedule { seed: config.seed, faults }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "fault schedule (seed {}, TSWEEP_CHAOS_SEED={} repeats it):", self.seed, self.seed)?;
        for (at, fault) in &self.faults {
            writeln!(f, "  t+{:>6} ms  {fault:?}", at)?;
        }
        Ok(())
    }
}

/// What a run did and found.
#[derive(Debug, Default)]
pub struct ChaosReport {
    pub seed: u64,
    pub cells: usize,
    /// Faults injected, by kind (a run that finishes early injects fewer).
    pub injected: BTreeMap<&'static str, usize>,
    pub duplicated_rpcs: u64,
    pub lease_expiries: u64,
    pub outages_recorded: usize,
    pub stale_reports: u64,
    /// Leases of healthy workers that expired before they started: an acquire whose reply
    /// was lost with a killed coordinator or Redis (no work lost; the task ran elsewhere).
    pub unstarted_expired: usize,
    pub elapsed: Duration,
    pub violations: Vec<String>,
    pub schedule: String,
    /// Where the logs are (kept when there are violations).
    pub logs: Option<std::path::PathBuf>,
}

impl ChaosReport {
    pub fn faults(&self) -> usize {
        self.injected.values().sum()
    }
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chaos run, seed {}: {} cells, {} faults injected {:?}, {} duplicated RPCs, {} lease expiries, \
             {} outages recorded, {} stale reports, {} unstarted leases of healthy workers expired \
             (acquire replies lost), {:.1} s, {} violations",
            self.seed,
            self.cells,
            self.faults(),
            self.injected,
            self.duplicated_rpcs,
            self.lease_expiries,
            self.outages_recorded,
            self.stale_reports,
            self.unstarted_expired,
            self.elapsed.as_secs_f64(),
            self.violations.len()
        )?;
        for violation in &self.violations {
            writeln!(f, "  VIOLATION: {violation}")?;
        }
        if !self.violations.is_empty() {
            write!(f, "{}", self.schedule)?;
            if let Some(logs) = &self.logs {
                writeln!(f, "logs kept in {}", logs.display())?;
            }
        }
        Ok(())
    }
}

/// One place of the fleet: the cluster's index of the worker there now, and how it talks.
struct Place {
    index: usize,
    proxied: bool,
}

const SWEEP: &str = "chaos";

/// Runs the sweep under `config`'s schedule and checks the invariants.
pub async fn run(config: &ChaosConfig) -> Result<ChaosReport> {
    // Thousands of fake children: each must start without loading libtorch.
    crate::process::bin_path("tsweep-fake-task")
        .context("the chaos run needs tsweep-fake-task next to tsweep-worker (cargo build --bins)")?;
    let schedule = Schedule::generate(config);
    let mut report = ChaosReport {
        seed: config.seed,
        cells: config.cells(),
        schedule: schedule.to_string(),
        ..ChaosReport::default()
    };
    let options = ClusterOptions {
        lease_ttl_ms: config.lease_ttl_ms,
        reaper_interval_ms: config.reaper_interval_ms,
        redis_args: vec!["--enable-debug-command".into(), "local".into()],
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start(options).await?;
    let proxy = DuplicatingProxy::start(&cluster.coordinator_url(), config.duplicate_probability, config.seed).await?;
    let response = cluster
        .submit(&fake_sweep(SWEEP, config.models, config.datasets, config.lrs, config.task_ms, config.steps))
        .await?;
    anyhow::ensure!(response.cells_added as usize == config.grid_cells(), "submitted {response:?}");
    let started = Instant::now();
    let mut places = Vec::with_capacity(config.workers);
    for place in 0..config.workers {
        let proxied = place < config.proxied_workers;
        places.push(Place { index: start_worker(&mut cluster, &proxy, proxied, config.slots)?, proxied });
    }
    // Workers killed or stopped at some point: their lost attempts are expected.
    let mut unhealthy: BTreeSet<usize> = BTreeSet::new();

    for (at, fault) in &schedule.faults {
        let due = started + Duration::from_millis(*at);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        if is_done(&cluster).await {
            break;
        }
        *report.injected.entry(fault.kind()).or_default() += 1;
        inject(&mut cluster, &proxy, &mut places, &mut unhealthy, fault, config.slots).await?;
    }

    let remaining = config.timeout.saturating_sub(started.elapsed()).max(Duration::from_secs(10));
    let done = cluster.wait_done(SWEEP, remaining).await;
    report.elapsed = started.elapsed();
    report.duplicated_rpcs = proxy.stats.duplicated.load(Ordering::Relaxed);
    match done {
        Ok(summary) => check(&cluster, &summary, &unhealthy, &mut report).await?,
        Err(e) => report.violations.push(format!("the sweep did not reach done: {e}")),
    }
    if !report.violations.is_empty() {
        let dir = cluster.path().to_path_buf();
        report.logs = Some(dir.clone());
        // Keep the logs of a failing run: the cluster's directory outlives it.
        let _ = std::mem::replace(&mut cluster.dir, tempfile::tempdir()?).keep();
    }
    Ok(report)
}

fn start_worker(cluster: &mut Cluster, proxy: &DuplicatingProxy, proxied: bool, slots: u32) -> Result<usize> {
    // A short drain: a stopped child is killed quickly once its lease is gone.
    let extra = ["--grace-period", "2"];
    if proxied {
        cluster.start_worker_at(&proxy.url(), slots, &extra)
    } else {
        cluster.start_worker(slots, &extra)
    }
}

async fn is_done(cluster: &Cluster) -> bool {
    cluster.summary(SWEEP).await.is_ok_and(|s| s.status() == tsweep_proto::v1::SweepStatus::Done)
}

async fn inject(
    cluster: &mut Cluster,
    proxy: &DuplicatingProxy,
    places: &mut [Place],
    unhealthy: &mut BTreeSet<usize>,
    fault: &Fault,
    slots: u32,
) -> Result<()> {
    match fault {
        Fault::KillWorker { worker } => {
            let place = &mut places[*worker];
            unhealthy.insert(place.index);
            cluster.workers[place.index].kill9();
            place.index = start_worker(cluster, proxy, place.proxied, slots)?;
        }
        Fault::StopWorker { worker, ms } => {
            let index = places[*worker].index;
            unhealthy.insert(index);
            cluster.workers[index].signal(Signal::SIGSTOP)?;
            tokio::time::sleep(Duration::from_millis(*ms)).await;
            cluster.workers[index].signal(Signal::SIGCONT)?;
        }
        Fault::StopChild { worker, ms } => {
            let index = places[*worker].index;
            if let Some(child) = cluster.workers[index].children().first().copied() {
                // The child may end by itself meanwhile: nothing to stop then.
                if kill(child, Signal::SIGSTOP).is_ok() {
                    tokio::time::sleep(Duration::from_millis(*ms)).await;
                    let _ = kill(child, Signal::SIGCONT);
                }
            }
        }
        Fault::KillCoordinator { down_ms } => {
            if let Some(coordinator) = cluster.coordinator.as_mut() {
                coordinator.kill9();
            }
            tokio::time::sleep(Duration::from_millis(*down_ms)).await;
            cluster.start_coordinator().await?;
        }
        Fault::KillRedis { down_ms } => {
            cluster.redis.kill();
            tokio::time::sleep(Duration::from_millis(*down_ms)).await;
            cluster.redis.start().context("restarting redis-server on its AOF")?;
        }
        Fault::SlowRedis { ms } => {
            // No response timeout: the reply comes when the sleep is over.
            let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
            let mut conn =
                redis::Client::open(cluster.redis.url())?.get_multiplexed_async_connection_with_config(&config).await?;
            let seconds = format!("{:.3}", *ms as f64 / 1000.0);
            let _: () = redis::cmd("DEBUG").arg("SLEEP").arg(seconds).query_async(&mut conn).await?;
        }
    }
    Ok(())
}

/// The invariants, from the coordinator's API, Redis and the logs.
async fn check(
    cluster: &Cluster,
    summary: &SweepSummary,
    unhealthy: &BTreeSet<usize>,
    report: &mut ChaosReport,
) -> Result<()> {
    let tasks = cluster.tasks(SWEEP).await?;
    report.lease_expiries = summary.lease_expiries;
    report.stale_reports = summary.stale_reports;
    let v = &mut report.violations;
    if summary.status() != tsweep_proto::v1::SweepStatus::Done {
        v.push(format!("status {} at the end", summary.status));
    }
    if tasks.len() != report.cells {
        v.push(format!("{} tasks, expected {}", tasks.len(), report.cells));
    }
    for task in &tasks {
        if task.state() != tsweep_proto::v1::TaskState::Succeeded {
            v.push(format!("task {} ended {}: {}", task.task_id, task.state, task.error));
        }
        if task.accepted_completions != 1 {
            v.push(format!("task {} accepted {} completions", task.task_id, task.accepted_completions));
        }
        if task.retries_used != 0 {
            v.push(format!("task {} spent {} retries ({})", task.task_id, task.retries_used, task.error));
        }
    }
    check_counts(cluster, summary, &tasks, v).await?;

    // Healthy workers: never killed or stopped. None of their attempts may be lost.
    let healthy: Vec<usize> = (0..cluster.workers.len()).filter(|i| !unhealthy.contains(i)).collect();
    let coordinator_logs = cluster.coordinator_logs();
    let mut unstarted = 0;
    for index in healthy {
        let id = worker_id(index);
        let reaped = coordinator_logs
            .lines()
            .filter(|line| line.contains("lease expired: attempt lost") && line.contains(&format!("worker={id} ")))
            .count();
        if reaped > 0 {
            v.push(format!("{reaped} running attempts of healthy {id} were reaped"));
        }
        unstarted += coordinator_logs
            .lines()
            .filter(|line| {
                line.contains("lease expired before its worker started it") && line.contains(&format!("worker={id} "))
            })
            .count();
        let log = cluster.workers[index].log_text();
        let lost = log.matches("lease lost").count();
        if lost > 0 {
            v.push(format!("healthy {id} was told LEASE_LOST {lost} times"));
        }
        let stale = log.matches("REPORT_OUTCOME_STALE").count();
        if stale > 0 {
            v.push(format!("{stale} reports of healthy {id} were refused as stale"));
        }
    }
    report.unstarted_expired = unstarted;
    let mut conn = redis::Client::open(cluster.redis.url())?.get_multiplexed_async_connection().await?;
    let outages: usize = redis::cmd("ZCARD").arg("tsweep:plane:outages").query_async(&mut conn).await?;
    report.outages_recorded = outages;
    Ok(())
}

/// The counts hash, the per-state indexes and the tasks' states agree.
async fn check_counts(
    cluster: &Cluster,
    summary: &SweepSummary,
    tasks: &[TaskInfo],
    v: &mut Vec<String>,
) -> Result<()> {
    let counts = summary.counts.unwrap_or_default();
    let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
    for task in tasks {
        *by_state.entry(task.state().name()).or_default() += 1;
    }
    let mut conn = redis::Client::open(cluster.redis.url())?.get_multiplexed_async_connection().await?;
    for (state, counted) in [
        ("pending", counts.pending),
        ("leased", counts.leased),
        ("running", counts.running),
        ("succeeded", counts.succeeded),
        ("failed", counts.failed),
        ("cancelled", counts.cancelled),
    ] {
        let tallied = by_state.get(state).copied().unwrap_or(0);
        let indexed: u64 =
            redis::cmd("ZCARD").arg(format!("tsweep:{{{SWEEP}}}:state:{state}")).query_async(&mut conn).await?;
        if counted != tallied || counted != indexed {
            v.push(format!("{state}: counts {counted}, tasks {tallied}, index {indexed}"));
        }
    }
    if counts.total != tasks.len() as u64 {
        v.push(format!("total {} but {} tasks", counts.total, tasks.len()));
    }
    Ok(())
}

/// `TSWEEP_CHAOS_SEED` when set (to repeat a failing run), else `default`.
pub fn seed_from_env(default: u64) -> u64 {
    std::env::var("TSWEEP_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}
