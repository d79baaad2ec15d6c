"""Reproducibility and resumable state: seeding, RNG capture/restore, and training checkpoints.

A checkpoint is two files in one folder, each written atomically:

- ``weights-<epoch>-<step>.safetensors``: the model's trainable parameters and all buffers
  (frozen parameters are rebuilt from the base checkpoint or the seeded random init; a fingerprint
  of them is stored to catch a mismatch on resume);
- ``train_state.pt``: optimiser state, counters, history, best-epoch bookkeeping and the RNG states
  of Python, NumPy and torch, saved with :func:`torch.save` holding only tensors and primitive
  Python values, so that it loads with ``torch.load(weights_only=True)``.

``train_state.pt`` is written last and names its weights file: it is the commit point, so a run
killed while saving resumes from the previous complete checkpoint.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nucleisam.errors import NucleisamError
from nucleisam.utils.atomic import atomic_output

TRAIN_STATE_FILE = "train_state.pt"
#: What resuming reads from ``train_state.pt`` besides the training loop's own bookkeeping.
REQUIRED_STATE_KEYS = ("epoch", "step", "weights_file", "optimizer", "rng", "frozen_fingerprint")
#: Bumped when the layout of ``train_state.pt`` changes incompatibly.
STATE_FORMAT = 1


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's legacy global and torch's (CPU and CUDA) generators.

    Our own code draws from explicit ``np.random.Generator`` objects; the legacy global generator
    is seeded and saved too because third-party code may still use it.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states of Python, NumPy and torch as tensors and primitives."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached"]))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def frozen_parameter_names(model: torch.nn.Module) -> set[str]:
    return {name for name, param in model.named_parameters() if not param.requires_grad}


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every state_dict entry except frozen parameters: what training changes (buffers included)."""
    frozen = frozen_parameter_names(model)
    return {k: v.detach() for k, v in model.state_dict().items() if k not in frozen}


def frozen_fingerprint(model: torch.nn.Module) -> torch.Tensor:
    """Float64 sums of each frozen parameter (sorted by name): cheap evidence of the same base."""
    params = dict(model.named_parameters())
    names = sorted(frozen_parameter_names(model))
    if not names:
        return torch.zeros(0, dtype=torch.float64)
    return torch.stack([params[n].detach().double().sum().cpu() for n in names])


def save_weights(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor]) -> Path:
    """Write tensors to a safetensors file atomically (copies to contiguous CPU memory first)."""
    data = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_output(path) as tmp:
        save_file(data, str(tmp))
    return Path(path)


def load_weights_into(model: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a file written from :func:`trainable_state` into ``model``; keys must match exactly."""
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise NucleisamError(f"cannot read weights file {path}: {exc}") from exc
    expected = set(trainable_state(model))
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise NucleisamError(
            f"weights file {path} does not fit the model (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}). It was written for another model configuration; use the same "
            "config.yaml or start a new run."
        )
    model.load_state_dict(tensors, strict=False)


def save_checkpoint(
    directory: str | os.PathLike[str],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    step: int,
    extra: Mapping[str, Any],
) -> Path:
    """Save a resumable checkpoint into ``directory`` and delete the weights of older ones.

    ``epoch`` counts completed epochs, ``step`` completed optimiser steps; ``extra`` holds further
    primitive values (history, best-epoch bookkeeping, position inside an epoch, ...).
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    weights_name = f"weights-{epoch:04d}-{step:07d}.safetensors"
    save_weights(folder / weights_name, trainable_state(model))
    state = {
        "format": STATE_FORMAT,
        "epoch": epoch,
        "step": step,
        "weights_file": weights_name,
        "optimizer": optimizer.state_dict(),
        "rng": capture_rng_state(),
        "frozen_fingerprint": frozen_fingerprint(model),
        **extra,
    }
    with atomic_output(folder / TRAIN_STATE_FILE) as tmp:
        torch.save(state, tmp)
    for old in folder.glob("weights-*.safetensors"):
        if old.name != weights_name:
            old.unlink(missing_ok=True)
    return folder / TRAIN_STATE_FILE


def read_train_state(
    directory: str | os.PathLike[str], *, required: Sequence[str] = ()
) -> dict[str, Any] | None:
    """The saved ``train_state.pt`` of ``directory``, or None when there is no checkpoint; it must
    hold :data:`REQUIRED_STATE_KEYS` and the caller's ``required`` keys."""
    path = Path(directory) / TRAIN_STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means the same thing to the user
        # torch's own text may advise weights_only=False: never pass that on for a damaged file.
        raise NucleisamError(
            f"cannot read checkpoint {path} ({type(exc).__name__}: damaged, truncated or not written by "
            f"nucleisam). Delete the folder {path.parent} to start the fold again."
        ) from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise NucleisamError(f"checkpoint {path} has an unknown format; delete {path.parent} to start again.")
    missing = [key for key in (*REQUIRED_STATE_KEYS, *required) if key not in state]
    if missing:
        raise NucleisamError(
            f"checkpoint {path} lacks {', '.join(missing)} (an incomplete or edited file); delete "
            f"{path.parent} to start the fold again."
        )
    return state


def load_checkpoint(
    directory: str | os.PathLike[str],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    restore_rng: bool = True,
    required: Sequence[str] = (),
) -> dict[str, Any] | None:
    """Restore model weights, optimiser and (optionally) RNG states; return the saved state dict
    (which holds the caller's ``required`` keys)."""
    state = read_train_state(directory, required=required)
    if state is None:
        return None
    fingerprint = frozen_fingerprint(model)
    saved = state["frozen_fingerprint"]
    if saved.shape != fingerprint.shape or not torch.equal(saved, fingerprint):
        raise NucleisamError(
            f"checkpoint in {directory} was trained on other frozen base weights than the model "
            "built now (different MobileSAM checkpoint, weights setting or seed). Resume with the "
            "run's own config.yaml and base weights, or start a new run."
        )
    load_weights_into(model, Path(directory) / state["weights_file"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, TypeError) as exc:
        raise NucleisamError(
            f"the optimiser state in {directory} does not fit this model's trainable parameters ({exc}); "
            "resume with the run's own config.yaml, or delete the folder to start the fold again."
        ) from exc
    if restore_rng:
        restore_rng_state(state["rng"])
    return state
