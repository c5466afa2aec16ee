//! Bearer-token authentication shared by the coordinator (server side) and its clients
//! (the CLI and the worker agent): one header name, one format, one comparison, and one
//! reader of token files ([`TokenFile`], e.g. a mounted Kubernetes Secret) that both the
//! agent and the coordinator re-read so that a rotated Secret needs no restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};
use tracing::{info, warn};

/// The gRPC metadata key the token travels in.
pub const AUTHORIZATION: &str = "authorization";

/// Where a client's token comes from: none, inline (a flag, the environment), or a file
/// (e.g. a mounted Kubernetes Secret) read at startup and again while the client runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    None,
    Inline(String),
    File(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("auth token is not a valid header value (printable ascii only)")]
    NotAscii,
    #[error(transparent)]
    File(#[from] TokenFileError),
}

/// Client side, the one interceptor of the CLI and the worker agent: adds
/// `authorization: Bearer <token>` to every call when there is a token. A token file is
/// re-read at most every [`TOKEN_REREAD_EVERY`], so a rotated Secret is picked up without
/// a restart; a failed re-read keeps the last good token. Clones share the cached token.
///
/// ```ignore
/// let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
/// let client = WorkerServiceClient::with_interceptor(channel, TokenInterceptor::inline(token)?);
/// ```
#[derive(Clone, Debug)]
pub struct TokenInterceptor {
    inner: Arc<Mutex<CachedToken>>,
}

#[derive(Debug)]
struct CachedToken {
    file: Option<TokenFile>,
    header: Option<MetadataValue<Ascii>>,
    read_at: Instant,
    reread_every: Duration,
}

/// `Bearer <token>`; None for an empty token; an error for one that is not a header value.
fn header_of(token: &str) -> Result<Option<MetadataValue<Ascii>>, TokenError> {
    match token.trim() {
        "" => Ok(None),
        token => format!("Bearer {token}").parse::<MetadataValue<Ascii>>().map(Some).map_err(|_| TokenError::NotAscii),
    }
}

impl TokenInterceptor {
    /// Builds the interceptor; a token file is read now (errors name the path).
    pub fn new(source: &TokenSource) -> Result<Self, TokenError> {
        Self::with_reread_every(source, TOKEN_REREAD_EVERY)
    }

    /// An inline token, or none (`None` or empty: no header).
    pub fn inline(token: Option<String>) -> Result<Self, TokenError> {
        Self::new(&token.map_or(TokenSource::None, TokenSource::Inline))
    }

    /// As [`Self::new`] with another re-read period (tests).
    pub fn with_reread_every(source: &TokenSource, reread_every: Duration) -> Result<Self, TokenError> {
        let (file, header) = match source {
            TokenSource::None => (None, None),
            TokenSource::Inline(token) => (None, header_of(token)?),
            TokenSource::File(path) => {
                let file = TokenFile::open(path)?;
                let header = header_of(file.token())?;
                (Some(file), header)
            }
        };
        let cached = CachedToken { file, header, read_at: Instant::now(), reread_every };
        Ok(Self { inner: Arc::new(Mutex::new(cached)) })
    }

    /// Whether the token comes from a file (and can change while the client runs).
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

