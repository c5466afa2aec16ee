# Sourced by the example scripts (quickstart.sh, regularizers.sh) from the repository root:
# - installs what is missing (scripts/setup.sh) and builds the binaries in the same (dev)
#   profile as scripts/test.sh, so that either command reuses the other's build (the
#   trainer and data crates and every dependency are optimised in it: Cargo.toml);
# - `use_sweep FILE` sets $sweep, its folder $ex and its name $name;
# - `prepare SHORT_SIDE DATASET SOURCE [TRAIN_PER_CLASS TEST_PER_CLASS]` decodes a real
#   dataset once into prepared shards under "$ex/data/$name/DATASET" (one folder per
#   sweep: each prepares its own sizes) with `tsweep-worker data prepare` (an interrupted
#   run resumes; a finished one is reused);
# - `run_local [ARGS...]` runs the sweep with `tsweep local` and two workers, its output
#   and Redis data under tsweep-out/$name.
# shellcheck shell=bash
bash scripts/setup.sh
source scripts/env.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TSWEEP_CACHE/target}"
cargo build --bins --locked
bin="$CARGO_TARGET_DIR/debug"
site=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

use_sweep() { # sweep-file
  sweep="$1"
  ex="$(dirname "$sweep")"
  name=$(sed -n 's/^name = "\(.*\)"/\1/p' "$sweep" | head -n 1)
}

prepare() { # short-side name source [max-train-per-class max-test-per-class]
  local out="$ex/data/$name/$2"
  local args=(--dataset "$2" --source "$3" --out "$out" --short-side "$1")
  [ $# -ge 5 ] && args+=(--max-train-per-class "$4" --max-test-per-class "$5")
  [ -f "$out/manifest.json" ] || "$bin/tsweep-worker" data prepare "${args[@]}" >/dev/null
}

run_local() { # extra arguments of `tsweep local`
  "$bin/tsweep" local "$sweep" --workers 2 --out "tsweep-out/$name" "$@"
}
