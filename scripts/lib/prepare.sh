# Sourced by the example scripts (quickstart.sh, regularizers.sh): decodes a real dataset
# once into prepared shards under "$ex/data/$name/DATASET" (one folder per sweep: each
# prepares its own sizes) with "$bin/tsweep-worker data prepare"
# (an interrupted run resumes; a finished one is reused). Needs $bin, $ex and $name (the sweep's) set.
# shellcheck shell=bash
site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
prepare() { # short-side name source [max-train-per-class max-test-per-class]
  local out="$ex/data/$name/$2"
  local args=(--dataset "$2" --source "$3" --out "$out" --short-side "$1")
  [ $# -ge 5 ] && args+=(--max-train-per-class "$4" --max-test-per-class "$5")
  [ -f "$out/manifest.json" ] || "$bin/tsweep-worker" data prepare "${args[@]}" >/dev/null
}
