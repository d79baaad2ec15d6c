"""Image reading into RGB uint8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nucleisam.data import read_rgb
from nucleisam.errors import NucleisamError


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


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_truncated_tiff_is_one_clear_error_and_nothing_else_on_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], compression: str | None
) -> None:
    """Cut-off TIFFs fail inside tifffile or imagecodecs with their own exception types and log
    warnings; the user sees only the error naming the file."""
    from nucleisam.data import read_label_map

    rng = np.random.default_rng(0)
    image = tmp_path / "slide.tif"
    labels = tmp_path / "labels.tif"
    tifffile.imwrite(image, rng.integers(0, 255, (512, 512, 3), np.uint8), tile=(256, 256),
                     compression=compression)
    tifffile.imwrite(labels, rng.integers(0, 60000, (512, 512), np.uint16), tile=(256, 256),
                     compression=compression)
    for path in (image, labels):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(NucleisamError, match=r"cannot read image .*slide\.tif"):
        read_rgb(image)
    with pytest.raises(NucleisamError, match=r"cannot read label map .*labels\.tif"):
        read_label_map(labels)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
