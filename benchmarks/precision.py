"""bf16 against fp32 maps: how far the one inference path's precisions disagree, and what each costs.

Usage::

    python benchmarks/precision.py [--adapter A.safetensors] [--input-size 512] [--tiles 4]
                                   [--device auto|cpu|cuda[:N]]

For each bundled sample tile the maps are computed with ``precision="fp32"`` and ``"bf16"``
(:func:`nucleisam.model.inference.predict_maps`, the function validation and ``predict`` share),
then post-processed with the adapter's recorded parameters (defaults without ``--adapter``). The
table gives the largest absolute map difference, the AJI of the bf16 instances against the fp32
instances, and seconds per tile for each precision. Without ``--adapter`` the network is randomly
initialised: map differences and timings are real, instance agreement then only says how often a
noisy map flips. Writes ``benchmarks/results/precision.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from nucleisam.config import ModelConfig, PostprocessConfig  # noqa: E402
from nucleisam.data import read_rgb  # noqa: E402
from nucleisam.metrics import aji  # noqa: E402
from nucleisam.model import adapter_postprocess, build_model, load_adapter  # noqa: E402
from nucleisam.model.inference import predict_maps, resolve_device  # noqa: E402
from nucleisam.postprocess import instances_from_maps  # noqa: E402

SAMPLE = REPO / "examples" / "NuInsSeg" / "human spleen" / "tissue images"


def load(args: argparse.Namespace) -> tuple[torch.nn.Module, PostprocessConfig]:
    if args.adapter:
        model, metadata = load_adapter(args.adapter)
        return model, adapter_postprocess(metadata, args.adapter)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random base weights, intended here
        config = ModelConfig(mode="lora", head="instance", input_size=args.input_size, weights="none")
        model = build_model(config)
    return model, PostprocessConfig()


def timed_maps(model: torch.nn.Module, tiles: list[np.ndarray], device: torch.device, precision: str):
    predict_maps(model, tiles[:1], device=device, precision=precision)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    maps = predict_maps(model, tiles, device=device, batch_size=1, precision=precision)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return maps, (time.perf_counter() - start) / len(tiles)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument("--tiles", type=int, default=4)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    model, postprocess = load(args)
    model.to(device)
    tiles = [read_rgb(path) for path in sorted(SAMPLE.glob("*.png"))[: args.tiles]]
    fp32, fp32_seconds = timed_maps(model, tiles, device, "fp32")
    bf16, bf16_seconds = timed_maps(model, tiles, device, "bf16")
    differences = {
        name: max(float(np.abs(a[name] - b[name]).max()) for a, b in zip(fp32, bf16, strict=True))
        for name in fp32[0]
    }
    agreement = [aji(instances_from_maps(a, postprocess), instances_from_maps(b, postprocess))
                 for a, b in zip(fp32, bf16, strict=True)]
    result = {
        "device": str(device),
        "machine": platform.processor() or platform.machine(),
        "weights": args.adapter or "random",
        "input_size": args.input_size,
        "tiles": len(tiles),
        "max_abs_difference": differences,
        "aji_bf16_vs_fp32_mean": float(np.mean(agreement)),
        "aji_bf16_vs_fp32_min": float(np.min(agreement)),
        "seconds_per_tile": {"fp32": fp32_seconds, "bf16": bf16_seconds},
    }
    print(f"device {device}, weights {result['weights']}, input {args.input_size}, {len(tiles)} tiles")
    print("| map | max abs difference bf16 vs fp32 |\n|---|---|")
    for name, value in differences.items():
        print(f"| {name} | {value:.4f} |")
    print(f"instances: AJI(bf16 vs fp32) mean {result['aji_bf16_vs_fp32_mean']:.4f}, "
          f"min {result['aji_bf16_vs_fp32_min']:.4f}")
    print(f"seconds per tile: fp32 {fp32_seconds:.3f}, bf16 {bf16_seconds:.3f}")
    out = REPO / "benchmarks" / "results" / "precision.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
