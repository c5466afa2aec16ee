//! The lease protocol against a real redis-server (one per test, on a free loopback
//! port, killed at the end). Leases that must expire use millisecond TTLs.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use tsweep_coordinator::redis_server::RedisServer;
use tsweep_coordinator::store::{
    new_worker_secret, Checkpoint, RegisterOutcome, Store, StoreOptions, TaskState, WorkerAuth, WorkerInfo,
};
use tsweep_coordinator::sweepfile::{task_id, Cell, ExpandedSweep, SweepSettings};
use tsweep_proto::cell::{CellSpec, Regime, Stage};
use tsweep_proto::v1::{FailureClass, HeldLease, LeaseRef, ReportOutcome, StopReason, TaskAssignment, TaskResult};

mod support;

use support::cell;

const SWEEP: &str = "s1";

fn spec(model: &str, regime: Regime, lr: f64, gpus: u32, max_attempts: u32) -> CellSpec {
    support::spec(SWEEP, model, regime, lr, gpus, max_attempts)
}

fn sweep(cells: Vec<Cell>) -> ExpandedSweep {
    ExpandedSweep { name: SWEEP.to_string(), settings: SweepSettings { max_attempts: 3 }, cells }
}

/// `n` finetune grid points of one model with lr = 0.001 * (i + 1).
fn grid(model: &str, n: usize) -> Vec<Cell> {
    (0..n).map(|i| cell(spec(model, Regime::Finetune, 0.001 * (i + 1) as f64, 1, 3))).collect()
}

async fn start(options: StoreOptions) -> (RedisServer, Store) {
    let server = RedisServer::start_temp().expect("redis-server starts");
    let store = Store::connect(&server.url(), options).await.expect("store connects");
    (server, store)
}

fn options() -> StoreOptions {
    StoreOptions { lease_ttl: Duration::from_secs(30), ..StoreOptions::default() }
}

fn lease(a: &TaskAssignment) -> LeaseRef {
    LeaseRef { sweep: a.sweep.clone(), task_id: a.task_id.clone(), attempt: a.attempt }
}

fn held(a: &TaskAssignment, running: bool, checkpoint: Option<(&str, u64)>) -> HeldLease {
    HeldLease {
        lease: Some(lease(a)),
        checkpoint: checkpoint.map(|(path, step)| Checkpoint { path: path.to_string(), step }),
        running,
        resume_error: String::new(),
    }
}

fn result(val: f64) -> TaskResult {
    TaskResult {
        metric: tsweep_proto::v1::Metric::Top1.into(),
        val_score: Some(val),
        test_score: Some(val - 1.0),
        steps: 10,
        ..Default::default()
    }
}

async fn state_of(store: &Store, id: &str) -> tsweep_proto::v1::TaskState {
    store.task(SWEEP, id).await.unwrap().expect("task exists").state()
}

#[tokio::test]
async fn acquire_respects_free_gpus_and_leases_on_redis_time() {
    let (_server, store) = start(options()).await;
    let big = cell(spec("big", Regime::Finetune, 0.1, 4, 3));
    let small = cell(spec("small", Regime::Finetune, 0.1, 1, 3));
    store.submit(&sweep(vec![big.clone(), small.clone()])).await.unwrap();

    assert!(store.acquire("w0", 0).await.unwrap().is_none(), "no task needs zero GPUs");
    let first = store.acquire("w1", 2).await.unwrap().expect("the 1-GPU task fits");
    assert_eq!(first.task_id, small.id);
    assert_eq!(first.attempt, 1);
    assert_eq!(first.gpus, 1);
    assert_eq!(CellSpec::from_json(&first.spec_json).unwrap(), small.spec);
    assert!(store.acquire("w1", 3).await.unwrap().is_none(), "the 4-GPU task does not fit 3 free GPUs");
    let second = store.acquire("w2", 8).await.unwrap().expect("the 4-GPU task fits 8");
    assert_eq!(second.task_id, big.id);
    assert!(store.acquire("w2", 8).await.unwrap().is_none());

    let info = store.task(SWEEP, &small.id).await.unwrap().unwrap();
    assert_eq!(info.state(), tsweep_proto::v1::TaskState::Leased);
    assert_eq!(info.worker, "w1");
    let counts = store.summary(SWEEP).await.unwrap().counts.unwrap();
    assert_eq!((counts.pending, counts.leased, counts.total), (0, 2, 2));
}

