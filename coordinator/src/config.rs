//! The coordinator's service configuration, loaded through ONE layered path:
//! defaults → optional TOML file (`--config`) → `TSWEEP__*` environment → CLI flags,
//! then [`ServiceConfig::validate`]. Unknown keys are rejected at every layer
//! (a typo in `TSWEEP__LEASE_TTL_MS` or in the file is an error naming the key).
//!
//! Credentials: `SweepService` (users, the CLI) and `WorkerService` (worker agents) each
//! take their own bearer token, `user_token[_file]` and `worker_token[_file]`. A role
//! without its own setting falls back to `auth_token[_file]`, the one token for both roles
//! of earlier versions (then every worker may also submit, cancel and delete).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Prefix of the environment variables read by [`ServiceConfig::load`]:
/// `TSWEEP__REDIS_URL`, `TSWEEP__LEASE_TTL_MS`, ...
pub const ENV_PREFIX: &str = "TSWEEP";

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_LEASE_TTL_MS: u64 = 30_000;
pub const DEFAULT_REAPER_INTERVAL_MS: u64 = 2_000;
pub const DEFAULT_FINALS_INTERVAL_MS: u64 = 2_000;
pub const DEFAULT_ACQUIRE_RETRY_AFTER_MS: u64 = 1_000;
pub const DEFAULT_GAUGES_INTERVAL_MS: u64 = 5_000;
pub const DEFAULT_REPAIR_INTERVAL_MS: u64 = 30_000;
/// Cells per Redis script of a big operation: a few ms of Redis time each at a million
/// cells (BENCHMARKS.md, "Big operations"), so no call blocks Redis for long.
pub const DEFAULT_BATCH_CELLS: u64 = 125;
/// The most `batch_cells` may be: 40 times the default, some hundred ms of Redis per script.
pub const MAX_BATCH_CELLS: u64 = 5_000;

/// Everything `tsweep serve` needs. Build it with [`ServiceConfig::load`]; the fields are
/// public so tests and `tsweep local` can adjust a loaded config (then call `validate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// gRPC listen address (`host:port`; port 0 picks a free one).
    pub listen: String,
    /// Prometheus `/metrics` listen address; empty disables the endpoint.
    pub metrics_listen: String,
    /// `redis://[:password@]host:port[/db]` or `rediss://...` for TLS.
    pub redis_url: String,
    /// PEM CA bundle trusted for a `rediss://` server; unset: the platform trust store.
    pub redis_ca_file: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS with Redis (both or neither).
    pub redis_client_cert_file: Option<PathBuf>,
    pub redis_client_key_file: Option<PathBuf>,
    /// How long a lease lives without a heartbeat.
    pub lease_ttl_ms: u64,
    /// How often workers are told to heartbeat; default `lease_ttl_ms / 3`.
    pub heartbeat_interval_ms: Option<u64>,
    /// How often expired leases are reaped, per active sweep.
    pub reaper_interval_ms: u64,
    /// How often finished grid stages are checked for refits to schedule.
    pub finals_interval_ms: u64,
    /// What an idle worker is told to wait before asking again.
    pub acquire_retry_after_ms: u64,
    /// How often the per-sweep Prometheus gauges are refreshed from Redis.
    pub gauges_interval_ms: u64,
    /// How often the set of active sweeps is re-derived from the task state (a sweep left
    /// out of it by an interrupted operation is put back).
    pub repair_interval_ms: u64,
    /// Cells written, cancelled, retried or deleted per Redis script call of a big
    /// operation (submit, cancel, retry, delete): the longest any one call holds Redis.
    pub batch_cells: u64,
    /// One bearer token for both roles: the fallback of `user_token` and `worker_token`.
    pub auth_token: Option<String>,
    /// File holding that token (a Kubernetes Secret mount); exclusive with `auth_token`.
    pub auth_token_file: Option<PathBuf>,
    /// The user credential: every SweepService call (submit, cancel, retry, delete, reads).
    pub user_token: Option<String>,
    /// File holding the user credential, re-read while serving; exclusive with `user_token`.
    pub user_token_file: Option<PathBuf>,
    /// The worker credential: every WorkerService call (register, acquire, heartbeat, reports).
    pub worker_token: Option<String>,
    /// File holding the worker credential, re-read while serving; exclusive with `worker_token`.
    pub worker_token_file: Option<PathBuf>,
    /// PEM certificate chain and private key: both set turns TLS on.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Allows listening on a non-loopback address without a token.
    pub insecure: bool,
    /// Client side (the CLI): PEM CA bundle the coordinator's certificate must chain to
    /// for an `https://` coordinator; unset: the platform trust store.
    pub coordinator_ca_file: Option<PathBuf>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.into(),
            metrics_listen: DEFAULT_METRICS_LISTEN.into(),
            redis_url: DEFAULT_REDIS_URL.into(),
            redis_ca_file: None,
            redis_client_cert_file: None,
            redis_client_key_file: None,
            lease_ttl_ms: DEFAULT_LEASE_TTL_MS,
            heartbeat_interval_ms: None,
            reaper_interval_ms: DEFAULT_REAPER_INTERVAL_MS,
            finals_interval_ms: DEFAULT_FINALS_INTERVAL_MS,
            acquire_retry_after_ms: DEFAULT_ACQUIRE_RETRY_AFTER_MS,
            gauges_interval_ms: DEFAULT_GAUGES_INTERVAL_MS,
            repair_interval_ms: DEFAULT_REPAIR_INTERVAL_MS,
            batch_cells: DEFAULT_BATCH_CELLS,
            auth_token: None,
            auth_token_file: None,
            user_token: None,
            user_token_file: None,
            worker_token: None,
            worker_token_file: None,
            tls_cert: None,
            tls_key: None,
            insecure: false,
            coordinator_ca_file: None,
        }
    }
}

