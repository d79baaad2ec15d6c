"""`nucleisam predict` end to end on files, folders and globs: outputs, summaries, errors.

The classical method needs no weights; the adapter path uses a randomly initialised adapter saved
with recorded post-processing parameters (no base checkpoint needed).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import save_random_adapter
from nucleisam.classical import classical_instances
from nucleisam.cli import main
from nucleisam.data import read_label_map, read_rgb
from synthetic_nuclei import synthetic_nuclei


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for seed, (name, shape) in enumerate({"tile_a.png": (256, 256), "wide_b.tif": (300, 700)}.items()):
        image, _ = synthetic_nuclei(*shape, seed=seed)
        if name.endswith(".tif"):
            tifffile.imwrite(folder / name, image, photometric="rgb", tile=(64, 64), bigtiff=True)
        else:
            Image.fromarray(image).save(folder / name)
    return folder


def test_predict_writes_every_format_per_image(images: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["predict", str(images), "--method", "classical", "--out", str(out), "--tile", "256",
                 "--overlap", "64", "--mpp", "0.5"])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "tile_a.png:" in stdout and "wide_b.tif:" in stdout and "nuclei in" in stdout
    assert "2 image(s)" in stdout
    for stem, shape in (("tile_a", (256, 256)), ("wide_b", (300, 700))):
        labels = tifffile.imread(out / f"{stem}_labels.tif")
        assert labels.shape == shape and labels.max() > 20
        ids = np.unique(labels)[1:]
        with open(out / f"{stem}_nuclei.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [int(r["id"]) for r in rows] == ids.tolist()
        assert [int(r["area_px"]) for r in rows] == np.bincount(labels.ravel())[ids].tolist()
        features = json.loads((out / f"{stem}_nuclei.geojson").read_text())["features"]
        assert len(features) == len(ids)
        assert Image.open(out / f"{stem}_overlay.png").size == (shape[1], shape[0])
        name = "tile_a.png" if stem == "tile_a" else "wide_b.tif"
        assert f"{images / name}: {len(ids):,} nuclei in" in stdout


def test_existing_outputs_stop_the_run_before_any_work(images: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "wide_b_nuclei.csv").write_text("mine")
    args = ["predict", str(images / "*.*"), "--method", "classical", "--out", str(out),
            "--formats", "csv,tiff"]
    assert main(args) == 2
    assert "wide_b_nuclei.csv already exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["wide_b_nuclei.csv"]  # not even tile_a's outputs
    assert main([*args, "--overwrite"]) == 0
    # manifest.csv (issue 11) records every input of the run.
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "tile_a_labels.tif", "tile_a_nuclei.csv",
                                                    "wide_b_labels.tif", "wide_b_nuclei.csv"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--adapter FILE .* or --method classical"),
        (["--method", "model"], "--method model needs --adapter"),
        (["--method", "classical", "--adapter", "x.safetensors"], "uses no model"),
        (["--method", "classical", "--formats", "tiff,svg"], "svg.*--formats"),
        (["--method", "classical", "--tile", "256", "--overlap", "300"], "overlap=300.*--overlap"),
        (["--method", "classical", "--mpp", "-1"], "--mpp"),
        (["--method", "classical", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_options_exit_2_with_the_option_named(images: Path, tmp_path: Path, extra: list[str],
                                                  message: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["predict", str(images), "--out", str(out), *extra]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists() or not any(out.iterdir())


def test_unmatched_input_and_grayscale_image_are_errors(images: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "nothing*.png"), "--method", "classical", "--out", str(out)]) == 2
    assert "matches no images" in capsys.readouterr().err
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(images / "gray.png")
    assert main(["predict", str(images / "gray.png"), "--method", "classical", "--out", str(out)]) == 2
    assert "grayscale" in capsys.readouterr().err
    # Nothing but manifest.csv (issue 11), which records the failure.
    assert [p.name for p in out.iterdir()] == ["manifest.csv"]
    with open(out / "manifest.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert row["status"] == "failed" and "grayscale" in row["error"]


def test_classical_method_on_the_bundled_sample(sample_root: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The real classical baseline, no model or weights: nuclei found on real H&E tiles."""
    tiles = sample_root / "human spleen" / "tissue images"
    out = tmp_path / "out"
    assert main(["predict", str(tiles / "human_spleen_0*.png"), "--method", "classical", "--out", str(out),
                 "--formats", "tiff,csv"]) == 0
    for stem in ("human_spleen_01", "human_spleen_05"):
        truth = read_label_map(sample_root / "human spleen" / "label masks modify" / f"{stem}.tif")
        labels = tifffile.imread(out / f"{stem}_labels.tif")
        # A 512×512 tile is a single window: exactly the baseline on the whole image.
        np.testing.assert_array_equal(labels, classical_instances(read_rgb(tiles / f"{stem}.png")))
        n_true = len(np.unique(truth)) - 1
        assert 0.5 * n_true < len(np.unique(labels)) - 1 < 2 * n_true
    stdout = capsys.readouterr().out
    assert "human_spleen_01.png: " in stdout and "human_spleen_05.png: " in stdout and "2 image(s)" in stdout


