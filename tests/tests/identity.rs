//! Who may call what, on the real binaries: `tsweep serve` on a private redis-server,
//! `tsweep-worker` agents (fake executor) and the `tsweep` CLI, all on loopback.
//!
//! - roles: the user credential drives SweepService, the worker credential WorkerService,
//!   and neither works on the other's service (no `delete --force`, no `allow_huge` submit
//!   with the worker credential);
//! - per-worker identity: a worker whose registration Redis lost registers again and its
//!   running task finishes in the same attempt; forged ids and secrets are refused;
//! - TLS: the CLI and the worker speak TLS to an `https://` coordinator with a CA file, and
//!   an untrusted certificate is a clear error at once, not an endless retry;
//! - stock tools: `promtool check metrics` accepts the exposition, reflection answers
//!   both `grpc.reflection.v1` and `v1alpha`;
//! - seeds: a `seeds = [0, 1, 2]` sweep's report uses each seed's current final as the
//!   store recorded it and reports the mean over seeds with its spread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;
use tsweep_coordinator::redis_server::RedisServer;
use tsweep_proto::auth::{TokenInterceptor, WorkerRefusal};
use tsweep_proto::v1::sweep_service_client::SweepServiceClient;
use tsweep_proto::v1::worker_service_client::WorkerServiceClient;
use tsweep_proto::v1::{
    AcquireTaskRequest, CompleteTaskRequest, GetSweepRequest, LeaseRef, RegisterWorkerRequest, ReportOutcome,
    SweepSummary, TaskInfo, TaskResult,
};
use tsweep_proto::PROTOCOL_VERSION;
use tsweep_redis::test_support::TestPki;
use tsweep_tests::process::{bin_path, free_port, serve_command, wait_for, worker_command, Proc};

const USER_TOKEN: &str = "user-credential-0123456789";
const WORKER_TOKEN: &str = "worker-credential-9876543210";

/// `tsweep serve` (and its Redis) with extra `TSWEEP__*` settings, plus its workers.
struct Stack {
    dir: tempfile::TempDir,
    redis: RedisServer,
    metrics_port: u16,
    url: String,
    coordinator: Proc,
    workers: Vec<Proc>,
}

impl Stack {
    async fn start(env: &[(&str, String)]) -> Result<Stack> {
        let dir = tempfile::Builder::new().prefix("tsweep-identity-").tempdir()?;
        let redis_dir = dir.path().join("redis");
        std::fs::create_dir_all(&redis_dir)?;
        let redis = RedisServer::start_in(&redis_dir, 0)?;
        let (port, metrics_port) = (free_port()?, free_port()?);
        let mut cmd = serve_command(port, &format!("127.0.0.1:{metrics_port}"), &redis.url())?;
        cmd.env("TSWEEP__LEASE_TTL_MS", "2000")
            .env("TSWEEP__REAPER_INTERVAL_MS", "200")
            .env("TSWEEP__FINALS_INTERVAL_MS", "200")
            .env("TSWEEP__ACQUIRE_RETRY_AFTER_MS", "100")
            .env("TSWEEP__GAUGES_INTERVAL_MS", "100");
        for (key, value) in env {
            cmd.env(key, value);
        }
        let coordinator = Proc::spawn("coordinator", cmd, &dir.path().join("coordinator.log"))?;
        let url = format!("http://127.0.0.1:{port}");
        let stack = Stack { dir, redis, metrics_port, url, coordinator, workers: Vec::new() };
        // Ready once readiness says Redis answers (health is open to every caller).
        let health_url = stack.url.clone();
        wait_for("the coordinator to serve", Duration::from_secs(30), || {
            let url = health_url.clone();
            async move {
                let channel = channel(&url, None).await.ok()?;
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let request = tonic_health::pb::HealthCheckRequest { service: "tsweep.ready".into() };
                let status = health.check(request).await.ok()?.into_inner().status;
                (status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32).then_some(())
            }
        })
        .await?;
        Ok(stack)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A fake-executor worker agent (`worker-<index>`) with extra flags.
    fn start_worker(&mut self, extra: &[&str]) -> Result<usize> {
        let index = self.workers.len();
        let mut cmd = worker_command(&self.url, &self.redis.url(), self.path(), index, 1)?;
        cmd.args(["--executor", "fake"]).args(extra);
        let log = self.path().join(format!("worker-{index}.log"));
        self.workers.push(Proc::spawn(&format!("worker-{index}"), cmd, &log)?);
        Ok(index)
    }

    /// Runs the `tsweep` CLI against this coordinator.
    fn cli(&self, args: &[&str]) -> Result<Output> {
        let output = Command::new(bin_path("tsweep")?)
            .args(["--coordinator", &self.url])
            .args(args)
            .env_remove("TSWEEP__AUTH_TOKEN")
            .env_remove("TSWEEP__USER_TOKEN")
            .current_dir(self.path())
            .output()?;
        Ok(output)
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    fn logs(&self) -> String {
        let mut text = format!("--- coordinator\n{}", self.coordinator.log_text());
        for worker in &self.workers {
            text.push_str(&format!("\n--- {}\n{}", worker.name, worker.log_text()));
        }
        text
    }
}

async fn channel(url: &str, ca: Option<&Path>) -> Result<Channel> {
    let mut endpoint = Endpoint::from_shared(url.to_string())?.connect_timeout(Duration::from_secs(2));
    if let Some(ca) = ca {
        endpoint =
            endpoint.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca)?)))?;
    }
    Ok(endpoint.connect().await?)
}

