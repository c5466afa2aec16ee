#!/usr/bin/env bash
# The trainer's GPU benchmark: resnet50 fine-tune steps (forward, backward, SGD Nesterov),
# tsweep's trainer-bench against PyTorch eager on the same card and the same libtorch (this
# machine's own PyTorch 2.11, which the binary runs against through LD_LIBRARY_PATH).
# Alternating pairs; prints each run's JSON line, then the medians and the ratio with the GPU name.
#
#   scripts/gpu-bench.sh                   # uses target/debug/trainer-bench (or $TRAINER_BENCH)
#   BATCH=128 STEPS=50 PAIRS=5 scripts/gpu-bench.sh
#
# Build the binary (on x86-64 with the venv): source scripts/env.sh && cargo build -p tsweep-trainer --bin trainer-bench
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${TRAINER_BENCH:-target/debug/trainer-bench}"
PY="${PYTHON:-python3}"
MODEL="${MODEL:-resnet50}"; BATCH="${BATCH:-64}"; SIZE="${SIZE:-224}"; STEPS="${STEPS:-30}"; WARMUP="${WARMUP:-5}"; PAIRS="${PAIRS:-3}"
DATA="${DATA:-/tmp/tsweep-gpu-bench-data}"
TORCH_LIB="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
GPU="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo unknown)"
CORES="$(nproc)"
echo "gpu: $GPU  torch: $("$PY" -c 'import torch; print(torch.__version__)')  model: $MODEL batch: $BATCH size: $SIZE steps: $STEPS"
ours=(); theirs=()
for i in $(seq "$PAIRS"); do
  o="$("$BIN" train --model "$MODEL" --batch "$BATCH" --size "$SIZE" --steps "$STEPS" --warmup "$WARMUP" --synthetic --device cuda:0 --threads "$CORES")"
  echo "$o"; ours+=("$(echo "$o" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["img_s"])')")
  t="$("$PY" worker/trainer/bench/train_step_cuda.py --model "$MODEL" --batch "$BATCH" --size "$SIZE" --steps "$STEPS" --warmup "$WARMUP")"
  echo "$t"; theirs+=("$(echo "$t" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["img_s"])')")
done
# end to end from JPEGs on disk through tsweep-data's loader (one run)
e2e="$("$BIN" train --model "$MODEL" --batch "$BATCH" --size "$SIZE" --steps "$STEPS" --warmup "$WARMUP" --data "$DATA" --device cuda:0 --threads "$CORES" --loader-threads "$CORES")"
echo "$e2e"
"$PY" - "$GPU" "${ours[*]}" "${theirs[*]}" "$e2e" <<'PYEOF'
import json, statistics, sys
gpu, ours, theirs, e2e = sys.argv[1], [float(v) for v in sys.argv[2].split()], [float(v) for v in sys.argv[3].split()], json.loads(sys.argv[4])
ratios = [o / t for o, t in zip(ours, theirs)]
print(json.dumps({"gpu": gpu, "tsweep_img_s_median": statistics.median(ours), "pytorch_img_s_median": statistics.median(theirs),
                  "ratio_median_of_pairs": round(statistics.median(ratios), 3), "tsweep_loader_end_to_end_img_s": e2e["img_s"]}))
PYEOF