#[tokio::test]
async fn expired_lease_returns_to_pending_without_spending_budget_and_fences_the_old_worker() {
    let (_server, store) =
        start(StoreOptions { lease_ttl: Duration::from_millis(40), ..StoreOptions::default() }).await;
    let c = cell(spec("m", Regime::Finetune, 0.1, 1, 3));
    store.submit(&sweep(vec![c.clone()])).await.unwrap();
    let old = store.acquire("frozen", 1).await.unwrap().unwrap();
    assert_eq!(store.reap_expired(SWEEP).await.unwrap(), 0, "a fresh lease is not reaped");
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(store.reap_expired(SWEEP).await.unwrap(), 1);
    let info = store.task(SWEEP, &c.id).await.unwrap().unwrap();
    assert_eq!(info.state(), tsweep_proto::v1::TaskState::Pending);
    assert_eq!(info.retries_used, 0, "a lost worker does not spend the retry budget");
    assert_eq!(info.error_class, FailureClass::LostWorker as i32);
    assert_eq!(store.summary(SWEEP).await.unwrap().lease_expiries, 1);

    let new = store.acquire("alive", 1).await.unwrap().unwrap();
    assert_eq!(new.attempt, 2);
    // The frozen worker wakes up: its heartbeat is told the lease is lost, its report is refused.
    let stops = store.renew("frozen", &[held(&old, true, None)]).await.unwrap();
    assert_eq!(stops.len(), 1);
    assert_eq!(stops[0].reason, StopReason::LeaseLost as i32);
    assert_eq!(store.complete("frozen", &lease(&old), &result(0.9)).await.unwrap(), ReportOutcome::Stale);
    let fail = store.fail("frozen", &lease(&old), FailureClass::Retryable, "late", None).await.unwrap();
    assert_eq!(fail.outcome, ReportOutcome::Stale);
    assert_eq!(store.summary(SWEEP).await.unwrap().stale_reports, 2);
    assert_eq!(state_of(&store, &c.id).await, tsweep_proto::v1::TaskState::Leased, "stale reports change nothing");

    assert_eq!(store.complete("alive", &lease(&new), &result(0.8)).await.unwrap(), ReportOutcome::Accepted);
    let info = store.task(SWEEP, &c.id).await.unwrap().unwrap();
    assert_eq!(info.state(), tsweep_proto::v1::TaskState::Succeeded);
    assert_eq!(info.accepted_completions, 1);
    assert_eq!(info.result.unwrap().val_score, Some(0.8));
}

#[tokio::test]
async fn renew_keeps_a_lease_alive_marks_running_and_records_checkpoints() {
    let (_server, store) =
        start(StoreOptions { lease_ttl: Duration::from_millis(150), ..StoreOptions::default() }).await;
    let c = cell(spec("m", Regime::Finetune, 0.1, 1, 3));
    store.submit(&sweep(vec![c.clone()])).await.unwrap();
    let a = store.acquire("w", 1).await.unwrap().unwrap();
    for step in 1..=5u64 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let stops = store.renew("w", &[held(&a, true, Some(("/ckpt/a", step * 10)))]).await.unwrap();
        assert!(stops.is_empty());
        assert_eq!(store.reap_expired(SWEEP).await.unwrap(), 0, "a renewed lease never expires");
    }
    // An older checkpoint does not replace a newer one.
    store.renew("w", &[held(&a, true, Some(("/ckpt/old", 5)))]).await.unwrap();
    let info = store.task(SWEEP, &c.id).await.unwrap().unwrap();
    assert_eq!(info.state(), tsweep_proto::v1::TaskState::Running);
    assert_eq!(info.checkpoint, Some(Checkpoint { path: "/ckpt/a".into(), step: 50 }));
    // Another worker cannot renew it.
    let stops = store.renew("intruder", &[held(&a, true, None)]).await.unwrap();
    assert_eq!(stops[0].reason, StopReason::LeaseLost as i32);
}

#[tokio::test]
async fn duplicate_and_stale_completions() {
    let (_server, store) = start(options()).await;
    let c = cell(spec("m", Regime::Finetune, 0.1, 1, 3));
    store.submit(&sweep(vec![c.clone()])).await.unwrap();
    let a = store.acquire("w", 1).await.unwrap().unwrap();
    assert_eq!(store.complete("other", &lease(&a), &result(0.5)).await.unwrap(), ReportOutcome::Stale);
    let wrong_attempt = LeaseRef { attempt: 7, ..lease(&a) };
    assert_eq!(store.complete("w", &wrong_attempt, &result(0.5)).await.unwrap(), ReportOutcome::Stale);
    assert_eq!(store.complete("w", &lease(&a), &result(0.5)).await.unwrap(), ReportOutcome::Accepted);
    assert_eq!(store.complete("w", &lease(&a), &result(0.6)).await.unwrap(), ReportOutcome::Duplicate);
    let info = store.task(SWEEP, &c.id).await.unwrap().unwrap();
    assert_eq!(info.accepted_completions, 1);
    assert_eq!(info.result.unwrap().val_score, Some(0.5), "a duplicate changes nothing");
    assert_eq!(store.summary(SWEEP).await.unwrap().stale_reports, 2);
    // A fail after success is stale too.
    let f = store.fail("w", &lease(&a), FailureClass::Fatal, "x", None).await.unwrap();
    assert_eq!(f.outcome, ReportOutcome::Stale);
    assert_eq!(state_of(&store, &c.id).await, tsweep_proto::v1::TaskState::Succeeded);
    let unknown = LeaseRef { task_id: "nope".into(), ..lease(&a) };
    assert_eq!(store.complete("w", &unknown, &result(0.5)).await.unwrap(), ReportOutcome::Stale);
}

