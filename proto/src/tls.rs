//! TLS for tsweep's clients, in one place: the gRPC channel of the CLI and of the worker
//! agent to an `https://` coordinator ([`coordinator_endpoint`]), the PEM files every TLS
//! setting names ([`read_pem`], also used for `rediss://` by `tsweep-redis`), and how a
//! refused handshake is recognised by type ([`is_tls_failure`]), never by message.
//!
//! - `http://...`: plain HTTP/2; a CA file set with it is a configuration error (it would
//!   silently do nothing).
//! - `https://...`: TLS (rustls, ring). The coordinator's certificate must chain to the
//!   `coordinator_ca_file` bundle when set, otherwise to the platform's trust store; the
//!   name checked is the URL's host (DNS name or IP address).
//!
//! tonic turns a failed connection into `UNAVAILABLE` with the cause as text only, so a
//! client that needs to know whether a failure was TLS connects once more with
//! [`probe`], whose error keeps the cause's type.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// The setting name of the CA bundle for an `https://` coordinator (CLI and worker).
pub const COORDINATOR_CA_FILE_SETTING: &str = "coordinator_ca_file";

/// What a PEM file must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemKind {
    /// At least one certificate, each usable as a trust anchor.
    CaBundle,
    /// At least one certificate (a chain).
    Certificates,
    /// One private key.
    PrivateKey,
}

/// A PEM file that cannot be used; names the setting and the path.
#[derive(Debug, thiserror::Error)]
pub enum PemFileError {
    #[error("`{setting}` {path}: cannot read: {source}")]
    Read {
        setting: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{setting}` {path}: {reason}")]
    Invalid { setting: &'static str, path: PathBuf, reason: String },
}

impl PemFileError {
    pub fn setting(&self) -> &'static str {
        match self {
            PemFileError::Read { setting, .. } | PemFileError::Invalid { setting, .. } => setting,
        }
    }
}

/// Reads `path` (the value of `setting`) and checks that it holds `kind`; returns the bytes.
pub fn read_pem(setting: &'static str, path: &Path, kind: PemKind) -> Result<Vec<u8>, PemFileError> {
    let bytes =
        std::fs::read(path).map_err(|source| PemFileError::Read { setting, path: path.to_path_buf(), source })?;
    let invalid = |reason: String| PemFileError::Invalid { setting, path: path.to_path_buf(), reason };
    match kind {
        PemKind::CaBundle | PemKind::Certificates => {
            let certificates = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(format!("invalid PEM certificate: {e}")))?;
            if certificates.is_empty() {
                return Err(invalid("no PEM certificate (-----BEGIN CERTIFICATE-----) in the file".into()));
            }
            if kind == PemKind::CaBundle {
                let mut roots = rustls::RootCertStore::empty();
                for certificate in certificates {
                    roots.add(certificate).map_err(|e| invalid(format!("not a usable CA certificate: {e}")))?;
                }
            }
        }
        PemKind::PrivateKey => {
            PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
                invalid(format!("no PEM private key (-----BEGIN ... PRIVATE KEY-----) in the file: {e}"))
            })?;
        }
    }
    Ok(bytes)
}

/// True when `error` or any error it wraps is a TLS failure (the peer's certificate not
/// trusted, expired or for another name; a client certificate refused; a protocol
/// mismatch). Repeating the same connection cannot succeed.
pub fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if error.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(inner) = error.downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>() {
            if wraps_rustls(inner.as_ref()) {
                return true;
            }
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()) {
                return true;
            }
        }
        current = error.source();
    }
    false
}

fn wraps_rustls(error: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    if error.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    error
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

/// The error and every cause under it on one line (`a: b: c`), each cause once.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// Why no channel to the coordinator can be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("coordinator address {url:?} is not a url: {reason}")]
    Url { url: String, reason: String },
    #[error("coordinator address {url:?} must start with http:// or https://")]
    Scheme { url: String },
    #[error("`{COORDINATOR_CA_FILE_SETTING}` is set but the coordinator address {url} is plain http://: use https://")]
    CaFileWithPlainUrl { url: String },
    #[error(transparent)]
    Pem(#[from] PemFileError),
    #[error("tls settings for {url}: {reason}")]
    Config { url: String, reason: String },
}

/// Whether `url` asks for TLS.
pub fn is_https(url: &str) -> bool {
    url.trim_start().to_ascii_lowercase().starts_with("https://")
}

/// The endpoint for `url`: plain for `http://`, TLS for `https://` trusting `ca_file` (PEM
/// bundle) or, without one, the platform's roots. Reads and checks the file; connects to
/// nothing.
pub fn coordinator_endpoint(url: &str, ca_file: Option<&Path>) -> Result<Endpoint, ClientTlsError> {
    let lower = url.trim_start().to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(ClientTlsError::Scheme { url: url.to_string() });
    }
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| ClientTlsError::Url { url: url.to_string(), reason: e.to_string() })?;
    if !is_https(url) {
        if ca_file.is_some() {
            return Err(ClientTlsError::CaFileWithPlainUrl { url: url.to_string() });
        }
        return Ok(endpoint);
    }
    let tls = match ca_file {
        Some(path) => {
            let pem = read_pem(COORDINATOR_CA_FILE_SETTING, path, PemKind::CaBundle)?;
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
        }
        None => ClientTlsConfig::new().with_native_roots(),
    };
    endpoint.tls_config(tls).map_err(|e| ClientTlsError::Config { url: url.to_string(), reason: error_chain(&e) })
}

