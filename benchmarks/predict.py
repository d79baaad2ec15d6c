"""Inference speed and memory: tiles per second, the network / post-processing split, and the peak
memory of predicting and exporting an 8192×8192 image.

Usage::

    python benchmarks/predict.py [--sections throughput,exports,memory] [--tiles 6]
                                 [--memory-size 8192] [--memory-method model|classical] [--device cpu]

- ``throughput``: the bundled 512×512 sample tiles, one tile each, through a randomly initialised
  NucleiSam (instance head) built for input 512 and 1024, post-processing included. Random weights
  give the network's real cost but meaningless maps, so the post-processing is also timed on
  realistic maps (the training targets of the true labels); tiles/s is reported for both. The
  classical baseline's tiles/s is the reference.
- ``exports``: all four exports of an 8192×8192 image tiled from a sample tile and its true labels
  (≈ 48,600 nuclei), in a fresh process: seconds and peak resident memory.
- ``memory``: ``nucleisam predict``'s whole path (tiled prediction + exports) on the same 8192×8192
  image in a fresh process: peak resident memory (the goal: under 4 GB on CPU).

Prints tables and writes ``benchmarks/results/predict.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from nucleisam.data import read_label_map, read_rgb  # noqa: E402
from nucleisam.exports import export_all  # noqa: E402

SAMPLE = REPO / "examples" / "NuInsSeg" / "human spleen"
BIG_SOURCE = "human_spleen_25"  # the sample tile with the most nuclei (190)


def sample_tiles(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    stems = sorted(path.stem for path in (SAMPLE / "tissue images").glob("*.png"))[:count]
    return [(read_rgb(SAMPLE / "tissue images" / f"{stem}.png"),
             read_label_map(SAMPLE / "label masks modify" / f"{stem}.tif")) for stem in stems]


def big_image(size: int) -> tuple[np.ndarray, np.ndarray]:
    """A size×size image tiled from one sample tile, and its labels with distinct ids per copy."""
    image = read_rgb(SAMPLE / "tissue images" / f"{BIG_SOURCE}.png")
    labels = read_label_map(SAMPLE / "label masks modify" / f"{BIG_SOURCE}.tif")
    reps = -(-size // image.shape[0])
    big = np.tile(image, (reps, reps, 1))[:size, :size]
    per_copy = int(labels.max())
    offsets = np.arange(reps * reps, dtype=np.int32).reshape(reps, reps) * per_copy
    tiled = np.tile(labels.astype(np.int32), (reps, reps))
    big_labels = np.where(tiled > 0, tiled + np.kron(offsets, np.ones(labels.shape, np.int32)), 0)
    return np.ascontiguousarray(big), np.ascontiguousarray(big_labels[:size, :size])


def throughput(count: int, device: str) -> list[dict]:
    import torch

    from nucleisam.config import ModelConfig, PostprocessConfig
    from nucleisam.data import instance_targets
    from nucleisam.model import build_model
    from nucleisam.postprocess import labels_from_maps
    from nucleisam.predict.predictor import Predictor

    tiles = sample_tiles(count)
    config = PostprocessConfig()
    realistic = [{name: np.asarray(value, np.float32) for name, value in instance_targets(labels).items()}
                 for _, labels in tiles]
    start = time.perf_counter()
    for maps in realistic:
        labels_from_maps(maps, config)
    post_realistic = (time.perf_counter() - start) / len(tiles)

    rows = []
    for input_size in (512, 1024):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the random-initialisation warning: intended here
            model = build_model(ModelConfig(input_size=input_size, weights="none"))
        predictor = Predictor.from_model(model, postprocess=config, device=device, tile=512, batch_size=1)
        predictor.predict(tiles[0][0])  # warm-up (allocator, kernels)
        network = post = total = 0.0
        for image, _ in tiles:
            result = predictor.predict(image)
            network += result.network_seconds
            post += result.postprocess_seconds
            total += result.seconds
        per_tile = network / len(tiles)
        rows.append({
            "method": f"NucleiSam input {input_size} ({device}, {torch.get_num_threads()} threads)",
            "network_s_per_tile": per_tile,
            "postprocess_s_per_tile_random_maps": post / len(tiles),
            "postprocess_s_per_tile_realistic_maps": post_realistic,
            "tiles_per_s_end_to_end_random_maps": len(tiles) / total,
            "tiles_per_s_realistic": 1.0 / (per_tile + post_realistic),
            "network_share_realistic": per_tile / (per_tile + post_realistic),
        })

    classical = Predictor.classical(tile=512)
    classical.predict(tiles[0][0])
    start = time.perf_counter()
    for image, _ in tiles:
        classical.predict(image)
    seconds = (time.perf_counter() - start) / len(tiles)
    rows.append({"method": "classical baseline", "network_s_per_tile": 0.0,
                 "postprocess_s_per_tile_realistic_maps": seconds, "tiles_per_s_realistic": 1.0 / seconds,
                 "network_share_realistic": 0.0})
    return rows


def child(task: dict) -> dict:
    """Runs in a fresh interpreter so ru_maxrss is this task's peak alone."""
    image, labels = big_image(task["size"])
    out = Path(task["out"])
    start = time.perf_counter()
    if task["kind"] == "exports":
        prediction_seconds = 0.0
    else:
        from nucleisam.predict.predictor import Predictor

        if task["method"] == "classical":
            predictor = Predictor.classical(tile=512, overlap=64)
        else:
            from nucleisam.config import ModelConfig
            from nucleisam.model import build_model

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = build_model(ModelConfig(input_size=task["input_size"], weights="none"))
            predictor = Predictor.from_model(model, device=task["device"], tile=512, overlap=64, batch_size=4)
        del labels
        result = predictor.predict(image)
        labels = result.labels
        prediction_seconds = time.perf_counter() - start
    export_start = time.perf_counter()
    export_all(labels, image, out, "big", mpp=0.25, overwrite=True)
    return {
        "task": task["kind"], "method": task.get("method", ""), "size": task["size"],
        "nuclei": int(len(np.unique(labels)) - 1),
        "prediction_s": prediction_seconds, "export_s": time.perf_counter() - export_start,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "geojson_mib": (out / "big_nuclei.geojson").stat().st_size / 2**20,
    }


