"""LoRA: initialisation, which layers are wrapped, exact parameter counts, merge/unmerge."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nucleisam.config import LoraConfig
from nucleisam.errors import NucleisamError
from nucleisam.model.lora import (
    LoRALinear,
    apply_lora,
    encoder_block_index,
    lora_layers,
    merge_lora,
    unmerge_lora,
)
from nucleisam.model.mobilesam import build_mobilesam

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def encoder_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_mobilesam(256).image_encoder.state_dict()


def fresh_encoder(state: dict[str, torch.Tensor]) -> nn.Module:
    encoder = build_mobilesam(256).image_encoder
    encoder.load_state_dict(state)
    return encoder.eval()


def lora_count(encoder: nn.Module) -> int:
    return sum(layer.lora_A.numel() + layer.lora_B.numel() for _, layer in lora_layers(encoder))


def test_wrapped_layer_starts_as_the_pretrained_layer() -> None:
    torch.manual_seed(1)
    linear = nn.Linear(12, 20)
    reference = linear(torch.ones(3, 12)).detach()
    wrapped = LoRALinear(linear, rank=4, alpha=8.0)
    assert torch.count_nonzero(wrapped.lora_B) == 0  # B = 0: the update starts at exactly zero
    assert torch.count_nonzero(wrapped.lora_A) == wrapped.lora_A.numel()
    bound = 1.0 / 12**0.5  # Kaiming-uniform with a=sqrt(5) on fan_in 12, as nn.Linear
    assert wrapped.lora_A.abs().max() <= bound
    assert wrapped.weight is linear.weight and not wrapped.weight.requires_grad
    assert wrapped.scale == 2.0
    torch.testing.assert_close(wrapped(torch.ones(3, 12)), reference, rtol=0, atol=0)


def test_update_is_scale_times_b_a() -> None:
    torch.manual_seed(2)
    wrapped = LoRALinear(nn.Linear(6, 5), rank=2, alpha=1.0)
    with torch.no_grad():
        wrapped.lora_B.normal_()
    x = torch.randn(4, 6)
    expected = x @ (wrapped.weight + 0.5 * wrapped.lora_B @ wrapped.lora_A).T + wrapped.bias
    torch.testing.assert_close(wrapped(x), expected, rtol=1e-6, atol=1e-6)


def test_default_targets_are_the_40_block_layers_with_exact_count(encoder_state) -> None:
    encoder = fresh_encoder(encoder_state)
    names = apply_lora(encoder, LoraConfig())
    assert len(names) == 40
    assert "head" not in names
    assert {n.rsplit(".", 1)[-1] for n in names} == {"qkv", "proj", "fc1", "fc2"}
    # r · (in + out) summed over the 40 layers (DESIGN.md §2).
    assert lora_count(encoder) == 118_784
    # Keys of the pretrained weights are unchanged; only lora_A/lora_B are added.
    keys = set(encoder.state_dict())
    assert set(encoder_state) <= keys
    assert {k for k in keys - set(encoder_state)} == {f"{n}.lora_{m}" for n in names for m in "AB"}


def test_seed_targets_add_the_classifier_head(encoder_state) -> None:
    encoder = fresh_encoder(encoder_state)
    names = apply_lora(encoder, LoraConfig(rank=4, alpha=1.0, targets=("qkv", "proj", "fc1", "fc2", "head")))
    assert len(names) == 41 and names[-1] == "head"
    assert lora_count(encoder) == 118_784 + 4 * (320 + 1000)


def test_late_lora_wraps_only_the_chosen_blocks(encoder_state) -> None:
    encoder = fresh_encoder(encoder_state)
    names = apply_lora(encoder, LoraConfig(blocks=(8, 9), targets=("qkv", "fc2")))
    assert names == [
        "layers.3.blocks.0.attn.qkv",
        "layers.3.blocks.0.mlp.fc2",
        "layers.3.blocks.1.attn.qkv",
        "layers.3.blocks.1.mlp.fc2",
    ]
    # qkv 320→960 and fc2 1280→320, rank 4, two blocks.
    assert lora_count(encoder) == 2 * 4 * ((320 + 960) + (1280 + 320))


def test_block_index_counts_attention_blocks_in_forward_order() -> None:
    assert encoder_block_index("layers.1.blocks.0.attn.qkv") == 0
    assert encoder_block_index("layers.1.blocks.1.mlp.fc1") == 1
    assert encoder_block_index("layers.2.blocks.0.attn.proj") == 2
    assert encoder_block_index("layers.2.blocks.5.mlp.fc2") == 7
    assert encoder_block_index("layers.3.blocks.1.attn.qkv") == 9
    assert encoder_block_index("layers.0.blocks.1.conv1") is None
    assert encoder_block_index("head") is None


def test_applying_twice_is_refused(encoder_state) -> None:
    encoder = fresh_encoder(encoder_state)
    apply_lora(encoder, LoraConfig())
    with pytest.raises(NucleisamError, match="already has LoRA"):
        apply_lora(encoder, LoraConfig())


def test_merged_equals_unmerged_and_unmerge_restores(encoder_state) -> None:
    torch.manual_seed(3)
    encoder = fresh_encoder(encoder_state)
    apply_lora(encoder, LoraConfig(rank=4, alpha=4.0))
    with torch.no_grad():
        for _, layer in lora_layers(encoder):
            layer.lora_B.normal_(std=0.05)  # a trained-looking, non-zero update
    weights_before = {n: layer.weight.clone() for n, layer in lora_layers(encoder)}
    images = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        unmerged = encoder(images)
        merge_lora(encoder)
        merged = encoder(images)
    assert all(layer.merged for _, layer in lora_layers(encoder))
    assert not torch.equal(unmerged, encoder.neck[0].weight.new_zeros(unmerged.shape))
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    unmerge_lora(encoder)
    for name, layer in lora_layers(encoder):
        torch.testing.assert_close(layer.weight, weights_before[name], rtol=0, atol=1e-6)