    fn lock(&self) -> std::sync::MutexGuard<'_, CachedToken> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The header value to send now, re-reading the token file when it is due.
    pub fn current(&self) -> Option<MetadataValue<Ascii>> {
        let mut cached = self.lock();
        let CachedToken { file, header, read_at, reread_every } = &mut *cached;
        if let Some(file) = file {
            if read_at.elapsed() >= *reread_every {
                *read_at = Instant::now();
                if file.reread() {
                    // (the file's token was checked when it was read: printable ascii)
                    if let Ok(new) = header_of(file.token()) {
                        *header = new;
                    }
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

/// Server side: checks `authorization: Bearer <token>` on every call when a token is set.
/// Wrong or missing token: `UNAUTHENTICATED`. Clones share the accepted tokens, so a
/// [`rotate`](Self::rotate) reaches every service the interceptor was handed to.
#[derive(Clone)]
pub struct RequireBearer {
    accepted: Option<Arc<RwLock<Accepted>>>,
}

/// The token checked now and, during a rotation's grace window, the one it replaced.
struct Accepted {
    current: Arc<str>,
    previous: Option<(Arc<str>, Instant)>,
}

impl std::fmt::Debug for RequireBearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireBearer").field("enabled", &self.accepted.is_some()).finish()
    }
}

impl RequireBearer {
    /// `None` or an empty token lets every call through.
    pub fn new(token: Option<&str>) -> Self {
        let accepted = token
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|current| Arc::new(RwLock::new(Accepted { current: Arc::from(current), previous: None })));
        Self { accepted }
    }

    /// Whether a token is required at all.
    pub fn enabled(&self) -> bool {
        self.accepted.is_some()
    }

    /// Accepts `token` from now on and the token it replaces for `grace` more (clients
    /// whose copy of a rotated Secret updates later are not refused mid-rotation). The
    /// same token again, an empty token or an interceptor built without a token change
    /// nothing; returns whether the token changed.
    pub fn rotate(&self, token: &str, grace: Duration) -> bool {
        let token = token.trim();
        let Some(accepted) = &self.accepted else {
            return false;
        };
        if token.is_empty() {
            return false;
        }
        let mut accepted = accepted.write().unwrap_or_else(PoisonError::into_inner);
        if &*accepted.current == token {
            return false;
        }
        let replaced = std::mem::replace(&mut accepted.current, Arc::from(token));
        accepted.previous = Instant::now().checked_add(grace).map(|until| (replaced, until));
        true
    }

    /// Whether the metadata carries an accepted token (always true when none is configured).
    pub fn check(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let Some(accepted) = &self.accepted else {
            return Ok(());
        };
        let presented = metadata
            .get(AUTHORIZATION)
            .ok_or_else(|| Status::unauthenticated("missing authorization header (expected a bearer token)"))?
            .to_str()
            .map_err(|_| Status::unauthenticated("authorization header is not ascii"))?;
        let token = presented
            .strip_prefix("Bearer ")
            .or_else(|| presented.strip_prefix("bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization header is not `Bearer <token>`"))?;
        let token = token.trim().as_bytes();
        let accepted = accepted.read().unwrap_or_else(PoisonError::into_inner);
        // Both comparisons always run (no early exit that would tell which one matched).
        let current = constant_time_eq(token, accepted.current.as_bytes());
        let previous = match &accepted.previous {
            Some((previous, until)) => constant_time_eq(token, previous.as_bytes()) & (Instant::now() < *until),
            None => false,
        };
        if current | previous {
            Ok(())
        } else {
            Err(Status::unauthenticated("invalid bearer token"))
        }
    }
}

impl Interceptor for RequireBearer {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request.metadata())?;
        Ok(request)
    }
}

/// The trailer (response metadata) that says why a worker's call was refused, read with
/// [`WorkerRefusal::of`]: a typed answer, so that no client matches on message text.
pub const WORKER_REFUSAL: &str = "tsweep-worker-refusal";

/// Why the coordinator refused a worker's acquire, heartbeat or report although its
/// bearer token (the worker credential) was accepted. Sent as `UNAUTHENTICATED` with the
/// [`WORKER_REFUSAL`] trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerRefusal {
    /// No live registration for this worker id: never registered, or its record lapsed
    /// (no call for three lease TTLs) or was lost with Redis' data. The worker registers
    /// again and repeats the call; its leases are untouched.
    Unregistered,
    /// The id is registered with another secret: another process registered under it
    /// (or the caller forges it). Repeating cannot help.
    WrongSecret,
}

