"""Adapter files: the fine-tuned part of a model as ``.safetensors`` with JSON metadata.

An adapter holds only what training changed (LoRA matrices, the head, and in ``full`` mode the
encoder) plus enough metadata to rebuild the network around it: the model configuration, the sha256
of the base checkpoint it was trained on, the input normalisation, the resolution of its training
images (``train_mpp``, so slides are read at the scale the model knows), and whatever the caller adds
(post-processing parameters, training summary). When the base weights were random there is no
checkpoint to rebuild them from, so the file then holds every weight.

The metadata is one JSON document stored under the ``nucleisam`` key of the safetensors header. Its
``model`` and ``postprocess`` entries are configuration sections, read back with the same checks as a
run's ``config.yaml`` (:func:`nucleisam.config.from_dict`), so bad metadata is an error naming the
file and the dotted key.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from nucleisam import __version__
from nucleisam.config import NUINSSEG_MPP, ModelConfig, PostprocessConfig, from_dict, to_dict
from nucleisam.errors import NucleisamError
from nucleisam.model.mobilesam import SAM_PIXEL_MEAN, SAM_PIXEL_STD
from nucleisam.model.network import (
    RANDOM_BASE,
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
    {
        "format", "format_version", "nucleisam_version", "base_checkpoint_sha256", "contents", "model",
        "input", "train_mpp",
    }
)
#: ``model`` entries recorded as null when the mode or head does not use them.
UNUSED_AS_NULL = ("lora", "head_widths")

T = TypeVar("T")


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
    model: NucleiSam,
    path: str | os.PathLike[str],
    *,
    extra_metadata: dict[str, Any] | None = None,
    train_mpp: float = NUINSSEG_MPP,
) -> Path:
    """Write ``model``'s fine-tuned tensors and metadata to ``path`` (atomically).

    Args:
        model: a :class:`NucleiSam`; LoRA layers are saved unmerged (merged ones are unmerged for the
            write and merged again after).
        path: destination, conventionally ``*.safetensors``.
        extra_metadata: JSON-serialisable entries added to the metadata, e.g. ``{"postprocess": {...}}``.
        train_mpp: microns per pixel of the training images (default NuInsSeg's scan resolution).
    Returns:
        ``path``.
    """
    extra = dict(extra_metadata or {})
    clash = sorted(RESERVED_KEYS & set(extra))
    if clash:
        raise ValueError(f"extra_metadata may not set reserved keys {clash}")
    if not (math.isfinite(train_mpp) and train_mpp > 0):
        raise ValueError(f"train_mpp must be a positive number of microns per pixel, got {train_mpp}")
    metadata: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "nucleisam_version": __version__,
        "base_checkpoint_sha256": model.base_checkpoint_sha256,
        "contents": "all" if model.base_checkpoint_sha256 == RANDOM_BASE else "trainable",
        "model": model_entry(model.config),
        "input": {
            "scale": "RGB, 0-255",
            "pixel_mean": list(SAM_PIXEL_MEAN),
            "pixel_std": list(SAM_PIXEL_STD),
            "resize": f"longest side to {model.config.input_size} (bilinear), zero-pad bottom/right",
        },
        "train_mpp": float(train_mpp),
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
    _check_metadata(metadata, file)
    return metadata


def _check_metadata(metadata: Any, file: Path) -> None:
    """Refuse metadata that is not this nucleisam's adapter format (its sections are checked on use)."""
    if not isinstance(metadata, dict):
        raise NucleisamError(f"{file}: its nucleisam metadata is not a JSON object; the file is damaged.")
    version = metadata.get("format_version")
    if metadata.get("format") != FORMAT or type(version) is not int or version > FORMAT_VERSION:
        raise NucleisamError(
            f"{file} is adapter format {metadata.get('format')!r} v{version!r}; this "
            f"nucleisam ({__version__}) reads {FORMAT} v{FORMAT_VERSION}. Upgrade nucleisam."
        )
    if not isinstance(metadata.get("base_checkpoint_sha256"), str):
        raise NucleisamError(
            f"adapter {file}: metadata key 'base_checkpoint_sha256' must be a string (the sha256 of the "
            f"base checkpoint, or {RANDOM_BASE!r}); got {metadata.get('base_checkpoint_sha256')!r}."
        )


def model_entry(config: ModelConfig) -> dict[str, Any]:
    """The ``model`` metadata entry: the model section without ``weights`` (the base checkpoint is
    identified by its sha256), and with the parts the mode and head leave unused set to null."""
    entry = to_dict(config)
    del entry["weights"]
    if not config.uses_lora:
        entry["lora"] = None
    if config.head != "instance":
        entry["head_widths"] = None
    return entry


def _section(cls: type[T], entry: Any, key: str, file: str | os.PathLike[str]) -> T:
    try:
        return from_dict(cls, entry, prefix=key)
    except NucleisamError as exc:
        raise NucleisamError(f"adapter {os.fspath(file)}: {exc}") from exc


def adapter_model_config(
    metadata: Mapping[str, Any], file: str | os.PathLike[str], *, weights: str = "auto"
) -> ModelConfig:
    """The :class:`~nucleisam.config.ModelConfig` recorded in adapter ``metadata`` (read from ``file``),
    with ``weights`` (not recorded: the base checkpoint is known by its sha256).

    Raises:
        NucleisamError: naming ``file`` and the dotted key (``model.lora.rank``) at fault.
    """
    entry = metadata.get("model")
    if not isinstance(entry, Mapping):
        raise NucleisamError(
            f"adapter {os.fspath(file)}: metadata key 'model' must be a mapping of model options, "
            f"got {entry!r}."
        )
    used = {k: v for k, v in entry.items() if not (k in UNUSED_AS_NULL and v is None)}
    return _section(ModelConfig, {**used, "weights": weights}, "model", file)


def adapter_postprocess(metadata: Mapping[str, Any], file: str | os.PathLike[str]) -> PostprocessConfig:
    """The post-processing parameters recorded in adapter ``metadata`` (defaults for those not recorded).

    Raises:
        NucleisamError: naming ``file`` and the dotted key (``postprocess.min_area``) at fault.
    """
    return _section(PostprocessConfig, metadata.get("postprocess"), "postprocess", file)


def adapter_train_mpp(metadata: dict[str, Any]) -> float:
    """Microns per pixel of the images an adapter was trained on; adapters written before the value
    was recorded were all trained on NuInsSeg, so they get its scan resolution."""
    return float(metadata.get("train_mpp", NUINSSEG_MPP))


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
    config = adapter_model_config(metadata, file, weights=weights)
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
