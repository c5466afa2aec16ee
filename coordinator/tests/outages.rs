//! Control-plane outages against a real redis-server (one per test, on a free loopback
//! port, killed at the end): the coordinators' liveness beat finds the dark time (no beat,
//! or a Redis restart), the reaper gives leases that time back before it reaps anything,
//! a lease that is really abandoned still expires after the outage, and the set of active
//! sweeps is re-derived from the task state. Lease TTLs are milliseconds here.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tsweep_coordinator::redis_server::RedisServer;
use tsweep_coordinator::store::{Budget, Checkpoint, Store, StoreOptions, SubmitOptions};
use tsweep_coordinator::sweepfile::{Cell, ExpandedSweep, SweepSettings};
use tsweep_proto::cell::Regime;
use tsweep_proto::v1::{FailureClass, HeldLease, LeaseRef, ReportOutcome, StopReason, TaskAssignment, TaskResult};

mod support;

const SWEEP: &str = "dark";
const TTL: Duration = Duration::from_millis(400);

fn sweep(n: usize) -> ExpandedSweep {
    let cells: Vec<Cell> = (0..n)
        .map(|i| support::cell(support::spec(SWEEP, "m", Regime::Finetune, 0.001 * (i + 1) as f64, 1, 3)))
        .collect();
    ExpandedSweep { name: SWEEP.to_string(), settings: SweepSettings { max_attempts: 3 }, cells }
}

fn options() -> StoreOptions {
    StoreOptions { lease_ttl: TTL, dark_after: Duration::from_millis(150), ..StoreOptions::default() }
}

async fn start() -> (RedisServer, Store) {
    let server = tokio::task::spawn_blocking(RedisServer::start_temp).await.unwrap().expect("redis-server starts");
    let store = Store::connect(&server.url(), options()).await.expect("store connects");
    (server, store)
}

fn lease(a: &TaskAssignment) -> LeaseRef {
    LeaseRef { sweep: a.sweep.clone(), task_id: a.task_id.clone(), attempt: a.attempt }
}

fn held(a: &TaskAssignment, checkpoint: Option<(&str, u64)>, resume_error: &str) -> HeldLease {
    HeldLease {
        lease: Some(lease(a)),
        checkpoint: checkpoint.map(|(path, step)| Checkpoint { path: path.to_string(), step }),
        running: true,
        resume_error: resume_error.to_string(),
    }
}

fn scored() -> TaskResult {
    TaskResult {
        metric: tsweep_proto::v1::Metric::Top1.into(),
        val_score: Some(0.5),
        test_score: Some(0.4),
        ..Default::default()
    }
}

