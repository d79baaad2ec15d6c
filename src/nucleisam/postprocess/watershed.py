"""From per-pixel maps to instance labels: seeded (marker-controlled) watershed, strictly per image.

Two entry points share the same building blocks:

* :func:`instances_from_distance_maps` for the instance head: seeds are the predicted centres (centre
  distance small and boundary distance large), the flood follows the boundary-distance map down to
  the nucleus edges, inside the thresholded foreground.
* :func:`instances_from_foreground` for a binary head or a classical threshold: the seeds are the
  peaks of the distance transform of the foreground that rise at least ``peak_height`` pixels above
  the saddle joining them to a higher peak (h-maxima, computed as basin merging after one
  watershed, which avoids a slow morphological reconstruction).

Markers never come from connected components of the foreground (those cannot split touching
nuclei), nothing is cleared at the image border, and every function takes exactly one (H, W)
image: a batch is a loop of images.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from nucleisam.config import PostprocessConfig, to_dict
from nucleisam.errors import NucleisamError
from nucleisam.utils.distance import inner_distance

_EIGHT_CONNECTED = np.ones((3, 3), bool)


def _as_map(array: object, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    values = np.asarray(array)
    if values.ndim != 2:
        raise NucleisamError(
            f"{name} must be one (H, W) map, got shape {values.shape}; post-processing works on one "
            "image at a time: a batch is a loop of images (index the batch and channel axes first)."
        )
    if shape is not None and values.shape != shape:
        raise NucleisamError(f"{name} has shape {values.shape}, but the foreground map has shape {shape}.")
    if values.dtype == bool:
        return values.astype(np.float32)
    if not np.issubdtype(values.dtype, np.number):
        raise NucleisamError(f"{name} has dtype {values.dtype}; expected probabilities in [0, 1].")
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        raise NucleisamError(f"{name} contains NaN or infinite values; check the model output.")
    return values


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Foreground plus every background region that does not reach the image edge (4-connected)."""
    background, count = ndimage.label(~mask)
    if count == 0:
        return mask
    touching = np.zeros(count + 1, bool)
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        touching[edge] = True
    touching[0] = True
    return mask | ~touching[background]


def finish_labels(labels: np.ndarray, *, min_area: int) -> np.ndarray:
    """Remove instances below ``min_area`` pixels and number the rest 1..n (int32)."""
    area = np.bincount(labels.ravel())
    keep = area >= max(min_area, 1)
    keep[0] = False
    lut = np.zeros(area.size, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]


