//! Rotating the coordinator's bearer token without a restart: with `auth_token_file`, the
//! coordinator reads the file again while it runs, accepts a new token as soon as it has
//! read it, and the replaced one only for the grace window; with `user_token_file` and
//! `worker_token_file` each role follows its own file. Real coordinator and redis-server
//! (free loopback ports); a short period and window via `start_with_token_reload`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use tsweep_coordinator::config::{ConfigOverrides, ServiceConfig};
use tsweep_coordinator::redis_server::RedisServer;
use tsweep_coordinator::server::{self, auth::TokenReload};
use tsweep_proto::auth::TokenInterceptor;
use tsweep_proto::v1::sweep_service_client::SweepServiceClient;
use tsweep_proto::v1::worker_service_client::WorkerServiceClient;
use tsweep_proto::v1::{ListSweepsRequest, RegisterWorkerRequest};
use tsweep_proto::PROTOCOL_VERSION;

const GRACE: Duration = Duration::from_secs(4);

/// The code a ListSweeps call with `token` gets (`Ok` when accepted).
async fn list_with(channel: &Channel, token: &str) -> Code {
    let interceptor = TokenInterceptor::inline(Some(token.to_string())).unwrap();
    match SweepServiceClient::with_interceptor(channel.clone(), interceptor).list_sweeps(ListSweepsRequest {}).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

fn write_token(path: &Path, token: &str) {
    // Written aside and renamed in, as a Secret volume update swaps its files.
    let aside = path.with_extension("new");
    std::fs::write(&aside, format!("{token}\n")).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_is_accepted_without_restart_and_the_old_token_only_during_the_grace_window() {
    let redis = tokio::task::spawn_blocking(RedisServer::start_temp).await.unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    write_token(&token_file, "first");
    let overrides = ConfigOverrides {
        listen: Some("127.0.0.1:0".into()),
        metrics_listen: Some(String::new()),
        redis_url: Some(redis.url()),
        auth_token_file: Some(token_file.clone()),
        ..ConfigOverrides::default()
    };
    let config = ServiceConfig::load_with_env(None, overrides, Some(HashMap::new())).unwrap();
    let reload = TokenReload { reread_every: Duration::from_millis(50), grace: GRACE };
    let coordinator = server::start_with_token_reload(config, reload).await.unwrap();
    let channel = Endpoint::from_shared(coordinator.url()).unwrap().connect().await.unwrap();

    // Before the rotation: the file's token only (Redis may still be connecting).
    let deadline = Instant::now() + Duration::from_secs(15);
    while list_with(&channel, "first").await != Code::Ok {
        assert!(Instant::now() < deadline, "the initial token is never accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(list_with(&channel, "second").await, Code::Unauthenticated);

    // The Secret is rotated: the new token is accepted without a restart.
    let rotated_at = Instant::now();
    write_token(&token_file, "second");
    let deadline = Instant::now() + Duration::from_secs(15);
    while list_with(&channel, "second").await != Code::Ok {
        assert!(Instant::now() < deadline, "the rotated token is never accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let interceptor = TokenInterceptor::inline(Some("second".into())).unwrap();
    WorkerServiceClient::with_interceptor(channel.clone(), interceptor)
        .register_worker(RegisterWorkerRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "w-rotated".into(),
            ..Default::default()
        })
        .await
        .expect("the worker service accepts the rotated token too");

    // The old token is still accepted inside the grace window (which began after
    // `rotated_at`); a wrong one never is.
    let old = list_with(&channel, "first").await;
    if Instant::now() < rotated_at + GRACE {
        assert_eq!(old, Code::Ok, "the previous token is accepted during the grace window");
    }
    assert_eq!(list_with(&channel, "wrong").await, Code::Unauthenticated);

    // A file that goes away keeps the last good token.
    std::fs::remove_file(&token_file).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(list_with(&channel, "second").await, Code::Ok, "kept while the file is away");
    write_token(&token_file, "second");

    // After the grace window the old token is refused; the new one still passes.
    let deadline = rotated_at + GRACE + Duration::from_secs(20);
    loop {
        let code = list_with(&channel, "first").await;
        if code == Code::Unauthenticated {
            assert!(
                Instant::now() >= rotated_at + GRACE,
                "the previous token was refused before the grace window ended"
            );
            break;
        }
        assert_eq!(code, Code::Ok);
        assert!(Instant::now() < deadline, "the previous token is still accepted long after the grace window");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(list_with(&channel, "second").await, Code::Ok);

    coordinator.shutdown().await.unwrap();
    drop(redis);
}

/// The code a RegisterWorker call with `token` gets (`Ok` when accepted).
async fn register_with(channel: &Channel, token: &str) -> Code {
    let interceptor = TokenInterceptor::inline(Some(token.to_string())).unwrap();
    let request = RegisterWorkerRequest {
        protocol_version: PROTOCOL_VERSION,
        worker_id: format!("w-{token}"),
        ..Default::default()
    };
    match WorkerServiceClient::with_interceptor(channel.clone(), interceptor).register_worker(request).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_follows_its_own_token_file_and_never_takes_the_other_roles_token() {
    let redis = tokio::task::spawn_blocking(RedisServer::start_temp).await.unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (user_file, worker_file) = (dir.path().join("user"), dir.path().join("worker"));
    write_token(&user_file, "user-1");
    write_token(&worker_file, "worker-1");
    let overrides = ConfigOverrides {
        listen: Some("127.0.0.1:0".into()),
        metrics_listen: Some(String::new()),
        redis_url: Some(redis.url()),
        user_token_file: Some(user_file.clone()),
        worker_token_file: Some(worker_file.clone()),
        ..ConfigOverrides::default()
    };
    let config = ServiceConfig::load_with_env(None, overrides, Some(HashMap::new())).unwrap();
    let reload = TokenReload { reread_every: Duration::from_millis(50), grace: Duration::ZERO };
    let coordinator = server::start_with_token_reload(config, reload).await.unwrap();
    let channel = Endpoint::from_shared(coordinator.url()).unwrap().connect().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while list_with(&channel, "user-1").await != Code::Ok {
        assert!(Instant::now() < deadline, "the user token is never accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(register_with(&channel, "worker-1").await, Code::Ok);
    assert_eq!(list_with(&channel, "worker-1").await, Code::PermissionDenied, "worker token on SweepService");
    assert_eq!(register_with(&channel, "user-1").await, Code::PermissionDenied, "user token on WorkerService");

    // Rotating the worker's Secret changes the worker credential only.
    write_token(&worker_file, "worker-2");
    let deadline = Instant::now() + Duration::from_secs(15);
    while register_with(&channel, "worker-2").await != Code::Ok {
        assert!(Instant::now() < deadline, "the rotated worker token is never accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(register_with(&channel, "worker-1").await, Code::Unauthenticated, "no grace window here");
    assert_eq!(list_with(&channel, "worker-2").await, Code::PermissionDenied);
    assert_eq!(list_with(&channel, "user-1").await, Code::Ok, "the user credential did not change");
    coordinator.shutdown().await.unwrap();
    drop(redis);
}
