"""Synthetic whole-slide images for tests: real H&E tiles on a white glass margin, written as the
pyramidal TIFF layouts slides come in (SubIFD pyramid, successive-IFD pyramid, OME-TIFF).

``slide_canvas`` builds the level-0 pixels (and says where the tissue is); ``write_slide`` writes them
with resolution metadata; ``downsample_level`` is the exact level-n pixels the writer stores, so a
test can compare ``read_region`` at any level against known pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

#: Background of a scanned slide outside the tissue: glass, nearly white.
GLASS = 255


@dataclass(frozen=True)
class Canvas:
    """Level-0 RGB pixels of a synthetic slide and the tissue boxes (x, y, w, h) pasted on it."""

    image: np.ndarray
    tissue_boxes: tuple[tuple[int, int, int, int], ...]


def sample_tiles(sample_root: Path, count: int) -> list[np.ndarray]:
    """The first ``count`` bundled NuInsSeg tissue images (512² RGB H&E)."""
    from nucleisam.data import read_rgb

    paths = sorted((sample_root / "human spleen" / "tissue images").glob("*.png"))[:count]
    assert len(paths) == count, f"bundled sample has {len(paths)} tiles, {count} wanted"
    return [read_rgb(path) for path in paths]


def slide_canvas(
    tiles: list[np.ndarray],
    *,
    grid: tuple[int, int],
    cells: list[tuple[int, int]],
    cell: int = 512,
    fill: int = GLASS,
) -> Canvas:
    """A slide of ``grid`` = (columns, rows) cells of ``cell`` px filled with ``fill``; tile ``i`` is
    pasted (cropped to ``cell``) into ``cells[i]`` = (column, row); every other cell stays blank.

    Works for label maps too (2-D tiles, ``fill=0``): the same call with the tiles' instance labels
    gives the ground truth of the slide built from their images.
    """
    columns, rows = grid
    image = np.full((rows * cell, columns * cell, *tiles[0].shape[2:]), fill, dtype=tiles[0].dtype)
    boxes = []
    for tile, (column, row) in zip(tiles, cells, strict=True):
        x, y = column * cell, row * cell
        image[y : y + cell, x : x + cell] = tile[:cell, :cell]
        boxes.append((x, y, cell, cell))
    return Canvas(image=image, tissue_boxes=tuple(boxes))


def downsample_level(image: np.ndarray, factor: int) -> np.ndarray:
    """Level pixels for an integer ``factor``: the mean of each factor×factor block (sizes divisible)."""
    if factor == 1:
        return image
    height, width = image.shape[:2]
    blocks = image.reshape(height // factor, factor, width // factor, factor, 3).astype(np.float64)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


def write_slide(
    path: Path,
    image: np.ndarray,
    *,
    mpp: float | None = 0.25,
    factors: tuple[int, ...] = (1, 2, 4),
    layout: Literal["subifds", "ifds", "ome"] = "subifds",
    tile: int = 256,
    compression: str | None = "zlib",
    resolution_unit: Literal["CENTIMETER", "INCH"] = "CENTIMETER",
) -> Path:
    """Write ``image`` as a tiled pyramid with levels downsampled by ``factors`` (the first is 1).

    ``layout``: reduced levels in SubIFDs of level 0 (tifffile's default pyramid), as successive IFDs
    marked reduced-resolution (what OpenSlide's generic-TIFF reader sees), or an OME-TIFF with SubIFDs
    and ``PhysicalSizeX``/``Y`` in µm. ``mpp`` goes into the TIFF resolution tags of every level
    (scaled per level) and, for OME, into ``PhysicalSizeX``; ``None`` writes no resolution at all.
    """
    import tifffile

    assert factors[0] == 1
    levels = [downsample_level(image, factor) for factor in factors]
    options: dict = {"tile": (tile, tile), "photometric": "rgb", "compression": compression}
    with tifffile.TiffWriter(path, ome=layout == "ome", bigtiff=False) as writer:
        for index, (level, factor) in enumerate(zip(levels, factors, strict=True)):
            level_options = dict(options)
            if mpp is not None and layout != "ome":
                per_unit = (1e4 if resolution_unit == "CENTIMETER" else 25_400.0) / (mpp * factor)
                level_options.update(resolution=(per_unit, per_unit), resolutionunit=resolution_unit)
            if index == 0:
                if layout in ("subifds", "ome"):
                    level_options["subifds"] = len(factors) - 1
                if layout == "ome":
                    metadata = {"axes": "YXS"}
                    if mpp is not None:
                        metadata.update(PhysicalSizeX=mpp, PhysicalSizeY=mpp,
                                        PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
                    level_options["metadata"] = metadata
                elif layout == "ifds":
                    level_options["metadata"] = None
            else:
                level_options["subfiletype"] = 1
                if layout == "ifds":
                    level_options["metadata"] = None
            writer.write(level, **level_options)
    return path
