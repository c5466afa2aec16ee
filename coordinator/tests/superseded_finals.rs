//! Superseded finals against a real redis-server (one per test, on a free loopback port,
//! killed at the end): a final that a newer selection of its group replaced never runs
//! if no worker holds it yet, a held one finishes under its lease, and a group whose
//! winner did not change keeps its final.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use tsweep_coordinator::redis_server::RedisServer;
use tsweep_coordinator::store::{Store, StoreOptions, TaskState};
use tsweep_coordinator::sweepfile::{Cell, ExpandedSweep, SweepSettings};
use tsweep_proto::cell::{CellSpec, Regime};
use tsweep_proto::v1::{FailureClass, HeldLease, LeaseRef, ReportOutcome, TaskAssignment, TaskResult};

mod support;

const SWEEP: &str = "s1";
const BASE: &str = "tsweep:{s1}:";

/// A finetune grid point of model `m` with learning rate `lr`.
fn point(lr: f64) -> Cell {
    support::cell(support::spec(SWEEP, "m", Regime::Finetune, lr, 1, 3))
}

/// The grid lr = 0.001 .. 0.001 * n.
fn grid(n: usize) -> ExpandedSweep {
    let cells = (1..=n).map(|i| point(0.001 * i as f64)).collect();
    ExpandedSweep { name: SWEEP.to_string(), settings: SweepSettings { max_attempts: 3 }, cells }
}

