#!/usr/bin/env bash
# The trainer's GPU benchmark: resnet50 fine-tune steps (forward, backward, SGD Nesterov),
# tsweep's trainer-bench against PyTorch on the same card and the same libtorch (this
# machine's own PyTorch 2.11, which the binary runs against through LD_LIBRARY_PATH), in
# every precision and both memory layouts:
#
#   fp32 contiguous, fp32 channels-last, bf16 contiguous, bf16 channels-last,
#   fp16 contiguous, fp16 channels-last
#
# PyTorch's side is worker/trainer/bench/amp_step.py: torch.autocast("cuda", dtype) for
# bf16/fp16, torch.amp.GradScaler for fp16, the model and input in the same layout. Each row
# runs PAIRS alternating pairs (tsweep, then PyTorch, fresh processes). Then one tsweep run end
# to end from JPEGs through tsweep-data's loader in the trainer's default layout, fp32 and bf16.
# Prints every run's JSON line, then one summary line per row (medians, the median of the
# per-pair ratios) and the layout verdict per precision (which layout is faster for tsweep,
# i.e. what the CUDA default should be), with the card's name.
#
#   scripts/gpu-bench.sh                   # uses target/debug/trainer-bench (or $TRAINER_BENCH)
#   BATCH=256 STEPS=50 PAIRS=3 scripts/gpu-bench.sh
#
# Defaults (BATCH=128 STEPS=30 WARMUP=5 PAIRS=2) take about 4-6 minutes on an H100/H200,
# most of it process and CUDA start-up; every run is capped at RUN_TIMEOUT seconds (120).
# Build the binary (on x86-64 with the venv): source scripts/env.sh && cargo build -p tsweep-trainer --bin trainer-bench
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${TRAINER_BENCH:-target/debug/trainer-bench}"
PY="${PYTHON:-python3}"
MODEL="${MODEL:-resnet50}"; BATCH="${BATCH:-128}"; SIZE="${SIZE:-224}"; STEPS="${STEPS:-30}"; WARMUP="${WARMUP:-5}"; PAIRS="${PAIRS:-2}"
RUN_TIMEOUT="${RUN_TIMEOUT:-120}"
ROWS="${ROWS:-fp32:contiguous fp32:channels-last bf16:contiguous bf16:channels-last fp16:contiguous fp16:channels-last}"
DATA="${DATA:-/tmp/tsweep-gpu-bench-data}"
TORCH_LIB="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
GPU="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo unknown)"
CORES="$(nproc)"
LOG="$(mktemp)"
echo "gpu: $GPU  torch: $("$PY" -c 'import torch; print(torch.__version__)')  model: $MODEL batch: $BATCH size: $SIZE steps: $STEPS pairs: $PAIRS"
run() { # label, command...
  local label="$1"; shift
  local out
  if out="$(timeout "$RUN_TIMEOUT" "$@" 2>/tmp/tsweep-gpu-bench.err)"; then
    echo "$out" | tail -1 | tee -a "$LOG"
  else
    echo "{\"failed\": \"$label\", \"stderr\": $(tail -3 /tmp/tsweep-gpu-bench.err | "$PY" -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}" | tee -a "$LOG"
  fi
}
for row in $ROWS; do
  prec="${row%%:*}"; layout="${row##*:}"
  for i in $(seq "$PAIRS"); do
    run "tsweep $row" "$BIN" train --model "$MODEL" --batch "$BATCH" --size "$SIZE" --steps "$STEPS" --warmup "$WARMUP" --synthetic \
      --device cuda:0 --threads "$CORES" --precision "$prec" --layout "$layout"
    run "pytorch $row" "$PY" worker/trainer/bench/amp_step.py --device cuda --model "$MODEL" --batch "$BATCH" --size "$SIZE" \
      --steps "$STEPS" --warmup "$WARMUP" --precision "$prec" --layout "$layout" --threads "$CORES"
  done
done
# end to end from JPEGs on disk through tsweep-data's loader, the trainer's default layout
for prec in fp32 bf16; do
  run "tsweep loader $prec" "$BIN" train --model "$MODEL" --batch "$BATCH" --size "$SIZE" --steps "$STEPS" --warmup "$WARMUP" \
    --data "$DATA" --device cuda:0 --threads "$CORES" --loader-threads "$CORES" --precision "$prec"
done
"$PY" - "$GPU" "$LOG" <<'PYEOF'
import json, statistics, sys
gpu, rows = sys.argv[1], [json.loads(l) for l in open(sys.argv[2]) if l.startswith("{")]
ok = [r for r in rows if "img_s" in r]
for r in rows:
    if "failed" in r:
        print(json.dumps({"gpu": gpu, "failed": r["failed"], "stderr": r["stderr"][-300:]}))
tsweep_by = {}
for prec in ("fp32", "bf16", "fp16"):
    for layout in ("contiguous", "channels-last"):
        pick = lambda impl: [r["img_s"] for r in ok if r["impl"] == impl and r["precision"] == prec
                             and r["layout"] == layout and r["mode"] in ("train", "train-synthetic")]
        ours, theirs = pick("tsweep"), pick("pytorch")
        if not ours or not theirs:
            continue
        tsweep_by[(prec, layout)] = statistics.median(ours)
        print(json.dumps({"gpu": gpu, "precision": prec, "layout": layout, "tsweep_img_s": ours, "pytorch_img_s": theirs,
                          "tsweep_img_s_median": statistics.median(ours), "pytorch_img_s_median": statistics.median(theirs),
                          "ratio_median_of_pairs": round(statistics.median(o / t for o, t in zip(ours, theirs)), 3)}))
for prec in ("fp32", "bf16", "fp16"):
    c, l = tsweep_by.get((prec, "contiguous")), tsweep_by.get((prec, "channels-last"))
    if c and l:
        print(json.dumps({"gpu": gpu, "precision": prec, "layout_verdict": "channels-last" if l > c else "contiguous",
                          "channels_last_over_contiguous": round(l / c, 3)}))
fp32 = tsweep_by.get(("fp32", "contiguous"))
for prec, layout in (("bf16", "channels-last"), ("fp16", "channels-last")):
    if fp32 and (prec, layout) in tsweep_by:
        print(json.dumps({"gpu": gpu, "tsweep_speedup_over_fp32_contiguous": {f"{prec} {layout}": round(tsweep_by[(prec, layout)] / fp32, 3)}}))
for r in ok:
    if r.get("mode") == "train-loader":
        print(json.dumps({"gpu": gpu, "tsweep_loader_end_to_end": r["precision"], "img_s": r["img_s"], "img_s_median_step": r["img_s_median_step"]}))
PYEOF
rm -f "$LOG"
