//! The pretrain stage against a real redis-server (one per test, on a free loopback port):
//! transfer cells are held until their pretrain cell succeeds, fail with a message naming
//! it when it fails for good, and resubmitting or extending a `[[pretrain]]` grid adds
//! exactly the new chains under ids that stay stable; a submission written one cell per
//! batch holds them the same way, and a delete in batches of one leaves no pretrain key.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use tsweep_coordinator::redis_server::RedisServer;
use tsweep_coordinator::store::{Store, StoreOptions};
use tsweep_coordinator::sweepfile::{parse_and_expand, parse_plan, ExpandedSweep};
use tsweep_proto::cell::{CellSpec, Stage};
use tsweep_proto::v1::{FailureClass, LeaseRef, ReportOutcome, TaskAssignment, TaskResult};

mod support;

use support::scan;

const SWEEP: &str = "reg";

/// A source model under label smoothing `smoothing`, transferred to one target dataset by
/// the linear probe and fine-tuning (the source is not its own target).
fn file(smoothing: &str) -> String {
    format!(
        r#"
name = "{SWEEP}"
[defaults]
steps = 10
gpus = 1
[[datasets]]
name = "source"
format = "imagefolder"
path = "data/source"
[[datasets]]
name = "target"
format = "imagefolder"
path = "data/target"
[[pretrain]]
name = "src"
arch = "resnet18"
dataset = "source"
image_size = 32
lr = 0.1
label_smoothing = {smoothing}
[[models]]
name = "r18"
pretrain = "src"
[regimes.linear]
l2 = [0.1, 1.0]
[regimes.finetune]
lr = [0.01]
"#
    )
}

fn expand(smoothing: &str) -> ExpandedSweep {
    parse_and_expand(&file(smoothing), "reg.toml", Path::new("/base"), false).expect("the file expands")
}

async fn start() -> (RedisServer, Store) {
    start_with(StoreOptions::default()).await
}

async fn start_with(options: StoreOptions) -> (RedisServer, Store) {
    let server = RedisServer::start_temp().expect("redis-server starts");
    let options = StoreOptions { lease_ttl: Duration::from_secs(30), ..options };
    let store = Store::connect(&server.url(), options).await.expect("store connects");
    (server, store)
}

fn lease(a: &TaskAssignment) -> LeaseRef {
    LeaseRef { sweep: a.sweep.clone(), task_id: a.task_id.clone(), attempt: a.attempt }
}

fn result(test: f64) -> TaskResult {
    TaskResult {
        metric: tsweep_proto::v1::Metric::Top1.into(),
        test_score: Some(test),
        val_score: Some(test),
        steps: 10,
        ..Default::default()
    }
}

fn stage(a: &TaskAssignment) -> Stage {
    CellSpec::from_json(&a.spec_json).unwrap().stage
}

/// Leases everything leasable now.
async fn acquire_all(store: &Store) -> Vec<TaskAssignment> {
    let mut out = Vec::new();
    while let Some(a) = store.acquire("w", 1).await.unwrap() {
        out.push(a);
    }
    out
}

#[tokio::test]
async fn transfer_cells_wait_for_their_pretrain_cell_and_fail_with_it() {
    let (_server, store) = start().await;
    let sweep = expand("[0.0, 0.1]");
    let pretrain_ids: Vec<String> =
        sweep.cells.iter().filter(|c| c.spec.stage == Stage::Pretrain).map(|c| c.id.clone()).collect();
    assert_eq!(pretrain_ids.len(), 2);
    // per setting: one linear cell and one finetune grid point, both waiting for it
    for id in &pretrain_ids {
        let waiting = sweep.cells.iter().filter(|c| c.after.as_deref() == Some(id.as_str())).count();
        assert_eq!(waiting, 2, "dependents of {id}");
    }
    assert_eq!(store.submit(&sweep).await.unwrap().added, 6);

    // Only the pretrain cells can be leased.
    let first = acquire_all(&store).await;
    assert_eq!(
        first.iter().map(|a| a.task_id.clone()).collect::<BTreeSet<_>>(),
        pretrain_ids.iter().cloned().collect()
    );
    let summary = store.summary(SWEEP).await.unwrap();
    assert_eq!(summary.pretrain.len(), 2);
    assert!(summary.pretrain.iter().all(|p| p.waiting == 2 && p.dependents == 2), "{:?}", summary.pretrain);

    // The first succeeds: its two transfer cells become leasable, nothing else.
    let (ok, bad) = (&first[0], &first[1]);
    assert_eq!(store.complete("w", &lease(ok), &result(0.8)).await.unwrap(), ReportOutcome::Accepted);
    let released = acquire_all(&store).await;
    assert_eq!(released.len(), 2);
    for a in &released {
        assert_ne!(stage(a), Stage::Pretrain);
        let spec = CellSpec::from_json(&a.spec_json).unwrap();
        let by = spec.model.pretrained.expect("a transfer cell names its pretrain cell");
        assert_eq!(by.task_id, ok.task_id);
        assert_eq!(spec.dataset.name, "target");
    }

    // The second fails for good: its transfer cells end failed, naming it.
    store.fail("w", &lease(bad), FailureClass::Fatal, "source training exploded", None).await.unwrap();
    assert!(acquire_all(&store).await.is_empty(), "nothing of the failed chain runs");
    let tasks = store.list_tasks(SWEEP, None, 100, "").await.unwrap().tasks;
    let dependents: Vec<_> = tasks
        .iter()
        .filter(|t| sweep.cells.iter().any(|c| c.id == t.task_id && c.after.as_deref() == Some(bad.task_id.as_str())))
        .collect();
    assert_eq!(dependents.len(), 2);
    for t in dependents {
        assert_eq!(t.state(), tsweep_proto::v1::TaskState::Failed);
        assert!(t.error.contains(&format!("pretrain cell {}", bad.task_id)), "{}", t.error);
        assert!(t.error.contains("source training exploded"), "{}", t.error);
        assert_eq!(t.error_class, FailureClass::Fatal as i32);
    }
    let summary = store.summary(SWEEP).await.unwrap();
    assert!(summary.pretrain.iter().all(|p| p.waiting == 0), "{:?}", summary.pretrain);
    let done = summary.pretrain.iter().find(|p| p.task_id == ok.task_id).unwrap();
    assert_eq!(done.test_score, Some(0.8));
}