/// Beats and reaps every 50 ms (a coordinator that is up) for `span`; returns the leases reaped.
async fn serve_for(store: &Store, span: Duration) -> u64 {
    let until = Instant::now() + span;
    let mut reaped = 0;
    while Instant::now() < until {
        store.beat("coordinator-a").await.unwrap();
        reaped += store.reap_expired(SWEEP).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reaped
}

#[tokio::test]
async fn an_outage_longer_than_the_ttl_costs_no_lease_and_an_abandoned_one_still_expires_after_it() {
    let (_server, store) = start().await;
    store.submit(&sweep(3)).await.unwrap();
    let first = store.beat("coordinator-a").await.unwrap();
    assert!(first.outage.is_none());
    let alive = store.acquire("w-alive", 1).await.unwrap().unwrap();
    let dead = store.acquire("w-dead", 1).await.unwrap().unwrap();
    assert_eq!(serve_for(&store, Duration::from_millis(200)).await, 0);
    store.renew("w-alive", &[held(&alive, None, "")]).await.unwrap();
    store.renew("w-dead", &[held(&dead, None, "")]).await.unwrap();

    // Every coordinator is gone for three TTLs: no beat, no renewal, no reaping.
    tokio::time::sleep(TTL * 3).await;
    let back = store.beat("coordinator-b").await.unwrap();
    let outage = back.outage.expect("the dark time is an outage");
    assert!(outage.duration_ms() >= (TTL * 3).as_millis() as u64, "{outage:?}");
    assert!(!back.redis_restarted);
    assert_eq!(store.outages().await.unwrap(), vec![outage]);
    assert_eq!(store.reap_expired(SWEEP).await.unwrap(), 0, "no lease expired only because nobody could renew it");
    assert_eq!(store.reap_expired(SWEEP).await.unwrap(), 0, "an outage is applied once");
    // A lease taken after the outage is not extended by it.
    let fresh = store.acquire("w-fresh", 1).await.unwrap().unwrap();

    // The live worker re-attaches; the dead one never does and is reaped within a TTL.
    let stops = store.renew("w-alive", &[held(&alive, None, "")]).await.unwrap();
    assert!(stops.is_empty(), "the live worker keeps its lease: {stops:?}");
    let returned = Instant::now();
    let mut reaped = 0;
    while reaped < 2 {
        assert!(returned.elapsed() < TTL * 3, "the abandoned leases were not reaped within a TTL or so");
        store.renew("w-alive", &[held(&alive, None, "")]).await.unwrap();
        reaped += serve_for(&store, Duration::from_millis(100)).await;
    }
    assert!(returned.elapsed() >= TTL / 2, "reaped too early: {:?}", returned.elapsed());
    let dead_task = store.task(SWEEP, &dead.task_id).await.unwrap().unwrap();
    assert_eq!(dead_task.state(), tsweep_proto::v1::TaskState::Pending);
    assert_eq!(dead_task.error_class, FailureClass::LostWorker as i32);
    assert_eq!(store.task(SWEEP, &fresh.task_id).await.unwrap().unwrap().state(), tsweep_proto::v1::TaskState::Pending);
    assert_eq!(store.task(SWEEP, &alive.task_id).await.unwrap().unwrap().state(), tsweep_proto::v1::TaskState::Running);
    assert_eq!(store.summary(SWEEP).await.unwrap().lease_expiries, 2);
}

#[tokio::test]
async fn beats_of_several_coordinators_make_one_plane_and_a_short_gap_is_no_outage() {
    let (_server, store) = start().await;
    for i in 0..6 {
        let who = if i % 2 == 0 { "coordinator-a" } else { "coordinator-b" };
        assert!(store.beat(who).await.unwrap().outage.is_none());
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // One coordinator gone, the other still beating: no outage.
    for _ in 0..8 {
        assert!(store.beat("coordinator-b").await.unwrap().outage.is_none());
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(store.outages().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_redis_restart_is_dark_time_too() {
    let (mut server, store) = start().await;
    store.submit(&sweep(1)).await.unwrap();
    store.beat("coordinator-a").await.unwrap();
    let a = store.acquire("w", 1).await.unwrap().unwrap();
    // kill -9 of redis-server; the AOF has every acknowledged write (everysec, page cache).
    server.kill();
    tokio::time::sleep(TTL * 3).await;
    server.start().expect("redis-server restarts on its AOF");
    let mut beat = None;
    for _ in 0..100 {
        match store.beat("coordinator-a").await {
            Ok(b) => {
                beat = Some(b);
                break;
            }
            Err(e) => assert!(e.is_retryable(), "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let beat = beat.expect("redis answers again");
    assert!(beat.redis_restarted, "{beat:?}");
    let outage = beat.outage.expect("the restart is an outage");
    assert!(outage.duration_ms() >= (TTL * 3).as_millis() as u64, "{outage:?}");
    assert_eq!(store.reap_expired(SWEEP).await.unwrap(), 0, "the lease survived the restart");
    assert!(store.renew("w", &[held(&a, None, "")]).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_active_set_is_re_derived_from_the_task_state() {
    let (server, store) = start().await;
    store.submit(&sweep(2)).await.unwrap();
    let mut redis = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    // An interrupted operation left the sweep out of `active`: nothing would ever lease it.
    let _: () = redis.srem("tsweep:active", SWEEP).await.unwrap();
    assert!(store.acquire("w", 1).await.unwrap().is_none());
    assert_eq!(store.repair_active().await.unwrap(), vec![SWEEP.to_string()]);
    let a = store.acquire("w", 1).await.unwrap().expect("leased again");
    // Leased work counts too.
    let _: () = redis.srem("tsweep:active", SWEEP).await.unwrap();
    assert_eq!(store.repair_active().await.unwrap(), vec![SWEEP.to_string()]);
    assert!(store.repair_active().await.unwrap().is_empty(), "already active");
    store.complete("w", &lease(&a), &scored()).await.unwrap();
    let b = store.acquire("w", 1).await.unwrap().unwrap();
    store.complete("w", &lease(&b), &scored()).await.unwrap();
    // A closed selection group waiting for its final counts as work as well.
    let _: () = redis.srem("tsweep:active", SWEEP).await.unwrap();
    assert_eq!(store.repair_active().await.unwrap(), vec![SWEEP.to_string()]);
    store.schedule_finals(SWEEP).await.unwrap();
    let f = store.acquire("w", 1).await.unwrap().expect("the final");
    store.complete("w", &lease(&f), &scored()).await.unwrap();
    assert!(store.acquire("w", 1).await.unwrap().is_none());
    // A finished sweep is not put back.
    let _: () = redis.srem("tsweep:active", SWEEP).await.unwrap();
    assert!(store.repair_active().await.unwrap().is_empty());
    assert_eq!(store.summary(SWEEP).await.unwrap().status(), tsweep_proto::v1::SweepStatus::Done);
}

#[tokio::test]
async fn the_repair_leaves_a_submission_still_landing_and_a_delete_under_way_alone() {
    let server = tokio::task::spawn_blocking(RedisServer::start_temp).await.unwrap().expect("redis-server starts");
    let opts = StoreOptions { submit_batch: 2, bulk_batch: 1, ..options() };
    let store = Store::connect(&server.url(), opts).await.expect("store connects");
    let mut redis = redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let is_active = |redis: &mut redis::aio::MultiplexedConnection| {
        let mut redis = redis.clone();
        async move { redis.sismember::<_, _, bool>("tsweep:active", SWEEP).await.unwrap() }
    };

    // A submission stopped after its first batch: cells are pending, but the sweep is
    // `submitting` and only its own last batch makes it active.
    let cells = sweep(6);
    let stopped = SubmitOptions { budget: Budget::of(Duration::ZERO), ..SubmitOptions::default() };
    let part = store.submit_part(&cells, &stopped).await.unwrap();
    assert!(!part.complete && part.next == 2, "{part:?}");
    assert!(store.repair_active().await.unwrap().is_empty(), "a submission still landing is not repaired");
    assert!(!is_active(&mut redis).await);
    assert_eq!(store.summary(SWEEP).await.unwrap().status(), tsweep_proto::v1::SweepStatus::Submitting);
    store.submit(&cells).await.unwrap();
    assert!(is_active(&mut redis).await, "the finished submission marks it active");

    // A cancelled sweep whose delete began: its tombstone keeps tasks (one still leased)
    // until the batches remove them, and the repair never puts it back.
    let a = store.acquire("w", 1).await.unwrap().expect("leased");
    store.cancel_sweep(SWEEP).await.unwrap();
    let part = store.delete_part(SWEEP, false, Budget::of(Duration::ZERO)).await.unwrap();
    assert!(!part.complete && part.tasks_total == 6, "{part:?}");
    assert_eq!(store.summary(SWEEP).await.unwrap().status(), tsweep_proto::v1::SweepStatus::Deleting);
    assert!(store.repair_active().await.unwrap().is_empty(), "a tombstoned sweep is not re-activated");
    assert!(!is_active(&mut redis).await);
    // Even when something put it back, the next acquire finds it idle and drops it.
    let _: () = redis.sadd("tsweep:active", SWEEP).await.unwrap();
    assert!(store.acquire("w", 1).await.unwrap().is_none());
    assert!(!is_active(&mut redis).await, "acquire found it idle");
    assert_eq!(store.renew("w", &[held(&a, None, "")]).await.unwrap()[0].reason, StopReason::LeaseLost as i32);
    let done = store.delete_sweep(SWEEP, false).await.unwrap();
    assert!(done.complete, "{done:?}");
    assert!(store.repair_active().await.unwrap().is_empty());
    assert!(!is_active(&mut redis).await);
}

#[tokio::test]
async fn a_resume_checkpoint_that_is_gone_is_recorded_and_the_checkpoint_follows_the_new_attempt() {
    let (_server, store) = start().await;
    store.submit(&sweep(1)).await.unwrap();
    let first = store.acquire("w1", 1).await.unwrap().unwrap();
    store.renew("w1", &[held(&first, Some(("/ckpt/attempt-1/c", 50)), "")]).await.unwrap();
    let lost = store.fail("w1", &lease(&first), FailureClass::Preempted, "drained", None).await.unwrap();
    assert_eq!(lost.outcome, ReportOutcome::Accepted);

    let second = store.acquire("w2", 1).await.unwrap().unwrap();
    assert_eq!(second.resume, Some(Checkpoint { path: "/ckpt/attempt-1/c".into(), step: 50 }));
    // Its resume checkpoint is gone: it says so and starts from step 0; its own checkpoints
    // (below step 50) are recorded from now on.
    let why = "checkpoint /ckpt/attempt-1/c (step 50) is missing";
    let stops = store.renew("w2", &[held(&second, Some(("/ckpt/attempt-2/c", 10)), why)]).await.unwrap();
    assert!(stops.is_empty());
    let task = store.task(SWEEP, &second.task_id).await.unwrap().unwrap();
    assert_eq!(task.checkpoint, Some(Checkpoint { path: "/ckpt/attempt-2/c".into(), step: 10 }));
    assert_eq!(task.resume_error, format!("attempt 2: {why}"));
    // A late heartbeat with an older checkpoint of the same attempt changes nothing.
    store.renew("w2", &[held(&second, Some(("/ckpt/attempt-2/old", 5)), why)]).await.unwrap();
    store.renew("w2", &[held(&second, Some(("/ckpt/attempt-2/c", 20)), why)]).await.unwrap();
    let task = store.task(SWEEP, &second.task_id).await.unwrap().unwrap();
    assert_eq!(task.checkpoint, Some(Checkpoint { path: "/ckpt/attempt-2/c".into(), step: 20 }));

    // A failure report carries it too (an attempt that fails before its first heartbeat).
    let c = Checkpoint { path: "/ckpt/attempt-2/c".into(), step: 30 };
    store.fail("w2", &lease(&second), FailureClass::Preempted, "drained", Some(&c)).await.unwrap();
    let third = store.acquire("w3", 1).await.unwrap().unwrap();
    assert_eq!(third.resume, Some(Checkpoint { path: "/ckpt/attempt-2/c".into(), step: 30 }));
    let c = Checkpoint { path: "/ckpt/attempt-3/c".into(), step: 3 };
    let why = "checkpoint /ckpt/attempt-2/c (step 30) is missing";
    store.fail_with_resume_error("w3", &lease(&third), FailureClass::Retryable, "boom", Some(&c), why).await.unwrap();
    let task = store.task(SWEEP, &third.task_id).await.unwrap().unwrap();
    assert_eq!(task.checkpoint, Some(Checkpoint { path: "/ckpt/attempt-3/c".into(), step: 3 }));
    assert_eq!(task.resume_error, format!("attempt 3: {why}"));
    // An old attempt's stale heartbeat can do none of this.
    let stops = store.renew("w1", &[held(&first, Some(("/ckpt/attempt-1/c", 1)), "x")]).await.unwrap();
    assert_eq!(stops[0].reason, StopReason::LeaseLost as i32);
    assert_eq!(store.task(SWEEP, &third.task_id).await.unwrap().unwrap().checkpoint.map(|c| c.step), Some(3));
}
