#!/usr/bin/env bash
# One command for a fresh GPU machine that already has CuPy and PyTorch (no network needed):
#
#     bash benchmarks/gpu_check.sh
#
# 1. prints nvidia-smi and the nanodl / CuPy / PyTorch versions,
# 2. runs the GPU test suite (tests/test_cuda.py: every op, every kernel, models, optimizers),
# 3. runs the GPU benchmark (nanodl on 'cuda' vs PyTorch on CUDA, TF32 off on both),
# 4. trains the digits MLP with `nanodl train --device cuda` (and on the CPU, for reference).
#
# Everything goes to stdout and to $OUT/gpu_report.txt ($OUT defaults to ./gpu_check_out).
# Each step has its own time limit; the whole script stays under ~6 minutes. A step that
# fails or times out does not stop the others; the summary at the end lists every status.
# Without pytest on the machine it uses build/gpu_deps when present (see below).
# Knobs: BUILD_NATIVE=1 also builds the Cython CPU kernels first (adds ~1 min; the NumPy
# twin is a fine CPU reference without them); PYTEST_ARGS replaces the pytest options.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
REPORT="$OUT/gpu_report.txt"
: > "$REPORT"
exec > >(tee -a "$REPORT") 2>&1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
unset CUPY_TF32  # nanodl never uses TF32; make sure the environment does not either
SUMMARY=()
START=$SECONDS

step() {  # step NAME LIMIT_SECONDS COMMAND...: run with a time limit, record the exit status
    local name="$1" limit="$2"
    shift 2
    echo
    echo "=== $name (limit ${limit}s) === $(date -u +%H:%M:%S)"
    local t0=$SECONDS
    timeout -s INT -k 15 "$limit" "$@"
    local rc=$?
    local note=""
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 130 ] || [ "$rc" -eq 137 ]; then note=" (TIMED OUT)"; fi
    echo "--- $name: exit $rc$note after $((SECONDS - t0))s"
    SUMMARY+=("$(printf '%-28s exit %3d%s  %4ds' "$name" "$rc" "$note" $((SECONDS - t0)))")
}

echo "=== environment === $(date -u)"
nvidia-smi || echo "nvidia-smi not available"
python - <<'PY'
import platform, sys
print("python", platform.python_version(), sys.executable)
try:
    import cupy
    print("cupy", cupy.__version__, "| CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(),
          "| driver", cupy.cuda.runtime.driverGetVersion())
except Exception as exc:
    print("cupy: unavailable:", exc)
try:
    import torch
    print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| cuda available:", torch.cuda.is_available())
except Exception as exc:
    print("torch: unavailable:", exc)
import numpy, nanodl
from nanodl.backend import cuda
print("numpy", numpy.__version__, "| nanodl", nanodl.__version__, "| native CPU kernels:",
      nanodl.backend.native_available(), "| cuda_available:", nanodl.cuda_available(),
      "| status:", cuda.cuda_status())
PY

if ! python -c "import pytest" 2>/dev/null; then
    # No network on the GPU machine: fall back to a pure-Python pytest carried in the working
    # tree (made with `pip install --target build/gpu_deps pytest exceptiongroup "tomli==2.0.2"`).
    if [ -d build/gpu_deps/pytest ]; then
        export PYTHONPATH="$PYTHONPATH:$PWD/build/gpu_deps"
        echo "pytest: not installed here; using the copy in build/gpu_deps"
    else
        echo "WARNING: pytest is not installed and build/gpu_deps is missing: the test step will fail"
    fi
fi

step "cuda available" 30 python -c "import sys, nanodl; from nanodl.backend import cuda
ok = nanodl.cuda_available(); print('cuda_available:', ok, '|', cuda.cuda_status() or 'CuPy and a GPU found')
sys.exit(0 if ok else 3)"

if [ "${BUILD_NATIVE:-0}" = "1" ]; then
    step "build native CPU kernels" 120 python setup.py build_ext --inplace
fi

step "pytest tests/test_cuda.py" 200 python -m pytest tests/test_cuda.py ${PYTEST_ARGS:--q -p no:cacheprovider --maxfail=40 --tb=short -rfE --durations=8}
step "bench_gpu.py" 100 python benchmarks/bench_gpu.py
step "nanodl train --device cuda" 45 python -m nanodl train --device cuda --epochs 30 --verbose 2
step "nanodl train --device cpu" 20 python -m nanodl train --device cpu --epochs 30 --verbose 2

echo
echo "=== summary === total $((SECONDS - START))s; report: $REPORT"
printf '%s\n' "${SUMMARY[@]}"
sleep 1  # let tee flush the report before the machine collects $OUT
