"""The classical baseline: hematoxylin threshold + the shared distance-peak watershed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nucleisam.classical as baseline
from conftest import SHARED_SPLEEN, requires_shared_data
from nucleisam.classical import classical_instances
from nucleisam.config import ClassicalConfig
from nucleisam.data import load_nuinsseg
from nucleisam.errors import NucleisamError
from nucleisam.metrics import MetricAccumulator
from nucleisam.postprocess import split_by_distance_peaks, tune_postprocess


def load_tiles(organ: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """(image, labels, vague mask) of every tile of an organ folder, read by the data layer."""
    return [(s.load_image(), s.load_labels(), s.load_vague()) for s in load_nuinsseg(organ).samples]


def mean_metrics(tiles, **params) -> dict[str, float]:
    acc = MetricAccumulator()
    for image, labels, vague in tiles:
        acc.update(labels, classical_instances(image, **params), vague)
    return acc.compute().mean


@requires_shared_data
def test_default_baseline_on_the_shared_spleen_tiles() -> None:
    means = mean_metrics(load_tiles(SHARED_SPLEEN))
    # Issue 7 quotes about Dice 0.71, AJI 0.38, PQ 0.27 for a plain version of this method.
    assert means["aji"] >= 0.35
    assert means["dice"] >= 0.65


def test_default_baseline_on_the_bundled_tiles(sample_root: Path) -> None:
    tiles = load_tiles(sample_root / "human spleen")
    result = classical_instances(tiles[0][0])
    assert result.dtype == np.int32 and result.shape == tiles[0][1].shape and result.max() > 20
    assert mean_metrics(tiles)["aji"] >= 0.35


def test_blank_and_faint_tiles_have_no_nuclei() -> None:
    white = np.full((128, 128, 3), 255, np.uint8)
    assert classical_instances(white).max() == 0
    noisy = np.clip(250 + np.random.default_rng(0).normal(0, 2, (128, 128, 3)), 0, 255).astype(np.uint8)
    assert classical_instances(noisy).max() == 0


def test_splitting_reuses_the_post_processing_splitter(sample_root: Path, monkeypatch) -> None:
    calls = []

    def spy(mask, *, peak_height):
        calls.append(peak_height)
        return split_by_distance_peaks(mask, peak_height=peak_height)

    monkeypatch.setattr(baseline, "split_by_distance_peaks", spy)
    image = load_tiles(sample_root / "human spleen")[0][0]
    classical_instances(image, peak_height=2.0)
    assert calls == [2.0]


def test_tuning_the_baseline_never_lowers_validation_aji(sample_root: Path) -> None:
    tiles = load_tiles(sample_root / "human spleen")[:2]
    result = tune_postprocess(
        tiles,
        config=ClassicalConfig(min_area=5, sigma=0.5),
        segment=classical_instances,
        search_space={"sigma": (0.5, 1.0, 2.0), "min_area": (5, 30)},
    )
    assert isinstance(result.config, ClassicalConfig)
    assert result.score >= result.start_score and result.score > 0.3


def test_bad_images_and_parameters_are_clear_errors() -> None:
    with pytest.raises(NucleisamError, match="grayscale"):
        classical_instances(np.zeros((32, 32), np.uint8))
    with pytest.raises(NucleisamError, match="a batch is a loop of images"):
        classical_instances(np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(NucleisamError, match="sigma"):
        ClassicalConfig(sigma=-1)
    with pytest.raises(TypeError):
        classical_instances(np.zeros((32, 32, 3), np.uint8), radius=3)
