//! The promise users rely on most: kill -9 any worker or the coordinator, freeze a worker
//! past its lease, restart Redis — every cell still ends `succeeded` exactly once, late
//! reports of a presumed-dead worker are refused, and lost workers cost no retry budget.

use std::time::Duration;

use nix::sys::signal::Signal;
use tsweep_proto::v1::TaskInfo;
use tsweep_tests::cluster::{fake_sweep, Cluster, ClusterOptions};
use tsweep_tests::process::wait_for;

fn assert_every_cell_succeeded_once(tasks: &[TaskInfo], cluster: &Cluster) {
    let not_done: Vec<_> = tasks.iter().filter(|t| t.state() != tsweep_proto::v1::TaskState::Succeeded).collect();
    assert!(
        not_done.is_empty(),
        "{} cells did not succeed, e.g. {:?}\nlogs: {:#?}",
        not_done.len(),
        not_done.first(),
        cluster.logs().keys().collect::<Vec<_>>()
    );
    for task in tasks {
        assert_eq!(
            task.accepted_completions, 1,
            "cell {} accepted {} completions",
            task.task_id, task.accepted_completions
        );
    }
}

async fn succeeded(cluster: &Cluster, sweep: &str) -> u64 {
    cluster.summary(sweep).await.ok().and_then(|s| s.counts).map(|c| c.succeeded).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_survives_killed_workers_killed_coordinator_and_a_frozen_worker() -> anyhow::Result<()> {
    let mut cluster =
        Cluster::start(ClusterOptions { lease_ttl_ms: 1_500, reaper_interval_ms: 100, ..Default::default() }).await?;
    // 5 models x 6 datasets x 10 lr = 300 grid cells, then 30 finals.
    let response = cluster.submit(&fake_sweep("chaos", 5, 6, 10, 300, 3)).await?;
    assert_eq!(response.cells_added, 300);
    for _ in 0..4 {
        cluster.start_worker(2, &[])?;
    }

    wait_for("a quarter of the cells", Duration::from_secs(120), || async {
        (succeeded(&cluster, "chaos").await >= 75).then_some(())
    })
    .await?;
    // A worker dies holding leases.
    cluster.workers[0].kill9();
    // The coordinator dies while tasks run, and comes back.
    if let Some(coordinator) = cluster.coordinator.as_mut() {
        coordinator.kill9();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_coordinator().await?;
    // A worker freezes past its lease (its children finish meanwhile), then goes on.
    cluster.workers[1].signal(Signal::SIGSTOP)?;
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    cluster.workers[1].signal(Signal::SIGCONT)?;
    // A replacement for the dead worker.
    cluster.start_worker(2, &[])?;

    let summary = cluster.wait_done("chaos", Duration::from_secs(300)).await?;
    let tasks = cluster.tasks("chaos").await?;
    assert_eq!(tasks.len(), 330, "300 grid cells and 30 finals");
    assert_every_cell_succeeded_once(&tasks, &cluster);
    for task in &tasks {
        assert_eq!(task.retries_used, 0, "cell {} spent retry budget on a lost worker", task.task_id);
    }
    assert!(summary.lease_expiries > 0, "the killed and the frozen workers' leases expired");
    // The frozen worker's late reports were fenced off.
    wait_for("the frozen worker's late reports to be refused", Duration::from_secs(30), || async {
        let summary = cluster.summary("chaos").await.ok()?;
        (summary.stale_reports > 0).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_survives_a_redis_restart() -> anyhow::Result<()> {
    let mut cluster =
        Cluster::start(ClusterOptions { lease_ttl_ms: 3_000, reaper_interval_ms: 200, ..Default::default() }).await?;
    cluster.submit(&fake_sweep("redis-restart", 3, 4, 5, 200, 2)).await?;
    for _ in 0..3 {
        cluster.start_worker(2, &[])?;
    }
    wait_for("some cells", Duration::from_secs(120), || async {
        (succeeded(&cluster, "redis-restart").await >= 15).then_some(())
    })
    .await?;
    // kill -9 redis-server; everything it had acknowledged up to the last fsync is in the AOF.
    cluster.redis.kill();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    cluster.redis.start()?;

    cluster.wait_done("redis-restart", Duration::from_secs(300)).await?;
    let tasks = cluster.tasks("redis-restart").await?;
    assert_eq!(tasks.len(), 60 + 12);
    assert_every_cell_succeeded_once(&tasks, &cluster);
    assert!(cluster.coordinator.as_mut().is_some_and(|p| p.is_running()), "coordinator crashed while Redis was away");
    for worker in cluster.workers.iter_mut() {
        assert!(worker.is_running(), "{} crashed while Redis was away", worker.name);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitting_and_extending_a_finished_sweep_reruns_nothing() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let first = cluster.submit(&fake_sweep("extend", 2, 2, 3, 50, 1)).await?;
    assert_eq!(first.cells_added, 12);
    cluster.start_worker(2, &[])?;
    cluster.wait_done("extend", Duration::from_secs(120)).await?;
    let before = cluster.tasks("extend").await?;
    assert_eq!(before.len(), 12 + 4, "grid cells and one final per (model, dataset)");

    let again = cluster.submit(&fake_sweep("extend", 2, 2, 3, 50, 1)).await?;
    assert_eq!(again.cells_added, 0, "the same file adds nothing");
    assert_eq!(again.cells_existing, 12);

    // One more model and one more lr value: only the new cells are added.
    let extended = cluster.submit(&fake_sweep("extend", 3, 2, 4, 50, 1)).await?;
    assert_eq!(extended.cells_total, 3 * 2 * 4);
    assert_eq!(extended.cells_added, 3 * 2 * 4 - 12);
    cluster.wait_done("extend", Duration::from_secs(120)).await?;
    let after = cluster.tasks("extend").await?;
    for old in before.iter().filter(|t| t.stage() == tsweep_proto::v1::Stage::Grid) {
        let now = after.iter().find(|t| t.task_id == old.task_id).expect("finished cells are kept");
        assert_eq!(now.state(), tsweep_proto::v1::TaskState::Succeeded);
        assert_eq!(now.attempt, old.attempt, "cell {} ran again", old.task_id);
        assert_eq!(now.accepted_completions, 1);
    }
    assert!(after
        .iter()
        .filter(|t| t.stage() == tsweep_proto::v1::Stage::Grid)
        .all(|t| t.state() == tsweep_proto::v1::TaskState::Succeeded));
    Ok(())
}
