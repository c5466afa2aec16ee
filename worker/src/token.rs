//! The agent's bearer token: inline (`token`) or read from a file (`token_file`, e.g. a
//! Kubernetes Secret mounted as a volume). A token file is read at startup (a missing,
//! unreadable or empty file is an error naming the path) and read again, at most every
//! `TOKEN_REREAD_EVERY` (10 s, `tsweep_proto::auth`), while the agent runs, so a rotated
//! Secret is picked up without a restart. A failed re-read keeps the last good token
//! (logged once per failure streak).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};
use tsweep_proto::auth::{TokenFile, TokenFileError, AUTHORIZATION, TOKEN_REREAD_EVERY};

/// Where the token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    None,
    Inline(String),
    File(PathBuf),
}

/// Client-side interceptor: adds `authorization: Bearer <token>` to every call; a token
/// file is re-read at most every `TOKEN_REREAD_EVERY`. Clones share the cached token.
#[derive(Clone, Debug)]
pub struct TokenInterceptor {
    inner: Arc<Mutex<Cached>>,
}

#[derive(Debug)]
struct Cached {
    file: Option<TokenFile>,
    header: Option<MetadataValue<Ascii>>,
    read_at: Instant,
    reread_every: Duration,
}

fn header_of(token: &str) -> Option<MetadataValue<Ascii>> {
    let token = token.trim();
    if token.is_empty() {
        return None;
    }
    format!("Bearer {token}").parse::<MetadataValue<Ascii>>().ok()
}

impl TokenInterceptor {
    /// Builds the interceptor; a token file is read now (errors name the path).
    pub fn new(source: &TokenSource) -> Result<Self, TokenFileError> {
        Self::with_reread_every(source, TOKEN_REREAD_EVERY)
    }

    /// As [`Self::new`] with another re-read period (tests).
    pub fn with_reread_every(source: &TokenSource, reread_every: Duration) -> Result<Self, TokenFileError> {
        let (file, header) = match source {
            TokenSource::None => (None, None),
            TokenSource::Inline(token) => (None, header_of(token)),
            TokenSource::File(path) => {
                let file = TokenFile::open(path)?;
                let header = header_of(file.token());
                (Some(file), header)
            }
        };
        let cached = Cached { file, header, read_at: Instant::now(), reread_every };
        Ok(Self { inner: Arc::new(Mutex::new(cached)) })
    }

    /// Whether the token comes from a file (and can change while the agent runs).
    pub fn from_file(&self) -> bool {
        self.lock().file.is_some()
    }

    /// Makes the next call read the token file again (after an UNAUTHENTICATED answer:
    /// the Secret may just have been rotated). No effect for an inline token.
    pub fn expire(&self) {
        let mut cached = self.lock();
        if let Some(earlier) = Instant::now().checked_sub(cached.reread_every) {
            cached.read_at = earlier;
        } else {
            cached.reread_every = Duration::ZERO;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The header value to send now, re-reading the token file when it is due.
    pub fn current(&self) -> Option<MetadataValue<Ascii>> {
        let mut cached = self.lock();
        let Cached { file, header, read_at, reread_every } = &mut *cached;
        if let Some(file) = file {
            if read_at.elapsed() >= *reread_every {
                *read_at = Instant::now();
                if file.reread() {
                    *header = header_of(file.token());
                }
            }
        }
        cached.header.clone()
    }
}

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = self.current() {
            request.metadata_mut().insert(AUTHORIZATION, header);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(interceptor: &TokenInterceptor) -> Option<String> {
        interceptor.current().map(|v| v.to_str().unwrap().to_string())
    }

    // Reading and checking the file is tsweep_proto::auth's (tested there).

    #[test]
    fn a_rotated_token_file_is_picked_up_and_a_broken_one_keeps_the_last_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "first\n").unwrap();
        let interceptor =
            TokenInterceptor::with_reread_every(&TokenSource::File(file.clone()), Duration::ZERO).unwrap();
        assert_eq!(bearer(&interceptor).as_deref(), Some("Bearer first"));
        std::fs::write(&file, "second\n").unwrap();
        assert_eq!(bearer(&interceptor).as_deref(), Some("Bearer second"));
        std::fs::remove_file(&file).unwrap();
        assert_eq!(bearer(&interceptor).as_deref(), Some("Bearer second"), "kept while the file is away");
        std::fs::write(&file, "third").unwrap();
        assert_eq!(bearer(&interceptor).as_deref(), Some("Bearer third"));

        let slow =
            TokenInterceptor::with_reread_every(&TokenSource::File(file.clone()), Duration::from_secs(3600)).unwrap();
        std::fs::write(&file, "fourth").unwrap();
        assert_eq!(bearer(&slow).as_deref(), Some("Bearer third"), "not re-read before the period");
        slow.expire();
        assert_eq!(bearer(&slow).as_deref(), Some("Bearer fourth"), "re-read at once after expire");
        assert!(slow.from_file());
    }

    #[test]
    fn inline_and_no_token() {
        let inline = TokenInterceptor::new(&TokenSource::Inline("abc".into())).unwrap();
        assert_eq!(bearer(&inline).as_deref(), Some("Bearer abc"));
        assert_eq!(bearer(&TokenInterceptor::new(&TokenSource::None).unwrap()), None);
        assert!(TokenInterceptor::new(&TokenSource::File("/nonexistent/tsweep-token".into())).is_err());
    }
}
