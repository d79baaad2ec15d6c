"""The official MobileSAM checkpoint: where it is cached, how it is downloaded, verified and loaded.

The weights are never unpickled with code execution: :func:`load_state_dict_file` uses
``torch.load(..., weights_only=True)``, which only rebuilds tensors and plain containers and refuses
any other object. Every key is checked against the model before loading, and a mismatch is reported
in full (missing, unexpected and mis-shaped keys) instead of PyTorch's one-line error.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from nucleisam.errors import NucleisamError
from nucleisam.utils.download import HOME_ENV, cache_dir, download_file, file_sha256

logger = logging.getLogger(__name__)

#: MobileSAM's released weights (a flat state_dict), pinned to a commit of the authors' repository.
CHECKPOINT_URL = "https://github.com/ChaoningZhang/MobileSAM/raw/a509aac54fdd7af59f843135f2f7cee307283c88/weights/mobile_sam.pt"
CHECKPOINT_SHA256 = "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"
CHECKPOINT_SIZE = 40_728_226
CHECKPOINT_FILENAME = "mobile_sam.pt"


def default_checkpoint_path() -> Path:
    """Where ``nucleisam weights download`` puts (and ``weights="auto"`` looks for) ``mobile_sam.pt``."""
    return cache_dir() / CHECKPOINT_FILENAME


def _manual_instructions(destination: Path, url: str | None = None) -> str:
    source = f"from {url}" if url else "from that address"
    return (
        f"Download the file by hand {source} (e.g. with a browser on a machine with internet access) and "
        f"save it as {destination}; or use a copy elsewhere (model.weights); or set {HOME_ENV} to the "
        f"folder that holds {CHECKPOINT_FILENAME}."
    )


def download_checkpoint(
    destination: str | os.PathLike[str] | None = None,
    *,
    url: str = CHECKPOINT_URL,
    sha256: str = CHECKPOINT_SHA256,
    expected_size: int | None = CHECKPOINT_SIZE,
    force: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download the MobileSAM weights and verify them; return the path of the verified file.

    The bytes go to a ``.part`` file beside ``destination`` that is renamed into place only after
    its sha256 matches, so an interrupted or corrupted download never leaves a usable-looking file;
    an interrupted download is resumed from its ``.part`` file by the next call
    (:func:`nucleisam.utils.download.download_file`).

    Args:
        destination: target file (default :func:`default_checkpoint_path`).
        url, sha256, expected_size: the file to fetch and its known digest and size (size only sizes
            the progress bar when the server does not send one).
        force: download again from the start even if a verified file is already there.
        progress: show a progress bar on stderr.
        timeout: seconds to wait for the server before giving up.
    Raises:
        NucleisamError: offline, server error, or digest mismatch; the message says where to put a
            manually downloaded file.
    """
    target = Path(destination) if destination is not None else default_checkpoint_path()
    if target.is_file() and not force:
        actual = file_sha256(target)
        if actual == sha256:
            logger.info("MobileSAM weights already present and verified at %s", target)
            return target
        raise NucleisamError(
            f"{target} exists but its sha256 is {actual}, not the expected {sha256} (a partial or "
            "different file). Delete it, or run `nucleisam weights download --force` to replace it."
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NucleisamError(
            f"cannot create the weights folder {target.parent}: {exc.strerror or exc}. "
            f"Set {HOME_ENV} to a folder you can write to."
        ) from exc
    download_file(
        url,
        target,
        digest=sha256,
        size=expected_size,
        what="the MobileSAM weights",
        hint=_manual_instructions(target),
        resume=not force,
        progress=progress,
        timeout=timeout,
    )
    logger.info("MobileSAM weights downloaded and verified: %s", target)
    return target


def find_checkpoint(*, download: bool = True, progress: bool = True) -> Path:
    """The cached official checkpoint, verified; downloaded first if absent and ``download``."""
    target = default_checkpoint_path()
    if target.is_file() or download:
        return download_checkpoint(target, progress=progress)
    raise NucleisamError(
        f"the MobileSAM weights are not at {target}. Run `nucleisam weights download`. "
        f"{_manual_instructions(target, CHECKPOINT_URL)}"
    )


_REDOWNLOAD = (
    "Download it again with `nucleisam weights download --force`, or give the official mobile_sam.pt."
)


def _file_kind(head: bytes) -> str:
    """What the first bytes of a weights file say it is: ``torch-zip``, ``pickle``,
    ``safetensors``, ``html``, ``text`` or ``unknown``."""
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head[:1] == b"\x80":  # pickle protocol marker: PyTorch's legacy (pre-1.6) format
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "html"
    if head and all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head):
        return "text"
    return "unknown"


