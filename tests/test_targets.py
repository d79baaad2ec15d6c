"""Training targets (instance_targets) and the label-aware distance transform behind them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from nucleisam.data import instance_targets
from nucleisam.errors import NucleisamError
from nucleisam.utils.distance import inner_distance, inner_distance_squared


def per_object_edt(labels: np.ndarray) -> np.ndarray:
    """Reference: scipy's EDT of each object alone (in its box plus a ring of outside)."""
    labels = labels.astype(np.int64)
    out = np.zeros(labels.shape)
    for value, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is not None:
            inside = labels[box] == value
            out[box][inside] = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1][inside]
    return out


@settings(max_examples=200, deadline=None)
@given(arrays(np.int16, st.tuples(st.integers(1, 14), st.integers(1, 14)), elements=st.integers(0, 3)))
def test_inner_distance_equals_scipy_per_object(labels) -> None:
    np.testing.assert_allclose(inner_distance(labels), per_object_edt(labels), atol=1e-12)
    every = inner_distance_squared(labels, background=None)
    np.testing.assert_array_equal(every[labels > 0], inner_distance_squared(labels)[labels > 0])


def test_inner_distance_on_a_binary_mask_is_scipy_edt_with_a_background_ring() -> None:
    mask = np.zeros((40, 60), bool)
    mask[5:35, 3:60] = True  # touches the right edge
    expected = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    np.testing.assert_allclose(inner_distance(mask), expected)


def spleen_labels(sample_root: Path) -> list[np.ndarray]:
    folder = sample_root / "human spleen" / "label masks modify"
    return [tifffile.imread(path) for path in sorted(folder.glob("*.tif"))]


def test_targets_on_spleen_tiles(sample_root: Path) -> None:
    for labels in spleen_labels(sample_root):
        targets = instance_targets(labels)
        assert set(targets) == {"foreground", "center_distance", "boundary_distance"}
        for value in targets.values():
            assert value.dtype == np.float32 and value.shape == labels.shape
        foreground = targets["foreground"]
        center, boundary = targets["center_distance"], targets["boundary_distance"]
        np.testing.assert_array_equal(foreground, labels > 0)
        assert np.all(boundary[labels == 0] == 0) and np.all(center[labels == 0] == 1)
        edt = per_object_edt(labels)
        for value, box in enumerate(ndimage.find_objects(labels.astype(np.int64)), start=1):
            if box is None:
                continue
            inside = labels[box] == value
            b, c = boundary[box][inside], center[box][inside]
            np.testing.assert_allclose(b, edt[box][inside] / edt[box][inside].max(), rtol=1e-6)
            assert b.min() > 0 and b.max() == 1.0
            assert c.min() == 0.0 and (c.max() == 1.0 or inside.sum() == 1)
            # The centre (value 0) is one pixel, and one of the innermost ones.
            assert np.count_nonzero(c == 0) == 1 and b[c == 0][0] == 1.0


def test_centre_of_a_bent_nucleus_lies_inside_it() -> None:
    labels = np.zeros((30, 30), np.uint8)
    labels[5:25, 5:12] = 3  # a "C": centroid falls in the gap
    labels[5:11, 5:25] = 3
    labels[19:25, 5:25] = 3
    center = instance_targets(labels)["center_distance"]
    cy, cx = np.argwhere(center == 0)[0]
    assert labels[cy, cx] == 3
    ys, xs = np.nonzero(labels)
    assert labels[round(ys.mean()), round(xs.mean())] == 0  # the centroid itself is outside


def test_touching_nuclei_have_low_boundary_distance_on_their_shared_line() -> None:
    labels = np.zeros((20, 30), np.int32)
    labels[5:15, 3:15] = 1
    labels[5:15, 15:28] = 2
    boundary = instance_targets(labels)["boundary_distance"]
    assert boundary[10, 14] == pytest.approx(1 / 5) and boundary[10, 15] == pytest.approx(1 / 5)
    # A nucleus cut by the tile edge has its border there.
    edge = np.zeros((10, 10), np.int32)
    edge[2:8, 0:5] = 1
    assert instance_targets(edge)["boundary_distance"][4, 0] == pytest.approx(1 / 3)


def test_ids_need_not_be_contiguous_and_empty_maps_work() -> None:
    labels = np.zeros((16, 16), np.int64)
    labels[2:7, 2:9] = 5
    labels[9:14, 4:12] = 2**40
    compact = np.where(labels == 5, 1, np.where(labels > 0, 2, 0))
    for key, value in instance_targets(labels).items():
        np.testing.assert_array_equal(value, instance_targets(compact)[key])
    empty = instance_targets(np.zeros((5, 7), np.uint16))
    assert empty["foreground"].sum() == 0 and np.all(empty["center_distance"] == 1)
    single = instance_targets(np.pad(np.ones((1, 1), np.uint8), 2))
    assert single["boundary_distance"][2, 2] == 1.0 and single["center_distance"][2, 2] == 0.0


def test_bad_label_maps_are_clear_errors() -> None:
    with pytest.raises(NucleisamError, match="a batch is a loop of images"):
        instance_targets(np.zeros((2, 8, 8), np.int32))
    with pytest.raises(NucleisamError, match="integer"):
        instance_targets(np.zeros((8, 8), np.float32))
    with pytest.raises(NucleisamError, match="negative"):
        instance_targets(-np.ones((8, 8), np.int32))