#[tokio::test]
async fn retryable_failures_spend_the_budget_then_fail() {
    let (_server, store) = start(options()).await;
    let c = cell(spec("m", Regime::Finetune, 0.1, 1, 3));
    store.submit(&sweep(vec![c.clone()])).await.unwrap();
    for attempt in 1..=3u32 {
        let a = store.acquire("w", 1).await.unwrap().expect("re-queued while budget remains");
        assert_eq!(a.attempt, attempt);
        let f = store.fail("w", &lease(&a), FailureClass::Retryable, "cuda hiccup", None).await.unwrap();
        assert_eq!(f.outcome, ReportOutcome::Accepted);
        let expected = if attempt < 3 { TaskState::Pending } else { TaskState::Failed };
        assert_eq!(f.state, Some(expected));
        // The worker retries the RPC: same answer, nothing spent twice.
        let again = store.fail("w", &lease(&a), FailureClass::Retryable, "cuda hiccup", None).await.unwrap();
        assert_eq!(again.outcome, ReportOutcome::Duplicate);
    }
    let info = store.task(SWEEP, &c.id).await.unwrap().unwrap();
    assert_eq!(info.state(), tsweep_proto::v1::TaskState::Failed);
    assert_eq!(info.retries_used, 3);
    assert!(info.error.contains("cuda hiccup"), "{}", info.error);
    assert!(store.acquire("w", 1).await.unwrap().is_none());
    assert_eq!(
        store.summary(SWEEP).await.unwrap().status(),
        tsweep_proto::v1::SweepStatus::Active,
        "its group waits for selection"
    );
    assert!(store.schedule_finals(SWEEP).await.unwrap().is_empty(), "no eligible point, no final");
    let s = store.summary(SWEEP).await.unwrap();
    assert_eq!(s.status(), tsweep_proto::v1::SweepStatus::Done);
    assert_eq!(s.stale_reports, 0);
}

#[tokio::test]
async fn fatal_fails_at_once() {
    let (_server, store) = start(options()).await;
    let c = cell(spec("m", Regime::Finetune, 0.1, 1, 5));
    store.submit(&sweep(vec![c.clone()])).await.unwrap();
    let a = store.acquire("w", 1).await.unwrap().unwrap();
    let f = store.fail("w", &lease(&a), FailureClass::Fatal, "unknown model foo", None).await.unwrap();
    assert_eq!((f.outcome, f.state), (ReportOutcome::Accepted, Some(TaskState::Failed)));
    let info = store.task(SWEEP, &c.id).await.unwrap().unwrap();
    assert_eq!(info.error, "unknown model foo");
    assert_eq!(info.error_class, FailureClass::Fatal as i32);
    assert!(store.acquire("w", 1).await.unwrap().is_none());
}

const OOM: &str = "cuda out of memory on cuda:0 at batch size 256: CUDA out of memory. Tried to allocate 2.00 GiB";
const OOM_PREFIX: &str = "out of accelerator memory on 2 attempts; lower batch_size or use a larger GPU; last: ";

#[tokio::test]
async fn out_of_memory_is_retried_once_from_the_checkpoint_then_fails_with_a_clear_message() {
    let (_server, store) = start(options()).await;
    let c = cell(spec("m", Regime::Finetune, 0.1, 1, 5));
    store.submit(&sweep(vec![c.clone()])).await.unwrap();

    let a = store.acquire("w", 1).await.unwrap().unwrap();
    let ckpt = Checkpoint { path: "/ckpt/1".into(), step: 100 };
    let f = store.fail("w", &lease(&a), FailureClass::OutOfMemory, OOM, Some(&ckpt)).await.unwrap();
    assert_eq!((f.outcome, f.state), (ReportOutcome::Accepted, Some(TaskState::Pending)));
    // The worker retries the RPC: same answer, nothing counted twice.
    let again = store.fail("w", &lease(&a), FailureClass::OutOfMemory, OOM, Some(&ckpt)).await.unwrap();
    assert_eq!(again.outcome, ReportOutcome::Duplicate);
    let info = store.task(SWEEP, &c.id).await.unwrap().unwrap();
    assert_eq!(info.retries_used, 1, "an OOM is a retry");
    assert_eq!(info.error_class, FailureClass::OutOfMemory as i32);
    assert_eq!(info.error, OOM, "the first OOM keeps its own message");

    let b = store.acquire("w", 1).await.unwrap().expect("the first OOM is re-queued");
    assert_eq!(b.attempt, 2);
    assert_eq!(b.resume, Some(Checkpoint { path: "/ckpt/1".into(), step: 100 }));
    let f = store.fail("w", &lease(&b), FailureClass::OutOfMemory, OOM, None).await.unwrap();
    assert_eq!(
        (f.outcome, f.state),
        (ReportOutcome::Accepted, Some(TaskState::Failed)),
        "budget left, but a second OOM"
    );
    let info = store.task(SWEEP, &c.id).await.unwrap().unwrap();
    assert_eq!(info.state(), tsweep_proto::v1::TaskState::Failed);
    assert_eq!(info.retries_used, 2);
    assert_eq!(info.error_class, FailureClass::OutOfMemory as i32);
    assert_eq!(info.error, format!("{OOM_PREFIX}{OOM}"));
    assert!(store.acquire("w", 1).await.unwrap().is_none());

    // A user retry gives a fresh budget, OOM count included.
    assert_eq!(store.retry_sweep(SWEEP, true, false).await.unwrap(), 1);
    let r = store.acquire("w", 1).await.unwrap().unwrap();
    let f = store.fail("w", &lease(&r), FailureClass::OutOfMemory, OOM, None).await.unwrap();
    assert_eq!(f.state, Some(TaskState::Pending), "the retried task gets its one OOM retry again");
    assert_eq!(store.task(SWEEP, &c.id).await.unwrap().unwrap().retries_used, 1);
}

