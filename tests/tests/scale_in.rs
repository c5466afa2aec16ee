//! Scaling workers in and out while a sweep runs (what Kubernetes does): SIGTERM'd workers
//! checkpoint and release their leases as preempted, their tasks resume from the
//! checkpoint elsewhere; SIGKILL'd workers (node loss) cost no retry budget either.

use std::time::Duration;

use nix::sys::signal::Signal;
use tsweep_tests::cluster::{fake_sweep, Cluster, ClusterOptions};
use tsweep_tests::process::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_with_sigterm_resumes_from_checkpoints_and_node_loss_costs_nothing() -> anyhow::Result<()> {
    let mut cluster =
        Cluster::start(ClusterOptions { lease_ttl_ms: 1_500, reaper_interval_ms: 100, ..Default::default() }).await?;
    // Long-ish tasks (2 s, 10 steps) so that SIGTERM lands mid-run.
    cluster.submit(&fake_sweep("scale", 2, 3, 4, 2_000, 10)).await?;
    for _ in 0..2 {
        cluster.start_worker(2, &[])?;
    }
    wait_for("tasks to be running", Duration::from_secs(60), || async {
        let summary = cluster.summary("scale").await.ok()?;
        (summary.counts?.running >= 3).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // Scale out.
    for _ in 0..2 {
        cluster.start_worker(2, &[])?;
    }
    // Scale in: SIGTERM worker 0 (drains and exits 0), SIGKILL worker 1 (node loss).
    cluster.workers[0].signal(Signal::SIGTERM)?;
    cluster.workers[1].kill9();
    let code = cluster.workers[0].wait_exit(Duration::from_secs(30))?;
    assert_eq!(code, Some(0), "a drained worker exits 0");

    cluster.wait_done("scale", Duration::from_secs(300)).await?;
    let tasks = cluster.tasks("scale").await?;
    assert!(tasks.iter().all(|t| t.state() == tsweep_proto::v1::TaskState::Succeeded && t.accepted_completions == 1));
    assert!(tasks.iter().all(|t| t.retries_used == 0), "preempted and lost attempts do not count");
    let resumed: Vec<_> =
        tasks.iter().filter_map(|t| t.result.as_ref().map(|r| r.resumed_from_step)).filter(|step| *step > 0).collect();
    assert!(!resumed.is_empty(), "the SIGTERM'd runs resumed from their checkpoints");
    let log = cluster.workers.iter().skip(2).map(|w| w.log_text()).collect::<String>();
    assert!(log.contains("resum"), "the resumed step is logged");
    Ok(())
}
