"""Training targets for the instance head: foreground and two per-nucleus normalised distance maps.

Every nucleus is normalised on its own, so a small lymphocyte and a large tumour nucleus produce the
same range of values and the network learns shape, not size. The two distance maps point in
opposite directions: the boundary map peaks in the middle of a nucleus, the centre map is lowest
there. A seed for the watershed is where both agree (centre distance small *and* boundary distance
large), and the flooding follows the boundary map down to the edges (see
:mod:`nucleisam.postprocess`).
"""

from __future__ import annotations

import numpy as np

from nucleisam.errors import NucleisamError
from nucleisam.utils.distance import inner_distance_squared

TARGET_KEYS = ("foreground", "center_distance", "boundary_distance")


def _contiguous_labels(labels: np.ndarray) -> np.ndarray:
    """Labels whose largest id is at most the pixel count, so per-id tables stay small."""
    if labels.size == 0 or int(labels.max()) <= labels.size:
        return labels
    _, inverse = np.unique(labels, return_inverse=True)
    relabelled = inverse.reshape(labels.shape)
    # np.unique sorts 0 first; shift so that background stays 0 only if it was present.
    return relabelled if labels.min() == 0 else relabelled + 1


def instance_targets(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pixel training targets from an instance label map.

    Parameters
    ----------
    labels : (H, W) integer array
        Instance ids, 0 = background. Ids need not be contiguous.

    Returns
    -------
    dict of float32 (H, W) arrays
        ``foreground``
            1.0 on nuclei, 0.0 on background.
        ``boundary_distance``
            For a pixel ``p`` of nucleus ``i``: ``d_i(p) / max_i d_i``, where ``d_i(p)`` is the
            Euclidean distance from ``p`` to the nearest pixel that is *not* in nucleus ``i``
            (background, a touching nucleus, or outside the image: a nucleus cut by the tile edge
            has its border there). Values lie in (0, 1]: exactly 1 at the nucleus' innermost
            pixel(s), ``1 / max_i d_i`` on its outermost ring. 0 on background.
        ``center_distance``
            For a pixel ``p`` of nucleus ``i``: ``|p - c_i| / max_{q in i} |q - c_i|``, where the
            centre ``c_i`` is the innermost pixel of the nucleus (largest ``d_i``; among ties the
            one nearest the centroid, then the first in raster order). The centre is therefore
            always inside the nucleus, also for bent ones whose centroid is not. Values lie in
            [0, 1]: exactly 0 at the centre and 1 at the pixel farthest from it; a one-pixel
            nucleus is 0. **Background is 1** ("far from every centre"), so the seed rule
            ``center_distance < t`` can only fire inside nuclei and a network's background output
            does not look like a centre.

    Raises
    ------
    NucleisamError
        For a map that is not 2-D, not integer, or holds negative ids.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise NucleisamError(
            f"instance_targets expects one (H, W) label map, got shape {labels.shape}; "
            "a batch is a loop of images: call it once per image."
        )
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise NucleisamError(
            f"instance_targets expects integer instance ids, got dtype {labels.dtype}; "
            "read masks with nucleisam.data.read_label_map."
        )
    if labels.size and labels.min() < 0:
        raise NucleisamError("instance_targets: label map holds negative ids; ids must be >= 0.")

    labels = _contiguous_labels(labels)
    foreground = labels > 0
    boundary = np.zeros(labels.shape, np.float32)
    center = np.ones(labels.shape, np.float32)
    ys, xs = np.nonzero(foreground)
    if ys.size == 0:
        return {"foreground": foreground.astype(np.float32), "center_distance": center,
                "boundary_distance": boundary}
    ids = labels[ys, xs].astype(np.intp)
    n_ids = int(ids.max()) + 1

    inner_sq = inner_distance_squared(labels, background=0)[ys, xs]
    largest_sq = np.zeros(n_ids, inner_sq.dtype)
    np.maximum.at(largest_sq, ids, inner_sq)
    boundary[ys, xs] = np.sqrt(inner_sq) / np.sqrt(largest_sq[ids])

    # Centre = innermost pixel; ties go to the one nearest the centroid (compared as
    # area * offset, exact integers), then to the first in raster order (np.nonzero's order).
    area = np.bincount(ids, minlength=n_ids)
    sum_y = np.bincount(ids, ys, minlength=n_ids)
    sum_x = np.bincount(ids, xs, minlength=n_ids)
    candidates = np.flatnonzero(inner_sq == largest_sq[ids])
    cand_ids = ids[candidates]
    off_y = area[cand_ids] * ys[candidates] - sum_y[cand_ids]
    off_x = area[cand_ids] * xs[candidates] - sum_x[cand_ids]
    order = np.lexsort((candidates, off_y * off_y + off_x * off_x, cand_ids))
    first = order[np.r_[True, cand_ids[order][1:] != cand_ids[order][:-1]]]
    centre_y = np.zeros(n_ids)
    centre_x = np.zeros(n_ids)
    centre_y[cand_ids[first]] = ys[candidates[first]]
    centre_x[cand_ids[first]] = xs[candidates[first]]

    from_centre = np.hypot(ys - centre_y[ids], xs - centre_x[ids])
    farthest = np.zeros(n_ids)
    np.maximum.at(farthest, ids, from_centre)
    scale = farthest[ids]
    center[ys, xs] = np.divide(from_centre, scale, out=np.zeros_like(from_centre), where=scale > 0)

    return {
        "foreground": foreground.astype(np.float32),
        "center_distance": center,
        "boundary_distance": boundary,
    }
