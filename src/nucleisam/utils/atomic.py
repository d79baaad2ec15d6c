"""Atomic writes: a result file either appears complete or not at all.

Everything the tool writes goes to a temporary file in the destination folder first and is renamed
into place with :func:`os.replace` (atomic on POSIX and Windows within one file system), so an
interrupted run never leaves a truncated CSV, TIFF or checkpoint behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nucleisam.errors import NucleisamError


def ensure_output_dir(path: str | os.PathLike[str], *, option: str = "out") -> Path:
    """Create ``path`` (and parents) if needed and check that files can be written in it."""
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NucleisamError(
            f"cannot create output folder {directory} ({option}): {exc.strerror or exc}. "
            "Choose a folder you can write to."
        ) from exc
    if not directory.is_dir():
        raise NucleisamError(f"output path {directory} ({option}) exists and is not a folder.")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise NucleisamError(
            f"output folder {directory} ({option}) is not writable. Choose a folder you can write to."
        )
    return directory


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    Writers that want a file name (tifffile, matplotlib, safetensors) write to the yielded path.
    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and return the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (keys in insertion order, trailing newline) atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, allow_nan=True) + "\n")
