//! The heartbeat: its own timer task, independent of work (a three-hour step must not look
//! like a dead worker). Each beat renews every held lease with its latest checkpoint and
//! running flag, and passes the coordinator's stop orders to the slots. A coordinator
//! that forgot this worker is answered by the client, which registers again
//! (`client::CoordinatorClient`).

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use tsweep_proto::v1::{HeartbeatResponse, StopReason};

use super::client::CoordinatorClient;
use super::leases::{LeaseTable, StopCommand};
use tsweep_proto::backoff::Backoff;

/// Waits before a failed heartbeat is tried again: from 200 ms doubling up to 500 ms (or
/// the interval, if shorter), so the leases are renewed within half a second of the
/// control plane's return. A refused connection costs nothing.
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_millis(500);

pub async fn run(client: CoordinatorClient, leases: LeaseTable, interval: Duration, stop: CancellationToken) {
    // While beats fail (coordinator or Redis away) the children keep running and the
    // leases are kept: the coordinator extends them by the outage once it is back (see
    // docs/ARCHITECTURE.md, "Control-plane outages"). Failed beats are retried sooner than
    // the interval (RETRY_*), so the leases are renewed again soon after the control plane
    // returns.
    let mut retry = Backoff::new(RETRY_MIN.min(interval), RETRY_MAX.min(interval));
    let mut failing_since: Option<Instant> = None;
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        let beat_started = Instant::now();
        let held = leases.held();
        let count = held.len();
        let ok = match client.heartbeat(held).await {
            Ok(response) => {
                if let Some(since) = failing_since.take() {
                    info!(
                        leases = count,
                        failing_ms = since.elapsed().as_millis() as u64,
                        "heartbeats reach the coordinator again; leases renewed"
                    );
                }
                apply_stop_orders(&leases, &response);
                true
            }
            Err(status) => {
                if failing_since.is_none() {
                    warn!(code = ?status.code(), error = %status.message(), leases = count,
                          "heartbeat failed; running tasks go on and keep their leases, retrying");
                    failing_since = Some(beat_started);
                }
                false
            }
        };
        wait = if ok {
            retry.reset();
            interval.saturating_sub(beat_started.elapsed())
        } else {
            retry.next_delay()
        };
    }
    debug!("heartbeat stopped");
}

fn apply_stop_orders(leases: &LeaseTable, response: &HeartbeatResponse) {
    for order in &response.stop {
        let Some(lease) = &order.lease else { continue };
        let command = match StopReason::try_from(order.reason) {
            Ok(StopReason::Cancelled) => StopCommand::Cancelled,
            // Unknown reasons are treated as the safe one: this worker must not go on.
            Ok(StopReason::LeaseLost) | Ok(StopReason::Unspecified) | Err(_) => StopCommand::LeaseLost,
        };
        if !leases.stop(lease, command) {
            debug!(task_id = %lease.task_id, attempt = lease.attempt, "stop order for a lease not held here");
        }
    }
}
