//! The store over `rediss://` against a real TLS-only redis-server (certificates made with
//! the `openssl` CLI at test time in a temporary directory).

use std::time::Duration;

use tsweep_coordinator::redis_server::{RedisServer, RedisServerTls};
use tsweep_coordinator::store::{Store, StoreError, StoreOptions};
use tsweep_coordinator::sweepfile::{ExpandedSweep, SweepSettings};
use tsweep_proto::cell::Regime;
use tsweep_proto::v1::{LeaseRef, ReportOutcome, TaskResult};
use tsweep_redis::test_support::TestPki;
use tsweep_redis::RedisTlsFiles;

mod support;

const SWEEP: &str = "tls";

fn tls_server(pki: &TestPki, auth_clients: bool) -> RedisServer {
    RedisServer::start_tls_temp(RedisServerTls {
        cert_file: pki.server_cert.clone(),
        key_file: pki.server_key.clone(),
        ca_cert_file: pki.ca_cert.clone(),
        auth_clients,
    })
    .expect("tls redis-server starts")
}

fn options() -> StoreOptions {
    StoreOptions { connection_timeout: Duration::from_secs(3), ..StoreOptions::default() }
}

async fn connect(server: &RedisServer, tls: &RedisTlsFiles) -> Result<Store, StoreError> {
    Store::connect_with_tls(&server.url(), tls, options()).await
}

async fn submit_acquire_complete(store: &Store) {
    let cell = support::cell(support::spec(SWEEP, "m", Regime::Finetune, 0.1, 1, 3));
    let sweep =
        ExpandedSweep { name: SWEEP.into(), settings: SweepSettings { max_attempts: 3 }, cells: vec![cell.clone()] };
    store.submit(&sweep).await.unwrap();
    let assignment = store.acquire("w1", 1).await.unwrap().expect("the task is leased over tls");
    assert_eq!(assignment.task_id, cell.id);
    let lease = LeaseRef { sweep: SWEEP.into(), task_id: cell.id.clone(), attempt: assignment.attempt };
    let result = TaskResult {
        metric: tsweep_proto::v1::Metric::Top1.into(),
        val_score: Some(0.9),
        steps: 1,
        ..Default::default()
    };
    assert_eq!(store.complete("w1", &lease, &result).await.unwrap(), ReportOutcome::Accepted);
    assert_eq!(store.task(SWEEP, &cell.id).await.unwrap().unwrap().state(), tsweep_proto::v1::TaskState::Succeeded);
}

fn assert_tls_refusal(err: &StoreError) {
    let text = format!("{err}").to_lowercase();
    assert!(text.contains("certificate") || text.contains("tls"), "the error says tls/certificate: {text}");
    assert!(!err.is_retryable(), "a refused handshake is not retryable: {err}");
}

#[tokio::test]
async fn store_runs_the_lease_protocol_over_tls_with_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let server = tls_server(&pki, false);
    assert!(server.url().starts_with("rediss://"));
    let store = connect(&server, &pki.ca_only()).await.expect("store connects over tls");
    store.ping().await.unwrap();
    submit_acquire_complete(&store).await;
}

#[tokio::test]
async fn a_wrong_ca_is_refused_and_not_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let server = tls_server(&pki, false);
    let wrong = RedisTlsFiles { ca_file: Some(pki.other_ca_cert.clone()), ..Default::default() };
    let err = connect(&server, &wrong).await.expect_err("an unknown issuer is refused");
    assert_tls_refusal(&err);
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let server = tls_server(&pki, true);
    let store = connect(&server, &pki.mutual()).await.expect("the client certificate is accepted");
    submit_acquire_complete(&store).await;

    // Without a certificate the server ends the handshake; depending on timing the client
    // sees the TLS alert or a closed connection: either way no store.
    let err = connect(&server, &pki.ca_only()).await.expect_err("no client certificate, no connection");
    assert!(matches!(err, StoreError::Redis { .. }), "{err}");
}

#[tokio::test]
async fn a_plain_url_with_tls_files_is_a_settings_error() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let err = Store::connect_with_tls("redis://127.0.0.1:1/", &pki.ca_only(), options()).await.unwrap_err();
    assert!(matches!(err, StoreError::Settings(_)), "{err}");
    assert!(err.to_string().contains("redis_ca_file"), "{err}");
    assert!(!err.is_retryable());
}