/// Validation score by learning rate: the base grid (3 points) is won by lr 0.002;
/// `fourth` is the score of lr 0.004, the point an extension adds.
fn score(a: &TaskAssignment, fourth: f64) -> f64 {
    let lr = CellSpec::from_json(&a.spec_json).unwrap().hparams["lr"];
    if (lr - 0.002).abs() < 1e-12 {
        0.9
    } else if (lr - 0.004).abs() < 1e-12 {
        fourth
    } else {
        0.5
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

fn lease(a: &TaskAssignment) -> LeaseRef {
    LeaseRef { sweep: a.sweep.clone(), task_id: a.task_id.clone(), attempt: a.attempt }
}

async fn start() -> (RedisServer, Store) {
    let server = RedisServer::start_temp().expect("redis-server starts");
    let options = StoreOptions { lease_ttl: Duration::from_secs(30), ..StoreOptions::default() };
    let store = Store::connect(&server.url(), options).await.expect("store connects");
    (server, store)
}

/// Runs the whole 3-point grid and schedules its final, which no worker holds yet.
async fn first_final(store: &Store) -> String {
    store.submit(&grid(3)).await.unwrap();
    while let Some(a) = store.acquire("w", 1).await.unwrap() {
        assert_eq!(store.complete("w", &lease(&a), &result(score(&a, 0.0))).await.unwrap(), ReportOutcome::Accepted);
    }
    let created = store.schedule_finals(SWEEP).await.unwrap();
    assert_eq!(created.len(), 1);
    assert_eq!(store.task(SWEEP, &created[0]).await.unwrap().unwrap().state(), tsweep_proto::v1::TaskState::Pending);
    created[0].clone()
}

/// Extends the grid to 4 points and runs the new one (val `fourth`); the old final, still
/// pending, is never handed out while the group is open.
async fn extend_and_run_the_new_point(store: &Store, fourth: f64) {
    assert_eq!(store.submit(&grid(4)).await.unwrap().added, 1);
    let a = store.acquire("w", 1).await.unwrap().expect("the new grid point runs");
    assert_eq!(a.task_id, point(0.004).id, "a final waits while its group is open");
    assert!(store.acquire("w", 1).await.unwrap().is_none(), "the held final is not handed out");
    store.complete("w", &lease(&a), &result(score(&a, fourth))).await.unwrap();
}

async fn state_of(store: &Store, id: &str) -> tsweep_proto::v1::TaskState {
    store.task(SWEEP, id).await.unwrap().expect("task exists").state()
}

/// Counts, state indexes and queues agree: every count equals its index, every queued
/// task is pending, and the pending tasks out of the queue are exactly `held`.
async fn assert_consistent(server: &RedisServer, held: &[&str]) {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let counts: HashMap<String, i64> = conn.hgetall(format!("{BASE}counts")).await.unwrap();
    let mut total = 0;
    for state in ["pending", "leased", "running", "succeeded", "failed", "cancelled"] {
        let indexed: i64 = conn.zcard(format!("{BASE}state:{state}")).await.unwrap();
        assert_eq!(counts.get(state).copied().unwrap_or(0), indexed, "count of {state}");
        total += indexed;
    }
    assert_eq!(counts.get("total").copied().unwrap_or(0), total, "total");
    let queued: Vec<String> = conn.zrange(format!("{BASE}queue:1"), 0, -1).await.unwrap();
    for id in &queued {
        let state: String = conn.hget(format!("{BASE}task:{id}"), "state").await.unwrap();
        assert_eq!(state, "pending", "queued task {id}");
    }
    let pending: Vec<String> = conn.zrange(format!("{BASE}state:pending"), 0, -1).await.unwrap();
    let mut out_of_queue: Vec<&str> =
        pending.iter().map(String::as_str).filter(|id| !queued.iter().any(|q| q == id)).collect();
    out_of_queue.sort();
    let mut held = held.to_vec();
    held.sort();
    assert_eq!(out_of_queue, held, "pending tasks out of the queue");
}

#[tokio::test]
async fn a_superseded_pending_final_is_cancelled_and_never_runs() {
    let (server, store) = start().await;
    let f1 = first_final(&store).await;
    assert_eq!(store.submit(&grid(4)).await.unwrap().added, 1);
    assert_consistent(&server, &[f1.as_str()]).await;
    let a = store.acquire("w", 1).await.unwrap().expect("the new grid point runs");
    assert_eq!(a.task_id, point(0.004).id);
    assert!(store.acquire("w", 1).await.unwrap().is_none(), "the held final is not handed out");
    store.complete("w", &lease(&a), &result(0.95)).await.unwrap();

    let created = store.schedule_finals(SWEEP).await.unwrap();
    assert_eq!(created.len(), 1);
    let f2 = created[0].clone();
    assert_ne!(f2, f1);
    let g = &store.groups(SWEEP).await.unwrap()[0];
    assert_eq!((g.current_final.as_str(), g.winner.as_str()), (f2.as_str(), point(0.004).id.as_str()));
    assert_eq!(g.finals, vec![f1.clone(), f2.clone()]);
    let old = store.task(SWEEP, &f1).await.unwrap().unwrap();
    assert_eq!(old.state(), tsweep_proto::v1::TaskState::Cancelled);
    assert_eq!(old.error, format!("superseded by final {f2}"));
    assert_eq!(old.attempt, 0, "never leased");
    assert!(old.finished_unix_ms > 0);
    let counts = store.summary(SWEEP).await.unwrap().counts.unwrap();
    assert_eq!((counts.total, counts.pending, counts.leased, counts.succeeded, counts.cancelled), (6, 1, 0, 4, 1));
    assert_consistent(&server, &[]).await;

    let f = store.acquire("w", 1).await.unwrap().expect("the new final runs");
    assert_eq!(f.task_id, f2);
    assert!(store.acquire("w", 1).await.unwrap().is_none(), "the superseded final never runs");
    store.complete("w", &lease(&f), &result(0.9)).await.unwrap();
    let s = store.summary(SWEEP).await.unwrap();
    assert_eq!(s.status(), tsweep_proto::v1::SweepStatus::Done);
    assert_eq!(s.counts.unwrap().cancelled, 1);

    // Retrying the cancelled tasks does not run the superseded final either: it is
    // cancelled again when it reaches the head of the queue.
    assert_eq!(store.retry_sweep(SWEEP, false, true).await.unwrap(), 1);
    assert!(store.acquire("w", 1).await.unwrap().is_none());
    assert_eq!(state_of(&store, &f1).await, tsweep_proto::v1::TaskState::Cancelled);
    assert_consistent(&server, &[]).await;
    assert_eq!(store.summary(SWEEP).await.unwrap().status(), tsweep_proto::v1::SweepStatus::Done);
}

#[tokio::test]
async fn a_leased_final_that_is_superseded_finishes_under_its_lease() {
    let (server, store) = start().await;
    let f1 = first_final(&store).await;
    let held_f1 = store.acquire("w1", 1).await.unwrap().expect("the first final is leased");
    assert_eq!(held_f1.task_id, f1);
    extend_and_run_the_new_point(&store, 0.95).await;
    let created = store.schedule_finals(SWEEP).await.unwrap();
    assert_eq!(created.len(), 1);
    assert_eq!(state_of(&store, &f1).await, tsweep_proto::v1::TaskState::Leased, "a held final is never touched");
    assert_consistent(&server, &[]).await;

    let renewal = HeldLease { lease: Some(lease(&held_f1)), running: true, ..Default::default() };
    assert!(store.renew("w1", &[renewal]).await.unwrap().is_empty(), "its lease stays valid");
    assert_eq!(store.complete("w1", &lease(&held_f1), &result(0.88)).await.unwrap(), ReportOutcome::Accepted);
    let old = store.task(SWEEP, &f1).await.unwrap().unwrap();
    assert_eq!((old.state().name(), old.accepted_completions, old.error.as_str()), ("succeeded", 1, ""));
    assert_eq!(store.groups(SWEEP).await.unwrap()[0].current_final, created[0], "reported as not current");
    assert_eq!(store.acquire("w", 1).await.unwrap().expect("the new final runs").task_id, created[0]);
    assert_consistent(&server, &[]).await;
}

#[tokio::test]
async fn a_superseded_final_whose_attempt_is_lost_is_cancelled_not_requeued() {
    let (server, store) = start().await;
    let f1 = first_final(&store).await;
    let held_f1 = store.acquire("w1", 1).await.unwrap().expect("the first final is leased");
    extend_and_run_the_new_point(&store, 0.95).await;
    let f2 = store.schedule_finals(SWEEP).await.unwrap().remove(0);

    let outcome = store.fail("w1", &lease(&held_f1), FailureClass::Preempted, "spot reclaimed", None).await.unwrap();
    assert_eq!(outcome.state, Some(TaskState::Cancelled));
    let old = store.task(SWEEP, &f1).await.unwrap().unwrap();
    assert_eq!((old.state().name(), old.error.clone()), ("cancelled", format!("superseded by final {f2}")));
    assert_consistent(&server, &[]).await;
    assert_eq!(store.acquire("w", 1).await.unwrap().unwrap().task_id, f2);
    assert!(store.acquire("w", 1).await.unwrap().is_none());
}

#[tokio::test]
async fn a_group_whose_winner_did_not_change_keeps_its_final() {
    let (server, store) = start().await;
    let f1 = first_final(&store).await;
    extend_and_run_the_new_point(&store, 0.6).await;
    assert_consistent(&server, &[f1.as_str()]).await;
    assert!(store.schedule_finals(SWEEP).await.unwrap().is_empty(), "same winner, no new final");
    let g = &store.groups(SWEEP).await.unwrap()[0];
    assert_eq!((g.current_final.as_str(), g.finals.clone()), (f1.as_str(), vec![f1.clone()]));
    let info = store.task(SWEEP, &f1).await.unwrap().unwrap();
    assert_eq!((info.state().name(), info.error.as_str(), info.attempt), ("pending", "", 0));
    assert_consistent(&server, &[]).await;
    let f = store.acquire("w", 1).await.unwrap().expect("the final is queued again");
    assert_eq!(f.task_id, f1);
    store.complete("w", &lease(&f), &result(0.88)).await.unwrap();
    assert_eq!(store.summary(SWEEP).await.unwrap().status(), tsweep_proto::v1::SweepStatus::Done);
}

#[tokio::test]
async fn a_lost_final_of_a_reopened_group_waits_for_the_group() {
    let (server, store) = start().await;
    let f1 = first_final(&store).await;
    let held_f1 = store.acquire("w1", 1).await.unwrap().expect("the first final is leased");
    assert_eq!(store.submit(&grid(4)).await.unwrap().added, 1);
    // The final's worker is lost while the group is open: it waits, out of the queue.
    store.fail("w1", &lease(&held_f1), FailureClass::LostWorker, "gone", None).await.unwrap();
    assert_eq!(state_of(&store, &f1).await, tsweep_proto::v1::TaskState::Pending);
    assert_consistent(&server, &[f1.as_str()]).await;
    let a = store.acquire("w", 1).await.unwrap().expect("the new grid point runs");
    assert_eq!(a.task_id, point(0.004).id);
    store.complete("w", &lease(&a), &result(0.5)).await.unwrap();
    assert!(store.schedule_finals(SWEEP).await.unwrap().is_empty(), "same winner");
    assert_eq!(store.acquire("w", 1).await.unwrap().expect("queued again").task_id, f1);
}

#[tokio::test]
async fn a_final_cancelled_as_superseded_comes_back_when_its_winner_wins_again() {
    let (server, store) = start().await;
    let f1 = first_final(&store).await;
    extend_and_run_the_new_point(&store, 0.95).await;
    let f2 = store.schedule_finals(SWEEP).await.unwrap().remove(0);
    assert_eq!(state_of(&store, &f1).await, tsweep_proto::v1::TaskState::Cancelled);

    // The lr 0.004 point loses its lead (its score rewritten in Redis: no public call
    // re-scores a point), then a fifth point re-opens the group and closes it again.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = conn.hset(format!("{BASE}task:{}", point(0.004).id), "val", "0.1").await.unwrap();
    assert_eq!(store.submit(&grid(5)).await.unwrap().added, 1);
    assert_consistent(&server, &[f2.as_str()]).await;
    let a = store.acquire("w", 1).await.unwrap().expect("the fifth point runs");
    store.complete("w", &lease(&a), &result(0.5)).await.unwrap();
    assert!(store.schedule_finals(SWEEP).await.unwrap().is_empty(), "the first final exists");

    let g = &store.groups(SWEEP).await.unwrap()[0];
    assert_eq!((g.current_final.as_str(), g.winner.as_str()), (f1.as_str(), point(0.002).id.as_str()));
    let back = store.task(SWEEP, &f1).await.unwrap().unwrap();
    assert_eq!((back.state().name(), back.error.as_str()), ("pending", ""));
    let gone = store.task(SWEEP, &f2).await.unwrap().unwrap();
    assert_eq!((gone.state().name(), gone.error.clone()), ("cancelled", format!("superseded by final {f1}")));
    assert_consistent(&server, &[]).await;
    assert_eq!(store.acquire("w", 1).await.unwrap().expect("the first final runs").task_id, f1);
    assert!(store.acquire("w", 1).await.unwrap().is_none());
}
