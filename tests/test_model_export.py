"""Exported ONNX and TorchScript files compute the PyTorch model's maps and carry its metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nucleisam import __version__
from nucleisam.config import ModelConfig
from nucleisam.data import read_rgb
from nucleisam.errors import NucleisamError
from nucleisam.model import NucleiSam, save_adapter
from nucleisam.model.export import export_adapter, read_export_metadata
from nucleisam.model.inference import map_batch
from nucleisam.model.network import assemble_model
from nucleisam.model.onnx_runtime import OnnxMapFn

pytestmark = [pytest.mark.usefixtures("torch_one_thread"), pytest.mark.slow]

POSTPROCESS = {"foreground_threshold": 0.45, "min_area": 12}


@pytest.fixture(scope="module")
def model() -> NucleiSam:
    """The real network (instance head, input 256), random weights and a non-zero LoRA update."""
    torch.manual_seed(5)
    model = assemble_model(ModelConfig(input_size=256, weights="none"), state_dict=None,
                           base_checkpoint_sha256="random")
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.endswith("lora_B"):
                tensor.normal_(0.0, 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def exported(model: NucleiSam, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("export")
    adapter = save_adapter(model, folder / "adapter.safetensors",
                           extra_metadata={"postprocess": POSTPROCESS}, train_mpp=0.5)
    return {fmt: export_adapter(adapter, folder / f"model.{ext}", fmt)
            for fmt, ext in (("onnx", "onnx"), ("torchscript", "pt"))}


@pytest.fixture(scope="module")
def sample_tiles(sample_root) -> np.ndarray:
    paths = sorted((sample_root / "human spleen" / "tissue images").glob("*.png"))[:3]
    return np.stack([read_rgb(path)[256:, :256] for path in paths])


def test_onnx_maps_match_pytorch(exported, model: NucleiSam, sample_tiles: np.ndarray) -> None:
    expected = map_batch(model, sample_tiles, device=torch.device("cpu"), precision="fp32")
    run = OnnxMapFn(exported["onnx"])
    for tiles in (sample_tiles, sample_tiles[1:2]):  # batch 3 and 1, exported with batch 2
        got = run(tiles)
        assert set(got) == set(expected)
        for name, values in got.items():
            np.testing.assert_allclose(values, expected[name][: len(tiles)] if len(tiles) == 3
                                       else expected[name][1:2], atol=1e-4, err_msg=name)
    assert expected["foreground"].std() > 1e-3
    with pytest.raises(NucleisamError, match="takes 256×256 tiles, got 128×128; use --tile 256"):
        run(sample_tiles[:, :128, :128])


# Loading with torch.jit.load, as QuPath or a user would: torch >= 2.10 warns that torch.jit is deprecated.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_maps_match_pytorch_for_uint8_and_float(exported, model: NucleiSam,
                                                           sample_tiles: np.ndarray) -> None:
    expected = map_batch(model, sample_tiles, device=torch.device("cpu"), precision="fp32")
    scripted = torch.jit.load(str(exported["torchscript"]))
    images = torch.from_numpy(sample_tiles.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        for batch in (images, images[:1].float()):
            outputs = scripted(batch)
            assert len(outputs) == 3
            for output, name in zip(outputs, ("foreground", "center_distance", "boundary_distance"),
                                    strict=True):
                assert output.shape == (len(batch), 1, 256, 256)
                np.testing.assert_allclose(output[:, 0].numpy(), expected[name][: len(batch)], atol=1e-4)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_metadata_carries_postprocessing_resolution_and_input(exported, fmt: str) -> None:
    metadata = read_export_metadata(exported[fmt])
    assert metadata["postprocess"]["foreground_threshold"] == 0.45
    assert metadata["postprocess"]["min_area"] == 12
    assert metadata["postprocess"]["center_threshold"] == 0.3  # defaults fill what was not recorded
    assert metadata["train_mpp"] == 0.5
    assert metadata["input_size"] == 256 and metadata["input"]["shape"] == ["batch", 3, 256, 256]
    assert metadata["outputs"] == ["foreground", "center_distance", "boundary_distance"]
    assert metadata["nucleisam_version"] == __version__ and metadata["file_format"] == fmt
    assert metadata["adapter"]["file"] == "adapter.safetensors" and len(metadata["adapter"]["sha256"]) == 64


def test_files_that_are_not_exports_are_refused(tmp_path: Path, exported) -> None:
    with pytest.raises(NucleisamError, match="does not exist"):
        read_export_metadata(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(NucleisamError, match=r"junk\.onnx"):
        OnnxMapFn(junk)
    with pytest.raises(NucleisamError, match=r"junk\.onnx"):
        read_export_metadata(junk)
