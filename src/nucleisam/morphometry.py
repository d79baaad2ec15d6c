"""Per-nucleus measurements from an instance label map and its H&E image.

Everything that can be is computed in one pass over the pixels with :func:`numpy.bincount`, in
horizontal strips so that an 8192×8192 slide region never needs a full-size float copy of the
image. Only the convex hull (for solidity) needs a small loop over the nuclei, on their bounding
boxes.

Conventions:

- coordinates are array indices: pixel ``(row, col)`` has its centre at ``x = col, y = row``
  (scikit-image and napari's convention; QuPath's GeoJSON puts that centre at ``col + 0.5``);
- ``perimeter_px`` is scikit-image's ``regionprops`` perimeter (4-connected boundary pixels with
  the Benkrid–Crookes weights for straight, diagonal and corner steps);
- ``eccentricity`` is scikit-image's, from the second central moments;
- ``solidity`` is the pixel area over the area of the convex hull of the nucleus's pixel squares
  (QuPath's definition for a pixel-traced outline; 1.0 for any rectangle);
- ``hematoxylin_od_mean`` is the mean of the hematoxylin channel of the Ruifrok–Johnston colour
  deconvolution (equal to :func:`skimage.color.rgb2hed`'s, computed with a lookup table).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull
from skimage.color import hed_from_rgb
from skimage.measure import find_contours

#: Pixels per strip when scanning the image: bounds the float temporaries to a few hundred MB.
STRIP_PIXELS = 1 << 21

# Weight of a boundary pixel by its neighbourhood code (centre 1, 4-neighbours 2, diagonals 10,
# counting only boundary pixels of the same nucleus): straight runs count 1, diagonal steps √2,
# corners (1+√2)/2. The same table scikit-image's `perimeter` uses, so the values agree with it.
_PERIMETER_WEIGHTS = np.zeros(50, dtype=np.float64)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2.0)
_PERIMETER_WEIGHTS[[13, 23]] = (1.0 + math.sqrt(2.0)) / 2.0

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

_NEIGHBOUR_CODES: tuple[tuple[int, int, int], ...] = (
    (-1, 0, 2), (1, 0, 2), (0, -1, 2), (0, 1, 2),
    (-1, -1, 10), (-1, 1, 10), (1, -1, 10), (1, 1, 10),
)


def _hematoxylin_lookup() -> np.ndarray:
    """Per channel and 8-bit value, that value's term of the hematoxylin stain concentration.

    :func:`skimage.color.rgb2hed` computes ``max(0, Σ_c log(max(v_c/255, 1e-6)) / log(1e-6) ·
    M[c, 0])``; the per-channel terms depend on one byte each, so a 3×256 table gives the same
    numbers without a float copy of the image.
    """
    values = np.maximum(np.arange(256, dtype=np.float64) / 255.0, 1e-6)
    optical = np.log(values) / np.log(1e-6)
    return optical[None, :] * hed_from_rgb[:, 0][:, None]


_HEMATOXYLIN_TERMS = _hematoxylin_lookup()


def hematoxylin_density(pixels: np.ndarray) -> np.ndarray:
    """Hematoxylin channel of the colour deconvolution (equal to ``rgb2hed(...)[..., 0]``) of
    ``uint8`` RGB pixels of shape (..., 3)."""
    terms = _HEMATOXYLIN_TERMS
    total = terms[0][pixels[..., 0]] + terms[1][pixels[..., 1]] + terms[2][pixels[..., 2]]
    return np.maximum(total, 0.0)


def check_label_map(labels: np.ndarray, *, name: str = "label map") -> np.ndarray:
    """Validate a 2-D integer instance label map (0 = background) and return it as an array."""
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (H, W), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer instance ids, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} holds negative ids; instance ids must be ≥ 0 (0 = background)")
    return arr


def _strip_rows(width: int) -> int:
    return max(8, STRIP_PIXELS // max(width, 1))


def compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels as a bincount-friendly array; ids far above the pixel count are renumbered.

    Returns the array to measure and, when renumbered, the original id of each new id.
    """
    if labels.dtype.kind == "u" and labels.dtype.itemsize >= 8:
        labels = labels.astype(np.int64)  # bincount refuses uint64
    if int(labels.max(initial=0)) <= labels.size:
        return np.ascontiguousarray(labels), None
    original_ids, inverse = np.unique(labels, return_inverse=True)
    if original_ids[0] != 0:
        original_ids = np.concatenate([[0], original_ids])
        inverse = inverse + 1
    return inverse.reshape(labels.shape).astype(np.int64), original_ids


