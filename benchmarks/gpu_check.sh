#!/usr/bin/env bash
# GPU check for issue 6: the parity tests on the GPU, then training steps/s (batch 16 x 512x512, with
# and without AMP), IS-CAM images/s on 500x375 images and peak GPU memory (benchmarks/gpu_check.py).
# Issue 29 (benchmarks/bench_generate.py, then the demo config through `sipe run`):
#  - the 0.3 images/s of generate_cams: the same folder of VOC sizes with cudnn.benchmark off, then on,
#    each in a fresh process, every image's seconds printed (the first image of each new size shows
#    what autotuning costs) -> generate_off.log / generate_on.log;
#  - generate_cams images/s, batch_images 1 / 8 / 16, fp32 / bf16 / fp16 with cudnn.benchmark off, the
#    batched files against batch 1's (byte-equal count, max abs diff), and the official make_cam's
#    computation over the same folder (materialised IPE, network as built) for the ratio -> generate.log;
#    then fp32 / fp16 with cudnn.benchmark on -> generate_cudnn_on.log;
#  - `sipe run --config configs/demo.yaml` end to end on the GPU: wall time and metrics.json's stage
#    seconds -> demo.log.
#
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]     (OUT_DIR gets parity.log, results.md, results.json)
#        GPU_CHECK_QUICK=1 bash benchmarks/gpu_check.sh   (a smoke run: fewer steps and images)
#
# Python: the repo's .venv if its torch sees a GPU, else the machine's python3 (GPU images ship
# their own torch). Nothing is installed or downloaded: sipe runs from src/ through PYTHONPATH, so
# this works on machines without network access. On a machine without CUDA it says so and exits 0.
# Expected run time on an H100/H200: about 6-8 minutes (each issue-29 step has its own time limit;
# a step cut short still prints the rows it finished).
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

# GPU_CHECK_QUICK: fewer images (a smoke run of the same steps).
n_diag=24; n_rate=48
[ -n "${GPU_CHECK_QUICK:-}" ] && n_diag=6 && n_rate=8

echo "== issue 29: generate_cams per image, cudnn.benchmark off then on (fresh processes) =="
for mode in off on; do
    timeout 100 "$PY" benchmarks/bench_generate.py --full --images "$n_diag" --batches 1 --precisions fp16 \
        --workers 4 --cudnn-benchmark "$mode" --per-image --out "$OUT/generate_$mode" 2>&1 \
        | tee "$OUT/generate_$mode.log"
done

echo "== issue 29: generate_cams images/s, cudnn.benchmark off: batch 1 vs 8 vs 16, fp32/bf16/fp16, official make_cam =="
timeout 180 "$PY" benchmarks/bench_generate.py --full --images "$n_rate" --batches 1,8,16 \
    --precisions fp32,bf16,fp16 --workers 4 --cudnn-benchmark off --official --out "$OUT/generate" 2>&1 \
    | tee "$OUT/generate.log"
generate=${PIPESTATUS[0]}
echo "== issue 29: the same with cudnn.benchmark on (fresh process: every shape autotuned once) =="
timeout 120 "$PY" benchmarks/bench_generate.py --full --images "$n_rate" --batches 1,8,16 --precisions fp32,fp16 \
    --workers 4 --cudnn-benchmark on --out "$OUT/generate_cudnn_on" 2>&1 | tee "$OUT/generate_cudnn_on.log"

echo "== issue 29: sipe run --config configs/demo.yaml on the GPU =="
rm -rf "$OUT/demo"
t0=$(date +%s)
timeout 240 "$PY" -m sipe run --config configs/demo.yaml --out "$OUT/demo" > "$OUT/demo.log" 2>&1
demo=$?
echo "sipe run (demo config): exit $demo, wall $(( $(date +%s) - t0 )) s (log: $OUT/demo.log)" | tee -a "$OUT/demo.log"
tail -n 5 "$OUT/demo.log"
"$PY" - "$OUT/demo" <<'PYEOF' | tee -a "$OUT/demo.log"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
if (out / "metrics.json").exists():
    print("stage seconds (metrics.json):", json.dumps(json.loads((out / "metrics.json").read_text())["seconds"]))
else:  # cut short: the stages that finished still have their records
    done = {p.stem: json.loads(p.read_text()).get("seconds") for p in sorted((out / ".stages").glob("*.json"))}
    print("no metrics.json; finished stages' seconds (.stages/):", json.dumps(done))
PYEOF

echo "gpu_check: parity tests exit $parity, benchmarks exit $bench, generate exit $generate, demo exit $demo; results in $OUT/"
[ "$parity" -eq 0 ] && [ "$bench" -eq 0 ] && [ "$generate" -eq 0 ] && [ "$demo" -eq 0 ]
