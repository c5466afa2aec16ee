//! tsweep coordinator: the gRPC server, the lease protocol on Redis, sweep files, the CLI.
//! See docs/ARCHITECTURE.md.

pub mod sweepfile;
pub mod config;
pub mod telemetry;
pub mod store;
pub mod redis_server;
pub mod cli;
pub mod local;
pub mod logging;
pub mod error;
pub mod server;
