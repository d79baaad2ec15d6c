"""Sliding-window inference over images of any size, with seam-free instance stitching.

The image is covered by overlapping tiles of one fixed size (images smaller than a tile are
padded, so the network always sees native-scale pixels). Each tile goes through the network
(``map_fn``, in batches) and is post-processed on its own (``label_fn``). Then each instance is
kept by exactly one tile, decided from what the tile itself sees:

- an instance that does not touch the tile's inner edges (edges that are not the image border) is
  *complete*; it is kept by the tile where it is most central, i.e. the tile, among all tiles that
  hold its bounding box, whose inner edges are farthest from that box (per axis; tiles within
  ``CENTRAL_TOLERANCE`` pixels of the best count as tied, so a nucleus segmented slightly
  differently by two tiles is never left by each to the other; the second copy is then dropped
  as a duplicate). Every tile that sees the instance complete computes the same answer, so it is
  kept once and never cut. Any nucleus narrower than the overlap is complete in some tile.
- an instance that touches an inner edge is *cut*. It is pasted provisionally, only by the tile
  whose *core* holds its centroid (the cores split the image at the middle of every overlap), so
  objects too large for any tile still appear; a complete instance that later covers most of it
  replaces it.

Where tiles disagree on a few border pixels, pixels already assigned stay put, and an instance
mostly covered already is dropped as a duplicate.

Memory: the output label map (int32) and per-batch tile arrays only; full-size maps are
stitched only when asked for (``return_maps=True``, one float32 plane per map, each pixel taken
from the tile whose core holds it).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from nucleisam.errors import NucleisamError
from nucleisam.morphometry import compact_labels
from nucleisam.utils.pool import ordered_map

#: (B, h, w, 3) uint8 tiles → maps of shape (B, h, w), e.g. foreground probability.
MapFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]
#: (maps of one tile, each (h, w); the tile image (h, w, 3)) → integer instance labels (h, w).
LabelFn = Callable[[Mapping[str, np.ndarray], np.ndarray], np.ndarray]

#: An instance whose pixels are more than this fraction assigned already is a duplicate.
DUPLICATE_FRACTION = 0.5
#: A tile keeps a complete instance when its margin is within this many pixels of the best tile's.
#: Two tiles that segment a nucleus a pixel or two differently then never both leave it to the
#: other (the near-tie duplicate is dropped as mostly covered) instead of losing it.
CENTRAL_TOLERANCE = 4


def _axis_layout(size: int, tile: int, overlap: int) -> tuple[list[int], list[int]]:
    """Tile origins along one axis and the core boundaries between consecutive tiles.

    Origins are spread evenly from 0 to ``size - tile`` so that every overlap is at least
    ``overlap``; the boundary between tiles i and i+1 is the middle of their overlap.
    """
    if size <= tile:
        return [0], [0, size]
    count = math.ceil((size - overlap) / (tile - overlap))
    count = max(count, 2)
    origins = [round(i * (size - tile) / (count - 1)) for i in range(count)]
    bounds = [0] + [(origins[i] + tile + origins[i + 1]) // 2 for i in range(count - 1)] + [size]
    return origins, bounds


@dataclass(frozen=True)
class Tile:
    """One window of a :class:`TileGrid`; all coordinates are image pixels, ends exclusive."""

    index: int
    row: int  # position in the grid
    col: int
    y0: int
    x0: int
    y1: int  # y0 + valid height (the part inside the image)
    x1: int
    core_y0: int
    core_x0: int
    core_y1: int
    core_x1: int


@dataclass(frozen=True)
class TileGrid:
    """Overlapping tiles covering an ``height`` × ``width`` image, with their cores.

    The cores partition the image: every pixel belongs to the core of exactly one tile.
    """

    height: int
    width: int
    tile: int
    overlap: int
    origins_y: tuple[int, ...]
    origins_x: tuple[int, ...]
    bounds_y: tuple[int, ...]
    bounds_x: tuple[int, ...]

    @classmethod
    def for_image(cls, height: int, width: int, *, tile: int = 512, overlap: int = 64) -> TileGrid:
        check_tiling(tile, overlap)
        if height < 1 or width < 1:
            raise ValueError(f"image must have at least one pixel, got {height}×{width}")
        origins_y, bounds_y = _axis_layout(height, tile, overlap)
        origins_x, bounds_x = _axis_layout(width, tile, overlap)
        return cls(height, width, tile, overlap, tuple(origins_y), tuple(origins_x), tuple(bounds_y),
                   tuple(bounds_x))

    def __len__(self) -> int:
        return len(self.origins_y) * len(self.origins_x)

    def __iter__(self) -> Iterator[Tile]:
        return (self.tile_at(index) for index in range(len(self)))

    def tile_at(self, index: int) -> Tile:
        """The tile with this index (row-major order, as iteration yields them)."""
        row, col = divmod(index, len(self.origins_x))
        y0, x0 = self.origins_y[row], self.origins_x[col]
        y1, x1 = min(y0 + self.tile, self.height), min(x0 + self.tile, self.width)
        return Tile(index, row, col, y0, x0, y1, x1,
                    self.bounds_y[row], self.bounds_x[col], self.bounds_y[row + 1], self.bounds_x[col + 1])


    def margins(self, start: np.ndarray, stop: np.ndarray, *, axis: int) -> np.ndarray:
        """How far each interval ``[start, stop)`` along ``axis`` (0: rows, 1: columns) stays from
        the inner edges of each tile row/column: an (n_tiles_along_axis, n_intervals) array, -1
        where the tile does not hold the interval (it touches or crosses an inner edge). Touching
        the image border is fine: that side's margin counts as unlimited.
        """
        size = self.height if axis == 0 else self.width
        origins = np.asarray(self.origins_y if axis == 0 else self.origins_x, dtype=np.int64)[:, None]
        ends = np.minimum(origins + self.tile, size)
        start, stop = np.asarray(start)[None, :], np.asarray(stop)[None, :]
        unlimited = np.iinfo(np.int64).max
        low = np.where(origins == 0, unlimited, start - origins)
        high = np.where(ends == size, unlimited, ends - stop)
        margin = np.minimum(low, high)
        holds = (start >= origins) & (stop <= ends) & (margin > 0)
        return np.where(holds, margin, -1)


    def neighbourhood(self, row0: int, row1: int, col0: int, col1: int) -> tuple[slice, slice]:
        """Tile rows and columns that can hold an object lying in tiles ``[row0, row1) × [col0,
        col1)``: those two steps around (only overlapping tiles can, and they are neighbours)."""
        return (slice(max(row0 - 2, 0), min(row1 + 2, len(self.origins_y))),
                slice(max(col0 - 2, 0), min(col1 + 2, len(self.origins_x))))

    def central(self, y0: np.ndarray, y1: np.ndarray, x0: np.ndarray, x1: np.ndarray, rows: slice,
                cols: slice, run: np.ndarray | None = None) -> np.ndarray:
        """(n, rows, cols) bool: for each box ``[y0, y1) × [x0, x1)``, the tiles of the sub-grid
        ``rows × cols`` that hold it away from their inner edges and are the most central such tiles
        (within ``CENTRAL_TOLERANCE`` per axis), among the tiles of ``run`` (None: all)."""
        margin_y = self.margins(y0, y1, axis=0)[rows].T[:, :, None]
        margin_x = self.margins(x0, x1, axis=1)[cols].T[:, None, :]
        holds = (margin_y > 0) & (margin_x > 0)
        if run is not None:
            holds &= run[rows, cols][None]
        best_y = np.where(holds, margin_y, -1).max(axis=(1, 2), initial=-1)[:, None, None]
        best_x = np.where(holds, margin_x, -1).max(axis=(1, 2), initial=-1)[:, None, None]
        return holds & (margin_y >= best_y - CENTRAL_TOLERANCE) & (margin_x >= best_x - CENTRAL_TOLERANCE)


def check_tiling(tile: int, overlap: int) -> None:
    """Validate tile size and overlap (errors name the parameters ``tile`` and ``overlap``)."""
    if tile < 16:
        raise NucleisamError(f"tile={tile} is too small; use at least 16 pixels (512 is typical).")
    if overlap < 0 or overlap >= tile:
        raise NucleisamError(
            f"overlap={overlap} must be ≥ 0 and smaller than tile={tile}; "
            "use about the diameter of the largest nucleus in pixels (64 is typical)."
        )


def check_postprocess_workers(workers: int) -> None:
    """Validate a number of post-processing threads (errors name the parameter ``postprocess_workers``)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise NucleisamError(f"postprocess_workers={workers!r} is not valid: use 0 (post-process in the "
                             "network's thread) or a number of threads.")


