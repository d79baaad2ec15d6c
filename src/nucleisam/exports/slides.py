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
ome-tiff       ``<stem>_labels.ome.tif``         the same label image as a pyramidal OME-TIFF (512²
                                                 deflate tiles, reduced levels in SubIFDs,
                                                 ``PhysicalSizeX``/``Y`` in µm); QuPath, Fiji and
                                                 OMERO (Bio-Formats) and napari (tifffile) open it
overlay        ``<stem>_overlay.png``            nucleus outlines on the slide's thumbnail
tissue         ``<stem>_tissue.png``             the tissue mask used (white = tissue), thumbnail size
=============  ================================  =====================================================

Every file grows under a temporary name ``.<name>.part`` in the output folder and all are renamed
into place only when the whole slide is done (:meth:`SlideWriter.close`); a failure removes them,
and a killed run leaves only ``.part`` names, which :func:`remove_partials` clears.

Chunks may arrive in any order, and a TIFF is written front to back, so the OME-TIFF is written at
:meth:`SlideWriter.close` from the label zarr (its pyramid included): the ``zarr`` output when it was
asked for, else a scratch zarr named ``.<stem>_labels.ome.tif.zarr.part`` that is removed afterwards.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import gzip
import io
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageDraw

from nucleisam.exports.images import NUCLEUS_CLASS, rounded_rows
from nucleisam.predict.assemble import SLIDE_COLUMNS, CommittedChunk
from nucleisam.predict.slide import SlideGeometry
from nucleisam.utils.pool import available_cores

SLIDE_FORMATS: tuple[str, ...] = (
    "parquet", "csv", "geojson", "geojson.gz", "zarr", "ome-tiff", "overlay", "tissue")
#: What a slide writes when ``--formats`` is not given. Not ``ome-tiff``: it holds what the zarr holds,
#: and writing it is one more pass over the whole label image after the last chunk.
DEFAULT_SLIDE_FORMATS: tuple[str, ...] = ("parquet", "csv", "geojson", "zarr", "overlay", "tissue")
SLIDE_SUFFIXES: dict[str, str] = {
    "parquet": "_nuclei.parquet", "csv": "_nuclei.csv", "geojson": "_nuclei.geojson",
    "geojson.gz": "_nuclei.geojson.gz", "zarr": "_labels.zarr", "overlay": "_overlay.png",
    "tissue": "_tissue.png", "ome-tiff": "_labels.ome.tif",
}
#: Label zarr chunk side; pyramid levels halve until the longest side fits in one chunk.
ZARR_CHUNK = 1024
#: OME-TIFF tile side, what QuPath and Bio-Formats write their own pyramids in; it divides ZARR_CHUNK,
#: so one zarr read of OME_TIFF_TILE rows × ZARR_CHUNK columns yields whole tiles.
OME_TIFF_TILE = 512
#: Above this many uncompressed bytes (all levels) the OME-TIFF is a BigTIFF: deflate's worst case adds
#: far under 1%, so below it a classic TIFF's 32-bit offsets cannot overflow.
BIGTIFF_BYTES = 3 << 30
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


def scratch_zarr_path(path: Path) -> Path:
    """Where the label zarr behind the OME-TIFF ``path`` grows when no zarr output was asked for: a
    ``.part`` name :func:`remove_partials` clears like the other temporary files."""
    return path.with_name(f".{path.name}.zarr.part")


def _open_gzip_text(path: Path, final_name: str) -> IO[str]:
    """A text file gzip-compressed into ``path`` whose header is the same on every run: no write time,
    and the final file's name (what ``gunzip -N`` restores), not the temporary one's."""
    raw = open(path, "wb")
    try:
        compressed = gzip.GzipFile(filename=final_name.removesuffix(".gz"), mode="wb", fileobj=raw, mtime=0)
    except BaseException:
        raw.close()
        raise
    return _GzipText(compressed, raw)


class _GzipText(io.TextIOWrapper):
    """UTF-8 text into a :class:`gzip.GzipFile` that, on close, also closes the file beneath it (a
    GzipFile given a file object leaves it open)."""

    def __init__(self, compressed: gzip.GzipFile, raw: IO[bytes]) -> None:
        super().__init__(compressed, encoding="utf-8")
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


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


def _level_tiles(level: Any) -> Iterator[np.ndarray]:
    """The tiles of a 2-D zarr array in row-major order (edge tiles cut short: tifffile pads them).

    One read spans a whole zarr chunk's width, so a chunk is decoded once per tile row it covers,
    not once per tile, and only OME_TIFF_TILE × ZARR_CHUNK pixels are held at a time."""
    height, width = level.shape
    for top in range(0, height, OME_TIFF_TILE):
        for left in range(0, width, ZARR_CHUNK):
            band = level[top : top + OME_TIFF_TILE, left : left + ZARR_CHUNK]
            for x in range(0, band.shape[1], OME_TIFF_TILE):
                yield band[:, x : x + OME_TIFF_TILE]