#[tokio::test]
async fn out_of_memory_shares_the_retry_budget_and_counts_every_oom_of_the_task() {
    let (_server, store) = start(options()).await;
    let c = cell(spec("m", Regime::Finetune, 0.1, 1, 5));
    store.submit(&sweep(vec![c.clone()])).await.unwrap();
    for (class, expected) in [
        (FailureClass::OutOfMemory, TaskState::Pending),
        (FailureClass::Retryable, TaskState::Pending),
        (FailureClass::Preempted, TaskState::Pending),
        (FailureClass::OutOfMemory, TaskState::Failed),
    ] {
        let a = store.acquire("w", 1).await.unwrap().expect("re-queued");
        let f = store.fail("w", &lease(&a), class, OOM, None).await.unwrap();
        assert_eq!(f.state, Some(expected), "{class:?} at attempt {}", a.attempt);
    }
    let info = store.task(SWEEP, &c.id).await.unwrap().unwrap();
    assert_eq!(info.retries_used, 3, "two OOMs and one retryable; the preemption is free");
    assert!(info.error.starts_with(OOM_PREFIX), "not consecutive, still the task's second OOM: {}", info.error);

    // With max_attempts = 1 the first OOM already spends the budget.
    let one = cell(spec("one", Regime::Finetune, 0.1, 1, 1));
    store.submit(&sweep(vec![one.clone()])).await.unwrap();
    let a = store.acquire("w", 1).await.unwrap().unwrap();
    assert_eq!(a.task_id, one.id);
    let f = store.fail("w", &lease(&a), FailureClass::OutOfMemory, OOM, None).await.unwrap();
    assert_eq!(f.state, Some(TaskState::Failed));
    let info = store.task(SWEEP, &one.id).await.unwrap().unwrap();
    assert_eq!(info.error, format!("failed 1 of 1 attempts; last: {OOM}"));
    assert_eq!(info.error_class, FailureClass::OutOfMemory as i32);
}

#[tokio::test]
async fn a_stale_out_of_memory_report_is_fenced_and_not_counted() {
    let (_server, store) = start(options()).await;
    let c = cell(spec("m", Regime::Finetune, 0.1, 1, 5));
    store.submit(&sweep(vec![c.clone()])).await.unwrap();
    let old = store.acquire("w1", 1).await.unwrap().unwrap();
    let f = store.fail("w1", &lease(&old), FailureClass::Retryable, "io", None).await.unwrap();
    assert_eq!(f.state, Some(TaskState::Pending));
    let new = store.acquire("w2", 1).await.unwrap().unwrap();
    assert_eq!(new.attempt, 2);

    let late = store.fail("w1", &lease(&old), FailureClass::OutOfMemory, OOM, None).await.unwrap();
    assert_eq!(late.outcome, ReportOutcome::Stale);
    let wrong_worker = store.fail("w1", &lease(&new), FailureClass::OutOfMemory, OOM, None).await.unwrap();
    assert_eq!(wrong_worker.outcome, ReportOutcome::Stale);
    let info = store.task(SWEEP, &c.id).await.unwrap().unwrap();
    assert_eq!((info.state().name(), info.retries_used), ("leased", 1), "stale reports change nothing");
    assert_eq!(store.summary(SWEEP).await.unwrap().stale_reports, 2);

    // The current attempt's OOM is the task's first: re-queued, not failed.
    let f = store.fail("w2", &lease(&new), FailureClass::OutOfMemory, OOM, None).await.unwrap();
    assert_eq!((f.outcome, f.state), (ReportOutcome::Accepted, Some(TaskState::Pending)));
    let third = store.acquire("w2", 1).await.unwrap().unwrap();
    let f = store.fail("w2", &lease(&third), FailureClass::OutOfMemory, OOM, None).await.unwrap();
    assert_eq!(f.state, Some(TaskState::Failed));
    assert_eq!(store.task(SWEEP, &c.id).await.unwrap().unwrap().retries_used, 3);
}

#[tokio::test]
async fn preemption_is_not_counted_and_the_next_attempt_resumes_from_the_checkpoint() {
    let (_server, store) = start(options()).await;
    let c = cell(spec("m", Regime::Finetune, 0.1, 1, 1));
    store.submit(&sweep(vec![c.clone()])).await.unwrap();
    let mut step = 0;
    for attempt in 1..=5u32 {
        let a = store.acquire("w", 1).await.unwrap().expect("preempted tasks come back");
        assert_eq!(a.attempt, attempt);
        assert_eq!(a.resume.as_ref().map_or(0, |c| c.step), step);
        step += 100;
        let ckpt = Checkpoint { path: format!("/ckpt/{attempt}"), step };
        let f = store.fail("w", &lease(&a), FailureClass::Preempted, "sigterm", Some(&ckpt)).await.unwrap();
        assert_eq!(f.state, Some(TaskState::Pending));
    }
    let a = store.acquire("w", 1).await.unwrap().unwrap();
    assert_eq!(a.resume, Some(Checkpoint { path: "/ckpt/5".into(), step: 500 }));
    let info = store.task(SWEEP, &c.id).await.unwrap().unwrap();
    assert_eq!(info.retries_used, 0, "max_attempts = 1 and five preemptions: nothing counted");
    let lost = store.fail("w", &lease(&a), FailureClass::LostWorker, "gone", None).await.unwrap();
    assert_eq!(lost.state, Some(TaskState::Pending));
}

