"""Tissue detection on slide thumbnails, user masks, and which tiles are worth reading.

The slides are real H&E tiles from the bundled sample on glass (``slides_helpers``), so the tiles
that hold tissue are known exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nucleisam.data.slides import ArraySlide, open_image
from nucleisam.data.tissue import (
    TissueMask,
    detect_tissue,
    read_tissue_mask,
    tile_has_tissue,
    tissue_fraction,
    tissue_mask_for,
    tissue_mask_from_option,
)
from nucleisam.errors import NucleisamError
from slides_helpers import sample_tiles, slide_canvas, write_slide

CELL = 512
GRID = (6, 4)
#: Tissue cells (column, row): a pale pair side by side, dense ones, one in a corner, one at an edge.
TISSUE_CELLS = [(1, 1), (2, 1), (1, 2), (4, 2), (0, 3), (5, 0)]


@pytest.fixture(scope="module")
def canvas(sample_root: Path):
    return slide_canvas(sample_tiles(sample_root, 6), grid=GRID, cells=TISSUE_CELLS, cell=CELL)


def _cells() -> list[tuple[int, int]]:
    return [(column, row) for row in range(GRID[1]) for column in range(GRID[0])]


def _box(cell: tuple[int, int]) -> tuple[int, int, int, int]:
    return cell[0] * CELL, cell[1] * CELL, CELL, CELL


def _touches_tissue(cell: tuple[int, int]) -> bool:
    return any(abs(cell[0] - c) <= 1 and abs(cell[1] - r) <= 1 for c, r in TISSUE_CELLS)


def _with_glass_noise(image: np.ndarray) -> np.ndarray:
    """Real glass is not 255: a slight blue-grey tint with sensor noise."""
    glass = (image == 255).all(axis=-1)
    noise = np.random.default_rng(3).normal(0.0, 3.0, image.shape) + np.array([238.0, 236.0, 242.0])
    out = image.copy()
    out[glass] = np.clip(noise, 0, 255).astype(np.uint8)[glass]
    return out


@pytest.mark.parametrize("noisy_glass", [False, True])
def test_tissue_tiles_are_kept_and_blank_ones_dropped(canvas, tmp_path, noisy_glass):
    image = _with_glass_noise(canvas.image) if noisy_glass else canvas.image
    path = write_slide(tmp_path / "slide.tif", image, mpp=0.25, factors=(1, 4, 8))
    with open_image(path) as slide:
        levels = []
        original = slide._read_region
        slide._read_region = lambda x, y, level, w, h: levels.append(level) or original(x, y, level, w, h)
        tissue = tissue_mask_for(slide, max_size=384)
    assert set(levels) == {2}  # only the 8× level: glass is never read at full resolution
    assert tissue.mask.shape == (256, 384) and tissue.downsample == (8.0, 8.0)
    for cell in _cells():
        fraction = tissue_fraction(tissue.mask, _box(cell), tissue.downsample)
        if cell in TISSUE_CELLS:
            assert fraction > 0.95, (cell, fraction)
            assert tissue.has_tissue(_box(cell), min_fraction=0.5)
        elif _touches_tissue(cell):
            assert fraction < 0.05, (cell, fraction)  # at most the closing's rim on the shared border
            assert not tissue.has_tissue(_box(cell), min_fraction=0.05)
        else:
            assert fraction == 0.0 and not tissue.has_tissue(_box(cell)), cell


def test_blank_slides_have_no_tissue_and_tissue_only_fields_are_whole(canvas):
    assert not detect_tissue(np.full((200, 300, 3), 255, np.uint8)).any()
    assert not detect_tissue(_with_glass_noise(np.full((200, 300, 3), 255, np.uint8))).any()
    tiles = [canvas.image[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] for c, r in TISSUE_CELLS]
    field = np.concatenate([np.concatenate(tiles[:3], axis=1), np.concatenate(tiles[3:], axis=1)], axis=0)
    thumb = np.asarray(Image.fromarray(field).resize((384, 256), Image.Resampling.BOX))
    assert detect_tissue(thumb).mean() > 0.99  # pale and dense tiles alike, no glass to split from


def test_specks_are_dropped_and_holes_filled(canvas):
    thumb = np.asarray(Image.fromarray(canvas.image).resize((384, 256), Image.Resampling.BOX)).copy()
    # A tissue cell is thumbnail [64:128, 64:128]: punch a glass hole; put dust specks on the glass.
    thumb[90:100, 90:100] = 255
    specks = ((20, 20), (30, 200), (240, 300))
    for y, x in specks:
        thumb[y : y + 3, x : x + 3] = (60, 40, 90)
    mask = detect_tissue(thumb)
    assert mask[90:100, 90:100].all()
    for y, x in specks:
        assert not mask[y - 5 : y + 8, x - 5 : x + 8].any()
    assert not detect_tissue(thumb, max_hole_px=50)[92:98, 92:98].any()  # the 100-px hole stays open


def test_user_mask_of_any_size_is_scaled_to_the_slide(canvas, tmp_path):
    slide = ArraySlide(canvas.image, path=tmp_path / "slide.tif")
    small = np.zeros((GRID[1] * 4, GRID[0] * 4), np.uint8)  # 4 mask px per cell: 128 slide px each
    small[4:8, 8:12] = 255  # cell (2, 1)
    for mode, name in (("L", "mask.png"), ("P", "palette.png"), ("RGBA", "colour.png")):
        Image.fromarray(small).convert(mode).save(tmp_path / name)
        tissue = read_tissue_mask(tmp_path / name, slide)
        assert tissue.downsample == (128.0, 128.0)
        kept = [cell for cell in _cells() if tissue.has_tissue(_box(cell))]
        assert kept == [(2, 1)], mode
    assert tissue_mask_from_option(str(tmp_path / "mask.png"), slide).mask.sum() == 16
    assert tissue_mask_from_option("none", slide) is None
    assert isinstance(tissue_mask_from_option("auto", slide, max_size=384), TissueMask)


def test_bad_user_masks_are_one_line_errors(canvas, tmp_path):
    slide = ArraySlide(canvas.image, path=tmp_path / "slide.tif")
    Image.fromarray(np.full((100, 100), 255, np.uint8)).save(tmp_path / "square.png")
    with pytest.raises(NucleisamError, match=r"square\.png is 100×100 px but slide .*3072×2048"):
        read_tissue_mask(tmp_path / "square.png", slide)
    Image.fromarray(np.zeros((64, 96), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(NucleisamError, match=r"empty\.png \(--tissue\) marks no tissue"):
        read_tissue_mask(tmp_path / "empty.png", slide)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(NucleisamError, match=r"cannot read tissue mask .*broken\.png"):
        read_tissue_mask(tmp_path / "broken.png", slide)
    with pytest.raises(NucleisamError, match=r"absent\.png \(--tissue\) not found"):
        tissue_mask_from_option(str(tmp_path / "absent.png"), slide)


def test_tile_has_tissue_maps_level0_boxes_onto_the_mask():
    mask = np.zeros((10, 20), bool)
    mask[2:4, 5:7] = True  # level-0 x 50–70, y 20–40 at downsample 10
    assert tile_has_tissue(mask, (40, 10, 20, 20), 10.0)
    assert not tile_has_tissue(mask, (70, 40, 50, 50), 10.0)
    assert not tile_has_tissue(mask, (-100, -100, 50, 50), 10.0)  # outside the slide
    assert tissue_fraction(mask, (50, 20, 20, 20), (10.0, 10.0)) == 1.0
    assert tissue_fraction(mask, (0, 0, 100, 100), (10.0, 10.0)) == pytest.approx(0.04)
    assert not tile_has_tissue(mask, (0, 0, 100, 100), 10.0, min_fraction=0.05)
    assert tile_has_tissue(mask, (45, 0, 10, 25), (10.0, 10.0))  # touches the tissue's corner pixel
