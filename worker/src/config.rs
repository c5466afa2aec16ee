//! The agent's settings: defaults → `--config FILE` (TOML) → `TSWEEP_WORKER__*` environment
//! variables → command-line flags, all through the `config` crate, then [`WorkerConfig::validate`].
//! Unknown keys are refused at every layer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tsweep_proto::auth::{read_token_file, TokenSource};
use tsweep_proto::cell::Device;

use crate::child_protocol::ExecutorKind;
use crate::logging::LogFormat;

/// Prefix of the environment variables read as settings (`TSWEEP_WORKER__REDIS_URL`, ...).
pub const ENV_PREFIX: &str = "TSWEEP_WORKER";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("worker settings ({layers}): {message}")]
    Load { layers: String, message: String },
    #[error("worker settings: field `{field}`: {message}")]
    Invalid { field: &'static str, message: String },
    /// The Redis URL and TLS files do not fit together, or a TLS file is missing or not PEM
    /// (the message names the setting and the path).
    #[error("worker settings: {0}")]
    Redis(#[from] tsweep_redis::RedisClientError),
}

/// The agent's settings, as read (file keys and env suffixes are these field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// gRPC address of the coordinator, e.g. `http://127.0.0.1:50051` (`https://` for TLS).
    pub coordinator: String,
    /// PEM CA bundle the coordinator's certificate must chain to (`https://` only); unset:
    /// the platform trust store.
    pub coordinator_ca_file: Option<PathBuf>,
    /// Redis that receives the metrics streams, e.g. `redis://127.0.0.1:6379/`.
    pub redis_url: String,
    /// PEM CA bundle trusted for a `rediss://` Redis; unset: the platform trust store.
    pub redis_ca_file: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS with Redis (both or neither).
    pub redis_client_cert_file: Option<PathBuf>,
    pub redis_client_key_file: Option<PathBuf>,
    /// Concurrent tasks; unset: one per GPU (or 1 without GPUs).
    pub slots: Option<u32>,
    /// GPUs this worker may use: `auto` (count `/dev/nvidiaN`) or a number.
    pub gpus: String,
    /// What the per-task child runs.
    pub executor: ExecutorKind,
    /// `auto` (the slot's GPU if it has one, else the CPU), `cpu`, or `cuda:N`.
    pub device: String,
    /// Checkpoints go under `<checkpoint_root>/<sweep>/<task>/attempt-<n>/`; shared between
    /// workers so that a retry elsewhere can resume.
    pub checkpoint_root: PathBuf,
    /// Feature and prepared-shard cache shared by the tasks on this machine.
    pub cache_dir: PathBuf,
    /// Unset: `<hostname>-<8 hex digits>`.
    pub worker_id: Option<String>,
    /// Bearer token sent on every gRPC call.
    pub token: Option<String>,
    /// File holding the bearer token (a mounted Kubernetes Secret); exclusive with `token`.
    /// Read at startup and again every few seconds, so a rotated Secret needs no restart.
    pub token_file: Option<PathBuf>,
    pub log_format: LogFormat,
    /// After SIGTERM: how long children get to checkpoint and the leases to be released.
    pub grace_period_s: f64,
    /// Give up delivering a task's report after this long (the lease then expires and the
    /// task runs again).
    pub report_timeout_s: f64,
    /// libtorch threads per task on the CPU; unset: the machine's cores / slots (at least 1),
    /// so that concurrent tasks do not oversubscribe the cores.
    pub cpu_threads: Option<u32>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        let scratch = std::env::temp_dir().join("tsweep");
        Self {
            coordinator: "http://127.0.0.1:50051".to_string(),
            coordinator_ca_file: None,
            redis_url: "redis://127.0.0.1:6379/".to_string(),
            redis_ca_file: None,
            redis_client_cert_file: None,
            redis_client_key_file: None,
            slots: None,
            gpus: "auto".to_string(),
            executor: ExecutorKind::Trainer,
            device: "auto".to_string(),
            checkpoint_root: scratch.join("checkpoints"),
            cache_dir: scratch.join("cache"),
            worker_id: None,
            token: None,
            token_file: None,
            log_format: LogFormat::Text,
            grace_period_s: 25.0,
            report_timeout_s: 600.0,
            cpu_threads: None,
        }
    }
}

