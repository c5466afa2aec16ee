//! The one place tsweep builds a [`redis::Client`]: from the Redis URL and the TLS files of
//! the coordinator's and the worker's settings ([`RedisTlsFiles`]).
//!
//! - `redis://...`: plain TCP; any TLS file set is a configuration error (the files would
//!   silently do nothing).
//! - `rediss://...`: TLS (rustls). The server certificate is checked against
//!   `redis_ca_file` (a PEM bundle) when set, otherwise against the platform's trust store.
//!   `redis_client_cert_file` + `redis_client_key_file` (both or neither) add a client
//!   certificate for mutual TLS.
//!
//! Files are read and parsed in [`build_client`] (with `tsweep_proto::tls::read_pem`, the
//! reader of every TLS file tsweep takes), so a missing, unreadable or non-PEM file is an
//! error at startup naming the setting and the path. [`is_tls_failure`] recognises a
//! refused handshake (unknown CA, bad certificate) by type: it never heals by retrying.

use std::path::{Path, PathBuf};

use redis::{ClientTlsConfig, TlsCertificates};
use tsweep_proto::tls::{PemFileError, PemKind};

/// The setting names, as the coordinator's and the worker's settings spell them.
pub const CA_FILE_SETTING: &str = "redis_ca_file";
pub const CLIENT_CERT_FILE_SETTING: &str = "redis_client_cert_file";
pub const CLIENT_KEY_FILE_SETTING: &str = "redis_client_key_file";
pub const URL_SETTING: &str = "redis_url";

/// The TLS files for `rediss://` URLs; all unset for plain Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTlsFiles {
    /// PEM CA bundle trusted for the server certificate; unset: the platform trust store.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain (mutual TLS); needs `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate; needs `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
}

impl RedisTlsFiles {
    /// True when no file is set.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.client_cert_file.is_none() && self.client_key_file.is_none()
    }

    /// The first setting that is set, for error messages.
    fn first_set(&self) -> Option<&'static str> {
        [
            (CA_FILE_SETTING, &self.ca_file),
            (CLIENT_CERT_FILE_SETTING, &self.client_cert_file),
            (CLIENT_KEY_FILE_SETTING, &self.client_key_file),
        ]
        .into_iter()
        .find_map(|(setting, value)| value.as_ref().map(|_| setting))
    }
}

/// Why no client could be built; every variant names the setting (and the path).
#[derive(Debug, thiserror::Error)]
pub enum RedisClientError {
    #[error("`{URL_SETTING}` is not a redis:// or rediss:// url: {source}")]
    Url {
        #[source]
        source: redis::RedisError,
    },
    #[error("`{setting}` is set but `{URL_SETTING}` is a plain redis:// url: use rediss:// for TLS")]
    TlsFilesWithPlainUrl { setting: &'static str },
    #[error("`{missing}` is required when `{given}` is set (mutual TLS needs both)")]
    IncompletePair { missing: &'static str, given: &'static str },
    /// A TLS file that cannot be read or is not the PEM it should be (names the setting
    /// and the path).
    #[error(transparent)]
    Pem(#[from] PemFileError),
}

impl RedisClientError {
    /// The setting at fault.
    pub fn setting(&self) -> &'static str {
        match self {
            RedisClientError::Url { .. } => URL_SETTING,
            RedisClientError::TlsFilesWithPlainUrl { setting } => setting,
            RedisClientError::IncompletePair { missing, .. } => missing,
            RedisClientError::Pem(error) => error.setting(),
        }
    }
}

/// Builds the client for `url` with `tls` (see the module docs). Reads and parses the
/// files; connects to nothing.
pub fn build_client(url: &str, tls: &RedisTlsFiles) -> Result<redis::Client, RedisClientError> {
    let is_tls = url.trim_start().to_ascii_lowercase().starts_with("rediss://");
    if !is_tls {
        if let Some(setting) = tls.first_set() {
            return Err(RedisClientError::TlsFilesWithPlainUrl { setting });
        }
        return redis::Client::open(url).map_err(|source| RedisClientError::Url { source });
    }
    let client_tls = match (&tls.client_cert_file, &tls.client_key_file) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(RedisClientError::IncompletePair {
                missing: CLIENT_KEY_FILE_SETTING,
                given: CLIENT_CERT_FILE_SETTING,
            })
        }
        (None, Some(_)) => {
            return Err(RedisClientError::IncompletePair {
                missing: CLIENT_CERT_FILE_SETTING,
                given: CLIENT_KEY_FILE_SETTING,
            })
        }
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read_pem(CLIENT_CERT_FILE_SETTING, cert, PemKind::Certificates)?,
            client_key: read_pem(CLIENT_KEY_FILE_SETTING, key, PemKind::PrivateKey)?,
        }),
    };
    let root_cert = match &tls.ca_file {
        Some(path) => Some(read_pem(CA_FILE_SETTING, path, PemKind::CaBundle)?),
        None => None,
    };
    redis::Client::build_with_tls(url, TlsCertificates { client_tls, root_cert })
        .map_err(|source| RedisClientError::Url { source })
}

/// True when `err` (or an error it wraps) is a TLS failure: the server's certificate not
/// trusted or invalid, a client certificate refused, a protocol mismatch. Repeating the
/// same call cannot succeed; callers treat it as fatal, not as Redis being away.
pub fn is_tls_failure(err: &redis::RedisError) -> bool {
    tsweep_proto::tls::is_tls_failure(err)
}

/// Reads and checks a PEM file with the reader every TLS setting of tsweep uses.
fn read_pem(setting: &'static str, path: &Path, kind: PemKind) -> Result<Vec<u8>, RedisClientError> {
    Ok(tsweep_proto::tls::read_pem(setting, path, kind)?)
}

#[cfg(any(test, feature = "test-support"))]
pub mod test_support;

#[cfg(test)]
mod tests;