def test_adapter_method_with_a_saved_adapter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A randomly initialised adapter (no base checkpoint needed) with recorded post-processing."""
    adapter = save_random_adapter(tmp_path / "adapter.safetensors")
    image, _ = synthetic_nuclei(300, 260, seed=3)
    Image.fromarray(image).save(tmp_path / "x.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "x.png"), "--adapter", str(adapter), "--out", str(out),
                 "--tile", "256", "--overlap", "32", "--batch-size", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "x_labels.tif", "x_nuclei.csv",
                                                    "x_nuclei.geojson", "x_overlay.png"]
    assert tifffile.imread(out / "x_labels.tif").shape == (300, 260)
    assert "1 image(s)" in capsys.readouterr().out


def test_an_earlier_output_folder_is_not_segmented_again(
    cropped_sample: Callable[[int, int], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real tiles predicted into their own folder, then into another: rerunning on either folder
    segments the tiles, not the label TIFFs and overlays written beside them."""
    tiles = cropped_sample(2, 128) / "human spleen" / "tissue images"
    images = tmp_path / "in"
    shutil.copytree(tiles, images)
    args = ["--method", "classical", "--tile", "256"]
    assert main(["predict", str(images), "--out", str(images), *args]) == 0
    assert "2 image(s)" in capsys.readouterr().out
    assert len(list(images.glob("*_labels.tif"))) == len(list(images.glob("*_overlay.png"))) == 2

    # The same folder again: its two tiles are done already and the four image outputs are left out.
    assert main(["predict", str(images), "--out", str(images), *args]) == 0
    stdout = capsys.readouterr().out
    assert "left out 4 outputs of an earlier nucleisam run" in stdout
    assert "2 image(s)" in stdout and "2 done already" in stdout
    assert not list(images.glob("*_labels_*")) and not list(images.glob("*_overlay_*"))

    # Outputs in a folder of their own are known by its manifest.csv: nothing there to segment.
    out = tmp_path / "out"
    assert main(["predict", str(tiles), "--out", str(out), *args]) == 0
    capsys.readouterr()
    code = main(["predict", str(out), "--out", str(tmp_path / "again"), *args])
    assert code == 2 and not (tmp_path / "again").exists()
    assert "holds only outputs of an earlier nucleisam run (4 files such as" in capsys.readouterr().err
    # Named explicitly, an overlay is an image like any other.
    overlay = sorted(out.glob("*_overlay.png"))[0]
    assert main(["predict", str(overlay), "--out", str(tmp_path / "again"), *args]) == 0
    assert "1 image(s)" in capsys.readouterr().out
