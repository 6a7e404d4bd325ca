#!/usr/bin/env bash
# One command on a machine with an NVIDIA GPU: the GPU side of issue 6, end to end.
#
#   bash bench/gpu_check.sh            (from the repository root, after `make install`)
#
# 1. prints the GPU's name (nvidia-smi); without one it stops there, installing nothing;
# 2. installs CuPy into .venv if it is missing ($CUPY_PACKAGE, default cupy-cuda12x; on a
#    machine without network set FEDNB_WHEELS to a folder of wheels fetched beforehand
#    with `pip download --only-binary :all: cupy-cuda12x -d wheels/`);
# 3. runs the kernels' GPU tests (tests/unit/test_kernels.py: the CuPy kernels against the
#    NumPy references, on the device) and their figures (bench/kernels.py with the cupy
#    and the numba-cuda backend);
# 4. runs a sandboxed job that uses CuPy through a real domain with GPU jobs on
#    (bench/gpu_job.py) and prints its result and the backend its owner sees;
# 5. checks whether device memory one process filled and freed reaches the next one
#    uncleared (bench/gpu_leftovers.py: A writes a pattern and exits, B scans cupy.empty)
#    and prints "leftovers seen" or "no leftovers seen".
# Without a GPU it stops at step 1 with "no GPU" and status 2.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
CUPY_PACKAGE=${CUPY_PACKAGE:-cupy-cuda12x}

if [[ ! -x $PY ]]; then
  echo "no .venv: run make install first" >&2
  exit 1
fi

echo "== GPU"
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "no GPU: nvidia-smi is not on PATH"
  exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

if ! "$PY" -c "import cupy" 2>/dev/null; then
  echo "== installing $CUPY_PACKAGE into .venv"
  if [[ -n ${FEDNB_WHEELS:-} ]]; then
    "$PY" -m pip install --quiet --no-index --find-links "$FEDNB_WHEELS" "$CUPY_PACKAGE"
  else
    "$PY" -m pip install --quiet "$CUPY_PACKAGE"
  fi
fi

echo "== the CuPy kernels on the GPU against the NumPy references"
"$PY" -m pytest -q -rs tests/unit/test_kernels.py -k "cupy"

status=0
for backend in cupy numba-cuda; do
  echo "== bench/kernels.py --backend $backend"
  "$PY" bench/kernels.py --backend "$backend" || status=$?
done

echo "== a sandboxed CuPy job through a domain with GPU jobs on"
"$PY" bench/gpu_job.py || status=$?

echo "== device memory left from one process to the next"
"$PY" bench/gpu_leftovers.py || status=$?
exit "$status"
