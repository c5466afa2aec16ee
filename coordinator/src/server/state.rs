//! What the gRPC services and the background loops share: the store (once connected),
//! the config, telemetry, and a per-sweep "something ended" signal for watchers.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::config::ServiceConfig;
use crate::error::CoordinatorError;
use crate::store::{Store, StoreError};
use crate::telemetry::Telemetry;

/// The store once the first Redis connection succeeded. Until then every call answers
/// UNAVAILABLE (the server listens and answers health checks from the start, so a
/// coordinator started before Redis does not crash-loop).
#[derive(Clone)]
pub struct StoreSlot {
    sender: Arc<watch::Sender<Option<Store>>>,
}

impl Default for StoreSlot {
    fn default() -> Self {
        Self { sender: Arc::new(watch::channel(None).0) }
    }
}

impl StoreSlot {
    pub fn set(&self, store: Store) {
        self.sender.send_replace(Some(store));
    }

    /// The connected store, or UNAVAILABLE while the first connection is still pending.
    pub fn get(&self) -> Result<Store, CoordinatorError> {
        self.sender.borrow().clone().ok_or_else(|| CoordinatorError::Unavailable("not connected to redis yet".into()))
    }

    /// Waits until connected; `None` when `cancel` fires first.
    pub async fn wait(&self, cancel: &CancellationToken) -> Option<Store> {
        let mut receiver = self.sender.subscribe();
        tokio::select! {
            _ = cancel.cancelled() => None,
            result = receiver.wait_for(Option::is_some) => result.ok().and_then(|store| store.clone()),
        }
    }
}

/// Shared by both services and the loops; cheap to clone.
#[derive(Clone)]
pub struct Shared {
    pub store: StoreSlot,
    pub config: Arc<ServiceConfig>,
    pub telemetry: Telemetry,
    /// Sweep names whose tasks ended or changed state in bulk (complete, fail, cancel,
    /// retry); WatchSweep answers at once instead of at its next tick.
    pub sweep_events: broadcast::Sender<String>,
    /// Cancelled on shutdown: loops stop, watch streams end.
    pub cancel: CancellationToken,
    /// Workers seen (register or heartbeat) by this coordinator, for the workers gauge.
    pub roster: WorkerRoster,
    /// Set by the readiness loop: false while Redis does not answer PING, so calls fail
    /// fast with UNAVAILABLE instead of waiting on a dead connection.
    pub redis_up: Arc<AtomicBool>,
    /// This process's name in the control plane's liveness beat (`coordinator-<pid>-<hex>`).
    pub coordinator_id: Arc<str>,
}

/// Longest a gRPC call waits on Redis before answering UNAVAILABLE (the command may or
/// may not have run: every store operation is safe to repeat).
pub const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one store operation with [`STORE_CALL_TIMEOUT`], mapping errors in the one place.
pub async fn bounded<T>(operation: impl Future<Output = Result<T, StoreError>>) -> Result<T, CoordinatorError> {
    bounded_for(STORE_CALL_TIMEOUT, operation).await
}

/// [`bounded`] with another limit (a bulk call's budget plus [`STORE_CALL_TIMEOUT`]).
pub async fn bounded_for<T>(
    limit: Duration,
    operation: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, CoordinatorError> {
    match tokio::time::timeout(limit, operation).await {
        Ok(result) => result.map_err(CoordinatorError::from),
        Err(_) => Err(CoordinatorError::Unavailable(format!("redis did not answer within {} ms", limit.as_millis()))),
    }
}

/// When each worker was last seen. A worker counts as registered while it was seen within
/// the window (three lease TTLs); the map is rebuilt from heartbeats after a restart.
#[derive(Clone, Default)]
pub struct WorkerRoster {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
}

impl WorkerRoster {
    pub fn seen(&self, worker_id: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            match seen.get_mut(worker_id) {
                Some(at) => *at = Instant::now(),
                None => {
                    seen.insert(worker_id.to_string(), Instant::now());
                }
            }
        }
    }

    /// Forgets workers not seen within `window` and returns how many remain.
    pub fn live(&self, window: Duration) -> u64 {
        match self.seen.lock() {
            Ok(mut seen) => {
                seen.retain(|_, at| at.elapsed() <= window);
                seen.len() as u64
            }
            Err(_) => 0,
        }
    }
}

impl Shared {
    pub fn new(config: ServiceConfig, telemetry: Telemetry, cancel: CancellationToken) -> Self {
        Self {
            store: StoreSlot::default(),
            config: Arc::new(config),
            telemetry,
            sweep_events: broadcast::channel(1024).0,
            cancel,
            roster: WorkerRoster::default(),
            redis_up: Arc::new(AtomicBool::new(false)),
            coordinator_id: format!("coordinator-{}-{:06x}", std::process::id(), rand::random::<u32>() & 0xff_ffff)
                .into(),
        }
    }

    /// The store for a gRPC call: UNAVAILABLE at once while Redis is known to be away.
    pub fn store_for_call(&self) -> Result<Store, CoordinatorError> {
        let store = self.store.get()?;
        if !self.redis_up.load(Ordering::Relaxed) {
            return Err(CoordinatorError::Unavailable("redis does not answer".into()));
        }
        Ok(store)
    }

    pub fn set_redis_up(&self, up: bool) {
        self.redis_up.store(up, Ordering::Relaxed);
        self.telemetry.set_redis_up(up);
    }

    pub fn notify_sweep(&self, sweep: &str) {
        // No receiver (nobody watching) is fine.
        let _ = self.sweep_events.send(sweep.to_string());
    }
}

/// Sleeps `delay` unless cancelled first; returns false when cancelled.
pub async fn sleep_or_cancel(delay: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}
