"""Post-processing: oracle checks on the spleen tiles, splitting behaviour, cleaning, tuning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from conftest import SHARED_SPLEEN, requires_shared_data
from nucleisam.config import PostprocessConfig
from nucleisam.data import instance_targets
from nucleisam.errors import NucleisamError
from nucleisam.metrics import evaluate_instances
from nucleisam.postprocess import (
    fill_holes,
    instances_from_distance_maps,
    instances_from_foreground,
    instances_from_maps,
    tune_postprocess,
)


def load_labels(organ: Path) -> list[np.ndarray]:
    return [tifffile.imread(path) for path in sorted((organ / "label masks modify").glob("*.tif"))]


@pytest.fixture(scope="module")
def bundled_labels(sample_root: Path) -> list[np.ndarray]:
    return load_labels(sample_root / "human spleen")


def mean_aji(labels: list[np.ndarray], segment) -> float:
    return float(np.mean([evaluate_instances(gt, segment(gt))["aji"] for gt in labels]))


def from_oracle_maps(gt: np.ndarray) -> np.ndarray:
    maps = instance_targets(gt)
    out = instances_from_distance_maps(maps["foreground"], maps["center_distance"], maps["boundary_distance"])
    assert out.dtype == np.int32 and out.shape == gt.shape
    return out


def from_binary_foreground(gt: np.ndarray) -> np.ndarray:
    return instances_from_foreground((gt > 0).astype(np.float32))


def connected_components(gt: np.ndarray) -> np.ndarray:
    return ndimage.label(gt > 0)[0]


def test_oracle_maps_reproduce_the_bundled_tiles(bundled_labels) -> None:
    assert mean_aji(bundled_labels, from_oracle_maps) >= 0.97


def test_distance_peaks_split_touching_nuclei_on_the_bundled_tiles(bundled_labels) -> None:
    split = mean_aji(bundled_labels, from_binary_foreground)
    assert split >= 0.80
    assert split > mean_aji(bundled_labels, connected_components) + 0.15


@requires_shared_data
def test_oracle_checks_on_all_shared_spleen_tiles() -> None:
    labels = load_labels(SHARED_SPLEEN)
    assert len(labels) == 34
    assert mean_aji(labels, from_oracle_maps) >= 0.97
    components = mean_aji(labels, connected_components)
    assert 0.45 < components < 0.65  # the "≈ 0.55": touching nuclei stay merged
    assert mean_aji(labels, from_binary_foreground) >= 0.80


def disk(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_two_overlapping_disks_are_split_and_a_lone_disk_is_not() -> None:
    mask = disk((60, 90), (30, 25), 12) | disk((60, 90), (30, 45), 12) | disk((60, 90), (30, 75), 8)
    labels = instances_from_foreground(mask)
    assert labels.max() == 3 and ndimage.label(mask)[1] == 2
    assert labels[30, 20] != labels[30, 50] and labels[30, 20] > 0 and labels[30, 50] > 0
    np.testing.assert_array_equal(np.unique(labels), [0, 1, 2, 3])  # numbered 1..n


def test_shallow_peaks_do_not_split_a_nucleus() -> None:
    # A slightly pinched ellipse: the neck is much wider than peak_height.
    mask = disk((40, 80), (20, 30), 12) | disk((40, 80), (20, 42), 12)
    assert instances_from_foreground(mask, peak_height=3.0).max() == 1
    assert instances_from_foreground(mask, peak_height=0.25).max() == 2


def test_holes_small_objects_and_border_nuclei() -> None:
    probability = np.zeros((50, 50), np.float32)
    probability[10:30, 10:30] = 0.9
    probability[15:20, 15:20] = 0.1  # a hole inside a nucleus
    probability[40:42, 40:42] = 0.9  # a 4-pixel speck
    probability[0:12, 38:50] = 0.8  # a nucleus cut by the tile corner
    labels = instances_from_foreground(probability, min_area=10)
    assert labels[17, 17] > 0 and labels[17, 17] == labels[12, 12]  # hole filled
    assert labels[41, 41] == 0  # speck removed
    assert labels[0, 49] > 0  # nothing cleared at the border
    assert instances_from_foreground(probability, min_area=0, fill_holes=False)[17, 17] == 0
    open_ring = np.ones((9, 9), bool)
    open_ring[3:6, 3:9] = False  # a notch open to the edge is not a hole
    assert not fill_holes(open_ring)[4, 5]


def test_maps_path_keeps_nuclei_whose_seed_was_missed() -> None:
    gt = np.zeros((40, 40), np.int32)
    gt[5:15, 5:15] = 1
    gt[20:35, 20:35] = 2
    maps = instance_targets(gt)
    centre = maps["center_distance"].copy()
    centre[gt == 2] = 0.9  # no seed for nucleus 2
    labels = instances_from_distance_maps(maps["foreground"], centre, maps["boundary_distance"])
    assert labels.max() == 2 and evaluate_instances(gt, labels)["aji"] == 1.0
    # Either distance map alone also works.
    only_centre = instances_from_distance_maps(maps["foreground"], maps["center_distance"])
    assert evaluate_instances(gt, only_centre)["aji"] == 1.0
    only_boundary = instances_from_distance_maps(
        maps["foreground"], boundary_distance=maps["boundary_distance"]
    )
    assert evaluate_instances(gt, only_boundary)["aji"] == 1.0


def test_labels_from_maps_dispatches_on_the_maps_present(bundled_labels) -> None:
    gt = bundled_labels[0]
    maps = instance_targets(gt)
    config = PostprocessConfig(min_area=5)
    np.testing.assert_array_equal(
        instances_from_maps(maps, config),
        instances_from_distance_maps(
            maps["foreground"], maps["center_distance"], maps["boundary_distance"], min_area=5
        ),
    )
    np.testing.assert_array_equal(
        instances_from_maps({"foreground": maps["foreground"]}, config),
        instances_from_foreground(maps["foreground"], min_area=5),
    )
    with pytest.raises(NucleisamError, match="foreground"):
        instances_from_maps({"center_distance": maps["center_distance"]})
    with pytest.raises(NucleisamError, match="unknown map"):
        instances_from_maps({**maps, "logits": maps["foreground"]})


def test_batches_and_bad_parameters_are_refused() -> None:
    batch = np.zeros((2, 1, 32, 32), np.float32)
    with pytest.raises(NucleisamError, match="a batch is a loop of images"):
        instances_from_foreground(batch)
    with pytest.raises(NucleisamError, match="a batch is a loop of images"):
        instances_from_distance_maps(batch[0], batch[0], batch[0])
    with pytest.raises(NucleisamError, match="shape"):
        instances_from_distance_maps(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(NucleisamError, match="NaN"):
        instances_from_foreground(np.full((8, 8), np.nan, np.float32))
    with pytest.raises(NucleisamError, match=r"'postprocess\.foreground_threshold'"):
        instances_from_foreground(np.zeros((8, 8)), foreground_threshold=1.5)
    with pytest.raises(NucleisamError, match=r"'postprocess\.min_area'"):
        instances_from_distance_maps(np.zeros((8, 8)), np.zeros((8, 8)), min_area=-1)


def noisy_maps(gt: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Oracle maps blurred and with noise, as an imperfect model would give."""
    rng = np.random.default_rng(seed)
    maps = instance_targets(gt)
    out = {}
    for key, value in maps.items():
        blurred = ndimage.gaussian_filter(value, 1.5) + rng.normal(0, 0.08, value.shape)
        out[key] = np.clip(blurred, 0, 1).astype(np.float32)
    return out


