//! `tsweep delete` / `DeleteSweep` / `Store::delete_sweep` against a real redis-server (one
//! per test, on a free loopback port, killed at the end): every key of the sweep goes and
//! nothing of other sweeps; unfinished sweeps are refused unchanged until cancelled (or
//! `force`); late worker calls for a deleted sweep are stale and write nothing back.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::time::Duration;

use tonic::transport::Endpoint;
use tonic::Code;
use tsweep_coordinator::config::ServiceConfig;
use tsweep_coordinator::redis_server::RedisServer;
use tsweep_coordinator::server;
use tsweep_coordinator::store::{Checkpoint, Store, StoreError, StoreOptions};
use tsweep_coordinator::sweepfile::{task_id, Cell, ExpandedSweep, SweepSettings};
use tsweep_proto::cell::{CellSpec, Regime};
use tsweep_proto::v1::sweep_service_client::SweepServiceClient;
use tsweep_proto::v1::worker_service_client::WorkerServiceClient;
use tsweep_proto::v1::{
    AcquireTaskRequest, CancelSweepRequest, CompleteTaskRequest, DeleteSweepRequest, FailureClass, GetSweepRequest,
    HeartbeatRequest, HeldLease, LeaseRef, RegisterWorkerRequest, ReportOutcome, StopReason, SubmitSweepRequest,
    TaskAssignment, TaskResult,
};
use tsweep_proto::PROTOCOL_VERSION;

mod support;
use support::scan;

const TSWEEP: &str = env!("CARGO_BIN_EXE_tsweep");

fn spec(sweep: &str, lr: f64) -> CellSpec {
    support::spec(sweep, "m", Regime::Finetune, lr, 1, 3)
}

/// `n` finetune grid points (one selection group) of sweep `name`.
fn sweep(name: &str, n: usize) -> ExpandedSweep {
    let cells = (0..n)
        .map(|i| {
            let spec = spec(name, 0.001 * (i + 1) as f64);
            Cell { id: task_id(&spec), spec, after: None }
        })
        .collect();
    ExpandedSweep { name: name.to_string(), settings: SweepSettings { max_attempts: 3 }, cells }
}

async fn start() -> (RedisServer, Store) {
    let server = tokio::task::spawn_blocking(RedisServer::start_temp).await.unwrap().expect("redis-server starts");
    let options = StoreOptions { lease_ttl: Duration::from_secs(30), ..StoreOptions::default() };
    let store = Store::connect(&server.url(), options).await.expect("store connects");
    (server, store)
}

fn lease(a: &TaskAssignment) -> LeaseRef {
    LeaseRef { sweep: a.sweep.clone(), task_id: a.task_id.clone(), attempt: a.attempt }
}

fn held(a: &TaskAssignment) -> HeldLease {
    HeldLease { lease: Some(lease(a)), running: true, ..Default::default() }
}

fn result(val: f64) -> TaskResult {
    TaskResult { metric: tsweep_proto::v1::Metric::Top1.into(), val_score: Some(val), steps: 10, ..Default::default() }
}

/// Every key of the sweep with its DUMP, to compare before and after.
async fn snapshot(store: &Store, sweep: &str) -> BTreeMap<String, Vec<u8>> {
    let mut conn = store.connection();
    let mut dump = BTreeMap::new();
    for key in scan(store, &format!("tsweep:{{{sweep}}}:*")).await {
        let value: Vec<u8> = redis::cmd("DUMP").arg(&key).query_async(&mut conn).await.unwrap();
        dump.insert(key, value);
    }
    dump
}

async fn members(store: &Store, key: &str) -> BTreeSet<String> {
    let mut conn = store.connection();
    redis::cmd("SMEMBERS").arg(key).query_async(&mut conn).await.unwrap()
}

/// Runs the sweep to its end: every grid point, then its final, each completed, with a
/// checkpoint recorded on the way, a metrics entry in its stream and a progress record.
async fn finish(store: &Store, name: &str) {
    loop {
        while let Some(task) = store.acquire("w-finish", 1).await.unwrap() {
            let checkpoint = format!("/ckpt/{}/{}/attempt-{}/state.pt", task.sweep, task.task_id, task.attempt);
            let mut beat = held(&task);
            beat.checkpoint = Some(Checkpoint { path: checkpoint, step: 5 });
            assert!(store.renew("w-finish", &[beat]).await.unwrap().is_empty());
            let outcome = store.complete("w-finish", &lease(&task), &result(0.5)).await.unwrap();
            assert_eq!(outcome, ReportOutcome::Accepted);
        }
        if store.schedule_finals(name).await.unwrap().is_empty() {
            break;
        }
    }
    let mut conn = store.connection();
    let stream = store.metrics_stream_key(name);
    let _: String =
        redis::cmd("XADD").arg(&stream).arg("*").arg("task_id").arg("t").query_async(&mut conn).await.unwrap();
    let _: i64 =
        redis::cmd("HSET").arg(format!("{stream}:progress")).arg("t").arg("{}").query_async(&mut conn).await.unwrap();
    assert_eq!(store.summary(name).await.unwrap().status(), tsweep_proto::v1::SweepStatus::Done);
}

