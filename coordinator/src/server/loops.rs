//! The coordinator's background loops, all stopped by one cancellation token:
//! - `connect`: first Redis connection (retried with backoff; the server answers
//!   UNAVAILABLE and readiness NOT_SERVING until it succeeds);
//! - `readiness`: PINGs Redis and checks its memory against `maxmemory`, sets the
//!   `tsweep.ready` health status and `tsweep_redis_up`;
//! - `plane`: this coordinator's liveness beat in Redis, every `beat_interval` (a gap
//!   between beats is a control-plane outage: leases get that time back, see
//!   `store::plane`);
//! - `reaper`: beat, then expired leases back to pending (outages applied first), every
//!   `reaper_interval_ms`, per active sweep;
//! - `repair`: puts sweeps with unfinished work back into the active set, every
//!   `repair_interval_ms` (never a sweep being deleted, nor one whose submission is still
//!   landing with nothing leased);
//! - `finals`: refits of finished selection groups, every `finals_interval_ms`;
//! - `gauges`: per-sweep task gauges and the queue depth, every `gauges_interval_ms`.
//!
//! A loop that meets an unavailable Redis logs and backs off (exponential, capped); it
//! never ends the process. The metrics stream consumer is in `metrics_consumer`.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tracing::{debug, error, info, warn};
use tsweep_proto::backoff::Backoff;

use super::state::{sleep_or_cancel, Shared};
use super::READINESS_SERVICE;
use crate::store::{RedisMemory, Store, StoreError, StoreOptions};

/// Longest wait between tries while Redis is away.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest one loop step may take (at least its interval) before it counts as failed.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness is re-checked.
pub const READINESS_INTERVAL: Duration = Duration::from_secs(1);

/// Connects to Redis, retrying with backoff until it answers or `cancel` fires.
pub async fn connect(shared: Shared, options: StoreOptions) {
    let cancel = shared.cancel.clone();
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    let redis_tls = shared.config.redis_tls();
    loop {
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return,
            result = Store::connect_with_tls(&shared.config.redis_url, &redis_tls, options.clone()) => result,
        };
        match attempt {
            Ok(store) => {
                info!(redis_url = %redact(&shared.config.redis_url), "connected to redis");
                // Beat before serving: an outage that ends with this coordinator's start is
                // recorded before any of its calls renews a lease or its reaper runs.
                match store.beat(&shared.coordinator_id).await {
                    // Redis answers: serve at once (the readiness loop confirms within a second).
                    Ok(_) => shared.set_redis_up(true),
                    Err(error) => warn!(%error, "first liveness beat failed; the beat loop tries again"),
                }
                shared.store.set(store);
                return;
            }
            Err(error) => {
                let delay = backoff.next_delay();
                if error.is_retryable() {
                    warn!(%error, retry_in_ms = delay.as_millis() as u64, "redis not reachable yet");
                } else {
                    // A refused TLS handshake or bad settings: retrying only helps if the
                    // server side changes, so say so loudly (readiness stays NOT_SERVING).
                    error!(%error, retry_in_ms = delay.as_millis() as u64,
                           "redis refused the connection settings (check redis_url, redis_ca_file, redis_client_cert_file)");
                }
                if !sleep_or_cancel(delay, &cancel).await {
                    return;
                }
            }
        }
    }
}

/// `redis://user:secret@host` → `redis://user:***@host` for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Whether Redis is full, from what it reports each second: full once it refused a write
/// for memory (its `OOM` count went up) or its memory is within 1 % of `maxmemory`; full
/// until a delete (or a higher `maxmemory`) brings it under 95 %, so readiness does not
/// flap while a refused batch's arguments come and go.
#[derive(Debug, Default)]
pub struct MemoryLatch {
    full: bool,
    refused_writes: Option<u64>,
}

impl MemoryLatch {
    pub fn update(&mut self, memory: &RedisMemory) -> bool {
        let refused_now = self.refused_writes.is_some_and(|before| memory.refused_writes > before);
        self.refused_writes = Some(memory.refused_writes);
        let max = memory.max_bytes;
        if max == 0 {
            self.full = false;
        } else if refused_now || memory.used_bytes >= max - max / 100 {
            self.full = true;
        } else if memory.used_bytes < max - max / 20 {
            self.full = false;
        }
        self.full
    }
}

