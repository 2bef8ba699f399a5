#!/usr/bin/env bash
# GPU check for issue 6: the parity tests on the GPU, then training steps/s (batch 16 x 512x512, with
# and without AMP), IS-CAM images/s on 500x375 images and peak GPU memory (benchmarks/gpu_check.py).
#
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]     (OUT_DIR gets parity.log, results.md, results.json)
#        GPU_CHECK_QUICK=1 bash benchmarks/gpu_check.sh   (a smoke run: fewer steps and images)
#
# Python: the repo's .venv if its torch sees a GPU, else the machine's python3 (GPU images ship
# their own torch). Nothing is installed or downloaded: sipe runs from src/ through PYTHONPATH, so
# this works on machines without network access. On a machine without CUDA it says so and exits 0.
# Expected run time on an H100/H200: about 3-5 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${TMPDIR:-/tmp}/sipe_gpu_check}"

has_cuda() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; }
PY=""
for candidate in .venv/bin/python python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 && has_cuda "$candidate"; then PY="$candidate"; break; fi
done
if [ -z "$PY" ]; then
    echo "gpu_check: no CUDA device visible to PyTorch (tried .venv/bin/python, python3, python): CPU-only machine, nothing to check."
    exit 0
fi
for module in numpy PIL scipy tqdm yaml pytest torchvision; do
    if ! "$PY" -c "import $module" >/dev/null 2>&1; then
        echo "gpu_check: $PY lacks the Python module '$module'; install the package that provides it (see pyproject.toml)." >&2
        exit 1
    fi
done
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
"$PY" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "| torch", torch.__version__)'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

echo "== parity tests on the GPU (SIPE_TEST_DEVICE=cuda, TF32 off) =="
SIPE_TEST_DEVICE=cuda "$PY" -m pytest -q -p no:cacheprovider tests/test_parity.py 2>&1 | tee "$OUT/parity.log"
parity=${PIPESTATUS[0]}

echo "== benchmarks =="
"$PY" benchmarks/gpu_check.py --out "$OUT" ${GPU_CHECK_QUICK:+--quick}
bench=$?

echo "gpu_check: parity tests exit $parity, benchmarks exit $bench; results in $OUT/"
[ "$parity" -eq 0 ] && [ "$bench" -eq 0 ]
