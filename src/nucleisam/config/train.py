"""The ``train`` section: optimisation, run-time options and loss weights (:mod:`nucleisam.train`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from nucleisam.config.core import require


@dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms (see :mod:`nucleisam.train.losses`).

    Foreground: ``bce_weight`` × BCE + ``dice_weight`` × soft Dice. Instance head only:
    ``distance_weight`` × regression of each distance map inside the foreground, with
    ``distance_loss`` "smooth_l1" (transition at ``smooth_l1_beta``) or "mse".
    """

    bce_weight: float = 1.0
    dice_weight: float = 1.0
    distance_weight: float = 1.0
    distance_loss: Literal["smooth_l1", "mse"] = "smooth_l1"
    smooth_l1_beta: float = 0.1

    def __post_init__(self) -> None:
        for name in ("bce_weight", "dice_weight", "distance_weight"):
            value = getattr(self, name)
            require(value >= 0.0, f"train.loss.{name}", "≥ 0", value)
        require(self.smooth_l1_beta > 0.0, "train.loss.smooth_l1_beta", "> 0", self.smooth_l1_beta)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and run-time options.

    AdamW with a linear warm-up over ``warmup_epochs`` (when set) or ``warmup_fraction`` of all
    optimiser steps, then cosine decay to ``min_lr_ratio`` × ``lr``. The effective batch is
    ``batch_size`` × ``grad_accumulation`` × number of processes. ``device`` is ``auto`` (a GPU if
    torch sees one), ``cpu``, ``cuda`` or ``cuda:N``. ``amp`` means bf16 autocast on CUDA, for
    training and for the validation maps (CPU always runs in fp32; see
    :mod:`nucleisam.model.inference`). Each ``validate_every`` epochs the inner validation split is
    post-processed and scored; the epoch with the best mean ``select_metric`` is kept.
    """

    epochs: int = 30
    batch_size: int = 4
    eval_batch_size: int = 4
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_fraction: float = 0.05
    warmup_epochs: float | None = None
    min_lr_ratio: float = 0.01
    grad_clip: float | None = 1.0
    grad_accumulation: int = 1
    seed: int = 0
    num_workers: int = 2
    device: str = "auto"
    amp: bool = True
    augment: bool = True
    validate_every: int = 1
    select_metric: Literal["aji", "aji_plus", "pq", "dice"] = "aji"
    progress: bool = True
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "train.epochs", "at least 1", self.epochs)
        require(self.batch_size >= 1, "train.batch_size", "at least 1", self.batch_size)
        require(self.eval_batch_size >= 1, "train.eval_batch_size", "at least 1", self.eval_batch_size)
        require(self.lr > 0.0, "train.lr", "> 0", self.lr)
        require(
            re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
            "train.device", "auto, cpu, cuda or cuda:N", self.device,
        )
        require(self.weight_decay >= 0.0, "train.weight_decay", "≥ 0", self.weight_decay)
        require(all(0.0 <= b < 1.0 for b in self.betas), "train.betas", "two values in [0, 1)", self.betas)
        require(
            0.0 <= self.warmup_fraction < 1.0, "train.warmup_fraction", "in [0, 1)", self.warmup_fraction
        )
        if self.warmup_epochs is not None:
            require(
                0.0 <= self.warmup_epochs <= self.epochs,
                "train.warmup_epochs",
                "between 0 and train.epochs",
                self.warmup_epochs,
            )
        require(0.0 <= self.min_lr_ratio <= 1.0, "train.min_lr_ratio", "in [0, 1]", self.min_lr_ratio)
        if self.grad_clip is not None:
            require(self.grad_clip > 0.0, "train.grad_clip", "> 0 or null (no clipping)", self.grad_clip)
        require(self.grad_accumulation >= 1, "train.grad_accumulation", "at least 1", self.grad_accumulation)
        require(0 <= self.seed < 2**32, "train.seed", "in [0, 2**32)", self.seed)
        require(self.num_workers >= 0, "train.num_workers", "≥ 0", self.num_workers)
        require(self.validate_every >= 1, "train.validate_every", "at least 1", self.validate_every)
