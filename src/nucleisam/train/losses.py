"""Training losses for the two heads, with vague-area pixels excluded from every term.

Every term is computed per image (a mean over that image's valid pixels) and then averaged over the
batch. Per-image reduction makes the loss of a batch the mean of its images' losses, so the gradient
of a global batch split over several processes (DDP averages the per-process gradients) equals the
gradient of the same batch on one process.

Shapes: ``logits``, ``target``, ``valid`` are (B, 1, H, W) (or (B, H, W)); ``valid`` is 1 where the
pixel counts and 0 inside vague areas.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from nucleisam.config import LossConfig

#: Keys of the distance maps regressed by the instance head (values in [0, 1]).
DISTANCE_KEYS = ("center_distance", "boundary_distance")


def _per_image(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over all but the batch dimension; 0 for an image whose weights are all 0."""
    dims = tuple(range(1, values.ndim))
    total = (values * weights).sum(dim=dims)
    count = weights.sum(dim=dims)
    return total / count.clamp_min(1.0)


def masked_bce_with_logits(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits averaged over each image's valid pixels → (B,)."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return _per_image(bce, valid.float())


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *, smooth: float = 1.0
) -> torch.Tensor:
    """``1 - (2·Σpt + s) / (Σp + Σt + s)`` per image over valid pixels, p = sigmoid(logits) → (B,).

    ``smooth`` keeps the loss finite and near 0 when an image has no foreground and none is predicted.
    """
    prob = torch.sigmoid(logits.float()) * valid
    tgt = target.float() * valid
    dims = tuple(range(1, prob.ndim))
    intersection = (prob * tgt).sum(dim=dims)
    denominator = prob.sum(dim=dims) + tgt.sum(dim=dims)
    return 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)


def masked_regression(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    kind: str = "smooth_l1",
    beta: float = 0.1,
) -> torch.Tensor:
    """Mean regression error over each image's pixels where ``mask`` is 1 → (B,).

    ``kind`` is "smooth_l1" (quadratic below ``beta``, linear above) or "mse". An image without any
    masked pixel contributes 0.
    """
    prediction, target = prediction.float(), target.float()
    if kind == "mse":
        error = (prediction - target) ** 2
    elif kind == "smooth_l1":
        error = F.smooth_l1_loss(prediction, target, reduction="none", beta=beta)
    else:
        raise ValueError(f"unknown regression loss {kind!r}; use 'smooth_l1' or 'mse'")
    return _per_image(error, mask.float())


def segmentation_loss(
    outputs: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    valid: torch.Tensor,
    config: LossConfig | None = None,
) -> dict[str, torch.Tensor]:
    """Total loss and its parts for either head.

    Args:
        outputs: model maps, each (B, 1, H, W): ``foreground`` logits, and for the instance head
            ``center_distance`` / ``boundary_distance`` in [0, 1].
        targets: the same keys as float maps (B, 1, H, W); distances are only used where the
            output has them.
        valid: (B, 1, H, W), 0 inside vague areas.
        config: term weights; defaults to :class:`LossConfig`.
    Returns:
        ``{"loss": scalar, "bce": scalar, "dice": scalar, ["center_distance", "boundary_distance"]}``,
        each the batch mean of the per-image values; ``loss`` is the weighted sum.
    """
    config = config or LossConfig()
    valid = valid.float()
    foreground = targets["foreground"]
    parts = {
        "bce": masked_bce_with_logits(outputs["foreground"], foreground, valid).mean(),
        "dice": soft_dice_loss(outputs["foreground"], foreground, valid).mean(),
    }
    total = config.bce_weight * parts["bce"] + config.dice_weight * parts["dice"]
    inside = foreground.float() * valid
    for key in DISTANCE_KEYS:
        if key in outputs:
            parts[key] = masked_regression(
                outputs[key], targets[key], inside, kind=config.distance_loss, beta=config.smooth_l1_beta
            ).mean()
            total = total + config.distance_weight * parts[key]
    return {"loss": total, **parts}
