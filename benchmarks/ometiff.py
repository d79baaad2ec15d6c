"""Slide label outputs: time and peak memory of writing a large label image as the label zarr
(``--formats zarr``), as the pyramidal OME-TIFF (``ome-tiff``, through a scratch zarr) and as both.

Usage::

    python benchmarks/ometiff.py [--sizes 8192,32768] [--formats "zarr;ome-tiff;zarr,ome-tiff"]
                                 [--chunk 2048] [--workdir DIR]

The label image is made lazily, chunk by chunk, never whole: 512² cells each holding one of the
bundled NuInsSeg spleen masks (real nuclei shapes; every cell is tissue, the densest case), with ids
unique over the slide (up to 256 per cell, so they pass a million on a 32768² image). Chunks of
``--chunk``² pixels are committed to :class:`~nucleisam.exports.slides.SlideWriter` in a shuffled
order, as Dask workers finish them, then the writer is closed (pyramid, OME-TIFF, renames). Each run
is a fresh process; its peak resident memory (``ru_maxrss``, tifffile's compression threads
included) is taken after the chunks and again after closing; then a few windows of every level of
the OME-TIFF (else the zarr) are read back and compared with the labels they should hold.

Prints a table and writes ``benchmarks/results/ometiff.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MASKS = REPO / "examples" / "NuInsSeg" / "human spleen" / "label masks modify"
CELL = 512
IDS_PER_CELL = 256
MPP = 0.25


def load_masks() -> list[np.ndarray]:
    import tifffile

    masks = [tifffile.imread(path).astype(np.uint32) for path in sorted(MASKS.glob("*.tif"))]
    assert masks and all(m.shape == (CELL, CELL) and m.max() < IDS_PER_CELL for m in masks)
    return masks


def labels_at(masks: list[np.ndarray], size: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """Pixels [y0, y1) × [x0, x1) of the synthetic size×size label image (regions on cell borders)."""
    cells = size // CELL
    out = np.zeros((y1 - y0, x1 - x0), dtype=np.uint32)
    for top in range(y0 - y0 % CELL, y1, CELL):
        for left in range(x0 - x0 % CELL, x1, CELL):
            row, col = top // CELL, left // CELL
            mask = masks[(row * 7 + col * 3) % len(masks)]
            ids = np.where(mask > 0, mask + (row * cells + col) * IDS_PER_CELL, 0)
            ys, xs = slice(max(top, y0), min(top + CELL, y1)), slice(max(left, x0), min(left + CELL, x1))
            out[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = ids[
                ys.start - top : ys.stop - top, xs.start - left : xs.stop - left]
    return out


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(size: int, formats: tuple[str, ...], chunk: int, folder: Path) -> dict:
    """One slide's label outputs in this process; returns its figures."""
    import tifffile
    import zarr

    from nucleisam.exports.slides import SlideWriter
    from nucleisam.predict.assemble import CommittedChunk
    from nucleisam.predict.slide import SlideGeometry

    masks = load_masks()
    regions = [(y, x, min(y + chunk, size), min(x + chunk, size))
               for y in range(0, size, chunk) for x in range(0, size, chunk)]
    random.Random(0).shuffle(regions)
    geometry = SlideGeometry(size, size, MPP, 1.0, 0, 1.0, MPP)
    baseline = peak_mb()
    start = time.perf_counter()
    writer = SlideWriter(folder, "bench", formats, geometry=geometry, dimensions=(size, size),
                         thumbnail=np.zeros((8, 8, 3), dtype=np.uint8), tissue=None)
    with writer:
        for index, region in enumerate(regions):
            writer.write(CommittedChunk(index, region, labels_at(masks, size, *region), {}, [], 1))
        chunks_s, chunks_peak = time.perf_counter() - start, peak_mb()
        closing = time.perf_counter()
    close_s, close_peak = time.perf_counter() - closing, peak_mb()  # before the (separate) check below
    leftovers = sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
    assert not leftovers, leftovers
    row = {"size": size, "formats": ",".join(formats), "chunks": len(regions), "pixels": size * size,
           "raw_level0_mb": round(size * size * 4 / 2**20), "chunks_s": round(chunks_s, 1),
           "close_s": round(close_s, 1), "baseline_rss_mb": round(baseline),
           "peak_rss_chunks_mb": round(chunks_peak), "peak_rss_mb": round(close_peak)}
    rng = np.random.default_rng(size)
    if "ome-tiff" in formats:
        path = folder / "bench_labels.ome.tif"
        with tifffile.TiffFile(path) as tif:
            levels = [zarr.open_array(tif.series[0].aszarr(level=k), mode="r")
                      for k in range(len(tif.series[0].levels))]
            check_levels(levels, masks, size, rng)
            row.update(bigtiff=tif.is_bigtiff, file_mb=round(path.stat().st_size / 2**20, 1))
    else:
        group = zarr.open_group(folder / "bench_labels.zarr", mode="r")
        levels = [group[str(k)] for k in range(len(group))]
        check_levels(levels, masks, size, rng)
        size_mb = sum(f.stat().st_size for f in (folder / "bench_labels.zarr").rglob("*") if f.is_file())
        row.update(file_mb=round(size_mb / 2**20, 1))
    return {**row, "levels": [list(level.shape) for level in levels]}


