"""Turning the command line's INPUT... (files, folders, glob patterns, CSV lists) into a list of
images and slides."""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterable
from pathlib import Path

from nucleisam.data.imageio import IMAGE_SUFFIXES
from nucleisam.errors import NucleisamError

#: Whole-slide formats OpenSlide reads (besides TIFF, which IMAGE_SUFFIXES holds).
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
INPUT_SUFFIXES = IMAGE_SUFFIXES + SLIDE_SUFFIXES
#: Column of a CSV list of inputs (else its first column).
CSV_COLUMNS = ("input", "path", "slide", "image")


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in INPUT_SUFFIXES and not path.name.startswith(".")


def output_stem(path: Path) -> str:
    """The name outputs of ``path`` are called by: its stem, without ``.ome`` for OME-TIFF."""
    stem = path.stem
    return stem[:-4] if stem.lower().endswith(".ome") and path.suffix.lower() in (".tif", ".tiff") else stem


def read_input_list(path: Path) -> list[Path]:
    """The paths a CSV list names (column ``input``, ``path``, ``slide`` or ``image``, else the first;
    relative paths are relative to the CSV's folder)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise NucleisamError(f"cannot read the input list {path}: {exc}.") from exc
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    named = next((header.index(name) for name in CSV_COLUMNS if name in header), None)
    column = named or 0
    body = rows[1:] if named is not None else rows
    names = [row[column].strip() for row in body if len(row) > column and row[column].strip()]
    if not names:
        raise NucleisamError(f"input list {path} names no files: one path per row, column 'input' or 'path'.")
    paths = [Path(name).expanduser() for name in names]
    return [p if p.is_absolute() else path.parent / p for p in paths]


def _matches(text: str) -> list[Path]:
    suffixes = ", ".join(INPUT_SUFFIXES)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_input_list(path)
    if path.is_file():
        if not _is_image(path):
            raise NucleisamError(f"INPUT {text} is not a supported image ({suffixes}) or CSV list of inputs.")
        return [path]
    if path.is_dir():
        matches = sorted(child for child in path.iterdir() if _is_image(child))
        if not matches:
            raise NucleisamError(f"INPUT folder {text} holds no images ({suffixes}).")
        return matches
    if glob.has_magic(text):
        names = glob.glob(str(path), recursive=True)
        matches = sorted(Path(name) for name in names if _is_image(Path(name)))
        if not matches:
            raise NucleisamError(f"INPUT pattern {text} matches no images ({suffixes}).")
        return matches
    raise NucleisamError(f"INPUT {text} not found: name an image file, a folder or a glob pattern.")


def expand_inputs(items: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand image and slide files, folders (their images, not sub-folders), glob patterns (``**``
    allowed) and CSV lists of paths into a sorted list without duplicates.

    An item that matches nothing raises :class:`NucleisamError` naming it; an explicitly named file
    must have an image or slide suffix (PNG, JPEG, TIFF, SVS, NDPI, MRXS, SCN, …) or be a CSV list,
    whose paths are taken as named (a missing one fails on its own when it is read).
    """
    found: dict[Path, Path] = {}
    items = list(items)
    if not items:
        raise NucleisamError("no INPUT given: name image files, folders or glob patterns.")
    for item in items:
        for match in _matches(os.fspath(item)):
            found.setdefault(match.resolve(), match)
    return sorted(found.values(), key=lambda p: (str(p.parent), p.name))


def check_unique_stems(paths: Iterable[Path]) -> None:
    """Outputs are named by image stem: two inputs with the same stem would overwrite each other."""
    seen: dict[str, Path] = {}
    for path in paths:
        other = seen.setdefault(output_stem(path), path)
        if other != path:
            raise NucleisamError(
                f"inputs {other} and {path} share the name {output_stem(path)!r}, so their outputs would "
                "collide; run them separately, each into its own output folder (out)."
            )
