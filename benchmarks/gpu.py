"""GPU figures in one short run: LoRA training images/s, peak memory, inference tiles/s.

Run by ``benchmarks/gpu.sh`` (which installs what an offline CUDA machine lacks); by hand::

    python benchmarks/gpu.py [--budget 420] [--out benchmarks/results/gpu.json]
    python benchmarks/gpu.py --dry-run          # tiny sizes on the CPU (also without a GPU)

Measured on the bundled NuInsSeg tiles (512², their true labels as training targets), random base
weights (speed does not depend on them), bf16 autocast as training and ``predict`` use on CUDA:

1. **training**, input 1024, LoRA mode, instance and SAM heads: optimiser steps (forward, the
   training loss, backward, AdamW) on batches already on the GPU, so the figure is the model's;
   the training loop feeds it from DataLoader workers. Images/s and peak GPU memory.
2. **inference, network alone**: :func:`~nucleisam.model.inference.tile_map_fn` (the inference
   copy, the path ``predict`` takes) on batches of 512² tiles, models at input 512 and 1024,
   host-to-device copy and maps back to numpy included.
3. **inference, end to end**: the same, with post-processing (seeded watershed) of each batch
   handed to a pool of CPU worker processes (through shared memory) while the GPU runs the next
   batch (network and post-processing overlap); tiles/s once every tile has its labels.
4. **inference, ``predict``'s own path**: :class:`~nucleisam.predict.Predictor` on a mosaic of the
   tiles, as ``nucleisam predict`` runs an image (overlapping tiles, stitching, post-processing in
   ``--postprocess-workers auto`` threads while the network runs the next batch); tiles/s.

Each measurement runs for a fixed number of seconds within ``--budget``; a measurement that would
not fit is skipped and marked. Prints one table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import sys
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from nucleisam.config import ModelConfig, PostprocessConfig  # noqa: E402
from nucleisam.data import instance_targets, load_nuinsseg  # noqa: E402
from nucleisam.model import build_model  # noqa: E402
from nucleisam.model.inference import tile_map_fn  # noqa: E402
from nucleisam.postprocess import instances_from_maps  # noqa: E402
from nucleisam.train.losses import segmentation_loss  # noqa: E402

FULL = {"train_size": 1024, "train_batch": 16, "infer_sizes": (512, 1024), "infer_batch": 64, "tile": 512,
        "seconds": 20.0}
DRY = {"train_size": 128, "train_batch": 1, "infer_sizes": (128,), "infer_batch": 2, "tile": 128,
       "seconds": 0.0}  # one step or batch each, no warm-up


def sample_batch(count: int, tile: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``count`` tiles (cycling through the bundled sample, cropped to ``tile``) and their targets."""
    samples = list(load_nuinsseg(REPO / "examples" / "NuInsSeg").samples)
    images, targets = [], []
    for index in range(count):
        sample = samples[index % len(samples)]
        images.append(sample.load_image()[:tile, :tile])
        targets.append(instance_targets(sample.load_labels()[:tile, :tile]))
    return np.stack(images), {k: np.stack([t[k] for t in targets]).astype(np.float32) for k in targets[0]}


def timed(step, seconds: float, sync) -> tuple[int, float]:
    """Run ``step`` (after one warm-up call, unless ``seconds`` is 0) until ``seconds`` have passed,
    at least once."""
    if seconds:
        step()
        sync()
    count, start = 0, time.perf_counter()
    while count == 0 or time.perf_counter() - start < seconds:
        step()
        count += 1
    sync()
    return count, time.perf_counter() - start


def train_speed(head: str, plan: dict, device: torch.device, sync) -> dict:
    torch.manual_seed(0)
    model = build_model(ModelConfig(mode="lora", head=head, input_size=plan["train_size"], weights="none"))
    model.to(device).train()
    optimiser = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    images, targets = sample_batch(plan["train_batch"], plan["tile"])
    batch = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device).float()
    target = {k: torch.from_numpy(v[:, None]).to(device) for k, v in targets.items()}
    valid = torch.ones_like(target["foreground"])
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with autocast:
            outputs = model(batch)
        segmentation_loss(outputs, target, valid)["loss"].backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps, seconds = timed(step, plan["seconds"], sync)
    row = {"measure": f"train lora:{head} input {plan['train_size']} batch {plan['train_batch']}",
           "per_s": steps * plan["train_batch"] / seconds, "unit": "images/s"}
    if device.type == "cuda":
        row["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def _post(maps: dict[str, np.ndarray]) -> int:
    config = PostprocessConfig()
    return sum(int(instances_from_maps({k: v[i] for k, v in maps.items()}, config).max())
               for i in range(len(maps["foreground"])))


def _post_shared(name: str, shape: tuple[int, ...], keys: tuple[str, ...]) -> int:
    """:func:`_post` on maps a :func:`_share` block holds (no pickling of the maps themselves)."""
    block = SharedMemory(name=name)
    try:
        stacked = np.ndarray((len(keys), *shape), np.float32, buffer=block.buf)
        nuclei = _post({key: stacked[i] for i, key in enumerate(keys)})
        del stacked  # the buffer must have no views left when the block is closed
        return nuclei
    finally:
        block.close()


def _share(maps: dict[str, np.ndarray]) -> tuple[SharedMemory, tuple[int, ...], tuple[str, ...]]:
    """Copy a batch's maps into one shared-memory block: ~3 MB a tile would otherwise be pickled
    through a pipe, which at hundreds of tiles/s is the bottleneck rather than the post-processing."""
    keys = tuple(maps)
    shape = maps[keys[0]].shape
    block = SharedMemory(create=True, size=len(keys) * maps[keys[0]].nbytes)
    stacked = np.ndarray((len(keys), *shape), np.float32, buffer=block.buf)
    for i, key in enumerate(keys):
        stacked[i] = maps[key]
    del stacked
    return block, shape, keys


def _finish(job: tuple[Future, SharedMemory]) -> None:
    future, block = job
    try:
        future.result()
    finally:
        block.close()
        block.unlink()


def _warm(_: int) -> int:
    return _post({k: np.zeros((1, 32, 32), np.float32) for k in ("foreground", "center_distance")})


def infer_speed(size: int, plan: dict, device: torch.device, sync, pool: ProcessPoolExecutor,
                workers: int) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(input_size=size, weights="none"))
    run = tile_map_fn(model, device)
    tiles, _ = sample_batch(plan["infer_batch"], plan["tile"])
    batches, seconds = timed(lambda: run(tiles), plan["seconds"], sync)
    network = batches * len(tiles) / seconds

    pending: list[tuple[Future, SharedMemory]] = []
    done = 0
    start = time.perf_counter()
    while done == 0 or time.perf_counter() - start < plan["seconds"]:
        block, shape, keys = _share(run(tiles))  # the GPU goes on while workers post-process
        pending.append((pool.submit(_post_shared, block.name, shape, keys), block))
        while len(pending) > 2 * workers:  # a bounded queue: end to end, not the network alone
            _finish(pending.pop(0))
            done += 1
    for job in pending:
        _finish(job)
        done += 1
    end_to_end = done * len(tiles) / (time.perf_counter() - start)
    label = f"input {size}, {plan['tile']}² tiles, batch {plan['infer_batch']}"
    return [{"measure": f"infer network {label}", "per_s": network, "unit": "tiles/s"},
            {"measure": f"infer end to end {label}, {workers} post-processing workers",
             "per_s": end_to_end, "unit": "tiles/s"},
            predict_speed(model, size, tiles, plan, device, sync)]


