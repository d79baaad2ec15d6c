"""Slides read lazily through every backend: pixels, levels, resolution, and errors on bad files.

The slides are written by the tests (``slides_helpers``): real H&E tiles from the bundled sample on a
white glass margin, as the TIFF pyramids scanners and converters produce.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nucleisam.data import NUINSSEG_MPP, ArraySlide, open_image, read_rgb, working_level
from nucleisam.data import slides as slides_module
from nucleisam.errors import NucleisamError
from slides_helpers import downsample_level, sample_tiles, slide_canvas, write_slide

#: Each written layout and the backend open_image must choose for it.
LAYOUTS = {"subifds": "tifffile", "ome": "tifffile", "ifds": "openslide"}


def _openslide_reason() -> str | None:
    try:
        import openslide  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: the wheel's shared library failed to load
        return f"OpenSlide cannot be imported here ({exc}); install openslide-python and openslide-bin"
    return None


requires_openslide = pytest.mark.skipif(_openslide_reason() is not None, reason=str(_openslide_reason()))


@pytest.fixture(scope="module")
def canvas(sample_root: Path):
    """2048×1536 px of glass with three real tiles: one touching the top edge, two inside."""
    return slide_canvas(sample_tiles(sample_root, 3), grid=(4, 3), cells=[(1, 0), (1, 1), (2, 1)])


@pytest.fixture(scope="module")
def slides(canvas, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("slides")
    return {
        layout: write_slide(folder / f"{layout}.tif", canvas.image, layout=layout, mpp=0.5)
        for layout in LAYOUTS
    }


def _check_backend(layout: str) -> None:
    if LAYOUTS[layout] == "openslide" and _openslide_reason() is not None:
        pytest.skip(str(_openslide_reason()))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_read_region_equals_the_source_pixels_at_every_level(layout, slides, canvas):
    _check_backend(layout)
    with open_image(slides[layout]) as slide:
        assert slide.backend == LAYOUTS[layout]
        assert slide.level_dimensions == ((2048, 1536), (1024, 768), (512, 384))
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        # A region across tissue and glass, at a level-0 location on every level's grid.
        x, y, width, height = 384, 256, 700, 520
        for level, factor in enumerate((1, 2, 4)):
            expected = downsample_level(canvas.image, factor)
            lx, ly = x // factor, y // factor
            region = slide.read_region((x, y), level, (width // factor, height // factor))
            assert region.dtype == np.uint8 and region.shape == (height // factor, width // factor, 3)
            window = expected[ly : ly + height // factor, lx : lx + width // factor]
            np.testing.assert_array_equal(region, window)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_regions_outside_the_image_are_white_in_every_backend(layout, slides, canvas):
    _check_backend(layout)
    with open_image(slides[layout]) as slide:
        region = slide.read_region((400, -100), 0, (300, 250))  # the tile at (512, 0) touches the top
        assert (region[:100] == 255).all()
        np.testing.assert_array_equal(region[100:], canvas.image[:150, 400:700])
        corner = slide.read_region((2000, 1500), 1, (100, 100))  # level-1 pixels (1000, 750) onward
        np.testing.assert_array_equal(corner[:18, :24], downsample_level(canvas.image, 2)[750:, 1000:])
        assert (corner[18:] == 255).all() and (corner[:, 24:] == 255).all()
        assert (slide.read_region((5000, 5000), 0, (10, 10)) == 255).all()


@pytest.mark.parametrize(("layout", "source"), [("subifds", "TIFF resolution"), ("ome", "OME PhysicalSizeX"),
                                                ("ifds", "openslide.mpp-x")])
def test_mpp_is_read_from_each_format(layout, source, slides):
    _check_backend(layout)
    with open_image(slides[layout]) as slide:
        assert slide.mpp == pytest.approx(0.5)
        assert slide.mpp_source == source
        assert slide.level_mpp(2) == pytest.approx(2.0)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_mpp_argument_overrides_the_file(layout, slides):
    _check_backend(layout)
    with open_image(slides[layout], mpp=0.2525) as slide:
        assert slide.mpp == 0.2525 and slide.mpp_source == "override"


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_unknown_mpp_is_none_never_a_guess(layout, canvas, tmp_path):
    _check_backend(layout)
    path = write_slide(tmp_path / "no_mpp.tif", canvas.image[:512, :1024], layout=layout, mpp=None,
                       factors=(1, 2))
    with open_image(path) as slide:
        assert slide.mpp is None and slide.mpp_source is None and slide.level_mpp(1) is None
        with pytest.raises(NucleisamError, match=r"no_mpp\.tif does not record its resolution.*--mpp"):
            working_level(slide, NUINSSEG_MPP)


def test_resolution_in_inches_and_editor_defaults(canvas, tmp_path):
    inches = write_slide(tmp_path / "inch.tif", canvas.image[:512, :512], mpp=0.25, factors=(1,),
                         resolution_unit="INCH")
    with open_image(inches) as slide:
        assert slide.mpp == pytest.approx(0.25)  # OpenSlide or tifffile: both read the tags
    # 72 dpi is what image editors write by default: 353 µm/px is no microscope's, so it is unknown.
    editor = tmp_path / "editor.tif"
    tifffile.imwrite(editor, canvas.image[:512, :512], tile=(256, 256), photometric="rgb",
                     resolution=(72, 72), resolutionunit="INCH")
    with open_image(editor) as slide:
        assert slide.mpp is None


def test_png_and_small_tiff_are_read_in_memory_like_read_rgb(sample_root, tmp_path):
    png = sorted((sample_root / "human spleen" / "tissue images").glob("*.png"))[0]
    with open_image(png) as slide:
        assert slide.backend == "memory" and slide.level_count == 1 and slide.mpp is None
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, slide.dimensions), read_rgb(png))
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, read_rgb(png), photometric="rgb", resolution=(1e4 / 0.25, 1e4 / 0.25),
                     resolutionunit="CENTIMETER")
    with open_image(small) as slide:
        assert slide.backend == "memory" and slide.mpp == pytest.approx(0.25)
        region = slide.read_region((100, 50), 0, (64, 32))
        np.testing.assert_array_equal(region, read_rgb(png)[50:82, 100:164])
        pixels = slide.pixels  # the decoded image itself, shared rather than copied
        assert slide.pixels is pixels
    np.testing.assert_array_equal(pixels, read_rgb(png))
    with pytest.raises(NucleisamError, match="is closed"):
        _ = slide.pixels
    dpi = tmp_path / "dpi.png"
    Image.fromarray(read_rgb(png)).save(dpi, dpi=(25_400 / 0.5, 25_400 / 0.5))
    with open_image(dpi) as slide:
        assert slide.mpp == pytest.approx(0.5, rel=1e-3)


def test_sixteen_bit_and_planar_tiled_tiffs_read_as_rgb(canvas, tmp_path):
    image = canvas.image[:512, 256:1024]
    wide = tmp_path / "sixteen.tif"
    tifffile.imwrite(wide, image.astype(np.uint16) * 257, tile=(256, 256), photometric="rgb")
    planar = tmp_path / "planar.tif"
    tifffile.imwrite(planar, np.moveaxis(image, -1, 0), tile=(256, 256), photometric="rgb",
                     planarconfig="separate")
    for path in (wide, planar):
        with open_image(path) as slide:
            assert slide.backend == "tifffile" and slide.dimensions == (768, 512)
            np.testing.assert_array_equal(slide.read_region((10, 20), 0, (700, 400)), image[20:420, 10:710])


def test_thumbnail_of_a_stripped_tiff_decodes_each_strip_once(canvas, tmp_path, monkeypatch):
    """Strips span the whole width: square pieces would decode each strip once per piece across
    (8 times here); bands of whole rows, as bounded, decode it once and average the same blocks."""
    monkeypatch.setattr(slides_module, "THUMBNAIL_READ", 256)
    monkeypatch.setattr(slides_module, "IN_MEMORY_MAX_PIXELS", 1024 * 1024)  # 2048×1536 is a slide
    path = tmp_path / "stripped.tif"
    tifffile.imwrite(path, canvas.image, photometric="rgb", compression="zlib", rowsperstrip=16)
    deflate = tifffile.TIFF.DECOMPRESSORS[8]
    strips: list[int] = []

    def counting(data: bytes, *args: object, **kwargs: object) -> object:
        strips.append(len(data))
        return deflate(data, *args, **kwargs)

    monkeypatch.setitem(tifffile.TIFF.DECOMPRESSORS._codecs, 8, counting)  # tifffile's codec cache
    with open_image(path, mpp=0.25) as slide:
        assert slide.backend == "tifffile" and slide.level_count == 1
        sizes = []
        original = slide._read_region
        slide._read_region = lambda x, y, level, w, h: sizes.append((w, h)) or original(x, y, level, w, h)
        thumb = slide.thumbnail(512)  # factor 4: bands of 2048×32 level pixels, two strips each
        assert sizes == [(2048, 32)] * 48 and len(strips) == 1536 // 16
        np.testing.assert_array_equal(thumb, downsample_level(canvas.image, 4))
        strips.clear()
        odd = slide.thumbnail(300)  # factor 6: bands of 30 rows (no multiple of 16 and 6 fits), blocks whole
        assert len(strips) < 2 * 1536 // 16
        reference = np.asarray(Image.fromarray(canvas.image).resize((300, 225), Image.Resampling.BOX))
        assert odd.shape == (225, 300, 3) and np.abs(odd.astype(int) - reference.astype(int)).mean() < 3


def test_working_level_picks_the_nearest_finer_level_and_the_resampling_factor(canvas, tmp_path):
    path = write_slide(tmp_path / "pyramid.tif", canvas.image, mpp=0.25, factors=(1, 2, 4))
    with open_image(path) as slide:  # levels at 0.25, 0.5 and 1.0 µm/px
        assert working_level(slide, 0.5) == (1, 1.0)
        assert working_level(slide, 0.26) == (0, 1.0)  # within 10%: read as-is, no resampling
        assert working_level(slide, 0.6) == (1, pytest.approx(0.5 / 0.6))  # shrink level 1
        assert working_level(slide, 0.95) == (2, 1.0)  # 5% finer than level 2: close enough
        assert working_level(slide, 0.85) == (1, pytest.approx(0.5 / 0.85))  # level 2 would lose detail
        assert working_level(slide, 2.0) == (2, 0.5)
        assert working_level(slide, 0.125) == (0, 2.0)  # finer than the scan: enlarge level 0
        assert working_level(slide, 0.6, tolerance=0.0) == (1, pytest.approx(0.5 / 0.6))
        assert working_level(slide, 0.26, tolerance=0.0) == (0, pytest.approx(0.25 / 0.26))
        with pytest.raises(NucleisamError, match="positive"):
            working_level(slide, 0.0)


def test_thumbnail_comes_from_the_smallest_level_that_is_large_enough(slides, canvas):
    with open_image(slides["subifds"]) as slide:
        reads = []
        original = slide._read_region
        slide._read_region = lambda x, y, level, w, h: reads.append(level) or original(x, y, level, w, h)
        thumb = slide.thumbnail(256)
        assert thumb.shape == (192, 256, 3) and thumb.dtype == np.uint8
        assert set(reads) == {2}
        # Level 2 (512×384) halved: within rounding of the 8× block mean of the level-0 pixels.
        reference = downsample_level(canvas.image, 8).astype(int)
        assert np.abs(thumb.astype(int) - reference).max() <= 1
        assert slide.thumbnail(5000).shape == (1536, 2048, 3)  # never larger than level 0


def test_thumbnail_of_a_slide_without_pyramid_reads_bounded_pieces(canvas, tmp_path, monkeypatch):
    monkeypatch.setattr(slides_module, "THUMBNAIL_READ", 256)
    path = write_slide(tmp_path / "flat.tif", canvas.image, mpp=0.25, factors=(1,))
    with open_image(path) as slide:
        assert slide.level_count == 1
        sizes = []
        original = slide._read_region
        slide._read_region = lambda x, y, level, w, h: sizes.append((w, h)) or original(x, y, level, w, h)
        thumb = slide.thumbnail(512)  # 4× smaller: pieces of 64 output pixels, 256 level pixels
        assert thumb.shape == (384, 512, 3)
        assert max(w * h for w, h in sizes) <= 256 * 256 and len(sizes) == 48
        np.testing.assert_array_equal(thumb, downsample_level(canvas.image, 4))
        odd = slide.thumbnail(300)  # factor 6 leaves partial blocks at the edges, then a final resize
        reference = np.asarray(Image.fromarray(canvas.image).resize((300, 225), Image.Resampling.BOX))
        assert odd.shape == (225, 300, 3) and np.abs(odd.astype(int) - reference.astype(int)).mean() < 3


def test_truncated_slide_is_one_error_naming_the_file(slides, tmp_path, capfd):
    data = slides["subifds"].read_bytes()
    for fraction in (0.5, 0.95):
        truncated = tmp_path / f"cut_{fraction}.tif"
        truncated.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(NucleisamError, match=rf"cut_{fraction}\.tif is truncated") as info:
            open_image(truncated)
        assert "\n" not in str(info.value)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_corrupt_tile_data_is_one_error_naming_the_file(layout, slides, tmp_path, capfd):
    _check_backend(layout)
    data = bytearray(slides[layout].read_bytes())
    data[6000:9000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    corrupt = tmp_path / f"corrupt_{layout}.tif"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(NucleisamError, match=rf"corrupt_{layout}\.tif.*corrupt") as info:
        with open_image(corrupt) as slide:
            slide.read_region((0, 0), 0, slide.dimensions)
    assert "\n" not in str(info.value)
    assert capfd.readouterr().err == ""


def test_unsupported_missing_and_non_rgb_files(tmp_path):
    junk = tmp_path / "scan.svs"
    junk.write_bytes(b"not a slide at all" * 10)
    with pytest.raises(NucleisamError, match=r"scan\.svs: not a supported slide"):
        open_image(junk)
    with pytest.raises(NucleisamError, match=r"not found: .*absent\.ndpi"):
        open_image(tmp_path / "absent.ndpi")
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, np.zeros((512, 512), np.uint8), tile=(256, 256))
    with pytest.raises(NucleisamError, match=r"gray\.tif has image axes YX"):
        open_image(gray)
    floats = tmp_path / "float.tif"
    tifffile.imwrite(floats, np.zeros((512, 512, 3), np.float32), tile=(256, 256), photometric="rgb")
    with pytest.raises(NucleisamError, match=r"float\.tif stores float32 pixels"):
        open_image(floats)
    with pytest.raises(NucleisamError, match="--mpp -1"):
        open_image(junk, mpp=-1)


def test_bad_requests_and_closed_slides(slides):
    slide = open_image(slides["subifds"])
    with pytest.raises(NucleisamError, match=r"level 3 does not exist in .*subifds\.tif; it has levels 0–2"):
        slide.read_region((0, 0), 3, (10, 10))
    with pytest.raises(NucleisamError, match="at least 1×1"):
        slide.read_region((0, 0), 0, (0, 10))
    slide.close()
    with pytest.raises(NucleisamError, match="is closed"):
        slide.read_region((0, 0), 0, (10, 10))


def test_array_slide_serves_an_in_memory_image(canvas):
    slide = ArraySlide(canvas.image, mpp=0.25)
    assert slide.backend == "memory" and slide.dimensions == (2048, 1536) and slide.mpp_source == "given"
    np.testing.assert_array_equal(slide.read_region((600, 500), 0, (64, 48)), canvas.image[500:548, 600:664])
    assert working_level(slide, 0.5) == (0, 0.5)


@requires_openslide
def test_openslide_reads_generic_tiled_tiff_like_tifffile(slides):
    """The same pixels written as a successive-IFD pyramid (OpenSlide) and in SubIFDs (tifffile)."""
    with open_image(slides["ifds"]) as by_openslide, open_image(slides["subifds"]) as by_tifffile:
        assert by_openslide.backend == "openslide" and by_tifffile.backend == "tifffile"
        for level in range(3):
            np.testing.assert_array_equal(
                by_openslide.read_region((128, 64), level, (333, 222)),
                by_tifffile.read_region((128, 64), level, (333, 222)),
            )
        np.testing.assert_array_equal(by_openslide.thumbnail(300), by_tifffile.thumbnail(300))


@requires_openslide
def test_a_generic_tiff_opened_by_openslide_is_parsed_by_tifffile_once(slides, monkeypatch):
    """open_image parses the TIFF (series, truncation) before choosing OpenSlide; OpenSlide's opening
    must not parse it again to check the same thing."""
    parsed = []
    parse = tifffile.TiffFile.__init__

    def counting(self, arg, *args, **kwargs):
        parsed.append(Path(arg).name)
        parse(self, arg, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffFile, "__init__", counting)
    with open_image(slides["ifds"]) as slide:
        assert slide.backend == "openslide"
    assert parsed == ["ifds.tif"]


def test_pyramid_with_uneven_factors_has_every_level(canvas, tmp_path):
    """tifffile splits a 1, 4, 8 pyramid into two series; the slide still has all three levels."""
    path = write_slide(tmp_path / "uneven.tif", canvas.image, mpp=0.25, factors=(1, 4, 8))
    with open_image(path) as slide:
        assert slide.backend == "tifffile"
        assert slide.level_dimensions == ((2048, 1536), (512, 384), (256, 192))
        assert slide.level_downsamples == (1.0, 4.0, 8.0)
        np.testing.assert_array_equal(
            slide.read_region((512, 512), 2, (128, 64)), downsample_level(canvas.image, 8)[64:128, 64:192]
        )
        assert working_level(slide, 1.0) == (1, 1.0) and working_level(slide, 2.0) == (2, 1.0)
