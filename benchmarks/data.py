"""Data-layer speed: opening a data set, summarising it, decoding tiles, resizing and augmenting.

Usage: ``python benchmarks/data.py [ROOT]`` (default: the shared NuInsSeg copy when present, else
the bundled sample). Prints a table and writes ``benchmarks/results/data.json``.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from nucleisam.data import Augmenter, make_folds, open_dataset, summarize, to_model_input  # noqa: E402


def timed(repeats: int, work: Callable[[], object]) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return times


def best_of(repeats: int, work: Callable[[], object]) -> float:
    """Fastest of ``repeats`` runs, in seconds (the least disturbed by other load on the machine)."""
    return min(timed(repeats, work))


def mean_of(repeats: int, work: Callable[[], object]) -> float:
    """Mean over ``repeats`` runs: for random work whose cost depends on what the draw applies."""
    return float(np.mean(timed(repeats, work)))


def main() -> None:
    shared = REPO.parent / "shared" / "data" / "NuInsSeg"
    default = shared if shared.is_dir() else REPO / "examples" / "NuInsSeg"
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    dataset = open_dataset(root)
    n = len(dataset)
    sample = dataset[0]
    image, labels, vague = sample.load_image(), sample.load_labels(), sample.load_vague()
    maps = {"foreground": (labels > 0).astype(np.float32)}
    augment_all = Augmenter(p_hflip=0.5, p_vflip=0.5, p_rot90=0.5, p_scale=1.0, p_stain=1.0, p_blur=1.0)
    augment_default = Augmenter()
    seeds = iter(range(10**6))

    rows = [
        ("open data set (headers only)", n, best_of(3, lambda: open_dataset(root))),
        ("summarise (read all labels + vague masks)", n, best_of(3, lambda: summarize(dataset))),
        ("decode image + labels + vague, per tile", 1,
         best_of(5, lambda: (sample.load_image(), sample.load_labels(), sample.load_vague()))),
        ("make 5 folds with validation", n, best_of(5, lambda: make_folds(dataset.samples))),
        ("to_model_input 1024 (image + labels)", 1,
         best_of(5, lambda: (to_model_input(image, 1024), to_model_input(labels, 1024, kind="labels")))),
        ("augment, default probabilities (mean of 40)", 1,
         mean_of(40, lambda: augment_default(image, labels, vague, maps, rng=next(seeds)))),
        ("augment, every transform applied", 1,
         best_of(10, lambda: augment_all(image, labels, vague, maps, rng=next(seeds)))),
    ]
    print(f"data: {root} ({n} tiles, {image.shape[0]}x{image.shape[1]})")
    print(f"{'operation':<45} {'tiles':>5} {'seconds':>9}")
    for name, tiles, seconds in rows:
        print(f"{name:<45} {tiles:>5} {seconds:>9.4f}")
    out = REPO / "benchmarks" / "results" / "data.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "root": str(root), "tiles": n, "machine": platform.platform(), "python": platform.python_version(),
        "results": [{"operation": name, "tiles": tiles, "seconds": seconds} for name, tiles, seconds in rows],
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
