"""Turning the command line's INPUT... (files, folders, glob patterns, CSV lists) into a list of
images and slides.

A folder or glob pattern can hold an earlier ``nucleisam predict`` output folder (``--out`` inside the
input tree, or the input folder itself): its label TIFFs and overlay / tissue PNGs have image suffixes
but are not images to segment. When expanding a folder or pattern, a file is taken for one of our
outputs, and left out, only when its name is ``<stem><output suffix>`` *and* ``<stem>`` is the output
stem of another image in the same folder or of a row of that folder's ``manifest.csv``; a user's
``scan_overlay.png`` with no ``scan`` beside it stays an input. Files named explicitly or in a CSV
list are always taken as given.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nucleisam.data.imageio import IMAGE_SUFFIXES
from nucleisam.errors import NucleisamError

#: Whole-slide formats OpenSlide reads (besides TIFF, which IMAGE_SUFFIXES holds).
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
INPUT_SUFFIXES = IMAGE_SUFFIXES + SLIDE_SUFFIXES
#: Column of a CSV list of inputs (else its first column).
CSV_COLUMNS = ("input", "path", "slide", "image")
#: The cohort manifest ``nucleisam predict`` keeps in its output folder (written by nucleisam.batch).
MANIFEST_NAME = "manifest.csv"


@dataclass
class ExpandedInputs:
    """What :func:`collect_inputs` found: the inputs, and the earlier outputs of ours it left out."""

    paths: list[Path]
    left_out: list[Path] = field(default_factory=list)


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


def _manifest_stems(folder: Path) -> set[str]:
    """Output stems of the inputs a ``manifest.csv`` in ``folder`` records (none when there is no
    readable manifest with an ``input`` column: a user's own CSV there is not ours to judge)."""
    try:
        with open(folder / MANIFEST_NAME, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        return set()
    return {output_stem(Path(row["input"])) for row in rows if row.get("input") and "status" in row}


def _split_outputs(matches: list[Path], output_suffixes: Collection[str]) -> tuple[list[Path], list[Path]]:
    """``matches`` (one folder's or pattern's images) without the files that are earlier outputs of
    ours by the rule in the module doc, and those files."""
    if not output_suffixes:
        return matches, []
    by_folder: dict[Path, set[str]] = {}
    for path in matches:
        by_folder.setdefault(path.parent, set()).add(output_stem(path))
    manifests = {folder: _manifest_stems(folder) for folder in by_folder}
    kept: list[Path] = []
    left_out: list[Path] = []
    for path in matches:
        stems = by_folder[path.parent] | manifests[path.parent]
        owners = {path.name[: -len(suffix)] for suffix in output_suffixes if path.name.endswith(suffix)}
        (left_out if owners & stems else kept).append(path)
    return kept, left_out


def _matches(text: str, output_suffixes: Collection[str]) -> tuple[list[Path], list[Path]]:
    suffixes = ", ".join(INPUT_SUFFIXES)
    path = Path(text).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        return read_input_list(path), []
    if path.is_file():
        if not _is_image(path):
            raise NucleisamError(f"INPUT {text} is not a supported image ({suffixes}) or CSV list of inputs.")
        return [path], []
    if path.is_dir():
        what = f"folder {text}"
        matches = sorted(child for child in path.iterdir() if _is_image(child))
    elif glob.has_magic(text):
        what = f"pattern {text}"
        matches = sorted(Path(name) for name in glob.glob(str(path), recursive=True) if _is_image(Path(name)))
    else:
        raise NucleisamError(f"INPUT {text} not found: name an image file, a folder or a glob pattern.")
    kept, left_out = _split_outputs(matches, output_suffixes)
    if left_out and not kept:
        raise NucleisamError(
            f"INPUT {what} holds only outputs of an earlier nucleisam run ({len(left_out)} files such as "
            f"{left_out[0].name}); name the files themselves, or list them in a CSV, to segment them."
        )
    if not kept:
        verb = "holds" if path.is_dir() else "matches"
        raise NucleisamError(f"INPUT {what} {verb} no images ({suffixes}).")
    return kept, left_out


def collect_inputs(
    items: Iterable[str | os.PathLike[str]], *, output_suffixes: Collection[str] = ()
) -> ExpandedInputs:
    """Expand image and slide files, folders (their images, not sub-folders), glob patterns (``**``
    allowed) and CSV lists of paths into a sorted list without duplicates.

    An item that matches nothing raises :class:`NucleisamError` naming it; an explicitly named file
    must have an image or slide suffix (PNG, JPEG, TIFF, SVS, NDPI, MRXS, SCN, …) or be a CSV list,
    whose paths are taken as named (a missing one fails on its own when it is read).

    ``output_suffixes`` are the names our outputs end with (``_labels.tif``, ``_overlay.png``, …):
    files that folders and patterns hold and that are earlier outputs by the rule in the module doc
    are left out of ``paths`` and listed in ``left_out``, unless another item names them.
    """
    found: dict[Path, Path] = {}
    skipped: dict[Path, Path] = {}
    items = list(items)
    if not items:
        raise NucleisamError("no INPUT given: name image files, folders or glob patterns.")
    for item in items:
        matches, left_out = _matches(os.fspath(item), output_suffixes)
        for match in matches:
            found.setdefault(match.resolve(), match)
        for path in left_out:
            skipped.setdefault(path.resolve(), path)

    def order(path: Path) -> tuple[str, str]:
        return str(path.parent), path.name

    return ExpandedInputs(sorted(found.values(), key=order),
                          sorted((p for key, p in skipped.items() if key not in found), key=order))


def expand_inputs(items: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """:func:`collect_inputs` without leaving anything out: every image the items name."""
    return collect_inputs(items).paths


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