#[tokio::test]
async fn deleting_a_finished_sweep_removes_every_key_and_leaves_other_sweeps_alone() {
    let (_server, store) = start().await;
    store.submit(&sweep("gone", 3)).await.unwrap();
    finish(&store, "gone").await;
    store.submit(&sweep("kept", 2)).await.unwrap();
    let running = store.acquire("w-kept", 1).await.unwrap().expect("a task of the other sweep");
    assert_eq!(running.sweep, "kept");
    assert!(store.groups("gone").await.unwrap().iter().all(|g| !g.finals.is_empty()), "a final was created");

    let before = scan(&store, "tsweep:{gone}:*").await;
    for suffix in ["meta", "counts", "all", "best", "groups", "metrics", "metrics:progress", "state:succeeded"] {
        assert!(before.contains(&format!("tsweep:{{gone}}:{suffix}")), "{suffix} exists before: {before:?}");
    }
    let kept_before = snapshot(&store, "kept").await;
    let workers_before = scan(&store, "tsweep:worker*").await;

    let outcome = store.delete_sweep("gone", false).await.unwrap();
    assert_eq!(outcome.tasks_deleted, 4, "3 grid points and their final");
    assert_eq!(outcome.keys_deleted as usize, before.len(), "every key counted once");
    assert_eq!(outcome.checkpoint_dir.as_deref(), Some("/ckpt/gone"));
    assert!(!outcome.leftovers_only);

    assert!(scan(&store, "tsweep:{gone}:*").await.is_empty(), "no key of the sweep is left");
    assert!(!members(&store, "tsweep:sweeps").await.contains("gone"));
    assert!(!members(&store, "tsweep:active").await.contains("gone"));
    assert!(store.list_sweeps().await.unwrap().iter().all(|s| s.sweep != "gone"));
    assert!(matches!(store.summary("gone").await, Err(StoreError::SweepNotFound { .. })));

    assert_eq!(snapshot(&store, "kept").await, kept_before, "the other sweep is untouched");
    assert_eq!(scan(&store, "tsweep:worker*").await, workers_before);
    assert!(members(&store, "tsweep:sweeps").await.contains("kept"));
    assert!(members(&store, "tsweep:active").await.contains("kept"));
    assert_eq!(store.complete("w-kept", &lease(&running), &result(0.7)).await.unwrap(), ReportOutcome::Accepted);

    // A second delete is NOT_FOUND and writes nothing.
    assert!(matches!(store.delete_sweep("gone", false).await, Err(StoreError::SweepNotFound { .. })));
    assert!(scan(&store, "tsweep:{gone}:*").await.is_empty());
}

#[tokio::test]
async fn a_leased_task_refuses_the_delete_until_the_sweep_is_cancelled_and_late_reports_are_stale() {
    let (_server, store) = start().await;
    store.submit(&sweep("busy", 2)).await.unwrap();
    let first = store.acquire("w1", 1).await.unwrap().expect("a task");
    let second = store.acquire("w2", 1).await.unwrap().expect("a task");
    let before = snapshot(&store, "busy").await;

    let refused = store.delete_sweep("busy", false).await.unwrap_err();
    match &refused {
        StoreError::SweepUnfinished { leased, pending, .. } => assert_eq!((*leased, *pending), (2, 0)),
        other => panic!("expected SweepUnfinished, got {other:?}"),
    }
    let message = refused.to_string();
    assert!(message.contains("tsweep cancel busy") && message.contains("--force"), "{message}");
    assert!(!refused.is_retryable());
    assert_eq!(snapshot(&store, "busy").await, before, "a refused delete changes nothing");
    assert!(members(&store, "tsweep:active").await.contains("busy"));
    assert!(members(&store, "tsweep:sweeps").await.contains("busy"));

    store.cancel_sweep("busy").await.unwrap();
    let outcome = store.delete_sweep("busy", false).await.unwrap();
    assert_eq!(outcome.tasks_deleted, 2);
    assert!(scan(&store, "tsweep:{busy}:*").await.is_empty());

    // The workers still holding the leases: renew says lost, reports are stale, a reaper
    // and the finals loop find nothing, and none of it recreates a key.
    let stops = store.renew("w1", &[held(&first)]).await.unwrap();
    assert_eq!(stops.len(), 1);
    assert_eq!(stops[0].reason, StopReason::LeaseLost as i32);
    assert_eq!(store.complete("w1", &lease(&first), &result(0.5)).await.unwrap(), ReportOutcome::Stale);
    let failed = store
        .fail(
            "w2",
            &lease(&second),
            FailureClass::Preempted,
            "stopped",
            Some(&Checkpoint { path: "/c".into(), step: 3 }),
        )
        .await
        .unwrap();
    assert_eq!(failed.outcome, ReportOutcome::Stale);
    assert!(!store.is_current_attempt("busy", &first.task_id, first.attempt).await.unwrap());
    assert_eq!(store.reap_expired("busy").await.unwrap(), 0);
    assert!(store.schedule_finals("busy").await.unwrap().is_empty());
    assert!(store.acquire("w3", 8).await.unwrap().is_none());
    assert!(scan(&store, "tsweep:{busy}:*").await.is_empty(), "late calls recreated keys");
    assert!(matches!(store.summary("busy").await, Err(StoreError::SweepNotFound { .. })));
}

