"""``NucleiSam``: MobileSAM + LoRA + a head, taking native-size H&E tiles and returning native-size maps.

Fine-tuning modes (what is trainable; everything else is frozen and runs in eval mode):

- ``lora`` (default): LoRA adapters on the image encoder and the head.
- ``full``: the whole image encoder and the head (no LoRA).
- ``decoder``: the head only; the encoder is a fixed feature extractor.
- ``seed``: the starting notebook's configuration, for comparison: LoRA r=4, alpha=1 on all 41
  encoder Linear layers (including the never-run ImageNet classifier ``head``) and the whole SAM mask
  decoder, SAM head.

"The head" is SAM's mask decoder for ``head="sam"`` (without its IoU head and the three multimask
hypernetworks, which a single-mask prompt-free call never runs; ``seed`` trains them anyway, as the
notebook did) and the :class:`InstanceHead` for ``head="instance"``. The prompt encoder is always
frozen (prompt-free use runs only its ``no_mask`` embedding and positional encoding), and so is
TinyViT's ImageNet classifier, which MobileSAM never runs but which the checkpoint contains. Every
part of MobileSAM is kept, run or not, so that the official checkpoint loads strictly key by key and
parameter counts compare with the seed's.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nucleisam.config import ModelConfig
from nucleisam.errors import NucleisamError
from nucleisam.model.checkpoint import (
    compare_state_dict,
    file_sha256,
    find_checkpoint,
    load_state_dict_file,
    load_strict,
)
from nucleisam.model.heads import INSTANCE_MAPS, InstanceHead
from nucleisam.model.lora import apply_lora, lora_layers
from nucleisam.model.mobilesam import (
    build_mobilesam,
    encode,
    normalize_for_sam,
    prompt_free_mask_logits,
    resize_and_pad,
    unpad_to_native,
)

logger = logging.getLogger(__name__)

#: Names (prefixes inside ``image_encoder``) of TinyViT's ImageNet classifier, never run by MobileSAM.
CLASSIFIER_PREFIXES: tuple[str, ...] = ("norm_head.", "head.")
#: Mask decoder parts a prompt-free, single-mask call never runs: the IoU prediction head and the
#: hypernetworks of the three multimask outputs. Frozen except in ``seed`` mode, which trained them.
UNUSED_DECODER_PREFIXES: tuple[str, ...] = (
    "iou_prediction_head.",
    "output_hypernetworks_mlps.1.",
    "output_hypernetworks_mlps.2.",
    "output_hypernetworks_mlps.3.",
)
#: ``base_checkpoint_sha256`` of a model whose base weights are random.
RANDOM_BASE = "random"


class NucleiSam(nn.Module):
    """MobileSAM with LoRA and a segmentation head, end to end from RGB tiles to native-size maps.

    Build it with :func:`build_model`. Submodules: ``image_encoder`` (TinyViT, LoRA layers inside),
    ``prompt_encoder`` and ``mask_decoder`` (SAM's, under the official checkpoint's key names), and
    ``instance_head`` (only with ``head="instance"``).

    Attributes:
        config: the :class:`ModelConfig` it was built from.
        base_checkpoint_sha256: sha256 of the base weights loaded, or ``"random"``.
        lora_targets: names (inside ``image_encoder``) of the layers wrapped with LoRA.
    """

    def __init__(self, config: ModelConfig, *, base: nn.Module, base_checkpoint_sha256: str) -> None:
        super().__init__()
        self.config = config
        self.base_checkpoint_sha256 = base_checkpoint_sha256
        self.image_encoder = base.image_encoder
        self.prompt_encoder = base.prompt_encoder
        self.mask_decoder = base.mask_decoder
        self.instance_head = InstanceHead(config.head_widths) if config.head == "instance" else None
        assert config.lora is not None
        self.lora_targets = apply_lora(self.image_encoder, config.lora) if config.uses_lora else []
        self._set_trainable()

    def _set_trainable(self) -> None:
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        if self.instance_head is not None:
            self.instance_head.requires_grad_(True)
        else:
            keep_unused = self.config.mode == "seed"
            for name, parameter in self.mask_decoder.named_parameters():
                parameter.requires_grad_(keep_unused or not name.startswith(UNUSED_DECODER_PREFIXES))
        if self.config.mode == "full":
            for name, parameter in self.image_encoder.named_parameters():
                if not name.startswith(CLASSIFIER_PREFIXES):
                    parameter.requires_grad_(True)
        for _, layer in lora_layers(self.image_encoder):
            layer.lora_A.requires_grad_(True)
            layer.lora_B.requires_grad_(True)

    def train(self, mode: bool = True) -> NucleiSam:
        """Set training mode, keeping every module without trainable parameters in eval mode.

        So BatchNorm running statistics of a frozen encoder never change, while LoRA dropout and the
        trainable head follow ``mode``. Parameter-free modules (activations, dropout) follow their
        parent. In ``full`` mode the encoder's BatchNorm layers are trainable and update their
        statistics like any fully fine-tuned network.
        """
        if not mode:
            return super().train(False)
        self.training = True
        for child in self.children():
            _train_if_trainable(child)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimiser should update."""
        return [p for p in self.parameters() if p.requires_grad]

    def merge_lora(self) -> None:
        """Fold the LoRA updates into the encoder weights for inference; :meth:`unmerge_lora` undoes it."""
        for _, layer in lora_layers(self.image_encoder):
            layer.merge()

    def unmerge_lora(self) -> None:
        """Undo :meth:`merge_lora`."""
        for _, layer in lora_layers(self.image_encoder):
            layer.unmerge()

    @property
    def lora_merged(self) -> bool:
        return any(layer.merged for _, layer in lora_layers(self.image_encoder))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Segment a batch of RGB tiles.

        Args:
            images: (B, 3, H, W) RGB on the 0–255 scale (float, or uint8 which is converted), any H, W.
                The model normalises with SAM's mean/std, resizes the longest side to ``input_size``,
                zero-pads to a square, and maps the predictions back to (H, W).
        Returns:
            Maps at the native (H, W), all float (B, 1, H, W):

            - ``head="instance"``: ``foreground`` logits; ``center_distance`` and ``boundary_distance``
              in [0, 1] (a sigmoid is applied inside the model, after resizing), the targets of
              :func:`nucleisam.data.instance_targets`.
            - ``head="sam"``: ``foreground`` logits from SAM's mask decoder.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            images = images.float()
        native_hw = (int(images.shape[-2]), int(images.shape[-1]))
        size = self.config.input_size
        inputs, resized_hw = resize_and_pad(normalize_for_sam(images), size)
        features = encode(self.image_encoder, inputs)
        if self.instance_head is None:
            logits = prompt_free_mask_logits(self.prompt_encoder, self.mask_decoder, features.embedding)
            return {
                "foreground": unpad_to_native(
                    logits, input_size=size, resized_hw=resized_hw, native_hw=native_hw
                )
            }
        raw = self.instance_head(inputs, features)
        raw = unpad_to_native(raw, input_size=size, resized_hw=resized_hw, native_hw=native_hw)
        maps = dict(zip(INSTANCE_MAPS, raw.split(1, dim=1), strict=True))
        maps["center_distance"] = torch.sigmoid(maps["center_distance"])
        maps["boundary_distance"] = torch.sigmoid(maps["boundary_distance"])
        return maps

    def parameter_table(self) -> list[dict[str, Any]]:
        """Parameter counts per part, then a ``total`` row.

        Each row: ``part``, ``parameters``, ``trainable``, ``trainable_percent`` (of that row's
        parameters) and ``runs`` (whether the forward pass uses the part).
        """
        lora_ids = {
            id(p) for _, layer in lora_layers(self.image_encoder) for p in (layer.lora_A, layer.lora_B)
        }
        encoder, classifier = [], []
        for name, parameter in self.image_encoder.named_parameters():
            if id(parameter) in lora_ids:
                continue
            (classifier if name.startswith(CLASSIFIER_PREFIXES) else encoder).append(parameter)
        lora = [p for _, layer in lora_layers(self.image_encoder) for p in (layer.lora_A, layer.lora_B)]
        sam_head = self.config.head == "sam"
        parts: list[tuple[str, list[nn.Parameter], bool]] = [
            ("image_encoder", encoder, True),
            ("image_encoder classifier (norm_head, head)", classifier, False),
            ("lora", lora, True),
            ("prompt_encoder", list(self.prompt_encoder.parameters()), sam_head),
            ("mask_decoder", list(self.mask_decoder.parameters()), sam_head),
        ]
        if self.instance_head is not None:
            parts.append(("instance_head", list(self.instance_head.parameters()), True))
        rows = [_count_row(name, params, runs) for name, params, runs in parts if params]
        rows.append(_count_row("total", list(self.parameters()), True))
        return rows


