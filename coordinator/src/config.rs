//! The coordinator's service configuration, loaded through ONE layered path:
//! defaults → optional TOML file (`--config`) → `TSWEEP__*` environment → CLI flags,
//! then [`ServiceConfig::validate`]. Unknown keys are rejected at every layer
//! (a typo in `TSWEEP__LEASE_TTL_MS` or in the file is an error naming the key).

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
    /// Bearer token every SweepService/WorkerService call must present.
    pub auth_token: Option<String>,
    /// File holding the bearer token (a Kubernetes Secret mount); exclusive with `auth_token`.
    pub auth_token_file: Option<PathBuf>,
    /// PEM certificate chain and private key: both set turns TLS on.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Allows listening on a non-loopback address without a token.
    pub insecure: bool,
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
            auth_token: None,
            auth_token_file: None,
            tls_cert: None,
            tls_key: None,
            insecure: false,
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
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `Some(true)` for `--insecure`.
    pub insecure: Option<bool>,
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
    /// `auth_token_file` cannot be read, is empty (a Secret created empty) or is not a
    /// token (the message names the path).
    #[error("service config: auth_token_file: {0}")]
    TokenFile(#[from] tsweep_proto::auth::TokenFileError),
    /// No token and a non-loopback listen address without `insecure`.
    #[error(
        "refusing to listen on {listen} without an auth token: set auth_token \
         (TSWEEP__AUTH_TOKEN or auth_token_file) or pass --insecure"
    )]
    InsecureListen { listen: String },
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
            .set_override_option("tls_cert", path_str(o.tls_cert))?
            .set_override_option("tls_key", path_str(o.tls_key))?
            .set_override_option("insecure", o.insecure)?;
        let mut loaded: ServiceConfig = builder.build()?.try_deserialize()?;
        loaded.resolve_token_file()?;
        loaded.validate()?;
        Ok(loaded)
    }

    /// Reads `auth_token_file` into `auth_token` (trimmed). Both set is an error, and so is
    /// an empty file (it would silently mean "no token").
    fn resolve_token_file(&mut self) -> Result<(), ConfigError> {
        let Some(path) = self.auth_token_file.clone() else {
            return Ok(());
        };
        if self.auth_token.as_deref().is_some_and(|t| !t.is_empty()) {
            return Err(ConfigError::Invalid {
                field: "auth_token_file",
                reason: "set together with auth_token: give one of them".into(),
            });
        }
        self.auth_token = Some(tsweep_proto::auth::read_token_file(&path)?);
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
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(invalid("tls_key", "is required when tls_cert is set")),
            (None, Some(_)) => return Err(invalid("tls_cert", "is required when tls_key is set")),
            _ => {}
        }
        if let Some(token) = &self.auth_token {
            if token.chars().any(|c| !c.is_ascii_graphic()) {
                return Err(invalid("auth_token", "must be printable ascii without spaces"));
            }
        }
        if self.token().is_none() && !self.insecure && !listen.ip().is_loopback() {
            return Err(ConfigError::InsecureListen { listen: self.listen.clone() });
        }
        Ok(())
    }

    /// The configured bearer token (after reading `auth_token_file`); empty counts as none.
    pub fn token(&self) -> Option<&str> {
        self.auth_token.as_deref().map(str::trim).filter(|t| !t.is_empty())
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
        assert!(config.token().is_none());
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
        let with_token = ServiceConfig::load_with_env(None, flags, env(&[("TSWEEP__AUTH_TOKEN", "abc")])).unwrap();
        assert_eq!(with_token.token(), Some("abc"));
    }

    #[test]
    fn token_file_is_read_and_exclusive_with_token() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "from-file\n").unwrap();
        let flags = ConfigOverrides { auth_token_file: Some(token_file.clone()), ..Default::default() };
        let config = ServiceConfig::load_with_env(None, flags.clone(), env(&[])).unwrap();
        assert_eq!(config.token(), Some("from-file"));
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
