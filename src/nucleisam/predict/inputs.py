"""Turning the command line's INPUT... (files, folders, glob patterns) into a list of images."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from nucleisam.data.imageio import IMAGE_SUFFIXES
from nucleisam.errors import NucleisamError


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def expand_inputs(items: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand image files, folders (their images, not sub-folders) and glob patterns (``**``
    allowed) into a sorted list of image paths without duplicates.

    An item that matches no image raises :class:`NucleisamError` naming it; an explicitly named
    file must have an image suffix (PNG, JPEG or TIFF).
    """
    found: dict[Path, Path] = {}
    items = list(items)
    if not items:
        raise NucleisamError("no INPUT given: name image files, folders or glob patterns.")
    suffixes = ", ".join(IMAGE_SUFFIXES)
    for item in items:
        text = os.fspath(item)
        path = Path(text).expanduser()
        if path.is_file():
            if not _is_image(path):
                raise NucleisamError(f"INPUT {text} is not a supported image ({suffixes}).")
            matches = [path]
        elif path.is_dir():
            matches = sorted(child for child in path.iterdir() if _is_image(child))
            if not matches:
                raise NucleisamError(f"INPUT folder {text} holds no images ({suffixes}).")
        elif glob.has_magic(text):
            names = glob.glob(str(path), recursive=True)
            matches = sorted(Path(name) for name in names if _is_image(Path(name)))
            if not matches:
                raise NucleisamError(f"INPUT pattern {text} matches no images ({suffixes}).")
        else:
            raise NucleisamError(f"INPUT {text} not found: name an image file, a folder or a glob pattern.")
        for match in matches:
            found.setdefault(match.resolve(), match)
    return sorted(found.values(), key=lambda p: (str(p.parent), p.name))


def check_unique_stems(paths: Iterable[Path]) -> None:
    """Outputs are named by image stem: two inputs with the same stem would overwrite each other."""
    seen: dict[str, Path] = {}
    for path in paths:
        other = seen.setdefault(path.stem, path)
        if other != path:
            raise NucleisamError(
                f"inputs {other} and {path} share the name {path.stem!r}, so their outputs would collide; "
                "run them separately, each into its own output folder (out)."
            )