def check_levels(levels: list, masks: list[np.ndarray], size: int, rng: np.random.Generator) -> None:
    """A few windows of every level hold every 2**k-th pixel of the labels written."""
    for k, level in enumerate(levels):
        step = 2**k
        side = max(16, 512 // step)  # level pixels: at most 512² level-0 pixels to rebuild
        for y, x in rng.integers(0, np.array(level.shape) - 1, size=(4, 2)):
            got = level[y : y + side, x : x + side]
            want = labels_at(masks, size, y * step, x * step, min((y + side) * step, size),
                             min((x + side) * step, size))[::step, ::step]
            assert np.array_equal(got, want), (size, k, y, x)


def run(size: int, formats: str, chunk: int, folder: Path) -> dict:
    """One measurement in a fresh process (so that its peak memory is this run's alone)."""
    folder.mkdir()
    command = [sys.executable, __file__, "--chunk", str(chunk), "--child", str(size), formats, str(folder)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    seconds = time.perf_counter() - start
    shutil.rmtree(folder)  # free the disk between runs
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_s": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="8192,32768", help="image sides in pixels (multiples of 512)")
    parser.add_argument("--formats", default="zarr;ome-tiff;zarr,ome-tiff",
                        help="format sets to compare, ';'-separated")
    parser.add_argument("--chunk", type=int, default=2048, help="committed chunk side in pixels")
    parser.add_argument("--workdir", type=Path, default=None, help="where outputs go (default: a temp dir)")
    parser.add_argument("--child", nargs=3, metavar=("SIZE", "FORMATS", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size, formats, folder = args.child
        print(json.dumps(child(int(size), tuple(formats.split(",")), args.chunk, Path(folder))))
        return
    rows = []
    print(f"{'size':>7} {'formats':<14} {'chunks':>6} {'write s':>7} {'close s':>7} {'levels':>6} "
          f"{'file MB':>8} {'raw MB':>7} {'peak RSS MB after chunks / close':>33}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            for formats in args.formats.split(";"):
                row = run(size, formats, args.chunk, Path(tmp) / f"{size}_{formats.replace(',', '_')}")
                rows.append(row)
                print(f"{size:>6}² {formats:<14} {row['chunks']:>6} {row['chunks_s']:>7.1f} "
                      f"{row['close_s']:>7.1f} {len(row['levels']):>6} {row['file_mb']:>8.1f} "
                      f"{row['raw_level0_mb']:>7,} {row['peak_rss_chunks_mb']:>25} / {row['peak_rss_mb']:>5}",
                      flush=True)
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "runs": rows}
    target = REPO / "benchmarks" / "results" / "ometiff.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results in {target}")


if __name__ == "__main__":
    main()
