//! Child processes the suites start, signal and kill by PID.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a probe socket")?;
    Ok(listener.local_addr()?.port())
}

/// The workspace's target profile directory (where `tsweep` and `tsweep-worker` are).
pub fn bin_dir() -> PathBuf {
    // Test executables live in target/<profile>/deps/.
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary; fails with a hint when it was not built.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.exists() {
        bail!("{} not found: run `cargo build --bins` first", path.display());
    }
    Ok(path)
}

/// `tsweep serve` on loopback `port` with Redis at `redis_url` and the metrics endpoint on
/// `metrics_listen` (`""` disables it), settings through `TSWEEP__*` variables; callers add
/// their own with `.env(..)` (the last one set wins).
pub fn serve_command(port: u16, metrics_listen: &str, redis_url: &str) -> Result<Command> {
    let mut cmd = Command::new(bin_path("tsweep")?);
    cmd.arg("serve")
        .env("TSWEEP__LISTEN", format!("127.0.0.1:{port}"))
        .env("TSWEEP__METRICS_LISTEN", metrics_listen)
        .env("TSWEEP__REDIS_URL", redis_url)
        .env("RUST_LOG", "info");
    Ok(cmd)
}

/// `tsweep-worker agent` `worker-<index>` on the CPU (no GPUs) with `slots` slots,
/// checkpoints and cache under `dir`; callers add the executor and any other flags.
pub fn worker_command(coordinator_url: &str, redis_url: &str, dir: &Path, index: usize, slots: u32) -> Result<Command> {
    let mut cmd = Command::new(bin_path("tsweep-worker")?);
    cmd.arg("agent")
        .args(["--coordinator", coordinator_url])
        .args(["--redis-url", redis_url])
        .args(["--slots", &slots.to_string()])
        .args(["--gpus", "0", "--device", "cpu"])
        .args(["--worker-id", &worker_id(index)])
        .arg("--checkpoint-root")
        .arg(dir.join("checkpoints"))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .env("RUST_LOG", "info");
    Ok(cmd)
}

/// The id of the `index`-th worker of a test cluster.
pub fn worker_id(index: usize) -> String {
    format!("worker-{index}")
}

/// A started process, killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Proc { name: name.to_string(), child: Some(child), log: log.to_path_buf() })
    }

    pub fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    pub fn signal(&self, signal: Signal) -> Result<()> {
        if let Some(pid) = self.pid() {
            kill(pid, signal).with_context(|| format!("sending {signal} to {}", self.name))?;
        }
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit by itself; returns its exit code (None: killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        let Some(child) = self.child.as_mut() else { bail!("{} is not running", self.name) };
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Live (not zombie) child processes of this process, from /proc.
    pub fn children(&self) -> Vec<Pid> {
        self.pid().map(children_of).unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped process must be continued before it can die of SIGKILL reliably.
        let _ = self.signal(Signal::SIGCONT);
        self.kill9();
    }
}

/// Polls `check` until it returns Some or the timeout passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Live (not zombie) children of `parent`, from /proc.
pub fn children_of(parent: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid ...
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(parent.as_raw()) && fields.first() != Some(&"Z") {
            found.push(Pid::from_raw(pid));
        }
    }
    found
}