/// Command-line values; each one set overrides the file and the environment.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AgentArgs {
    /// TOML file with any of the settings below (keys: the flag names with `_`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Coordinator gRPC URL [default: http://127.0.0.1:50051]; https:// for TLS.
    #[arg(long, value_name = "URL")]
    pub coordinator: Option<String>,
    /// PEM CA bundle the coordinator's certificate must chain to [default: the platform trust store].
    #[arg(long, value_name = "PEM")]
    pub coordinator_ca_file: Option<PathBuf>,
    /// Redis URL for the metrics streams [default: redis://127.0.0.1:6379/].
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    /// Concurrent tasks [default: one per GPU, or 1].
    #[arg(long, value_name = "N")]
    pub slots: Option<u32>,
    /// GPUs to use: a number or `auto` [default: auto].
    #[arg(long, value_name = "N|auto")]
    pub gpus: Option<String>,
    /// `trainer` (libtorch) or `fake` (test executor for cluster tests and benchmarks) [default: trainer].
    #[arg(long, value_enum)]
    pub executor: Option<ExecutorKind>,
    /// `auto`, `cpu` or `cuda:N` [default: auto].
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Shared checkpoint directory.
    #[arg(long, value_name = "DIR")]
    pub checkpoint_root: Option<PathBuf>,
    /// Feature and shard cache directory.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// This worker's id [default: <hostname>-<random>].
    #[arg(long, value_name = "ID")]
    pub worker_id: Option<String>,
    /// Bearer token for the coordinator.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// File holding the bearer token (re-read while running; exclusive with --token).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Seconds after SIGTERM for children to checkpoint and leases to be released [default: 25].
    #[arg(long = "grace-period", value_name = "SECONDS")]
    pub grace_period_s: Option<f64>,
    /// libtorch threads per task on the CPU [default: cores / slots].
    #[arg(long, value_name = "N")]
    pub cpu_threads: Option<u32>,
}

impl WorkerConfig {
    /// Layers defaults, the file, the process environment and the flags.
    pub fn load(args: &AgentArgs) -> Result<Self, ConfigError> {
        Self::load_with_env(args, None)
    }

    /// As [`Self::load`], reading `env` instead of the process environment when given (tests).
    pub fn load_with_env(args: &AgentArgs, env: Option<HashMap<String, String>>) -> Result<Self, ConfigError> {
        let layers = match &args.config {
            Some(file) => format!("file {}, {ENV_PREFIX}__* environment, flags", file.display()),
            None => format!("{ENV_PREFIX}__* environment, flags"),
        };
        Self::layered(args, env).map_err(|e| ConfigError::Load { layers, message: e.to_string() })?.validate_owned()
    }

    fn validate_owned(self) -> Result<Self, ConfigError> {
        self.validate()?;
        Ok(self)
    }

    fn layered(args: &AgentArgs, env: Option<HashMap<String, String>>) -> Result<Self, config::ConfigError> {
        let defaults = config::Config::try_from(&WorkerConfig::default())?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(file) = &args.config {
            builder = builder.add_source(config::File::new(&path_str(file), config::FileFormat::Toml).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(env),
        );
        builder = builder
            .set_override_option("coordinator", args.coordinator.clone())?
            .set_override_option("coordinator_ca_file", args.coordinator_ca_file.as_deref().map(path_str))?
            .set_override_option("redis_url", args.redis_url.clone())?
            .set_override_option("slots", args.slots.map(u64::from))?
            .set_override_option("gpus", args.gpus.clone())?
            .set_override_option("executor", args.executor.map(executor_name))?
            .set_override_option("device", args.device.clone())?
            .set_override_option("checkpoint_root", args.checkpoint_root.as_deref().map(path_str))?
            .set_override_option("cache_dir", args.cache_dir.as_deref().map(path_str))?
            .set_override_option("worker_id", args.worker_id.clone())?
            .set_override_option("token", args.token.clone())?
            .set_override_option("token_file", args.token_file.as_deref().map(path_str))?
            .set_override_option("log_format", args.log_format.map(|f| f.name()))?
            .set_override_option("grace_period_s", args.grace_period_s)?
            .set_override_option("cpu_threads", args.cpu_threads.map(u64::from))?;
        builder.build()?.try_deserialize()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.coordinator.trim().is_empty() {
            return Err(invalid("coordinator", "must not be empty"));
        }
        if !(self.coordinator.starts_with("http://") || self.coordinator.starts_with("https://")) {
            return Err(invalid("coordinator", format!("`{}` must start with http:// or https://", self.coordinator)));
        }
        tsweep_proto::tls::coordinator_endpoint(&self.coordinator, self.coordinator_ca_file.as_deref()).map_err(
            |e| {
                let field = match e {
                    tsweep_proto::tls::ClientTlsError::Url { .. }
                    | tsweep_proto::tls::ClientTlsError::Scheme { .. } => "coordinator",
                    _ => "coordinator_ca_file",
                };
                invalid(field, e.to_string())
            },
        )?;
        if self.redis_url.trim().is_empty() {
            return Err(invalid("redis_url", "must not be empty"));
        }
        tsweep_redis::build_client(&self.redis_url, &self.redis_tls())?;
        if self.slots == Some(0) {
            return Err(invalid("slots", "must be at least 1"));
        }
        if self.cpu_threads == Some(0) {
            return Err(invalid("cpu_threads", "must be at least 1"));
        }
        self.gpu_setting()?;
        parse_device(&self.device)?;
        if !(self.grace_period_s.is_finite() && self.grace_period_s >= 0.0) {
            return Err(invalid("grace_period_s", format!("{} is not a duration in seconds", self.grace_period_s)));
        }
        if !(self.report_timeout_s.is_finite() && self.report_timeout_s > 0.0) {
            return Err(invalid(
                "report_timeout_s",
                format!("{} is not a positive duration in seconds", self.report_timeout_s),
            ));
        }
        self.token_source()?;
        if let Some(id) = &self.worker_id {
            if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c == '/') {
                return Err(invalid("worker_id", format!("`{id}` must be non-empty, without spaces or `/`")));
            }
        }
        Ok(())
    }

