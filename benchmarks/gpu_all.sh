#!/usr/bin/env bash
# Every GPU figure in one call: benchmarks/gpu_all.sh [--tiny] [--out FILE] [--parts a,b] (see gpu_all.py --help).
# The GPU machine has torch, transformers and onnxruntime but no diffusers: the wheels travel in .whl/
# (fetch them here first with benchmarks/gpu_wheels.sh) and are installed into a scratch folder.
set -u
cd "$(dirname "$0")/.."
if ! python3 -c "import diffusers" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "diffusers is not installed and .whl/ holds no wheels: run benchmarks/gpu_wheels.sh first" >&2
    exit 2
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/dynamicid-site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/dynamicid-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu_all.py "$@"
