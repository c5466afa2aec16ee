//! The heartbeat: its own timer task, independent of work (a three-hour step must not look
//! like a dead worker). Each beat renews every held lease with its latest checkpoint and
//! running flag, and passes the coordinator's stop orders to the slots. A coordinator
//! that forgot this worker is answered by the client, which registers again
//! (`client::CoordinatorClient`).

use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use tsweep_proto::v1::{HeartbeatResponse, StopReason};

use super::client::CoordinatorClient;
use super::leases::{LeaseKey, LeaseTable, StopCommand};

pub async fn run(client: CoordinatorClient, leases: LeaseTable, interval: Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let held = leases.held();
        let count = held.len();
        match client.heartbeat(held).await {
            Ok(response) => {
                if failing {
                    info!(leases = count, "heartbeats reach the coordinator again");
                }
                failing = false;
                apply_stop_orders(&leases, &response);
            }
            Err(status) => {
                if !failing {
                    warn!(code = ?status.code(), error = %status.message(), leases = count,
                          "heartbeat failed; running tasks go on, retrying on the next beat");
                }
                failing = true;
            }
        }
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
        let key = LeaseKey::from_ref(lease);
        if !leases.stop(&key, command) {
            debug!(task_id = %key.task_id, attempt = key.attempt, "stop order for a lease not held here");
        }
    }
}
