"""Atomic writes: a result file either appears complete or not at all.

Everything the tool writes goes to a temporary file in the destination folder first and is renamed
into place with :func:`os.replace` (atomic on POSIX and Windows within one file system), so an
interrupted run never leaves a truncated CSV, TIFF or checkpoint behind. The file gets the
permissions an ordinary write would give it: those of the file it replaces, else 0666 less the
process umask (0644 under the usual umask 022), so colleagues and services can read the results.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from nucleisam.errors import NucleisamError, describe_os_error, os_error_number


def ensure_output_dir(path: str | os.PathLike[str], *, option: str = "out") -> Path:
    """Create ``path`` (and parents) if needed and check that files can be written in it."""
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NucleisamError(
            f"cannot create output folder ({option}) {describe_os_error(exc.errno or 0, directory)}"
        ) from exc
    if not directory.is_dir():
        raise NucleisamError(f"output path {directory} ({option}) exists and is not a folder.")
    if not os.access(directory, os.W_OK | os.X_OK):
        read_only = hasattr(os, "statvfs") and os.statvfs(directory).f_flag & os.ST_RDONLY
        number = errno.EROFS if read_only else errno.EACCES
        raise NucleisamError(f"output folder ({option}) {describe_os_error(number, directory)}")
    return directory


def _umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    # Elsewhere the only way to read it is to set it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _final_mode(target: Path) -> int:
    """Permission bits for the file that will appear at ``target``."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    Writers that want a file name (tifffile, matplotlib, safetensors) write to the yielded path.
    On any exception the temporary file is removed and ``path`` is left untouched; an
    operating-system failure (full disk, read-only or vanished folder, I/O error), whichever library
    met it, becomes a one-line :class:`NucleisamError` naming ``path``. The result
    keeps the mode of the file it replaces, else gets 0666 less the umask (``mkstemp`` alone
    would give every output 0600).
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise NucleisamError(f"cannot write {describe_os_error(exc.errno or 0, target)}") from exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _final_mode(target))
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        number = None if isinstance(exc, NucleisamError | KeyboardInterrupt) else os_error_number(exc)
        if number is not None:
            raise NucleisamError(
                f"cannot write {describe_os_error(number, target)}; nothing was written there."
            ) from exc
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


def check_outputs_free(paths: Iterable[str | os.PathLike[str]], *, overwrite: bool) -> None:
    """Raise :class:`NucleisamError` naming the first path that exists, unless ``overwrite``: no
    command replaces earlier results unless asked to."""
    if overwrite:
        return
    for path in paths:
        if Path(path).exists():
            raise NucleisamError(
                f"output file {path} already exists; replace it (overwrite) or write to another output "
                "folder (out)."
            )
