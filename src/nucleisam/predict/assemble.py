"""Committing slide chunk results in chunk order: global ids, border conflicts, slide units.

Chunks finish in any order; :class:`SlideAssembler` holds the early ones and commits each when all
chunks before it are committed, so ids (1..n over the slide, by chunk and then tile order) and every
output are the same whatever the number of workers. Two neighbouring chunks segment their shared
overlap from different tiles, so a nucleus of the later chunk may claim a pixel or two that an
earlier chunk's nucleus already holds: as in :class:`~nucleisam.predict.tiling.InstanceStitcher`,
pixels already assigned stay put, a nucleus more than half covered already is dropped as a
duplicate, and one that lost pixels is measured again. Only strips along the borders of committed
chunks are kept for this, so memory does not grow with the slide.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from nucleisam.morphometry import iter_nucleus_polygons, measure_nuclei
from nucleisam.predict.slide import Chunk, ChunkResult, SlideGeometry
from nucleisam.predict.tiling import DUPLICATE_FRACTION, TileGrid

#: Per-nucleus columns of slide outputs; positions and sizes in level-0 pixels and in µm.
SLIDE_COLUMNS: tuple[str, ...] = (
    "id", "centroid_x", "centroid_y", "centroid_x_um", "centroid_y_um",
    "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "area_px", "area_um2", "perimeter_px", "perimeter_um",
    "eccentricity", "solidity", "mean_r", "mean_g", "mean_b", "hematoxylin_od_mean",
)


@dataclass
class CommittedChunk:
    """One chunk's final nuclei: ``labels`` (uint32 global ids over ``region`` of the working image,
    including pixels earlier chunks hold there), ``table`` (:data:`SLIDE_COLUMNS`) and ``rings``
    (outlines in level-0 pixels, corner convention, one per table row)."""

    index: int
    region: tuple[int, int, int, int]
    labels: np.ndarray
    table: dict[str, np.ndarray]
    rings: list[np.ndarray]
    n_tiles: int


def _resolve_contested(result: ChunkResult, claimed: np.ndarray) -> tuple[np.ndarray, dict[int, tuple]]:
    """Remove pixels earlier chunks hold from this chunk's nuclei; returns the labels and, per nucleus
    that changed, ``None`` (dropped) or its new (measurement row, ring)."""
    labels = result.labels.copy()
    changed: dict[int, tuple] = {}
    for label_id, (row, col, crop) in result.crops.items():
        window = (slice(row, row + crop.shape[0]), slice(col, col + crop.shape[1]))
        own = labels[window] == label_id
        lost = own & (claimed[window] > 0)
        if not lost.any():
            continue
        if lost.sum() > DUPLICATE_FRACTION * own.sum():
            labels[window][own] = 0
            changed[label_id] = None
            continue
        labels[window][lost] = 0
        kept = (own & ~lost).astype(np.int32)
        row_values = measure_nuclei(kept, crop)
        row_values["centroid_x"] = row_values["centroid_x"] + col
        row_values["centroid_y"] = row_values["centroid_y"] + row
        ring = next(iter_nucleus_polygons(kept))[1] + np.array([col, row], dtype=np.float64)
        changed[label_id] = (row_values, ring)
    return labels, changed


def _slide_table(
    table: dict[str, np.ndarray], labels: np.ndarray, ids: np.ndarray, region: tuple[int, int, int, int],
    geometry: SlideGeometry,
) -> dict[str, np.ndarray]:
    """Working-pixel measurements of the nuclei ``ids`` (region-relative) in slide units."""
    y0, x0 = region[:2]
    scale, mpp = geometry.scale, geometry.mpp
    boxes = ndi.find_objects(labels)
    box = np.array([(b[1].start, b[0].start, b[1].stop, b[0].stop) for b in (boxes[i - 1] for i in ids)],
                   dtype=np.float64).reshape(-1, 4) + np.array([x0, y0, x0, y0])
    # Pixel centres sit at integers in both frames: centre c of a working pixel is at (c + ½)·scale - ½.
    centroid_x = (table["centroid_x"] + x0 + 0.5) * scale - 0.5
    centroid_y = (table["centroid_y"] + y0 + 0.5) * scale - 0.5
    area = table["area_px"].astype(np.float64)
    return {
        "centroid_x": centroid_x, "centroid_y": centroid_y,
        "centroid_x_um": centroid_x * geometry.slide_mpp, "centroid_y_um": centroid_y * geometry.slide_mpp,
        "bbox_x0": box[:, 0] * scale, "bbox_y0": box[:, 1] * scale,
        "bbox_x1": box[:, 2] * scale, "bbox_y1": box[:, 3] * scale,
        "area_px": area * scale * scale, "area_um2": area * mpp * mpp,
        "perimeter_px": table["perimeter_px"] * scale, "perimeter_um": table["perimeter_px"] * mpp,
        **{name: table[name] for name in SLIDE_COLUMNS[13:]},
    }


class SlideAssembler:
    """Commits :class:`ChunkResult` s of one slide in chunk order and hands each to ``emit``.

    Args:
        geometry, grid: the slide's working image and tile grid.
        chunks: the plan (:func:`~nucleisam.predict.slide.plan_chunks`).
        chunk_tiles: tiles per block side.
        emit: receives every :class:`CommittedChunk`, in chunk order.
    """

    def __init__(self, geometry: SlideGeometry, grid: TileGrid, chunks: list[Chunk], chunk_tiles: int,
                 emit: Callable[[CommittedChunk], object]) -> None:
        self.geometry = geometry
        self.grid = grid
        self.chunks = chunks
        self.chunk_tiles = chunk_tiles
        self.emit = emit
        self.n_nuclei = 0
        self.next_index = 0
        self._waiting: dict[int, ChunkResult] = {}
        # Bottom and right strips of committed chunks: (block_row, y0, x0, global labels).
        self._strips: list[tuple[int, int, int, np.ndarray]] = []

    @property
    def done(self) -> bool:
        return self.next_index == len(self.chunks)

    def add(self, result: ChunkResult) -> None:
        """Take one chunk's result; commit it and any waiting successors whose turn has come."""
        self._waiting[result.index] = result
        while self.next_index in self._waiting:
            self._commit(self._waiting.pop(self.next_index))
            self.next_index += 1

    def _claimed(self, region: tuple[int, int, int, int]) -> np.ndarray:
        """Global ids that committed chunks hold inside ``region`` (0 elsewhere)."""
        y0, x0, y1, x1 = region
        claimed = np.zeros((y1 - y0, x1 - x0), dtype=np.uint32)
        for _, sy, sx, strip in self._strips:
            top, left = max(y0, sy), max(x0, sx)
            bottom, right = min(y1, sy + strip.shape[0]), min(x1, sx + strip.shape[1])
            if top >= bottom or left >= right:
                continue
            part = strip[top - sy : bottom - sy, left - sx : right - sx]
            target = claimed[top - y0 : bottom - y0, left - x0 : right - x0]
            np.copyto(target, part, where=part > 0)
        return claimed

    def _commit(self, result: ChunkResult) -> None:
        chunk = self.chunks[result.index]
        claimed = self._claimed(result.region)
        labels, changed = _resolve_contested(result, claimed)
        count = len(result.rings)
        keep = np.array([changed.get(i + 1, True) is not None for i in range(count)], dtype=bool)
        table = {name: np.asarray(values)[keep] for name, values in result.table.items()}
        rings = [ring for ring, kept in zip(result.rings, keep, strict=True) if kept]
        kept_ids = np.flatnonzero(keep) + 1
        for position, local_id in enumerate(kept_ids):
            if changed.get(int(local_id)) is not None:
                row_values, rings[position] = changed[int(local_id)]
                for name, values in row_values.items():
                    if name != "id":
                        table[name][position] = values[0]
        lookup = np.zeros(count + 1, dtype=np.uint32)
        lookup[kept_ids] = np.arange(self.n_nuclei + 1, self.n_nuclei + len(kept_ids) + 1, dtype=np.uint32)
        merged = lookup[labels]
        np.copyto(merged, claimed, where=merged == 0)

        y0, x0 = result.region[:2]
        slide_table = {"id": lookup[kept_ids].astype(np.int64),
                       **_slide_table(table, labels, kept_ids, result.region, self.geometry)}
        scale = self.geometry.scale
        offset = np.array([x0, y0], dtype=np.float64)
        slide_rings = [(ring + offset) * scale for ring in rings]
        self.n_nuclei += len(kept_ids)
        self.emit(CommittedChunk(result.index, result.region, merged, slide_table, slide_rings,
                                 result.n_tiles))
        self._keep_strips(chunk, merged)

    def _keep_strips(self, chunk: Chunk, merged: np.ndarray) -> None:
        """Remember the parts of ``merged`` that later chunks' regions can reach."""
        y0, x0, y1, x1 = chunk.region
        self._strips = [s for s in self._strips if s[0] >= chunk.block_row - 1]
        next_row = (chunk.block_row + 1) * self.chunk_tiles
        next_col = (chunk.block_col + 1) * self.chunk_tiles
        if next_row < len(self.grid.origins_y):
            top = max(y0, self.grid.origins_y[next_row])
            if top < y1:
                self._strips.append((chunk.block_row, top, x0, merged[top - y0 :].copy()))
        if next_col < len(self.grid.origins_x):
            left = max(x0, self.grid.origins_x[next_col])
            if left < x1:
                self._strips.append((chunk.block_row, y0, left, merged[:, left - x0 :].copy()))
