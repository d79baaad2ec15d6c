"""The resolution of a training data set (``data.mpp``): given, read from the images when they all
record the same one, else NuInsSeg's with a warning that says what to set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nucleisam.config import NUINSSEG_MPP
from nucleisam.data import DataResolution, load_nuinsseg, read_rgb, recorded_mpp, resolve_data_mpp
from nucleisam.data.resolution import FROM_CONFIG, FROM_DEFAULT, FROM_IMAGES


@pytest.fixture(scope="module")
def tile(sample_root: Path) -> np.ndarray:
    """A real H&E tile (bundled NuInsSeg spleen), cropped small."""
    return read_rgb(sample_root / "human spleen" / "tissue images" / "human_spleen_13.png")[:96, :96]


def tiff_at(path: Path, image: np.ndarray, mpp: float | None, *, ome: bool = False) -> Path:
    """``image`` as a TIFF recording ``mpp`` in its resolution tags (or OME PhysicalSizeX)."""
    if ome:
        tifffile.imwrite(path, image, ome=True, photometric="rgb",
                         metadata={"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp})
    elif mpp is None:
        tifffile.imwrite(path, image, photometric="rgb")
    else:
        per_cm = 1e4 / mpp
        tifffile.imwrite(path, image, photometric="rgb", resolution=(per_cm, per_cm),
                         resolutionunit="CENTIMETER")
    return path


def png_at(path: Path, image: np.ndarray, dpi: float | None) -> Path:
    Image.fromarray(image).save(path, **({} if dpi is None else {"dpi": (dpi, dpi)}))
    return path


def test_each_format_records_its_resolution(tile: np.ndarray, sample_root: Path, tmp_path: Path) -> None:
    assert recorded_mpp(tiff_at(tmp_path / "tags.tif", tile, 0.5)) == pytest.approx(0.5)
    assert recorded_mpp(tiff_at(tmp_path / "ome.ome.tif", tile, 0.25, ome=True)) == pytest.approx(0.25)
    assert recorded_mpp(png_at(tmp_path / "scan.png", tile, 25_400 / 0.5)) == pytest.approx(0.5, rel=1e-3)
    assert recorded_mpp(tiff_at(tmp_path / "bare.tif", tile, None)) is None
    assert recorded_mpp(png_at(tmp_path / "editor.png", tile, 72)) is None  # 353 µm/px: not a scan
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    assert recorded_mpp(tmp_path / "broken.tif") is None  # reported where it is decoded, not here
    # The NuInsSeg release's PNGs record no resolution.
    assert all(recorded_mpp(s.image_path) is None for s in load_nuinsseg(sample_root))


def test_nuinsseg_without_a_recorded_resolution_is_nuinsseg_s_silently(sample_root: Path) -> None:
    images = [s.image_path for s in load_nuinsseg(sample_root)]
    assert resolve_data_mpp(None, images, nuinsseg_layout=True) == DataResolution(NUINSSEG_MPP, FROM_DEFAULT)
    # The same unrecorded images in another layout are someone's own data: say what is assumed.
    other = resolve_data_mpp(None, images)
    assert (other.mpp, other.source) == (NUINSSEG_MPP, FROM_DEFAULT)
    assert "record no resolution" in other.warning and "data.mpp" in other.warning


def test_images_that_agree_give_their_resolution(tile: np.ndarray, tmp_path: Path) -> None:
    # 0.50 and 0.52 µm/px: one scanner's "20x" within the 10% tolerance; the median is taken.
    images = [tiff_at(tmp_path / "a.tif", tile, 0.5), tiff_at(tmp_path / "b.tif", tile, 0.52),
              png_at(tmp_path / "c.png", tile, 25_400 / 0.5)]
    resolution = resolve_data_mpp(None, images)
    assert resolution.mpp == pytest.approx(0.5) and resolution.source == FROM_IMAGES
    assert resolution.warning is None
    assert repr(resolution.mpp) == "0.5"  # rounded: config.yaml says 0.5, not 0.49999999999999994


@pytest.mark.parametrize(
    ("recorded", "fragment"),
    [
        ((0.25, 0.5), "record different resolutions (0.25–0.5 µm/px)"),
        ((0.5, None), "1 of 2 images record a resolution (0.5 µm/px), the others none"),
        ((None, None), "record no resolution"),
    ],
)
def test_images_that_disagree_or_record_nothing_fall_back_with_a_warning(
    recorded: tuple[float | None, ...], fragment: str, tile: np.ndarray, tmp_path: Path
) -> None:
    images = [tiff_at(tmp_path / f"{i}.tif", tile, mpp) for i, mpp in enumerate(recorded)]
    resolution = resolve_data_mpp(None, images)
    assert (resolution.mpp, resolution.source) == (NUINSSEG_MPP, FROM_DEFAULT)
    assert fragment in resolution.warning
    assert "assuming NuInsSeg's 0.25 µm/px" in resolution.warning and "data.mpp" in resolution.warning


def test_a_given_resolution_wins_and_a_clash_with_the_images_is_warned(
    tile: np.ndarray, tmp_path: Path
) -> None:
    images = [tiff_at(tmp_path / f"{i}.tif", tile, 0.25) for i in range(2)]
    assert resolve_data_mpp(0.26, images) == DataResolution(0.26, FROM_CONFIG)  # within 10%: no warning
    clash = resolve_data_mpp(0.5, images)
    assert (clash.mpp, clash.source) == (0.5, FROM_CONFIG)
    assert "data.mpp (--mpp) is 0.5 µm/px but every image records 0.25 µm/px" in clash.warning
