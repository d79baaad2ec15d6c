"""The one model-to-maps path (validation, tuning, predict, slides) and its device/precision policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nucleisam.config import ModelConfig
from nucleisam.errors import NucleisamError
from nucleisam.model import NucleiSam
from nucleisam.model.inference import predict_maps, resolve_device, resolve_precision, tile_map_fn
from nucleisam.model.network import assemble_model
from nucleisam.predict.predictor import Predictor
from synthetic_nuclei import synthetic_nuclei
from train_helpers import TinyNucleiNet

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def nucleisam() -> NucleiSam:
    """The real network (instance head, input 256), randomly initialised: no weights needed."""
    torch.manual_seed(0)
    config = ModelConfig(mode="lora", head="instance", input_size=256, weights="none")
    return assemble_model(config, state_dict=None, base_checkpoint_sha256="random").eval()


def test_tile_maps_are_probabilities_and_distances_of_the_real_network(nucleisam: NucleiSam) -> None:
    tiles = synthetic_nuclei(128, 256, seed=6)[0].reshape(128, 2, 128, 3).transpose(1, 0, 2, 3).copy()
    maps = tile_map_fn(nucleisam, torch.device("cpu"))(tiles)
    assert set(maps) == {"foreground", "center_distance", "boundary_distance"}
    with torch.inference_mode():
        raw = nucleisam(torch.from_numpy(tiles.transpose(0, 3, 1, 2).copy()).float())
    np.testing.assert_allclose(maps["foreground"], torch.sigmoid(raw["foreground"])[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(maps["center_distance"], raw["center_distance"][:, 0].numpy(), atol=1e-6)
    for values in maps.values():
        assert values.shape == (2, 128, 128) and values.dtype == np.float32
    # A batch equals its tiles one at a time.
    single = tile_map_fn(nucleisam, torch.device("cpu"))(tiles[1:])
    np.testing.assert_allclose(single["boundary_distance"][0], maps["boundary_distance"][1], atol=1e-5)


def test_predict_maps_batches_by_size_and_keeps_order() -> None:
    torch.manual_seed(123)
    model = TinyNucleiNet(instance=True)
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, size=shape, dtype=np.uint8) for shape in [(20, 24, 3), (16, 16, 3), (20, 24, 3)]
    ]
    maps = predict_maps(model, images, device=torch.device("cpu"), batch_size=2)
    assert [m["foreground"].shape for m in maps] == [(20, 24), (16, 16), (20, 24)]
    assert set(maps[0]) == {"foreground", "center_distance", "boundary_distance"}
    with torch.no_grad():
        single = model.eval()(torch.from_numpy(images[2]).permute(2, 0, 1)[None].float())
    np.testing.assert_allclose(
        maps[2]["foreground"], torch.sigmoid(single["foreground"])[0, 0].numpy(), atol=1e-6
    )
    assert all(0.0 <= m["foreground"].min() and m["foreground"].max() <= 1.0 for m in maps)


def test_validation_maps_equal_the_maps_predict_post_processes(nucleisam: NucleiSam) -> None:
    """Post-processing is tuned on predict_maps' output and applied by the Predictor: on an image
    that is exactly one tile both must be the same numbers, at the same precision."""
    image = synthetic_nuclei(256, 256, seed=9)[0]
    validation = predict_maps(nucleisam, [image], device=torch.device("cpu"))[0]
    predicted = Predictor.from_model(nucleisam, postprocess=lambda maps, tile: (maps["foreground"] > 0.5)
                                     .astype(np.int32), device="cpu", tile=256, overlap=0)
    maps = predicted.predict(image, return_maps=True).maps
    assert maps is not None
    for name, values in validation.items():
        np.testing.assert_array_equal(maps[name], values)


def test_precision_policy_and_bf16_maps_stay_close(nucleisam: NucleiSam) -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(NucleisamError, match="precision 'fp16'"):
        resolve_precision("fp16", cpu)
    image = synthetic_nuclei(128, 128, seed=3)[0]
    fp32 = predict_maps(nucleisam, [image], device=cpu, precision="fp32")[0]
    bf16 = predict_maps(nucleisam, [image], device=cpu, precision="bf16")[0]
    for name in fp32:
        difference = np.abs(fp32[name] - bf16[name])
        assert bf16[name].dtype == np.float32
        assert 0.0 < difference.max() < 0.1, name  # bf16 really ran, and stays near fp32


def test_device_policy() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(NucleisamError, match="device 'quantum' is not a device name"):
        resolve_device("quantum")
    with pytest.raises(NucleisamError, match="device 'mps' is not supported"):
        resolve_device("mps")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        for name in ("cuda", "cuda:1"):
            with pytest.raises(NucleisamError, match="no CUDA GPU"):
                resolve_device(name)
