//! tsweep worker: the agent (register, acquire, heartbeat, metrics, SIGTERM drain), the
//! per-task child process (`run-task`) and its executors. The child's contract, main loop,
//! logging and the fake executor live in `tsweep-child` (no libtorch) and are re-exported
//! here. See docs/ARCHITECTURE.md.
pub mod agent;
pub mod config;
pub mod data_cli;
pub mod run_task;
pub mod trainer_bridge;

pub use tsweep_child::{child_protocol, fake, logging};
