"""NucleiSam: modes and exact parameter counts, heads, native-size outputs, training behaviour.

Random weights (no network here); input_size 256 keeps every forward pass small on 2 CPU cores. The
behaviour tested does not depend on the size: the same modules run at 1024.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from nucleisam.config import LoraConfig, ModelConfig
from nucleisam.model import NucleiSam, build_model
from nucleisam.model.heads import InstanceHead
from nucleisam.model.lora import LoRALinear, lora_layers
from nucleisam.model.mobilesam import (
    EncoderFeatures,
    build_mobilesam,
    encode,
    prompt_free_mask_logits,
    resize_and_pad,
    resized_shape,
    unpad_to_native,
)
from nucleisam.model.network import assemble_model

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def random_model(**kwargs) -> NucleiSam:
    kwargs.setdefault("input_size", 256)
    config = ModelConfig(weights="none", **kwargs)
    return assemble_model(config, state_dict=None, base_checkpoint_sha256="random")


def tiles(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """H&E-like RGB on the 0–255 scale: pinkish background with darker purple blobs."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.empty(batch, 3, height, width)
    image[:, 0], image[:, 1], image[:, 2] = 220.0, 170.0, 200.0
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    for b in range(batch):
        for _ in range(12):
            cy, cx = (torch.rand(2, generator=generator) * torch.tensor([height, width])).tolist()
            radius = 6 + 6 * torch.rand(1, generator=generator).item()
            blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2
            image[b, :, blob] = torch.tensor([[110.0], [60.0], [150.0]])
    return (image + 8 * torch.randn(image.shape, generator=generator)).clamp(0, 255)


@pytest.fixture(scope="module")
def sam_model() -> NucleiSam:
    torch.manual_seed(0)
    return random_model(head="sam", mode="lora").eval()


@pytest.fixture(scope="module")
def instance_model() -> NucleiSam:
    torch.manual_seed(0)
    return random_model(head="instance", mode="lora").eval()


def table(model: NucleiSam) -> dict[str, dict]:
    return {row["part"]: row for row in model.parameter_table()}


# --- parameter counts (DESIGN.md §2) -------------------------------------------------------------


def test_seed_mode_reproduces_the_notebook_counts() -> None:
    rows = table(random_model(mode="seed"))
    assert rows["total"]["parameters"] == 10_254_156
    assert rows["total"]["trainable"] == 4_182_404
    assert rows["total"]["trainable_percent"] == 40.7874
    assert rows["lora"]["parameters"] == 124_064
    assert rows["mask_decoder"]["trainable"] == 4_058_340
    assert rows["image_encoder classifier (norm_head, head)"]["parameters"] == 321_640


def test_plain_mobilesam_counts_and_official_key_set() -> None:
    base = build_mobilesam(256)
    assert sum(p.numel() for p in base.parameters()) == 10_130_092
    assert sum(p.numel() for p in base.image_encoder.parameters()) == 6_065_532
    assert sum(p.numel() for p in base.prompt_encoder.parameters()) == 6_220
    assert sum(p.numel() for p in base.mask_decoder.parameters()) == 4_058_340
    # The state_dict does not depend on the input size: the 1024 checkpoint loads into a 256/512 model.
    small = {k: v.shape for k, v in base.state_dict().items()}
    large = {k: v.shape for k, v in build_mobilesam(1024).state_dict().items()}
    assert len(small) == 439 and small == large


def test_lora_mode_trains_adapters_and_head_only(instance_model) -> None:
    rows = table(instance_model)
    assert rows["lora"]["trainable"] == 118_784
    assert rows["image_encoder"]["trainable"] == 0
    assert rows["prompt_encoder"]["trainable"] == 0 and rows["mask_decoder"]["trainable"] == 0
    head = rows["instance_head"]["parameters"]
    assert head <= 2_000_000 and rows["instance_head"]["trainable"] == head
    assert rows["total"]["trainable"] == 118_784 + head
    assert len(instance_model.lora_targets) == 40


