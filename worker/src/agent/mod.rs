//! The worker agent (async, tokio): registers with the coordinator, runs one loop per slot
//! (acquire → child process → report), heartbeats on its own timer, forwards progress to
//! Redis, and drains on SIGTERM/SIGINT. See docs/ARCHITECTURE.md, "The worker".

pub mod child;
pub mod client;
pub mod heartbeat;
pub mod leases;
pub mod metrics;
pub mod slot;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{parse_device, ConfigError, WorkerConfig};
use child::ChildLauncher;
use client::{is_transient, CoordinatorClient, Registration};
use leases::LeaseTable;
use slot::{Slot, SlotShared};
use tsweep_proto::backoff::Backoff;
use tsweep_proto::tls::ProbeError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Coordinator(String),
    #[error("coordinator refused to register worker {worker_id}: {code:?}: {message}")]
    RegistrationRefused { worker_id: String, code: tonic::Code, message: String },
    /// The TLS handshake with the coordinator failed (untrusted or wrong certificate):
    /// repeating cannot help.
    #[error("{0} (is coordinator_ca_file the CA that signed the coordinator's certificate?)")]
    CoordinatorTls(String),
    /// Another process registered under this worker id while this one ran.
    #[error("worker {worker_id}: another process registered under this id; stopped (give each worker its own id)")]
    IdentityLost { worker_id: String },
    #[error("cannot find this executable to start children: {0}")]
    CurrentExe(std::io::Error),
}

/// Extra time past the grace period before the agent stops waiting for its slots.
const HARD_STOP_MARGIN: Duration = Duration::from_secs(2);

/// Which GPUs slot `slot` of `slots` owns on a machine with `gpus` GPUs: an equal contiguous
/// share when there are at least as many GPUs as slots, else one GPU shared round-robin.
pub fn slot_gpus(slot: u32, slots: u32, gpus: u32) -> Vec<u32> {
    if gpus == 0 || slots == 0 {
        return Vec::new();
    }
    if gpus >= slots {
        let per_slot = gpus / slots;
        (slot * per_slot..(slot + 1) * per_slot).collect()
    } else {
        vec![slot % gpus]
    }
}

/// The fake executor's lighter child binary (no libtorch to load).
pub const FAKE_CHILD_BINARY: &str = "tsweep-fake-task";

/// The program a child runs: this executable, or for the fake executor `tsweep-fake-task`
/// when it sits next to it (same code, starts without loading libtorch).
pub fn child_exe(agent_exe: &std::path::Path, executor: crate::child_protocol::ExecutorKind) -> PathBuf {
    let light = agent_exe.with_file_name(FAKE_CHILD_BINARY);
    if executor == crate::child_protocol::ExecutorKind::Fake && light.is_file() {
        return light;
    }
    agent_exe.to_path_buf()
}

/// Cancels `token` on the first SIGTERM, SIGINT or SIGHUP (a closed terminal drains the
/// agent like a stop does).
pub async fn cancel_on_signal(token: CancellationToken) {
    let name = tokio::select! {
        name = tsweep_proto::signals::shutdown_signal() => name,
        _ = token.cancelled() => return,
    };
    info!(signal = name, "draining: no new tasks, children checkpoint, leases released as preempted");
    token.cancel();
}

