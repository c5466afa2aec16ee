#!/usr/bin/env bash
# CPU training throughput, tsweep vs PyTorch eager (shared/bench/train_step.py, the default
# NCHW layout) and PyTorch eager in channels-last (amp_step.py --no-nesterov: train_step.py's loop in the layout
# tsweep's CPU backbones use), alternating; one JSON line per run. Run from the repo root after `source scripts/env.sh` and
# `cargo build -p tsweep-trainer --bin trainer-bench`.
#   PAIRS=3 THREADS=2 worker/trainer/bench/cpu-train-bench.sh resnet18 resnet50
set -euo pipefail
BIN="${TRAINER_BENCH:-target/debug/trainer-bench}"
PAIRS="${PAIRS:-3}"; THREADS="${THREADS:-2}"; BATCH="${BATCH:-16}"; SIZE="${SIZE:-224}"; STEPS="${STEPS:-10}"; WARMUP="${WARMUP:-3}"
DATA="${DATA:-/tmp/tsweep-cpu-bench-data}"
for model in "$@"; do
  for i in $(seq "$PAIRS"); do
    "$BIN" train --model "$model" --batch "$BATCH" --size "$SIZE" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" --data "$DATA" --loader-threads 1
    "$BIN" train --model "$model" --batch "$BATCH" --size "$SIZE" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" --synthetic
    python3 ../shared/bench/train_step.py --model "$model" --mode train --batch "$BATCH" --size "$SIZE" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS"
    python3 "$(dirname "$0")/amp_step.py" --no-nesterov --layout channels-last --model "$model" --batch "$BATCH" --size "$SIZE" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS"
  done
done
