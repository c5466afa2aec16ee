//! Test harness: starts redis-server and the real binaries on loopback.
