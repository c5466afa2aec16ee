//! The per-task child process of the worker, without libtorch: the agent ↔ child contract
//! ([`child_protocol`]), the child's main loop ([`run_task::run_child_with`]: stdin →
//! executor → stdout, SIGTERM handling), logging, and the fake executor ([`fake`], the
//! test executor of cluster tests and benchmarks). `tsweep-worker` re-exports these and
//! adds the libtorch trainer; the `tsweep-fake-task` binary runs fake children without
//! loading libtorch (about a second of CPU per child saved). See docs/ARCHITECTURE.md,
//! "The child process".
pub mod child_protocol;
pub mod fake;
pub use tsweep_proto::logging;
pub mod run_task;