#[tokio::test]
async fn resubmitting_adds_nothing_and_extending_adds_exactly_the_new_chains() {
    let (_server, store) = start().await;
    let base = expand("[0.0, 0.1]");
    let again = expand("[0.0, 0.1]");
    let ids = |s: &ExpandedSweep| s.cells.iter().map(|c| c.id.clone()).collect::<BTreeSet<_>>();
    assert_eq!(ids(&base), ids(&again), "ids are deterministic");
    assert_eq!(store.submit(&base).await.unwrap().added, 6);
    assert_eq!(store.submit(&again).await.unwrap().added, 0, "resubmitting adds nothing");

    // Run the base chains' pretrain cells first: the extension's dependents must not wake them.
    for a in acquire_all(&store).await {
        store.complete("w", &lease(&a), &result(0.7)).await.unwrap();
    }
    let extended = expand("[0.0, 0.1, 0.2]");
    let new: BTreeSet<String> = ids(&extended).difference(&ids(&base)).cloned().collect();
    assert!(ids(&base).is_subset(&ids(&extended)), "extending keeps every id");
    assert_eq!(new.len(), 3, "one pretrain cell and its two transfer cells");
    assert_eq!(store.submit(&extended).await.unwrap().added, 3);

    // The four released cells of the base, then the new pretrain cell; its dependents wait.
    let leased = acquire_all(&store).await;
    let new_pretrain: Vec<_> = leased.iter().filter(|a| stage(a) == Stage::Pretrain).collect();
    assert_eq!(new_pretrain.len(), 1);
    assert!(new.contains(&new_pretrain[0].task_id));
    assert_eq!(leased.len(), 5, "4 released transfer cells and the new pretrain cell");
    assert!(leased.iter().filter(|a| stage(a) != Stage::Pretrain).all(|a| !new.contains(&a.task_id)));
    store.complete("w", &lease(new_pretrain[0]), &result(0.6)).await.unwrap();
    let last = acquire_all(&store).await;
    assert_eq!(last.iter().map(|a| a.task_id.clone()).collect::<BTreeSet<_>>().len(), 2);
    assert!(last.iter().all(|a| new.contains(&a.task_id)));
}

#[tokio::test]
async fn batches_of_one_cell_hold_dependents_and_a_batched_delete_leaves_no_pretrain_key() {
    let (_server, store) = start_with(StoreOptions { submit_batch: 1, bulk_batch: 1, ..StoreOptions::default() }).await;
    let plan = parse_plan(&file("[0.0, 0.1]"), "reg.toml", Path::new("/base"), false).expect("the file plans");
    let expanded = expand("[0.0, 0.1]");
    let ids = |cells: &[tsweep_coordinator::sweepfile::Cell]| cells.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&plan.expand().cells), ids(&expanded.cells), "the plan builds the same cells in the same order");
    assert_eq!(plan.stage_counts(), expanded.stage_counts());
    assert_eq!(store.submit(&plan).await.unwrap().added, 6);

    let pretrain_ids: BTreeSet<String> =
        expanded.cells.iter().filter(|c| c.spec.stage == Stage::Pretrain).map(|c| c.id.clone()).collect();
    let leased = acquire_all(&store).await;
    assert_eq!(leased.iter().map(|a| a.task_id.clone()).collect::<BTreeSet<_>>(), pretrain_ids);
    let summary = store.summary(SWEEP).await.unwrap();
    assert!(summary.pretrain.iter().all(|p| p.waiting == 2 && p.dependents == 2), "{:?}", summary.pretrain);
    assert!(!scan(&store, &format!("tsweep:{{{SWEEP}}}:dependents:*")).await.is_empty());

    store.cancel_sweep(SWEEP).await.unwrap();
    store.delete_sweep(SWEEP, true).await.unwrap();
    assert!(scan(&store, &format!("tsweep:{{{SWEEP}}}:*")).await.is_empty(), "no key of the sweep is left");
}