/// Runs the agent until `shutdown` is cancelled and every slot has drained.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let worker_id = config.resolved_worker_id();
    let gpus = config.gpu_setting()?.resolve();
    let slots = config.slots.unwrap_or(gpus.max(1));
    let device = parse_device(&config.device)?;
    let exe: PathBuf = std::env::current_exe().map_err(AgentError::CurrentExe)?;
    let registration = Registration { hostname: crate::config::local_hostname(), slots, gpus };
    let client = CoordinatorClient::new(
        &config.coordinator,
        config.coordinator_ca_file.as_deref(),
        &config.token_source()?,
        worker_id.clone(),
        registration,
    )?;

    info!(worker_id = %worker_id, coordinator = %config.coordinator, slots, gpus, executor = ?config.executor,
          version = %tsweep_proto::version_line("tsweep-worker"), "worker starting");

    // Register, retrying while the coordinator is unreachable (or the id is still held by
    // an earlier process of this worker whose registration has not lapsed yet).
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let registered = loop {
        match client.register().await {
            Ok(response) => break response,
            Err(status) if is_transient(&status) || status.code() == tonic::Code::AlreadyExists => {
                if is_transient(&status) {
                    if let Err(ProbeError::Tls { url, detail }) = client.probe().await {
                        return Err(AgentError::CoordinatorTls(format!(
                            "tls handshake with the coordinator at {url} failed: {detail}"
                        )));
                    }
                }
                let wait = backoff.next_delay();
                warn!(code = ?status.code(), error = %status.message(), retry_in_ms = wait.as_millis() as u64,
                      "cannot register yet");
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        info!("stopped before registering");
                        return Ok(());
                    }
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(status) => {
                return Err(AgentError::RegistrationRefused {
                    worker_id,
                    code: status.code(),
                    message: status.message().to_string(),
                })
            }
        }
    };
    let lease_ttl = Duration::from_millis(registered.lease_ttl_ms);
    let heartbeat_interval = match registered.heartbeat_interval_ms {
        0 if lease_ttl.is_zero() => Duration::from_secs(2),
        0 => lease_ttl / 3,
        ms => Duration::from_millis(ms),
    }
    .max(Duration::from_millis(50));
    info!(worker_id = %worker_id, lease_ttl_ms = registered.lease_ttl_ms,
          heartbeat_ms = heartbeat_interval.as_millis() as u64,
          metrics_stream = %metrics::stream_key(&registered.metrics_stream_pattern, "<sweep>"), "registered");

    let leases = LeaseTable::default();
    let (metrics_sink, forwarder) =
        metrics::channel(&config.redis_url, &config.redis_tls(), &registered.metrics_stream_pattern);
    let forwarder = tokio::spawn(forwarder.run(Duration::from_secs(2)));

    let heartbeat_stop = CancellationToken::new();
    let heartbeat =
        tokio::spawn(heartbeat::run(client.clone(), leases.clone(), heartbeat_interval, heartbeat_stop.clone()));
    // Another process took this worker id: drain (children checkpoint), then fail.
    let identity_lost = client.identity_lost();
    let drain_on_lost_identity = {
        let (lost, shutdown) = (identity_lost.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = lost.cancelled() => shutdown.cancel(),
                _ = shutdown.cancelled() => {}
            }
        })
    };

    let shared = Arc::new(SlotShared {
        client,
        leases: leases.clone(),
        metrics: metrics_sink,
        launcher: ChildLauncher {
            exe: child_exe(&exe, config.executor),
            executor: config.executor,
            log_format: config.log_format,
        },
        shutdown: shutdown.clone(),
        checkpoint_root: config.checkpoint_root.clone(),
        cache_dir: config.cache_dir.clone(),
        cpu_threads: config.cpu_threads.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
            (cores / slots).max(1)
        }),
        grace: config.grace_period(),
        report_timeout: config.report_timeout(),
    });
    let mut slot_tasks = JoinSet::new();
    for index in 0..slots {
        let slot = Slot { index, gpus: slot_gpus(index, slots, gpus), device, shared: shared.clone() };
        slot_tasks.spawn(slot.run());
    }
    drop(shared);

    // Slots end only after shutdown; then they get the grace period to drain.
    let grace = config.grace_period();
    let hard_stop = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace + HARD_STOP_MARGIN).await;
    };
    tokio::pin!(hard_stop);
    loop {
        tokio::select! {
            joined = slot_tasks.join_next() => match joined {
                None => break,
                Some(Err(e)) => error!(error = %e, "a slot task panicked"),
                Some(Ok(())) => {}
            },
            _ = &mut hard_stop => {
                warn!(leases = leases.len(), "grace period over: leaving the remaining leases to expire");
                break;
            }
        }
    }
    slot_tasks.abort_all();
    heartbeat_stop.cancel();
    let _ = heartbeat.await;
    // The forwarder ends once every sink is gone (the slots' shared state held the last one).
    drop(slot_tasks);
    if tokio::time::timeout(Duration::from_secs(3), forwarder).await.is_err() {
        warn!("metrics forwarder did not finish in time");
    }
    drain_on_lost_identity.abort();
    info!(worker_id = %worker_id, "worker stopped");
    if identity_lost.is_cancelled() {
        return Err(AgentError::IdentityLost { worker_id });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_share_gpus_evenly() {
        assert_eq!(slot_gpus(0, 2, 0), Vec::<u32>::new());
        assert_eq!(slot_gpus(1, 4, 4), vec![1]);
        assert_eq!(slot_gpus(1, 2, 4), vec![2, 3]);
        assert_eq!(slot_gpus(3, 4, 2), vec![1]);
    }
}