#[tokio::test]
async fn a_task_lost_too_many_times_without_progress_fails() {
    let (_server, store) = start(StoreOptions { max_lost_attempts: 3, ..options() }).await;
    let c = cell(spec("m", Regime::Finetune, 0.1, 1, 3));
    store.submit(&sweep(vec![c.clone()])).await.unwrap();
    for attempt in 1..=3u32 {
        let a = store.acquire("w", 1).await.unwrap().expect("lost tasks come back until the cap");
        let f = store.fail("w", &lease(&a), FailureClass::LostWorker, "oom-killed", None).await.unwrap();
        let expected = if attempt < 3 { TaskState::Pending } else { TaskState::Failed };
        assert_eq!(f.state, Some(expected));
    }
    let info = store.task(SWEEP, &c.id).await.unwrap().unwrap();
    assert!(info.error.starts_with("lost too many times"), "{}", info.error);
    assert_eq!(info.retries_used, 0);
}

#[tokio::test]
async fn resubmit_adds_nothing_and_an_extension_adds_only_new_cells() {
    let (_server, store) = start(options()).await;
    let first = grid("m", 3);
    let outcome = store.submit(&sweep(first.clone())).await.unwrap();
    assert_eq!((outcome.total, outcome.added, outcome.existing), (3, 3, 0));
    let a = store.acquire("w", 1).await.unwrap().unwrap();
    store.complete("w", &lease(&a), &result(0.7)).await.unwrap();

    let again = store.submit(&sweep(first.clone())).await.unwrap();
    assert_eq!((again.added, again.existing), (0, 3));
    let finetune = again
        .per_stage
        .iter()
        .find(|c| c.regime == tsweep_proto::v1::Regime::Finetune && c.stage == tsweep_proto::v1::Stage::Grid)
        .unwrap();
    assert_eq!((finetune.cells, finetune.added), (3, 0));

    let mut extended = grid("m", 5);
    extended.push(cell(spec("m", Regime::Linear, 0.0, 1, 3)));
    let ext = store.submit(&sweep(extended)).await.unwrap();
    assert_eq!((ext.total, ext.added, ext.existing), (6, 3, 3));
    let info = store.task(SWEEP, &a.task_id).await.unwrap().unwrap();
    assert_eq!(info.state(), tsweep_proto::v1::TaskState::Succeeded, "an extension keeps finished results");
    assert_eq!(info.accepted_completions, 1);
    assert_eq!(info.result.unwrap().val_score, Some(0.7));
    let counts = store.summary(SWEEP).await.unwrap().counts.unwrap();
    assert_eq!((counts.total, counts.pending, counts.succeeded), (6, 5, 1));
}

#[tokio::test]
async fn cancel_stops_leases_and_retry_requeues() {
    let (_server, store) = start(options()).await;
    store.submit(&sweep(grid("m", 4))).await.unwrap();
    let a = store.acquire("w", 1).await.unwrap().unwrap();
    let b = store.acquire("w", 1).await.unwrap().unwrap();
    assert_eq!(store.cancel_sweep(SWEEP).await.unwrap(), 2);
    assert!(store.acquire("w", 1).await.unwrap().is_none(), "a cancelled sweep hands out nothing");
    let stops = store.renew("w", &[held(&a, true, None), held(&b, true, None)]).await.unwrap();
    assert_eq!(stops.len(), 2);
    assert!(stops.iter().all(|s| s.reason == StopReason::Cancelled as i32));
    let s = store.summary(SWEEP).await.unwrap();
    assert_eq!(s.status(), tsweep_proto::v1::SweepStatus::Cancelled);
    // One stops and reports; the other finished just before it heard: its result is kept.
    let f = store.fail("w", &lease(&a), FailureClass::Preempted, "cancelled", None).await.unwrap();
    assert_eq!(f.state, Some(TaskState::Cancelled));
    assert_eq!(store.complete("w", &lease(&b), &result(0.4)).await.unwrap(), ReportOutcome::Accepted);
    let counts = store.summary(SWEEP).await.unwrap().counts.unwrap();
    assert_eq!((counts.cancelled, counts.succeeded, counts.pending), (3, 1, 0));

    assert_eq!(store.retry_sweep(SWEEP, false, true).await.unwrap(), 3);
    let s = store.summary(SWEEP).await.unwrap();
    assert_eq!(s.status(), tsweep_proto::v1::SweepStatus::Active);
    assert_eq!(s.counts.unwrap().pending, 3);
    let c = store.acquire("w", 1).await.unwrap().expect("retried tasks run again");
    let info = store.task(SWEEP, &c.task_id).await.unwrap().unwrap();
    assert_eq!(info.retries_used, 0);

    // Failed tasks get a fresh budget.
    let f = store.fail("w", &lease(&c), FailureClass::Fatal, "bad", None).await.unwrap();
    assert_eq!(f.state, Some(TaskState::Failed));
    assert_eq!(store.retry_sweep(SWEEP, true, false).await.unwrap(), 1);
    assert_eq!(state_of(&store, &c.task_id).await, tsweep_proto::v1::TaskState::Pending);
}

