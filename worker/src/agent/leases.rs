//! The leases this agent holds: one entry per running attempt, owned here, read by the
//! heartbeat loop and updated by the slot that runs the attempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;
use tsweep_proto::v1::{HeldLease, LeaseRef};

use crate::child_protocol::Checkpoint;

/// What the coordinator told the agent to do with a running attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCommand {
    /// The lease expired or belongs to a newer attempt: stop the child (SIGTERM, SIGKILL
    /// after the grace period), report nothing.
    LeaseLost,
    /// The user cancelled the task: stop the child (SIGTERM), report nothing.
    Cancelled,
}

#[derive(Debug)]
struct LeaseEntry {
    checkpoint: Option<Checkpoint>,
    running: bool,
    /// Why the checkpoint this attempt was to resume from could not be read.
    resume_error: Option<String>,
    stop: mpsc::UnboundedSender<StopCommand>,
}

#[derive(Debug, Clone, Default)]
pub struct LeaseTable {
    entries: Arc<Mutex<HashMap<LeaseRef, LeaseEntry>>>,
}

impl LeaseTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<LeaseRef, LeaseEntry>> {
        // A panic while holding the lock leaves the map consistent (single inserts/removes).
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts tracking a lease; stop orders for it arrive on the returned receiver.
    pub fn insert(&self, key: LeaseRef) -> mpsc::UnboundedReceiver<StopCommand> {
        let (stop, receiver) = mpsc::unbounded_channel();
        self.lock().insert(key, LeaseEntry { checkpoint: None, running: false, resume_error: None, stop });
        receiver
    }

    pub fn remove(&self, key: &LeaseRef) {
        self.lock().remove(key);
    }

    pub fn set_running(&self, key: &LeaseRef) {
        if let Some(entry) = self.lock().get_mut(key) {
            entry.running = true;
        }
    }

    pub fn set_checkpoint(&self, key: &LeaseRef, checkpoint: Checkpoint) {
        if let Some(entry) = self.lock().get_mut(key) {
            entry.checkpoint = Some(checkpoint);
        }
    }

    /// The attempt could not resume from its checkpoint: the checkpoint passed on so far
    /// (the one it was to resume from) is dropped, and `reason` goes out with the next
    /// heartbeat or report (cut to `tsweep_proto::limits::MAX_ERROR_MESSAGE_BYTES`).
    pub fn set_resume_error(&self, key: &LeaseRef, reason: String) {
        if let Some(entry) = self.lock().get_mut(key) {
            entry.checkpoint = None;
            entry.resume_error = Some(tsweep_proto::limits::truncate_message(&reason));
        }
    }

    pub fn resume_error(&self, key: &LeaseRef) -> Option<String> {
        self.lock().get(key).and_then(|entry| entry.resume_error.clone())
    }

    pub fn checkpoint(&self, key: &LeaseRef) -> Option<Checkpoint> {
        self.lock().get(key).and_then(|entry| entry.checkpoint.clone())
    }

    /// Passes a stop order to the slot running `key`; false when the lease is not held.
    pub fn stop(&self, key: &LeaseRef, command: StopCommand) -> bool {
        match self.lock().get(key) {
            Some(entry) => entry.stop.send(command).is_ok(),
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every held lease with its latest checkpoint, for a heartbeat.
    pub fn held(&self) -> Vec<HeldLease> {
        self.lock()
            .iter()
            .map(|(key, entry)| HeldLease {
                lease: Some(key.clone()),
                checkpoint: entry.checkpoint.clone(),
                running: entry.running,
                resume_error: entry.resume_error.clone().unwrap_or_default(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(task: &str) -> LeaseRef {
        LeaseRef { sweep: "s".into(), task_id: task.into(), attempt: 1 }
    }

    #[test]
    fn heartbeat_view_carries_checkpoint_and_running() {
        let table = LeaseTable::default();
        let _stop = table.insert(key("a"));
        table.set_running(&key("a"));
        table.set_checkpoint(&key("a"), Checkpoint { path: "/c/a".into(), step: 7 });
        let held = table.held();
        assert_eq!(held.len(), 1);
        assert!(held[0].running);
        assert_eq!(held[0].checkpoint, Some(Checkpoint { path: "/c/a".into(), step: 7 }));
        table.set_resume_error(&key("a"), "gone".into());
        let held = table.held();
        assert_eq!(held[0].resume_error, "gone");
        assert_eq!(held[0].checkpoint, None, "the unreadable resume checkpoint is not passed on");
        table.remove(&key("a"));
        assert!(table.is_empty());
    }

    #[test]
    fn stop_orders_reach_only_held_leases() {
        let table = LeaseTable::default();
        let mut stop = table.insert(key("a"));
        assert!(table.stop(&key("a"), StopCommand::LeaseLost));
        assert_eq!(stop.try_recv().unwrap(), StopCommand::LeaseLost);
        assert!(!table.stop(&key("b"), StopCommand::Cancelled));
    }
}
