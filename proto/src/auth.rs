//! Bearer-token authentication shared by the coordinator (server side) and its clients
//! (the CLI and the worker agent): one header name, one format, one comparison.

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The gRPC metadata key the token travels in.
pub const AUTHORIZATION: &str = "authorization";

/// Client side: adds `authorization: Bearer <token>` to every request when a token is set.
///
/// ```ignore
/// let channel = tonic::transport::Endpoint::from_shared(url)?.connect().await?;
/// let client = WorkerServiceClient::with_interceptor(channel, bearer_interceptor(token)?);
/// ```
#[derive(Clone, Debug)]
pub struct BearerInterceptor {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("auth token is not a valid header value (printable ascii only)")]
    NotAscii,
}

/// Builds the client-side interceptor; `None` (or an empty token) sends no header.
pub fn bearer_interceptor(token: Option<String>) -> Result<BearerInterceptor, TokenError> {
    let header = match token.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(token) => Some(
            format!("Bearer {token}")
                .parse::<MetadataValue<_>>()
                .map_err(|_| TokenError::NotAscii)?,
        ),
    };
    Ok(BearerInterceptor { header })
}

impl Interceptor for BearerInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request.metadata_mut().insert(AUTHORIZATION, header.clone());
        }
        Ok(request)
    }
}

/// Server side: checks `authorization: Bearer <token>` on every call when a token is set.
/// Wrong or missing token: `UNAUTHENTICATED`.
#[derive(Clone)]
pub struct RequireBearer {
    expected: Option<std::sync::Arc<str>>,
}

impl std::fmt::Debug for RequireBearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireBearer")
            .field("enabled", &self.expected.is_some())
            .finish()
    }
}

impl RequireBearer {
    /// `None` or an empty token lets every call through.
    pub fn new(token: Option<&str>) -> Self {
        let expected = token.map(str::trim).filter(|t| !t.is_empty()).map(std::sync::Arc::from);
        Self { expected }
    }

    /// Whether the metadata carries the expected token (always true when none is configured).
    pub fn check(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        let Some(expected) = &self.expected else {
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
        if constant_time_eq(token.trim().as_bytes(), expected.as_bytes()) {
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

    fn request_with(token: Option<&str>) -> Request<()> {
        let mut interceptor = bearer_interceptor(token.map(String::from)).unwrap();
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
}