#[tokio::test]
async fn resubmitting_a_cancelled_sweep_reactivates_it() {
    let (_server, store) = start(options()).await;
    store.submit(&sweep(grid("m", 3))).await.unwrap();
    store.cancel_sweep(SWEEP).await.unwrap();
    let outcome = store.submit(&sweep(grid("m", 3))).await.unwrap();
    assert_eq!((outcome.added, outcome.reactivated), (0, 3));
    let s = store.summary(SWEEP).await.unwrap();
    assert_eq!((s.status().name(), s.counts.unwrap().pending), ("active", 3));
    assert!(store.acquire("w", 1).await.unwrap().is_some());
}

#[tokio::test]
async fn list_tasks_pages_through_every_task_once() {
    let (_server, store) = start(StoreOptions { submit_batch: 64, ..options() }).await;
    store.submit(&sweep(grid("m", 250))).await.unwrap();
    for _ in 0..10 {
        let a = store.acquire("w", 1).await.unwrap().unwrap();
        store.complete("w", &lease(&a), &result(0.1)).await.unwrap();
    }
    let mut seen = HashSet::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = store.list_tasks(SWEEP, None, 100, &token).await.unwrap();
        pages += 1;
        for t in &page.tasks {
            assert!(seen.insert(t.task_id.clone()), "task {} listed twice", t.task_id);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 250);
    assert_eq!(pages, 3);
    let succeeded = store.list_tasks(SWEEP, Some(TaskState::Succeeded), 0, "").await.unwrap();
    assert_eq!(succeeded.tasks.len(), 10);
    assert!(succeeded.next_page_token.is_empty());
    assert!(succeeded.tasks.iter().all(|t| t.state() == tsweep_proto::v1::TaskState::Succeeded && t.result.is_some()));
    assert!(store.list_tasks(SWEEP, None, 10, "garbage").await.is_err());
    assert!(store.list_tasks("unknown", None, 10, "").await.is_err());
}

#[tokio::test]
async fn a_closed_group_gets_one_final_and_an_extension_reopens_it() {
    let (_server, store) = start(options()).await;
    let mut cells = grid("m", 3);
    cells.push(cell(spec("m", Regime::Linear, 0.0, 1, 3)));
    store.submit(&sweep(cells)).await.unwrap();
    // Scores: lr 0.002 wins (0.9); a diverged point never wins.
    let mut ran = Vec::new();
    while let Some(a) = store.acquire("w", 1).await.unwrap() {
        let s = CellSpec::from_json(&a.spec_json).unwrap();
        assert_eq!(s.stage, Stage::Grid);
        let lr = s.hparams.get("lr").copied().unwrap_or(0.0);
        let mut r = result(if (lr - 0.002).abs() < 1e-12 { 0.9 } else { 0.5 });
        if (lr - 0.003).abs() < 1e-12 {
            r = TaskResult { diverged: true, val_score: Some(0.99), ..r };
        }
        assert_eq!(store.complete("w", &lease(&a), &r).await.unwrap(), ReportOutcome::Accepted);
        ran.push(a.task_id);
        if ran.len() == 2 {
            assert!(store.schedule_finals(SWEEP).await.unwrap().is_empty(), "the group is still open");
        }
    }
    assert_eq!(ran.len(), 4);
    assert_eq!(
        store.summary(SWEEP).await.unwrap().status(),
        tsweep_proto::v1::SweepStatus::Active,
        "a selection is waiting"
    );
    let created = store.schedule_finals(SWEEP).await.unwrap();
    assert_eq!(created.len(), 1, "one final for the finetune group, none for linear");
    assert!(store.schedule_finals(SWEEP).await.unwrap().is_empty(), "drained once");
    let groups = store.groups(SWEEP).await.unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].current_final, created[0]);
    let winner = grid("m", 3).remove(1);
    assert_eq!(groups[0].winner, winner.id);
    let best = store.best_scores(SWEEP).await.unwrap();
    let finetune_best = best.iter().find(|b| b.regime() == tsweep_proto::v1::Regime::Finetune).unwrap();
    assert_eq!((finetune_best.task_id.as_str(), finetune_best.val_score), (winner.id.as_str(), 0.9));

    let f = store.acquire("w", 1).await.unwrap().expect("the final runs");
    assert_eq!(f.task_id, created[0]);
    let fspec = CellSpec::from_json(&f.spec_json).unwrap();
    assert_eq!(fspec.stage, Stage::Final);
    assert_eq!(fspec.hparams, winner.spec.hparams);
    assert_eq!(f.task_id, task_id(&fspec));
    store.complete("w", &lease(&f), &result(0.88)).await.unwrap();
    assert_eq!(store.summary(SWEEP).await.unwrap().status(), tsweep_proto::v1::SweepStatus::Done);

    // Resubmitting changes nothing and re-runs nothing.
    let again = store.submit(&sweep(grid("m", 3))).await.unwrap();
    assert_eq!(again.added, 0);
    assert!(store.acquire("w", 1).await.unwrap().is_none());
    assert!(store.schedule_finals(SWEEP).await.unwrap().is_empty());

    // An extension with a better point re-opens the group; when it closes the new
    // winner gets a new final, and the group says which final is current.
    let mut extended = grid("m", 4);
    extended.push(cell(spec("m", Regime::Linear, 0.0, 1, 3)));
    assert_eq!(store.submit(&sweep(extended)).await.unwrap().added, 1);
    assert_eq!(store.groups(SWEEP).await.unwrap()[0].open, 1);
    let a = store.acquire("w", 1).await.unwrap().unwrap();
    store.complete("w", &lease(&a), &result(0.95)).await.unwrap();
    let created2 = store.schedule_finals(SWEEP).await.unwrap();
    assert_eq!(created2.len(), 1);
    assert_ne!(created2[0], created[0]);
    let g = &store.groups(SWEEP).await.unwrap()[0];
    assert_eq!((g.current_final.as_str(), g.winner.as_str()), (created2[0].as_str(), a.task_id.as_str()));
    assert_eq!(g.finals, vec![created[0].clone(), created2[0].clone()]);
    assert_eq!(store.task(SWEEP, &created[0]).await.unwrap().unwrap().state(), tsweep_proto::v1::TaskState::Succeeded);
}