def predict_speed(model: torch.nn.Module, size: int, tiles: np.ndarray, plan: dict, device: torch.device,
                  sync) -> dict:
    """Tiles/s of ``Predictor.predict`` (the path ``nucleisam predict`` takes for an image) on a
    square mosaic of ``tiles``, post-processing threads as ``--postprocess-workers auto`` picks."""
    from nucleisam.predict import Predictor

    side = max(1, int(len(tiles) ** 0.5))
    rows = [np.concatenate(list(tiles[r * side:(r + 1) * side]), axis=1) for r in range(side)]
    mosaic = np.ascontiguousarray(np.concatenate(rows, axis=0))
    predictor = Predictor.from_model(model, device=str(device), tile=plan["tile"], overlap=plan["tile"] // 8,
                                     batch_size=plan["infer_batch"])
    counted = []
    calls, seconds = timed(lambda: counted.append(predictor.predict(mosaic).n_tiles), plan["seconds"], sync)
    return {"measure": f"infer predict path input {size}, {mosaic.shape[0]}² mosaic, batch "
                       f"{plan['infer_batch']}, {predictor.postprocess_workers} post-processing threads",
            "per_s": sum(counted[-calls:]) / seconds, "unit": "tiles/s"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, one step each, on the CPU")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all measurements")
    parser.add_argument("--workers", type=int, default=0, help="post-processing processes (0: CPUs - 1)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu.json")
    args = parser.parse_args()
    started = time.perf_counter()
    # Random base weights are intended here (speed does not depend on them): silence the warning.
    warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
    logging.getLogger("nucleisam").setLevel(logging.ERROR)
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("gpu.py: torch sees no CUDA GPU: a dry run on the CPU instead (tiny sizes, one step each)")
    device = torch.device("cuda" if cuda else "cpu")
    plan = FULL if cuda else DRY
    if not cuda:
        torch.set_num_threads(1)  # a check of the script, often beside other work on a small machine

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    workers = args.workers or (1 if args.dry_run else max(1, cpus - 1))
    # One measurement per training head and three per inference size, each ~plan seconds plus setup.
    jobs = [("train", head) for head in ("instance", "sam")] + [("infer", s) for s in plan["infer_sizes"]]
    rows = []
    # Spawned, not forked: the parent holds CUDA and many threads. Started before the measurements.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_warm, range(workers)))
        for kind, what in jobs:
            if time.perf_counter() - started > args.budget - 4 * plan["seconds"] - 30:
                rows.append({"measure": f"{kind} {what}", "per_s": None, "unit": "skipped: budget"})
                continue
            done = len(rows)
            if kind == "train":
                rows.append(train_speed(str(what), plan, device, sync))
            else:
                rows.extend(infer_speed(int(what), plan, device, sync, pool, workers))
            for row in rows[done:]:
                print(f"  {row['measure']}: {row['per_s']:.2f} {row['unit']}", flush=True)
            if cuda:
                torch.cuda.empty_cache()
    machine = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name() if cuda else f"CPU dry run ({platform.processor() or 'cpu'})",
        "torch": torch.__version__, "python": platform.python_version(), "cpus": cpus, "workers": workers,
        "dry_run": not cuda, "seconds": time.perf_counter() - started,
    }
    print(f"\n{machine['device']}, torch {machine['torch']}, {cpus} CPUs, {machine['date']}")
    print(f"{'measure':<78} {'per s':>9} {'unit':<9} {'peak GiB':>8}")
    for row in rows:
        value = "-" if row["per_s"] is None else f"{row['per_s']:.1f}"
        peak = f"{row['peak_gpu_gib']:.1f}" if "peak_gpu_gib" in row else ""
        print(f"{row['measure']:<78} {value:>9} {row['unit']:<9} {peak:>8}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.out} in {machine['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
