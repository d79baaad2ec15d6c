"""Losses: known values, vague-area exclusion, per-image reduction."""

from __future__ import annotations

import math

import pytest
import torch

from nucleisam.config import LossConfig
from nucleisam.train.losses import (
    masked_bce_with_logits,
    masked_regression,
    segmentation_loss,
    soft_dice_loss,
)


def _maps(b: int = 1, h: int = 4, w: int = 4) -> torch.Tensor:
    return torch.zeros(b, 1, h, w)


def test_bce_known_values_and_valid_mask() -> None:
    logits = _maps()
    target = _maps()
    target[..., :2, :] = 1.0
    valid = torch.ones_like(target)
    assert masked_bce_with_logits(logits, target, valid).item() == pytest.approx(math.log(2.0))
    logits[..., :2, :] = 3.0  # right side of the boundary: loss log(1 + e^-3) on those 8 pixels
    expected = (8 * math.log1p(math.exp(-3.0)) + 8 * math.log(2.0)) / 16
    assert masked_bce_with_logits(logits, target, valid).item() == pytest.approx(expected, rel=1e-6)
    valid[..., 2:, :] = 0.0  # only the confident pixels count
    assert masked_bce_with_logits(logits, target, valid).item() == pytest.approx(math.log1p(math.exp(-3.0)))


def test_soft_dice_known_values() -> None:
    target = _maps()
    target[..., :2, :] = 1.0
    valid = torch.ones_like(target)
    half = _maps()  # p = 0.5 everywhere: Σpt = 4, Σp = 8, Σt = 8
    assert soft_dice_loss(half, target, valid, smooth=0.0).item() == pytest.approx(1.0 - 8.0 / 16.0)
    assert soft_dice_loss(half, target, valid, smooth=1.0).item() == pytest.approx(1.0 - 9.0 / 17.0)
    perfect = (target * 2 - 1) * 50.0
    assert soft_dice_loss(perfect, target, valid, smooth=0.0).item() == pytest.approx(0.0, abs=1e-6)
    # No nucleus and none predicted: no penalty thanks to the smoothing term.
    assert soft_dice_loss(torch.full_like(target, -50.0), _maps(), valid).item() == pytest.approx(
        0.0, abs=1e-6
    )


def test_regression_known_values_inside_mask_only() -> None:
    pred = torch.full((1, 1, 2, 2), 0.5)
    target = torch.tensor([[[[0.3, 0.5], [0.9, 0.0]]]])
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    assert masked_regression(pred, target, mask, kind="mse").item() == pytest.approx(0.04 / 2)
    # |0.2| > beta: 0.2 - beta/2; 0 error on the other masked pixel
    assert masked_regression(pred, target, mask, kind="smooth_l1", beta=0.1).item() == pytest.approx(0.15 / 2)
    # |0.2| < beta: 0.5·0.2²/beta
    assert masked_regression(pred, target, mask, kind="smooth_l1", beta=0.4).item() == pytest.approx(0.05 / 2)
    assert masked_regression(pred, target, torch.zeros_like(mask)).item() == 0.0
    with pytest.raises(ValueError, match="unknown regression"):
        masked_regression(pred, target, mask, kind="l3")


def test_vague_pixels_never_influence_any_term() -> None:
    torch.manual_seed(0)
    targets = {
        "foreground": (torch.rand(2, 1, 8, 8) > 0.5).float(),
        "center_distance": torch.rand(2, 1, 8, 8),
        "boundary_distance": torch.rand(2, 1, 8, 8),
    }
    valid = torch.ones(2, 1, 8, 8)
    valid[:, :, :3] = 0.0
    outputs = {k: torch.randn(2, 1, 8, 8, requires_grad=True) for k in targets}
    losses = segmentation_loss(outputs, targets, valid)
    assert set(losses) == {"loss", "bce", "dice", "center_distance", "boundary_distance"}
    losses["loss"].backward()
    for key, tensor in outputs.items():
        assert tensor.grad is not None
        assert torch.all(tensor.grad[:, :, :3] == 0), key
        assert tensor.grad[:, :, 3:].abs().sum() > 0, key
    # Changing predictions and targets inside the vague rows changes nothing.
    changed_out = {k: v.detach().clone() for k, v in outputs.items()}
    changed_tgt = {k: v.clone() for k, v in targets.items()}
    for maps in (changed_out, changed_tgt):
        for v in maps.values():
            v[:, :, :3] = torch.rand_like(v[:, :, :3])
    again = segmentation_loss(changed_out, changed_tgt, valid)
    assert again["loss"].item() == pytest.approx(losses["loss"].item(), rel=1e-6)


def test_batch_loss_is_mean_of_image_losses_and_weights_apply() -> None:
    torch.manual_seed(1)
    targets = {"foreground": (torch.rand(3, 1, 6, 6) > 0.4).float()}
    valid = (torch.rand(3, 1, 6, 6) > 0.3).float()  # different valid counts per image
    outputs = {"foreground": torch.randn(3, 1, 6, 6)}
    batch = segmentation_loss(outputs, targets, valid)
    singles = [
        segmentation_loss(
            {"foreground": outputs["foreground"][i : i + 1]},
            {"foreground": targets["foreground"][i : i + 1]},
            valid[i : i + 1],
        )["loss"]
        for i in range(3)
    ]
    assert batch["loss"].item() == pytest.approx(torch.stack(singles).mean().item(), rel=1e-6)
    assert set(batch) == {"loss", "bce", "dice"}  # SAM head: no distance terms
    weighted = segmentation_loss(outputs, targets, valid, LossConfig(bce_weight=2.0, dice_weight=0.0))
    assert weighted["loss"].item() == pytest.approx(2.0 * batch["bce"].item(), rel=1e-6)
