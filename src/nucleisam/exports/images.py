"""Exports of an instance label map: label TIFF, QuPath GeoJSON, per-nucleus CSV, overlay PNG.

Every file is written atomically (:mod:`nucleisam.utils.atomic`) and an existing file is only replaced
when ``overwrite=True`` (the CLI's ``--overwrite``). File names derive from the image stem:

=========  ===============================  ================================================
format     file                             content
=========  ===============================  ================================================
tiff       ``<stem>_labels.tif``            uint16 ids (uint32 above 65,535), zlib-compressed,
                                            resolution tags in pixels/cm when ``mpp`` is known
geojson    ``<stem>_nuclei.geojson``        FeatureCollection, one QuPath detection per nucleus
csv        ``<stem>_nuclei.csv``            one row per nucleus (``morphometry.measure_nuclei``)
overlay    ``<stem>_overlay.png``           contours on the image, longest side ≤ 4096 px
=========  ===============================  ================================================

GeoJSON follows the layout QuPath (≥ 0.4) writes and reads: ``properties.objectType`` =
``"detection"``, ``properties.classification`` = ``{"name", "color"}``, ``properties.measurements``
= a name → number map, a UUID ``id`` per feature, and polygon coordinates in full-resolution pixel
units with the origin at the top-left *corner* of the image (pixel ``(row, col)`` spans
``[col, col+1] × [row, row+1]``). Each nucleus is one closed outer ring (holes filled; a nucleus
broken into pieces keeps its largest piece), traced halfway between its pixel centres and the
neighbouring background centres, so rasterising the polygon by pixel centres gives back the mask.
"""

from __future__ import annotations

import csv
import json
import math
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

from nucleisam.data.labels import PREDICTED_LABELS_SUFFIX, PREDICTED_OVERLAY_SUFFIX
from nucleisam.errors import NucleisamError
from nucleisam.morphometry import check_label_map, iter_nucleus_polygons, measure_nuclei
from nucleisam.utils.atomic import atomic_output, check_outputs_free

#: Export formats in the order the CLI lists them.
EXPORT_FORMATS: tuple[str, ...] = ("tiff", "geojson", "csv", "overlay")
OUTPUT_SUFFIXES: dict[str, str] = {
    "tiff": f"{PREDICTED_LABELS_SUFFIX}.tif",
    "geojson": "_nuclei.geojson",
    "csv": "_nuclei.csv",
    "overlay": f"{PREDICTED_OVERLAY_SUFFIX}.png",
}
#: Longest side of the overlay PNG; larger images are reduced by an integer factor.
OVERLAY_MAX_SIDE = 4096
#: QuPath classification given to every exported nucleus (name, RGB colour).
NUCLEUS_CLASS = ("Nucleus", (0, 200, 80))
# Deterministic feature UUIDs: the same image and labels give byte-identical GeoJSON.
_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/nucleisam/nucleisam/nucleus")


