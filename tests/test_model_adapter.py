"""Adapter files: round trips give identical outputs, base checkpoint identity is enforced."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from malformed import JUNK, malformed
from nucleisam.config import ModelConfig, PostprocessConfig, to_dict
from nucleisam.data import NUINSSEG_MPP
from nucleisam.errors import NucleisamError
from nucleisam.model import (
    adapter_model_config,
    adapter_postprocess,
    adapter_train_mpp,
    build_model,
    load_adapter,
    read_adapter_metadata,
    save_adapter,
)
from nucleisam.model.adapter import METADATA_KEY
from nucleisam.model.checkpoint import file_sha256
from nucleisam.model.lora import lora_layers
from nucleisam.model.mobilesam import build_mobilesam
from nucleisam.model.network import assemble_model

pytestmark = pytest.mark.usefixtures("torch_one_thread")

POSTPROCESS = {"threshold": 0.42, "min_area": 12, "seed_distance": 0.35}
#: The ``model`` entries adapters have carried since the first release, key for key (and in order):
#: adapters saved by any earlier nucleisam must keep loading.
RELEASED_LORA_INSTANCE = {
    "mode": "lora",
    "head": "instance",
    "input_size": 256,
    "lora": {"rank": 4, "alpha": 4.0, "dropout": 0.0, "targets": ["qkv", "proj", "fc1", "fc2"],
             "blocks": None},
    "head_widths": [128, 96, 64, 32, 8],
}
RELEASED_DECODER_SAM = {
    "mode": "decoder", "head": "sam", "input_size": 256, "lora": None, "head_widths": None
}


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
    assert list(metadata["model"].items()) == list(RELEASED_LORA_INSTANCE.items())
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
    assert list(metadata["model"].items()) == list(RELEASED_DECODER_SAM.items())
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


def test_training_resolution_is_recorded_and_defaults_for_older_adapters(tmp_path) -> None:
    config = ModelConfig(mode="decoder", head="sam", input_size=256, weights="none")
    model = assemble_model(config, state_dict=None, base_checkpoint_sha256="random").eval()
    default = save_adapter(model, tmp_path / "default.safetensors")
    assert read_adapter_metadata(default)["train_mpp"] == NUINSSEG_MPP == 0.25
    half = save_adapter(model, tmp_path / "half.safetensors", train_mpp=0.5)
    assert adapter_train_mpp(read_adapter_metadata(half)) == 0.5
    # An adapter written before train_mpp existed (all were trained on NuInsSeg) reads as NuInsSeg's.
    with safe_open(str(half), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = json.loads(handle.metadata()["nucleisam"])
    del metadata["train_mpp"]
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={"nucleisam": json.dumps(metadata)})
    old = read_adapter_metadata(tmp_path / "old.safetensors")
    assert "train_mpp" not in old and adapter_train_mpp(old) == NUINSSEG_MPP
    with pytest.raises(ValueError, match="train_mpp"):
        save_adapter(model, tmp_path / "bad.safetensors", train_mpp=0.0)
    with pytest.raises(ValueError, match="reserved"):
        save_adapter(model, tmp_path / "bad.safetensors", extra_metadata={"train_mpp": 0.5})
    assert not (tmp_path / "bad.safetensors").exists()


@pytest.fixture(scope="module")
def random_lora_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter of a random-base LoRA model with the instance head (input 256), built once."""
    config = ModelConfig(mode="lora", head="instance", input_size=256, weights="none")
    model = assemble_model(config, state_dict=None, base_checkpoint_sha256="random")
    return save_adapter(model, tmp_path_factory.mktemp("adapter") / "lora.safetensors")


