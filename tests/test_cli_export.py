"""`nucleisam export` and `nucleisam predict --backend onnxruntime --model FILE.onnx` end to end."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from nucleisam.cli import main
from nucleisam.config import ModelConfig
from nucleisam.data import read_rgb
from nucleisam.model import build_model, save_adapter
from nucleisam.model.export import export_adapter
from slides_helpers import write_slide
from synthetic_nuclei import synthetic_nuclei
from test_predict_slides import same_partition, zarr_labels

pytestmark = [pytest.mark.usefixtures("torch_one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised adapter (input 256) whose recorded post-processing finds many
    'nuclei' in its random maps, so that the two backends have something to agree on."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(ModelConfig(input_size=256, weights="none"))
    folder = tmp_path_factory.mktemp("adapter")
    return save_adapter(model, folder / "adapter.safetensors",
                        extra_metadata={"postprocess": {"foreground_threshold": 0.45, "min_area": 5}})


def test_export_then_predict_with_onnxruntime_gives_the_pytorch_nuclei(
    adapter: Path, sample_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model.onnx"
    assert main(["export", "--adapter", str(adapter), "--format", "onnx", "--out", str(model)]) == 0
    stdout = capsys.readouterr().out
    assert f"wrote {model} (onnx" in stdout and "(batch, 3, 256, 256)" in stdout
    assert "training resolution 0.25 µm/px" in stdout  # NuInsSeg's, for adapters that record none
    # A real H&E crop of 300×380: several overlapping 256² tiles.
    image = read_rgb(sample_root / "human spleen" / "tissue images" / "human_spleen_25.png")[:300, :380]
    Image.fromarray(image).save(tmp_path / "crop.png")
    common = ["--out", str(tmp_path / "out"), "--formats", "tiff", "--overlap", "48", "--batch-size", "2"]
    assert main(["predict", str(tmp_path / "crop.png"), "--adapter", str(adapter), "--tile", "256",
                 "--device", "cpu", *common]) == 0
    torch_labels = tifffile.imread(tmp_path / "out" / "crop_labels.tif")
    assert main(["predict", str(tmp_path / "crop.png"), "--backend", "onnxruntime", "--model", str(model),
                 "--overwrite", *common]) == 0
    assert f"ONNX model {model}" in capsys.readouterr().out
    onnx_labels = tifffile.imread(tmp_path / "out" / "crop_labels.tif")
    assert onnx_labels.shape == (300, 380)
    assert len(np.unique(torch_labels)) > 20
    # Maps agree within 1e-6, so the same nuclei with the same ids; a pixel whose probability lies
    # within that of a threshold may flip, no more.
    assert len(np.unique(onnx_labels)) == len(np.unique(torch_labels))
    assert np.mean(onnx_labels == torch_labels) > 0.999


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "IMG", "--backend", "onnxruntime", "--adapter", "a.safetensors"],
         "give --model FILE.onnx"),
        (["predict", "IMG", "--model", "m.onnx"], "--model FILE.onnx runs with --backend onnxruntime"),
        (["predict", "IMG", "--backend", "onnxruntime", "--model", "MODEL", "--tile", "512"],
         "exported for 256×256 tiles; use --tile 256"),
        (["predict", "IMG", "--backend", "onnxruntime", "--model", "missing.onnx"], "does not exist"),
        (["export", "--adapter", "missing.safetensors", "--format", "onnx", "--out", "OUT/m.onnx"],
         "missing.safetensors does not exist"),
    ],
)
def test_bad_options_exit_2_with_one_line(argv: list[str], message: str, tmp_path: Path, adapter: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "x.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(image)
    model = tmp_path / "m.onnx"
    if "MODEL" in argv:
        assert main(["export", "--adapter", str(adapter), "--format", "onnx", "--out", str(model)]) == 0
    argv = [{"IMG": str(image), "MODEL": str(model), "OUT/m.onnx": str(tmp_path / "o" / "m.onnx")}.get(a, a)
            for a in argv]
    if argv[0] == "predict":
        argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "m.onnx").exists()


# Loading with torch.jit.load, as QuPath or a user would: torch >= 2.10 warns that torch.jit is deprecated.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_export_refuses_to_overwrite_and_writes_torchscript(adapter: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model.pt"
    out.write_text("mine")
    args = ["export", "--adapter", str(adapter), "--format", "torchscript", "--out", str(out)]
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err and out.read_text() == "mine"
    assert main([*args, "--overwrite"]) == 0
    assert torch.jit.load(str(out))(torch.zeros(1, 3, 256, 256))[0].shape == (1, 1, 256, 256)


def test_onnx_model_on_a_whole_slide_equals_it_on_the_same_image(adapter: Path, tmp_path: Path) -> None:
    """The slide engine runs an exported model too (method kind 'onnx', read at the recorded
    training resolution): the same nuclei as the in-memory path on the same pixels."""
    model = export_adapter(adapter, tmp_path / "model.onnx", "onnx")
    image, _ = synthetic_nuclei(256, 400, seed=3)
    Image.fromarray(image).save(tmp_path / "m.png")
    write_slide(tmp_path / "m.tif", image, mpp=0.25, factors=(1, 2))
    common = ["--backend", "onnxruntime", "--model", str(model), "--overlap", "32", "--batch-size", "2"]
    assert main(["predict", str(tmp_path / "m.png"), "--out", str(tmp_path / "mem"), *common]) == 0
    assert main(["predict", str(tmp_path / "m.tif"), "--out", str(tmp_path / "slide"), "--tissue", "none",
                 "--chunk-tiles", "1", "--formats", "zarr", *common]) == 0
    memory_labels = tifffile.imread(tmp_path / "mem" / "m_labels.tif").astype(np.int64)
    assert len(np.unique(memory_labels)) > 10
    assert same_partition(memory_labels, zarr_labels(tmp_path / "slide" / "m_labels.zarr").astype(np.int64))
