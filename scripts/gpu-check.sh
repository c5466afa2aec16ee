#!/usr/bin/env bash
# End-to-end trainer check on a CUDA machine: the worker built here runs one finetune cell
# and one linear cell (`tsweep-worker run-task --executor trainer`) on cuda:0 against that
# machine's own PyTorch 2.11 libraries, on generated data, then a finetune cell too large
# for the card, which must end as a failure of class out_of_memory (exit code 6). Prints the
# events and results.
#
#   WORKER=target/debug/tsweep-worker scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WORKER="${WORKER:-target/debug/tsweep-worker}"
PY="${PYTHON:-python3}"
TORCH_LIB="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
WORK="${WORK:-/tmp/tsweep-gpu-check}"
rm -rf "$WORK"; mkdir -p "$WORK"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$WORKER" --version
"$WORKER" make-dataset --preset synthetic --out "$WORK/data" >/dev/null
# case: name regime steps batch image_size (resnet50 at 1024² and batch 128 needs ~200 GB)
cases=("finetune finetune ${STEPS:-300} 64 64" "linear linear ${STEPS:-300} 64 64" "oom finetune 3 128 1024")
for case in "${cases[@]}"; do
  read -r name regime steps batch size <<< "$case"
  "$PY" - "$WORK" "$regime" "$steps" "${ARCH:-resnet50}" "$batch" "$size" "$name" > "$WORK/input-$name.json" <<'PYEOF'
import json, sys
work, regime, steps, arch = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
batch, size, name = int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
spec = {
  "sweep": "gpu-check", "stage": "grid", "regime": regime,
  "model": {"name": arch, "source": "builtin", "arch": arch, "weights": None,
            "imagenet_top1": None, "image_size": size},
  "dataset": {"name": "shapes", "format": "imagefolder", "path": f"{work}/data/shapes", "metric": "top1",
              "val": {"kind": "held_out", "fraction": 0.2, "seed": 0}, "num_classes": 4},
  "hparams": {"lr": 0.05, "weight_decay": 1e-4} if regime == "finetune" else {},
  "train": {"steps": steps, "batch_size": batch, "momentum": 0.9, "nesterov": True, "schedule": "cosine",
            "bn_momentum": None, "eval_every": 100, "checkpoint_every": 100, "eval_resize": None,
            "loader_threads": 4, "l2_path": [1e-4, 1e-3, 1e-2, 1e-1, 1.0], "lbfgs_max_iter": 100},
  "seed": 0, "gpus": 1, "max_attempts": 2, "fake": None,
}
print(json.dumps({"task_id": f"gpu-{name}", "attempt": 1, "spec": spec, "resume": None,
                  "checkpoint_dir": f"{work}/ckpt-{name}", "cache_dir": f"{work}/cache",
                  "device": "auto", "executor": "trainer"}))
PYEOF
  echo "== $name ($regime, batch $batch, ${size}px) on device auto"
  start=$(date +%s%N)
  "$WORKER" run-task --executor trainer < "$WORK/input-$name.json" > "$WORK/events-$name.jsonl" 2> "$WORK/stderr-$name.log" || echo "exit $?"
  end=$(date +%s%N)
  grep -E '"event":"(started|result|failed)"' "$WORK/events-$name.jsonl" | cut -c1-600 || true
  grep -E '"event":"progress"' "$WORK/events-$name.jsonl" | tail -2 || true
  grep -iE 'cuda|device' "$WORK/stderr-$name.log" | head -3 || true
  echo "wall $(( (end - start) / 1000000 )) ms"
done