def test_decoder_and_full_modes() -> None:
    # Never run by a prompt-free single-mask call: the IoU head MLP(256, 256, 4, depth 3) and three
    # hypernetwork MLPs(256, 256, 32, depth 3).
    unused = (2 * 65_792 + 1_028) + 3 * (2 * 65_792 + 8_224)
    decoder = table(random_model(mode="decoder", head="sam"))
    assert "lora" not in decoder
    assert decoder["mask_decoder"]["parameters"] == 4_058_340
    assert decoder["total"]["trainable"] == decoder["mask_decoder"]["trainable"] == 4_058_340 - unused
    full = table(random_model(mode="full", head="sam"))
    # Everything that runs, except the frozen prompt encoder; the ImageNet classifier never runs.
    assert full["total"]["trainable"] == 10_130_092 - 321_640 - 6_220 - unused


def test_random_weights_warn_loudly(caplog) -> None:
    with pytest.warns(UserWarning, match="RANDOM weights"):
        model = build_model(ModelConfig(weights="none", input_size=256, head="sam"))
    assert model.base_checkpoint_sha256 == "random"
    assert any("RANDOM weights" in record.getMessage() for record in caplog.records)


# --- encoder and heads ---------------------------------------------------------------------------


def test_stagewise_encoder_equals_tinyvit_forward(sam_model) -> None:
    images = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        features = encode(sam_model.image_encoder, images)
        reference = sam_model.image_encoder(images)
    assert features.stride4.shape == (2, 64, 64, 64)
    assert features.stride8.shape == (2, 128, 32, 32)
    torch.testing.assert_close(features.embedding, reference, rtol=0, atol=0)