def seeded_watershed(surface: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Marker-controlled watershed of ``surface`` (low = inside) from ``markers`` within ``mask``.

    A connected part of ``mask`` that holds one marker becomes that instance without flooding; one
    that holds none becomes an instance of its own (a nucleus whose seed was missed is kept, not
    dropped); only parts with several markers are flooded, cropped to their bounding box. Returns
    labels (int32) that continue the marker numbering for marker-less parts.
    """
    markers = np.where(mask, markers, 0).astype(np.int32)
    parts, n_parts = ndimage.label(mask)
    stride = int(markers.max()) + 1
    seeded = markers > 0
    pairs = np.unique(parts[seeded].astype(np.int64) * stride + markers[seeded])
    pair_part, pair_marker = np.divmod(pairs, stride)
    markers_per_part = np.bincount(pair_part, minlength=n_parts + 1)

    part_label = np.zeros(n_parts + 1, np.int32)
    alone = markers_per_part[pair_part] == 1
    part_label[pair_part[alone]] = pair_marker[alone]
    unseeded = markers_per_part == 0
    unseeded[0] = False
    part_label[unseeded] = np.arange(stride, stride + int(unseeded.sum()), dtype=np.int32)
    labels = part_label[parts]

    several = np.flatnonzero(markers_per_part >= 2)
    if several.size:
        flooded_part = np.zeros(n_parts + 1, bool)
        flooded_part[several] = True
        flood_mask = flooded_part[parts]
        rows = np.flatnonzero(flood_mask.any(axis=1))
        cols = np.flatnonzero(flood_mask.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        inside = flood_mask[box]
        flooded = watershed(surface[box], markers[box], mask=inside)
        labels[box][inside] = flooded[inside]
    return labels


def _local_maxima(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` not lower than any of their 8 neighbours (plateaus included)."""
    neighbourhood = values.copy()
    np.maximum(neighbourhood[1:], values[:-1], out=neighbourhood[1:])
    np.maximum(neighbourhood[:-1], values[1:], out=neighbourhood[:-1])
    rows_done = neighbourhood.copy()
    np.maximum(neighbourhood[:, 1:], rows_done[:, :-1], out=neighbourhood[:, 1:])
    np.maximum(neighbourhood[:, :-1], rows_done[:, 1:], out=neighbourhood[:, :-1])
    return mask & (values >= neighbourhood)


def _merge_shallow_basins(basins: np.ndarray, height: np.ndarray, min_dynamic: float) -> np.ndarray:
    """Merge watershed basins of a height map whose peak rises less than ``min_dynamic`` above the
    saddle to a neighbouring basin (into that neighbour), i.e. keep only h-maxima basins.

    The saddle between two touching basins is the highest point of the lowest crossing,
    ``max(min(height[p], height[q]))`` over 4-neighbour pixel pairs ``p``, ``q`` on their border.
    Saddles are visited from high to low, as the basins would meet when the level sinks.
    """
    n = int(basins.max())
    if n < 2 or min_dynamic <= 0:
        return basins
    pair_keys, pair_levels = [], []
    for a, b, ha, hb in (
        (basins[:, :-1], basins[:, 1:], height[:, :-1], height[:, 1:]),
        (basins[:-1], basins[1:], height[:-1], height[1:]),
    ):
        border = (a != b) & (a > 0) & (b > 0)
        first, second = a[border].astype(np.int64), b[border].astype(np.int64)
        pair_keys.append(np.minimum(first, second) * (n + 1) + np.maximum(first, second))
        pair_levels.append(np.minimum(ha[border], hb[border]))
    keys, levels = np.concatenate(pair_keys), np.concatenate(pair_levels)
    if keys.size == 0:
        return basins
    order = np.lexsort((levels, keys))
    keys, levels = keys[order], levels[order]
    last = np.r_[keys[1:] != keys[:-1], True]  # the highest crossing of each pair comes last
    keys, saddles = keys[last], levels[last]

    inside = basins > 0
    peak = np.zeros(n + 1)
    np.maximum.at(peak, basins[inside], height[inside])
    parent = np.arange(n + 1)

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for index in np.argsort(-saddles, kind="stable"):
        a, b = divmod(int(keys[index]), n + 1)
        ra, rb = root(a), root(b)
        if ra == rb:
            continue
        low, high = (ra, rb) if peak[ra] < peak[rb] else (rb, ra)
        if peak[low] - saddles[index] < min_dynamic:
            parent[low] = high
    final = np.array([root(node) for node in range(n + 1)])
    return final[basins]


def _foreground_mask(probability: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    mask = probability > config.foreground_threshold
    return fill_holes(mask) if config.fill_holes else mask


def instances_from_foreground(probability: np.ndarray, **params: object) -> np.ndarray:
    """Split a foreground probability (or binary) map into nuclei at distance-transform peaks.

    Parameters
    ----------
    probability : (H, W) array
        Foreground probability in [0, 1] (a bool mask works too).
    **params
        Fields of :class:`PostprocessConfig`; used here: ``foreground_threshold``,
        ``peak_height``, ``min_area``, ``fill_holes``.

    Returns
    -------
    (H, W) int32 labels, 0 = background, instances numbered 1..n.
    """
    config = PostprocessConfig(**params)  # type: ignore[arg-type]
    probability = _as_map(probability, "foreground probability")
    mask = _foreground_mask(probability, config)
    labels = split_by_distance_peaks(mask, peak_height=config.peak_height)
    return finish_labels(labels, min_area=config.min_area)


def split_by_distance_peaks(mask: np.ndarray, *, peak_height: float = 1.0) -> np.ndarray:
    """Split a binary nucleus mask at the peaks of its distance transform (the shared splitter).

    Seeds are the regional maxima of the Euclidean distance to the background that rise at least
    ``peak_height`` pixels above the saddle towards a higher maximum (h-maxima); the watershed of
    the negated distance from those seeds separates touching nuclei along their necks. Used by
    :func:`instances_from_foreground` and by the classical baseline. Returns int32 labels (not
    renumbered; 0 = background).
    """
    mask = np.asarray(mask, bool)
    basins = np.zeros(mask.shape, np.int32)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return basins
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    inside = mask[box]
    distance = inner_distance(mask)[box]
    # Every connected part of the mask holds its own maximum, so every part gets a seed.
    peaks, _ = ndimage.label(_local_maxima(distance, inside), structure=_EIGHT_CONNECTED)
    basins[box] = _merge_shallow_basins(watershed(-distance, peaks, mask=inside), distance, peak_height)
    return basins


def instances_from_distance_maps(
    foreground: np.ndarray,
    center_distance: np.ndarray | None = None,
    boundary_distance: np.ndarray | None = None,
    **params: object,
) -> np.ndarray:
    """Instances from the instance head's maps (see :func:`nucleisam.data.instance_targets`).

    Seeds are the connected regions where ``center_distance < center_threshold`` and
    ``boundary_distance > boundary_threshold`` (either condition alone when only one map is
    given); the watershed floods ``-boundary_distance`` (else ``center_distance``) within the
    thresholded foreground, and neighbours separated by a dip shallower than ``split_depth`` are
    merged again. With neither distance map this is :func:`instances_from_foreground`.

    Returns
    -------
    (H, W) int32 labels, 0 = background, instances numbered 1..n.
    """
    if center_distance is None and boundary_distance is None:
        return instances_from_foreground(foreground, **params)
    config = PostprocessConfig(**params)  # type: ignore[arg-type]
    foreground = _as_map(foreground, "foreground probability")
    mask = _foreground_mask(foreground, config)
    seeds = mask.copy()
    if center_distance is not None:
        center_distance = _as_map(center_distance, "center_distance", foreground.shape)
        seeds &= center_distance < config.center_threshold
    if boundary_distance is not None:
        boundary_distance = _as_map(boundary_distance, "boundary_distance", foreground.shape)
        seeds &= boundary_distance > config.boundary_threshold
    markers, _ = ndimage.label(seeds, structure=_EIGHT_CONNECTED)
    height = boundary_distance if boundary_distance is not None else 1.0 - center_distance
    labels = seeded_watershed(-height, markers, mask)
    return finish_labels(_merge_shallow_basins(labels, height, config.split_depth), min_area=config.min_area)


def instances_from_maps(maps: dict[str, np.ndarray], config: PostprocessConfig | None = None) -> np.ndarray:
    """Dispatch on the maps a model produced: instance head (foreground + distances) or binary.

    ``maps`` holds (H, W) arrays under ``foreground`` and optionally ``center_distance`` and
    ``boundary_distance``, as probabilities/distances in [0, 1].
    """
    if "foreground" not in maps:
        raise NucleisamError(f"maps need a 'foreground' entry; got {', '.join(sorted(maps)) or 'nothing'}.")
    unknown = sorted(set(maps) - {"foreground", "center_distance", "boundary_distance"})
    if unknown:
        raise NucleisamError(f"unknown map(s) {', '.join(unknown)}; expected foreground, center_distance, "
                             "boundary_distance.")
    params = to_dict(config or PostprocessConfig())
    return instances_from_distance_maps(
        maps["foreground"], maps.get("center_distance"), maps.get("boundary_distance"), **params
    )
