//! The metrics forwarder appends to a TLS-only redis-server over `rediss://` with the
//! configured CA (certificates made with the `openssl` CLI at test time).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tsweep_proto::v1::MetricPoint;
use tsweep_redis::test_support::TestPki;
use tsweep_worker::agent::metrics::{self, StreamedPoint};

struct TlsRedis {
    child: Child,
    port: u16,
}

impl TlsRedis {
    fn start(dir: &std::path::Path, pki: &TestPki) -> TlsRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("/usr/bin/redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--tls-cert-file")
            .arg(&pki.server_cert)
            .arg("--tls-key-file")
            .arg(&pki.server_key)
            .arg("--tls-ca-cert-file")
            .arg(&pki.ca_cert)
            .args(["--tls-auth-clients", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "tls redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis { child, port }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn metrics_are_appended_over_tls() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path()).unwrap();
    let redis = TlsRedis::start(dir.path(), &pki);

    // The coordinator creates the stream (the forwarder appends with NOMKSTREAM).
    let client = tsweep_redis::build_client(&redis.url(), &pki.ca_only()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.expect("a tls connection with the ca");
    let _: () = connection.xgroup_create_mkstream("m:s", "coordinators", "$").await.unwrap();

    let (sink, forwarder) = metrics::channel(&redis.url(), &pki.ca_only(), "m:{sweep}");
    let forwarding = tokio::spawn(forwarder.run(Duration::from_secs(5)));
    sink.send(StreamedPoint {
        sweep: "s".into(),
        task_id: "t".into(),
        point: MetricPoint {
            attempt: 1,
            step: 7,
            total_steps: 10,
            loss: Some(0.5),
            ts_ms: 1,
            ..MetricPoint::default()
        },
    });
    drop(sink);
    tokio::time::timeout(Duration::from_secs(20), forwarding).await.unwrap().unwrap();

    let length: u64 = connection.xlen("m:s").await.unwrap();
    assert_eq!(length, 1, "the point reached the stream over tls");
}