def test_prompt_free_decoder_equals_kornia_decoder_per_image(sam_model) -> None:
    torch.manual_seed(4)
    embedding = torch.randn(3, 256, 16, 16)
    with torch.no_grad():
        batched = prompt_free_mask_logits(sam_model.prompt_encoder, sam_model.mask_decoder, embedding)
        for i in range(3):
            sparse, dense = sam_model.prompt_encoder(points=None, boxes=None, masks=None)
            assert sparse.shape == (1, 0, 256)
            single, _ = sam_model.mask_decoder(
                image_embeddings=embedding[i : i + 1],
                image_pe=sam_model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            torch.testing.assert_close(batched[i : i + 1], single, rtol=1e-5, atol=1e-5)
    assert batched.shape == (3, 1, 64, 64)


def test_sam_head_batch_of_four_equals_four_single_calls(sam_model) -> None:
    images = tiles(4, 256, 256, seed=5)
    with torch.no_grad():
        batched = sam_model(images)["foreground"]
        singles = torch.cat([sam_model(images[i : i + 1])["foreground"] for i in range(4)])
    assert batched.shape == (4, 1, 256, 256)
    assert batched.std() > 0
    torch.testing.assert_close(batched, singles, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("height, width", [(512, 512), (1000, 800)])
def test_both_heads_return_native_size_maps(sam_model, instance_model, height, width) -> None:
    images = tiles(1, height, width, seed=6)
    with torch.no_grad():
        sam_maps = sam_model(images)
        instance_maps = instance_model(images)
    assert set(sam_maps) == {"foreground"}
    assert sam_maps["foreground"].shape == (1, 1, height, width)
    assert set(instance_maps) == {"foreground", "center_distance", "boundary_distance"}
    for name, value in instance_maps.items():
        assert value.shape == (1, 1, height, width), name
        assert torch.isfinite(value).all()
    for name in ("center_distance", "boundary_distance"):
        assert 0.0 <= instance_maps[name].min() and instance_maps[name].max() <= 1.0


def test_native_input_size_runs_a_tile_without_resizing() -> None:
    torch.manual_seed(0)
    model = random_model(head="instance", input_size=512).eval()
    with torch.no_grad():
        maps = model(tiles(1, 512, 512, seed=7).to(torch.uint8))  # uint8 is accepted too
    assert maps["foreground"].shape == (1, 1, 512, 512)


def test_instance_head_with_other_widths() -> None:
    head = InstanceHead((64, 48, 36, 20, 8))
    size = 128
    features = EncoderFeatures(
        stride4=torch.randn(2, 64, size // 4, size // 4),
        stride8=torch.randn(2, 128, size // 8, size // 8),
        embedding=torch.randn(2, 256, size // 16, size // 16),
    )
    assert head(torch.randn(2, 3, size, size), features).shape == (2, 3, size, size)
    assert sum(p.numel() for p in head.parameters()) < sum(p.numel() for p in InstanceHead().parameters())


def test_default_input_1024_runs_a_512_tile_at_sam_scale() -> None:
    torch.manual_seed(0)
    model = random_model(head="sam", input_size=1024).eval()
    assert model.image_encoder.img_size == 1024 and model.prompt_encoder.image_embedding_size == (64, 64)
    with torch.no_grad():
        maps = model(tiles(1, 512, 512, seed=15))
    assert maps["foreground"].shape == (1, 1, 512, 512)


def test_resize_pad_geometry_follows_sam() -> None:
    assert resized_shape(1000, 800, 1024) == (1024, 819)  # 800 * 1.024 = 819.2
    assert resized_shape(512, 512, 1024) == (1024, 1024)
    assert resized_shape(1000, 800, 512) == (512, 410)  # 409.6 rounds half up
    images = torch.ones(1, 1, 1000, 800)
    padded, hw = resize_and_pad(images, 512)
    assert padded.shape == (1, 1, 512, 512) and hw == (512, 410)
    assert padded[..., :, 410:].abs().max() == 0 and padded[..., :512, :410].min() > 0.99
    # A map that is 1 where the image is and 0 on the padding maps back to all ones at native size.
    restored = unpad_to_native(padded, input_size=512, resized_hw=hw, native_hw=(1000, 800))
    assert restored.shape == (1, 1, 1000, 800)
    torch.testing.assert_close(restored, torch.ones_like(restored))


# --- training behaviour (the seed's faults 1 and 2) -------------------------------------------------


def loss_of(maps: dict[str, torch.Tensor]) -> torch.Tensor:
    target = torch.zeros_like(maps["foreground"])
    target[..., 64:128, 64:128] = 1.0
    loss = nn.functional.binary_cross_entropy_with_logits(maps["foreground"], target)
    for name in ("center_distance", "boundary_distance"):
        if name in maps:
            loss = loss + (maps[name] - target * 0.5).pow(2).mean()
    return loss


@pytest.mark.parametrize("head", ["instance", "sam"])
def test_lora_gets_gradients_and_frozen_parameters_none(head) -> None:
    torch.manual_seed(8)
    model = random_model(head=head, mode="lora").train()
    trainable = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
    optimiser = torch.optim.SGD(trainable.values(), lr=0.5)
    images = tiles(2, 256, 256, seed=9)
    loss_of(model(images)).backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None, name
    # B starts at zero, so only B gets a gradient at the first step (dL/dA is proportional to B) ...
    for name, layer in lora_layers(model.image_encoder):
        assert layer.lora_B.grad.abs().sum() > 0, name
    optimiser.step()
    optimiser.zero_grad()
    loss_of(model(images)).backward()
    # ... and after one update every adapter matrix, A included, gets a non-zero gradient.
    for name, layer in lora_layers(model.image_encoder):
        assert layer.lora_A.grad.abs().sum() > 0, name
        assert layer.lora_B.grad.abs().sum() > 0, name


def test_training_step_leaves_batchnorm_buffers_unchanged() -> None:
    torch.manual_seed(10)
    model = random_model(head="instance", mode="lora")
    model.train()
    batchnorms = [m for m in model.image_encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(batchnorms) == 27
    assert all(not m.training for m in batchnorms)
    before = {n: b.clone() for n, b in model.image_encoder.named_buffers()}
    optimiser = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    for seed in (11, 12):
        loss_of(model(tiles(2, 256, 256, seed=seed))).backward()
        optimiser.step()
        optimiser.zero_grad()
    after = dict(model.image_encoder.named_buffers())
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name


def test_train_mode_follows_trainability() -> None:
    model = random_model(head="instance", mode="lora", lora=LoraConfig(rank=4, alpha=4.0, dropout=0.1))
    model.train()
    assert model.training and model.instance_head.training
    assert not model.prompt_encoder.training and not model.mask_decoder.training
    assert not model.image_encoder.patch_embed.training  # stage 0 has no LoRA: fully frozen
    for _, layer in lora_layers(model.image_encoder):
        assert layer.training and layer.dropout.training  # LoRA dropout is active while training
    model.eval()
    assert not any(m.training for m in model.modules())
    full = random_model(head="sam", mode="full").train()
    assert all(m.training for m in full.image_encoder.layers.modules())


def test_merge_for_inference_keeps_outputs() -> None:
    torch.manual_seed(13)
    model = random_model(head="instance", mode="lora").eval()
    with torch.no_grad():
        for _, layer in lora_layers(model.image_encoder):
            layer.lora_B.normal_(std=0.05)
    images = tiles(1, 300, 260, seed=14)
    with torch.no_grad():
        unmerged = model(images)
        model.merge_lora()
        assert model.lora_merged
        merged = model(images)
        model.unmerge_lora()
    assert not model.lora_merged
    for name in unmerged:
        torch.testing.assert_close(merged[name], unmerged[name], rtol=0, atol=1e-5)
    wrapped = [model.image_encoder.get_submodule(name) for name in model.lora_targets]
    assert all(isinstance(module, LoRALinear) for module in wrapped)


@pytest.mark.parametrize("head", ["instance", "sam"])
def test_encoder_sees_sam_normalised_resized_zero_padded_input(head: str) -> None:
    """The seed notebook fed /255 images; SAM expects (x - mean) / std on the 0–255 scale, the longest
    side resized to the input size and zero padding (the mean colour) at the bottom and right."""
    model = random_model(head=head).eval()
    seen: list[torch.Tensor] = []
    model.image_encoder.patch_embed.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    with torch.no_grad():
        model((mean + std).expand(1, 3, 100, 60).clone())  # one standard deviation above the mean
    (encoder_input,) = seen
    assert encoder_input.shape == (1, 3, 256, 256)
    resized_width = round(60 * 256 / 100)  # longest side 100 -> 256, aspect ratio kept
    torch.testing.assert_close(encoder_input[..., :resized_width], torch.ones(1, 3, 256, resized_width))
    assert encoder_input[..., resized_width:].abs().max() == 0


# --- device placement ----------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["instance", "sam"])
def test_forward_makes_no_tensor_on_a_fixed_device(head: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Everything a forward pass creates lives on the input's device. A tensor made on the CPU inside
    ``forward`` would only fail on a GPU, which no test machine has; on torch's ``meta`` device
    (shapes without data) the same mistake fails here. Training copy and inference copy alike."""
    from nucleisam.model.prepared import prepare_for_inference

    real_autocast = torch.autocast

    def autocast(device_type: str, *args, **kwargs):  # torch has no autocast state for "meta";
        if device_type == "meta":  # kornia's positional encoding asks for it (disabled) anyway
            return contextlib.nullcontext()
        return real_autocast(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast)
    model = random_model(head=head, mode="lora").to("meta")
    batch = torch.empty(2, 3, 200, 256, device="meta")  # not square: the padding path runs too
    for copy in (model.train(), prepare_for_inference(model.eval())):
        outputs = copy(batch)
        assert outputs and all(value.device.type == "meta" and value.shape[-2:] == (200, 256)
                               for value in outputs.values())
