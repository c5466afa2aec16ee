//! A private `redis-server` for tests and `tsweep local`: started on a free loopback port
//! in a directory of its own with the shipped configuration (`deploy/redis/redis.conf`:
//! AOF on, `appendfsync everysec`), tracked by PID, killed when dropped. It runs in a
//! process group of its own. [`RedisServer::start_in_with_args`] adds command-line
//! settings (the fault suites allow `DEBUG SLEEP` with `--enable-debug-command local`).
//!
//! ```no_run
//! # fn demo() -> Result<(), tsweep_coordinator::redis_server::RedisServerError> {
//! let server = tsweep_coordinator::redis_server::RedisServer::start_temp()?;
//! let url = server.url(); // redis://127.0.0.1:<port>/
//! # Ok(()) }
//! ```
//!
//! The data directory survives [`RedisServer::kill`] / [`RedisServer::restart`], so a test
//! can kill Redis mid-sweep and bring it back with its AOF.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shipped Redis configuration (`deploy/redis/redis.conf`).
pub const REDIS_CONF: &str = include_str!("../../deploy/redis/redis.conf");

/// Where `redis-server` is looked up when `TSWEEP_REDIS_SERVER` is not set.
pub const DEFAULT_REDIS_SERVER: &str = "redis-server";

#[derive(Debug, thiserror::Error)]
pub enum RedisServerError {
    #[error("redis-server {what} in {dir}: {source}")]
    Io {
        what: &'static str,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("redis-server on port {port} did not answer PING within {waited_ms} ms (log: {log})")]
    NotReady { port: u16, waited_ms: u128, log: PathBuf },
    #[error("redis-server on port {port} exited at start with {status} (log: {log})")]
    Exited { port: u16, status: String, log: PathBuf },
}

/// TLS for a test redis-server: it then listens on TLS only (`--port 0 --tls-port <port>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisServerTls {
    /// PEM server certificate (for `127.0.0.1`) and its key.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA that client certificates must chain to (redis-server wants one even without
    /// `auth_clients`).
    pub ca_cert_file: PathBuf,
    /// `--tls-auth-clients yes`: a client certificate is required (mutual TLS).
    pub auth_clients: bool,
}

