//! Worker library; see docs/ARCHITECTURE.md.
pub mod child_protocol;
