//! Token rotation without a restart: with `auth_token_file` set, a background task reads
//! the file again every [`TokenReload::reread_every`] (the reader is
//! [`tsweep_proto::auth::TokenFile`], the one the worker agent uses too) and hands a
//! changed token to the services' [`RequireBearer`]. The replaced token stays accepted for
//! [`TokenReload::grace`], so agents whose mounted copy of the Secret updates later are
//! not refused mid-rotation. A failed re-read keeps the last good token (logged once).
//! The file is read on a blocking-pool thread: request handling never waits on it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tsweep_proto::auth::{RequireBearer, TokenFile, TOKEN_REREAD_EVERY};

/// How long the replaced token stays accepted after the file changes by default.
pub const DEFAULT_TOKEN_GRACE: Duration = Duration::from_secs(120);

/// How the coordinator follows its token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenReload {
    /// How often the file is read again.
    pub reread_every: Duration,
    /// How long the previous token is still accepted after a change.
    pub grace: Duration,
}

impl Default for TokenReload {
    fn default() -> Self {
        Self { reread_every: TOKEN_REREAD_EVERY, grace: DEFAULT_TOKEN_GRACE }
    }
}

/// Re-reads `file` every `reload.reread_every` until `cancel`, rotating `auth` on a change.
pub async fn follow_token_file(file: TokenFile, auth: RequireBearer, reload: TokenReload, cancel: CancellationToken) {
    let path = file.path().to_path_buf();
    let file = Arc::new(Mutex::new(file));
    let period = reload.reread_every.max(Duration::from_millis(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let reader = file.clone();
        let reread = tokio::task::spawn_blocking(move || {
            let mut file = reader.lock().unwrap_or_else(PoisonError::into_inner);
            file.reread().then(|| file.token().to_string())
        })
        .await;
        match reread {
            Ok(Some(token)) => {
                if auth.rotate(&token, reload.grace) {
                    info!(path = %path.display(), grace_s = reload.grace.as_secs(), "auth token rotated: the previous token is accepted during the grace window");
                }
            }
            Ok(None) => {}
            Err(error) => {
                warn!(path = %path.display(), %error, "token file re-read task failed: keeping the current token");
            }
        }
    }
}
