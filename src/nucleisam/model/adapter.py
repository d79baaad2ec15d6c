"""Adapter files: the fine-tuned part of a model as ``.safetensors`` with JSON metadata.

An adapter holds only what training changed (LoRA matrices, the head, and in ``full`` mode the
encoder) plus enough metadata to rebuild the network around it: the model configuration, the sha256
of the base checkpoint it was trained on, the input normalisation, and whatever the caller adds
(post-processing parameters, training summary). When the base weights were random there is no
checkpoint to rebuild them from, so the file then holds every weight.

The metadata is one JSON document stored under the ``nucleisam`` key of the safetensors header.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from nucleisam import __version__
from nucleisam.errors import NucleisamError
from nucleisam.model.mobilesam import SAM_PIXEL_MEAN, SAM_PIXEL_STD
from nucleisam.model.network import (
    RANDOM_BASE,
    ModelConfig,
    NucleiSam,
    assemble_model,
    load_base_weights,
)
from nucleisam.utils.atomic import atomic_output

FORMAT = "nucleisam-adapter"
FORMAT_VERSION = 1
METADATA_KEY = "nucleisam"
#: Metadata keys written by :func:`save_adapter`; ``extra_metadata`` may not override them.
RESERVED_KEYS = frozenset(
    {"format", "format_version", "nucleisam_version", "base_checkpoint_sha256", "contents", "model", "input"}
)


def adapter_tensors(model: NucleiSam) -> dict[str, torch.Tensor]:
    """Tensors an adapter must hold for ``model``, by ``state_dict`` name.

    Trainable parameters, plus the buffers of modules with trainable parameters (BatchNorm running
    statistics in ``full`` mode); every tensor when the base weights are random.
    """
    state = model.state_dict()
    if model.base_checkpoint_sha256 == RANDOM_BASE:
        keep = set(state)
    else:
        keep = set()
        for module_name, module in model.named_modules():
            prefix = f"{module_name}." if module_name else ""
            own = list(module.named_parameters(recurse=False))
            if any(p.requires_grad for _, p in own):
                keep.update(prefix + name for name, p in own if p.requires_grad)
                keep.update(prefix + name for name, _ in module.named_buffers(recurse=False))
    return {name: tensor for name, tensor in state.items() if name in keep}


def save_adapter(
    model: NucleiSam, path: str | os.PathLike[str], *, extra_metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model``'s fine-tuned tensors and metadata to ``path`` (atomically).

    Args:
        model: a :class:`NucleiSam`; LoRA layers are saved unmerged (merged ones are unmerged for the
            write and merged again after).
        path: destination, conventionally ``*.safetensors``.
        extra_metadata: JSON-serialisable entries added to the metadata, e.g. ``{"postprocess": {...}}``.
    Returns:
        ``path``.
    """
    extra = dict(extra_metadata or {})
    clash = sorted(RESERVED_KEYS & set(extra))
    if clash:
        raise ValueError(f"extra_metadata may not set reserved keys {clash}")
    metadata: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "nucleisam_version": __version__,
        "base_checkpoint_sha256": model.base_checkpoint_sha256,
        "contents": "all" if model.base_checkpoint_sha256 == RANDOM_BASE else "trainable",
        "model": model.config.to_dict(),
        "input": {
            "scale": "RGB, 0-255",
            "pixel_mean": list(SAM_PIXEL_MEAN),
            "pixel_std": list(SAM_PIXEL_STD),
            "resize": f"longest side to {model.config.input_size} (bilinear), zero-pad bottom/right",
        },
        **extra,
    }
    header = {METADATA_KEY: json.dumps(metadata, allow_nan=False)}
    merged = model.lora_merged
    if merged:
        model.unmerge_lora()
    try:
        tensors = {
            name: t.detach().to("cpu", copy=True).contiguous() for name, t in adapter_tensors(model).items()
        }
    finally:
        if merged:
            model.merge_lora()
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return Path(path)