def rewrite_metadata(path: Path, metadata: object) -> None:
    """Replace an adapter's JSON metadata, keeping its tensors (a damaged or hand-edited file)."""
    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    save_file(tensors or {"x": torch.zeros(1)}, str(path), metadata={METADATA_KEY: json.dumps(metadata)})


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"model": {**RELEASED_LORA_INSTANCE, "lora": {"rank": 0}}}, "'model.lora.rank' must be an integer"),
        ({"model": {**RELEASED_LORA_INSTANCE, "lora": {"rank": "4"}}}, "'model.lora.rank': got '4'"),
        ({"model": {**RELEASED_LORA_INSTANCE, "input_size": 1000}}, "input size 1000 is not valid"),
        ({"model": {**RELEASED_LORA_INSTANCE, "mode": None}}, "'model.mode': got None"),
        ({"model": {**RELEASED_LORA_INSTANCE, "heads": "sam"}}, "unknown configuration key 'model.heads'"),
        ({"model": [1, 2]}, "metadata key 'model' must be a mapping"),
        ({"model": None}, "metadata key 'model' must be a mapping"),
        ({"postprocess": {"min_area": -1}}, "'postprocess.min_area' must be a whole number"),
        ({"postprocess": {"split_depth": float("nan")}}, "'postprocess.split_depth': got nan"),
        ({"postprocess": "strict"}, "section 'postprocess' must be a mapping"),
        ({"base_checkpoint_sha256": 7}, "'base_checkpoint_sha256' must be a string"),
        ({"format_version": "1"}, "v'1'; this nucleisam"),
    ],
)
def test_bad_metadata_names_the_file_and_the_key(
    random_lora_adapter: Path, tmp_path: Path, change: dict, fragment: str
) -> None:
    path = tmp_path / "edited.safetensors"
    shutil.copy(random_lora_adapter, path)
    rewrite_metadata(path, {**read_adapter_metadata(path), **change})
    with pytest.raises(NucleisamError) as info:
        metadata = read_adapter_metadata(path)
        adapter_model_config(metadata, path)
        adapter_postprocess(metadata, path)
    assert str(path) in str(info.value) and fragment in str(info.value)
    if "postprocess" not in change:  # loading checks the model entry before building anything
        with pytest.raises(NucleisamError, match=re.escape(str(path))):
            load_adapter(path)


def test_metadata_sections_read_back_as_saved(random_lora_adapter: Path, tmp_path: Path) -> None:
    path = tmp_path / "tuned.safetensors"
    shutil.copy(random_lora_adapter, path)
    tuned = PostprocessConfig(foreground_threshold=0.45, min_area=3)
    rewrite_metadata(path, {**read_adapter_metadata(path), "postprocess": to_dict(tuned)})
    metadata = read_adapter_metadata(path)
    config = ModelConfig(mode="lora", head="instance", input_size=256, weights="none")
    assert adapter_model_config(metadata, path, weights="none") == config
    assert adapter_postprocess(metadata, path) == tuned
    assert adapter_postprocess({**metadata, "postprocess": None}, path) == PostprocessConfig()


VALID_METADATA = {
    "format": "nucleisam-adapter",
    "format_version": 1,
    "nucleisam_version": "0.1.0",
    "base_checkpoint_sha256": "random",
    "contents": "all",
    "model": RELEASED_LORA_INSTANCE,
    "postprocess": to_dict(PostprocessConfig()),
}


@settings(max_examples=150, deadline=None)
@given(st.one_of(malformed(VALID_METADATA), JUNK))
def test_malformed_adapter_metadata_is_a_nucleisam_error_naming_the_file(tmp_path_factory, metadata) -> None:
    path = tmp_path_factory.getbasetemp() / "malformed.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={METADATA_KEY: json.dumps(metadata)})
    try:
        read = read_adapter_metadata(path)
        model, postprocess = adapter_model_config(read, path), adapter_postprocess(read, path)
    except NucleisamError as exc:
        assert str(path) in str(exc)
    else:  # what is accepted describes a network and parameters that survive saving
        assert isinstance(model, ModelConfig) and isinstance(postprocess, PostprocessConfig)
        assert adapter_postprocess({"postprocess": to_dict(postprocess)}, path) == postprocess
