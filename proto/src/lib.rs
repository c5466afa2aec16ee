//! The tsweep wire: generated `tsweep.v1` gRPC code, the protocol version, the cell spec
//! a worker runs ([`cell::CellSpec`]), the names of the wire's enums ([`vocab`]), typed
//! failure classes, training progress from the trainer to the metrics stream
//! ([`progress`]), and the bounds on everything clients send ([`limits`]).

pub mod arch;
pub mod auth;
pub mod backoff;
pub mod cell;
pub mod limits;
pub mod logging;
pub mod progress;
pub mod signals;
pub mod testing;
pub mod tls;
pub mod vocab;

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("tsweep.v1");

    /// Encoded descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tsweep_descriptor");
}

/// Bumped whenever a worker and a coordinator of different values cannot work together.
/// Every worker request carries it; a mismatch is refused with FAILED_PRECONDITION.
/// 2: per-worker secrets (`worker_secret` on every acquire, heartbeat and report).
/// 3: task state, sweep status, regime, stage and metric are enums (were strings).
pub const PROTOCOL_VERSION: u32 = 3;

/// The crate version, printed by both binaries with the protocol version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `x.y.z (protocol N)`, for `--version` flags (a literal, so clap can take it).
pub const VERSION_WITH_PROTOCOL: &str = concat!(env!("CARGO_PKG_VERSION"), " (protocol 3)");
const _: () = assert!(PROTOCOL_VERSION == 3, "update VERSION_WITH_PROTOCOL with PROTOCOL_VERSION");

/// `tsweep x.y.z (protocol N)`
pub fn version_line(binary: &str) -> String {
    format!("{binary} {VERSION} (protocol {PROTOCOL_VERSION})")
}

impl v1::SweepSummary {
    /// Whether the sweep has ended: nothing pending, leased or running (`done`), or
    /// cancelled.
    pub fn is_finished(&self) -> bool {
        self.status().is_finished()
    }
}

impl v1::FailureClass {
    /// Whether a failure of this class counts against the task's `max_attempts`.
    pub fn counts_against_budget(self) -> bool {
        matches!(self, Self::Retryable | Self::OutOfMemory | Self::Unspecified)
    }
    /// What a class a task's own process reported means: a lost worker (and an unset
    /// class) is for the agent and the coordinator to decide, never the task's process, so
    /// it counts as a retryable failure.
    pub fn as_reported_by_task(self) -> Self {
        match self {
            Self::LostWorker | Self::Unspecified => Self::Retryable,
            other => other,
        }
    }
    /// Whether the task may run again after a failure of this class.
    pub fn is_retryable(self) -> bool {
        !matches!(self, Self::Fatal)
    }
}

#[cfg(test)]
mod tests {
    use super::v1::FailureClass;

    #[test]
    fn failure_class_names_round_trip_and_out_of_memory_is_a_counted_retry() {
        for class in FailureClass::ALL {
            assert_eq!(FailureClass::from_name(class.name()), Some(class));
        }
        assert_eq!(FailureClass::OutOfMemory.name(), "out_of_memory");
        assert!(FailureClass::OutOfMemory.is_retryable());
        assert!(FailureClass::OutOfMemory.counts_against_budget());
        assert!(!FailureClass::Preempted.counts_against_budget());
    }
}
