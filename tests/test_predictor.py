"""Predictor: a model obeying the NucleiSam contract, run tile by tile on whole images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nucleisam.classical import CLASSICAL_MPP, classical_instances
from nucleisam.config import ModelConfig, PostprocessConfig
from nucleisam.data import NUINSSEG_MPP, read_rgb
from nucleisam.errors import NucleisamError
from nucleisam.metrics import aji
from nucleisam.model import NucleiSam, save_adapter
from nucleisam.model.inference import tile_map_fn
from nucleisam.model.network import assemble_model
from nucleisam.postprocess import instances_from_maps
from nucleisam.predict.predictor import Predictor
from synthetic_nuclei import darkness_model, distance_watershed, synthetic_nuclei, threshold_maps

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return synthetic_nuclei(700, 900, seed=5)[0]


@pytest.fixture(scope="module")
def nucleisam() -> NucleiSam:
    """The real network (instance head, input 256), randomly initialised: no weights needed."""
    torch.manual_seed(0)
    config = ModelConfig(mode="lora", head="instance", input_size=256, weights="none")
    return assemble_model(config, state_dict=None, base_checkpoint_sha256="random").eval()


def test_real_network_on_an_image_smaller_than_a_tile(nucleisam: NucleiSam) -> None:
    """The image is padded with white to the tile size; the maps returned are the tile's maps on
    the image's pixels, and post-processing sees exactly those."""
    small = synthetic_nuclei(100, 120, seed=7)[0]
    seen: list[tuple[int, ...]] = []

    def threshold(maps: dict[str, np.ndarray], tile_image: np.ndarray) -> np.ndarray:
        seen.append(maps["foreground"].shape)
        return (maps["foreground"] > 0.5).astype(np.int32)

    predictor = Predictor.from_model(nucleisam, postprocess=threshold, tile=128, overlap=32)
    result = predictor.predict(small, return_maps=True)
    padded = np.full((1, 128, 128, 3), 255, np.uint8)
    padded[0, :100, :120] = small
    expected = tile_map_fn(nucleisam, torch.device("cpu"))(padded)
    assert seen == [(100, 120)]
    for name, values in result.maps.items():
        np.testing.assert_allclose(values, expected[name][0, :100, :120], atol=1e-6)
    np.testing.assert_array_equal(result.labels > 0, expected["foreground"][0, :100, :120] > 0.5)


def test_model_predictor_matches_whole_image_processing(image: np.ndarray) -> None:
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
    # Post-processing overlaps the network in up to `postprocess_workers` threads (its time summed).
    assert result.seconds >= result.network_seconds
    assert result.seconds * max(predictor.postprocess_workers, 1) >= result.postprocess_seconds
    np.testing.assert_array_equal(predictor(image), result.labels)
    serial = Predictor.from_model(darkness_model(), postprocess=distance_watershed, tile=256, overlap=64,
                                  batch_size=3, postprocess_workers=0).predict(image)
    assert serial.seconds >= serial.network_seconds + serial.postprocess_seconds
    np.testing.assert_array_equal(serial.labels, result.labels)


def test_small_image_and_batch_sizes_agree(image: np.ndarray) -> None:
    small = image[:200, :300]
    one = Predictor.from_model(darkness_model(), postprocess=distance_watershed, tile=128, batch_size=1)
    four = Predictor.from_model(darkness_model(), postprocess=distance_watershed, tile=128, batch_size=4)
    np.testing.assert_array_equal(one(small), four(small))
    assert one(small).max() > 10


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(NucleisamError, match="batch_size=0"):
        Predictor(label_fn=distance_watershed, batch_size=0)
    with pytest.raises(NucleisamError, match="overlap="):
        Predictor(label_fn=distance_watershed, tile=64, overlap=80)
    with pytest.raises(NucleisamError, match="device 'quantum'"):
        Predictor.from_model(darkness_model(), postprocess=distance_watershed, device="quantum")


def test_from_adapter_applies_the_recorded_postprocessing(nucleisam: NucleiSam, tmp_path) -> None:
    adapter = save_adapter(nucleisam, tmp_path / "a.safetensors",
                           extra_metadata={"postprocess": {"foreground_threshold": 0.45, "min_area": 3}})
    predictor = Predictor.from_adapter(adapter, tile=256, overlap=32)
    small = synthetic_nuclei(200, 240, seed=8)[0]  # one tile: stitching changes nothing
    result = predictor.predict(small, return_maps=True)
    expected = instances_from_maps(result.maps, PostprocessConfig(foreground_threshold=0.45, min_area=3))
    np.testing.assert_array_equal(result.labels > 0, expected > 0)
    assert result.n_nuclei == len(np.unique(expected)) - 1
    # The adapter reloads the same network.
    direct = Predictor.from_model(nucleisam, tile=256).predict(small, return_maps=True)
    np.testing.assert_allclose(result.maps["foreground"], direct.maps["foreground"], atol=1e-5)


def test_predictors_report_the_resolution_they_expect(nucleisam: NucleiSam, tmp_path) -> None:
    adapter = save_adapter(nucleisam, tmp_path / "half.safetensors", train_mpp=0.5)
    assert Predictor.from_adapter(adapter, tile=256, overlap=32).mpp == 0.5
    assert Predictor.from_model(nucleisam, tile=256).mpp == NUINSSEG_MPP
    assert Predictor.classical().mpp == CLASSICAL_MPP == NUINSSEG_MPP
    assert Predictor(label_fn=distance_watershed).mpp is None


def test_adapter_with_unknown_postprocessing_parameters_is_refused(nucleisam: NucleiSam, tmp_path) -> None:
    adapter = save_adapter(nucleisam, tmp_path / "b.safetensors",
                           extra_metadata={"postprocess": {"magic": 1}})
    with pytest.raises(NucleisamError, match=r"b\.safetensors.*magic"):
        Predictor.from_adapter(adapter)


def test_classical_predictor_equals_the_baseline_on_a_single_tile(sample_root) -> None:
    image = read_rgb(sample_root / "human spleen" / "tissue images" / "human_spleen_13.png")
    np.testing.assert_array_equal(Predictor.classical()(image), classical_instances(image))
    assert Predictor.classical().predict(image).network_seconds == 0.0
