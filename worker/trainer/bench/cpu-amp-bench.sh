#!/usr/bin/env bash
# Mixed precision on the CPU: tsweep's trainer-bench against PyTorch (amp_step.py: torchvision,
# torch.autocast("cpu", torch.bfloat16)), same model, batch, size, threads and layout
# (channels-last, tsweep's CPU layout), for training steps and for feature extraction, in
# fp32 and bf16. Each pair runs the four in turn (tsweep fp32, PyTorch fp32, tsweep bf16,
# PyTorch bf16), each in a fresh process; one JSON line per run, then per (model, mode) the
# medians and the median of the per-pair ratios. Run from the repo root after
# `source scripts/env.sh` and `cargo build -p tsweep-trainer --bin trainer-bench`.
#   PAIRS=3 BATCH=8 SIZE=160 worker/trainer/bench/cpu-amp-bench.sh resnet50 mobilenet_v2
set -euo pipefail
BIN="${TRAINER_BENCH:-target/debug/trainer-bench}"
PY="${PYTHON:-python3}"
PAIRS="${PAIRS:-3}"; THREADS="${THREADS:-2}"; BATCH="${BATCH:-16}"; SIZE="${SIZE:-224}"; STEPS="${STEPS:-5}"; WARMUP="${WARMUP:-2}"
MODES="${MODES:-train features}"
REF="$(dirname "$0")/amp_step.py"
LOG="$(mktemp)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), native bf16: $(grep -qw avx512_bf16 /proc/cpuinfo && echo yes || echo no), load: $(cut -d' ' -f1-3 /proc/loadavg)"
for model in "$@"; do
  for mode in $MODES; do
    feat=(); [ "$mode" = features ] && feat=(--features)
    for i in $(seq "$PAIRS"); do
      for prec in fp32 bf16; do
        "$BIN" train --model "$model" --batch "$BATCH" --size "$SIZE" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" \
          --synthetic --precision "$prec" "${feat[@]}" | tee -a "$LOG"
        "$PY" "$REF" --model "$model" --mode "$mode" --precision "$prec" --batch "$BATCH" --size "$SIZE" --steps "$STEPS" \
          --warmup "$WARMUP" --threads "$THREADS" | tee -a "$LOG"
      done
    done
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" - "$LOG" "$PAIRS" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
pairs = int(sys.argv[2])
def mode(r):
    return "features" if r["mode"].startswith("features") else "train"
keys = sorted({(r["model"], mode(r)) for r in rows}, key=lambda k: (k[0], k[1] != "train"))
for model, m in keys:
    runs = lambda impl, prec: [r["img_s"] for r in rows if r["model"] == model and mode(r) == m and r["impl"] == impl and r["precision"] == prec]
    ts32, pt32, ts16, pt16 = runs("tsweep", "fp32"), runs("pytorch", "fp32"), runs("tsweep", "bf16"), runs("pytorch", "bf16")
    ratio = lambda a, b: round(statistics.median(x / y for x, y in zip(a, b)), 3)
    print(json.dumps({"model": model, "mode": m, "pairs": pairs,
        "img_s_median": {"tsweep_fp32": statistics.median(ts32), "pytorch_fp32": statistics.median(pt32),
                         "tsweep_bf16": statistics.median(ts16), "pytorch_bf16": statistics.median(pt16)},
        "tsweep_bf16_vs_pytorch_bf16": ratio(ts16, pt16), "tsweep_bf16_vs_tsweep_fp32": ratio(ts16, ts32),
        "pytorch_bf16_vs_pytorch_fp32": ratio(pt16, pt32), "tsweep_fp32_vs_pytorch_fp32": ratio(ts32, pt32)}))
PYEOF
rm -f "$LOG"
