//! tsweep worker: the agent (register, acquire, heartbeat, metrics, SIGTERM drain), the
//! per-task child process (`run-task`) and its executors. See docs/ARCHITECTURE.md.
pub mod agent;
pub mod child_protocol;
pub mod config;
pub mod data_cli;
pub mod fake;
pub mod logging;
pub mod run_task;
pub mod token;
pub mod trainer_bridge;
