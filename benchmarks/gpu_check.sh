#!/usr/bin/env bash
# The first GPU run, one command: the test suite on CuPy, PyTorch CUDA and JAX GPU, then the layer and training
# benchmarks with CuPy against PyTorch CUDA; JSON files and one summary table. Within 8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # from anywhere; OUT_DIR defaults to $OUT, else ./gpu-check
#
# Expects python3 with CuPy (CUDA 13: cupy-cuda13x), PyTorch with CUDA and JAX with CUDA. Packages missing there
# (array-api-compat, array-api-extra, array-api-strict; hypothesis and its needs if absent) are installed from the
# wheels in $XPCNN_WHEELS (default: wheels/ in the repository root) into a private folder, without the network.
# Fetch them beforehand on a machine with pip (pure-Python wheels, any platform):
#
#   pip download --no-deps -d wheels/ array-api-compat==1.16.0 array-api-extra==0.11.5 array-api-strict==2.6.1 \
#       hypothesis sortedcontainers attrs          # the versions the suite is tested with here
#
# Each step has its own time limit (tests 240 s, layers 110 s, training 60 s; override with XPCNN_TEST_S,
# XPCNN_LAYERS_S, XPCNN_TRAIN_S); a step that fails or runs out is reported in the summary and the next one runs.
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=$(mkdir -p "${1:-${OUT:-gpu-check}}" && cd "${1:-${OUT:-gpu-check}}" && pwd)  # relative to the caller's cwd
cd "$ROOT"
PY=${PYTHON:-python3}
WHEELS=${XPCNN_WHEELS:-$ROOT/wheels}
START=$(date +%s)

if compgen -G "$WHEELS/*.whl" >/dev/null; then
    SITE=$(mktemp -d /tmp/xpcnn-site.XXXX)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl \
        || { echo "gpu_check: installing the wheels in $WHEELS failed" >&2; exit 2; }
    export PYTHONPATH="$SITE"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's xpcnn, not an installed one
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX would otherwise take 75% of the GPU in every test process
export XPCNN_REQUIRE_TORCH=1

echo "== machine" | tee "$OUT_DIR/log.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$OUT_DIR/log.txt"
"$PY" - <<'EOF' 2>&1 | tee -a "$OUT_DIR/log.txt"
import importlib
for name in ("numpy", "cupy", "torch", "jax", "array_api_compat", "array_api_extra", "array_api_strict", "hypothesis"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {module.__version__}")
    except Exception as error:  # report and go on: the summary says what could not run
        print(f"{name} MISSING ({error})")
try:
    import cupy
    print("cupy GPU:", cupy.cuda.is_available())
    import torch
    print("torch CUDA:", torch.cuda.is_available(), torch.version.cuda)
    import jax
    print("jax devices:", jax.devices())
except Exception as error:
    print("GPU check failed:", error)
EOF

status() { # name, exit code
    case $2 in 0) echo "$1 ok" ;; 124|137) echo "$1 TIMED OUT" ;; *) echo "$1 FAILED (exit $2)" ;; esac >>"$OUT_DIR/steps.txt"
}
: >"$OUT_DIR/steps.txt"

echo "== tests on cupy, torch-cuda, jax-gpu" | tee -a "$OUT_DIR/log.txt"
XDIST=()
"$PY" -c "import xdist" 2>/dev/null && XDIST=(-n 4)
timeout --signal=INT --kill-after=15 "${XPCNN_TEST_S:-240}" "$PY" -m pytest -q -p no:cacheprovider "${XDIST[@]}" \
    -k "cupy or torch-cuda or jax-gpu" --junitxml="$OUT_DIR/tests.xml" tests/ 2>&1 | tail -n 60 | tee -a "$OUT_DIR/log.txt"
status tests "${PIPESTATUS[0]}"

echo "== bench_layers --backend cupy (PyTorch CUDA as the reference)" | tee -a "$OUT_DIR/log.txt"
timeout --kill-after=10 "${XPCNN_LAYERS_S:-110}" "$PY" benchmarks/bench_layers.py --backend cupy --repeats 5 \
    --settle 0.05 --json "$OUT_DIR/layers_cupy_float32.json" 2>&1 | tee -a "$OUT_DIR/log.txt"
status bench_layers "${PIPESTATUS[0]}"

echo "== bench_train --backend cupy" | tee -a "$OUT_DIR/log.txt"
timeout --kill-after=10 "${XPCNN_TRAIN_S:-60}" "$PY" benchmarks/bench_train.py --backend cupy --repeats 5 \
    --settle 0.1 --json "$OUT_DIR/train_cupy.json" 2>&1 | tee -a "$OUT_DIR/log.txt"
status bench_train "${PIPESTATUS[0]}"

echo "== summary ($(($(date +%s) - START)) s)" | tee -a "$OUT_DIR/log.txt"
"$PY" benchmarks/gpu_summary.py "$OUT_DIR" 2>&1 | tee "$OUT_DIR/summary.txt" | tee -a "$OUT_DIR/log.txt"
