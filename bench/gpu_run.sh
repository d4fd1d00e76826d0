#!/usr/bin/env bash
# The CUDA check as one device-tool command (docs/gpu.md): install the carried wheels (bench/gpu_wheels.sh made
# them in .whl/) where the GPU image's own packages cannot shadow them, then run bench/gpu_check.py and put its
# results and log under $OUT, which comes back:
#
#   bench/gpu_run.sh [gpu_check.py arguments...]     # e.g. --sections at_scale
#
# WHL (.whl) and SITE (/tmp/site) name the wheels' folder and the install target; OUT (required) the results'.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that receives gpu_results.json and gpu_check.log}"
site=${SITE:-/tmp/site}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${WHL:-.whl}"/*.whl \
  || exit 1
export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"
python3 bench/gpu_check.py --out "$OUT/gpu_results.json" "$@" 2>&1 | tee "$OUT/gpu_check.log"