def _unsafe_global(exc: BaseException) -> str | None:
    """The disallowed class a weights-only unpickler met, if that is why it stopped."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    return found.group(1) if found else None


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a flat ``state_dict`` (``torch.save`` file or ``.safetensors``), safely.

    Only tensors and plain containers are accepted (``torch.load(weights_only=True)``): a file that
    would construct any other object (which in a pickle can mean running arbitrary code) is refused
    before anything in it runs. Failures are told apart — missing, empty, truncated, not a weights
    file at all (a web page, text), unsafe objects, not a flat mapping — and never answered with
    advice to load unsafely.

    Raises:
        NucleisamError: naming the file and what is wrong with it.
    """
    file = Path(path)
    if file.is_dir():
        raise NucleisamError(f"checkpoint {file} is a folder; give the path of mobile_sam.pt inside it.")
    if not file.is_file():
        raise NucleisamError(
            f"checkpoint {file} does not exist (model.weights). Give the path to mobile_sam.pt."
        )
    try:
        with open(file, "rb") as handle:
            head = handle.read(64)
    except OSError as exc:
        raise NucleisamError(f"cannot read checkpoint {file}: {exc.strerror or exc}.") from exc
    if not head:
        raise NucleisamError(f"checkpoint {file} is empty (0 bytes): an interrupted download? {_REDOWNLOAD}")
    kind = _file_kind(head)
    if kind in ("html", "text", "unknown"):
        what = {"html": "a web page (HTML), e.g. an error or login page saved instead of the file",
                "text": "a text file", "unknown": "not a PyTorch or safetensors file"}[kind]
        raise NucleisamError(f"checkpoint {file} is {what}, not model weights. {_REDOWNLOAD}")
    state = _read_safetensors(file) if kind == "safetensors" else _read_torch(file)
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise NucleisamError(
            f"checkpoint {file} is not a flat state_dict (a mapping of parameter names to tensors) like "
            "mobile_sam.pt."
        )
    return dict(state)


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(file, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise NucleisamError(
            f"checkpoint {file} looks like a safetensors file but cannot be read ({exc}): truncated? "
            f"{_REDOWNLOAD}"
        ) from exc


def _read_torch(file: Path) -> object:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_global(exc)
        if unsafe is None:
            raise NucleisamError(
                f"checkpoint {file} is damaged (its pickle data cannot be read). {_REDOWNLOAD}"
            ) from exc
        raise NucleisamError(
            f"refused to load checkpoint {file}: besides tensors it refers to {unsafe}, and rebuilding "
            "that from a pickle can run code. Use the official mobile_sam.pt or a plain state_dict of "
            "tensors (or a .safetensors file)."
        ) from exc
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError, KeyError, IndexError) as exc:
        damaged = isinstance(exc, EOFError | zipfile.BadZipFile | RuntimeError)
        raise NucleisamError(
            f"checkpoint {file} is {'truncated or damaged' if damaged else 'unreadable'} "
            f"({type(exc).__name__}): not a complete PyTorch file. {_REDOWNLOAD}"
        ) from exc


@dataclass(frozen=True)
class KeyReport:
    """Differences between a checkpoint and a model's ``state_dict``."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mis_shaped: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # (key, checkpoint, model)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mis_shaped)

    def format(self, *, limit: int = 20) -> str:
        """Readable multi-line report, at most ``limit`` entries per section."""
        lines: list[str] = []

        def section(title: str, entries: list[str]) -> None:
            if not entries:
                return
            lines.append(f"{title} ({len(entries)}):")
            lines.extend(f"  {entry}" for entry in entries[:limit])
            if len(entries) > limit:
                lines.append(f"  ... and {len(entries) - limit} more")

        section("missing from the checkpoint", list(self.missing))
        section("unexpected in the checkpoint", list(self.unexpected))
        section(
            "shape differs (checkpoint vs model)",
            [f"{key}: {tuple(ck)} vs {tuple(md)}" for key, ck, md in self.mis_shaped],
        )
        return "\n".join(lines)


def compare_state_dict(
    expected: Mapping[str, torch.Tensor], checkpoint: Mapping[str, torch.Tensor]
) -> KeyReport:
    """Compare a checkpoint's keys and shapes with a model's ``state_dict`` (``expected``)."""
    missing = tuple(k for k in expected if k not in checkpoint)
    unexpected = tuple(k for k in checkpoint if k not in expected)
    mis_shaped = tuple(
        (k, tuple(checkpoint[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in checkpoint and checkpoint[k].shape != expected[k].shape
    )
    return KeyReport(missing=missing, unexpected=unexpected, mis_shaped=mis_shaped)


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` into ``module`` only if keys and shapes match exactly; else explain what differs.

    Raises:
        NucleisamError: naming ``source`` and listing missing, unexpected and mis-shaped keys.
    """
    report = compare_state_dict(module.state_dict(), state)
    if not report.ok:
        raise NucleisamError(
            f"{source} does not match the MobileSAM architecture:\n{report.format()}\n"
            "Use the official mobile_sam.pt (`nucleisam weights download`) or a state_dict with its keys."
        )
    module.load_state_dict(state, strict=True)
