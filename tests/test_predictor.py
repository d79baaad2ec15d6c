"""Predictor: a model obeying the NucleiSam contract, run tile by tile on whole images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nucleisam.errors import NucleisamError
from nucleisam.predict.predictor import Predictor, resolve_device
from synthetic_nuclei import aji, darkness_model, distance_watershed, synthetic_nuclei, threshold_maps


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return synthetic_nuclei(700, 900, seed=5)[0]


def test_model_predictor_matches_whole_image_processing(image: np.ndarray) -> None:
    torch.set_num_threads(1)
    predictor = Predictor.from_model(darkness_model(), postprocess=distance_watershed, tile=256, overlap=64,
                                     batch_size=3)
    tiles_done: list[int] = []
    result = predictor.predict(image, return_maps=True, on_tile_done=tiles_done.append)
    whole = distance_watershed({"foreground": threshold_maps(image[None])["foreground"][0]})
    assert result.labels.dtype == np.int32 and result.labels.shape == image.shape[:2]
    assert result.n_nuclei == int(result.labels.max()) == len(np.unique(result.labels)) - 1
    assert abs(result.n_nuclei - (len(np.unique(whole)) - 1)) <= 0.01 * result.n_nuclei
    assert aji(whole, result.labels) >= 0.99
    assert len(tiles_done) == result.n_tiles == 20
    # The foreground logits became probabilities; every map is full size.
    assert set(result.maps) == {"foreground", "center_distance", "boundary_distance"}
    for values in result.maps.values():
        assert values.shape == image.shape[:2] and values.dtype == np.float32
        assert 0.0 <= values.min() and values.max() <= 1.0
    assert result.network_seconds > 0 and result.postprocess_seconds > 0
    assert result.seconds >= result.network_seconds + result.postprocess_seconds
    np.testing.assert_array_equal(predictor(image), result.labels)


def test_small_image_and_batch_sizes_agree(image: np.ndarray) -> None:
    small = image[:200, :300]
    one = Predictor.from_model(darkness_model(), postprocess=distance_watershed, tile=128, batch_size=1)
    four = Predictor.from_model(darkness_model(), postprocess=distance_watershed, tile=128, batch_size=4)
    np.testing.assert_array_equal(one(small), four(small))
    assert one(small).max() > 10


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(NucleisamError, match="--batch-size"):
        Predictor(label_fn=distance_watershed, batch_size=0)
    with pytest.raises(NucleisamError, match="--overlap"):
        Predictor(label_fn=distance_watershed, tile=64, overlap=80)
    with pytest.raises(NucleisamError, match="--device"):
        resolve_device("quantum")
    if not torch.cuda.is_available():
        with pytest.raises(NucleisamError, match="no CUDA GPU"):
            resolve_device("cuda")