/// Readiness follows Redis: SERVING while PING answers and Redis takes writes,
/// NOT_SERVING while it does not answer or is full ([`MemoryLatch`]; calls still go
/// through then: reads work and a delete frees memory; writes answer RESOURCE_EXHAUSTED).
/// Liveness (the empty service name) is never touched: it stays SERVING while the process
/// runs.
pub async fn readiness(shared: Shared, health: HealthReporter) {
    let cancel = shared.cancel.clone();
    let mut last: Option<bool> = None;
    let mut latch = MemoryLatch::default();
    let mut was_full = false;
    loop {
        let (up, memory) = match shared.store.get() {
            Ok(store) => match tokio::time::timeout(READINESS_INTERVAL, store.ping()).await {
                Ok(Ok(())) => match tokio::time::timeout(READINESS_INTERVAL, store.memory()).await {
                    Ok(Ok(memory)) => (true, Some(memory)),
                    Ok(Err(error)) => {
                        debug!(%error, "readiness memory check failed");
                        (true, None)
                    }
                    Err(_) => (true, None),
                },
                Ok(Err(error)) => {
                    debug!(%error, "readiness ping failed");
                    (false, None)
                }
                Err(_) => (false, None),
            },
            Err(_) => (false, None),
        };
        shared.set_redis_up(up);
        let full = match &memory {
            Some(memory) => latch.update(memory),
            None => was_full && up,
        };
        match (&memory, full, was_full) {
            (Some(memory), true, false) => warn!(
                used_bytes = memory.used_bytes,
                max_bytes = memory.max_bytes,
                refused_writes = memory.refused_writes,
                "not ready: redis memory reached maxmemory, writes are refused (delete sweeps or raise maxmemory)"
            ),
            (_, false, true) if up => info!("redis takes writes again"),
            _ => {}
        }
        was_full = full;
        let ready = up && !full;
        if last != Some(ready) {
            let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
            health.set_service_status(READINESS_SERVICE, status).await;
            if ready {
                info!("ready: redis answers");
            } else if last.is_some() && !up {
                warn!("not ready: redis does not answer");
            }
            last = Some(ready);
        }
        if !sleep_or_cancel(READINESS_INTERVAL, &cancel).await {
            health.set_service_status(READINESS_SERVICE, ServingStatus::NotServing).await;
            return;
        }
    }
}

/// Runs `step` every `interval` until cancelled. A failed step is logged and retried
/// after an exponential backoff (from `MIN_BACKOFF` to `MAX_BACKOFF`) instead of the
/// interval; a success resets the backoff.
async fn periodic<F, Fut>(name: &'static str, shared: Shared, interval: Duration, mut step: F)
where
    F: FnMut(Store) -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let cancel: CancellationToken = shared.cancel.clone();
    let Some(store) = shared.store.wait(&cancel).await else {
        return;
    };
    let mut backoff = Backoff::new(MIN_BACKOFF.max(interval / 4), MAX_BACKOFF.max(interval));
    loop {
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            outcome = tokio::time::timeout(STEP_TIMEOUT.max(interval), step(store.clone())) => outcome,
        };
        let outcome = outcome.unwrap_or_else(|_| {
            Err(StoreError::Redis {
                operation: "loop step",
                source: redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{name} step did not finish within {} s", STEP_TIMEOUT.max(interval).as_secs()),
                )),
            })
        });
        let delay = match outcome {
            Ok(()) => {
                backoff.reset();
                interval
            }
            Err(error) => {
                let delay = backoff.next_delay();
                if error.is_retryable() {
                    warn!(loop_name = name, %error, retry_in_ms = delay.as_millis() as u64, "redis unavailable, backing off");
                } else {
                    warn!(loop_name = name, %error, retry_in_ms = delay.as_millis() as u64, "loop step failed");
                }
                delay
            }
        };
        if !sleep_or_cancel(delay, &cancel).await {
            debug!(loop_name = name, "stopped");
            return;
        }
    }
}