/// A running (or killed, restartable) private redis-server.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: PathBuf,
    /// Holds the temporary directory when the server made its own.
    _temp: Option<tempfile::TempDir>,
    child: Option<Child>,
    /// Set: TLS-only on `port`.
    tls: Option<RedisServerTls>,
    /// More `redis-server` arguments (after the shipped configuration), on every start.
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts redis-server on a free loopback port in a new temporary directory (removed
    /// when the server is dropped).
    pub fn start_temp() -> Result<RedisServer, RedisServerError> {
        let temp = tempfile::Builder::new().prefix("tsweep-redis-").tempdir().map_err(|source| {
            RedisServerError::Io { what: "creating a temporary directory", dir: std::env::temp_dir(), source }
        })?;
        let dir = temp.path().to_path_buf();
        let mut server = RedisServer::start_in(&dir, 0)?;
        server._temp = Some(temp);
        Ok(server)
    }

    /// As [`RedisServer::start_temp`], listening on TLS only (`rediss://`, see [`RedisServer::url`]).
    pub fn start_tls_temp(tls: RedisServerTls) -> Result<RedisServer, RedisServerError> {
        let temp = tempfile::Builder::new().prefix("tsweep-redis-tls-").tempdir().map_err(|source| {
            RedisServerError::Io { what: "creating a temporary directory", dir: std::env::temp_dir(), source }
        })?;
        let dir = temp.path().to_path_buf();
        let mut server = RedisServer::start_with(&dir, 0, Some(tls), &[])?;
        server._temp = Some(temp);
        Ok(server)
    }

    /// Starts redis-server on `port` (0: a free one, tried up to three times in case
    /// another process takes it first) with its data in `dir` (kept).
    pub fn start_in(dir: &Path, port: u16) -> Result<RedisServer, RedisServerError> {
        RedisServer::start_with(dir, port, None, &[])
    }

    /// As [`RedisServer::start_in`], with more `redis-server` arguments (kept for restarts),
    /// e.g. `["--enable-debug-command", "local"]`.
    pub fn start_in_with_args(dir: &Path, port: u16, args: &[&str]) -> Result<RedisServer, RedisServerError> {
        RedisServer::start_with(dir, port, None, args)
    }

    fn start_with(
        dir: &Path,
        port: u16,
        tls: Option<RedisServerTls>,
        args: &[&str],
    ) -> Result<RedisServer, RedisServerError> {
        let tries = if port == 0 { 3 } else { 1 };
        let mut last = None;
        for _ in 0..tries {
            let port = if port == 0 { free_port(dir)? } else { port };
            let mut server = RedisServer::new_in(dir, port);
            server.tls = tls.clone();
            server.extra_args = args.iter().map(|a| a.to_string()).collect();
            match server.start() {
                Ok(()) => return Ok(server),
                Err(e @ RedisServerError::Exited { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(RedisServerError::NotReady { port, waited_ms: 0, log: dir.join("redis.log") }))
    }

    fn new_in(dir: &Path, port: u16) -> RedisServer {
        let binary = std::env::var_os("TSWEEP_REDIS_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_REDIS_SERVER));
        RedisServer {
            binary,
            port,
            dir: dir.to_path_buf(),
            _temp: None,
            child: None,
            tls: None,
            extra_args: Vec::new(),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `redis://127.0.0.1:<port>/`, or `rediss://127.0.0.1:<port>/` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// The server's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// Starts the server (again) on the same port and directory and waits for PING.
    pub fn start(&mut self) -> Result<(), RedisServerError> {
        if self.child.is_some() {
            return Ok(());
        }
        let io = |what: &'static str, dir: &Path| {
            let dir = dir.to_path_buf();
            move |source| RedisServerError::Io { what, dir, source }
        };
        let conf = self.dir.join("redis.conf");
        std::fs::write(&conf, REDIS_CONF).map_err(io("writing redis.conf", &self.dir))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(io("opening redis.log", &self.dir))?;
        let log_err = log.try_clone().map_err(io("opening redis.log", &self.dir))?;
        let mut command = Command::new(&self.binary);
        command.arg(&conf);
        match &self.tls {
            None => {
                command.args(["--port", &self.port.to_string()]);
            }
            Some(tls) => {
                command
                    .args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&tls.cert_file)
                    .arg("--tls-key-file")
                    .arg(&tls.key_file)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca_cert_file)
                    .args(["--tls-auth-clients", if tls.auth_clients { "yes" } else { "no" }]);
            }
        }
        // A process group of its own: a terminal's Ctrl-C or hang-up reaches the owner,
        // which stops the server itself (redis-server ignores SIGHUP and would stay).
        command.process_group(0);
        let child = command
            .args(["--bind", "127.0.0.1", "--protected-mode", "yes"])
            .args(&self.extra_args)
            .arg("--dir")
            .arg(&self.dir)
            .args(["--daemonize", "no", "--save", ""])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(io("starting redis-server", &self.dir))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(20))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), RedisServerError> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(RedisServerError::Exited {
                        port: self.port,
                        status: status.to_string(),
                        log: self.log_path(),
                    });
                }
            }
            // A TLS port cannot take the plain PING: there, accepting a connection is ready
            // (a fresh server has no AOF to load).
            let ready = if self.tls.is_some() { accepts(self.port) } else { ping(self.port) };
            if ready {
                return Ok(());
            }
            if started.elapsed() > timeout {
                self.kill();
                return Err(RedisServerError::NotReady {
                    port: self.port,
                    waited_ms: started.elapsed().as_millis(),
                    log: self.log_path(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap; the data directory (with the AOF) stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, which makes redis-server write and fsync its AOF before it exits, then
    /// SIGKILL if it has not exited within `grace`; the data directory stays.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(child) = &mut self.child {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    self.child = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
    }

    /// Kill -9, then start again on the same port with the same AOF.
    pub fn restart(&mut self) -> Result<(), RedisServerError> {
        self.kill();
        self.start()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port(dir: &Path) -> Result<u16, RedisServerError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| RedisServerError::Io {
        what: "finding a free port",
        dir: dir.to_path_buf(),
        source,
    })?;
    listener.local_addr().map(|a| a.port()).map_err(|source| RedisServerError::Io {
        what: "finding a free port",
        dir: dir.to_path_buf(),
        source,
    })
}

/// True when something listens on the loopback port.
fn accepts(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// True when something on the port answers `PING` with `+PONG` (not `-LOADING`).
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    match stream.read(&mut reply) {
        Ok(n) => reply[..n].starts_with(b"+PONG"),
        Err(_) => false,
    }
}
