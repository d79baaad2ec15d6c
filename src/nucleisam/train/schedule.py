"""Optimiser and learning-rate schedule: AdamW, linear warm-up, cosine decay.

The schedule is a pure function of the optimiser step, so resuming needs only the step counter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from nucleisam.config import TrainConfig


def build_optimizer(parameters: Iterable[torch.nn.Parameter], config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``parameters`` (the model's trainable ones) with the configured lr/decay/betas."""
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


@dataclass(frozen=True)
class WarmupCosine:
    """Learning rate of optimiser step ``s`` (0-based).

    Warm-up: ``base_lr · (s + 1) / warmup_steps`` for ``s < warmup_steps``; then cosine from
    ``base_lr`` down to ``min_ratio · base_lr`` at the last step.
    """

    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    min_ratio: float = 0.0

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps - 1)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def lr(self, step: int) -> float:
        return self.base_lr * self.factor(step)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every parameter group's lr for ``step``; returns it."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    @classmethod
    def from_config(cls, config: TrainConfig, steps_per_epoch: int) -> WarmupCosine:
        total = max(1, config.epochs * steps_per_epoch)
        if config.warmup_epochs is not None:
            warmup = round(config.warmup_epochs * steps_per_epoch)
        else:
            warmup = round(config.warmup_fraction * total)
        return cls(
            base_lr=config.lr,
            total_steps=total,
            warmup_steps=min(warmup, total),
            min_ratio=config.min_lr_ratio,
        )
