"""Tiled inference: the grid, seam-free stitching, and equality with whole-image processing."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from nucleisam.errors import NucleisamError
from nucleisam.metrics import aji
from nucleisam.predict import tiling
from nucleisam.predict.tiling import InstanceStitcher, TileGrid, predict_tiled
from synthetic_nuclei import distance_watershed, synthetic_nuclei, threshold_maps


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two label maps hold the same instances, whatever their ids."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"),
    [(1536, 2048, 512, 64), (513, 512, 512, 64), (300, 200, 512, 64), (1000, 777, 256, 100),
     (64, 700, 64, 0)],
)
def test_cores_partition_the_image_and_keep_half_the_overlap(height: int, width: int, tile: int,
                                                             overlap: int) -> None:
    grid = TileGrid.for_image(height, width, tile=tile, overlap=overlap)
    owner = np.zeros((height, width), dtype=np.int32)
    covered = np.zeros((height, width), dtype=bool)
    for item in grid:
        assert item.y1 - item.y0 == min(tile, height) and item.x1 - item.x0 == min(tile, width)
        covered[item.y0 : item.y1, item.x0 : item.x1] = True
        owner[item.core_y0 : item.core_y1, item.core_x0 : item.core_x1] += 1
        assert item.y0 <= item.core_y0 < item.core_y1 <= item.y1
        assert item.x0 <= item.core_x0 < item.core_x1 <= item.x1
        # On every inner side the core stays half an overlap away from the tile edge.
        sides = [(item.y0 > 0, item.core_y0 - item.y0), (item.y1 < height, item.y1 - item.core_y1),
                 (item.x0 > 0, item.core_x0 - item.x0), (item.x1 < width, item.x1 - item.core_x1)]
        for inner, margin in sides:
            if inner:
                assert margin >= overlap // 2
    assert covered.all()
    assert (owner == 1).all()
    steps_y, steps_x = np.diff(grid.origins_y), np.diff(grid.origins_x)
    assert (steps_y <= tile - overlap).all() and (steps_x <= tile - overlap).all()


def test_invalid_tiling_options_are_clear_errors() -> None:
    with pytest.raises(NucleisamError, match="overlap="):
        TileGrid.for_image(100, 100, tile=64, overlap=64)
    with pytest.raises(NucleisamError, match="tile="):
        TileGrid.for_image(100, 100, tile=8, overlap=0)
    with pytest.raises(NucleisamError, match="batch_size="):
        predict_tiled(np.zeros((8, 8, 3), np.uint8), label_fn=distance_watershed, batch_size=0)


@pytest.mark.parametrize("max_radius", [14.0, 28.0])
def test_oracle_tiles_stitch_back_to_the_hidden_truth(max_radius: float) -> None:
    """Each tile 'predicts' the true labels of its window (ids shuffled): stitching must rebuild the
    truth exactly, with no nucleus cut or duplicated, for nuclei up to almost the overlap wide."""
    _, truth = synthetic_nuclei(700, 900, spacing=int(2 * max_radius + 6), radius=(4.0, max_radius), seed=3)
    rng = np.random.default_rng(0)
    grid = TileGrid.for_image(*truth.shape, tile=200, overlap=64)
    stitcher = InstanceStitcher(grid)
    for item in grid:
        window = truth[item.y0 : item.y1, item.x0 : item.x1]
        shuffled = np.concatenate([[0], rng.permutation(int(truth.max())) + 1])
        stitcher.add(item, shuffled[window])
    labels, count = stitcher.finish()
    assert count == len(np.unique(truth)) - 1
    assert same_partition(labels, truth)
    np.testing.assert_array_equal(np.unique(labels), np.arange(count + 1))


@pytest.mark.parametrize("order", [1, -1])
def test_nucleus_wider_than_the_overlap_is_taken_whole_from_the_tile_that_holds_it(order: int) -> None:
    """Tiles [0, 200) and [136, 336): the nucleus spans columns 137..215, so only the second tile
    sees it whole. Its centroid (and the first tile's cut view of it) lie in the first tile's core,
    where a centroid rule would keep the cut view."""
    truth = np.zeros((200, 336), dtype=np.int32)
    truth[40:121, 137:171] = 1  # heavy left part
    truth[75:81, 171:216] = 1  # thin right arm, beyond the first tile
    truth[150:160, 20:30] = 2  # an ordinary nucleus elsewhere
    grid = TileGrid.for_image(*truth.shape, tile=200, overlap=64)
    assert grid.origins_x == (0, 136) and grid.bounds_x == (0, 168, 336)
    assert np.argwhere(truth == 1)[:, 1].mean() < 168
    stitcher = InstanceStitcher(grid)
    for item in list(grid)[::order]:
        stitcher.add(item, truth[item.y0 : item.y1, item.x0 : item.x1])
    labels, count = stitcher.finish()
    assert count == 2
    assert same_partition(labels, truth)


def test_nucleus_segmented_slightly_differently_by_two_tiles_is_kept_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A nucleus in the middle of the overlap of tiles [0, 200) and [136, 336): each tile sees it
    shifted by a pixel towards the other tile's side, so each alone would call the other tile the
    most central. The tolerance keeps it (once: the second copy is a duplicate)."""
    grid = TileGrid.for_image(60, 336, tile=200, overlap=64)
    left, right = list(grid)
    seen_by_left = np.zeros((60, 336), dtype=np.int32)
    seen_by_left[20:40, 159:179] = 1
    seen_by_right = np.zeros((60, 336), dtype=np.int32)
    seen_by_right[20:40, 157:177] = 1

    def stitch() -> tuple[np.ndarray, int]:
        stitcher = InstanceStitcher(grid)
        stitcher.add(left, seen_by_left[:, left.x0 : left.x1])
        stitcher.add(right, seen_by_right[:, right.x0 : right.x1])
        return stitcher.finish()

    labels, count = stitch()
    assert count == 1
    np.testing.assert_array_equal(labels > 0, seen_by_left > 0)  # the first tile's copy
    monkeypatch.setattr(tiling, "CENTRAL_TOLERANCE", 0)
    assert stitch()[1] == 0  # an exact rule would lose it


def test_object_larger_than_any_tile_is_kept_once_by_the_core_rule() -> None:
    truth = np.zeros((150, 400), dtype=np.int32)
    truth[60:70, 10:390] = 1  # a 380-pixel band across tiles of 128
    grid = TileGrid.for_image(*truth.shape, tile=128, overlap=32)
    stitcher = InstanceStitcher(grid)
    for item in grid:
        stitcher.add(item, truth[item.y0 : item.y1, item.x0 : item.x1])
    labels, count = stitcher.finish()
    # Cut into at most one piece per tile column (each from the tile whose core holds it), but
    # every pixel kept and nothing invented.
    assert 1 <= count <= len(grid.origins_x)
    np.testing.assert_array_equal(labels > 0, truth > 0)
    np.testing.assert_array_equal(np.unique(labels), np.arange(count + 1))


@pytest.fixture(scope="module")
def large_synthetic() -> tuple[np.ndarray, np.ndarray]:
    image, _ = synthetic_nuclei(1536, 2048, seed=1)
    whole = distance_watershed({name: maps[0] for name, maps in threshold_maps(image[None]).items()}, image)
    return image, whole


def test_tiled_equals_whole_image_on_1536x2048(large_synthetic: tuple[np.ndarray, np.ndarray]) -> None:
    image, whole = large_synthetic
    done: list[int] = []
    result = predict_tiled(image, label_fn=distance_watershed, map_fn=threshold_maps, tile=512, overlap=64,
                           batch_size=3, return_maps=True, on_tile_done=done.append)
    n_whole = len(np.unique(whole)) - 1
    assert result.n_tiles == len(done) == 20
    assert result.labels.dtype == np.int32 and result.labels.shape == whole.shape
    assert abs(result.n_instances - n_whole) <= 0.01 * n_whole
    assert aji(whole, result.labels) >= 0.99
    # The stand-in maps are pixelwise, so the stitched maps equal the whole-image maps exactly.
    np.testing.assert_array_equal(result.maps["foreground"], threshold_maps(image[None])["foreground"][0])


def test_batch_size_does_not_change_the_result(large_synthetic: tuple[np.ndarray, np.ndarray]) -> None:
    image = large_synthetic[0][:700, :900]
    one = predict_tiled(image, label_fn=distance_watershed, map_fn=threshold_maps, tile=256, overlap=48,
                        batch_size=1)
    five = predict_tiled(image, label_fn=distance_watershed, map_fn=threshold_maps, tile=256, overlap=48,
                         batch_size=5)
    np.testing.assert_array_equal(one.labels, five.labels)


def test_image_smaller_than_a_tile_is_padded_with_white() -> None:
    image, _ = synthetic_nuclei(300, 200, seed=2)
    shapes: list[tuple[int, ...]] = []

    def recording_maps(tiles: np.ndarray) -> dict[str, np.ndarray]:
        shapes.append(tiles.shape)
        assert (tiles[:, 300:] == 255).all() and (tiles[:, :, 200:] == 255).all()
        return threshold_maps(tiles)

    result = predict_tiled(image, label_fn=distance_watershed, map_fn=recording_maps, tile=512, overlap=64)
    assert shapes == [(1, 512, 512, 3)]
    whole = distance_watershed({"foreground": threshold_maps(image[None])["foreground"][0]})
    assert same_partition(result.labels, whole)


def test_classical_style_label_fn_without_maps() -> None:
    """With map_fn=None the post-processing gets the tile image (the classical baseline's path)."""
    image, _ = synthetic_nuclei(400, 500, seed=4)

    def from_image(maps: dict[str, np.ndarray], tile_image: np.ndarray) -> np.ndarray:
        assert maps == {}
        return distance_watershed({"foreground": threshold_maps(tile_image[None])["foreground"][0]})

    tiled = predict_tiled(image, label_fn=from_image, tile=256, overlap=64)
    whole = from_image({}, image)
    assert aji(whole, tiled.labels) >= 0.99


def test_stitching_memory_stays_at_the_output_size() -> None:
    """No full-size array per tile: traced peak ≈ the int32 output plus tile-sized temporaries."""
    image = np.full((2048, 2048, 3), 230, dtype=np.uint8)
    image[::40, :] = 60  # dark lines: one long object per row band, cut by every tile

    def lines(maps: dict[str, np.ndarray], tile_image: np.ndarray) -> np.ndarray:
        from scipy import ndimage as ndi

        return ndi.label(tile_image[..., 0] < 128)[0]

    output_bytes = 2048 * 2048 * 4
    tracemalloc.start()
    try:
        result = predict_tiled(image, label_fn=lines, tile=256, overlap=32, batch_size=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.n_tiles == 81 and result.n_instances > 0
    assert peak < output_bytes + 6 * 2**20  # one extra full-size int32 plane would be 16 MiB