def write_label_ome_tiff(path: Path, levels: list[Any], mpp: float, name: str) -> None:
    """Write a label pyramid (uint32 2-D arrays, level ``k`` every ``2**k``-th pixel of level 0, zarr
    arrays or anything sliceable) as a tiled, deflate-compressed OME-TIFF: level 0 in the first IFD
    with ``PhysicalSizeX``/``Y`` = ``mpp`` µm, the reduced levels in its SubIFDs. Tiles are streamed
    from ``levels``, so memory does not grow with the image."""
    import tifffile

    raw = sum(level.shape[0] * level.shape[1] for level in levels) * np.dtype(np.uint32).itemsize
    metadata = {"axes": "YX", "Name": name, "PhysicalSizeX": mpp, "PhysicalSizeY": mpp,
                "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}
    # Deflate is most of the time: every core this process may use encodes (inference is over by now),
    # a few tiles each per batch, since tifffile reads a whole batch of tiles before it encodes them.
    workers = available_cores()
    batch = 4 * workers * OME_TIFF_TILE**2 * np.dtype(np.uint32).itemsize
    with tifffile.TiffWriter(path, bigtiff=raw > BIGTIFF_BYTES, ome=True) as writer:
        for index, level in enumerate(levels):
            per_cm = 1e4 / (mpp * 2**index)  # resolution tags too, for readers that ignore OME-XML
            options: dict[str, Any] = {
                "shape": tuple(level.shape), "dtype": np.uint32, "tile": (OME_TIFF_TILE, OME_TIFF_TILE),
                "photometric": "minisblack", "compression": "zlib", "resolution": (per_cm, per_cm),
                "resolutionunit": "CENTIMETER", "maxworkers": workers, "buffersize": batch}
            if index == 0:
                options.update(subifds=len(levels) - 1, metadata=metadata)
            else:
                options.update(subfiletype=1)  # reduced-resolution version of level 0
            writer.write(_level_tiles(level), **options)


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
        # The label zarr's folder: the zarr output's part, or the OME-TIFF's scratch zarr.
        self._labels_path: Path | None = None
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
                handle = (_open_gzip_text(part_path(path), path.name) if name == "geojson.gz"
                          else open(part_path(path), "w", encoding="utf-8"))
                handle.write('{"type":"FeatureCollection","features":[')
                self._handles[name] = handle
            elif name == "ome-tiff":
                remove_path(scratch_zarr_path(path))
            elif name == "overlay":
                self._overlay = Image.fromarray(np.ascontiguousarray(self.thumbnail))
        if "zarr" in self.paths:
            self._labels_path = part_path(self.paths["zarr"])
        elif "ome-tiff" in self.paths:
            self._labels_path = scratch_zarr_path(self.paths["ome-tiff"])
        if self._labels_path is not None:
            import zarr

            group = zarr.open_group(self._labels_path, mode="w", zarr_format=2)
            self._zarr = _label_array(group, "0", (self.geometry.height, self.geometry.width))

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

    def _finish_labels(self) -> list[Any]:
        """Add the 2× pyramid to the label zarr and, for the zarr output, the OME-Zarr 0.4 label-image
        metadata; returns the levels, full size first."""
        import zarr

        group = zarr.open_group(self._labels_path, mode="r+", zarr_format=2)
        level, datasets, levels = self._zarr, [], [self._zarr]
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
            levels.append(level)
        if "zarr" not in self.paths:
            return levels
        axes = [{"name": axis, "type": "space", "unit": "micrometer"} for axis in ("y", "x")]
        group.attrs["multiscales"] = [{"version": "0.4", "name": f"{self.stem} nuclei", "axes": axes,
                                       "datasets": datasets}]
        group.attrs["image-label"] = {"version": "0.4", "source": {"image": self.stem}}
        return levels

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
            levels = self._finish_labels()
            if "ome-tiff" in self.paths:
                write_label_ome_tiff(part_path(self.paths["ome-tiff"]), levels, self.geometry.mpp,
                                     f"{self.stem} nuclei")
                remove_path(scratch_zarr_path(self.paths["ome-tiff"]))
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
        if "ome-tiff" in self.paths:
            remove_path(scratch_zarr_path(self.paths["ome-tiff"]))

    def __enter__(self) -> SlideWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException:  # a failed finish (disk full, …) leaves no temporary files either
                self.abort()
                raise
        else:
            self.abort()