type Authed = InterceptedService<Channel, TokenInterceptor>;

fn sweeps(channel: &Channel, token: Option<&str>) -> SweepServiceClient<Authed> {
    SweepServiceClient::with_interceptor(channel.clone(), TokenInterceptor::inline(token.map(String::from)).unwrap())
}

fn workers(channel: &Channel, token: Option<&str>) -> WorkerServiceClient<Authed> {
    WorkerServiceClient::with_interceptor(channel.clone(), TokenInterceptor::inline(token.map(String::from)).unwrap())
}

async fn summary(client: &mut SweepServiceClient<Authed>, sweep: &str) -> Option<SweepSummary> {
    client.get_sweep(GetSweepRequest { sweep: sweep.into() }).await.ok().map(tonic::Response::into_inner)
}

async fn wait_done(client: &SweepServiceClient<Authed>, sweep: &str, timeout: Duration) -> Result<SweepSummary> {
    wait_for(&format!("sweep {sweep} to finish"), timeout, || {
        let mut client = client.clone();
        async move { summary(&mut client, sweep).await.filter(|s| s.status() == tsweep_proto::v1::SweepStatus::Done) }
    })
    .await
}

/// Every task of the sweep, all pages (the CLI's own pager).
async fn all_tasks(client: &mut SweepServiceClient<Authed>, sweep: &str) -> Result<Vec<TaskInfo>> {
    Ok(tsweep_coordinator::cli::client::all_tasks(client, sweep).await?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fake-executor finetune sweep: `models` models × one dataset × three learning rates.
fn fake_sweep(name: &str, models: usize, seeds: &[u64], sleep_ms: u64, steps: u64) -> String {
    let seeds: Vec<String> = seeds.iter().map(u64::to_string).collect();
    let mut text = format!(
        "name = \"{name}\"\nallow_random_init = true\nseeds = [{}]\n\n[defaults]\nsteps = {steps}\nbatch_size = 8\ngpus = 0\n\n\
         [fake]\nsleep_ms = {sleep_ms}\nsteps = {steps}\n\n",
        seeds.join(", ")
    );
    for m in 0..models {
        text.push_str(&format!(
            "[[models]]\nname = \"m{m}\"\nsource = \"builtin\"\narch = \"resnet18\"\nimagenet_top1 = {}\nimage_size = 32\n\n",
            70.0 + 2.0 * m as f64
        ));
    }
    text.push_str("[[datasets]]\nname = \"d0\"\nformat = \"imagefolder\"\npath = \"data/d0\"\n\n");
    text.push_str("[regimes.finetune]\nlr = [0.001, 0.01, 0.1]\nweight_decay = [0.0]\n");
    text
}

fn one_line_error(output: &Output) -> String {
    let err = text(&output.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line on stderr: {err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_worker_credentials_are_separate_roles() -> Result<()> {
    let tokens = tempfile::tempdir()?;
    let (user_file, worker_file) = (tokens.path().join("user"), tokens.path().join("worker"));
    std::fs::write(&user_file, format!("{USER_TOKEN}\n"))?;
    std::fs::write(&worker_file, format!("{WORKER_TOKEN}\n"))?;
    let env = [
        ("TSWEEP__USER_TOKEN_FILE", user_file.display().to_string()),
        ("TSWEEP__WORKER_TOKEN_FILE", worker_file.display().to_string()),
    ];
    let mut stack = Stack::start(&env).await?;
    let sweep_file = stack.write("roles.toml", &fake_sweep("roles", 1, &[0], 100, 2))?;
    let sweep_arg = sweep_file.display().to_string();

    // The worker credential cannot use SweepService: not to submit (allow_huge or not),
    // list, delete or cancel. Each refusal is one line, exit 2, and changes nothing.
    for args in [
        vec!["submit", sweep_arg.as_str(), "--allow-huge"],
        vec!["submit", sweep_arg.as_str()],
        vec!["status"],
        vec!["delete", "--force", "roles"],
        vec!["cancel", "roles"],
    ] {
        let mut full = vec!["--token", WORKER_TOKEN];
        full.extend(&args);
        let out = stack.cli(&full)?;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        let err = one_line_error(&out);
        assert!(err.contains("worker credential cannot call tsweep.v1.SweepService"), "{args:?}: {err}");
    }
    let out = stack.cli(&["--token", "not-a-credential", "status"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(one_line_error(&out).contains("invalid bearer token"));
    let out = stack.cli(&["--token", USER_TOKEN, "status"])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("roles"), "nothing was submitted by the refused calls");

    // The user credential cannot act as a worker.
    let channel = channel(&stack.url, None).await?;
    let register = || RegisterWorkerRequest {
        protocol_version: PROTOCOL_VERSION,
        worker_id: "impostor".into(),
        ..Default::default()
    };
    let status = workers(&channel, Some(USER_TOKEN)).register_worker(register()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("user credential cannot call tsweep.v1.WorkerService"), "{status:?}");

    // With the right credentials the sweep runs: the CLI submits, the worker works.
    let out = stack.cli(&["--token", USER_TOKEN, "submit", &sweep_arg])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let token_arg = worker_file.display().to_string();
    stack.start_worker(&["--token-file", &token_arg])?;
    let users = sweeps(&channel, Some(USER_TOKEN));
    let done = wait_done(&users, "roles", Duration::from_secs(60)).await.with_context(|| stack.logs())?;
    assert_eq!(done.counts.unwrap_or_default().failed, 0);
    let out = stack.cli(&["--token", USER_TOKEN, "delete", "roles"])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_registration_redis_lost_registers_again_and_its_task_finishes_in_the_same_attempt() -> Result<()>
{
    let mut stack = Stack::start(&[("TSWEEP__WORKER_TOKEN", WORKER_TOKEN.into())]).await?;
    let channel = channel(&stack.url, None).await?;
    let mut users = sweeps(&channel, None);
    let sweep_file = stack.write("lost.toml", &fake_sweep("lost", 1, &[0], 6_000, 12))?;
    let out = stack.cli(&["submit", &sweep_file.display().to_string()])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // One slot: the three grid points run one after the other; the first runs 6 s.
    stack.start_worker(&["--token", WORKER_TOKEN])?;
    let running = wait_for("a task to run", Duration::from_secs(30), || {
        let mut users = users.clone();
        async move {
            let tasks = all_tasks(&mut users, "lost").await.ok()?;
            tasks.into_iter().find(|t| t.state() == tsweep_proto::v1::TaskState::Running)
        }
    })
    .await
    .with_context(|| stack.logs())?;

    // Redis loses the worker's record (a restart without that key, or it lapsed).
    let mut redis = redis::Client::open(stack.redis.url())?.get_multiplexed_async_connection().await?;
    let deleted: u64 = redis::cmd("DEL").arg("tsweep:worker:worker-0").query_async(&mut redis).await?;
    assert_eq!(deleted, 1, "the registration was in Redis");

    // Nobody else can act as a worker without its secret.
    let mut forger = workers(&channel, Some(WORKER_TOKEN));
    let acquire = |worker_id: &str, worker_secret: &str| AcquireTaskRequest {
        protocol_version: PROTOCOL_VERSION,
        worker_id: worker_id.into(),
        free_gpus: 0,
        slot: 0,
        worker_secret: worker_secret.into(),
    };
    let status = forger.acquire_task(acquire("ghost", "")).await.unwrap_err();
    assert_eq!(WorkerRefusal::of(&status), Some(WorkerRefusal::Unregistered), "{status:?}");

    let done = wait_done(&users, "lost", Duration::from_secs(90)).await.with_context(|| stack.logs())?;
    assert_eq!(done.lease_expiries, 0, "no lease ran out: {}", stack.logs());
    let tasks = all_tasks(&mut users, "lost").await?;
    let task = tasks.iter().find(|t| t.task_id == running.task_id).context("the task")?;
    assert_eq!((task.state().name(), task.attempt, task.accepted_completions), ("succeeded", 1, 1), "{task:?}");
    let steps = task.result.as_ref().map(|r| (r.steps, r.resumed_from_step));
    assert_eq!(steps, Some((12, 0)), "the child ran through");
    let log = stack.workers[0].log_text();
    assert!(log.contains("registering again"), "{log}");
    assert!(!log.contains("LEASE_LOST") && !log.contains("lease lost"), "{log}");

    // The re-registered id belongs to that worker: a forged secret and a second
    // registration of the live id are refused.
    let status = forger.acquire_task(acquire("worker-0", "guessed")).await.unwrap_err();
    assert_eq!(WorkerRefusal::of(&status), Some(WorkerRefusal::WrongSecret), "{status:?}");
    let status = forger
        .register_worker(RegisterWorkerRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: "worker-0".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_and_worker_speak_tls_to_an_https_coordinator_and_an_untrusted_certificate_fails_at_once() -> Result<()> {
    let pki_dir = tempfile::tempdir()?;
    let pki = TestPki::generate(pki_dir.path())?;
    let env = [
        ("TSWEEP__TLS_CERT", pki.server_cert.display().to_string()),
        ("TSWEEP__TLS_KEY", pki.server_key.display().to_string()),
    ];
    let mut stack = start_tls_stack(&env, &pki).await?;
    let ca = pki.ca_cert.display().to_string();
    let other_ca = pki.other_ca_cert.display().to_string();
    let sweep_file = stack.write("tls.toml", &fake_sweep("tls", 1, &[0], 100, 2))?;

    let out = stack.cli(&["--coordinator-ca-file", &ca, "submit", &sweep_file.display().to_string()])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    stack.start_worker(&["--coordinator-ca-file", &ca])?;
    let tls_channel = channel(&stack.url, Some(&pki.ca_cert)).await?;
    let users = sweeps(&tls_channel, None);
    wait_done(&users, "tls", Duration::from_secs(60)).await.with_context(|| stack.logs())?;
    let out = stack.cli(&["--coordinator-ca-file", &ca, "status", "tls"])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("done"), "{}", text(&out.stdout));
    // The same through the environment (the layered config of the CLI).
    let out = Command::new(bin_path("tsweep")?)
        .args(["--coordinator", &stack.url, "status", "tls"])
        .env("TSWEEP__COORDINATOR_CA_FILE", &ca)
        .output()?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A CA that did not sign the coordinator's certificate: one clear line, exit 2, at once.
    let started = std::time::Instant::now();
    let out = stack.cli(&["--coordinator-ca-file", &other_ca, "status"])?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = one_line_error(&out);
    assert!(err.contains("tls handshake") && err.contains("coordinator-ca-file"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "not retried: {:?}", started.elapsed());

    // The worker with that CA stops with the same diagnosis instead of retrying for ever.
    let index = stack.start_worker(&["--coordinator-ca-file", &other_ca])?;
    let code = stack.workers[index].wait_exit(Duration::from_secs(20)).with_context(|| stack.logs())?;
    assert_ne!(code, Some(0));
    let log = stack.workers[index].log_text();
    assert!(log.contains("tls handshake with the coordinator") && log.contains("coordinator_ca_file"), "{log}");
    Ok(())
}

/// A stack serving TLS: readiness is checked over TLS with the test CA.
async fn start_tls_stack(env: &[(&str, String)], pki: &TestPki) -> Result<Stack> {
    let dir = tempfile::Builder::new().prefix("tsweep-identity-tls-").tempdir()?;
    let redis_dir = dir.path().join("redis");
    std::fs::create_dir_all(&redis_dir)?;
    let redis = RedisServer::start_in(&redis_dir, 0)?;
    let port = free_port()?;
    let mut cmd = serve_command(port, "", &redis.url())?;
    cmd.env("TSWEEP__FINALS_INTERVAL_MS", "200").env("TSWEEP__ACQUIRE_RETRY_AFTER_MS", "100");
    for (key, value) in env {
        cmd.env(key, value);
    }
    let coordinator = Proc::spawn("coordinator", cmd, &dir.path().join("coordinator.log"))?;
    let url = format!("https://127.0.0.1:{port}");
    let ca = pki.ca_cert.clone();
    let probe_url = url.clone();
    wait_for("the TLS coordinator to serve", Duration::from_secs(30), || {
        let (url, ca) = (probe_url.clone(), ca.clone());
        async move {
            let mut client = sweeps(&channel(&url, Some(&ca)).await.ok()?, None);
            client.list_sweeps(tsweep_proto::v1::ListSweepsRequest {}).await.ok().map(|_| ())
        }
    })
    .await
    .with_context(|| coordinator.log_text())?;
    Ok(Stack { dir, redis, metrics_port: 0, url, coordinator, workers: Vec::new() })
}

/// GET /metrics over plain HTTP/1.1 with an optional Accept header; the body.
async fn scrape(port: u16, accept: Option<&str>) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    stream
        .write_all(format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n{accept}Connection: close\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let Some((head, body)) = response.split_once("\r\n\r\n") else { bail!("no HTTP response: {response}") };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{head}");
    }
    Ok(body.to_string())
}

/// `promtool check metrics` on `text`; None when promtool is not installed (outside CI).
fn promtool_check(text: &str) -> Result<Option<(bool, String)>> {
    use std::io::Write;
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            tsweep_proto::testing::skip_unless_ci(
                "promtool is not installed (Debian package `prometheus`, see scripts/setup.sh): promtool check skipped",
            );
            return Ok(None);
        }
        Err(error) => return Err(error.into()),
    };
    child.stdin.take().context("promtool stdin")?.write_all(text.as_bytes())?;
    let output = child.wait_with_output()?;
    Ok(Some((output.status.success(), format!("{}{}", text_of(&output.stdout), text_of(&output.stderr)))))
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics_and_reflection_answers_v1_and_v1alpha() -> Result<()> {
    let mut stack = Stack::start(&[]).await?;
    // Some traffic first, so that every family has samples (stale reports, acquires).
    let sweep_file = stack.write("tools.toml", &fake_sweep("tools", 1, &[0], 50, 2))?;
    let out = stack.cli(&["submit", &sweep_file.display().to_string()])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    stack.start_worker(&[])?;
    let channel = channel(&stack.url, None).await?;
    let mut users = sweeps(&channel, None);
    wait_done(&users, "tools", Duration::from_secs(60)).await.with_context(|| stack.logs())?;
    // A late report from a worker that never held the lease: refused as stale, counted.
    let mut late = workers(&channel, None);
    let register =
        RegisterWorkerRequest { protocol_version: PROTOCOL_VERSION, worker_id: "late".into(), ..Default::default() };
    let worker_secret = late.register_worker(register).await?.into_inner().worker_secret;
    let done = all_tasks(&mut users, "tools").await?.into_iter().next().context("a task")?;
    let report = CompleteTaskRequest {
        protocol_version: PROTOCOL_VERSION,
        worker_id: "late".into(),
        lease: Some(LeaseRef { sweep: "tools".into(), task_id: done.task_id, attempt: done.attempt }),
        result: Some(TaskResult {
            metric: tsweep_proto::v1::Metric::Top1.into(),
            val_score: Some(0.5),
            ..Default::default()
        }),
        worker_secret,
    };
    let outcome = late.complete_task(report).await?.into_inner().outcome;
    assert_eq!(outcome, ReportOutcome::Stale as i32);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let plain = scrape(stack.metrics_port, None).await?;
    for family in ["tsweep_lease_expiries_total", "tsweep_stale_reports_total", "tsweep_metrics_entries_total"] {
        assert!(plain.contains(&format!("# TYPE {family} counter\n")), "{family}: {plain}");
    }
    // None: promtool is missing and skip_unless_ci said so (under CI it failed the test).
    if let Some((ok, report)) = promtool_check(&plain)? {
        assert!(ok, "promtool check metrics refused the exposition:\n{report}\n{plain}");
    }
    let openmetrics = scrape(stack.metrics_port, Some("application/openmetrics-text; version=1.0.0")).await?;
    assert!(openmetrics.trim_end().ends_with("# EOF"), "{openmetrics}");
    assert!(openmetrics.contains("# TYPE tsweep_lease_expiries counter\n"), "{openmetrics}");

    // Reflection, both protocols, from the same descriptors.
    let wanted = ["tsweep.v1.SweepService", "tsweep.v1.WorkerService", "grpc.health.v1.Health"];
    let v1 = reflection_v1(&channel).await?;
    let v1alpha = reflection_v1alpha(&channel).await?;
    for service in wanted {
        assert!(v1.0.contains(&service.to_string()), "v1 lists {:?}", v1.0);
        assert!(v1alpha.0.contains(&service.to_string()), "v1alpha lists {:?}", v1alpha.0);
    }
    assert!(v1.1 > 0 && v1alpha.1 > 0, "the files describing tsweep.v1.SweepService come back");
    Ok(())
}

/// `async fn $name(channel) -> (services listed, descriptor files of SweepService)` over
/// one reflection protocol (`tonic_reflection::pb::$version`: v1 or v1alpha; the two have
/// the same messages in different packages).
macro_rules! reflection_client {
    ($name:ident, $version:ident) => {
        async fn $name(channel: &Channel) -> Result<(Vec<String>, usize)> {
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
            use tonic_reflection::pb::$version::ServerReflectionRequest;
            let request = |message| ServerReflectionRequest { host: String::new(), message_request: Some(message) };
            let requests = vec![
                request(MessageRequest::ListServices(String::new())),
                request(MessageRequest::FileContainingSymbol("tsweep.v1.SweepService".into())),
            ];
            let mut client = ServerReflectionClient::new(channel.clone());
            let mut stream = client.server_reflection_info(futures::stream::iter(requests)).await?.into_inner();
            let (mut services, mut files) = (Vec::new(), 0);
            while let Some(response) = stream.message().await? {
                match response.message_response {
                    Some(MessageResponse::ListServicesResponse(list)) => {
                        services.extend(list.service.into_iter().map(|s| s.name))
                    }
                    Some(MessageResponse::FileDescriptorResponse(found)) => files += found.file_descriptor_proto.len(),
                    other => bail!("unexpected {} reflection answer {other:?}", stringify!($version)),
                }
            }
            Ok((services, files))
        }
    };
}
reflection_client!(reflection_v1, v1);
reflection_client!(reflection_v1alpha, v1alpha);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_seed_report_uses_each_seeds_current_final_and_reports_their_mean_and_spread() -> Result<()> {
    let mut stack = Stack::start(&[]).await?;
    let sweep_file = stack.write("seeds.toml", &fake_sweep("seeds", 3, &[0, 1, 2], 20, 2))?;
    let out = stack.cli(&["submit", &sweep_file.display().to_string()])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    stack.start_worker(&[])?;
    stack.start_worker(&[])?;
    let channel = channel(&stack.url, None).await?;
    let mut users = sweeps(&channel, None);
    wait_done(&users, "seeds", Duration::from_secs(120)).await.with_context(|| stack.logs())?;
    let tasks = all_tasks(&mut users, "seeds").await?;
    assert_eq!(tasks.len(), 3 * 3 * 3 + 3 * 3, "27 grid points and a final per (model, seed)");

    // The store's answer: every seed of every model is its own selection group with one
    // current final.
    let seed_of =
        |t: &TaskInfo| serde_json::from_str::<serde_json::Value>(&t.spec_json).unwrap()["seed"].as_u64().unwrap();
    let mut current: BTreeMap<(String, u64), &TaskInfo> = BTreeMap::new();
    for final_task in tasks.iter().filter(|t| t.stage() == tsweep_proto::v1::Stage::Final) {
        assert_eq!(final_task.selection_group, format!("{}/d0/finetune/{}", final_task.model, seed_of(final_task)));
        if final_task.current_final {
            assert!(current.insert((final_task.model.clone(), seed_of(final_task)), final_task).is_none());
        }
    }
    assert_eq!(current.len(), 9, "one current final per (model, seed)");
    let test_of = |t: &TaskInfo| t.result.as_ref().and_then(|r| r.test_score).unwrap();

    let out_dir = stack.path().join("report");
    let out = stack.cli(&["report", "seeds", "--out", &out_dir.display().to_string()])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(" ± "), "the tables show mean ± spread: {}", text(&out.stdout));
    let analysis: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("analysis.json"))?)?;
    let finetune = analysis["regimes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["regime"] == "finetune"))
        .context("finetune regime")?;
    let mut pooled_differs = 0;
    for model in ["m0", "m1", "m2"] {
        let score = finetune["scores"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["model"] == model))
            .with_context(|| format!("{model}'s score"))?;
        let finals: Vec<f64> = (0..3).map(|seed| test_of(current[&(model.to_string(), seed)])).collect();
        let mean = finals.iter().sum::<f64>() / 3.0;
        let sd = (finals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 2.0).sqrt();
        let reported = score["accuracy"].as_f64().context("accuracy")?;
        assert!((reported - mean).abs() < 1e-9, "{model}: reported {reported}, mean of the current finals {mean}");
        assert!((score["spread"].as_f64().unwrap_or(-1.0) - sd).abs() < 1e-9, "{model}: {score}");
        assert_eq!((score["seeds_scored"].as_u64(), score["source"].as_str()), (Some(3), Some("final")));
        let seeds: Vec<u64> = score["seeds"].as_array().unwrap().iter().map(|s| s["seed"].as_u64().unwrap()).collect();
        assert_eq!(seeds, [0, 1, 2]);

        // What pooling every seed's grid points (the store grouping by seed, the report
        // not) would have reported: the final carrying the pooled winner's hparams.
        let grid: Vec<&TaskInfo> = tasks
            .iter()
            .filter(|t| {
                t.model == model
                    && t.stage() == tsweep_proto::v1::Stage::Grid
                    && t.state() == tsweep_proto::v1::TaskState::Succeeded
            })
            .collect();
        let best = grid
            .iter()
            .max_by(|a, b| {
                let val = |t: &TaskInfo| t.result.as_ref().and_then(|r| r.val_score).unwrap_or(f64::MIN);
                val(a).total_cmp(&val(b))
            })
            .context("a best grid point")?;
        let pooled = tasks
            .iter()
            .filter(|t| t.model == model && t.stage() == tsweep_proto::v1::Stage::Final && t.hparams == best.hparams)
            .map(test_of)
            .next()
            .context("a final with the pooled winner's hparams")?;
        if (pooled - mean).abs() > 1e-9 {
            pooled_differs += 1;
        }
    }
    assert!(pooled_differs > 0, "the seeds' scores differ, so pooling them would have reported something else");
    Ok(())
}
