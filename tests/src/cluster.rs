//! A whole tsweep cluster on loopback: a private redis-server (AOF on), the coordinator
//! (`tsweep serve`) and any number of `tsweep-worker` agents, each a real process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tonic::transport::Channel;
use tsweep_coordinator::redis_server::RedisServer;
use tsweep_proto::v1::sweep_service_client::SweepServiceClient;
use tsweep_proto::v1::{
    GetSweepRequest, ListTasksRequest, SubmitSweepRequest, SubmitSweepResponse, SweepSummary, TaskInfo,
};

pub use crate::process::worker_id;
use crate::process::{free_port, serve_command, wait_for, worker_command, Proc};

/// Knobs of a test cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub lease_ttl_ms: u64,
    pub reaper_interval_ms: u64,
    /// How often the coordinator re-derives its set of active sweeps.
    pub repair_interval_ms: u64,
    /// More `redis-server` arguments (e.g. `--enable-debug-command local` for `DEBUG SLEEP`).
    pub redis_args: Vec<String>,
    /// `RUST_LOG` of every process.
    pub log_filter: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            lease_ttl_ms: 2_000,
            reaper_interval_ms: 200,
            repair_interval_ms: 1_000,
            redis_args: Vec::new(),
            log_filter: "info".to_string(),
        }
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub redis: RedisServer,
    pub grpc_port: u16,
    pub options: ClusterOptions,
    pub coordinator: Option<Proc>,
    pub workers: Vec<Proc>,
    coordinator_starts: u32,
}

impl Cluster {
    /// Starts Redis and the coordinator; no workers yet.
    pub async fn start(options: ClusterOptions) -> Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("tsweep-cluster-").tempdir()?;
        let redis_dir = dir.path().join("redis");
        std::fs::create_dir_all(&redis_dir)?;
        let args: Vec<&str> = options.redis_args.iter().map(String::as_str).collect();
        let redis = RedisServer::start_in_with_args(&redis_dir, 0, &args)?;
        let mut cluster = Cluster {
            dir,
            redis,
            grpc_port: free_port()?,
            options,
            coordinator: None,
            workers: Vec::new(),
            coordinator_starts: 0,
        };
        cluster.start_coordinator().await?;
        Ok(cluster)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn coordinator_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// Starts (or restarts) `tsweep serve` on the cluster's port and waits until it answers.
    pub async fn start_coordinator(&mut self) -> Result<()> {
        self.coordinator_starts += 1;
        let mut cmd = serve_command(self.grpc_port, "", &self.redis.url())?;
        cmd.env("TSWEEP__LEASE_TTL_MS", self.options.lease_ttl_ms.to_string())
            .env("TSWEEP__REAPER_INTERVAL_MS", self.options.reaper_interval_ms.to_string())
            .env("TSWEEP__REPAIR_INTERVAL_MS", self.options.repair_interval_ms.to_string())
            .env("TSWEEP__FINALS_INTERVAL_MS", "200")
            .env("TSWEEP__ACQUIRE_RETRY_AFTER_MS", "100")
            .env("RUST_LOG", &self.options.log_filter);
        let log = self.path().join(format!("coordinator-{}.log", self.coordinator_starts));
        self.coordinator = Some(Proc::spawn("coordinator", cmd, &log)?);
        let url = self.coordinator_url();
        wait_for("the coordinator to answer", Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                let mut client = SweepServiceClient::connect(url).await.ok()?;
                client.list_sweeps(tsweep_proto::v1::ListSweepsRequest {}).await.ok().map(|_| ())
            }
        })
        .await
    }

    /// Starts a worker agent with the fake executor (plus `extra` flags) and returns its index.
    pub fn start_worker(&mut self, slots: u32, extra: &[&str]) -> Result<usize> {
        let url = self.coordinator_url();
        self.start_worker_at(&url, slots, extra)
    }

    /// As [`Cluster::start_worker`], talking to the coordinator through `coordinator_url`
    /// (a proxy in front of it).
    pub fn start_worker_at(&mut self, coordinator_url: &str, slots: u32, extra: &[&str]) -> Result<usize> {
        let index = self.workers.len();
        let mut cmd = worker_command(coordinator_url, &self.redis.url(), self.path(), index, slots)?;
        cmd.args(extra).env("RUST_LOG", &self.options.log_filter);
        if !extra.contains(&"--executor") {
            cmd.args(["--executor", "fake"]);
        }
        let log = self.path().join(format!("worker-{index}.log"));
        self.workers.push(Proc::spawn(&format!("worker-{index}"), cmd, &log)?);
        Ok(index)
    }

    pub async fn client(&self) -> Result<SweepServiceClient<Channel>> {
        SweepServiceClient::connect(self.coordinator_url()).await.context("connecting to the coordinator")
    }

    /// Submits a sweep file's text (relative paths resolve against the cluster's directory).
    pub async fn submit(&self, file_text: &str) -> Result<SubmitSweepResponse> {
        let mut client = self.client().await?;
        let response = client
            .submit_sweep(SubmitSweepRequest {
                file_text: file_text.to_string(),
                file_name: "test.toml".into(),
                base_dir: self.path().display().to_string(),
                allow_huge: false,
                ..Default::default()
            })
            .await?;
        Ok(response.into_inner())
    }

    pub async fn summary(&self, sweep: &str) -> Result<SweepSummary> {
        let mut client = self.client().await?;
        Ok(client.get_sweep(GetSweepRequest { sweep: sweep.into() }).await?.into_inner())
    }

    /// Every task of the sweep, all pages.
    pub async fn tasks(&self, sweep: &str) -> Result<Vec<TaskInfo>> {
        let mut client = self.client().await?;
        let mut tasks = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_tasks(ListTasksRequest {
                    sweep: sweep.into(),
                    state: tsweep_proto::v1::TaskState::Unspecified.into(),
                    page_size: 1000,
                    page_token: page_token.clone(),
                })
                .await?
                .into_inner();
            tasks.extend(page.tasks);
            if page.next_page_token.is_empty() {
                return Ok(tasks);
            }
            page_token = page.next_page_token;
        }
    }

    /// Waits until the sweep reports `done`, tolerating a coordinator that is restarting.
    pub async fn wait_done(&self, sweep: &str, timeout: Duration) -> Result<SweepSummary> {
        wait_for(&format!("sweep {sweep} to finish"), timeout, || async {
            let summary = self.summary(sweep).await.ok()?;
            (summary.status() == tsweep_proto::v1::SweepStatus::Done).then_some(summary)
        })
        .await
    }

    /// Log files of every process, for a failing test's message.
    pub fn logs(&self) -> BTreeMap<String, String> {
        let mut logs = BTreeMap::new();
        for proc in self.coordinator.iter().chain(self.workers.iter()) {
            logs.insert(proc.name.clone(), proc.log_text());
        }
        logs
    }

    pub fn checkpoint_root(&self) -> PathBuf {
        self.path().join("checkpoints")
    }

    /// Every coordinator log written so far (one file per start), concatenated.
    pub fn coordinator_logs(&self) -> String {
        (1..=self.coordinator_starts)
            .map(|n| std::fs::read_to_string(self.path().join(format!("coordinator-{n}.log"))).unwrap_or_default())
            .collect()
    }
}

