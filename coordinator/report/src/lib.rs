//! Analysis and reports; see docs/ARCHITECTURE.md.
pub mod selection;