def _count_row(part: str, parameters: list[nn.Parameter], runs: bool) -> dict[str, Any]:
    total = sum(p.numel() for p in parameters)
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    return {
        "part": part,
        "parameters": total,
        "trainable": trainable,
        "trainable_percent": round(100.0 * trainable / total, 4) if total else 0.0,
        "runs": runs,
    }


def _train_if_trainable(module: nn.Module) -> None:
    trainable = any(p.requires_grad for p in module.parameters())
    module.training = trainable
    for child in module.children():
        if any(True for _ in child.parameters()):
            _train_if_trainable(child)
        else:
            child.train(trainable)


def load_base_weights(weights: str) -> tuple[dict[str, torch.Tensor] | None, str, str]:
    """Resolve ``ModelConfig.weights`` to a state_dict (``None`` for random), its sha256 and its file.

    ``"none"`` warns loudly (Python warning and log): a randomly initialised MobileSAM segments
    nothing until trained from scratch, which is rarely what a user wants.
    """
    if weights == "none":
        message = (
            "nucleisam: building MobileSAM with RANDOM weights (weights='none'): no pretrained knowledge, "
            "results are meaningless until trained from scratch. Use `nucleisam weights download` or "
            "set model.weights to the path of mobile_sam.pt for the pretrained model."
        )
        warnings.warn(message, UserWarning, stacklevel=3)
        logger.warning(message)
        return None, RANDOM_BASE, "random initialisation"
    path = find_checkpoint() if weights == "auto" else Path(weights)
    state = load_state_dict_file(path)
    return state, file_sha256(path), f"checkpoint {path}"


