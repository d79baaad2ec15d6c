#!/usr/bin/env bash
# GPU check for a CUDA machine without network access (it gets a copy of this repository).
# Short bf16 training at input 1024 on the bundled sample plus synthetic tiles, then inference:
# prints images/s, peak GPU memory and tiles/s per mode/head. Finishes well within 8 minutes on
# one H100-class GPU. Needs a Python with a CUDA build of torch and the package's dependencies
# (PYTHON=... to choose it); random base weights unless mobile_sam.pt is in the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA GPU visible to torch"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, bf16 {torch.cuda.is_bf16_supported()}")
PY
timeout 450 "$PYTHON" benchmarks/train.py --device cuda --amp --sizes 1024 \
    --variants lora:instance,lora:sam,full:instance --images 26 --batch-size 8 \
    --include-sample --inference --out benchmarks/results/gpu.json