def parse_formats(text: str | Sequence[str], *, option: str = "formats") -> tuple[str, ...]:
    """Parse ``"tiff,geojson"`` (or a sequence of names) into known format names, in order, once each."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [item.strip().lower() for item in items if item.strip()]
    unknown = [name for name in names if name not in EXPORT_FORMATS]
    if unknown or not names:
        raise NucleisamError(
            f"unknown format(s) {', '.join(unknown) or '(none given)'} ({option}); "
            f"choose from {','.join(EXPORT_FORMATS)}."
        )
    return tuple(dict.fromkeys(names))


def output_paths(out_dir: str | os.PathLike[str], stem: str, formats: Iterable[str]) -> dict[str, Path]:
    """The file each format writes for the image ``stem`` in ``out_dir``."""
    return {name: Path(out_dir) / f"{stem}{OUTPUT_SUFFIXES[name]}" for name in formats}


def label_dtype(labels: np.ndarray) -> np.dtype:
    """uint16 when every id fits (≤ 65,535), else uint32."""
    top = int(labels.max(initial=0))
    if top > np.iinfo(np.uint32).max:
        raise ValueError(f"label id {top} does not fit in uint32; renumber the instances first")
    return np.dtype(np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32)


def write_label_tiff(
    path: str | os.PathLike[str], labels: np.ndarray, *, mpp: float | None = None, overwrite: bool = False
) -> Path:
    """Write an instance label map as a zlib-compressed TIFF (uint16, or uint32 for large ids).

    With ``mpp`` (microns per pixel) the X/Y resolution tags hold pixels per centimetre, which
    QuPath, ImageJ/Fiji and napari read as the pixel size.
    """
    import tifffile

    labels = check_label_map(labels)
    check_outputs_free([path], overwrite=overwrite)
    data = labels.astype(label_dtype(labels), copy=False)
    extra: dict[str, object] = {}
    if mpp is not None:
        per_cm = 1e4 / mpp
        extra = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
    # Large maps are tiled so viewers can read regions without decoding the whole plane.
    if max(data.shape) > 2048:
        extra["tile"] = (512, 512)
    with atomic_output(path) as tmp:
        tifffile.imwrite(
            tmp, data, photometric="minisblack", compression="zlib", predictor=True,
            metadata=None, software="nucleisam", **extra,
        )
    return Path(path)


def nucleus_polygons(labels: np.ndarray) -> dict[int, np.ndarray]:
    """All rings of :func:`iter_nucleus_polygons` as an id → ring dictionary."""
    return dict(iter_nucleus_polygons(labels))


def rounded_rows(measurements: Mapping[str, np.ndarray]) -> tuple[list[str], list[list[float | int]]]:
    """Column names and per-nucleus rows of plain Python numbers (floats to 6 decimals)."""
    names = list(measurements)
    columns = []
    for name in names:
        column = np.asarray(measurements[name])
        columns.append(column.tolist() if column.dtype.kind in "iu" else np.round(column, 6).tolist())
    return names, [list(row) for row in zip(*columns, strict=True)]


def _iter_features(
    labels: np.ndarray, measurements: Mapping[str, np.ndarray], stem: str
) -> Iterator[dict]:
    names, rows = rounded_rows(measurements)
    ids = np.asarray(measurements["id"]).tolist()
    class_name, class_colour = NUCLEUS_CLASS
    classification = {"name": class_name, "color": list(class_colour)}
    # strict: a label map and measurements with different numbers of nuclei raise ValueError.
    for (label_id, ring), row_id, row in zip(iter_nucleus_polygons(labels), ids, rows, strict=True):
        if label_id != row_id:
            raise ValueError("measurements and label map disagree on the nucleus ids")
        yield {
            "type": "Feature",
            "id": str(uuid.uuid5(_UUID_NAMESPACE, f"{stem}/{label_id}")),
            "geometry": {"type": "Polygon", "coordinates": [ring.tolist()]},
            "properties": {
                "objectType": "detection",
                "classification": classification,
                "measurements": dict(zip(names, row, strict=True)),
            },
        }


def geojson_feature_collection(
    labels: np.ndarray,
    measurements: Mapping[str, np.ndarray],
    *,
    stem: str = "",
) -> dict:
    """A GeoJSON FeatureCollection of QuPath detections, one per nucleus, with its measurements.

    Args:
        labels: integer (H, W) instance ids.
        measurements: columns from :func:`~nucleisam.morphometry.measure_nuclei` (must hold ``id``,
            in increasing order, one row per nucleus of ``labels``).
        stem: image name, mixed into the deterministic feature UUIDs.
    """
    return {"type": "FeatureCollection", "features": list(_iter_features(labels, measurements, stem))}


def write_geojson(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    measurements: Mapping[str, np.ndarray],
    *,
    stem: str = "",
    overwrite: bool = False,
) -> Path:
    """Write :func:`geojson_feature_collection` compactly, one feature per line, streaming (a
    slide region's hundreds of thousands of nuclei never sit in memory as one document)."""
    check_outputs_free([path], overwrite=overwrite)
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write('{"type":"FeatureCollection","features":[')
        separator = "\n"
        for feature in _iter_features(labels, measurements, stem):
            handle.write(separator + json.dumps(feature, separators=(",", ":")))
            separator = ",\n"
        handle.write("\n]}\n")
    return Path(path)


def write_measurements_csv(
    path: str | os.PathLike[str], measurements: Mapping[str, np.ndarray], *, overwrite: bool = False
) -> Path:
    """Write the measurement columns as CSV, one row per nucleus (floats to 6 decimals)."""
    check_outputs_free([path], overwrite=overwrite)
    names, rows = rounded_rows(measurements)
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(names)
        writer.writerows(rows)
    return Path(path)


def overlay_image(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    max_side: int = OVERLAY_MAX_SIDE,
    colour: tuple[int, int, int] = (0, 255, 0),
) -> np.ndarray:
    """The image with nucleus contours drawn in ``colour``, reduced so its longest side ≤ ``max_side``.

    The image is box-averaged and the labels subsampled by the same integer factor, so each
    contour is one output pixel wide at any size.
    """
    labels = check_label_map(labels)
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image shape {image.shape} does not match label map shape {labels.shape}")
    factor = max(1, math.ceil(max(labels.shape) / max_side))
    if factor > 1:
        small = np.array(Image.fromarray(image).reduce(factor))
        small_labels = labels[::factor, ::factor]
    else:
        small, small_labels = image.copy(), labels
    small[find_boundaries(small_labels, mode="inner")] = colour
    return small


def write_overlay(
    path: str | os.PathLike[str],
    image: np.ndarray,
    labels: np.ndarray,
    *,
    max_side: int = OVERLAY_MAX_SIDE,
    overwrite: bool = False,
) -> Path:
    """Write :func:`overlay_image` as a PNG."""
    check_outputs_free([path], overwrite=overwrite)
    picture = Image.fromarray(overlay_image(image, labels, max_side=max_side))
    with atomic_output(path) as tmp:
        picture.save(tmp, format="PNG", optimize=False)
    return Path(path)


def export_all(
    labels: np.ndarray,
    image: np.ndarray,
    out_dir: str | os.PathLike[str],
    stem: str,
    *,
    formats: Iterable[str] = EXPORT_FORMATS,
    mpp: float | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write every requested format for one image; returns format → path.

    All target paths are checked before anything is written, so an existing file stops the
    export without leaving a partial set behind.
    """
    names = parse_formats(list(formats))
    paths = output_paths(out_dir, stem, names)
    check_outputs_free(paths.values(), overwrite=overwrite)
    measurements = measure_nuclei(labels, image, mpp=mpp) if {"geojson", "csv"} & set(names) else None
    for name, path in paths.items():
        if name == "tiff":
            write_label_tiff(path, labels, mpp=mpp, overwrite=True)
        elif name == "geojson":
            write_geojson(path, labels, measurements, stem=stem, overwrite=True)
        elif name == "csv":
            write_measurements_csv(path, measurements, overwrite=True)
        else:
            write_overlay(path, image, labels, overwrite=True)
    return paths
