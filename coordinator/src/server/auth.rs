//! Who may call what, and token rotation without a restart.
//!
//! **Roles**: `SweepService` takes the user credential, `WorkerService` the worker
//! credential ([`RoleTokens::from_config`], [`RequireRole`]). A call with the other
//! role's token is refused with `PERMISSION_DENIED` naming both roles; a wrong or missing
//! token with `UNAUTHENTICATED`. When both roles fall back to the one `auth_token`, both
//! services share one [`RequireBearer`] and that token works on both (the behaviour of
//! earlier versions).
//!
//! **Rotation**: for each token file (`user_token_file`, `worker_token_file`,
//! `auth_token_file`) a background task reads the file again every
//! [`TokenReload::reread_every`] (the reader is [`tsweep_proto::auth::TokenFile`], the one
//! the worker agent uses too) and hands a changed token to that role's [`RequireBearer`].
//! The replaced token stays accepted for [`TokenReload::grace`], so agents whose mounted
//! copy of the Secret updates later are not refused mid-rotation. A failed re-read keeps
//! the last good token (logged once). The file is read on a blocking-pool thread: request
//! handling never waits on it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::service::Interceptor;
use tonic::{Request, Status};
use tracing::{info, warn};
use tsweep_proto::auth::{RequireBearer, TokenFile, TOKEN_REREAD_EVERY};

use crate::config::{Role, ServiceConfig};

/// Each role's accepted token, and the token files to follow.
pub struct RoleTokens {
    pub user: RequireBearer,
    pub worker: RequireBearer,
    /// Both roles check the one shared `auth_token` (no separation).
    pub shared: bool,
    /// Each token file with the interceptor its changes go to.
    pub files: Vec<(TokenFile, RequireBearer)>,
}

impl RoleTokens {
    pub fn from_config(config: &ServiceConfig) -> Self {
        let user = config.role_token(Role::User);
        let worker = config.role_token(Role::Worker);
        let follow = |token: &Option<crate::config::RoleToken>, bearer: &RequireBearer| {
            token
                .as_ref()
                .and_then(|t| t.file.as_ref().map(|path| (TokenFile::with_token(path, &t.token), bearer.clone())))
        };
        if user.as_ref().is_some_and(|t| t.shared) && worker.as_ref().is_some_and(|t| t.shared) {
            let bearer = RequireBearer::new(user.as_ref().map(|t| t.token.as_str()));
            let files = follow(&user, &bearer).into_iter().collect();
            return Self { user: bearer.clone(), worker: bearer, shared: true, files };
        }
        let user_bearer = RequireBearer::new(user.as_ref().map(|t| t.token.as_str()));
        let worker_bearer = RequireBearer::new(worker.as_ref().map(|t| t.token.as_str()));
        let files = follow(&user, &user_bearer).into_iter().chain(follow(&worker, &worker_bearer)).collect();
        Self { user: user_bearer, worker: worker_bearer, shared: false, files }
    }

    /// The interceptor of `role`'s service.
    pub fn guard(&self, role: Role) -> RequireRole {
        let (accepted, other) = match role {
            Role::User => (&self.user, &self.worker),
            Role::Worker => (&self.worker, &self.user),
        };
        RequireRole {
            role,
            accepted: accepted.clone(),
            other: (!self.shared && other.enabled()).then(|| other.clone()),
        }
    }
}

/// Server side: `role`'s token is required; the other role's token is `PERMISSION_DENIED`.
#[derive(Clone, Debug)]
pub struct RequireRole {
    role: Role,
    accepted: RequireBearer,
    other: Option<RequireBearer>,
}

impl RequireRole {
    fn other_role(&self) -> Role {
        match self.role {
            Role::User => Role::Worker,
            Role::Worker => Role::User,
        }
    }
}

impl Interceptor for RequireRole {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match self.accepted.check(request.metadata()) {
            Ok(()) => Ok(request),
            Err(refused) => match &self.other {
                Some(other) if other.check(request.metadata()).is_ok() => Err(Status::permission_denied(format!(
                    "the {} credential cannot call {}: it takes the {} credential",
                    self.other_role().name(),
                    self.role.service(),
                    self.role.name()
                ))),
                _ => Err(refused),
            },
        }
    }
}

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