#[tokio::test]
async fn pending_cells_need_force_which_cancels_then_deletes() {
    let (_server, store) = start().await;
    store.submit(&sweep("queued", 3)).await.unwrap();
    match store.delete_sweep("queued", false).await {
        Err(StoreError::SweepUnfinished { pending: 3, leased: 0, running: 0, .. }) => {}
        other => panic!("expected SweepUnfinished with 3 pending, got {other:?}"),
    }
    let outcome = store.delete_sweep("queued", true).await.unwrap();
    assert_eq!(outcome.cancelled, 3);
    assert_eq!(outcome.tasks_deleted, 3);
    assert_eq!(outcome.checkpoint_dir, None);
    assert!(scan(&store, "tsweep:{queued}:*").await.is_empty());
    // The name can be used again: a new submission starts from scratch.
    let again = store.submit(&sweep("queued", 3)).await.unwrap();
    assert_eq!(again.added, 3);
    assert_eq!(store.summary("queued").await.unwrap().counts.unwrap().pending, 3);
}

#[tokio::test]
async fn unknown_sweeps_are_not_found_and_a_recreated_metrics_stream_is_cleaned_up() {
    let (_server, store) = start().await;
    assert!(matches!(store.delete_sweep("never", false).await, Err(StoreError::SweepNotFound { .. })));
    assert!(matches!(store.delete_sweep("never", true).await, Err(StoreError::SweepNotFound { .. })));
    assert!(matches!(store.delete_sweep("bad{name}", false).await, Err(StoreError::InvalidArgument(_))));

    // A worker of an older version (plain XADD, which creates the stream) that was still
    // stopping appends progress after the delete: a second delete removes the leftover.
    store.submit(&sweep("late", 1)).await.unwrap();
    store.delete_sweep("late", true).await.unwrap();
    let mut conn = store.connection();
    let _: String = redis::cmd("XADD")
        .arg(store.metrics_stream_key("late"))
        .arg("*")
        .arg("task_id")
        .arg("t")
        .query_async(&mut conn)
        .await
        .unwrap();
    let outcome = store.delete_sweep("late", false).await.unwrap();
    assert!(outcome.leftovers_only);
    assert_eq!(outcome.keys_deleted, 1);
    assert!(scan(&store, "tsweep:{late}:*").await.is_empty());
    assert!(matches!(store.delete_sweep("late", false).await, Err(StoreError::SweepNotFound { .. })));
}

#[tokio::test]
async fn a_late_progress_append_after_the_delete_recreates_no_key() {
    let (_server, store) = start().await;
    store.submit(&sweep("late", 1)).await.unwrap();
    let stream = store.metrics_stream_key("late");
    // The stream exists from the submit on, before any worker writes, with the consumer group.
    let mut conn = store.connection();
    let groups: Vec<redis::Value> =
        redis::cmd("XINFO").arg("GROUPS").arg(&stream).query_async(&mut conn).await.unwrap();
    assert_eq!(groups.len(), 1, "the coordinator's consumer group is created at submit");
    // The worker's append (worker/src/agent/metrics.rs) while the sweep exists.
    let xadd = |key: &str| {
        let mut command = redis::cmd("XADD");
        command.arg(key).arg("NOMKSTREAM").arg("MAXLEN").arg("~").arg(100_000).arg("*").arg("task_id").arg("t");
        command
    };
    let id: Option<String> = xadd(&stream).query_async(&mut conn).await.unwrap();
    assert!(id.is_some());

    store.delete_sweep("late", true).await.unwrap();
    assert!(scan(&store, "tsweep:{late}:*").await.is_empty());
    // A worker that was still stopping appends progress after the delete: nothing comes back.
    let id: Option<String> = xadd(&stream).query_async(&mut conn).await.unwrap();
    assert_eq!(id, None, "no stream, no entry");
    assert!(scan(&store, "tsweep:{late}:*").await.is_empty(), "the deleted sweep's stream is not recreated");
    assert!(matches!(store.delete_sweep("late", false).await, Err(StoreError::SweepNotFound { .. })));

    // Submitted again, the sweep gets its stream again.
    store.submit(&sweep("late", 1)).await.unwrap();
    let id: Option<String> = xadd(&stream).query_async(&mut conn).await.unwrap();
    assert!(id.is_some());
}

