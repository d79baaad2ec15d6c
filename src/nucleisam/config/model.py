"""The ``model`` section: which network is built (mode, head, input size, LoRA, base weights).

Kept apart from :mod:`nucleisam.model` so that a run's configuration (and an adapter's metadata) can
be read and checked without importing torch; the network modules take their constants from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from nucleisam.config.core import ConfigError, require

MODES: tuple[str, ...] = ("lora", "full", "decoder", "seed")
HEADS: tuple[str, ...] = ("instance", "sam")
#: The Linear layers of every TinyViT attention block: 4 per block × 10 blocks = 40 layers.
BLOCK_TARGETS: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")
#: Names accepted in :attr:`LoraConfig.targets`. ``head`` is TinyViT's ImageNet classifier, which
#: MobileSAM never runs; it is allowed only to reproduce the seed notebook's parameter count.
KNOWN_TARGETS: tuple[str, ...] = (*BLOCK_TARGETS, "head")
#: Number of attention blocks in TinyViT-5M (depths 2, 2, 6, 2; the first stage is convolutional).
NUM_ATTENTION_BLOCKS = 10
#: Instance head decoder widths at strides 16, 8, 4, 2, 1.
DEFAULT_WIDTHS: tuple[int, int, int, int, int] = (128, 96, 64, 32, 8)
#: The encoder's total stride: TinyViT is built for a square input that is a multiple of it.
ENCODER_STRIDE = 16
#: Smallest input size accepted: the 1/16 embedding is then 8 × 8.
MIN_INPUT_SIZE = 128


def check_input_size(input_size: int) -> int:
    """Return ``input_size`` if MobileSAM can be built for it, else raise a ``model.input_size`` error."""
    if not isinstance(input_size, int) or input_size < MIN_INPUT_SIZE or input_size % ENCODER_STRIDE:
        raise ConfigError(
            f"configuration key 'model.input_size': input size {input_size!r} is not valid; use a multiple "
            f"of {ENCODER_STRIDE} of at least {MIN_INPUT_SIZE}, e.g. 1024 (SAM's convention) or 512 "
            "(NuInsSeg tiles' own size).",
            "model.input_size",
        )
    return input_size


@dataclass(frozen=True)
class LoraConfig:
    """Where and how large the LoRA adapters are.

    Attributes:
        rank: inner dimension ``r`` of each adapter (≥ 1).
        alpha: scaling numerator; the update is multiplied by ``alpha / rank``.
        dropout: dropout probability on the adapter's input during training (0 disables it).
        targets: Linear layer names to wrap (last name component): any of ``qkv``, ``proj``, ``fc1``,
            ``fc2`` and ``head``.
        blocks: indices (0–9) of the TinyViT attention blocks to adapt, counted over the whole encoder
            in forward order; ``None`` adapts all ten. ``(6, 7, 8, 9)`` is "late LoRA". The classifier
            ``head`` is not in a block and is wrapped whenever it is a target.
    """

    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    targets: tuple[str, ...] = BLOCK_TARGETS
    blocks: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        # Lists given in Python are stored as tuples, so the config stays hashable and comparable.
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.blocks is not None:
            object.__setattr__(self, "blocks", tuple(self.blocks))
        require(isinstance(self.rank, int) and self.rank >= 1, "model.lora.rank", "an integer ≥ 1", self.rank)
        require(self.alpha > 0, "model.lora.alpha", "> 0", self.alpha)
        require(0.0 <= self.dropout < 1.0, "model.lora.dropout", "in [0, 1)", self.dropout)
        require(
            bool(self.targets) and set(self.targets) <= set(KNOWN_TARGETS),
            "model.lora.targets",
            f"a non-empty list of {', '.join(KNOWN_TARGETS)}",
            list(self.targets),
        )
        blocks = self.blocks
        require(
            blocks is None or (bool(blocks) and all(0 <= b < NUM_ATTENTION_BLOCKS for b in blocks)),
            "model.lora.blocks",
            f"null (all) or indices 0–{NUM_ATTENTION_BLOCKS - 1} of the TinyViT attention blocks "
            "([6, 7, 8, 9]: the last four)",
            self.blocks,
        )

    @property
    def scale(self) -> float:
        """Multiplier of the low-rank update, ``alpha / rank``."""
        return self.alpha / self.rank


#: The seed notebook's LoRA: r=4, alpha=1 on every encoder Linear layer, classifier included.
SEED_LORA = LoraConfig(rank=4, alpha=1.0, dropout=0.0, targets=KNOWN_TARGETS, blocks=None)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the same network (modes: see :mod:`nucleisam.model.network`).

    Attributes:
        mode: ``"lora"`` | ``"full"`` | ``"decoder"`` | ``"seed"``.
        head: ``"instance"`` | ``"sam"``; ``None`` picks the mode's default (``"sam"`` for ``seed``,
            else ``"instance"``).
        input_size: square model input, a multiple of 16: 1024 is SAM's convention (tiles are
            resized so their longest side is 1024 and padded), 512 runs NuInsSeg tiles natively.
        lora: adapter configuration, used by ``lora`` and ``seed``; ``None`` gives ``LoraConfig()``
            (``SEED_LORA`` for ``seed``, which accepts no other).
        weights: ``"auto"`` (the cached official checkpoint, downloaded if absent), ``"none"``
            (random initialisation, with a warning), or the path of a ``mobile_sam.pt``.
        head_widths: instance head decoder widths at strides 16, 8, 4, 2, 1.
    """

    mode: str = "lora"
    head: str | None = None
    input_size: int = 1024
    lora: LoraConfig | None = None
    weights: str = "auto"
    head_widths: tuple[int, ...] = DEFAULT_WIDTHS

    def __post_init__(self) -> None:
        require(self.mode in MODES, "model.mode", f"one of {', '.join(MODES)}", self.mode)
        head = self.head or ("sam" if self.mode == "seed" else "instance")
        require(head in HEADS, "model.head", f"one of {', '.join(HEADS)} or null (the mode's)", self.head)
        lora = self.lora if self.lora is not None else (SEED_LORA if self.mode == "seed" else LoraConfig())
        seed_rule = "unset with model.mode 'seed', which reproduces the seed notebook exactly (SAM head, LoRA"
        seed_rule += " r=4, alpha=1 on all 41 encoder Linear layers); use model.mode 'lora' to change it"
        require(self.mode != "seed" or head == "sam", "model.head", seed_rule, self.head)
        require(self.mode != "seed" or lora == SEED_LORA, "model.lora", seed_rule, self.lora)
        check_input_size(self.input_size)
        widths = tuple(self.head_widths)
        require(
            len(widths) == 5 and all(w >= 4 and w % 4 == 0 for w in widths),
            "model.head_widths",
            "5 channel counts (strides 16, 8, 4, 2, 1), each a positive multiple of 4",
            list(widths),
        )
        object.__setattr__(self, "head", head)
        object.__setattr__(self, "lora", lora)
        object.__setattr__(self, "weights", os.fspath(self.weights))
        object.__setattr__(self, "head_widths", widths)

    @property
    def uses_lora(self) -> bool:
        return self.mode in ("lora", "seed")
