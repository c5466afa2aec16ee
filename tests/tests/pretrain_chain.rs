//! The pretrain stage on the real binaries (coordinator, workers with the fake executor,
//! Redis): a worker killed with -9 while it trains a pretrain cell costs nothing but time
//! (the next attempt resumes from its checkpoint), and no transfer cell starts before its
//! pretrain cell has succeeded.

use std::time::Duration;

use tsweep_proto::cell::CellSpec;
use tsweep_tests::cluster::{Cluster, ClusterOptions};
use tsweep_tests::process::wait_for;

/// Two source settings (dropout 0 and 0.5) of a slow pretrain cell (20 checkpointed
/// steps), each transferred to two datasets by the linear probe and fine-tuning.
const FILE: &str = r#"
name = "chain"
max_attempts = 3
[defaults]
steps = 4
batch_size = 8
[fake]
sleep_ms = 40
steps = 2
[[datasets]]
name = "source"
format = "imagefolder"
path = "data/source"
[[datasets]]
name = "t1"
format = "imagefolder"
path = "data/t1"
[[datasets]]
name = "t2"
format = "imagefolder"
path = "data/t2"
[[pretrain]]
name = "src"
arch = "resnet18"
dataset = "source"
image_size = 32
lr = 0.1
dropout = [0.0, 0.5]
fake = { sleep_ms = 4000, steps = 20 }
[[models]]
name = "r18"
pretrain = "src"
[regimes.linear]
l2 = [0.1, 1.0]
[regimes.finetune]
lr = [0.01, 0.1]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pretrain_worker_resumes_and_transfer_cells_start_after_their_pretrain_cell() -> anyhow::Result<()> {
    let mut cluster =
        Cluster::start(ClusterOptions { lease_ttl_ms: 1_500, reaper_interval_ms: 100, ..Default::default() }).await?;
    let response = cluster.submit(FILE).await?;
    // 2 pretrain cells; per setting 2 linear + 2 × 2 finetune grid cells
    assert_eq!(response.cells_added, 2 + 2 * (2 + 4));
    cluster.start_worker(2, &[])?;

    // Both pretrain cells checkpoint a few steps; nothing else has started.
    wait_for("the pretrain cells to checkpoint", Duration::from_secs(60), || async {
        let tasks = cluster.tasks("chain").await.ok()?;
        let pretrain: Vec<_> = tasks.iter().filter(|t| t.stage() == tsweep_proto::v1::Stage::Pretrain).collect();
        (pretrain.len() == 2 && pretrain.iter().all(|t| t.checkpoint.as_ref().is_some_and(|c| c.step >= 3)))
            .then_some(())
    })
    .await?;
    let tasks = cluster.tasks("chain").await?;
    assert!(
        tasks
            .iter()
            .filter(|t| t.stage() != tsweep_proto::v1::Stage::Pretrain)
            .all(|t| t.state() == tsweep_proto::v1::TaskState::Pending && t.attempt == 0),
        "transfer cells wait while their pretrain cells run"
    );
    let summary = cluster.summary("chain").await?;
    assert_eq!(summary.pretrain.iter().map(|p| p.waiting).sum::<u64>(), 12, "{:?}", summary.pretrain);

    cluster.workers[0].kill9();
    cluster.start_worker(2, &[])?;
    let summary = cluster.wait_done("chain", Duration::from_secs(180)).await?;
    let tasks = cluster.tasks("chain").await?;
    assert!(tasks.iter().all(|t| t.state() == tsweep_proto::v1::TaskState::Succeeded), "{:?}", summary.counts);
    let pretrain: Vec<_> = tasks.iter().filter(|t| t.stage() == tsweep_proto::v1::Stage::Pretrain).collect();
    for p in &pretrain {
        let result = p.result.as_ref().expect("a succeeded pretrain cell has a result");
        assert!(
            result.resumed_from_step >= 3,
            "pretrain cell {} resumed from step {}",
            p.task_id,
            result.resumed_from_step
        );
        assert_eq!(p.retries_used, 0, "a lost worker costs no retry budget");
        assert!(result.test_score.is_some());
    }
    // Every transfer cell started after its own pretrain cell finished.
    for t in tasks.iter().filter(|t| t.stage() != tsweep_proto::v1::Stage::Pretrain) {
        let spec = CellSpec::from_json(&t.spec_json)?;
        let Some(by) = spec.model.pretrained else {
            anyhow::bail!("transfer cell {} names no pretrain cell", t.task_id)
        };
        let parent = pretrain.iter().find(|p| p.task_id == by.task_id).expect("its pretrain cell exists");
        assert!(
            t.started_unix_ms >= parent.finished_unix_ms,
            "{} started at {} before its pretrain cell ended at {}",
            t.task_id,
            t.started_unix_ms,
            parent.finished_unix_ms
        );
    }
    Ok(())
}
