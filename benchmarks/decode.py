"""How often ``nucleisam predict`` decodes a plain (single-level, untiled) TIFF, and what that costs.

Usage::

    python benchmarks/decode.py [--size 4096] [--codecs deflate,lzw,jpeg] [--repeat 3] [--cache DIR]
                                [--skip-predict]

An H&E-like image of ``--size``² px is built from the shared NuInsSeg spleen tiles (``shared/data``, or
the bundled sample when that is absent; each 512² cell a tile, flipped or rotated in turn so that no two
neighbours repeat) and written once per codec as a stripped TIFF at 0.25 µm/px (tifffile's default
strips), into ``--cache`` (default ``~/.cache/nucleisam/bench``). Every measurement runs in a fresh
process:

- ``decode``: one :func:`nucleisam.data.read_rgb` of the file (the cost of a decode; median of
  ``--repeat``);
- ``predict``: ``nucleisam predict FILE --method classical --formats tiff,csv`` as a user runs it,
  with every strip decode counted (``decodes`` = strips decoded / strips in the file), its wall time and
  the process's peak resident memory.

Prints a table and writes ``benchmarks/results/decode.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "NuInsSeg" / "human spleen" / "tissue images"
BUNDLED = REPO / "examples" / "NuInsSeg" / "human spleen" / "tissue images"
CELL = 512
MPP = 0.25
#: tifffile's names of the codecs compared (TIFF Compression 8, 5 and 7).
CODECS = {"deflate": "zlib", "lzw": "lzw", "jpeg": "jpeg"}

#: Runs in a fresh process: decode the file once, or predict it with every strip decode counted.
#: tifffile decodes every strip (or tile) through the ``decode`` function of the page's key frame; the
#: class's cached property is wrapped so that each call is counted, whichever codec or code path.
CHILD = textwrap.dedent("""
    import json, resource, sys, time
    from functools import cached_property
    import tifffile

    mode, path, out = sys.argv[1:4]
    counted = []
    original = tifffile.TiffPage.decode.func

    def decode(page):
        inner = original(page)
        def counting(*args, **kwargs):
            counted.append(args[1])
            return inner(*args, **kwargs)
        return counting

    tifffile.TiffPage.decode = cached_property(decode)
    tifffile.TiffPage.decode.__set_name__(tifffile.TiffPage, "decode")
    with tifffile.TiffFile(path) as tif:
        strips = len(tif.pages[0].dataoffsets)
    from nucleisam.cli import main
    from nucleisam.data import read_rgb

    start = time.perf_counter()
    if mode == "decode":
        read_rgb(path)
    else:
        code = main(["predict", path, "--out", out, "--method", "classical", "--formats", "tiff,csv",
                     "--overwrite"])
        assert code == 0, code
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "strips": strips, "strip_decodes": len(counted),
                      "decodes": len(counted) / strips, "peak_rss_mb": peak_mb}))
""")


def tile_paths() -> list[Path]:
    folder = SHARED if SHARED.is_dir() else BUNDLED
    paths = sorted(folder.glob("*.png"))
    if not paths:
        raise SystemExit(f"no H&E tiles found in {SHARED} or {BUNDLED}")
    return paths


def he_image(size: int) -> np.ndarray:
    """size×size px of real H&E: the tiles in turn, each cell flipped/rotated by its position."""
    tiles = [np.asarray(Image.open(path).convert("RGB"))[:CELL, :CELL] for path in tile_paths()]
    cells = -(-size // CELL)
    image = np.empty((cells * CELL, cells * CELL, 3), dtype=np.uint8)
    for row in range(cells):
        for col in range(cells):
            index = row * cells + col
            tile = np.rot90(tiles[index % len(tiles)], k=(index // len(tiles)) % 4)
            image[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL] = tile
    return image[:size, :size]


def write_tiffs(folder: Path, size: int, codecs: list[str]) -> dict[str, Path]:
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    paths = {codec: folder / f"plain_{size}_{codec}.tif" for codec in codecs}
    missing = [codec for codec, path in paths.items() if not path.is_file()]
    if missing:
        image = he_image(size)
        for codec in missing:
            part = paths[codec].with_suffix(".part")
            tifffile.imwrite(part, image, photometric="rgb", compression=CODECS[codec],
                             resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
            os.replace(part, paths[codec])
    return paths


def run_child(mode: str, path: Path, out: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(out)], env=env,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{mode} of {path} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--codecs", default="deflate,lzw,jpeg")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "nucleisam" / "bench")
    parser.add_argument("--skip-predict", action="store_true", help="only time one decode per codec")
    args = parser.parse_args()
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    unknown = sorted(set(codecs) - set(CODECS))
    if unknown:
        parser.error(f"--codecs: unknown {', '.join(unknown)}; choose from {', '.join(CODECS)}")
    paths = write_tiffs(args.cache, args.size, codecs)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for codec in codecs:
            path = paths[codec]
            decodes = [run_child("decode", path, Path(tmp)) for _ in range(args.repeat)]
            row = {"codec": codec, "file_mb": path.stat().st_size / 1e6, "strips": decodes[0]["strips"],
                   "decode_s": float(np.median([d["seconds"] for d in decodes])),
                   "decode_peak_rss_mb": float(np.median([d["peak_rss_mb"] for d in decodes]))}
            if not args.skip_predict:
                run = run_child("predict", path, Path(tmp) / codec)
                row.update(predict_decodes=run["decodes"], predict_s=run["seconds"],
                           predict_peak_rss_mb=run["peak_rss_mb"])
            rows.append(row)

    header = f"{'codec':8} {'file MB':>8} {'strips':>7} {'decode s':>9} {'decode RSS':>11}"
    if not args.skip_predict:
        header += f" {'predict decodes':>16} {'predict s':>10} {'predict RSS':>12}"
    print(f"{args.size}² px plain TIFF, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(header)
    for row in rows:
        line = (f"{row['codec']:8} {row['file_mb']:8.1f} {row['strips']:7d} {row['decode_s']:9.3f} "
                f"{row['decode_peak_rss_mb']:9.0f} MB")
        if not args.skip_predict:
            line += (f" {row['predict_decodes']:16.2f} {row['predict_s']:10.1f} "
                     f"{row['predict_peak_rss_mb']:10.0f} MB")
        print(line)
    results = REPO / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    record = {"size": args.size, "repeat": args.repeat, "cpus": os.cpu_count(),
              "commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True, check=False).stdout.strip(),
              "rows": rows}
    (results / "decode.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
