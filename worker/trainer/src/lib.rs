//! The libtorch trainer; see docs/ARCHITECTURE.md.