#[tokio::test]
async fn a_group_with_no_eligible_point_gets_no_final() {
    let (_server, store) = start(options()).await;
    store.submit(&sweep(grid("m", 2))).await.unwrap();
    while let Some(a) = store.acquire("w", 1).await.unwrap() {
        store.fail("w", &lease(&a), FailureClass::Fatal, "bad", None).await.unwrap();
    }
    assert!(store.schedule_finals(SWEEP).await.unwrap().is_empty());
    let g = &store.groups(SWEEP).await.unwrap()[0];
    assert_eq!(g.current_final, "");
    assert_eq!(store.summary(SWEEP).await.unwrap().status(), tsweep_proto::v1::SweepStatus::Done);
}

#[tokio::test]
async fn concurrent_reapers_take_each_expired_lease_back_once() {
    let server = RedisServer::start_temp().unwrap();
    let opts = StoreOptions { lease_ttl: Duration::from_millis(30), bulk_batch: 7, ..StoreOptions::default() };
    let a = Store::connect(&server.url(), opts.clone()).await.unwrap();
    let b = Store::connect(&server.url(), opts).await.unwrap();
    a.submit(&sweep(grid("m", 60))).await.unwrap();
    while a.acquire("w", 1).await.unwrap().is_some() {}
    tokio::time::sleep(Duration::from_millis(80)).await;
    let (ra, rb) = tokio::join!(a.reap_expired(SWEEP), b.reap_expired(SWEEP));
    assert_eq!(ra.unwrap() + rb.unwrap(), 60);
    let s = a.summary(SWEEP).await.unwrap();
    assert_eq!(s.lease_expiries, 60);
    assert_eq!(s.counts.unwrap().pending, 60);
    assert_eq!(a.reap_all().await.unwrap(), 0);
}

#[tokio::test]
async fn sweeps_are_served_round_robin_and_idle_ones_leave_the_active_set() {
    let (_server, store) = start(options()).await;
    let mut two = Vec::new();
    for name in ["alpha", "beta"] {
        let cells = (0..3)
            .map(|i| {
                let mut s = spec("m", Regime::Finetune, 0.001 * (i + 1) as f64, 1, 3);
                s.sweep = name.to_string();
                cell(s)
            })
            .collect();
        two.push(ExpandedSweep { name: name.to_string(), settings: SweepSettings { max_attempts: 3 }, cells });
    }
    for s in &two {
        store.submit(s).await.unwrap();
    }
    let mut per_sweep = BTreeMap::new();
    for _ in 0..4 {
        let a = store.acquire("w", 1).await.unwrap().unwrap();
        *per_sweep.entry(a.sweep.clone()).or_insert(0) += 1;
        store.complete("w", &lease(&a), &result(0.5)).await.unwrap();
    }
    assert_eq!(per_sweep.get("alpha"), Some(&2));
    assert_eq!(per_sweep.get("beta"), Some(&2));
    assert_eq!(store.list_sweeps().await.unwrap().len(), 2);
}

#[tokio::test]
async fn errors_say_whether_to_retry_and_the_store_reconnects_after_a_redis_restart() {
    let (mut server, store) = start(options()).await;
    store.submit(&sweep(grid("m", 2))).await.unwrap();
    let a = store.acquire("w", 1).await.unwrap().unwrap();
    server.kill();
    let err = store.summary(SWEEP).await.expect_err("redis is down");
    assert!(err.is_retryable(), "{err}");
    server.start().unwrap();
    // The manager reconnects in the background: retry like a caller would.
    let mut summary = None;
    for _ in 0..100 {
        match store.summary(SWEEP).await {
            Ok(s) => {
                summary = Some(s);
                break;
            }
            Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("not retryable: {e}"),
        }
    }
    let summary = summary.expect("reconnected");
    assert_eq!(summary.counts.unwrap().leased, 1, "the AOF kept the lease");
    assert_eq!(store.complete("w", &lease(&a), &result(0.5)).await.unwrap(), ReportOutcome::Accepted);

    let bad = store.summary("bad name").await.expect_err("refused");
    assert!(!bad.is_retryable());
    let missing = store.summary("missing").await.expect_err("not found");
    assert!(!missing.is_retryable());
}