def assemble_model(
    config: ModelConfig,
    *,
    state_dict: dict[str, torch.Tensor] | None,
    base_checkpoint_sha256: str,
    source: str = "checkpoint",
) -> NucleiSam:
    """Build MobileSAM for ``config.input_size``, load ``state_dict`` strictly (if given), add LoRA and head.

    ``config.weights`` is not consulted; :func:`build_model` resolves it. The model is returned in
    eval mode.
    """
    base = build_mobilesam(config.input_size)
    if state_dict is not None:
        load_strict(base, state_dict, source=source)
    return NucleiSam(config, base=base, base_checkpoint_sha256=base_checkpoint_sha256).eval()


def check_base_weights(config: ModelConfig) -> None:
    """Read the base checkpoint ``config.weights`` names and check its keys and shapes against
    MobileSAM, without keeping anything: a run calls this before it writes its first file, so a
    damaged, foreign or missing checkpoint never leaves a half-started run folder behind."""
    if config.weights == "none":
        return
    state, _, source = load_base_weights(config.weights)
    assert state is not None
    report = compare_state_dict(build_mobilesam(config.input_size).state_dict(), state)
    if not report.ok:
        raise NucleisamError(
            f"{source} does not match the MobileSAM architecture:\n{report.format()}\n"
            "Use the official mobile_sam.pt (`nucleisam weights download`) or a state_dict with its keys."
        )


def build_model(config: ModelConfig | None = None) -> NucleiSam:
    """Build the network described by ``config`` (default ``ModelConfig()``), in eval mode.

    Raises:
        NucleisamError: weights missing/unreadable/not matching the architecture, or a bad option.
    """
    config = config or ModelConfig()
    state, sha256, source = load_base_weights(config.weights)
    return assemble_model(config, state_dict=state, base_checkpoint_sha256=sha256, source=source)