def _perimeters(labels: np.ndarray, size: int) -> np.ndarray:
    """Perimeter of every id ``0..size-1`` (index 0 unused), scanning strips with a 2-row halo."""
    height, width = labels.shape
    totals = np.zeros(size, dtype=np.float64)
    padded_width = width + 2
    strip = _strip_rows(width)
    for top in range(0, height, strip):
        bottom = min(top + strip, height)
        # Rows top-2 .. bottom+2 with zero padding outside the image: the halo lets us decide
        # whether the rows next to the strip are boundary pixels, which their neighbours need.
        lo, hi = top - 2, bottom + 2
        window = np.zeros((hi - lo, padded_width), dtype=labels.dtype)
        src_lo, src_hi = max(lo, 0), min(hi, height)
        window[src_lo - lo : src_hi - lo, 1:-1] = labels[src_lo:src_hi]

        core = window[1:-1, 1:-1]  # rows top-1 .. bottom+1
        boundary = core != 0
        interior = boundary.copy()
        for dy, dx, _ in _NEIGHBOUR_CODES[:4]:
            interior &= window[1 + dy : window.shape[0] - 1 + dy, 1 + dx : padded_width - 1 + dx] == core
        boundary &= ~interior

        # Neighbourhood code of each boundary pixel of the strip's own rows.
        centre = core[1:-1]
        centre_boundary = boundary[1:-1]
        code = centre_boundary.astype(np.int16)
        boundary_padded = np.zeros((boundary.shape[0], padded_width), dtype=bool)
        boundary_padded[:, 1:-1] = boundary
        labels_padded = window[1:-1]
        rows = centre.shape[0]
        for dy, dx, weight in _NEIGHBOUR_CODES:
            neighbour_label = labels_padded[1 + dy : 1 + dy + rows, 1 + dx : 1 + dx + width]
            neighbour_boundary = boundary_padded[1 + dy : 1 + dy + rows, 1 + dx : 1 + dx + width]
            code += weight * (neighbour_boundary & (neighbour_label == centre) & centre_boundary)
        ids = centre[centre_boundary]
        totals += np.bincount(ids, weights=_PERIMETER_WEIGHTS[code[centre_boundary]], minlength=size)
    return totals


