//! Worker registration and identity: the per-worker secret (only its digest is kept), the
//! registration record's lifetime, and the live-worker count.

use super::replies::{RegisterReply, WorkerAuthReply};
use super::*;

impl Store {
    /// Records a worker's registration with the SHA-256 of `secret` (never the secret
    /// itself). The record lives [`StoreOptions::worker_record_ttl`] after the worker's
    /// last authenticated call. A live record holding another secret is left alone
    /// ([`RegisterOutcome::InUse`]) unless the caller presents that secret (`presented`:
    /// the secret of its earlier registration, empty when it has none).
    pub async fn register_worker(
        &self,
        worker: &WorkerInfo,
        secret: &str,
        presented: &str,
    ) -> Result<RegisterOutcome, StoreError> {
        if worker.worker_id.is_empty() {
            return Err(StoreError::InvalidArgument("register_worker: empty worker id".into()));
        }
        if secret.is_empty() {
            return Err(StoreError::InvalidArgument("register_worker: empty secret".into()));
        }
        let mut conn = self.conn.clone();
        let key = self.keys.worker(&worker.worker_id);
        let reply: RegisterReply = SCRIPTS
            .register_worker
            .key(&key)
            .key(self.keys.workers())
            .arg(&worker.worker_id)
            .arg(secret_digest(secret))
            .arg(if presented.is_empty() { String::new() } else { secret_digest(presented) })
            .arg(self.worker_record_ttl_ms())
            .arg(&worker.hostname)
            .arg(worker.slots)
            .arg(worker.gpus)
            .arg(&worker.version)
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::redis("register_worker script"))?;
        match reply {
            RegisterReply::Registered => {
                info!(worker = %worker.worker_id, hostname = %worker.hostname, slots = worker.slots, gpus = worker.gpus, "worker registered");
                Ok(RegisterOutcome::Registered)
            }
            RegisterReply::InUse { pttl_ms } => Ok(RegisterOutcome::InUse { expires_in_ms: pttl_ms.max(0) as u64 }),
        }
    }

    /// Checks the secret a worker presents against its registration and, when it
    /// matches, keeps the record alive for another [`StoreOptions::worker_record_ttl`].
    pub async fn authenticate_worker(&self, worker_id: &str, presented: &str) -> Result<WorkerAuth, StoreError> {
        if worker_id.is_empty() {
            return Err(StoreError::InvalidArgument("authenticate_worker: empty worker id".into()));
        }
        let mut conn = self.conn.clone();
        let key = self.keys.worker(worker_id);
        let reply: WorkerAuthReply = SCRIPTS
            .worker_auth
            .key(&key)
            .arg(if presented.is_empty() { String::new() } else { secret_digest(presented) })
            .arg(self.worker_record_ttl_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::redis("worker_auth script"))?;
        Ok(match reply {
            WorkerAuthReply::Ok => WorkerAuth::Verified,
            WorkerAuthReply::Unregistered => WorkerAuth::Unregistered,
            WorkerAuthReply::Wrong => WorkerAuth::WrongSecret,
        })
    }

    fn worker_record_ttl_ms(&self) -> u64 {
        (self.options.worker_record_ttl().as_millis() as u64).max(1)
    }

    /// Workers that registered or renewed within the last `worker_forget` (see
    /// [`StoreOptions::worker_forget`]).
    pub async fn worker_count(&self) -> Result<u64, StoreError> {
        self.touch_worker("").await
    }

    pub(super) async fn touch_worker(&self, worker_id: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let forget_ms = (self.options.worker_forget.as_millis() as u64).max(1);
        let count: u64 = SCRIPTS
            .touch_worker
            .key(self.keys.workers())
            .arg(worker_id)
            .arg(forget_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::redis("touch_worker script"))?;
        Ok(count)
    }
}

/// A new worker secret: 32 bytes from the thread-local CSPRNG (ChaCha, seeded by the
/// OS), hex. Only its [`secret_digest`] is stored.
pub fn new_worker_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// SHA-256 of a worker secret, hex: what Redis keeps. The secret is random and long, so
/// a plain hash (no salt, no slow KDF) is enough.
fn secret_digest(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}
