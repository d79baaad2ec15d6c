"""The inference copy (LoRA merged, BatchNorm folded, fused attention) computes the model's maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kornia.models.tiny_vit import Attention, ConvBN, TinyViTBlock

from nucleisam.config import ModelConfig
from nucleisam.data import read_rgb
from nucleisam.model import NucleiSam
from nucleisam.model.inference import map_batch, predict_maps
from nucleisam.model.lora import LoRALinear
from nucleisam.model.network import assemble_model
from nucleisam.model.prepared import prepare_for_inference

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def trained_looking(head: str) -> NucleiSam:
    """The real network at input 256 with non-zero LoRA updates and BatchNorm statistics, so that
    merging and folding change the weights (a fresh model's LoRA update is exactly zero)."""
    torch.manual_seed(1)
    model = assemble_model(ModelConfig(head=head, input_size=256, weights="none"), state_dict=None,
                           base_checkpoint_sha256="random")
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("lora_B"):
                tensor.normal_(0.0, 0.05)
            elif name.endswith("running_mean"):
                tensor.normal_(0.0, 0.2)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def sample_tiles(sample_root) -> np.ndarray:
    """Three 256² crops of bundled NuInsSeg tiles: real H&E."""
    paths = sorted((sample_root / "human spleen" / "tissue images").glob("*.png"))[:3]
    return np.stack([read_rgb(path)[128:384, 64:320] for path in paths])


@pytest.mark.parametrize("head", ["instance", "sam"])
def test_prepared_copy_gives_the_models_maps_and_leaves_the_model_alone(head: str, sample_tiles) -> None:
    model = trained_looking(head).train()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    prepared = prepare_for_inference(model)

    # The model is untouched: still training, LoRA unmerged, same weights.
    assert model.training and not model.lora_merged
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    kinds = {type(module) for module in prepared.modules()}
    assert not kinds & {LoRALinear, Attention, ConvBN, TinyViTBlock}
    assert not prepared.training and not any(p.requires_grad for p in prepared.parameters())

    cpu = torch.device("cpu")
    expected = map_batch(model.eval(), sample_tiles, device=cpu, precision="fp32")
    got = map_batch(prepared, sample_tiles, device=cpu, precision="fp32")
    assert set(got) == set(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(got[name], values, atol=1e-4, err_msg=name)
        assert values.std() > 1e-3, name  # the maps are not trivially constant
    one = map_batch(prepared, sample_tiles[2:], device=cpu, precision="fp32")
    np.testing.assert_allclose(one["foreground"][0], got["foreground"][2], atol=1e-5)


def test_merged_equals_unmerged(sample_tiles) -> None:
    """merge_lora folds the update into the weights; unmerge_lora restores them: same maps."""
    model = trained_looking("instance")
    cpu = torch.device("cpu")
    unmerged = map_batch(model, sample_tiles[:1], device=cpu)
    weight = model.image_encoder.layers[1].blocks[0].attn.qkv.weight.detach().clone()
    model.merge_lora()
    assert not torch.equal(model.image_encoder.layers[1].blocks[0].attn.qkv.weight, weight)
    merged = map_batch(model, sample_tiles[:1], device=cpu)
    model.unmerge_lora()
    torch.testing.assert_close(model.image_encoder.layers[1].blocks[0].attn.qkv.weight, weight)
    for name, values in unmerged.items():
        np.testing.assert_allclose(merged[name], values, atol=1e-4, err_msg=name)


def test_predict_maps_leaves_a_training_model_in_training_mode(sample_tiles) -> None:
    model = trained_looking("instance").train()
    maps = predict_maps(model, list(sample_tiles[:2]), device=torch.device("cpu"))
    assert model.training and not model.lora_merged
    assert maps[0]["foreground"].shape == (256, 256)
