"""MoNuSeg-style Aperio ImageScope XML annotations rasterised into instance label maps.

The format nests ``<Annotations><Annotation><Regions><Region><Vertices><Vertex X=".." Y=".."/>``;
each ``Region`` outlines one nucleus in pixel coordinates of the image (X = column, Y = row).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from skimage.draw import polygon as fill_polygon

from nucleisam.errors import NucleisamError


def read_xml_polygons(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """Vertices of every ``Region`` in document order, each a float array (N, 2) of (row, col).

    Regions flagged ``NegativeROA="1"`` (ImageScope's exclusion regions, not nuclei) are skipped.
    """
    file = Path(path)
    if not file.is_file():
        raise NucleisamError(f"annotation file not found: {file}")
    try:
        root = ET.parse(file).getroot()
    except (ET.ParseError, OSError) as exc:
        raise NucleisamError(f"cannot parse XML annotation {file}: {exc}.") from exc
    polygons: list[np.ndarray] = []
    for region in root.iter("Region"):
        if region.get("NegativeROA", "0").strip() == "1":
            continue
        try:
            vertices = [
                (float(vertex.attrib["Y"]), float(vertex.attrib["X"])) for vertex in region.iter("Vertex")
            ]
        except (KeyError, ValueError) as exc:
            raise NucleisamError(
                f"XML annotation {file}: region {region.get('Id', '?')} has a vertex without numeric "
                f"X/Y attributes ({exc})."
            ) from exc
        polygons.append(np.asarray(vertices, dtype=np.float64).reshape(-1, 2))
    if not polygons and root.find(".//Regions") is None:
        raise NucleisamError(
            f"XML annotation {file} has no <Regions>; expected Aperio/MoNuSeg "
            "<Annotations><Annotation><Regions><Region><Vertices><Vertex X= Y=> markup."
        )
    return polygons


def rasterize_polygons(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Fill polygons (each (N, 2) of (row, col)) into an ``int32`` map; polygon ``i`` gets id ``i + 1``.

    A pixel belongs to a polygon when its centre lies inside it or on its outline. Where polygons
    overlap, the later one wins; a polygon with fewer than three vertices, or that covers no pixel
    centre, leaves its id unused.
    """
    labels = np.zeros(shape, dtype=np.int32)
    for index, vertices in enumerate(polygons, start=1):
        if len(vertices) < 3:
            continue
        rows, cols = fill_polygon(vertices[:, 0], vertices[:, 1], shape=shape)
        labels[rows, cols] = index
    return labels


def read_xml_instances(path: str | os.PathLike[str], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise an Aperio/MoNuSeg XML file into an ``int32`` (H, W) instance map, one id per Region.

    Args:
        path: the ``.xml`` annotation file.
        shape: (H, W) of the image it annotates.
    Returns:
        Instance ids 1..N in document order of the regions (see :func:`rasterize_polygons`).
    """
    return rasterize_polygons(read_xml_polygons(path), (int(shape[0]), int(shape[1])))