/// A fake-executor sweep file, linear regime only (no finals), of about `cells` cells:
/// 100 datasets and as many models as it takes (the benchmarks' sweep).
pub fn linear_sweep_text(sweep: &str, cells: usize) -> String {
    let datasets = 100;
    let models = cells.div_ceil(datasets);
    let mut text = format!("name = \"{sweep}\"\nallow_random_init = true\n\n[fake]\nsleep_ms = 0\n\n");
    for m in 0..models {
        text.push_str(&format!(
            "[[models]]\nname = \"m{m}\"\nsource = \"builtin\"\narch = \"resnet18\"\nimage_size = 32\n\n"
        ));
    }
    for d in 0..datasets {
        text.push_str(&format!(
            "[[datasets]]\nname = \"d{d}\"\nformat = \"imagefolder\"\npath = \"/data/d{d}\"\nmetric = \"top1\"\n\n"
        ));
    }
    text.push_str("[regimes.linear]\nl2 = [1.0]\n");
    text
}

/// A fake-executor sweep file of `models × datasets × lr values` finetune cells.
pub fn fake_sweep(name: &str, models: usize, datasets: usize, lrs: usize, sleep_ms: u64, steps: u64) -> String {
    let mut text = format!(
        "name = \"{name}\"\nmax_attempts = 3\nallow_random_init = true\n\n[defaults]\nsteps = {steps}\nbatch_size = 8\n\n\
         [fake]\nsleep_ms = {sleep_ms}\nsteps = {steps}\n\n"
    );
    for m in 0..models {
        text.push_str(&format!(
            "[[models]]\nname = \"m{m}\"\nsource = \"builtin\"\narch = \"resnet18\"\nimagenet_top1 = {}\nimage_size = 32\n\n",
            70.0 + m as f64
        ));
    }
    for d in 0..datasets {
        text.push_str(&format!(
            "[[datasets]]\nname = \"d{d}\"\nformat = \"imagefolder\"\npath = \"data/d{d}\"\nmetric = \"top1\"\n\n"
        ));
    }
    let values: Vec<String> = (0..lrs).map(|i| format!("{}", 0.001 * (i + 1) as f64)).collect();
    text.push_str(&format!("[regimes.finetune]\nlr = [{}]\nweight_decay = [0.0]\n", values.join(", ")));
    text
}
