//! The control plane going away (every coordinator killed, or redis-server killed) for
//! longer than the lease TTL costs no running task: the workers keep their children
//! running, heartbeat again when it is back, and the coordinator gives every lease the
//! dark time back before it reaps anything. Workers that really died (kill -9) or were cut
//! off (SIGSTOP) meanwhile are still reaped within a TTL and a reaper interval of its
//! return. A sweep dropped from the set of active sweeps is found again by the repair loop.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use redis::AsyncCommands;
use tsweep_proto::v1::TaskInfo;
use tsweep_tests::cluster::{fake_sweep, worker_id, Cluster, ClusterOptions};
use tsweep_tests::process::wait_for;

const TTL_MS: u64 = 2_000;
const REAPER_MS: u64 = 200;

fn options() -> ClusterOptions {
    ClusterOptions { lease_ttl_ms: TTL_MS, reaper_interval_ms: REAPER_MS, ..Default::default() }
}

async fn running(cluster: &Cluster, sweep: &str) -> u64 {
    cluster.summary(sweep).await.ok().and_then(|s| s.counts).map(|c| c.running).unwrap_or(0)
}

fn assert_succeeded_once(tasks: &[TaskInfo]) {
    for task in tasks {
        assert_eq!(task.state(), tsweep_proto::v1::TaskState::Succeeded, "{task:?}");
        assert_eq!(task.accepted_completions, 1, "{task:?}");
        assert_eq!(task.retries_used, 0, "no retry budget spent: {task:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_outage_of_three_ttls_costs_no_lease_and_dead_or_cut_off_workers_are_reaped_after_it(
) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(options()).await?;
    // 8 long cells (12 s, 24 steps), one per slot of 4 workers x 2 slots, and their final.
    cluster.submit(&fake_sweep("outage", 1, 1, 8, 12_000, 24)).await?;
    for _ in 0..4 {
        cluster.start_worker(2, &[])?;
    }
    wait_for("8 cells running", Duration::from_secs(60), || async {
        (running(&cluster, "outage").await == 8).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    // Every coordinator gone for 3 TTLs. Meanwhile worker 2 dies and worker 3 is cut off.
    if let Some(coordinator) = cluster.coordinator.as_mut() {
        coordinator.kill9();
    }
    cluster.workers[2].kill9();
    cluster.workers[3].signal(Signal::SIGSTOP)?;
    tokio::time::sleep(Duration::from_millis(3 * TTL_MS)).await;
    cluster.start_coordinator().await?;
    let back = Instant::now();

    // The dead and the cut-off workers' 4 leases are reaped within TTL + reaper interval.
    wait_for("the 4 abandoned leases to be reaped", Duration::from_secs(20), || async {
        let summary = cluster.summary("outage").await.ok()?;
        (summary.lease_expiries >= 4).then_some(())
    })
    .await?;
    let reaped_after = back.elapsed();
    let bound = Duration::from_millis(TTL_MS + REAPER_MS + 1_000);
    assert!(reaped_after <= bound, "reaped {reaped_after:?} after the return (bound {bound:?})");
    cluster.workers[3].signal(Signal::SIGCONT)?;

    let summary = cluster.wait_done("outage", Duration::from_secs(180)).await?;
    assert_eq!(summary.lease_expiries, 4, "only the dead and the cut-off workers' leases expired");
    let tasks = cluster.tasks("outage").await?;
    assert_eq!(tasks.len(), 9);
    assert_succeeded_once(&tasks);
    let healthy = [worker_id(0), worker_id(1)];
    let coordinator_logs = cluster.coordinator_logs();
    for id in &healthy {
        let reaped: Vec<&str> = coordinator_logs
            .lines()
            .filter(|line| line.contains("lease expired: attempt lost") && line.contains(&format!("worker={id} ")))
            .collect();
        assert!(reaped.is_empty(), "leases of healthy {id} were reaped: {reaped:#?}");
    }
    // The healthy workers' attempts ran through the outage: first attempt, not restarted.
    let kept: Vec<&TaskInfo> =
        tasks.iter().filter(|t| healthy.contains(&t.worker) && t.stage() == tsweep_proto::v1::Stage::Grid).collect();
    for task in &kept {
        let result = task.result.as_ref().expect("succeeded with a result");
        if task.attempt == 1 {
            assert_eq!(result.resumed_from_step, 0, "{task:?}");
        }
    }
    for index in 0..2 {
        let log = cluster.workers[index].log_text();
        assert!(!log.contains("lease lost"), "healthy worker {index} lost a lease:\n{log}");
        assert!(log.contains("heartbeats reach the coordinator again"), "worker {index} re-attached:\n{log}");
    }
    assert!(coordinator_logs.contains("leases extended by the control-plane outage"), "{coordinator_logs}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_longer_than_the_ttl_costs_no_lease() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(options()).await?;
    cluster.submit(&fake_sweep("redis-dark", 1, 1, 4, 12_000, 24)).await?;
    for _ in 0..2 {
        cluster.start_worker(2, &[])?;
    }
    wait_for("4 cells running", Duration::from_secs(60), || async {
        (running(&cluster, "redis-dark").await == 4).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    // kill -9 of redis-server for 3 TTLs, then back on its AOF.
    cluster.redis.kill();
    tokio::time::sleep(Duration::from_millis(3 * TTL_MS)).await;
    cluster.redis.start()?;

    let summary = cluster.wait_done("redis-dark", Duration::from_secs(180)).await?;
    assert_eq!(summary.lease_expiries, 0, "no lease expired because Redis was away");
    let tasks = cluster.tasks("redis-dark").await?;
    assert_eq!(tasks.len(), 5);
    assert_succeeded_once(&tasks);
    for task in tasks.iter().filter(|t| t.stage() == tsweep_proto::v1::Stage::Grid) {
        assert_eq!(task.attempt, 1, "{task:?}");
    }
    for worker in cluster.workers.iter_mut() {
        assert!(worker.is_running());
        let log = worker.log_text();
        assert!(!log.contains("lease lost"), "{log}");
    }
    let coordinator_logs = cluster.coordinator_logs();
    assert!(coordinator_logs.contains("redis_restarted=true"), "{coordinator_logs}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_removed_from_the_active_set_by_hand_is_found_again() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions { repair_interval_ms: 500, ..options() }).await?;
    cluster.submit(&fake_sweep("stranded", 1, 2, 2, 50, 1)).await?;
    // What a submit interrupted before its last step leaves: cells, but no `active` entry.
    let mut redis = redis::Client::open(cluster.redis.url())?.get_multiplexed_async_connection().await?;
    let removed: u64 = redis.srem("tsweep:active", "stranded").await?;
    assert_eq!(removed, 1);
    cluster.start_worker(2, &[])?;
    let summary = cluster.wait_done("stranded", Duration::from_secs(60)).await?;
    assert_eq!(summary.counts.unwrap().succeeded, 4 + 2);
    assert!(cluster.coordinator_logs().contains("missing from the active set; put back"));
    Ok(())
}
