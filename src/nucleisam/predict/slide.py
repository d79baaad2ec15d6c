"""Streaming nucleus segmentation of whole-slide images, one chunk of tiles at a time.

The slide is segmented at the method's working resolution (``target_mpp``): the pyramid level
nearest to it is read and resampled when it does not match. That *working image* is covered by the
same overlapping tile grid :func:`~nucleisam.predict.tiling.predict_tiled` would use on it, and the
grid is cut into square blocks of ``chunk_tiles``² tiles, the unit of work (a Dask task). A chunk
reads one region (the windows of its tiles that hold tissue: its neighbours' overlap is the
margin), stitches its tiles with :class:`~nucleisam.predict.tiling.InstanceStitcher` deciding on the
*whole* grid, and keeps the nuclei it owns:

- a complete nucleus belongs to the chunk of the tile the whole-image stitcher would keep it from
  (the first, in tile order, among the most central ones), so every chunk that sees it decides the
  same way and it is kept once, whole;
- a cut nucleus (larger than the overlap) belongs to the chunk that pasted it (its centroid lies
  in that tile's core).

Chunk results are committed in chunk order by :class:`~nucleisam.predict.assemble.SlideAssembler`
(global ids, border conflicts), so the output does not depend on the order chunks finish in or on
the number of workers. Memory is bounded by the chunks in flight, never by the slide.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from nucleisam.errors import NucleisamError
from nucleisam.morphometry import iter_nucleus_polygons, measure_nuclei
from nucleisam.predict.tiling import InstanceStitcher, TileGrid, stitch_tiles

if TYPE_CHECKING:
    from nucleisam.predict.distributed import MethodSpec

#: Tiles per side of a chunk (the unit of work): 4 × 4 tiles of 512 px is a ~1.9k px region, small
#: enough that a 16k² slide gives about a hundred chunks to spread over workers.
CHUNK_TILES = 4


@dataclass(frozen=True)
class SlideGeometry:
    """How the working image (the slide at the method's resolution) maps onto the slide.

    Attributes:
        width, height: working image size in pixels.
        mpp: microns per working pixel (the method's resolution).
        scale: level-0 pixels per working pixel.
        level: pyramid level read; ``level_scale`` level pixels per working pixel (1: no resampling).
        slide_mpp: microns per level-0 pixel.
    """

    width: int
    height: int
    mpp: float
    scale: float
    level: int
    level_scale: float
    slide_mpp: float

    @property
    def resampled(self) -> bool:
        return abs(self.level_scale - 1.0) > 1e-6


def slide_geometry(slide: Any, level: int, factor: float) -> SlideGeometry:
    """The working image of ``slide`` read from pyramid ``level`` and resampled by ``factor`` (working
    pixels per level pixel, as :func:`~nucleisam.data.slides.working_level` returns them)."""
    if slide.mpp is None:
        raise NucleisamError(
            f"slide {slide.path} records no pixel size (microns per pixel); pass --mpp MICRONS."
        )
    level_width, level_height = slide.level_dimensions[level]
    width, height = max(1, round(level_width * factor)), max(1, round(level_height * factor))
    scale = float(slide.level_downsamples[level]) / factor
    return SlideGeometry(width, height, slide.mpp * scale, scale, level, 1.0 / factor, float(slide.mpp))


def read_working_region(
    slide: Any, geometry: SlideGeometry, y0: int, x0: int, y1: int, x1: int
) -> np.ndarray:
    """RGB ``uint8`` pixels ``[y0, y1) × [x0, x1)`` of the working image.

    Resampling uses one global mapping (working pixel edges at ``level_scale`` level pixels), so
    a pixel gets the same value whichever region it is read in, up to rounding.
    """
    ratio = geometry.level_scale
    downsample = geometry.scale / ratio
    if not geometry.resampled:
        location = (round(x0 * geometry.scale), round(y0 * geometry.scale))
        return np.ascontiguousarray(slide.read_region(location, geometry.level, (x1 - x0, y1 - y0)))
    pad = math.ceil(2 * max(ratio, 1.0)) + 2  # the filter's support, so no edge is clamped
    lx0, ly0 = math.floor(x0 * ratio) - pad, math.floor(y0 * ratio) - pad
    lx1, ly1 = math.ceil(x1 * ratio) + pad, math.ceil(y1 * ratio) + pad
    location = (round(lx0 * downsample), round(ly0 * downsample))
    level_pixels = slide.read_region(location, geometry.level, (lx1 - lx0, ly1 - ly0))
    box = (x0 * ratio - lx0, y0 * ratio - ly0, x1 * ratio - lx0, y1 * ratio - ly0)
    resized = Image.fromarray(np.ascontiguousarray(level_pixels)).resize(
        (x1 - x0, y1 - y0), Image.Resampling.BILINEAR, box=box)
    return np.asarray(resized)


def tissue_tiles(grid: TileGrid, mask: np.ndarray | None) -> np.ndarray:
    """Which tiles (by index) overlap tissue; ``mask`` is a bool map covering the whole working
    image at any resolution (``None``: every tile)."""
    if mask is None:
        return np.ones(len(grid), dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    rows, cols = mask.shape
    # Summed-area table: any tissue in a window is one O(1) look-up.
    table = np.zeros((rows + 1, cols + 1), dtype=np.int64)
    table[1:, 1:] = mask.cumsum(axis=0).cumsum(axis=1)
    sy, sx = rows / grid.height, cols / grid.width
    flags = np.zeros(len(grid), dtype=bool)
    for item in grid:
        r0, c0 = min(rows - 1, math.floor(item.y0 * sy)), min(cols - 1, math.floor(item.x0 * sx))
        r1 = min(rows, max(math.ceil(item.y1 * sy), r0 + 1))
        c1 = min(cols, max(math.ceil(item.x1 * sx), c0 + 1))
        flags[item.index] = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0] > 0
    return flags


@dataclass(frozen=True)
class Chunk:
    """A block of the tile grid: the tiles to run (those with tissue) and the region they read."""

    index: int
    block_row: int
    block_col: int
    tiles: tuple[int, ...]
    region: tuple[int, int, int, int]  # (y0, x0, y1, x1) in working pixels


def plan_chunks(grid: TileGrid, has_tissue: np.ndarray, chunk_tiles: int = CHUNK_TILES) -> list[Chunk]:
    """Blocks of ``chunk_tiles``² tiles in row-major order, each reduced to its tissue tiles (blocks
    without tissue are left out); indices number the chunks kept, in that order."""
    if chunk_tiles < 1:
        raise NucleisamError(f"--chunk-tiles {chunk_tiles} must be at least 1.")
    n_rows, n_cols = len(grid.origins_y), len(grid.origins_x)
    chunks: list[Chunk] = []
    for block_row in range(math.ceil(n_rows / chunk_tiles)):
        for block_col in range(math.ceil(n_cols / chunk_tiles)):
            members = [
                grid.tile_at(row * n_cols + col)
                for row in range(block_row * chunk_tiles, min((block_row + 1) * chunk_tiles, n_rows))
                for col in range(block_col * chunk_tiles, min((block_col + 1) * chunk_tiles, n_cols))
                if has_tissue[row * n_cols + col]
            ]
            if not members:
                continue
            region = (min(t.y0 for t in members), min(t.x0 for t in members),
                      max(t.y1 for t in members), max(t.x1 for t in members))
            chunks.append(Chunk(len(chunks), block_row, block_col, tuple(t.index for t in members), region))
    return chunks


@dataclass(frozen=True)
class SlideJob:
    """Everything a worker needs to segment any chunk of one slide (small, picklable); ``run`` marks
    the tiles segmented (rows, cols) bool, ``None`` for all."""

    path: str
    mpp_override: float | None
    geometry: SlideGeometry
    grid: TileGrid
    chunk_tiles: int
    method: MethodSpec
    run: np.ndarray | None = field(default=None, compare=False)


@dataclass
class ChunkResult:
    """The nuclei one chunk owns, in working pixels relative to its region.

    Attributes:
        labels: (h, w) owned nuclei numbered 1..n (in tile order), 0 elsewhere.
        table: :func:`~nucleisam.morphometry.measure_nuclei` columns of those nuclei.
        rings: their outlines (corner convention, region-relative ``x, y``), by id.
        crops: for nuclei an earlier chunk may also claim (near the region's top/left edges):
            id → (row, col, RGB pixels of their bounding box), to re-measure them if they lose pixels.
    """

    index: int
    region: tuple[int, int, int, int]
    labels: np.ndarray
    table: dict[str, np.ndarray]
    rings: list[np.ndarray]
    crops: dict[int, tuple[int, int, np.ndarray]]
    n_tiles: int
    seconds: float


def _home_blocks(job: SlideJob, chunk: Chunk, labels: np.ndarray) -> np.ndarray:
    """Per instance of ``labels`` (ids 1..n, region-relative): (block_row, block_col) of the tile the
    whole-image stitcher keeps it from if complete: the first, in tile order, of the most central
    tiles that are run."""
    grid, size = job.grid, job.chunk_tiles
    boxes = ndi.find_objects(labels)
    y0, x0 = chunk.region[:2]
    extent = np.array([(b[0].start, b[0].stop, b[1].start, b[1].stop) for b in boxes], dtype=np.int64)
    extent = extent.reshape(-1, 4) + np.array([y0, y0, x0, x0])
    first_row, first_col = chunk.block_row * size, chunk.block_col * size
    rows, cols = grid.neighbourhood(first_row, first_row + size, first_col, first_col + size)
    central = grid.central(extent[:, 0], extent[:, 1], extent[:, 2], extent[:, 3], rows, cols, job.run)
    first = central.reshape(len(extent), -1).argmax(axis=1)  # row-major: the lowest tile index
    width = cols.stop - cols.start
    return np.stack([(rows.start + first // width) // size, (cols.start + first % width) // size], axis=1)


def _owned_labels(job: SlideJob, chunk: Chunk, stitcher: InstanceStitcher, labels: np.ndarray) -> np.ndarray:
    """``labels`` reduced to the instances this chunk owns, renumbered 1..n in their order."""
    count = int(labels.max(initial=0))
    if count == 0:
        return labels
    homes = _home_blocks(job, chunk, labels)
    mine = (homes[:, 0] == chunk.block_row) & (homes[:, 1] == chunk.block_col)
    owned = mine | stitcher.provisional  # cut instances: pasted by the tile holding their centroid
    lookup = np.zeros(count + 1, dtype=np.int32)
    lookup[1:][owned] = np.arange(1, int(owned.sum()) + 1, dtype=np.int32)
    return lookup[labels]


def contested_edges(grid: TileGrid, chunk: Chunk, chunk_tiles: int) -> tuple[int, int]:
    """(row, col) before which nuclei of ``chunk`` may overlap nuclei of earlier chunks: the end of
    the previous block row's / column's last tile window (0 for the first row / column)."""
    first_row, first_col = chunk.block_row * chunk_tiles, chunk.block_col * chunk_tiles
    row = grid.origins_y[first_row - 1] + grid.tile if first_row > 0 else 0
    col = grid.origins_x[first_col - 1] + grid.tile if first_col > 0 else 0
    return row, col


def segment_chunk(job: SlideJob, chunk: Chunk, image: np.ndarray, label_fn: Any, map_fn: Any,
                  batch_size: int, postprocess_workers: int = 0) -> ChunkResult:
    """Segment one chunk whose region pixels are ``image`` and keep the nuclei it owns
    (``postprocess_workers``: see :func:`~nucleisam.predict.tiling.stitch_tiles`)."""
    start = time.perf_counter()
    stitcher = InstanceStitcher(job.grid, window=chunk.region, run=job.run)
    tiles = [job.grid.tile_at(index) for index in chunk.tiles]
    stitch_tiles(image, tiles, stitcher, label_fn=label_fn, map_fn=map_fn, batch_size=batch_size,
                 postprocess_workers=postprocess_workers)
    labels, _ = stitcher.finish()
    owned = _owned_labels(job, chunk, stitcher, labels)
    table = measure_nuclei(owned, image)
    rings = [ring for _, ring in iter_nucleus_polygons(owned)]
    edge_row, edge_col = contested_edges(job.grid, chunk, job.chunk_tiles)
    y0, x0 = chunk.region[:2]
    crops = {}
    for index, box in enumerate(ndi.find_objects(owned)):
        if box is not None and (box[0].start + y0 < edge_row or box[1].start + x0 < edge_col):
            crops[index + 1] = (box[0].start, box[1].start, image[box].copy())
    compact = owned.astype(np.uint16 if owned.max(initial=0) < 2**16 else np.uint32)
    return ChunkResult(chunk.index, chunk.region, compact, table, rings, crops, len(chunk.tiles),
                       time.perf_counter() - start)
