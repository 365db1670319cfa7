#!/usr/bin/env bash
# Fetch the wheels gpu_all.sh needs on the GPU machine (which has torch, transformers, onnxruntime,
# huggingface_hub and safetensors, but no diffusers) into .whl/, for Python 3.12 on x86-64.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
diffusers=$($PY -c "import diffusers; print(diffusers.__version__)" 2>/dev/null || echo 0.42.1)
mkdir -p .whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
  "diffusers==$diffusers" importlib_metadata
ls -la .whl
