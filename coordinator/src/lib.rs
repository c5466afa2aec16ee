//! tsweep coordinator: the gRPC server, the lease protocol on Redis, sweep files, the CLI.
//! See docs/ARCHITECTURE.md.

pub mod sweepfile;
