#!/usr/bin/env bash
# The quickstart: from a fresh machine to a finished sweep on this machine's CPU, with its
# results table, report (HTML + plots) and CSV/JSON. Runs everything locally: a private
# redis-server, the coordinator and two workers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TSWEEP_CACHE/target}"
cargo build --release --bins --locked
bin="$CARGO_TARGET_DIR/release"
"$bin/tsweep-worker" make-dataset --preset quickstart --out examples/data
"$bin/tsweep" local examples/quickstart.toml --workers 2 --out tsweep-out/quickstart "$@"