@dataclass
class TiledResult:
    """Stitched output: int32 (H, W) labels numbered 1..n_instances, optional full-size maps."""

    labels: np.ndarray
    n_instances: int
    n_tiles: int
    maps: dict[str, np.ndarray] | None = None


class InstanceStitcher:
    """Accumulates per-tile instance labels into one int32 label map (rules in the module doc).

    Call :meth:`add` once per tile of ``grid`` (any order), then :meth:`finish`, which renumbers
    the surviving instances 1..n in pasting order and sets ``sources`` (the tile index each came
    from) and ``provisional`` (cut instances), indexed by new id - 1. With ``window`` only that
    part of the image is held (a slide chunk: the tiles added must lie inside it); the decisions
    still use the whole grid, so they are the ones the whole-image stitcher would take. ``run``
    marks the tiles that are segmented at all (slides skip tiles without tissue): a nucleus is then
    kept by the most central tile among those.
    """

    def __init__(self, grid: TileGrid, window: tuple[int, int, int, int] | None = None,
                 run: np.ndarray | None = None) -> None:
        self.grid = grid
        # Which tiles exist in this run, (rows, cols) bool (None: all): skipped ones never keep anything.
        self.run = run
        # The part of the image held in memory, (y0, x0, y1, x1): all of it, or one slide chunk's region.
        self.window = window or (0, 0, grid.height, grid.width)
        y0, x0, y1, x1 = self.window
        self.labels = np.zeros((y1 - y0, x1 - x0), dtype=np.int32)
        self._next_id = 1
        # Indexed by global id (0 = background): pasted provisionally / removed again / source tile.
        self._provisional = np.zeros(1024, dtype=bool)
        self._removed = np.zeros(1024, dtype=bool)
        self._source = np.full(1024, -1, dtype=np.int64)

    def _reserve(self, count: int) -> np.ndarray:
        first = self._next_id
        if first + count > np.iinfo(np.int32).max:
            raise ValueError("more than 2**31 - 1 instances; an int32 label map cannot hold them")
        self._next_id += count
        if self._next_id > len(self._provisional):
            grow = max(self._next_id, 2 * len(self._provisional)) - len(self._provisional)
            self._provisional = np.concatenate([self._provisional, np.zeros(grow, dtype=bool)])
            self._removed = np.concatenate([self._removed, np.zeros(grow, dtype=bool)])
            self._source = np.concatenate([self._source, np.full(grow, -1, dtype=np.int64)])
        return np.arange(first, first + count)

    def _decide(self, tile: Tile, local: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(keep, cut) flags per local id: which instances this tile may paste, and how."""
        boxes = ndi.find_objects(local, max_label=size - 1)
        present = np.array([box is not None for box in boxes], dtype=bool)
        extent = np.array([(box[0].start, box[0].stop, box[1].start, box[1].stop) if box else (0, 1, 0, 1)
                           for box in boxes], dtype=np.int64).reshape(-1, 4)
        y0, y1 = extent[:, 0] + tile.y0, extent[:, 1] + tile.y0
        x0, x1 = extent[:, 2] + tile.x0, extent[:, 3] + tile.x0
        height, width = self.grid.height, self.grid.width
        cut = ((tile.y0 > 0) & (y0 == tile.y0)) | ((tile.y1 < height) & (y1 == tile.y1))
        cut |= ((tile.x0 > 0) & (x0 == tile.x0)) | ((tile.x1 < width) & (x1 == tile.x1))
        rows, cols = self.grid.neighbourhood(tile.row, tile.row + 1, tile.col, tile.col + 1)
        central = self.grid.central(y0, y1, x0, x1, rows, cols, self.run)
        central = central[:, tile.row - rows.start, tile.col - cols.start]

        flat = local.ravel()
        area = np.bincount(flat, minlength=size)[1:].astype(np.float64)
        rows = np.repeat(np.arange(tile.y0, tile.y1, dtype=np.float64), tile.x1 - tile.x0)
        cols = np.tile(np.arange(tile.x0, tile.x1, dtype=np.float64), tile.y1 - tile.y0)
        safe = np.maximum(area, 1.0)
        centre_y = np.bincount(flat, weights=rows, minlength=size)[1:] / safe
        centre_x = np.bincount(flat, weights=cols, minlength=size)[1:] / safe
        in_core = (centre_y >= tile.core_y0) & (centre_y < tile.core_y1)
        in_core &= (centre_x >= tile.core_x0) & (centre_x < tile.core_x1)

        keep = present & np.where(cut, in_core, central)
        return np.concatenate([[False], keep]), np.concatenate([[False], cut & present])

    def add(self, tile: Tile, tile_labels: np.ndarray) -> None:
        """Paste the instances of one tile (``tile_labels``: integer ids over its valid area)."""
        height, width = tile.y1 - tile.y0, tile.x1 - tile.x0
        if tile_labels.shape != (height, width):
            raise ValueError(f"label_fn returned shape {tile_labels.shape}, expected {(height, width)}")
        local, _ = compact_labels(np.asarray(tile_labels))
        size = int(local.max(initial=0)) + 1
        if size == 1:
            return
        keep, cut = self._decide(tile, local, size)
        flat = local.ravel()
        area = np.bincount(flat, minlength=size)

        wy, wx = self.window[:2]
        region = self.labels[tile.y0 - wy : tile.y1 - wy, tile.x0 - wx : tile.x1 - wx]
        if region.shape != (height, width):
            raise ValueError(f"tile {tile.index} lies outside the stitcher's window {self.window}")
        taken = region != 0
        firm = taken & ~self._provisional[region]
        # Complete instances only yield to firm ones; cut ones to anything already there.
        covered = np.where(cut, np.bincount(flat[taken.ravel()], minlength=size),
                           np.bincount(flat[firm.ravel()], minlength=size))
        keep &= covered <= DUPLICATE_FRACTION * area
        if not keep.any():
            return

        complete_pixels = (keep & ~cut)[local]
        # Provisional instances mostly covered by a complete one are cut views of it: remove them.
        overlapped = region[complete_pixels & taken & ~firm]
        if overlapped.size:
            hits = np.bincount(overlapped)
            provisional_area = np.bincount(region[taken & ~firm], minlength=len(hits))[: len(hits)]
            stale = np.flatnonzero(hits > DUPLICATE_FRACTION * provisional_area)
            if stale.size:
                self._removed[stale] = True
                region[np.isin(region, stale)] = 0
                taken = region != 0

        new_ids = np.zeros(size, dtype=np.int64)
        new_ids[keep] = self._reserve(int(keep.sum()))
        self._provisional[new_ids[keep & cut]] = True
        self._source[new_ids[keep]] = tile.index
        paste = (complete_pixels & ~firm) | ((keep & cut)[local] & ~taken)
        region[paste] = new_ids[local[paste]]

    def finish(self) -> tuple[np.ndarray, int]:
        """Renumber the surviving instances 1..n (in pasting order); returns (labels, n)."""
        used = self._next_id
        alive = ~self._removed[:used]
        alive[0] = False
        count = int(alive.sum())
        self.sources = self._source[:used][alive]
        self.provisional = self._provisional[:used][alive]
        if count != used - 1:
            lookup = np.zeros(used, dtype=np.int32)
            lookup[alive] = np.arange(1, count + 1, dtype=np.int32)
            for top in range(0, self.labels.shape[0], 256):  # in strips: no full-size temporary
                block = self.labels[top : top + 256]
                block[...] = lookup[block]
        return self.labels, count


def predict_tiled(
    image: np.ndarray,
    *,
    label_fn: LabelFn,
    map_fn: MapFn | None = None,
    tile: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
    pad_value: int = 255,
    return_maps: bool = False,
    on_tile_done: Callable[[int], object] | None = None,
    postprocess_workers: int = 0,
) -> TiledResult:
    """Segment an RGB image of any size tile by tile and stitch the instances.

    Args:
        image: RGB ``uint8`` (H, W, 3).
        label_fn: post-processing of one tile: ``(maps, tile_image) -> labels (h, w)``; maps and
            image are cropped to the part of the tile inside the image.
        map_fn: the network on a batch of full-size tiles (B, tile, tile, 3) → maps (B, tile, tile);
            ``None`` when ``label_fn`` works from the image alone (the classical baseline).
        tile, overlap: window size and minimum overlap in pixels; the overlap should be at least
            the diameter of the largest nucleus.
        batch_size: tiles per ``map_fn`` call.
        pad_value: fill for the part of a tile outside a small image (255: white, like glass).
        return_maps: also stitch the maps into full-size float32 planes (each pixel from the tile
            whose core holds it).
        on_tile_done: called with 1 after each tile (e.g. ``tqdm.update``).
        postprocess_workers: threads running ``label_fn`` while the network runs the next batch
            (0: one after the other in this thread); the result is the same.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    if batch_size < 1:
        raise NucleisamError(f"batch_size={batch_size} is not valid: it must be at least 1.")
    check_postprocess_workers(postprocess_workers)
    height, width = image.shape[:2]
    grid = TileGrid.for_image(height, width, tile=tile, overlap=overlap)
    stitcher = InstanceStitcher(grid)
    stitched_maps: dict[str, np.ndarray] | None = {} if return_maps else None

    def tile_done(item: Tile, tile_maps: Mapping[str, np.ndarray]) -> None:
        if stitched_maps is not None:
            _paste_core(stitched_maps, tile_maps, item, height, width)
        if on_tile_done is not None:
            on_tile_done(1)

    stitch_tiles(image, list(grid), stitcher, label_fn=label_fn, map_fn=map_fn, batch_size=batch_size,
                 pad_value=pad_value, on_tile_done=tile_done, postprocess_workers=postprocess_workers)
    labels, count = stitcher.finish()
    return TiledResult(labels, count, len(grid), stitched_maps)


def stitch_tiles(
    image: np.ndarray,
    tiles: Sequence[Tile],
    stitcher: InstanceStitcher,
    *,
    label_fn: LabelFn,
    map_fn: MapFn | None,
    batch_size: int,
    pad_value: int = 255,
    on_tile_done: Callable[[Tile, Mapping[str, np.ndarray]], object] | None = None,
    postprocess_workers: int = 0,
) -> None:
    """Run ``tiles`` (in the given order, ``batch_size`` per network call) and add each to ``stitcher``.

    ``image`` holds the stitcher's window (the whole image, or one slide chunk's region); tile
    coordinates are those of the whole image. With ``postprocess_workers`` ≥ 1, ``label_fn`` runs in
    that many threads while this thread runs the network on the following batches; tiles still reach
    the stitcher (and ``on_tile_done``) in the given order, so the result is the same as with 0 (all
    in this thread, one step after the other).
    """
    def label(work: tuple[Tile, dict[str, np.ndarray], np.ndarray]) -> np.ndarray:
        _, tile_maps, crop = work
        return np.asarray(label_fn(tile_maps, crop))

    work = _tile_inputs(image, tiles, stitcher, map_fn=map_fn, batch_size=batch_size, pad_value=pad_value)
    # Room for two batches, or two tiles per worker, taken and not yet stitched: enough to keep the
    # workers busy while the next batch runs, and a bound on the maps held.
    ahead = 2 * max(batch_size, postprocess_workers)
    with contextlib.closing(ordered_map(label, work, workers=postprocess_workers, ahead=ahead)) as results:
        for (item, tile_maps, _), labels in results:
            stitcher.add(item, labels)
            if on_tile_done is not None:
                on_tile_done(item, tile_maps)


def _tile_inputs(
    image: np.ndarray, tiles: Sequence[Tile], stitcher: InstanceStitcher, *, map_fn: MapFn | None,
    batch_size: int, pad_value: int,
) -> Iterator[tuple[Tile, dict[str, np.ndarray], np.ndarray]]:
    """(tile, its maps, its pixels) for each of ``tiles``, cropped to the part inside the image; the
    network runs on a batch when its first tile is asked for."""
    size = stitcher.grid.tile
    wy, wx = stitcher.window[:2]
    for start in range(0, len(tiles), batch_size):
        batch = tiles[start : start + batch_size]
        crops = np.full((len(batch), size, size, 3), pad_value, dtype=np.uint8)
        for slot, item in enumerate(batch):
            window = image[item.y0 - wy : item.y1 - wy, item.x0 - wx : item.x1 - wx]
            crops[slot, : window.shape[0], : window.shape[1]] = window
        maps = dict(map_fn(crops)) if map_fn is not None else {}
        for name, values in maps.items():
            if values.shape[:3] != (len(batch), size, size):
                raise ValueError(f"map_fn returned {name} of shape {values.shape}, expected "
                                 f"({len(batch)}, {size}, {size})")
        for slot, item in enumerate(batch):
            h, w = item.y1 - item.y0, item.x1 - item.x0
            yield item, {name: values[slot, :h, :w] for name, values in maps.items()}, crops[slot, :h, :w]


def _paste_core(
    stitched: dict[str, np.ndarray], tile_maps: Mapping[str, np.ndarray], item: Tile, height: int, width: int
) -> None:
    core = (slice(item.core_y0, item.core_y1), slice(item.core_x0, item.core_x1))
    local = (slice(item.core_y0 - item.y0, item.core_y1 - item.y0),
             slice(item.core_x0 - item.x0, item.core_x1 - item.x0))
    for name, values in tile_maps.items():
        if name not in stitched:
            stitched[name] = np.zeros((height, width), dtype=np.float32)
        stitched[name][core] = values[local]
