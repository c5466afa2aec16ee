//! Test certificates for a TLS `redis-server` (feature `test-support`, dev-dependencies only).
//!
//! [`TestPki::generate`] runs the `openssl` CLI in a directory to make a CA, a server
//! certificate for `127.0.0.1`/`localhost` and a client certificate signed by it, plus an
//! unrelated CA (for "wrong CA" tests). Keys are P-256 (fast to make); nothing is kept
//! beyond the directory the caller owns.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::RedisTlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum TestPkiError {
    #[error("openssl {step} in {dir}: {source}")]
    Spawn {
        step: &'static str,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("openssl {step} in {dir} failed with {status}: {stderr}")]
    Failed { step: &'static str, dir: PathBuf, status: String, stderr: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The files [`TestPki::generate`] wrote (PEM).
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing here: trusting it must fail the handshake.
    pub other_ca_cert: PathBuf,
}

impl TestPki {
    /// Writes the CA, server, client and other-CA files into `dir`.
    pub fn generate(dir: &Path) -> Result<TestPki, TestPkiError> {
        let file = |name: &str| dir.join(name);
        let ca_key = file("ca.key");
        let ca_cert = file("ca.pem");
        self_signed_ca(dir, "tsweep test ca", &ca_key, &ca_cert)?;
        let other_ca_cert = file("other-ca.pem");
        self_signed_ca(dir, "tsweep unrelated ca", &file("other-ca.key"), &other_ca_cert)?;

        let server_ext = file("server.ext");
        write(&server_ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")?;
        let (server_cert, server_key) = (file("server.pem"), file("server.key"));
        signed_leaf(dir, "127.0.0.1", &server_ext, (&ca_cert, &ca_key), (&server_cert, &server_key), "1001")?;

        let client_ext = file("client.ext");
        write(
            &client_ext,
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        )?;
        let (client_cert, client_key) = (file("client.pem"), file("client.key"));
        signed_leaf(dir, "tsweep test client", &client_ext, (&ca_cert, &ca_key), (&client_cert, &client_key), "1002")?;

        Ok(TestPki { ca_cert, server_cert, server_key, client_cert, client_key, other_ca_cert })
    }

    /// The client settings trusting this CA, without a client certificate.
    pub fn ca_only(&self) -> RedisTlsFiles {
        RedisTlsFiles { ca_file: Some(self.ca_cert.clone()), ..RedisTlsFiles::default() }
    }

    /// The client settings trusting this CA, with the client certificate (mutual TLS).
    pub fn mutual(&self) -> RedisTlsFiles {
        RedisTlsFiles {
            ca_file: Some(self.ca_cert.clone()),
            client_cert_file: Some(self.client_cert.clone()),
            client_key_file: Some(self.client_key.clone()),
        }
    }
}

fn self_signed_ca(dir: &Path, name: &str, key: &Path, cert: &Path) -> Result<(), TestPkiError> {
    let mut command = Command::new("openssl");
    command
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}")])
        .args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert);
    run(dir, "req (ca)", command)
}

fn signed_leaf(
    dir: &Path,
    name: &str,
    extensions: &Path,
    (ca_cert, ca_key): (&Path, &Path),
    (cert, key): (&Path, &Path),
    serial: &str,
) -> Result<(), TestPkiError> {
    let csr = cert.with_extension("csr");
    let mut request = Command::new("openssl");
    request
        .args(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-subj", &format!("/CN={name}")])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(&csr);
    run(dir, "req (leaf)", request)?;
    let mut sign = Command::new("openssl");
    sign.args(["x509", "-req", "-days", "2", "-set_serial", serial])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(ca_cert)
        .arg("-CAkey")
        .arg(ca_key)
        .arg("-extfile")
        .arg(extensions)
        .arg("-out")
        .arg(cert);
    run(dir, "x509 (sign)", sign)
}

fn run(dir: &Path, step: &'static str, mut command: Command) -> Result<(), TestPkiError> {
    let output = command.current_dir(dir).output().map_err(|source| TestPkiError::Spawn {
        step,
        dir: dir.to_path_buf(),
        source,
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(TestPkiError::Failed {
        step,
        dir: dir.to_path_buf(),
        status: output.status.to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}

fn write(path: &Path, text: &str) -> Result<(), TestPkiError> {
    std::fs::write(path, text).map_err(|source| TestPkiError::Write { path: path.to_path_buf(), source })
}
