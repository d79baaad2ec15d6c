"""Slide outputs written chunk by chunk, never holding the slide's labels or nuclei in memory.

=============  ================================  =====================================================
format         file                              content
=============  ================================  =====================================================
parquet        ``<stem>_nuclei.parquet``         one row per nucleus (:data:`SLIDE_COLUMNS`), one row
                                                 group per chunk (pyarrow)
csv            ``<stem>_nuclei.csv``             the same rows as CSV
geojson        ``<stem>_nuclei.geojson``         QuPath detections, level-0 pixel coordinates
geojson.gz     ``<stem>_nuclei.geojson.gz``      the same, gzip-compressed (QuPath reads it too)
zarr           ``<stem>_labels.zarr``            OME-Zarr 0.4 label image (zarr v2, uint32 ids,
                                                 1024² chunks, 2× pyramid), µm scale of the working
                                                 resolution; napari opens it as a labels layer
overlay        ``<stem>_overlay.png``            nucleus outlines on the slide's thumbnail
tissue         ``<stem>_tissue.png``             the tissue mask used (white = tissue), thumbnail size
=============  ================================  =====================================================

Every file grows under a temporary name ``.<name>.part`` in the output folder and all are renamed
into place only when the whole slide is done (:meth:`SlideWriter.close`); a failure removes them,
and a killed run leaves only ``.part`` names, which :func:`remove_partials` clears.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import gzip
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageDraw

from nucleisam.exports.images import NUCLEUS_CLASS, rounded_rows
from nucleisam.predict.assemble import SLIDE_COLUMNS, CommittedChunk
from nucleisam.predict.slide import SlideGeometry

SLIDE_FORMATS: tuple[str, ...] = ("parquet", "csv", "geojson", "geojson.gz", "zarr", "overlay", "tissue")
#: What a slide writes when ``--formats`` is not given.
DEFAULT_SLIDE_FORMATS: tuple[str, ...] = ("parquet", "csv", "geojson", "zarr", "overlay", "tissue")
SLIDE_SUFFIXES: dict[str, str] = {
    "parquet": "_nuclei.parquet", "csv": "_nuclei.csv", "geojson": "_nuclei.geojson",
    "geojson.gz": "_nuclei.geojson.gz", "zarr": "_labels.zarr", "overlay": "_overlay.png",
    "tissue": "_tissue.png",
}
#: Label zarr chunk side; pyramid levels halve until the longest side fits in one chunk.
ZARR_CHUNK = 1024
OVERLAY_COLOUR = (0, 255, 0)
_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/nucleisam/nucleisam/nucleus")


def slide_output_paths(
    out_dir: str | os.PathLike[str], stem: str, formats: tuple[str, ...]
) -> dict[str, Path]:
    """The file (or zarr folder) each slide format writes for ``stem`` in ``out_dir``."""
    return {name: Path(out_dir) / f"{stem}{SLIDE_SUFFIXES[name]}" for name in formats}


def part_path(path: Path) -> Path:
    """The temporary name ``path`` grows under."""
    return path.with_name(f".{path.name}.part")


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_partials(out_dir: str | os.PathLike[str], stem: str, suffixes: list[str]) -> list[Path]:
    """Remove what an interrupted run left for ``stem``: ``.<stem><suffix>…part`` temporary files and
    folders (slide writers' and :func:`~nucleisam.utils.atomic.atomic_output`'s)."""
    removed = []
    for suffix in suffixes:
        pattern = os.path.join(glob.escape(os.fspath(out_dir)), f".{glob.escape(stem + suffix)}*.part")
        for name in glob.glob(pattern):
            remove_path(Path(name))
            removed.append(Path(name))
    return removed


def _label_array(group: Any, name: str, shape: tuple[int, ...]) -> Any:
    """A uint32 label array as OME-Zarr 0.4 wants it: zarr v2 with '/'-separated chunk keys."""
    return group.create_array(name, shape=shape, chunks=(ZARR_CHUNK, ZARR_CHUNK), dtype="uint32",
                              fill_value=0, chunk_key_encoding={"name": "v2", "separator": "/"})


def _feature(stem: str, label_id: int, ring: np.ndarray, names: list[str], row: list) -> dict:
    class_name, class_colour = NUCLEUS_CLASS
    return {
        "type": "Feature",
        "id": str(uuid.uuid5(_UUID_NAMESPACE, f"{stem}/{label_id}")),
        "geometry": {"type": "Polygon", "coordinates": [np.round(ring, 3).tolist()]},
        "properties": {
            "objectType": "detection",
            "classification": {"name": class_name, "color": list(class_colour)},
            "measurements": dict(zip(names, row, strict=True)),
        },
    }


class SlideWriter:
    """Streams one slide's :class:`~nucleisam.predict.assemble.CommittedChunk` s into ``formats``.

    Use as a context manager: leaving it normally renames every output into place (:meth:`close`),
    an exception removes them all (:meth:`abort`).
    """

    def __init__(self, out_dir: str | os.PathLike[str], stem: str, formats: tuple[str, ...], *,
                 geometry: SlideGeometry, dimensions: tuple[int, int], thumbnail: np.ndarray,
                 tissue: np.ndarray | None) -> None:
        self.stem = stem
        self.paths = slide_output_paths(out_dir, stem, formats)
        self.geometry = geometry
        self.dimensions = dimensions
        self.thumbnail = thumbnail
        self.tissue = tissue
        self._handles: dict[str, IO[Any]] = {}
        self._parquet: Any = None
        self._zarr: Any = None
        self._separator = {"geojson": "\n", "geojson.gz": "\n"}
        self._overlay: Image.Image | None = None
        self._open()

    def _open(self) -> None:
        for name, path in self.paths.items():
            remove_path(part_path(path))
            if name == "parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq

                fields = [pa.field(c, pa.int64() if c == "id" else pa.float64()) for c in SLIDE_COLUMNS]
                self._parquet = pq.ParquetWriter(part_path(path), pa.schema(fields), compression="zstd")
            elif name == "csv":
                handle = open(part_path(path), "w", encoding="utf-8", newline="")
                csv.writer(handle, lineterminator="\n").writerow(SLIDE_COLUMNS)
                self._handles[name] = handle
            elif name in ("geojson", "geojson.gz"):
                handle = (gzip.open(part_path(path), "wt", encoding="utf-8") if name == "geojson.gz"
                          else open(part_path(path), "w", encoding="utf-8"))
                handle.write('{"type":"FeatureCollection","features":[')
                self._handles[name] = handle
            elif name == "zarr":
                self._zarr = self._create_zarr(part_path(path))
            elif name == "overlay":
                self._overlay = Image.fromarray(np.ascontiguousarray(self.thumbnail))

    def _create_zarr(self, path: Path) -> Any:
        import zarr

        group = zarr.open_group(path, mode="w", zarr_format=2)
        return _label_array(group, "0", (self.geometry.height, self.geometry.width))

    def write(self, chunk: CommittedChunk) -> None:
        """Append one committed chunk to every output."""
        if self._zarr is not None:
            y0, x0, y1, x1 = chunk.region
            self._zarr[y0:y1, x0:x1] = chunk.labels
        if not len(chunk.rings):
            return
        if self._parquet is not None:
            import pyarrow as pa

            self._parquet.write_table(pa.table({name: chunk.table[name] for name in SLIDE_COLUMNS}))
        names, rows = rounded_rows({name: chunk.table[name] for name in SLIDE_COLUMNS})
        if "csv" in self._handles:
            csv.writer(self._handles["csv"], lineterminator="\n").writerows(rows)
        for name in ("geojson", "geojson.gz"):
            if name in self._handles:
                handle = self._handles[name]
                for label_id, ring, row in zip(chunk.table["id"].tolist(), chunk.rings, rows, strict=True):
                    feature = _feature(self.stem, label_id, ring, names, row)
                    handle.write(self._separator[name] + json.dumps(feature, separators=(",", ":")))
                    self._separator[name] = ",\n"
        if self._overlay is not None:
            self._draw_outlines(chunk.rings)

    def _draw_outlines(self, rings: list[np.ndarray]) -> None:
        assert self._overlay is not None
        draw = ImageDraw.Draw(self._overlay)
        width, height = self.dimensions
        factor = np.array([self._overlay.width / width, self._overlay.height / height])
        for ring in rings:
            draw.line([tuple(p) for p in (ring * factor).tolist()], fill=OVERLAY_COLOUR, width=1)

    def _finish_zarr(self) -> None:
        """Add the 2× pyramid and the OME-Zarr 0.4 label-image metadata."""
        import zarr

        group = zarr.open_group(part_path(self.paths["zarr"]), mode="r+", zarr_format=2)
        level, datasets = self._zarr, []
        factor = 1
        while True:
            scale = self.geometry.mpp * factor
            datasets.append({"path": str(len(datasets)),
                             "coordinateTransformations": [{"type": "scale", "scale": [scale, scale]}]})
            if max(level.shape) <= ZARR_CHUNK:
                break
            smaller = _label_array(group, str(len(datasets)), tuple((s + 1) // 2 for s in level.shape))
            block = 2 * ZARR_CHUNK  # one output chunk at a time: memory stays flat in the slide size
            for top in range(0, level.shape[0], block):
                for left in range(0, level.shape[1], block):  # nearest neighbour: ids stay ids
                    smaller[top // 2 : (top + block) // 2, left // 2 : (left + block) // 2] = (
                        level[top : top + block, left : left + block][::2, ::2])
            level, factor = smaller, factor * 2
        axes = [{"name": axis, "type": "space", "unit": "micrometer"} for axis in ("y", "x")]
        group.attrs["multiscales"] = [{"version": "0.4", "name": f"{self.stem} nuclei", "axes": axes,
                                       "datasets": datasets}]
        group.attrs["image-label"] = {"version": "0.4", "source": {"image": self.stem}}

    def close(self) -> dict[str, Path]:
        """Finish every output and rename it into place; returns format → path."""
        if self._parquet is not None:
            self._parquet.close()
        for name, handle in self._handles.items():
            if name.startswith("geojson"):
                handle.write("\n]}\n")
            handle.close()
        self._handles.clear()
        if self._zarr is not None:
            self._finish_zarr()
        if self._overlay is not None:
            self._overlay.save(part_path(self.paths["overlay"]), format="PNG")
        if "tissue" in self.paths:
            mask = np.ones(self.thumbnail.shape[:2], dtype=bool) if self.tissue is None else self.tissue
            Image.fromarray((mask * 255).astype(np.uint8)).save(part_path(self.paths["tissue"]), format="PNG")
        for path in self.paths.values():
            if path.is_dir():
                shutil.rmtree(path)
            os.replace(part_path(path), path)
        return dict(self.paths)

    def abort(self) -> None:
        """Close and remove every temporary output."""
        with contextlib.suppress(Exception):
            if self._parquet is not None:
                self._parquet.close()
        for handle in self._handles.values():
            with contextlib.suppress(Exception):
                handle.close()
        for path in self.paths.values():
            remove_path(part_path(path))

    def __enter__(self) -> SlideWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
