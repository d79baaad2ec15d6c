"""Training speed: seconds per training image (forward, loss, backward, optimiser step, data loading).

Runs the real training loop (:func:`nucleisam.train.loop.fit`) for two short epochs on synthetic
512² H&E-like tiles (plus the bundled sample with ``--include-sample``) and times the second epoch,
for each model input size and mode/head. Base weights are random (the speed is the same as with
the pretrained checkpoint). Prints a table and writes ``benchmarks/results/train.json``.

    python benchmarks/train.py                                  # CPU, 512 and 1024, main modes
    python benchmarks/train.py --device cuda --amp --sizes 1024 --images 32 --inference
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from nucleisam.config import ModelConfig, TrainConfig  # noqa: E402
from nucleisam.data import load_nuinsseg  # noqa: E402
from nucleisam.model import build_model  # noqa: E402
from nucleisam.model.inference import predict_maps  # noqa: E402
from nucleisam.train.dataset import SampleCache, TrainingDataset  # noqa: E402
from nucleisam.train.distributed import DistContext  # noqa: E402
from nucleisam.train.loop import fit  # noqa: E402

DEFAULT_VARIANTS = ("lora:instance", "lora:sam", "decoder:instance", "full:instance", "seed:sam")


def synthetic_root(folder: Path, count: int, size: int = 512, seed: int = 0) -> Path:
    """``count`` tiles of dark discs on pink in the NuInsSeg layout (organ "synthetic tissue")."""
    import tifffile

    rng = np.random.default_rng(seed)
    organ = folder / "human synthetic"
    (organ / "tissue images").mkdir(parents=True, exist_ok=True)
    (organ / "label masks modify").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(count):
        labels = np.zeros((size, size), np.uint16)
        for idx in range(1, 80):
            cy, cx = rng.integers(8, size - 8, size=2)
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= int(rng.integers(4, 9)) ** 2] = idx
        image = np.empty((size, size, 3), np.float64)
        image[:] = (232, 182, 212)
        image[labels > 0] = (95, 45, 145)
        image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(organ / "tissue images" / f"synthetic_{i:03d}.png")
        tifffile.imwrite(organ / "label masks modify" / f"synthetic_{i:03d}.tif", labels)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="512,1024", help="model input sizes (comma-separated)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="mode:head pairs")
    parser.add_argument("--images", type=int, default=4, help="synthetic training tiles per epoch")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--include-sample", action="store_true", help="add the bundled NuInsSeg sample tiles")
    parser.add_argument("--inference", action="store_true", help="also time inference (tiles/s)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA requested but torch sees no GPU", file=sys.stderr)
        return 2
    # Random base weights are intended here (speed does not depend on them): silence the warning.
    warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
    logging.getLogger("nucleisam").setLevel(logging.ERROR)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        samples = list(load_nuinsseg(synthetic_root(Path(tmp) / "synthetic", args.images)).samples)
        if args.include_sample:
            samples += list(load_nuinsseg(REPO / "examples" / "NuInsSeg").samples)
        cache = SampleCache("memory")
        cache.prefill(samples)
        images = [cache.get(s).image for s in samples]
        for size in (int(s) for s in args.sizes.split(",")):
            for variant in args.variants.split(","):
                mode, head = variant.split(":")
                torch.manual_seed(0)
                model = build_model(ModelConfig(mode=mode, head=head, input_size=size, weights="none"))
                config = TrainConfig(
                    epochs=2,
                    batch_size=args.batch_size,
                    num_workers=0,
                    progress=False,
                    amp=args.amp,
                    device=args.device,
                    warmup_fraction=0.0,
                )
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                result = fit(
                    model,
                    TrainingDataset(samples, cache),
                    config,
                    out_dir=Path(tmp) / f"{mode}-{head}-{size}",
                    context=DistContext(device=device),
                    log=lambda _: None,
                )
                seconds = result.history[-1]["seconds"]
                row = {
                    "input_size": size,
                    "mode": mode,
                    "head": head,
                    "images": len(samples),
                    "batch_size": args.batch_size,
                    "seconds_per_image": seconds / len(samples),
                    "images_per_second": len(samples) / seconds,
                }
                if device.type == "cuda":
                    row["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
                if args.inference:
                    precision = "auto" if args.amp else "fp32"
                    warm_up = images[: args.batch_size]
                    predict_maps(model, warm_up, device=device, precision=precision)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    started = time.perf_counter()
                    predict_maps(model, images, device=device, batch_size=args.batch_size,
                                 precision=precision)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    row["inference_tiles_per_second"] = len(images) / (time.perf_counter() - started)
                results.append(row)
                extra = "".join(
                    f"  {k} {row[k]:.2f}"
                    for k in ("peak_gpu_memory_gib", "inference_tiles_per_second")
                    if k in row
                )
                print(
                    f"input {size:4d}  {mode:7s} {head:8s}  {row['seconds_per_image']:7.3f} s/image  "
                    f"{row['images_per_second']:6.2f} images/s{extra}",
                    flush=True,
                )
                del model
    machine = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "amp": args.amp,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
