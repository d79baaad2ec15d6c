"""Batched model inference on whole tiles, as used for validation and test scoring."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


@torch.no_grad()
def predict_maps(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    *,
    device: torch.device,
    batch_size: int = 4,
    amp: bool = True,
) -> list[dict[str, np.ndarray]]:
    """Model maps for RGB uint8 images (H,W,3): ``foreground`` as a probability, distances as they
    come, each float32 (H,W) at native size. Images of equal size are batched together."""
    model.eval()
    out: list[dict[str, np.ndarray] | None] = [None] * len(images)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(index)
    use_bf16 = amp and device.type == "cuda"
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            batch = (
                torch.from_numpy(np.stack([images[i] for i in chunk])).permute(0, 3, 1, 2).float().to(device)
            )
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_bf16):
                maps = model(batch)
            maps = {k: v.float() for k, v in maps.items()}
            maps["foreground"] = torch.sigmoid(maps["foreground"])
            for row, i in enumerate(chunk):
                out[i] = {k: v[row, 0].cpu().numpy() for k, v in maps.items()}
    return out  # type: ignore[return-value]
