"""Downloads that survive bad networks: the user cache folder, checksums, resumable streaming.

A download streams to ``<target>.part`` beside its target and is renamed into place only after its
checksum matches, so a file at the target path is always complete and verified. An interrupted
download keeps the bytes it received in the ``.part`` file and the next attempt asks the server for
the rest with an HTTP ``Range`` request; a server that ignores the range sends the whole file again,
which is overwritten from the start. Failures raise :class:`DownloadError`, one line naming the URL,
what went wrong, and the caller's advice on getting the file another way.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from nucleisam.errors import NucleisamError

#: Environment variable naming the folder that holds downloaded weights and data sets.
HOME_ENV = "NUCLEISAM_HOME"

_CHUNK = 1 << 20


class DownloadError(NucleisamError):
    """A URL could not be fetched or its content was wrong; ``url`` and ``reason`` say which and why."""

    def __init__(self, message: str, *, url: str, reason: str) -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason


def cache_dir() -> Path:
    """Folder for downloads: ``$NUCLEISAM_HOME`` if set, else the platform's user cache.

    Linux and other Unix: ``$XDG_CACHE_HOME/nucleisam`` (default ``~/.cache/nucleisam``); macOS:
    ``~/Library/Caches/nucleisam``; Windows: ``%LOCALAPPDATA%\\nucleisam\\Cache``.
    """
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "nucleisam" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "nucleisam"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base_dir = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base_dir / "nucleisam"


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file with any :mod:`hashlib` algorithm (Zenodo publishes md5), read in 1 MiB chunks."""
    try:
        # md5 here checks integrity, not security: allowed even where FIPS mode forbids md5 for security.
        digest = hashlib.new(algorithm, usedforsecurity=False)
    except ValueError as exc:
        raise NucleisamError(
            f"unsupported checksum algorithm {algorithm!r} (hashlib has no such hash)."
        ) from exc
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file."""
    return file_digest(path, "sha256")


def partial_path(target: str | os.PathLike[str]) -> Path:
    """Where the bytes of ``target`` collect while it downloads (kept between attempts to resume)."""
    target = Path(target)
    return target.with_name(target.name + ".part")


def failure_reason(exc: BaseException) -> str:
    """Short description of a network error: ``HTTP 404 Not Found``, ``[Errno 111] Connection refused``."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    reason = getattr(exc, "reason", None) or exc
    return str(reason) or type(exc).__name__


def fetch_json(url: str, *, timeout: float = 60.0) -> Any:
    """GET ``url`` and parse its JSON body.

    Raises:
        DownloadError: unreachable, an HTTP error, or a body that is not JSON (e.g. a proxy's login page).
    """
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError is an OSError
        reason = failure_reason(exc)
        raise DownloadError(f"could not reach {url} ({reason}).", url=url, reason=reason) from exc
    try:
        return json.loads(body)
    except ValueError as exc:
        raise DownloadError(
            f"{url} did not answer with JSON ({body[:60]!r}...).", url=url, reason="not JSON"
        ) from exc


def download_file(
    url: str,
    target: str | os.PathLike[str],
    *,
    digest: str,
    algorithm: str = "sha256",
    size: int | None = None,
    what: str | None = None,
    hint: str = "",
    resume: bool = True,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``target`` through ``<target>.part``, resuming it, and verify its checksum.

    Args:
        url: what to fetch (http(s) or file).
        target: final path; its folder must exist. An existing file there is replaced.
        digest, algorithm: the expected hex digest and its :mod:`hashlib` algorithm.
        size: expected byte count, if known: sizes the progress bar when the server sends none, and a
            ``.part`` of exactly this size is verified without asking the server again.
        what: name of the file in messages (default: the target's name).
        hint: advice appended to every error (how to get the file by hand).
        resume: continue an existing ``.part`` file; ``False`` starts from zero.
        progress: show a progress bar on stderr.
        timeout: seconds to wait for the server at each step before giving up.
    Raises:
        DownloadError: offline, an HTTP error, a connection cut short (the ``.part`` file is kept and
            the message says so), or a checksum mismatch (the ``.part`` file is deleted).
    """
    target = Path(target)
    part = partial_path(target)
    what = what or target.name
    if not resume or (part.is_file() and size is not None and part.stat().st_size > size):
        part.unlink(missing_ok=True)
    offset = part.stat().st_size if part.is_file() else 0
    if size is None or offset != size:
        _fetch(url, part, offset, size, what=what, hint=hint, progress=progress, timeout=timeout)
    actual = file_digest(part, algorithm)
    if actual != digest.lower():
        part.unlink()
        raise DownloadError(
            f"{what} downloaded from {url} has {algorithm} {actual}, expected {digest.lower()}; it was "
            f"discarded. {hint}".rstrip(),
            url=url,
            reason=f"{algorithm} mismatch",
        )
    os.replace(part, target)
    return target


def _fetch(
    url: str,
    part: Path,
    offset: int,
    size: int | None,
    *,
    what: str,
    hint: str,
    progress: bool,
    timeout: float,
) -> None:
    """Append the bytes after ``offset`` to ``part`` (or rewrite it whole if the server ignores the range)."""
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # the kept bytes do not fit the file the server has now
            part.unlink()
            return _fetch(url, part, 0, size, what=what, hint=hint, progress=progress, timeout=timeout)
        raise _failure(url, what, exc, part, hint) from exc
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise _failure(url, what, exc, part, hint) from exc
    with response:
        if offset and response.status != 206:  # the server sent the whole file: start over
            offset = 0
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length and length.isdigit() else size
        received = offset
        try:
            with (
                open(part, "ab" if offset else "wb") as out,
                tqdm(
                    total=expected,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=part.name.removesuffix(".part"),
                    disable=not progress,
                ) as bar,
            ):
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as exc:
            raise _failure(url, what, exc, part, hint) from exc
    if expected is not None and received < expected:
        raise _failure(
            url, what, None, part, hint, detail=f"stopped after {received:,} of {expected:,} bytes"
        )


def _failure(
    url: str, what: str, exc: BaseException | None, part: Path, hint: str, *, detail: str | None = None
) -> DownloadError:
    """The error for a download that did not finish; an empty ``.part`` is removed, a non-empty one kept."""
    reason = detail or failure_reason(exc)
    kept = part.stat().st_size if part.is_file() else 0
    if part.is_file() and not kept:
        part.unlink()
    message = f"could not download {what} from {url} ({reason})."
    if kept:
        message += f" The {kept:,} bytes received are kept in {part}: run the same command again to resume."
    return DownloadError(f"{message} {hint}".rstrip(), url=url, reason=reason)