def _convex_areas(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Area of the convex hull of each nucleus's pixel squares, on its bounding box."""
    boxes = ndi.find_objects(labels, max_label=int(ids.max(initial=0)))
    areas = np.zeros(len(ids), dtype=np.float64)
    for index, label_id in enumerate(ids):
        box = boxes[label_id - 1]
        mask = labels[box] == label_id
        rows = np.flatnonzero(mask.any(axis=1))
        first = mask[rows].argmax(axis=1)
        last = mask.shape[1] - mask[rows, ::-1].argmax(axis=1)  # one past the last pixel
        # The hull of the pixel squares is the hull of the outer corners of each row's end pixels.
        count = len(rows)
        corners = np.empty((4 * count, 2), dtype=np.float64)
        corners[:, 0] = np.concatenate([first, first, last, last])
        corners[:, 1] = np.concatenate([rows, rows + 1, rows, rows + 1])
        areas[index] = ConvexHull(corners).volume  # in 2-D, `volume` is the area
    return areas


def measure_nuclei(
    labels: np.ndarray,
    image: np.ndarray | None = None,
    *,
    mpp: float | None = None,
) -> dict[str, np.ndarray]:
    """Measure every nucleus of an instance label map.

    Args:
        labels: integer (H, W) instance ids, 0 = background; ids need not be contiguous.
        image: the RGB ``uint8`` (H, W, 3) image the labels belong to; without it the intensity
            columns are left out.
        mpp: microns per pixel; adds ``area_um2`` and ``perimeter_um``.

    Returns:
        Columns (one entry per nucleus, ordered by id) in this order: ``id``, ``centroid_x``,
        ``centroid_y``, ``area_px``, [``area_um2``], ``perimeter_px``, [``perimeter_um``],
        ``eccentricity``, ``solidity``, [``mean_r``, ``mean_g``, ``mean_b``,
        ``hematoxylin_od_mean``].
    """
    labels = check_label_map(labels)
    if image is not None and (image.ndim != 3 or image.shape[:2] != labels.shape or image.shape[2] != 3):
        raise ValueError(f"image shape {image.shape} does not match label map shape {labels.shape} (+3)")
    if mpp is not None and not (mpp > 0 and math.isfinite(mpp)):
        raise ValueError(f"mpp must be a positive number of microns per pixel, got {mpp}")

    labels, original_ids = compact_labels(labels)
    height, width = labels.shape
    size = int(labels.max(initial=0)) + 1
    strip = _strip_rows(width)
    columns_x = np.arange(width, dtype=np.float64)

    def strip_coordinates(top: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
        xs = np.broadcast_to(columns_x, (rows, width)).ravel()
        ys = np.repeat(np.arange(top, top + rows, dtype=np.float64), width)
        return xs, ys

    area = np.zeros(size)
    sum_x = np.zeros(size)
    sum_y = np.zeros(size)
    for top in range(0, height, strip):
        flat = labels[top : top + strip].ravel()
        xs, ys = strip_coordinates(top, len(flat) // width)
        area += np.bincount(flat, minlength=size)
        sum_x += np.bincount(flat, weights=xs, minlength=size)
        sum_y += np.bincount(flat, weights=ys, minlength=size)
    present = area > 0
    present[0] = False
    ids = np.flatnonzero(present)
    safe_area = np.where(present, area, 1.0)
    centroid_x = sum_x / safe_area
    centroid_y = sum_y / safe_area

    # Second central moments in a second pass (relative to the centroid: no cancellation), and
    # the colour sums; the deconvolution runs per strip to keep its float64 copy small.
    mu_xx = np.zeros(size)
    mu_yy = np.zeros(size)
    mu_xy = np.zeros(size)
    colour_sums = np.zeros((4, size))
    for top in range(0, height, strip):
        flat = labels[top : top + strip].ravel()
        xs, ys = strip_coordinates(top, len(flat) // width)
        dx = xs - centroid_x[flat]
        dy = ys - centroid_y[flat]
        mu_xx += np.bincount(flat, weights=dx * dx, minlength=size)
        mu_yy += np.bincount(flat, weights=dy * dy, minlength=size)
        mu_xy += np.bincount(flat, weights=dx * dy, minlength=size)
        if image is not None:
            inside = flat > 0  # background pixels are never averaged: skip their colour work
            owners = flat[inside]
            pixels = image[top : top + strip].reshape(-1, 3)[inside]
            for channel in range(3):
                colour_sums[channel] += np.bincount(owners, weights=pixels[:, channel], minlength=size)
            colour_sums[3] += np.bincount(owners, weights=hematoxylin_density(pixels), minlength=size)

    # Eigenvalues of the inertia tensor [[mu_xx, -mu_xy], [-mu_xy, mu_yy]] / area.
    half_trace = (mu_xx + mu_yy) / (2.0 * safe_area)
    radius = np.hypot((mu_xx - mu_yy) / (2.0 * safe_area), mu_xy / safe_area)
    major = np.maximum(half_trace + radius, 0.0)
    minor = np.maximum(half_trace - radius, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        eccentricity = np.where(major > 0, np.sqrt(np.clip(1.0 - minor / major, 0.0, 1.0)), 0.0)

    perimeter = _perimeters(labels, size)
    solidity = area[ids] / _convex_areas(labels, ids) if len(ids) else np.zeros(0)

    table: dict[str, np.ndarray] = {
        "id": (ids if original_ids is None else original_ids[ids]).astype(np.int64),
        "centroid_x": centroid_x[ids],
        "centroid_y": centroid_y[ids],
        "area_px": area[ids].astype(np.int64),
    }
    if mpp is not None:
        table["area_um2"] = area[ids] * mpp * mpp
    table["perimeter_px"] = perimeter[ids]
    if mpp is not None:
        table["perimeter_um"] = perimeter[ids] * mpp
    table["eccentricity"] = eccentricity[ids]
    table["solidity"] = solidity
    if image is not None:
        for row, column in enumerate(("mean_r", "mean_g", "mean_b", "hematoxylin_od_mean")):
            table[column] = colour_sums[row, ids] / area[ids]
    return table


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """Remove vertices of a closed ring (first == last) that lie on a straight run.

    The contour vertices sit on the half-pixel grid, so the cross products are exact.
    """
    points = ring[:-1]
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    keep = points[cross != 0]
    return np.concatenate([keep, keep[:1]])


def iter_nucleus_polygons(labels: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(id, ring)`` per nucleus in increasing id order; the ring is an (N, 2) array of ``x, y``
    in QuPath pixel coordinates.

    Rings start and end at the same vertex; collinear vertices are dropped. Coordinates lie on
    the half-pixel grid between pixel centres, so no pixel centre falls on a ring.
    """
    labels, original_ids = compact_labels(check_label_map(labels))
    top = int(labels.max(initial=0))
    if top == 0:
        return
    for index, box in enumerate(ndi.find_objects(labels, max_label=top)):
        if box is None:
            continue
        label_id = index + 1
        # One pixel of background around the box so every ring closes inside the crop.
        mask = np.pad(labels[box] == label_id, 1)
        # 'high': diagonal neighbours are connected (8-connected pieces, 4-connected holes).
        contours = find_contours(mask.astype(np.float32), 0.5, fully_connected="high")
        if len(contours) > 1:  # holes or several pieces: fill the holes, keep the largest piece
            mask = ndi.binary_fill_holes(mask)
            pieces, count = ndi.label(mask, structure=_EIGHT_CONNECTED)
            if count > 1:
                sizes = np.bincount(pieces.ravel())
                sizes[0] = 0
                mask = pieces == int(sizes.argmax())
            contours = find_contours(mask.astype(np.float32), 0.5, fully_connected="high")
        ring = _drop_collinear(max(contours, key=len))
        # (row, col) in the padded crop → x, y with pixel centres at +0.5.
        xy = np.empty_like(ring)
        xy[:, 0] = ring[:, 1] - 1 + box[1].start + 0.5
        xy[:, 1] = ring[:, 0] - 1 + box[0].start + 0.5
        yield (label_id if original_ids is None else int(original_ids[label_id])), xy