#[tokio::test]
async fn a_group_with_cancelled_points_is_not_selected_until_they_are_retried() {
    let (_server, store) = start(options()).await;
    store.submit(&sweep(grid("m", 3))).await.unwrap();
    let a = store.acquire("w", 1).await.unwrap().unwrap();
    store.complete("w", &lease(&a), &result(0.6)).await.unwrap();
    assert_eq!(store.cancel_sweep(SWEEP).await.unwrap(), 2);
    assert!(store.schedule_finals(SWEEP).await.unwrap().is_empty(), "cancelled points: no selection");
    assert_eq!(store.summary(SWEEP).await.unwrap().status(), tsweep_proto::v1::SweepStatus::Cancelled);
    store.retry_sweep(SWEEP, false, true).await.unwrap();
    while let Some(b) = store.acquire("w", 1).await.unwrap() {
        store.complete("w", &lease(&b), &result(0.5)).await.unwrap();
    }
    let created = store.schedule_finals(SWEEP).await.unwrap();
    assert_eq!(created.len(), 1);
    assert_eq!(store.groups(SWEEP).await.unwrap()[0].winner, a.task_id);
}

#[tokio::test]
async fn metrics_fencing_helpers_and_worker_registry() {
    let (_server, store) = start(options()).await;
    store.submit(&sweep(grid("m", 1))).await.unwrap();
    let a = store.acquire("w", 1).await.unwrap().unwrap();
    assert!(store.is_current_attempt(SWEEP, &a.task_id, 1).await.unwrap());
    assert!(!store.is_current_attempt(SWEEP, &a.task_id, 2).await.unwrap());
    store.record_stale_metric(SWEEP).await.unwrap();
    assert_eq!(store.summary(SWEEP).await.unwrap().stale_reports, 1);
    assert_eq!(store.metrics_stream_pattern().replace("{sweep}", SWEEP), store.metrics_stream_key(SWEEP));

    let info =
        WorkerInfo { worker_id: "w-1".into(), hostname: "gpu-node".into(), slots: 2, gpus: 2, version: "0.1.0".into() };
    store.register_worker(&info, &new_worker_secret(), "").await.unwrap();
    store.renew("w-2", &[]).await.unwrap();
    assert_eq!(store.worker_count().await.unwrap(), 2);
    store.ping().await.unwrap();
}

#[tokio::test]
async fn a_worker_secret_is_stored_hashed_checked_and_its_record_lapses_after_three_lease_ttls() {
    let options = StoreOptions { lease_ttl: Duration::from_millis(400), ..StoreOptions::default() };
    let (server, store) = start(options).await;
    let info = WorkerInfo { worker_id: "w".into(), hostname: "h".into(), slots: 1, gpus: 0, version: "v".into() };
    assert_eq!(store.authenticate_worker("w", "").await.unwrap(), WorkerAuth::Unregistered);

    let first = new_worker_secret();
    assert_eq!(first.len(), 64, "32 random bytes, hex");
    assert_ne!(first, new_worker_secret());
    assert_eq!(store.register_worker(&info, &first, "").await.unwrap(), RegisterOutcome::Registered);
    assert_eq!(store.authenticate_worker("w", &first).await.unwrap(), WorkerAuth::Verified);
    assert_eq!(store.authenticate_worker("w", "forged").await.unwrap(), WorkerAuth::WrongSecret);
    assert_eq!(store.authenticate_worker("w", "").await.unwrap(), WorkerAuth::WrongSecret);

    // Redis keeps the SHA-256, never the secret.
    let mut conn = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let record: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg("tsweep:worker:w").query_async(&mut conn).await.unwrap();
    assert!(record.values().all(|v| v != &first), "{record:?}");
    use sha2::Digest;
    assert_eq!(record["secret_sha256"], hex::encode(sha2::Sha256::digest(first.as_bytes())));

    // Another process cannot take a live id; the holder can register again with its secret.
    let other = new_worker_secret();
    match store.register_worker(&info, &other, "").await.unwrap() {
        RegisterOutcome::InUse { expires_in_ms } => assert!(expires_in_ms <= 1_200, "{expires_in_ms}"),
        other => panic!("a live id was taken: {other:?}"),
    }
    assert!(matches!(
        store.register_worker(&info, &other, "not-the-secret").await.unwrap(),
        RegisterOutcome::InUse { .. }
    ));
    assert_eq!(store.authenticate_worker("w", &first).await.unwrap(), WorkerAuth::Verified);
    let second = new_worker_secret();
    assert_eq!(store.register_worker(&info, &second, &first).await.unwrap(), RegisterOutcome::Registered);
    assert_eq!(store.authenticate_worker("w", &first).await.unwrap(), WorkerAuth::WrongSecret);

    // Each verified call keeps the record alive; without calls it lapses after three
    // lease TTLs (1.2 s here) and the id is free again.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(store.authenticate_worker("w", &second).await.unwrap(), WorkerAuth::Verified);
    }
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    assert_eq!(store.authenticate_worker("w", &second).await.unwrap(), WorkerAuth::Unregistered);
    assert_eq!(store.register_worker(&info, &other, "").await.unwrap(), RegisterOutcome::Registered);
}

#[tokio::test]
async fn a_redis_in_cluster_mode_is_refused_at_connect_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
        .arg("--cluster-config-file")
        .arg(dir.path().join("nodes.conf"))
        .arg("--dir")
        .arg(dir.path())
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while client.get_connection().and_then(|mut c| redis::cmd("PING").query::<String>(&mut c)).is_err() {
        assert!(std::time::Instant::now() < deadline, "redis-server in cluster mode never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = Store::connect(&url, options()).await.expect_err("cluster mode is refused");
    assert!(matches!(err, tsweep_coordinator::store::StoreError::ClusterMode), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("Redis Cluster"), "{err}");
    let _ = server.kill();
    let _ = server.wait();
}