def read_adapter_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON metadata of an adapter file (no tensors are read).

    Raises:
        NucleisamError: missing file, not a safetensors file, or not a nucleisam adapter.
    """
    file = Path(path)
    if not file.is_file():
        raise NucleisamError(
            f"adapter file {file} does not exist. Give the .safetensors file training wrote."
        )
    try:
        with safe_open(str(file), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise NucleisamError(f"cannot read adapter {file}: {exc}. Is it a .safetensors file?") from exc
    try:
        metadata = json.loads(header[METADATA_KEY])
    except (KeyError, json.JSONDecodeError) as exc:
        raise NucleisamError(
            f"{file} is a safetensors file but not a nucleisam adapter (no metadata)."
        ) from exc
    if metadata.get("format") != FORMAT or int(metadata.get("format_version", 0)) > FORMAT_VERSION:
        raise NucleisamError(
            f"{file} is adapter format {metadata.get('format')!r} v{metadata.get('format_version')}; this "
            f"nucleisam ({__version__}) reads {FORMAT} v{FORMAT_VERSION}. Upgrade nucleisam."
        )
    return metadata


def load_adapter(
    path: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    allow_checkpoint_mismatch: bool = False,
) -> tuple[NucleiSam, dict[str, Any]]:
    """Rebuild the model an adapter was saved from, ready for inference (eval mode).

    Args:
        path: the ``.safetensors`` adapter.
        checkpoint: base ``mobile_sam.pt``; default the cached official one (downloaded if absent).
            Ignored (with a warning) for an adapter that holds every weight.
        allow_checkpoint_mismatch: accept a base checkpoint whose sha256 differs from the one the
            adapter was trained on (with a warning) instead of raising.
    Returns:
        ``(model, metadata)``.
    Raises:
        NucleisamError: unreadable adapter, wrong base checkpoint, or tensors that do not fit.
    """
    file = Path(path)
    metadata = read_adapter_metadata(file)
    recorded = metadata["base_checkpoint_sha256"]
    if recorded == RANDOM_BASE:
        weights = "none"
    else:
        weights = os.fspath(checkpoint) if checkpoint is not None else "auto"
    config = ModelConfig.from_dict(metadata["model"], weights=weights)
    if recorded == RANDOM_BASE:
        if checkpoint is not None:
            warnings.warn(
                f"{file} holds every weight (trained from random initialisation); checkpoint {checkpoint} "
                "is not used.",
                UserWarning,
                stacklevel=2,
            )
        model = assemble_model(config, state_dict=None, base_checkpoint_sha256=RANDOM_BASE)
    else:
        state, sha256, source = load_base_weights(weights)
        if sha256 != recorded:
            message = (
                f"adapter {file} was trained on a base checkpoint with sha256 {recorded}, but {source} has "
                f"sha256 {sha256}."
            )
            if not allow_checkpoint_mismatch:
                raise NucleisamError(
                    f"{message} Pass the original checkpoint (checkpoint), or allow the mismatch "
                    "(allow_checkpoint_mismatch) knowing that predictions may be wrong."
                )
            warnings.warn(message + " Continuing because the mismatch is allowed.", UserWarning, stacklevel=2)
        model = assemble_model(config, state_dict=state, base_checkpoint_sha256=sha256, source=source)
    _load_tensors(model, file)
    return model.eval(), metadata


def _load_tensors(model: NucleiSam, file: Path) -> None:
    expected = adapter_tensors(model)
    with safe_open(str(file), framework="pt") as handle:
        stored = {name: handle.get_tensor(name) for name in handle.keys()}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    mis_shaped = [n for n in stored if n in expected and stored[n].shape != expected[n].shape]
    if missing or unexpected or mis_shaped:
        details = "; ".join(
            f"{title}: {', '.join(names[:5])}{' …' if len(names) > 5 else ''}"
            for title, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped))
            if names
        )
        raise NucleisamError(f"adapter {file} does not fit the model its metadata describes ({details}).")
    model.load_state_dict(stored, strict=False)
