//! Test harness for the multi-process suites: real `redis-server`, real `tsweep` and
//! `tsweep-worker` binaries, real gRPC over loopback.
//!
//! Binaries are looked up in the workspace target directory (`cargo build --bins` first;
//! `.ci/run` does). Every process is started by PID and killed when its handle drops.

pub mod chaos;
pub mod cluster;
pub mod process;
pub mod proxy;