// ---------------------------------------------------------------- gRPC and the CLI

fn sweep_file() -> String {
    support::sweep_file("cli", &[0.01, 0.1])
}

async fn tsweep(url: &str, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(TSWEEP);
    command.args(["--coordinator", url]).args(args).env_remove("RUST_LOG");
    tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_over_grpc_and_the_cli_codes_and_messages() {
    let mut redis = tokio::task::spawn_blocking(RedisServer::start_temp).await.unwrap().unwrap();
    let config = ServiceConfig {
        listen: "127.0.0.1:0".into(),
        metrics_listen: String::new(),
        redis_url: redis.url(),
        lease_ttl_ms: 30_000,
        ..ServiceConfig::default()
    };
    let coordinator = server::start(config).await.unwrap();
    let url = coordinator.url();
    let channel = Endpoint::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let mut sweeps = SweepServiceClient::new(channel.clone());
    let mut workers = WorkerServiceClient::new(channel);
    // The store answers once Redis is connected (the server connects in the background).
    let mut tries = 0;
    while let Err(status) = sweeps.get_sweep(GetSweepRequest { sweep: "none".into() }).await {
        if status.code() == Code::NotFound {
            break;
        }
        tries += 1;
        assert!(tries < 200, "coordinator never became ready: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let missing = sweeps
        .delete_sweep(DeleteSweepRequest { sweep: "none".into(), force: false, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing}");

    sweeps
        .submit_sweep(SubmitSweepRequest {
            file_text: sweep_file(),
            file_name: "cli.toml".into(),
            base_dir: "/data".into(),
            allow_huge: false,
            ..Default::default()
        })
        .await
        .unwrap();
    let worker_secret = workers
        .register_worker(RegisterWorkerRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "w".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .worker_secret;
    let task = workers
        .acquire_task(AcquireTaskRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "w".into(),
            free_gpus: 0,
            slot: 0,
            worker_secret: worker_secret.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .expect("a task");

    let refused = sweeps
        .delete_sweep(DeleteSweepRequest { sweep: "cli".into(), force: false, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
    assert!(refused.message().contains("tsweep cancel cli"), "{}", refused.message());

    let out = tsweep(&url, &["delete", "cli"]).await;
    assert_eq!(out.status.code(), Some(2), "stderr: {}", text(&out.stderr));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: delete cli: ") && err.contains("--force"), "{err}");
    assert_eq!(
        sweeps.get_sweep(GetSweepRequest { sweep: "cli".into() }).await.unwrap().into_inner().status(),
        tsweep_proto::v1::SweepStatus::Active
    );

    let out = tsweep(&url, &["delete", "nope"]).await;
    assert_eq!(out.status.code(), Some(2), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not found"), "{}", text(&out.stderr));

    sweeps.cancel_sweep(CancelSweepRequest { sweep: "cli".into(), ..Default::default() }).await.unwrap();
    let out = tsweep(&url, &["delete", "cli"]).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(printed.contains("deleted from Redis (2 cell(s)") && printed.contains("not removed"), "{printed}");
    let gone = sweeps.get_sweep(GetSweepRequest { sweep: "cli".into() }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    // The worker still holding a lease: heartbeat says LEASE_LOST, the report is STALE.
    let lease = LeaseRef { sweep: task.sweep.clone(), task_id: task.task_id.clone(), attempt: task.attempt };
    let beat = workers
        .heartbeat(HeartbeatRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "w".into(),
            leases: vec![HeldLease { lease: Some(lease.clone()), running: true, ..Default::default() }],
            worker_secret: worker_secret.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(beat.stop.len(), 1);
    assert_eq!(beat.stop[0].reason, StopReason::LeaseLost as i32);
    let report = workers
        .complete_task(CompleteTaskRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "w".into(),
            lease: Some(lease),
            result: Some(result(0.4)),
            worker_secret,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.outcome, ReportOutcome::Stale as i32);

    // --force on a sweep with pending cells.
    sweeps
        .submit_sweep(SubmitSweepRequest {
            file_text: sweep_file(),
            file_name: "cli.toml".into(),
            base_dir: "/data".into(),
            allow_huge: false,
            ..Default::default()
        })
        .await
        .unwrap();
    let out = tsweep(&url, &["delete", "--force", "cli"]).await;
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("2 pending cell(s) cancelled"), "{}", text(&out.stdout));

    coordinator.shutdown().await.unwrap();
    redis.kill();
}