    /// Where the bearer token comes from; a token file is read now (missing, unreadable
    /// or empty: an error naming the path). `token` and `token_file` together are refused.
    pub fn token_source(&self) -> Result<TokenSource, ConfigError> {
        let inline = self.token.as_deref().map(str::trim).filter(|t| !t.is_empty());
        match (inline, &self.token_file) {
            (Some(_), Some(_)) => Err(invalid("token_file", "set together with token: give one of them")),
            (None, Some(path)) => {
                read_token_file(path).map_err(|e| invalid("token_file", e.to_string()))?;
                Ok(TokenSource::File(path.clone()))
            }
            (Some(token), None) if token.chars().any(|c| !c.is_ascii_graphic()) => {
                Err(invalid("token", "must be printable ascii without spaces"))
            }
            (Some(token), None) => Ok(TokenSource::Inline(token.to_string())),
            (None, None) => Ok(TokenSource::None),
        }
    }

    /// The TLS files for the metrics Redis (all unset for plain `redis://`).
    pub fn redis_tls(&self) -> tsweep_redis::RedisTlsFiles {
        tsweep_redis::RedisTlsFiles {
            ca_file: self.redis_ca_file.clone(),
            client_cert_file: self.redis_client_cert_file.clone(),
            client_key_file: self.redis_client_key_file.clone(),
        }
    }

    pub fn gpu_setting(&self) -> Result<GpuSetting, ConfigError> {
        match self.gpus.trim() {
            "auto" => Ok(GpuSetting::Auto),
            n => n
                .parse::<u32>()
                .map(GpuSetting::Count)
                .map_err(|_| invalid("gpus", format!("`{n}` is neither `auto` nor a number"))),
        }
    }

    pub fn grace_period(&self) -> Duration {
        Duration::from_secs_f64(self.grace_period_s)
    }

    pub fn report_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.report_timeout_s)
    }

    /// The worker id, generating `<hostname>-<8 hex>` when none is set.
    pub fn resolved_worker_id(&self) -> String {
        if let Some(id) = &self.worker_id {
            return id.clone();
        }
        let host = local_hostname();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        format!("{host}-{}", &suffix[..8])
    }
}

/// `--gpus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuSetting {
    Auto,
    Count(u32),
}

impl GpuSetting {
    /// The number of GPUs to use; `auto` counts the `/dev/nvidiaN` device files.
    pub fn resolve(self) -> u32 {
        match self {
            GpuSetting::Count(n) => n,
            GpuSetting::Auto => count_nvidia_devices(Path::new("/dev")),
        }
    }
}

/// The configured `device` (auto | cpu | cuda:N).
pub fn parse_device(text: &str) -> Result<Device, ConfigError> {
    text.parse().map_err(|e: tsweep_proto::cell::DeviceParseError| invalid("device", e.to_string()))
}

/// Counts `nvidiaN` device files (the GPUs a container was given) in `dev`.
pub fn count_nvidia_devices(dev: &Path) -> u32 {
    let Ok(entries) = std::fs::read_dir(dev) else { return 0 };
    let count = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix("nvidia").is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        })
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

