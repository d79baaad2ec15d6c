"""Test-only helpers for the training tests: synthetic nuclei tiles and a tiny stand-in model.

The stand-in obeys the NucleiSam contract (0–255 RGB in, dict of native-size maps out, frozen part
kept in eval mode, ``trainable_parameters()``) so the generic loop can be tested in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image
from scipy import ndimage

from nucleisam.data import Sample, load_nuinsseg
from nucleisam.model.mobilesam import normalize_for_sam


def synthetic_tile(
    rng: np.random.Generator, size: int = 32, nuclei: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Pink background with dark purple discs; returns (RGB uint8, int32 labels)."""
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    for idx in range(1, nuclei + 1):
        cy, cx = rng.integers(4, size - 4, size=2)
        radius = rng.integers(2, 5)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = idx
    image = np.empty((size, size, 3), np.float64)
    image[:] = (230, 180, 210)
    image[labels > 0] = (90, 40, 140)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def simple_targets(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Foreground plus per-object normalised distances (stand-in until the data layer's targets)."""
    foreground = (labels > 0).astype(np.float32)
    boundary = np.zeros(labels.shape, np.float32)
    center = np.zeros(labels.shape, np.float32)
    for idx in np.unique(labels[labels > 0]):
        mask = labels == idx
        inside = ndimage.distance_transform_edt(mask)
        boundary[mask] = inside[mask] / inside.max()
        cy, cx = ndimage.center_of_mass(mask)
        yy, xx = np.nonzero(mask)
        dist = np.hypot(yy - cy, xx - cx)
        center[yy, xx] = dist / max(dist.max(), 1e-6)
    return {"foreground": foreground, "center_distance": center, "boundary_distance": boundary}


def write_samples(root: Path, count: int = 8, size: int = 32, seed: int = 0) -> list[Sample]:
    """Write ``count`` synthetic tiles in the NuInsSeg layout (vague square on every other tile) and
    return the data layer's samples for them, sorted by name."""
    rng = np.random.default_rng(seed)
    organ = root / "human synthetic"
    for folder in ("tissue images", "label masks modify", "vague areas/mask binary"):
        (organ / folder).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, labels = synthetic_tile(rng, size=size)
        stem = f"tile_{i:02d}"
        Image.fromarray(image).save(organ / "tissue images" / f"{stem}.png")
        tifffile.imwrite(organ / "label masks modify" / f"{stem}.tif", labels.astype(np.uint16))
        if i % 2 == 1:
            mask = np.zeros((size, size), np.uint8)
            mask[: size // 4, : size // 4] = 255
            Image.fromarray(mask).save(organ / "vague areas" / "mask binary" / f"{stem}.png")
    return list(load_nuinsseg(root, strict=True).samples)


class TinyNucleiNet(torch.nn.Module):
    """Frozen conv+BatchNorm "encoder" and a small trainable head with dropout.

    forward(images (B,3,H,W) 0–255) → {"foreground": logits, "center_distance",
    "boundary_distance": in [0, 1]}, each (B,1,H,W). ``instance=False`` gives the SAM-head shape.
    """

    def __init__(self, instance: bool = True, width: int = 8) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.BatchNorm2d(width), torch.nn.ReLU()
        )
        for param in self.encoder.parameters():
            param.requires_grad_(False)
        self.head = torch.nn.Sequential(
            torch.nn.Conv2d(width, width, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Dropout2d(0.1),
            torch.nn.Conv2d(width, 3 if instance else 1, 1),
        )
        self.instance = instance

    def train(self, mode: bool = True) -> TinyNucleiNet:
        super().train(mode)
        self.encoder.eval()
        return self

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.head(self.encoder(normalize_for_sam(images)))
        out = {"foreground": maps[:, :1]}
        if self.instance:
            out["center_distance"] = torch.sigmoid(maps[:, 1:2])
            out["boundary_distance"] = torch.sigmoid(maps[:, 2:3])
        return out