/// CLI flag values (the last layer). `None` leaves the lower layers' value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigOverrides {
    pub listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub redis_url: Option<String>,
    pub lease_ttl_ms: Option<u64>,
    pub heartbeat_interval_ms: Option<u64>,
    pub reaper_interval_ms: Option<u64>,
    pub finals_interval_ms: Option<u64>,
    pub acquire_retry_after_ms: Option<u64>,
    pub auth_token: Option<String>,
    pub auth_token_file: Option<PathBuf>,
    pub user_token_file: Option<PathBuf>,
    pub worker_token_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `Some(true)` for `--insecure`.
    pub insecure: Option<bool>,
    pub coordinator_ca_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file, malformed TOML, unknown key, wrong type (the message names the key
    /// and, for files, the path).
    #[error("service config: {0}")]
    Load(#[from] config::ConfigError),
    #[error("service config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("service config: `{field}` {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The Redis URL and TLS files do not fit together, or a TLS file is missing or not
    /// PEM (the message names the setting and the path).
    #[error("service config: {0}")]
    Redis(#[from] tsweep_redis::RedisClientError),
    /// A token file cannot be read, is empty (a Secret created empty) or is not a token
    /// (the message names the setting and the path).
    #[error("service config: {field}: {source}")]
    TokenFile {
        field: &'static str,
        #[source]
        source: tsweep_proto::auth::TokenFileError,
    },
    /// A role without a token and a non-loopback listen address without `insecure`.
    #[error(
        "refusing to listen on {listen} without a {role} token: set {role}_token_file (or {role}_token, \
         or auth_token_file for both roles) or pass --insecure"
    )]
    InsecureListen { listen: String, role: &'static str },
    /// `coordinator_ca_file` does not fit the coordinator address or is not a PEM CA bundle.
    #[error("service config: {0}")]
    CoordinatorTls(#[from] tsweep_proto::tls::ClientTlsError),
}

/// The two callers of the coordinator, each with its own credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `tsweep.v1.SweepService`: people and the CLI.
    User,
    /// `tsweep.v1.WorkerService`: worker agents.
    Worker,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Worker => "worker",
        }
    }

    /// The gRPC service this role may call.
    pub fn service(self) -> &'static str {
        match self {
            Role::User => "tsweep.v1.SweepService",
            Role::Worker => "tsweep.v1.WorkerService",
        }
    }
}