impl WorkerRefusal {
    pub fn name(self) -> &'static str {
        match self {
            Self::Unregistered => "unregistered",
            Self::WrongSecret => "wrong-secret",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "unregistered" => Some(Self::Unregistered),
            "wrong-secret" => Some(Self::WrongSecret),
            _ => None,
        }
    }

    /// The status the coordinator answers: `UNAUTHENTICATED` with the trailer.
    pub fn status(self, message: impl Into<String>) -> Status {
        let mut status = Status::unauthenticated(message);
        status.metadata_mut().insert(WORKER_REFUSAL, MetadataValue::from_static(self.name()));
        status
    }

    /// The refusal a status carries; None for any other answer (a refused bearer token
    /// included).
    pub fn of(status: &Status) -> Option<Self> {
        if status.code() != tonic::Code::Unauthenticated {
            return None;
        }
        status.metadata().get(WORKER_REFUSAL).and_then(|value| value.to_str().ok()).and_then(Self::from_name)
    }
}

/// How often token files are read again by default (the agent and the coordinator).
/// Kubernetes updates a mounted Secret within about a minute of the change.
pub const TOKEN_REREAD_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read token file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {path} is empty")]
    Empty { path: PathBuf },
    #[error("token file {path}: the token must be printable ascii without spaces")]
    NotAscii { path: PathBuf },
}

/// Reads a token file: surrounding whitespace (the trailing newline) is trimmed; an empty
/// result or a token that cannot travel in a header is an error naming the path.
pub fn read_token_file(path: &Path) -> Result<String, TokenFileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| TokenFileError::Unreadable { path: path.to_path_buf(), source })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenFileError::Empty { path: path.to_path_buf() });
    }
    if token.chars().any(|c| !c.is_ascii_graphic()) {
        return Err(TokenFileError::NotAscii { path: path.to_path_buf() });
    }
    Ok(token.to_string())
}

/// A token kept from a file that may change while the process runs (a rotated Secret).
/// [`reread`](Self::reread) reads the file again: a new token replaces the kept one; a
/// failed read (file away, empty, not ascii) keeps the last good token and is logged once
/// per streak of failures. Callers decide when to re-read (the agent lazily, at most every
/// period and after UNAUTHENTICATED; the coordinator on a background task).
pub struct TokenFile {
    path: PathBuf,
    token: String,
    failing: bool,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile").field("path", &self.path).field("failing", &self.failing).finish_non_exhaustive()
    }
}

impl TokenFile {
    /// Reads the file now (a missing, unreadable or empty file is an error naming the path).
    pub fn open(path: &Path) -> Result<Self, TokenFileError> {
        let token = read_token_file(path)?;
        Ok(Self { path: path.to_path_buf(), token, failing: false })
    }

