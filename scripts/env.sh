# Source me: puts the PyTorch venv (libtorch for tch) first on PATH for builds and runs.
TSWEEP_CACHE="${TSWEEP_CACHE:-$HOME/.cache/tsweep}"
TSWEEP_VENV="${TSWEEP_VENV:-$TSWEEP_CACHE/venv-torch-2.11.0}"
export PATH="$TSWEEP_VENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
for _torch_lib in "$TSWEEP_VENV"/lib/python3*/site-packages/torch/lib; do
  export LD_LIBRARY_PATH="$_torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
unset _torch_lib