/// Where one role's token comes from, after the token files were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleToken {
    pub token: String,
    /// The file it was read from (re-read while serving), if any.
    pub file: Option<PathBuf>,
    /// True when it is `auth_token[_file]`, the one token for both roles.
    pub shared: bool,
}

impl ServiceConfig {
    /// defaults → `file` (TOML, must exist when given) → `TSWEEP__*` env → `overrides`,
    /// then the token file is read and [`validate`](Self::validate) runs.
    pub fn load(file: Option<&Path>, overrides: ConfigOverrides) -> Result<Self, ConfigError> {
        Self::load_with_env(file, overrides, None)
    }

    /// As [`load`](Self::load), with the environment given as a map (`TSWEEP__X` → value)
    /// instead of read from the process; `None` reads the process environment.
    pub fn load_with_env(
        file: Option<&Path>,
        overrides: ConfigOverrides,
        env: Option<HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let mut builder = config::Config::builder()
            .set_default("listen", defaults.listen)?
            .set_default("metrics_listen", defaults.metrics_listen)?
            .set_default("redis_url", defaults.redis_url)?
            .set_default("lease_ttl_ms", defaults.lease_ttl_ms)?
            .set_default("reaper_interval_ms", defaults.reaper_interval_ms)?
            .set_default("finals_interval_ms", defaults.finals_interval_ms)?
            .set_default("acquire_retry_after_ms", defaults.acquire_retry_after_ms)?
            .set_default("gauges_interval_ms", defaults.gauges_interval_ms)?
            .set_default("repair_interval_ms", defaults.repair_interval_ms)?
            .set_default("batch_cells", defaults.batch_cells)?
            .set_default("insecure", defaults.insecure)?;
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::File { path: path.to_path_buf(), reason: "no such file".into() });
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml).required(true));
        }
        let environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(env.map(|map| map.into_iter().collect()));
        builder = builder.add_source(environment);
        let o = overrides;
        let path_str = |p: Option<PathBuf>| p.map(|p| p.to_string_lossy().into_owned());
        builder = builder
            .set_override_option("listen", o.listen)?
            .set_override_option("metrics_listen", o.metrics_listen)?
            .set_override_option("redis_url", o.redis_url)?
            .set_override_option("lease_ttl_ms", o.lease_ttl_ms)?
            .set_override_option("heartbeat_interval_ms", o.heartbeat_interval_ms)?
            .set_override_option("reaper_interval_ms", o.reaper_interval_ms)?
            .set_override_option("finals_interval_ms", o.finals_interval_ms)?
            .set_override_option("acquire_retry_after_ms", o.acquire_retry_after_ms)?
            .set_override_option("auth_token", o.auth_token)?
            .set_override_option("auth_token_file", path_str(o.auth_token_file))?
            .set_override_option("user_token_file", path_str(o.user_token_file))?
            .set_override_option("worker_token_file", path_str(o.worker_token_file))?
            .set_override_option("tls_cert", path_str(o.tls_cert))?
            .set_override_option("tls_key", path_str(o.tls_key))?
            .set_override_option("insecure", o.insecure)?
            .set_override_option("coordinator_ca_file", path_str(o.coordinator_ca_file))?;
        let mut loaded: ServiceConfig = builder.build()?.try_deserialize()?;
        loaded.resolve_token_files()?;
        loaded.validate()?;
        Ok(loaded)
    }

    /// Reads each `*_token_file` into its `*_token` (trimmed). A file and its inline token
    /// both set is an error, and so is an empty file (it would silently mean "no token").
    fn resolve_token_files(&mut self) -> Result<(), ConfigError> {
        for (field, file, token) in [
            ("auth_token_file", &self.auth_token_file, &mut self.auth_token),
            ("user_token_file", &self.user_token_file, &mut self.user_token),
            ("worker_token_file", &self.worker_token_file, &mut self.worker_token),
        ] {
            let Some(path) = file else { continue };
            if token.as_deref().is_some_and(|t| !t.is_empty()) {
                let inline = field.trim_end_matches("_file");
                return Err(ConfigError::Invalid {
                    field,
                    reason: format!("set together with {inline}: give one of them"),
                });
            }
            *token = Some(
                tsweep_proto::auth::read_token_file(path).map_err(|source| ConfigError::TokenFile { field, source })?,
            );
        }
        Ok(())
    }

    /// Checks values and combinations; also the safety rule: no token → loopback only
    /// unless `insecure`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid { field, reason: reason.into() };
        let listen = self.listen_addr()?;
        self.metrics_addr()?;
        if self.redis_url.trim().is_empty() {
            return Err(invalid("redis_url", "is empty"));
        }
        redis::parse_redis_url(&self.redis_url)
            .ok_or_else(|| invalid("redis_url", "is not a redis:// or rediss:// url"))?;
        tsweep_redis::build_client(&self.redis_url, &self.redis_tls())?;
        if self.lease_ttl_ms < 100 {
            return Err(invalid("lease_ttl_ms", "must be at least 100"));
        }
        if let Some(heartbeat) = self.heartbeat_interval_ms {
            if heartbeat == 0 || heartbeat >= self.lease_ttl_ms {
                return Err(invalid("heartbeat_interval_ms", "must be above 0 and below lease_ttl_ms"));
            }
        }
        for (field, value) in [
            ("reaper_interval_ms", self.reaper_interval_ms),
            ("finals_interval_ms", self.finals_interval_ms),
            ("acquire_retry_after_ms", self.acquire_retry_after_ms),
            ("gauges_interval_ms", self.gauges_interval_ms),
            ("repair_interval_ms", self.repair_interval_ms),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be above 0"));
            }
        }
        if !(1..=MAX_BATCH_CELLS).contains(&self.batch_cells) {
            return Err(invalid("batch_cells", &format!("must be 1 to {MAX_BATCH_CELLS}")));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(invalid("tls_key", "is required when tls_cert is set")),
            (None, Some(_)) => return Err(invalid("tls_cert", "is required when tls_key is set")),
            _ => {}
        }
        for (field, token) in
            [("auth_token", &self.auth_token), ("user_token", &self.user_token), ("worker_token", &self.worker_token)]
        {
            if token.as_deref().is_some_and(|t| t.trim().chars().any(|c| !c.is_ascii_graphic())) {
                return Err(invalid(field, "must be printable ascii without spaces"));
            }
        }
        if let (Some(user), Some(worker)) = (self.role_token(Role::User), self.role_token(Role::Worker)) {
            if !(user.shared && worker.shared) && user.token == worker.token {
                return Err(invalid(
                    "worker_token",
                    "is the same token as user_token: give each role its own (or use auth_token for both)",
                ));
            }
        }
        if !self.insecure && !listen.ip().is_loopback() {
            for role in [Role::User, Role::Worker] {
                if self.role_token(role).is_none() {
                    return Err(ConfigError::InsecureListen { listen: self.listen.clone(), role: role.name() });
                }
            }
        }
        if let Some(ca_file) = &self.coordinator_ca_file {
            tsweep_proto::tls::read_pem(
                tsweep_proto::tls::COORDINATOR_CA_FILE_SETTING,
                ca_file,
                tsweep_proto::tls::PemKind::CaBundle,
            )
            .map_err(tsweep_proto::tls::ClientTlsError::from)?;
        }
        Ok(())
    }

    /// The token `role` must present (after reading the token files): its own setting,
    /// else `auth_token`; None when neither is set (that service is open).
    pub fn role_token(&self, role: Role) -> Option<RoleToken> {
        let (own, own_file) = match role {
            Role::User => (&self.user_token, &self.user_token_file),
            Role::Worker => (&self.worker_token, &self.worker_token_file),
        };
        let trimmed = |t: &Option<String>| t.as_deref().map(str::trim).filter(|t| !t.is_empty()).map(str::to_string);
        if let Some(token) = trimmed(own) {
            return Some(RoleToken { token, file: own_file.clone(), shared: false });
        }
        trimmed(&self.auth_token).map(|token| RoleToken { token, file: self.auth_token_file.clone(), shared: true })
    }

    /// The user credential, as the CLI sends it.
    pub fn user_token(&self) -> Option<String> {
        self.role_token(Role::User).map(|t| t.token)
    }

    /// The worker credential, as `tsweep local` hands it to its workers.
    pub fn worker_token(&self) -> Option<String> {
        self.role_token(Role::Worker).map(|t| t.token)
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.trim().parse().map_err(|e| ConfigError::Invalid {
            field: "listen",
            reason: format!("{:?} is not host:port ({e})", self.listen),
        })
    }

    /// `None` when the metrics endpoint is disabled (`metrics_listen = ""`).
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let text = self.metrics_listen.trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|e| ConfigError::Invalid {
            field: "metrics_listen",
            reason: format!("{text:?} is not host:port ({e})"),
        })
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.unwrap_or(self.lease_ttl_ms / 3).max(1))
    }

    /// How often this coordinator records its liveness beat in Redis: a tenth of the
    /// lease TTL, between 50 ms and 1 s.
    pub fn beat_interval(&self) -> Duration {
        (self.lease_ttl() / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// A gap between two beats (of any coordinator) longer than this is a control-plane
    /// outage, and leases are extended by it: a fifth of the TTL, and at least three beats.
    pub fn dark_after(&self) -> Duration {
        (self.lease_ttl() / 5).max(self.beat_interval() * 3)
    }

    /// The TLS files for the Redis connection (all unset for plain `redis://`).
    pub fn redis_tls(&self) -> tsweep_redis::RedisTlsFiles {
        tsweep_redis::RedisTlsFiles {
            ca_file: self.redis_ca_file.clone(),
            client_cert_file: self.redis_client_cert_file.clone(),
            client_key_file: self.redis_client_key_file.clone(),
        }
    }

    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn defaults_are_loopback_and_valid() {
        let config = ServiceConfig::load_with_env(None, ConfigOverrides::default(), env(&[])).unwrap();
        assert_eq!(config.listen, DEFAULT_LISTEN);
        assert_eq!(config.metrics_listen, DEFAULT_METRICS_LISTEN);
        assert_eq!(config.lease_ttl_ms, 30_000);
        assert_eq!(config.heartbeat_interval(), Duration::from_millis(10_000));
        assert!(config.role_token(Role::User).is_none() && config.role_token(Role::Worker).is_none());
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("coordinator.toml");
        std::fs::write(&file, "lease_ttl_ms = 9000\nreaper_interval_ms = 700\nredis_url = \"redis://10.0.0.1:6379\"\n")
            .unwrap();
        let config = ServiceConfig::load_with_env(
            Some(&file),
            ConfigOverrides { redis_url: Some("redis://127.0.0.1:7000".into()), ..Default::default() },
            env(&[("TSWEEP__LEASE_TTL_MS", "12000"), ("TSWEEP__REDIS_URL", "redis://10.0.0.2:6379")]),
        )
        .unwrap();
        assert_eq!(config.reaper_interval_ms, 700, "file beats defaults");
        assert_eq!(config.lease_ttl_ms, 12_000, "env beats file");
        assert_eq!(config.redis_url, "redis://127.0.0.1:7000", "flags beat env");
        assert_eq!(config.heartbeat_interval(), Duration::from_millis(4_000));
    }

    #[test]
    fn batch_cells_comes_from_the_environment_and_is_bounded() {
        let load = |value: &str| {
            ServiceConfig::load_with_env(None, Default::default(), env(&[("TSWEEP__BATCH_CELLS", value)]))
        };
        assert_eq!(load("250").unwrap().batch_cells, 250);
        for bad in ["0", "5001"] {
            let err = load(bad).unwrap_err().to_string();
            assert!(err.contains("batch_cells") && err.contains("1 to 5000"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_key_in_file_is_rejected_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("coordinator.toml");
        std::fs::write(&file, "lease_tll_ms = 9000\n").unwrap();
        let err =
            ServiceConfig::load_with_env(Some(&file), ConfigOverrides::default(), env(&[])).unwrap_err().to_string();
        assert!(err.contains("lease_tll_ms"), "{err}");
    }

    #[test]
    fn unknown_env_key_is_rejected_by_name() {
        let err = ServiceConfig::load_with_env(None, ConfigOverrides::default(), env(&[("TSWEEP__REDIS_ULR", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("redis_ulr"), "{err}");
    }

    #[test]
    fn non_loopback_without_token_is_refused_unless_insecure() {
        let flags = ConfigOverrides { listen: Some("0.0.0.0:50051".into()), ..Default::default() };
        let err = ServiceConfig::load_with_env(None, flags.clone(), env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::InsecureListen { .. }), "{err}");
        assert!(err.to_string().contains("--insecure"), "{err}");
        let insecure = ConfigOverrides { insecure: Some(true), ..flags.clone() };
        assert!(ServiceConfig::load_with_env(None, insecure, env(&[])).is_ok());
        let with_token =
            ServiceConfig::load_with_env(None, flags.clone(), env(&[("TSWEEP__AUTH_TOKEN", "abc")])).unwrap();
        assert_eq!(with_token.user_token().as_deref(), Some("abc"));
        assert_eq!(with_token.worker_token().as_deref(), Some("abc"));
        let err = ServiceConfig::load_with_env(None, flags, env(&[("TSWEEP__USER_TOKEN", "abc")])).unwrap_err();
        assert!(matches!(err, ConfigError::InsecureListen { role: "worker", .. }), "{err}");
    }

    #[test]
    fn each_role_takes_its_own_token_and_falls_back_to_auth_token() {
        let dir = tempfile::tempdir().unwrap();
        let user_file = dir.path().join("user");
        std::fs::write(&user_file, "user-secret\n").unwrap();
        let flags = ConfigOverrides { user_token_file: Some(user_file.clone()), ..Default::default() };
        let config = ServiceConfig::load_with_env(
            None,
            flags.clone(),
            env(&[("TSWEEP__AUTH_TOKEN", "shared"), ("TSWEEP__WORKER_TOKEN", "worker-secret")]),
        )
        .unwrap();
        let user = config.role_token(Role::User).unwrap();
        assert_eq!((user.token.as_str(), user.file.as_deref(), user.shared), ("user-secret", Some(&*user_file), false));
        assert_eq!(config.worker_token().as_deref(), Some("worker-secret"));

        let fallback = ServiceConfig::load_with_env(None, flags, env(&[("TSWEEP__AUTH_TOKEN", "shared")])).unwrap();
        let worker = fallback.role_token(Role::Worker).unwrap();
        assert_eq!((worker.token.as_str(), worker.shared), ("shared", true));

        let same = ServiceConfig::load_with_env(
            None,
            ConfigOverrides::default(),
            env(&[("TSWEEP__USER_TOKEN", "x"), ("TSWEEP__WORKER_TOKEN", "x")]),
        )
        .unwrap_err()
        .to_string();
        assert!(same.contains("worker_token") && same.contains("user_token"), "{same}");
        let both = ServiceConfig::load_with_env(
            None,
            ConfigOverrides { worker_token_file: Some(user_file), ..Default::default() },
            env(&[("TSWEEP__WORKER_TOKEN", "inline")]),
        )
        .unwrap_err()
        .to_string();
        assert!(both.contains("worker_token_file") && both.contains("worker_token"), "{both}");
    }

    #[test]
    fn token_file_is_read_and_exclusive_with_token() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "from-file\n").unwrap();
        let flags = ConfigOverrides { auth_token_file: Some(token_file.clone()), ..Default::default() };
        let config = ServiceConfig::load_with_env(None, flags.clone(), env(&[])).unwrap();
        assert_eq!(config.user_token().as_deref(), Some("from-file"));
        assert_eq!(config.role_token(Role::Worker).and_then(|t| t.file), Some(token_file.clone()));
        let both = ConfigOverrides { auth_token: Some("x".into()), ..flags };
        assert!(ServiceConfig::load_with_env(None, both, env(&[])).is_err());

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let flags = ConfigOverrides { auth_token_file: Some(empty.clone()), ..Default::default() };
        let err = ServiceConfig::load_with_env(None, flags, env(&[])).unwrap_err().to_string();
        assert!(err.contains("empty") && err.contains(&empty.display().to_string()), "{err}");
        let missing = dir.path().join("absent");
        let flags = ConfigOverrides { auth_token_file: Some(missing.clone()), ..Default::default() };
        let err = ServiceConfig::load_with_env(None, flags, env(&[])).unwrap_err().to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }

    #[test]
    fn redis_tls_files_are_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let pki = tsweep_redis::test_support::TestPki::generate(dir.path()).unwrap();
        let ca = pki.ca_cert.to_str().unwrap();
        let config = ServiceConfig::load_with_env(
            None,
            ConfigOverrides { redis_url: Some("rediss://127.0.0.1:6380/".into()), ..Default::default() },
            env(&[
                ("TSWEEP__REDIS_CA_FILE", ca),
                ("TSWEEP__REDIS_CLIENT_CERT_FILE", pki.client_cert.to_str().unwrap()),
                ("TSWEEP__REDIS_CLIENT_KEY_FILE", pki.client_key.to_str().unwrap()),
            ]),
        )
        .unwrap();
        assert_eq!(config.redis_tls(), pki.mutual());

        let err = ServiceConfig::load_with_env(None, ConfigOverrides::default(), env(&[("TSWEEP__REDIS_CA_FILE", ca)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("redis_ca_file") && err.contains("rediss://"), "plain url with a ca: {err}");

        let missing = dir.path().join("absent-ca.pem");
        let rediss = ConfigOverrides { redis_url: Some("rediss://127.0.0.1:6380/".into()), ..Default::default() };
        let err = ServiceConfig::load_with_env(
            None,
            rediss.clone(),
            env(&[("TSWEEP__REDIS_CA_FILE", missing.to_str().unwrap())]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("redis_ca_file") && err.contains(&missing.display().to_string()), "{err}");

        let err = ServiceConfig::load_with_env(
            None,
            rediss.clone(),
            env(&[("TSWEEP__REDIS_CLIENT_CERT_FILE", pki.client_cert.to_str().unwrap())]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("redis_client_key_file"), "{err}");

        let no_ca = ServiceConfig::load_with_env(None, rediss, env(&[])).unwrap();
        assert!(no_ca.redis_tls().is_empty(), "rediss:// without a CA file trusts the platform roots");
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (ConfigOverrides { lease_ttl_ms: Some(10), ..Default::default() }, "lease_ttl_ms"),
            (ConfigOverrides { heartbeat_interval_ms: Some(40_000), ..Default::default() }, "heartbeat_interval_ms"),
            (ConfigOverrides { tls_cert: Some("/c.pem".into()), ..Default::default() }, "tls_key"),
            (ConfigOverrides { listen: Some("nowhere".into()), ..Default::default() }, "listen"),
            (ConfigOverrides { redis_url: Some("http://x".into()), ..Default::default() }, "redis_url"),
        ];
        for (flags, field) in cases {
            let err = ServiceConfig::load_with_env(None, flags, env(&[])).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
