"""Low-rank adaptation (LoRA) of ``nn.Linear`` layers, small and self-contained.

A wrapped layer computes ``y = x Wᵀ + b + scale · dropout(x) Aᵀ Bᵀ`` with the pretrained ``W`` and ``b``
frozen, ``A`` (rank × in) initialised Kaiming-uniform, ``B`` (out × rank) initialised to zero, and
``scale = alpha / rank``. With ``B = 0`` a freshly wrapped model computes exactly what the pretrained
model computed, so fine-tuning starts from the pretrained function (Hu et al., 2021).

The wrapper keeps the original ``weight`` and ``bias`` parameters under their original names, so a
LoRA-wrapped model still loads a plain checkpoint by key and the adapter tensors are the only new
keys (``<layer>.lora_A``, ``<layer>.lora_B``).

TinyViT's attention uses one ``qkv`` Linear whose output channels are interleaved per head
(``[q_h | k_h | v_h]`` for each head ``h``), so LoRA here always adapts the whole ``qkv`` projection;
a q/v-only variant would need a per-head channel mask and is not offered.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from nucleisam.config import LoraConfig
from nucleisam.errors import NucleisamError

_BLOCK_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.blocks\.(\d+)\.")
# Attention blocks per TinyViT-5M stage; stage 0 is the convolutional stage (MBConv, no Linear layers).
_TINYVIT_5M_DEPTHS = (2, 2, 6, 2)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update.

    Args:
        linear: the layer to adapt. Its ``weight`` and ``bias`` Parameters are taken over as they are
            (same objects, same names) and frozen.
        rank, alpha, dropout: see :class:`~nucleisam.config.LoraConfig`.

    Shapes: input (..., in_features) → output (..., out_features), like the wrapped layer.
    """

    def __init__(self, linear: nn.Linear, *, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.rank = rank
        self.alpha = alpha
        self.scale = alpha / rank
        self.weight = linear.weight
        self.bias = linear.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        device, dtype = linear.weight.device, linear.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=device, dtype=dtype))
        # Same initialisation nn.Linear uses for its weight; B = 0 makes the initial update exactly zero.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The low-rank update ``scale · B A`` (out_features, in_features)."""
        return (self.lora_B @ self.lora_A) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        return out + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``weight`` (one matmul per call at inference). No-op if merged."""
        if not self.merged:
            self.weight.add_(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge`, restoring the pretrained ``weight`` (up to float rounding)."""
        if self.merged:
            self.weight.sub_(self.delta_weight())
            self.merged = False

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"alpha={self.alpha}, merged={self.merged}"
        )


def encoder_block_index(name: str) -> int | None:
    """Global index (0–9) of the TinyViT-5M attention block a module name lies in, else ``None``.

    ``layers.1.blocks.0.attn.qkv`` → 0, ``layers.2.blocks.5.mlp.fc2`` → 7, ``layers.3.blocks.1...`` → 9.
    """
    match = _BLOCK_NAME.search(name)
    if match is None:
        return None
    stage, block = int(match.group(1)), int(match.group(2))
    if stage == 0:
        return None
    return sum(_TINYVIT_5M_DEPTHS[1:stage]) + block


def _is_selected(name: str, config: LoraConfig) -> bool:
    if name.rsplit(".", 1)[-1] not in config.targets:
        return False
    if config.blocks is None:
        return True
    index = encoder_block_index(name)
    return index is None or index in config.blocks


def apply_lora(module: nn.Module, config: LoraConfig) -> list[str]:
    """Replace the selected ``nn.Linear`` layers of ``module`` (in place) by :class:`LoRALinear`.

    Args:
        module: typically a TinyViT image encoder.
        config: which layers (by name and block) and the adapter size.
    Returns:
        The qualified names (relative to ``module``) of the wrapped layers, in module order.
    Raises:
        NucleisamError: if nothing matches, or if ``module`` already holds LoRA layers.
    """
    if any(isinstance(m, LoRALinear) for m in module.modules()):
        raise NucleisamError("this model already has LoRA layers; build a fresh model to change them.")
    selected = [
        name
        for name, child in module.named_modules()
        if isinstance(child, nn.Linear) and _is_selected(name, config)
    ]
    if not selected:
        raise NucleisamError(
            f"no Linear layer matches LoRA targets {list(config.targets)} / blocks {config.blocks}."
        )
    for name in selected:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        linear = getattr(parent, attr)
        setattr(
            parent, attr, LoRALinear(linear, rank=config.rank, alpha=config.alpha, dropout=config.dropout)
        )
    return selected


def lora_layers(module: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """Yield ``(name, layer)`` for every :class:`LoRALinear` inside ``module``."""
    for name, child in module.named_modules():
        if isinstance(child, LoRALinear):
            yield name, child


def merge_lora(module: nn.Module) -> None:
    """Merge every LoRA layer in ``module`` (for inference)."""
    for _, layer in lora_layers(module):
        layer.merge()


def unmerge_lora(module: nn.Module) -> None:
    """Unmerge every LoRA layer in ``module`` (before training or saving)."""
    for _, layer in lora_layers(module):
        layer.unmerge()