/// The control plane's liveness: a beat every `beat_interval`. A gap between two beats of
/// any coordinator longer than `dark_after` is recorded as an outage (store::plane). A
/// beat that gets through also lets calls through again at once after Redis was away
/// (the readiness loop, which sets the health status, PINGs only every second).
pub async fn plane(shared: Shared) {
    let interval = shared.config.beat_interval();
    let who = shared.coordinator_id.clone();
    let lit = shared.clone();
    periodic("plane", shared, interval, move |store| {
        let lit = lit.clone();
        let who = who.clone();
        async move {
            let beat = store.beat(&who).await?;
            lit.set_redis_up(true);
            if beat.outage.is_some() {
                lit.telemetry.add_control_plane_outage();
            }
            Ok(())
        }
    })
    .await
}

pub async fn reaper(shared: Shared) {
    let interval = Duration::from_millis(shared.config.reaper_interval_ms);
    let telemetry = shared.telemetry.clone();
    let who = shared.coordinator_id.clone();
    periodic("reaper", shared, interval, move |store| {
        let telemetry = telemetry.clone();
        let who = who.clone();
        async move {
            // The beat first: an outage that just ended is recorded before anything is
            // reaped, and every reap script applies it before it looks at deadlines.
            if store.beat(&who).await?.outage.is_some() {
                telemetry.add_control_plane_outage();
            }
            let expired = store.reap_all().await?;
            if expired > 0 {
                info!(expired, "expired leases returned to pending");
                telemetry.add_lease_expiries(expired);
            }
            Ok(())
        }
    })
    .await
}

/// Re-derives the set of active sweeps from the task state (store::plane::repair_active).
pub async fn repair(shared: Shared) {
    let interval = Duration::from_millis(shared.config.repair_interval_ms);
    periodic("repair", shared, interval, move |store| async move {
        let repaired = store.repair_active().await?;
        if !repaired.is_empty() {
            warn!(sweeps = ?repaired, "active sweeps repaired");
        }
        Ok(())
    })
    .await
}

pub async fn finals(shared: Shared) {
    let interval = Duration::from_millis(shared.config.finals_interval_ms);
    let notifier = shared.clone();
    periodic("finals", shared, interval, move |store| {
        let notifier = notifier.clone();
        async move {
            for sweep in store.active_sweeps().await? {
                let scheduled = store.schedule_finals(&sweep).await?;
                if !scheduled.is_empty() {
                    info!(sweep = %sweep, finals = scheduled.len(), "refits scheduled");
                    notifier.notify_sweep(&sweep);
                }
            }
            Ok(())
        }
    })
    .await
}

pub async fn gauges(shared: Shared) {
    let interval = Duration::from_millis(shared.config.gauges_interval_ms);
    let telemetry = shared.telemetry.clone();
    let roster = shared.roster.clone();
    let window = shared.config.lease_ttl() * 3;
    periodic("gauges", shared, interval, move |store| {
        let telemetry = telemetry.clone();
        let roster = roster.clone();
        async move {
            let sweeps = store.list_sweeps().await?;
            let counts: Vec<_> = sweeps.iter().map(|s| (s.sweep.as_str(), s.counts.unwrap_or_default())).collect();
            telemetry.set_sweep_counts(counts.iter().map(|(name, counts)| (*name, counts)));
            telemetry.set_workers_registered(roster.live(window));
            Ok(())
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_write_latches_full_until_memory_is_freed() {
        let memory = |used, refused| RedisMemory { used_bytes: used, max_bytes: 1000, refused_writes: refused };
        let mut latch = MemoryLatch::default();
        assert!(!latch.update(&memory(500, 7)), "refusals before the first look are not news");
        assert!(latch.update(&memory(970, 8)), "a write was refused");
        assert!(latch.update(&memory(960, 8)), "still too little room");
        assert!(!latch.update(&memory(940, 8)), "a delete made room");
        assert!(latch.update(&memory(995, 8)), "within 1 % of maxmemory");
        assert!(!latch.update(&RedisMemory { max_bytes: 0, ..memory(995, 8) }), "no limit any more");
    }

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(redact("redis://:pw@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact("rediss://user:pw@host"), "rediss://user:***@host");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