def run_child(task: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        task = {**task, "out": tmp}
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(task)], check=True,
                              capture_output=True, text=True)
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="throughput,exports,memory")
    parser.add_argument("--tiles", type=int, default=6, help="sample tiles for the throughput section")
    parser.add_argument("--memory-size", type=int, default=8192)
    parser.add_argument("--memory-method", choices=["model", "classical"], default="model")
    parser.add_argument("--input-size", type=int, default=512, help="model input for the memory section")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    sections = args.sections.split(",")
    report: dict = {"machine": platform.platform(), "python": platform.python_version(), "cpus": _cpus()}
    if "throughput" in sections:
        rows = report["throughput"] = throughput(args.tiles, args.device)
        print(f"\nthroughput: {args.tiles} sample tiles of 512x512, one tile per image")
        print(f"{'method':<44} {'net s/tile':>10} {'post s/tile':>11} {'tiles/s':>8} {'net share':>9}")
        for row in rows:
            print(f"{row['method']:<44} {row['network_s_per_tile']:>10.3f} "
                  f"{row['postprocess_s_per_tile_realistic_maps']:>11.3f} "
                  f"{row['tiles_per_s_realistic']:>8.2f} {row['network_share_realistic']:>9.0%}")
    large = []
    if "exports" in sections:
        large.append(run_child({"kind": "exports", "size": args.memory_size}))
    if "memory" in sections:
        large.append(run_child({"kind": "predict", "size": args.memory_size, "method": args.memory_method,
                                "input_size": args.input_size, "device": args.device}))
    if large:
        report["large_image"] = large
        print(f"\n{args.memory_size}x{args.memory_size} image")
        print(f"{'task':<10} {'method':<10} {'nuclei':>8} {'predict s':>10} {'export s':>9} "
              f"{'peak RSS MiB':>12}")
        for row in large:
            print(f"{row['task']:<10} {row['method']:<10} {row['nuclei']:>8,} {row['prediction_s']:>10.1f} "
                  f"{row['export_s']:>9.1f} {row['peak_rss_mib']:>12.0f}")
    out = REPO / "benchmarks" / "results" / "predict.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    main()
