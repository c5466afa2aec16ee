//! tsweep coordinator: the gRPC server, the lease protocol on Redis, sweep files, the CLI.
//! See docs/ARCHITECTURE.md.

pub mod cli;
pub mod config;
pub mod error;
pub mod logging;
pub mod redis_server;
pub mod server;
pub mod store;
pub mod sweepfile;
pub mod telemetry;
