//! Datasets, shards and the loader; see docs/ARCHITECTURE.md.
