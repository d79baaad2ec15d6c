"""Image reading into RGB uint8 and atomic writes (shared by every stage)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nucleisam.data import read_rgb
from nucleisam.errors import NucleisamError
from nucleisam.utils.atomic import atomic_output, ensure_output_dir, write_json_atomic


def test_sample_png_reads_as_rgb_uint8(sample_root: Path) -> None:
    image = read_rgb(sample_root / "human spleen" / "tissue images" / "human_spleen_01.png")
    assert image.shape == (512, 512, 3)
    assert image.dtype == np.uint8
    assert 50 < image.mean() < 250  # an H&E tile, not a blank


def test_rgba_drops_alpha_and_16bit_tiff_is_rescaled(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((20, 30), 128, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "a.png"), rgb)

    tifffile.imwrite(tmp_path / "b.tif", rgb.astype(np.uint16) * 257, photometric="rgb")
    np.testing.assert_array_equal(read_rgb(tmp_path / "b.tif"), rgb)


def test_tiled_bigtiff_reads(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, size=(300, 200, 3), dtype=np.uint8)
    tifffile.imwrite(
        tmp_path / "big.tif", rgb, tile=(64, 64), bigtiff=True, photometric="rgb", compression="zlib"
    )
    np.testing.assert_array_equal(read_rgb(tmp_path / "big.tif"), rgb)


def test_grayscale_and_corrupt_images_are_clear_errors(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "gray image.png")
    with pytest.raises(NucleisamError, match=r"gray image\.png.*grayscale"):
        read_rgb(tmp_path / "gray image.png")
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(NucleisamError, match=r"fake\.png"):
        read_rgb(tmp_path / "fake.png")
    with pytest.raises(NucleisamError, match="not found"):
        read_rgb(tmp_path / "missing.png")


def test_atomic_output_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half-written")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_unwritable_output_dir_is_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NucleisamError, match=r"\(out\)"):
        ensure_output_dir(blocker / "sub")
