"""The one exception type users see: its message says what is wrong, where, and what to do."""

from __future__ import annotations

import errno
import re

# What to do about the operating-system errors a long run meets in practice.
_ADVICE = {
    errno.ENOSPC: "the disk is full: free space or write somewhere else",
    errno.EDQUOT: "the disk quota is used up: free space or write somewhere else",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.EACCES: "permission denied: choose a place you can write to (or read)",
    errno.EPERM: "operation not permitted: choose a place you can write to (or read)",
    errno.EIO: "input/output error: a failing disk or a dropped network share",
    errno.EFBIG: "the file is too large for this file system or process limit",
}
# Errors raised by Rust or C libraries (safetensors, imagecodecs) carry the errno only as text.
_EMBEDDED_ERRNO = re.compile(r"\bOs \{ code: (\d+)|\[Errno (\d+)\]|os error (\d+)")


class NucleisamError(Exception):
    """A problem with the user's input, files or options.

    The CLI prints the message (no traceback) and exits with status 2. Raise it with a message that
    names the file or option at fault and says how to fix it.
    """


def os_error_number(exc: BaseException) -> int | None:
    """The errno behind ``exc``: its own, one in its cause/context chain, or one a non-Python
    library wrote into its message; ``None`` when it is not an operating-system error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current.errno
        found = _EMBEDDED_ERRNO.search(str(current))
        if found:
            return int(next(group for group in found.groups() if group))
        current = current.__cause__ or current.__context__
    return None


def describe_os_error(number: int, path: object) -> str:
    """One line for the operating-system error ``number`` met on ``path``."""
    name = errno.errorcode.get(number, str(number))
    advice = _ADVICE.get(number)
    if advice is None:
        import os

        advice = os.strerror(number)
    return f"{path}: {advice} ({name})"
