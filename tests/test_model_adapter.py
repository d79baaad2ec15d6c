"""Adapter files: round trips give identical outputs, base checkpoint identity is enforced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nucleisam.errors import NucleisamError
from nucleisam.model import ModelConfig, build_model, load_adapter, read_adapter_metadata, save_adapter
from nucleisam.model.checkpoint import file_sha256
from nucleisam.model.lora import lora_layers
from nucleisam.model.mobilesam import build_mobilesam
from nucleisam.model.network import assemble_model

pytestmark = pytest.mark.usefixtures("torch_one_thread")

POSTPROCESS = {"threshold": 0.42, "min_area": 12, "seed_distance": 0.35}


def built(head: str, checkpoint: Path):
    return build_model(ModelConfig(mode="lora", head=head, input_size=256, weights=str(checkpoint)))


def pretend_trained(model) -> None:
    """Move every trainable tensor away from its initial value, as training would."""
    generator = torch.Generator().manual_seed(32)
    with torch.no_grad():
        for parameter in model.trainable_parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))


def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(33)
    return torch.rand(2, 3, 200, 240, generator=generator) * 255


def test_lora_instance_adapter_round_trip_is_identical(synthetic_checkpoint, tmp_path) -> None:
    model = built("instance", synthetic_checkpoint)
    pretend_trained(model)
    model.eval()
    target = tmp_path / "run" / "adapter.safetensors"
    path = save_adapter(model, target, extra_metadata={"postprocess": POSTPROCESS})
    assert path.stat().st_size <= 10_000_000
    with safe_open(str(path), framework="pt") as handle:
        stored = set(handle.keys())
    assert stored == {n for n, p in model.named_parameters() if p.requires_grad}  # trainable tensors only

    loaded, metadata = load_adapter(path, checkpoint=synthetic_checkpoint)
    assert not loaded.training
    assert metadata["postprocess"] == POSTPROCESS
    assert metadata["base_checkpoint_sha256"] == file_sha256(synthetic_checkpoint)
    assert metadata["model"]["mode"] == "lora" and metadata["model"]["input_size"] == 256
    assert metadata["model"]["lora"]["rank"] == 4 and metadata["input"]["pixel_mean"][0] == 123.675
    assert loaded.config == model.config
    with torch.no_grad():
        expected, actual = model(images()), loaded(images())
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_random_base_adapter_holds_every_weight(tmp_path) -> None:
    torch.manual_seed(34)
    config = ModelConfig(mode="decoder", head="sam", input_size=256, weights="none")
    model = assemble_model(config, state_dict=None, base_checkpoint_sha256="random").eval()
    pretend_trained(model)
    path = save_adapter(model, tmp_path / "random.safetensors")
    metadata = read_adapter_metadata(path)
    assert metadata["base_checkpoint_sha256"] == "random" and metadata["contents"] == "all"
    loaded, _ = load_adapter(path)  # no checkpoint needed (and no network)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(model(images())["foreground"], loaded(images())["foreground"])


def test_merged_model_saves_the_unmerged_adapter(synthetic_checkpoint, tmp_path) -> None:
    model = built("sam", synthetic_checkpoint)
    pretend_trained(model)
    model.eval()
    with torch.no_grad():
        expected = model(images())["foreground"]
    model.merge_lora()
    path = save_adapter(model, tmp_path / "merged.safetensors")
    assert model.lora_merged  # merged again after saving
    loaded, _ = load_adapter(path, checkpoint=synthetic_checkpoint)
    assert not loaded.lora_merged
    with torch.no_grad():
        torch.testing.assert_close(loaded(images())["foreground"], expected, rtol=0, atol=1e-5)
    for name, layer in lora_layers(loaded.image_encoder):
        assert layer.lora_B.abs().sum() > 0, name


def test_base_checkpoint_mismatch_is_an_error_unless_allowed(synthetic_checkpoint, tmp_path) -> None:
    model = built("sam", synthetic_checkpoint)
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    other = tmp_path / "other.pt"
    torch.manual_seed(35)
    torch.save(build_mobilesam(256).state_dict(), other)
    with pytest.raises(NucleisamError, match=r"\(allow_checkpoint_mismatch\)") as info:
        load_adapter(path, checkpoint=other)
    assert file_sha256(synthetic_checkpoint) in str(info.value) and file_sha256(other) in str(info.value)
    with pytest.warns(UserWarning, match="mismatch is allowed"):
        loaded, _ = load_adapter(path, checkpoint=other, allow_checkpoint_mismatch=True)
    assert loaded.base_checkpoint_sha256 == file_sha256(other)


def test_files_that_are_not_adapters(tmp_path) -> None:
    with pytest.raises(NucleisamError, match="does not exist"):
        read_adapter_metadata(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(NucleisamError, match="cannot read adapter"):
        read_adapter_metadata(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(NucleisamError, match="not a nucleisam adapter"):
        read_adapter_metadata(plain)


def test_adapter_whose_tensors_do_not_fit_is_refused(tmp_path) -> None:
    torch.manual_seed(36)
    config = ModelConfig(mode="decoder", head="sam", input_size=256, weights="none")
    model = assemble_model(config, state_dict=None, base_checkpoint_sha256="random")
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    del tensors["mask_decoder.iou_token.weight"]
    save_file(tensors, str(path), metadata=header)
    with pytest.raises(NucleisamError, match=r"missing: mask_decoder\.iou_token\.weight"):
        load_adapter(path)


def test_extra_metadata_cannot_overwrite_reserved_keys(tmp_path) -> None:
    config = ModelConfig(mode="decoder", head="sam", input_size=256, weights="none")
    model = assemble_model(config, state_dict=None, base_checkpoint_sha256="random")
    with pytest.raises(ValueError, match="reserved"):
        save_adapter(model, tmp_path / "a.safetensors", extra_metadata={"model": {}})
    assert not (tmp_path / "a.safetensors").exists()
    path = save_adapter(model, tmp_path / "b.safetensors", extra_metadata={"training": {"epochs": 3}})
    assert json.loads(json.dumps(read_adapter_metadata(path)))["training"] == {"epochs": 3}
