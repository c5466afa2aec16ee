#!/usr/bin/env bash
# The quickstart: from a fresh machine to a finished sweep on this machine's CPU, with its
# results table, report (HTML + plots) and CSV/JSON. Runs everything locally: a private
# redis-server, the coordinator and two workers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TSWEEP_CACHE/target}"
# The same (dev) profile as scripts/test.sh, so that either command reuses the other's build;
# the trainer and data crates and every dependency are optimised in it (Cargo.toml).
cargo build --bins --locked
bin="$CARGO_TARGET_DIR/debug"
"$bin/tsweep-worker" make-dataset --preset quickstart --out examples/data
"$bin/tsweep" local examples/quickstart.toml --workers 2 --out tsweep-out/quickstart "$@"