def test_tuning_never_lowers_the_score_and_reports_what_it_tried(bundled_labels) -> None:
    items = [(noisy_maps(gt, i), gt, None) for i, gt in enumerate(bundled_labels[:3])]
    start = PostprocessConfig(foreground_threshold=0.7, center_threshold=0.15)
    result = tune_postprocess(
        items,
        config=start,
        search_space={"foreground_threshold": (0.3, 0.5, 0.7), "center_threshold": (0.15, 0.3, 0.45)},
    )
    assert result.table[0]["score"] == result.start_score
    assert result.score >= result.start_score
    assert result.score == max(row["score"] for row in result.table)
    best_row = next(row for row in result.table if row["score"] == result.score)
    assert best_row["foreground_threshold"] == result.config.foreground_threshold
    recomputed = np.mean(
        [evaluate_instances(gt, instances_from_maps(maps, result.config))["aji"] for maps, gt, _ in items]
    )
    assert result.score == pytest.approx(recomputed, abs=1e-12)
    assert len({tuple(sorted(row.items())) for row in result.table}) == len(result.table)  # no repeats

    grid = tune_postprocess(items, config=start, strategy="grid",
                            search_space={"foreground_threshold": (0.3, 0.5), "min_area": (0, 30)})
    assert len(grid.table) == 1 + 4 and grid.score == max(row["score"] for row in grid.table)


def test_tuning_rejects_unknown_parameters_and_metrics(bundled_labels) -> None:
    items = [({"foreground": (bundled_labels[0] > 0).astype(np.float32)}, bundled_labels[0], None)]
    with pytest.raises(NucleisamError, match="not a parameter"):
        tune_postprocess(items, search_space={"sigma": (1, 2)})
    with pytest.raises(NucleisamError, match="unknown metric"):
        tune_postprocess(items, metric="accuracy")
    result = tune_postprocess(items, search_space={"peak_height": (0.5, 1.0)}, metric="pq")
    assert result.metric == "pq" and result.score >= result.start_score


def test_seeds_broken_by_noise_are_merged_again(bundled_labels) -> None:
    items = [(noisy_maps(gt, i), gt) for i, gt in enumerate(bundled_labels[:3])]

    def score(**params) -> float:
        config = PostprocessConfig(**params)
        scores = [evaluate_instances(gt, instances_from_maps(maps, config))["aji"] for maps, gt in items]
        return float(np.mean(scores))

    merged, fragmented = score(), score(split_depth=0.0)
    assert merged >= 0.85 and merged > fragmented + 0.1
