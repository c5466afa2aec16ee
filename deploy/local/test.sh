#!/usr/bin/env bash
# The Kubernetes manifests as real pods (run by scripts/test.sh after the cargo tests):
# builds the images from deploy/docker/*.Dockerfile with the binaries of this build
# (deploy/local/build-images.sh, on a Debian base made by debootstrap and cached under
# ~/.cache/tsweep/images/), then deploy/local/e2e.py plays the dev overlay's objects with
# `podman kube play` and runs a fake-executor sweep through them, with bad input, scaling,
# a SIGTERM'd worker pod, a killed coordinator and a restarted Redis on the way.
#
#   bash deploy/local/test.sh [BIN_DIR]      # default: $CARGO_TARGET_DIR/debug
#
# Needs root, podman, runc, catatonit, debootstrap, patchelf and the venv's grpcio (scripts/setup.sh).
# Never skips: a missing tool fails the run.
set -euo pipefail

LOCAL="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TSWEEP_CACHE="${TSWEEP_CACHE:-$HOME/.cache/tsweep}"
VENV="${TSWEEP_VENV:-$TSWEEP_CACHE/venv-torch-2.11.0}"
BIN_DIR="${1:-${CARGO_TARGET_DIR:-$TSWEEP_CACHE/target}/debug}"

for tool in podman runc debootstrap catatonit patchelf; do
  if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/libexec/podman/$tool" ]; then
    echo "local-pods: $tool is missing (scripts/setup.sh installs it)" >&2
    echo "local-pods: 0 passed, 1 failed"
    exit 1
  fi
done
if ! "$VENV/bin/python" -c "import yaml, grpc_health.v1.health_pb2" 2>/dev/null; then
  echo "local-pods: $VENV lacks PyYAML or grpcio-health-checking (run scripts/setup.sh)" >&2
  echo "local-pods: 0 passed, 1 failed"
  exit 1
fi

started=$SECONDS
bash "$LOCAL/build-images.sh" "$BIN_DIR"
echo "figure: base image and the three images ready in $((SECONDS - started)) s"
# e2e.py ends with the `local-pods: N passed, M failed` line.
exec "$VENV/bin/python" "$LOCAL/e2e.py" --cli "$BIN_DIR/tsweep"