    /// A file whose token was already read (e.g. at config load); the next
    /// [`reread`](Self::reread) reads it again.
    pub fn with_token(path: &Path, token: &str) -> Self {
        Self { path: path.to_path_buf(), token: token.trim().to_string(), failing: false }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last good token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Reads the file again; returns whether the token changed.
    pub fn reread(&mut self) -> bool {
        match read_token_file(&self.path) {
            Ok(token) => {
                if self.failing {
                    info!(path = %self.path.display(), "token file readable again");
                }
                self.failing = false;
                if token == self.token {
                    return false;
                }
                info!(path = %self.path.display(), "token file changed: using the new token");
                self.token = token;
                true
            }
            Err(error) => {
                if !self.failing {
                    warn!(%error, "token file re-read failed: keeping the last token");
                }
                self.failing = true;
                false
            }
        }
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(interceptor: &TokenInterceptor) -> Option<String> {
        interceptor.current().map(|v| v.to_str().unwrap().to_string())
    }

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
        assert_eq!(bearer(&TokenInterceptor::inline(Some(String::new())).unwrap()), None);
        assert!(matches!(TokenInterceptor::inline(Some("a\nb".into())), Err(TokenError::NotAscii)));
        assert!(TokenInterceptor::new(&TokenSource::File("/nonexistent/tsweep-token".into())).is_err());
    }

    fn request_with(token: Option<&str>) -> Request<()> {
        let mut interceptor = TokenInterceptor::inline(token.map(String::from)).unwrap();
        interceptor.call(Request::new(())).unwrap()
    }

    #[test]
    fn right_token_passes_and_wrong_or_missing_is_unauthenticated() {
        let mut server = RequireBearer::new(Some("s3cret"));
        assert!(server.call(request_with(Some("s3cret"))).is_ok());
        let wrong = server.call(request_with(Some("nope"))).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let missing = server.call(request_with(None)).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn no_configured_token_lets_everything_through() {
        let mut server = RequireBearer::new(None);
        assert!(server.call(request_with(None)).is_ok());
        assert!(server.call(request_with(Some("anything"))).is_ok());
    }

    fn request_with_bearer(token: &str) -> Request<()> {
        request_with(Some(token))
    }

    #[test]
    fn a_rotated_token_is_accepted_and_the_previous_one_only_during_the_grace_window() {
        let mut server = RequireBearer::new(Some("old"));
        assert!(server.rotate("new", Duration::from_secs(3600)));
        assert!(!server.rotate("new", Duration::from_secs(3600)), "the same token is no rotation");
        assert!(server.call(request_with_bearer("new")).is_ok());
        assert!(server.call(request_with_bearer("old")).is_ok(), "old token inside the grace window");
        assert_eq!(server.call(request_with_bearer("other")).unwrap_err().code(), tonic::Code::Unauthenticated);

        // A clone (another service) sees the rotation; with no grace the old token is refused.
        let mut clone = server.clone();
        assert!(server.rotate("newer", Duration::ZERO));
        assert!(clone.call(request_with_bearer("newer")).is_ok());
        assert_eq!(clone.call(request_with_bearer("new")).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(clone.call(request_with_bearer("old")).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(clone.call(request_with(None)).unwrap_err().code(), tonic::Code::Unauthenticated);

        let open = RequireBearer::new(None);
        assert!(!open.rotate("x", Duration::ZERO), "rotation does not turn auth on");
        assert!(!open.enabled());
    }

    #[test]
    fn a_worker_refusal_travels_as_a_typed_trailer_and_nothing_else_is_one() {
        for refusal in [WorkerRefusal::Unregistered, WorkerRefusal::WrongSecret] {
            let status = refusal.status("no");
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert_eq!(WorkerRefusal::of(&status), Some(refusal));
        }
        assert_eq!(WorkerRefusal::of(&Status::unauthenticated("invalid bearer token")), None);
        let mut other_code = Status::permission_denied("x");
        other_code.metadata_mut().insert(WORKER_REFUSAL, MetadataValue::from_static("unregistered"));
        assert_eq!(WorkerRefusal::of(&other_code), None);
    }

    #[test]
    fn a_token_file_is_trimmed_and_bad_files_name_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(read_token_file(&file).unwrap(), "s3cret");
        let missing = dir.path().join("absent");
        let err = TokenFile::open(&missing).unwrap_err().to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n  \n").unwrap();
        assert!(matches!(read_token_file(&empty), Err(TokenFileError::Empty { .. })));
        let spaced = dir.path().join("spaced");
        std::fs::write(&spaced, "two words\n").unwrap();
        assert!(matches!(read_token_file(&spaced), Err(TokenFileError::NotAscii { .. })));
    }

    #[test]
    fn a_token_file_reread_picks_up_changes_and_keeps_the_last_token_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let mut file = TokenFile::open(&path).unwrap();
        assert_eq!(file.token(), "first");
        assert!(!file.reread(), "unchanged");
        std::fs::write(&path, "second\n").unwrap();
        assert!(file.reread());
        assert_eq!(file.token(), "second");
        std::fs::remove_file(&path).unwrap();
        assert!(!file.reread());
        assert_eq!(file.token(), "second", "kept while the file is away");
        std::fs::write(&path, "").unwrap();
        assert!(!file.reread());
        assert_eq!(file.token(), "second", "kept while the file is empty");
        std::fs::write(&path, "third").unwrap();
        assert!(file.reread());
        assert_eq!(file.token(), "third");
        assert!(!format!("{file:?}").contains("third"), "debug output hides the token");
    }
}
