#!/usr/bin/env bash
# Run where pip reaches PyPI: downloads the wheels an offline CUDA machine lacks into
# benchmarks/gpu/wheels/ (git-ignored), for CPython 3.12 on manylinux x86-64. Copy the repository
# with that folder to the GPU machine and run `bash benchmarks/gpu.sh` there.
#
#     bash benchmarks/gpu/prepare.sh [--have FILE] [DEST]
#
# By default the GPU machine is assumed to have only Python 3.12 with torch (CUDA), numpy (2.x),
# scipy, scikit-image (and so Pillow, packaging), tifffile, safetensors, PyYAML and onnxruntime; it
# then lacks all 33 wheels below (≈ 110 MB): kornia (MobileSAM) and kornia-rs, and what else
# `import nucleisam` and the slide engine need: imagecodecs, tqdm, matplotlib and its dependencies,
# OpenSlide (python + the -bin library), zarr 3, pyarrow and dask[distributed] with their
# dependencies (torch brings jinja2 and fsspec).
#
# --have FILE names packages the machine already has (one distribution name a line, '#' comments),
# and those are not downloaded: a copy that has to travel (a size-limited transfer, a slow link)
# then holds only what is missing. benchmarks/gpu/have-h200-image.txt lists what one such machine
# image holds; with it the folder is 18 wheels, ≈ 41 MB.
#
# Versions are exact, the ones the test suite runs with; --no-deps, so that nothing the machine
# already has (torch above all) is downloaded again.
set -euo pipefail
HAVE=
if [[ ${1:-} == --have ]]; then
    [[ -f ${2:-} ]] || { echo "prepare.sh: --have needs a file of package names; '${2:-}' is not a file" >&2; exit 2; }
    HAVE=$(realpath "$2")
    shift 2
fi
cd "$(dirname "$0")"
PIP=${PIP:-pip}
DEST=${1:-wheels}
WHEELS=(
    kornia==0.9.0 kornia-rs==0.2.0
    imagecodecs==2026.3.6 tqdm==4.70.1
    matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.68.0 kiwisolver==1.5.1
    pyparsing==3.3.3 python-dateutil==4.0.0 tzdata==2026.6
    openslide-python==1.4.7 openslide-bin==4.0.1.2
    zarr==3.4.2 numcodecs==0.17.1 donfig==0.8.1.post1 google-crc32c==1.9.0 msgspec==0.23.0
    pyarrow==26.0.1
    dask==2026.8.0 distributed==2026.8.0 click==8.5.1 cloudpickle==3.1.3 partd==1.4.2 locket==1.0.0
    toolz==1.2.0 msgpack==1.2.4 psutil==7.2.2 sortedcontainers==2.4.0 tblib==3.2.2 tornado==6.6.1 zict==3.0.0
)
# Distribution names compare case-blind with '-', '_' and '.' alike (PEP 503).
normalise() { tr 'A-Z_.' 'a-z--'; }
if [[ -n $HAVE ]]; then
    have=$(sed 's/#.*//; s/[[:space:]]//g; /^$/d' "$HAVE" | normalise)
    wanted=()
    for pin in "${WHEELS[@]}"; do
        name=$(normalise <<< "${pin%%==*}")
        grep -qxF -- "$name" <<< "$have" || wanted+=("$pin")
    done
    echo "prepare.sh: $((${#WHEELS[@]} - ${#wanted[@]})) of ${#WHEELS[@]} packages are on the machine ($HAVE)"
    WHEELS=("${wanted[@]}")
fi
mkdir -p "$DEST"
"$PIP" download --only-binary=:all: --no-deps --dest "$DEST" \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
    "${WHEELS[@]}"
echo "$(ls "$DEST"/*.whl | wc -l) wheels in $DEST ($(du -sh "$DEST" | cut -f1)); next, on the GPU machine: bash benchmarks/gpu.sh"
