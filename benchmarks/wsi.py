"""Whole-slide inference: tiles per second and peak memory of the whole process tree, by slide size
and number of Dask workers.

Usage::

    python benchmarks/wsi.py [--sizes 8192,16384,32768] [--workers 1,2] [--model-region 2048]
                             [--cache DIR]

Synthetic slides (written once into ``--cache``, default ``~/.cache/nucleisam/bench``): pyramidal
tiled TIFFs at 0.25 µm/px (levels 1, 4, 16), glass with square blocks of tissue made of the bundled
NuInsSeg sample tiles (about one sixth of the area, the same pattern at every size), so the work
grows with the slide while the tissue looks real. Each run is ``nucleisam predict SLIDE --tissue auto
--formats parquet,zarr`` in a fresh process; its peak resident memory is the sum over the process
and its children (Dask workers included), sampled every 0.1 s. ``--model-region``: a randomly
initialised adapter (input 512) on a slide of that size, all tissue, on CPU.

Prints a table and writes ``benchmarks/results/wsi.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "NuInsSeg" / "human spleen" / "tissue images"
CELL = 512
FACTORS = (1, 4, 16)
MPP = 0.25


def is_tissue(row: int, col: int) -> bool:
    """Blocks of 4×4 cells, one block in six holds tissue (a diagonal pattern)."""
    return (row // 4 + col // 4) % 6 == 0


def write_slide(path: Path, size: int, *, all_tissue: bool = False) -> Path:
    """A size×size pyramidal TIFF: sample tiles on tissue cells, white glass elsewhere; every level is
    the exact block mean of level 0 (each level-0 tile is a sample tile or glass)."""
    import tifffile

    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(SAMPLE.glob("*.png"))]
    cells = size // CELL

    def content(row: int, col: int) -> int | None:
        return (row * 7 + col * 3) % len(tiles) if all_tissue or is_tissue(row, col) else None

    def level_tiles(factor: int):
        reduced = [t.reshape(CELL // factor, factor, CELL // factor, factor, 3).mean(axis=(1, 3)).round()
                   .astype(np.uint8) for t in tiles]
        span = factor  # level-0 cells per level tile side
        for top in range(0, cells, span):
            for left in range(0, cells, span):
                out = np.full((CELL, CELL, 3), 255, dtype=np.uint8)
                for dy in range(min(span, cells - top)):
                    for dx in range(min(span, cells - left)):
                        index = content(top + dy, left + dx)
                        if index is not None:
                            step = CELL // factor
                            out[dy * step : (dy + 1) * step, dx * step : (dx + 1) * step] = reduced[index]
                yield out

    tmp = path.with_suffix(".part")
    with tifffile.TiffWriter(tmp, bigtiff=True) as writer:
        for index, factor in enumerate(FACTORS):
            side = size // factor
            per_cm = 1e4 / (MPP * factor)
            options = {"subifds": len(FACTORS) - 1} if index == 0 else {"subfiletype": 1}
            writer.write(level_tiles(factor), shape=(side, side, 3), dtype=np.uint8, tile=(CELL, CELL),
                         photometric="rgb", compression="zlib", resolution=(per_cm, per_cm),
                         resolutionunit="CENTIMETER", **options)
    os.replace(tmp, path)
    return path


def random_adapter(folder: Path) -> Path:
    """A randomly initialised NucleiSam (input 512) saved as an adapter: the network's real cost."""
    import torch

    from nucleisam.config import ModelConfig
    from nucleisam.model import build_model, save_adapter

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(ModelConfig(input_size=512, weights="none"))
    return save_adapter(model, folder / "random_512.safetensors")


def run(slide: Path, out: Path, method: list[str], workers: int) -> dict:
    """One ``nucleisam predict`` in a fresh process: wall time, tiles, peak RSS of the process tree."""
    command = [sys.executable, "-m", "nucleisam", "predict", str(slide), "--out", str(out), "--tissue",
               "auto", "--formats", "parquet,zarr", "--overwrite", "--workers", str(workers), *method]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    output = process.stdout.read() if process.stdout else ""
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output}")
    match = re.search(r"(\d[\d,]*) nuclei in .*?, (\d+) of (\d+) tiles with tissue", output)
    nuclei, tiles = int(match.group(1).replace(",", "")), int(match.group(2))
    return {"seconds": round(seconds, 1), "tiles": tiles, "tiles_per_s": round(tiles / seconds, 2),
            "nuclei": nuclei, "peak_rss_mb": round(peak / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="8192,16384", help="slide sides in pixels (comma-separated)")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--model-region", type=int, default=2048, help="model slide side (0: skip)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "nucleisam" / "bench")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    workers = [int(w) for w in args.workers.split(",")]
    jobs = []
    for size in (int(s) for s in args.sizes.split(",")):
        slide = args.cache / f"wsi_{size}.tif"
        if not slide.exists():
            write_slide(slide, size)
        jobs += [(f"classical {size}²", slide, ["--method", "classical"], w) for w in workers]
    with tempfile.TemporaryDirectory() as tmp:
        if args.model_region:
            slide = args.cache / f"wsi_all_tissue_{args.model_region}.tif"
            if not slide.exists():
                write_slide(slide, args.model_region, all_tissue=True)
            adapter = ["--adapter", str(random_adapter(Path(tmp))), "--batch-size", "2"]
            jobs += [(f"model 512 {args.model_region}²", slide, adapter, w) for w in workers]
        rows = []
        for name, slide, method, count in jobs:
            result = {"run": name, "workers": count, **run(slide, Path(tmp) / "out", method, count)}
            rows.append(result)
            print(f"{name:<22} workers {count}: {result['tiles']:>5} tiles {result['seconds']:>7.1f} s "
                  f"{result['tiles_per_s']:>6.2f} tiles/s  peak RSS {result['peak_rss_mb']:>6} MB  "
                  f"{result['nuclei']:,} nuclei", flush=True)
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "runs": rows}
    target = REPO / "benchmarks" / "results" / "wsi.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results in {target}")


if __name__ == "__main__":
    main()
