//! The metrics stream consumer trims what it has acked: over a long sweep the stream stays
//! short (Redis memory flat), and no entry that a consumer group still has to read or ack
//! is ever dropped. Real redis-server, the coordinator's own loops.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tsweep_coordinator::config::ServiceConfig;
use tsweep_coordinator::redis_server::RedisServer;
use tsweep_coordinator::server;
use tsweep_coordinator::store::{Store, StoreOptions};
use tsweep_coordinator::sweepfile::{ExpandedSweep, SweepSettings};
use tsweep_proto::cell::Regime;

mod support;

const STREAM: &str = "tsweep:{trim}:metrics";

async fn xlen(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    redis::cmd("XLEN").arg(STREAM).query_async(conn).await.unwrap()
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_entries_are_trimmed_and_entries_another_group_still_needs_are_kept() {
    let redis_server = tokio::task::spawn_blocking(RedisServer::start_temp).await.unwrap().unwrap();
    let store = Store::connect(&redis_server.url(), StoreOptions::default()).await.unwrap();
    let cell = support::cell(support::spec("trim", "m", Regime::Finetune, 0.1, 0, 3));
    store
        .submit(&ExpandedSweep { name: "trim".into(), settings: SweepSettings { max_attempts: 3 }, cells: vec![cell] })
        .await
        .unwrap();
    let task = store.acquire("w", 0).await.unwrap().unwrap();
    let coordinator = server::start(ServiceConfig {
        listen: "127.0.0.1:0".into(),
        metrics_listen: String::new(),
        redis_url: redis_server.url(),
        ..ServiceConfig::default()
    })
    .await
    .unwrap();
    let mut conn = redis::Client::open(redis_server.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let append = |conn: &mut redis::aio::MultiplexedConnection, steps: std::ops::RangeInclusive<u64>| {
        let mut pipe = redis::pipe();
        for step in steps {
            pipe.cmd("XADD")
                .arg(STREAM)
                .arg("NOMKSTREAM")
                .arg("*")
                .arg(&["task_id", task.task_id.as_str()])
                .arg("attempt")
                .arg(task.attempt)
                .arg("step")
                .arg(step)
                .arg("total_steps")
                .arg(5000)
                .ignore();
        }
        let mut conn = conn.clone();
        async move { pipe.query_async::<()>(&mut conn).await.unwrap() }
    };

    // A long sweep's worth of progress: read, applied, acked, and trimmed.
    append(&mut conn, 1..=2000).await;
    wait_until("the stream to be trimmed", || {
        let mut conn = conn.clone();
        async move { xlen(&mut conn).await < 300 }
    })
    .await;
    let progress: HashMap<String, String> =
        redis::cmd("HGETALL").arg(format!("{STREAM}:progress")).query_async(&mut conn).await.unwrap();
    assert!(progress[&task.task_id].contains("\"step\":2000"), "nothing lost: {progress:?}");

    // Another consumer group that has read nothing yet: nothing it needs is trimmed.
    let _: () =
        redis::cmd("XGROUP").arg("CREATE").arg(STREAM).arg("other").arg("$").query_async(&mut conn).await.unwrap();
    append(&mut conn, 2001..=3000).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let kept = xlen(&mut conn).await;
    assert!(kept >= 1000, "entries the other group has not read were trimmed: {kept} left");
    // It reads them but does not ack (a consumer that died): still kept.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "other", "dead", "COUNT", "5000", "STREAMS", STREAM, ">"])
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(xlen(&mut conn).await >= 1000, "pending entries of the other group were trimmed");
    // Once it is done with them, they go.
    let pending: Vec<(String, String, u64, u64)> =
        redis::cmd("XPENDING").arg(&[STREAM, "other", "-", "+", "5000"]).query_async(&mut conn).await.unwrap();
    let ids: Vec<&str> = pending.iter().map(|p| p.0.as_str()).collect();
    let _: u64 = redis::cmd("XACK").arg(STREAM).arg("other").arg(&ids).query_async(&mut conn).await.unwrap();
    wait_until("the stream to be trimmed again", || {
        let mut conn = conn.clone();
        async move { xlen(&mut conn).await < 300 }
    })
    .await;
    coordinator.shutdown().await.unwrap();
}
