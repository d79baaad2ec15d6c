"""The one path from a model to per-pixel maps, with one device policy and one precision policy.

Validation during training, post-processing tuning, ``nucleisam predict`` and slide inference all
call :func:`map_batch` (directly or through :func:`predict_maps` / :func:`tile_map_fn`), so the
parameters tuned on validation maps are applied to maps computed the same way.

Devices are named ``auto`` (CUDA when torch sees a GPU, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
Precision ``auto`` is bf16 autocast on CUDA and fp32 on CPU: on CPU, bf16 is slower than fp32 on
most processors and its maps differ (``benchmarks/precision.py`` measures both); on CUDA bf16 is the
fast path the GPU benchmark times.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from nucleisam.errors import NucleisamError

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
#: A function from an RGB uint8 tile batch (B, H, W, 3) to float32 maps, each (B, H, W).
MapFn = Callable[[np.ndarray], dict[str, np.ndarray]]


def resolve_device(device: str | torch.device = "auto", *, local_rank: int = 0) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a :class:`torch.device`.

    ``auto`` and a bare ``cuda`` pick GPU ``local_rank`` (modulo the GPU count), so each process of
    a multi-GPU job gets its own. An absent GPU or an unknown name raises :class:`NucleisamError`
    naming the parameter ``device``.
    """
    if isinstance(device, torch.device):
        spec = str(device)
    else:
        spec = str(device).strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        resolved = torch.device(spec)
    except RuntimeError as exc:
        raise NucleisamError(
            f"device {device!r} is not a device name; use auto, cpu, cuda or cuda:N."
        ) from exc
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise NucleisamError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N.")
    if not torch.cuda.is_available():
        raise NucleisamError(
            f"device {device!r}: torch sees no CUDA GPU here (CPU build or no driver); use cpu or auto, "
            "or install a CUDA build of PyTorch (see README)."
        )
    count = torch.cuda.device_count()
    if resolved.index is None:
        return torch.device("cuda", local_rank % count)
    if resolved.index >= count:
        raise NucleisamError(
            f"device {device!r}: only {count} CUDA GPU(s) are visible (cuda:0..{count - 1})."
        )
    return resolved


def resolve_precision(precision: str, device: torch.device) -> Literal["fp32", "bf16"]:
    """``auto`` → bf16 on CUDA, fp32 on CPU; ``fp32``/``bf16`` as given."""
    if precision not in PRECISIONS:
        raise NucleisamError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}.")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision  # type: ignore[return-value]


@torch.inference_mode()
def map_batch(
    model: torch.nn.Module, tiles: np.ndarray, *, device: torch.device, precision: str = "auto"
) -> dict[str, np.ndarray]:
    """Run ``model`` on one batch of tiles.

    Args:
        model: a NucleiSam-like module in eval mode: (B, 3, H, W) RGB on the 0–255 scale → dict of
            (B, 1, H, W) maps with ``foreground`` as logits.
        tiles: RGB uint8 (B, H, W, 3).
    Returns:
        float32 numpy maps, each (B, H, W); ``foreground`` is a probability, distances as they come.
    """
    dtype = torch.bfloat16 if resolve_precision(precision, device) == "bf16" else None
    batch = torch.from_numpy(np.ascontiguousarray(tiles.transpose(0, 3, 1, 2))).to(device).float()
    bf16 = torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else None
    with bf16 or contextlib.nullcontext():
        outputs = model(batch)
    maps = {}
    for name, value in outputs.items():
        value = value.float()
        if name == "foreground":
            value = torch.sigmoid(value)
        maps[name] = value[:, 0].cpu().numpy()
    return maps


def tile_map_fn(model: torch.nn.Module, device: torch.device, precision: str = "auto") -> MapFn:
    """:func:`map_batch` bound to a model, device and precision: the tile-batch function that tiled
    and slide inference call. Puts the model on ``device`` in eval mode."""
    model.to(device).eval()

    def run(tiles: np.ndarray) -> dict[str, np.ndarray]:
        return map_batch(model, tiles, device=device, precision=precision)

    return run


def predict_maps(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    *,
    device: torch.device,
    batch_size: int = 4,
    precision: str = "auto",
) -> list[dict[str, np.ndarray]]:
    """Maps for whole RGB uint8 (H, W, 3) images, each map float32 (H, W); images of one size are
    batched together (validation and test tiles, which are small enough to run whole)."""
    model.eval()
    out: list[dict[str, np.ndarray] | None] = [None] * len(images)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(index)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            maps = map_batch(model, np.stack([images[i] for i in chunk]), device=device, precision=precision)
            for row, i in enumerate(chunk):
                out[i] = {name: value[row] for name, value in maps.items()}
    return out  # type: ignore[return-value]