/// How [`probe`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The TLS handshake failed (see [`is_tls_failure`]): not worth repeating.
    #[error("tls handshake with the coordinator at {url} failed: {detail}")]
    Tls { url: String, detail: String },
    /// Anything else (refused, unreachable, timed out): may heal.
    #[error("cannot reach the coordinator at {url}: {detail}")]
    Unreachable { url: String, detail: String },
}

/// Connects once (within `timeout`) and tells a TLS failure from an unreachable server.
pub async fn probe(endpoint: &Endpoint, timeout: Duration) -> Result<(), ProbeError> {
    let url = endpoint.uri().to_string();
    let endpoint = endpoint.clone().connect_timeout(timeout);
    match tokio::time::timeout(timeout + Duration::from_millis(200), endpoint.connect()).await {
        Ok(Ok(_channel)) => Ok(()),
        Ok(Err(error)) if is_tls_failure(&error) => Err(ProbeError::Tls { url, detail: error_chain(&error) }),
        Ok(Err(error)) => Err(ProbeError::Unreachable { url, detail: error_chain(&error) }),
        Err(_) => Err(ProbeError::Unreachable { url, detail: format!("no connection within {timeout:?}") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_tls_urls_and_their_settings() {
        coordinator_endpoint("http://127.0.0.1:50051", None).unwrap();
        coordinator_endpoint("https://127.0.0.1:50051", None).unwrap();
        assert!(matches!(coordinator_endpoint("127.0.0.1:50051", None), Err(ClientTlsError::Scheme { .. })));
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let err = coordinator_endpoint("http://127.0.0.1:1", Some(&not_pem)).unwrap_err().to_string();
        assert!(err.contains(COORDINATOR_CA_FILE_SETTING) && err.contains("https://"), "{err}");
        let err = coordinator_endpoint("https://127.0.0.1:1", Some(&not_pem)).unwrap_err().to_string();
        assert!(err.contains(COORDINATOR_CA_FILE_SETTING) && err.contains(&not_pem.display().to_string()), "{err}");
        let missing = dir.path().join("absent.pem");
        let err = coordinator_endpoint("https://127.0.0.1:1", Some(&missing)).unwrap_err().to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }

    #[test]
    fn a_rustls_error_is_found_under_io_and_boxed_wrappers() {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert!(is_tls_failure(&io));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(!is_tls_failure(&plain));
    }
}
