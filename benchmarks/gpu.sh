#!/usr/bin/env bash
# One command for a short slot on an offline CUDA machine (a copy of this repository plus the
# wheels benchmarks/gpu/prepare.sh downloaded into benchmarks/gpu/wheels/):
#
#     bash benchmarks/gpu.sh              # install (no network), measure, print one table
#     bash benchmarks/gpu.sh --dry-run    # the same in miniature on the CPU (also without a GPU)
#
# Installs the prepared wheels with pip --no-index --no-deps into benchmarks/gpu/site/ (a folder
# put on PYTHONPATH; the machine's own torch, numpy, ... stay as they are), then runs
# benchmarks/gpu.py under a hard limit: LoRA training images/s at 1024 in bf16 (instance and SAM
# heads) with peak GPU memory, and inference tiles/s at input 512 and 1024, the network alone and
# end to end with post-processing overlapped across CPU worker processes. Writes
# benchmarks/results/gpu.json. The whole run, install included, takes 3-5 minutes on one GPU; the
# limits stop it before 8. PYTHON=... picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${NUCLEISAM_GPU_WHEELS:-benchmarks/gpu/wheels}
SITE=benchmarks/gpu/site
started=$SECONDS
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    rm -rf "$SITE"
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --disable-pip-version-check \
        --target "$SITE" "$WHEELS"/*.whl
    echo "gpu.sh: installed $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS (no network) in $((SECONDS - started)) s"
fi
export PYTHONPATH="$PWD/src:$PWD/$SITE${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c "import kornia, nucleisam.model, nucleisam.train.loop, nucleisam.batch" 2> /dev/null; then
    echo "gpu.sh: cannot import nucleisam's dependencies with $PYTHON; run benchmarks/gpu/prepare.sh where" \
        "pip reaches PyPI and copy benchmarks/gpu/wheels/ here (or set NUCLEISAM_GPU_WHEELS)." >&2
    "$PYTHON" -c "import kornia, nucleisam.model, nucleisam.train.loop, nucleisam.batch" 2>&1 | tail -1 >&2 || true
    exit 2
fi
timeout 450 "$PYTHON" benchmarks/gpu.py --budget 400 "$@"
echo "gpu.sh: done in $((SECONDS - started)) s"
