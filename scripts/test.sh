#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing (scripts/setup.sh),
# checks formatting and lints, builds every binary, runs every crate's tests (real redis-server, real libtorch, real
# gRPC over loopback), validates the Kubernetes manifests, then runs them as real pods
# with podman (deploy/local/test.sh: images built from this build's binaries, a
# fake-executor sweep through the dev overlay's objects).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
# One target dir shared by every clone on this machine: later runs reuse the build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TSWEEP_CACHE/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build"
cargo build --workspace --bins --tests --locked
echo "== kubernetes manifests"
bash deploy/validate.sh
echo "== tests"
# libtorch tests each use a couple of threads; run two test binaries' tests at a time.
cargo test --workspace --locked -- --test-threads 2
echo "== kubernetes manifests as real pods"
bash deploy/local/test.sh "$CARGO_TARGET_DIR/debug"
