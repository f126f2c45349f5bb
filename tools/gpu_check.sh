#!/usr/bin/env bash
# The GPU check in one command, for a lent GPU machine (see tools/gpu_check.py):
#
#   bash tools/gpu_check.sh --out "$OUT"            # everything, ~8 minutes on one H200
#   bash tools/gpu_check.sh --dry-run               # print the plan (works anywhere)
#   bash tools/gpu_check.sh --steps tests train_fp16 --out "$OUT"   # a subset (+ what it needs)
#
# It installs the wheels of gpu_wheels/ (made here by `make gpu-wheels`, carried with the call)
# with pip --no-index --target, builds vpose_d2._C in place for TORCH_CUDA_ARCH_LIST (default
# 9.0), then runs the CUDA tests, the op and model benchmarks and the AMP training runs, each
# under a timeout; a failing step does not stop the others. Results: $OUT/gpu_check.log,
# $OUT/gpu_check.json (step, status, seconds, key numbers) and $OUT/pytest.xml.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || { echo "gpu_check.sh: no $PY (set PYTHON)" >&2; exit 2; }
exec "$PY" tools/gpu_check.py run --python "$(command -v "$PY")" "$@"
