"""Synthetic H&E-like images with known nuclei, and a deterministic stand-in for the network.

Shared by the tiling and predictor tests: the answer (the label map) is known by construction, and
the map/label functions are plain image processing, so tiled and whole-image runs can be compared
exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import ellipse
from skimage.feature import peak_local_max
from skimage.segmentation import watershed

BACKGROUND_RGB = (236, 208, 222)
NUCLEUS_RGB = (95, 70, 150)


def synthetic_nuclei(
    height: int,
    width: int,
    *,
    spacing: int = 28,
    radius: tuple[float, float] = (5.0, 12.0),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Ellipses on a jittered grid (neighbours may touch; later ones overlap earlier ones).

    Returns the RGB uint8 image (H, W, 3) and the int32 label map (ids 1..n, no gaps).
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), dtype=np.int32)
    next_id = 1
    for cy in range(spacing // 2, height, spacing):
        for cx in range(spacing // 2, width, spacing):
            jy, jx = rng.uniform(-spacing / 4, spacing / 4, size=2)
            ry, rx = rng.uniform(*radius, size=2)
            rr, cc = ellipse(cy + jy, cx + jx, ry, rx, shape=labels.shape, rotation=rng.uniform(0, np.pi))
            labels[rr, cc] = next_id
            next_id += 1
    ids = np.unique(labels)
    lookup = np.zeros(next_id, dtype=np.int32)
    lookup[ids] = np.arange(len(ids), dtype=np.int32)
    labels = lookup[labels]

    noise = rng.normal(0.0, 6.0, size=(height, width, 3))
    colour = np.where((labels > 0)[..., None], np.array(NUCLEUS_RGB, float), np.array(BACKGROUND_RGB, float))
    image = np.clip(np.rint(colour + noise), 0, 255).astype(np.uint8)
    return image, labels


def threshold_maps(tiles: np.ndarray) -> dict[str, np.ndarray]:
    """Network stand-in: (B, h, w, 3) uint8 → {"foreground": probability (B, h, w)} from darkness."""
    darkness = 255.0 - tiles.astype(np.float32).mean(axis=-1)
    return {"foreground": np.clip((darkness - 60.0) / 60.0, 0.0, 1.0).astype(np.float32)}


def distance_watershed(maps: Mapping[str, np.ndarray], image: np.ndarray | None = None) -> np.ndarray:
    """Post-processing stand-in: threshold, distance-transform peaks as seeds, watershed."""
    foreground = maps["foreground"] > 0.5
    distance = ndi.distance_transform_edt(foreground)
    blobs, _ = ndi.label(foreground)
    peaks = peak_local_max(distance, min_distance=4, labels=blobs, exclude_border=False)
    markers = np.zeros(foreground.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=foreground).astype(np.int32)


def darkness_model():  # -> torch.nn.Module, built lazily so this module imports without torch
    """A model stand-in that obeys the NucleiSam contract without weights.

    ``forward(images (B, 3, H, W) float 0–255)`` returns ``foreground`` logits (positive where the
    pixel is darker than a nucleus threshold) and ``center_distance`` / ``boundary_distance`` in
    [0, 1], all (B, 1, H, W). Its foreground probability equals :func:`threshold_maps`' exactly at
    the 0.5 level, so the same post-processing gives the same instances.
    """
    import torch
    from torch import nn

    class DarknessModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(0.1))  # so .to(device) has something to move

        def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"expected (B, 3, H, W), got {tuple(images.shape)}")
            darkness = 255.0 - images.float().mean(dim=1, keepdim=True)
            logits = (darkness - 90.0) * self.scale
            probability = torch.sigmoid(logits)
            return {
                "foreground": logits,
                "center_distance": 1.0 - probability,
                "boundary_distance": probability,
            }

    return DarknessModel()
