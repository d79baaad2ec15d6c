"""Deterministic transforms between images on disk and model inputs.

SAM (and so MobileSAM) was trained on images normalised per channel with the ImageNet statistics
expressed on the 0–255 scale, resized so the longest side equals the model input size, and
zero-padded at the bottom and right. Labels and masks are only ever resized with nearest neighbour.
"""

from __future__ import annotations

import numpy as np
import torch

#: Per-channel mean and standard deviation of SAM's preprocessing, on the 0–255 scale (RGB order),
#: from segment-anything's ``Sam.pixel_mean`` / ``Sam.pixel_std``.
SAM_PIXEL_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
SAM_PIXEL_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB ``uint8`` (H, W, 3) → float32 tensor (3, H, W) on the 0–255 scale."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


def normalize_for_sam(images: torch.Tensor) -> torch.Tensor:
    """Normalise images the way SAM was trained.

    Args:
        images: float tensor (B, 3, H, W) or (3, H, W) on the 0–255 scale, RGB.
    Returns:
        Tensor of the same shape, ``(x - mean) / std`` per channel.
    """
    shape = (3, 1, 1)
    mean = torch.tensor(SAM_PIXEL_MEAN, dtype=images.dtype, device=images.device).view(shape)
    std = torch.tensor(SAM_PIXEL_STD, dtype=images.dtype, device=images.device).view(shape)
    return (images - mean) / std
