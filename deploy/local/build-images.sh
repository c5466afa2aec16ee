#!/usr/bin/env bash
# Builds the images deploy/local plays, with podman, from deploy/docker/*.Dockerfile in
# their `prebuilt` variant (the binaries built on this host, no compiler in the image) on
# the local Debian base (deploy/local/base-image.sh):
#
#   tsweep/coordinator:dev       coordinator.Dockerfile  BINARIES=prebuilt  RUNTIME_BASE=local/debian:bookworm
#   tsweep/worker:dev            worker.Dockerfile       BINARIES=prebuilt  RUNTIME_BASE=local/debian:bookworm
#                                CPU variant: the host binary without its libtorch_cuda link
#                                (patchelf), and only the libraries it then loads (ldd):
#                                libtorch_cpu, c10, gomp, cudart, cupti (~460 MB, not ~3.5 GB)
#   tsweep-local/redis:bookworm  deploy/local/redis.Dockerfile (Debian's redis-server)
#
#   bash deploy/local/build-images.sh [BIN_DIR]     # default: $CARGO_TARGET_DIR/debug
#   TSWEEP_WORKER_LIBS=cuda bash deploy/local/build-images.sh   # keep CUDA: the whole closure
#
# Then checks that each image runs (`--version`) as a non-root user, and prints the build
# time and size of each (the figures in BENCHMARKS.md). Needs the binaries built first
# (`cargo build --bins --locked`), the torch venv (scripts/setup.sh) and root.
set -euo pipefail

LOCAL="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$LOCAL/../.." && pwd)"
TSWEEP_CACHE="${TSWEEP_CACHE:-$HOME/.cache/tsweep}"
VENV="${TSWEEP_VENV:-$TSWEEP_CACHE/venv-torch-2.11.0}"
BIN_DIR="${1:-${CARGO_TARGET_DIR:-$TSWEEP_CACHE/target}/debug}"
BASE="${TSWEEP_BASE_IMAGE:-local/debian:bookworm}"
TAG="${TSWEEP_IMAGE_TAG:-dev}"
# shellcheck source=deploy/local/podman-env.sh
source "$LOCAL/podman-env.sh"

for bin in tsweep tsweep-worker; do
  if [ ! -x "$BIN_DIR/$bin" ]; then
    echo "images: $BIN_DIR/$bin is missing: build it first (cargo build --bins --locked)" >&2
    exit 2
  fi
done
site="$(ls -d "$VENV"/lib/python3*/site-packages 2>/dev/null | head -n 1)"
if [ -z "$site" ] || [ ! -d "$site/torch/lib" ]; then
  echo "images: no torch in $VENV (run scripts/setup.sh)" >&2
  exit 2
fi

bash "$LOCAL/base-image.sh"

# The build contexts, beside the venv and the target dir (same file system: hard links).
mkdir -p "$TSWEEP_CACHE"
CTX="$(mktemp -d "$TSWEEP_CACHE/local-images.XXXXXX")"
trap 'rm -rf "$CTX"' EXIT
mkdir -p "$CTX/coordinator" "$CTX/worker/libtorch"
# Hard links where the file system allows (the venv and the target dir are large).
stage() { cp -L --link "$1" "$2" 2>/dev/null || cp -L "$1" "$2"; }
stage "$BIN_DIR/tsweep" "$CTX/coordinator/tsweep"
worker="$CTX/worker/tsweep-worker"
cp "$BIN_DIR/tsweep-worker" "$worker"
# The build keeps libtorch_cuda linked with --no-as-needed (worker/trainer/build.rs) and an
# rpath to the build's venv. The CPU image drops that one NEEDED entry, which is what a
# plain --as-needed link gives (the trainer dlopens libtorch_cuda when it is there, see
# worker/trainer/src/device.rs), and points the rpath at the image's libtorch.
if [ "${TSWEEP_WORKER_LIBS:-cpu}" = cpu ]; then
  command -v patchelf >/dev/null || { echo "images: patchelf is missing (run scripts/setup.sh)" >&2; exit 2; }
  patchelf --remove-needed libtorch_cuda.so --set-rpath /opt/libtorch/torch/lib "$worker"