pub fn local_hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_string())
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, message: message.into() }
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn executor_name(kind: ExecutorKind) -> &'static str {
    match kind {
        ExecutorKind::Trainer => "trainer",
        ExecutorKind::Fake => "fake",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn defaults_load_without_file_env_or_flags() {
        let config = WorkerConfig::load_with_env(&AgentArgs::default(), env(&[])).unwrap();
        assert_eq!(config, WorkerConfig::default());
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.toml");
        std::fs::write(
            &file,
            "coordinator = \"http://file:1\"\nredis_url = \"redis://file/\"\nslots = 2\nexecutor = \"fake\"\ngpus = \"0\"\n",
        )
        .unwrap();
        let args = AgentArgs { config: Some(file), slots: Some(7), ..Default::default() };
        let config = WorkerConfig::load_with_env(
            &args,
            env(&[
                ("TSWEEP_WORKER__REDIS_URL", "redis://env/"),
                ("TSWEEP_WORKER__SLOTS", "3"),
                ("TSWEEP_WORKER__GRACE_PERIOD_S", "4.5"),
            ]),
        )
        .unwrap();
        assert_eq!(config.coordinator, "http://file:1");
        assert_eq!(config.redis_url, "redis://env/");
        assert_eq!(config.slots, Some(7));
        assert_eq!(config.executor, ExecutorKind::Fake);
        assert_eq!(config.gpu_setting().unwrap(), GpuSetting::Count(0));
        assert_eq!(config.grace_period(), Duration::from_millis(4500));
    }

    #[test]
    fn unknown_keys_are_refused_in_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.toml");
        std::fs::write(&file, "slotz = 2\n").unwrap();
        let args = AgentArgs { config: Some(file), ..Default::default() };
        let err = WorkerConfig::load_with_env(&args, env(&[])).unwrap_err().to_string();
        assert!(err.contains("slotz"), "{err}");

        let err = WorkerConfig::load_with_env(&AgentArgs::default(), env(&[("TSWEEP_WORKER__SLOTZ", "2")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("slotz"), "{err}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let args = AgentArgs { gpus: Some("many".into()), ..Default::default() };
        let err = WorkerConfig::load_with_env(&args, env(&[])).unwrap_err().to_string();
        assert!(err.contains("gpus") && err.contains("many"), "{err}");
        let args = AgentArgs { device: Some("tpu".into()), ..Default::default() };
        let err = WorkerConfig::load_with_env(&args, env(&[])).unwrap_err().to_string();
        assert!(err.contains("device"), "{err}");
        let args = AgentArgs { slots: Some(0), ..Default::default() };
        assert!(WorkerConfig::load_with_env(&args, env(&[])).is_err());
    }

    #[test]
    fn a_token_file_comes_from_file_env_or_flag_and_is_read_at_startup() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let token_str = token.to_str().unwrap();

        let settings = dir.path().join("worker.toml");
        std::fs::write(&settings, format!("token_file = {:?}\n", token_str)).unwrap();
        let args = AgentArgs { config: Some(settings), ..Default::default() };
        let config = WorkerConfig::load_with_env(&args, env(&[])).unwrap();
        assert_eq!(config.token_file.as_deref(), Some(token.as_path()));
        assert_eq!(config.token_source().unwrap(), TokenSource::File(token.clone()));

        let config =
            WorkerConfig::load_with_env(&AgentArgs::default(), env(&[("TSWEEP_WORKER__TOKEN_FILE", token_str)]))
                .unwrap();
        assert_eq!(config.token_source().unwrap(), TokenSource::File(token.clone()));
        assert_eq!(read_token_file(&token).unwrap(), "s3cret", "trailing newline trimmed");

        let other = dir.path().join("other");
        std::fs::write(&other, "flag-token").unwrap();
        let args = AgentArgs { token_file: Some(other.clone()), ..Default::default() };
        let config = WorkerConfig::load_with_env(&args, env(&[("TSWEEP_WORKER__TOKEN_FILE", token_str)])).unwrap();
        assert_eq!(config.token_source().unwrap(), TokenSource::File(other), "the flag wins over the environment");

        let config =
            WorkerConfig::load_with_env(&AgentArgs::default(), env(&[("TSWEEP_WORKER__TOKEN", "inline")])).unwrap();
        assert_eq!(config.token_source().unwrap(), TokenSource::Inline("inline".into()));
        assert_eq!(WorkerConfig::default().token_source().unwrap(), TokenSource::None);
    }

    #[test]
    fn a_bad_token_file_is_an_error_naming_the_path_and_token_with_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent-token");
        let args = AgentArgs { token_file: Some(missing.clone()), ..Default::default() };
        let err = WorkerConfig::load_with_env(&args, env(&[])).unwrap_err().to_string();
        assert!(err.contains("token_file") && err.contains(&missing.display().to_string()), "{err}");

        let empty = dir.path().join("empty-token");
        std::fs::write(&empty, "\n").unwrap();
        let args = AgentArgs { token_file: Some(empty.clone()), ..Default::default() };
        let err = WorkerConfig::load_with_env(&args, env(&[])).unwrap_err().to_string();
        assert!(err.contains("empty") && err.contains(&empty.display().to_string()), "{err}");

        let unreadable = dir.path().join("a-directory");
        std::fs::create_dir(&unreadable).unwrap();
        let args = AgentArgs { token_file: Some(unreadable.clone()), ..Default::default() };
        let err = WorkerConfig::load_with_env(&args, env(&[])).unwrap_err().to_string();
        assert!(err.contains(&unreadable.display().to_string()), "{err}");

        let good = dir.path().join("token");
        std::fs::write(&good, "s3cret\n").unwrap();
        let args = AgentArgs { token_file: Some(good.clone()), ..Default::default() };
        let err =
            WorkerConfig::load_with_env(&args, env(&[("TSWEEP_WORKER__TOKEN", "inline")])).unwrap_err().to_string();
        assert!(err.contains("token_file") && err.contains("together with token"), "{err}");
        let args = AgentArgs { token_file: Some(good), token: Some("inline".into()), ..Default::default() };
        assert!(WorkerConfig::load_with_env(&args, env(&[])).is_err());

        let err = WorkerConfig::load_with_env(&AgentArgs::default(), env(&[("TSWEEP_WORKER__TOKEN_FILES", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("token_files"), "unknown keys still refused: {err}");
    }

    #[test]
    fn redis_tls_settings_are_read_and_checked_at_startup() {
        let dir = tempfile::tempdir().unwrap();
        let pki = tsweep_redis::test_support::TestPki::generate(dir.path()).unwrap();
        let settings = dir.path().join("worker.toml");
        std::fs::write(
            &settings,
            format!(
                "redis_url = \"rediss://redis.example:6380/\"\nredis_ca_file = {:?}\nredis_client_cert_file = {:?}\n",
                pki.ca_cert.to_str().unwrap(),
                pki.client_cert.to_str().unwrap()
            ),
        )
        .unwrap();
        let args = AgentArgs { config: Some(settings), ..Default::default() };
        let config = WorkerConfig::load_with_env(
            &args,
            env(&[("TSWEEP_WORKER__REDIS_CLIENT_KEY_FILE", pki.client_key.to_str().unwrap())]),
        )
        .unwrap();
        assert_eq!(config.redis_tls(), pki.mutual());
        tsweep_redis::build_client(&config.redis_url, &config.redis_tls()).expect("the worker builds a tls client");

        let err = WorkerConfig::load_with_env(&args, env(&[])).unwrap_err().to_string();
        assert!(err.contains("redis_client_key_file"), "a certificate without its key: {err}");

        let ca = pki.ca_cert.to_str().unwrap();
        let err = WorkerConfig::load_with_env(&AgentArgs::default(), env(&[("TSWEEP_WORKER__REDIS_CA_FILE", ca)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("redis_ca_file") && err.contains("rediss://"), "tls files with redis://: {err}");

        let missing = dir.path().join("absent.pem");
        let rediss = AgentArgs { redis_url: Some("rediss://redis.example:6380/".into()), ..Default::default() };
        let err =
            WorkerConfig::load_with_env(&rediss, env(&[("TSWEEP_WORKER__REDIS_CA_FILE", missing.to_str().unwrap())]))
                .unwrap_err()
                .to_string();
        assert!(err.contains("redis_ca_file") && err.contains(&missing.display().to_string()), "{err}");
        let config = WorkerConfig::load_with_env(&rediss, env(&[])).unwrap();
        assert!(config.redis_tls().is_empty(), "rediss:// without a CA file trusts the platform roots");
    }

    #[test]
    fn counts_only_numbered_nvidia_devices() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "null"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        assert_eq!(count_nvidia_devices(dir.path()), 2);
    }

    #[test]
    fn generated_worker_ids_are_unique() {
        let config = WorkerConfig::default();
        assert_ne!(config.resolved_worker_id(), config.resolved_worker_id());
    }
}