else
  patchelf --set-rpath /opt/libtorch/torch/lib "$worker" 2>/dev/null || true
fi
# The libtorch closure of the worker: every library ldd resolves inside the venv, under
# the same path relative to site-packages (torch/lib/..., nvidia/cu13/lib/...), so that
# libtorch's RUNPATH ($ORIGIN/../../nvidia/...) finds its neighbours in /opt/libtorch.
missing="$(LD_LIBRARY_PATH="$site/torch/lib" ldd -r "$worker" 2>&1 | grep -E 'not found|undefined symbol' || true)"
if [ -n "$missing" ]; then
  echo "images: tsweep-worker does not load against $site/torch/lib:" >&2
  echo "$missing" >&2
  exit 1
fi
libs=0
while read -r soname path; do
  real_dir="$(realpath "$(dirname "$path")")"
  case "$real_dir" in "$site"/*) ;; *) continue ;; esac
  rel="${real_dir#"$site"/}"
  mkdir -p "$CTX/worker/libtorch/$rel"
  stage "$path" "$CTX/worker/libtorch/$rel/$soname"
  libs=$((libs + 1))
done < <(LD_LIBRARY_PATH="$site/torch/lib" ldd "$worker" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}')
echo "images: worker context: tsweep-worker + $libs libraries ($(du -sh --apparent-size "$CTX/worker/libtorch" | cut -f1))"

figures=()
build() { # image dockerfile context build-args...
  local image="$1" file="$2" ctx="$3" started=$SECONDS previous
  shift 3
  previous="$(podman image inspect "$image" --format '{{.Id}}' 2>/dev/null || true)"
  echo "images: building $image"
  if ! podman build --runtime runc --layers -q -f "$file" "$@" -t "$image" "$ctx" >"$CTX/build.log" 2>&1; then
    tail -n 20 "$CTX/build.log" >&2
    echo "images: building $image failed (log above)" >&2
    exit 1
  fi
  # The image this one replaces, now untagged (layers it shares with the new one stay).
  if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect "$image" --format '{{.Id}}')" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
  fi
  local size
  size="$(podman image inspect "$image" --format '{{.Size}}')"
  figures+=("$image build_s=$((SECONDS - started)) size_mb=$((size / 1000000))")
}
build "tsweep/coordinator:$TAG" "$REPO/deploy/docker/coordinator.Dockerfile" "$CTX/coordinator" \
  --build-arg BINARIES=prebuilt --build-arg "RUNTIME_BASE=$BASE"
build "tsweep/worker:$TAG" "$REPO/deploy/docker/worker.Dockerfile" "$CTX/worker" \
  --build-arg BINARIES=prebuilt --build-arg "RUNTIME_BASE=$BASE"
build "tsweep-local/redis:bookworm" "$LOCAL/redis.Dockerfile" "$LOCAL" --build-arg "BASE=$BASE"

# Each image runs, as its non-root user.
check() { # image expected-output-pattern command...
  local image="$1" want="$2" out
  shift 2
  if ! out="$(podman run --rm "$image" "$@" 2>&1)" || ! grep -qE "$want" <<<"$out"; then
    echo "images: $image $*: $out" >&2
    exit 1
  fi
  local user
  user="$(podman image inspect "$image" --format '{{.Config.User}}')"
  case "$user" in "" | 0 | 0:* | root | root:*) echo "images: $image runs as root ($user)" >&2; exit 1 ;; esac
  echo "images: $image runs as $user: $out"
}
check "tsweep/coordinator:$TAG" '^tsweep [0-9]' --version
check "tsweep/worker:$TAG" '^tsweep-worker [0-9]' --version
check "tsweep-local/redis:bookworm" '^Redis server v=' redis-server --version

for figure in "${figures[@]}"; do echo "figure: image $figure"; done
