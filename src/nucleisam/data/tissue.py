"""Where the tissue is on a slide, found on a thumbnail so that glass is never read at full resolution.

:func:`detect_tissue` thresholds optical density (tissue absorbs, glass does not) and colour
saturation (H&E is pink to purple, glass grey-white) with Otsu's method kept between a floor (a
blank slide stays blank) and a ceiling (a field that is all tissue stays whole), and cleans the
result up morphologically. :func:`tissue_mask_for` runs it on a slide's thumbnail; :func:`read_tissue_mask`
takes a user's mask image instead (``--tissue MASK.png``, any size, scaled to the slide); and
:func:`tile_has_tissue` tells the tiled inference which tiles to read.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import disk

from nucleisam.data.imageio import to_rgb_uint8
from nucleisam.data.slides import SlideImage, same_aspect_ratio
from nucleisam.errors import NucleisamError

#: Longest side of the thumbnail tissue is detected on: about 12 µm per pixel on a 25 mm, 40× scan,
#: finer than any tile the inference reads.
TISSUE_THUMBNAIL_SIZE = 2048
#: A user's mask may differ from the slide's aspect ratio by this much (rounding when it was made).
MASK_ASPECT_TOLERANCE = 0.02

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class TissueMask:
    """A tissue mask covering a whole slide.

    Attributes:
        mask: bool (h, w), True on tissue.
        downsample: (x, y) level-0 pixels per mask pixel; mask pixel (i, j) covers level-0 columns
            ``[j·dx, (j+1)·dx)`` and rows ``[i·dy, (i+1)·dy)``.
    """

    mask: np.ndarray
    downsample: tuple[float, float]

    def has_tissue(self, box: Box, min_fraction: float = 0.0) -> bool:
        """Whether the level-0 box (x, y, width, height) holds tissue; see :func:`tile_has_tissue`."""
        return tile_has_tissue(self.mask, box, self.downsample, min_fraction)


def detect_tissue(
    thumbnail: np.ndarray,
    *,
    optical_density_range: tuple[float, float] = (0.1, 0.25),
    saturation_range: tuple[float, float] = (0.05, 0.2),
    glass_optical_density: float = 0.04,
    opening: int = 1,
    closing: int = 3,
    min_object_px: int = 64,
    max_hole_px: int | None = None,
) -> np.ndarray:
    """Tissue on an RGB thumbnail of a brightfield slide, as a bool mask of the same height and width.

    A pixel is tissue when it is darker than glass (mean optical density above Otsu's threshold), or
    coloured (HSV saturation above Otsu's threshold) and not near-white. Each Otsu threshold is kept
    within a range: the floor keeps a blank slide blank (Otsu would split the glass's noise), the
    ceiling keeps a field without glass whole (Otsu would split the tissue). Pale, greyish H&E is
    caught by its optical density, faint eosin by its colour.

    Parameters
    ----------
    thumbnail : (H, W, 3) array
        RGB image of the whole slide (``uint8``, or anything :func:`to_rgb_uint8` converts).
    optical_density_range, saturation_range : (float, float)
        Floor and ceiling of the Otsu thresholds on mean optical density (log10) and saturation.
    glass_optical_density : float
        Pixels at most this dark are glass whatever their colour: a tint of the slide or the
        scanner's white balance.
    opening, closing : int
        Radii in thumbnail pixels of the morphological opening (drops specks of dust) and closing
        (joins tissue torn apart by lumens and fat) that follow the thresholds.
    min_object_px : int
        Pieces of tissue smaller than this many thumbnail pixels are dropped.
    max_hole_px : int or None
        Holes inside tissue up to this size are filled; ``None`` fills every enclosed hole.

    Returns
    -------
    mask : (H, W) bool array
    """
    rgb = to_rgb_uint8(thumbnail, source="tissue thumbnail").astype(np.float32)
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    saturation = (high - low) / np.maximum(high, 1.0)
    optical_density = -np.log10(np.maximum(rgb, 1.0) / 255.0).mean(axis=-1)
    dark = optical_density > _bounded_otsu(optical_density, optical_density_range)
    coloured = (saturation > _bounded_otsu(saturation, saturation_range)) & (
        optical_density > glass_optical_density
    )
    return _clean_mask(dark | coloured, opening=opening, closing=closing, min_object_px=min_object_px,
                      max_hole_px=max_hole_px)


def _bounded_otsu(values: np.ndarray, bounds: tuple[float, float]) -> float:
    low, high = bounds
    otsu = float(threshold_otsu(values)) if np.ptp(values) > 0 else low
    return min(max(otsu, low), high)


def _clean_mask(
    mask: np.ndarray, *, opening: int, closing: int, min_object_px: int, max_hole_px: int | None
) -> np.ndarray:
    """Opening, then closing (with the image edge treated as continuing the mask, so tissue cut by
    the edge keeps its border), then small objects removed and holes filled."""
    result = mask.astype(bool)
    if opening > 0:
        result = ndimage.binary_opening(result, structure=disk(opening))
    if closing > 0:
        padded = np.pad(result, closing, mode="edge")
        result = ndimage.binary_closing(padded, structure=disk(closing))[closing:-closing, closing:-closing]
    labels, count = ndimage.label(result)
    if count and min_object_px > 0:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        result = (sizes >= min_object_px)[labels] & result
    return _fill_holes(result, max_hole_px)


def _fill_holes(mask: np.ndarray, max_hole_px: int | None) -> np.ndarray:
    filled = ndimage.binary_fill_holes(mask)
    if max_hole_px is None:
        return filled
    holes, count = ndimage.label(filled & ~mask)
    sizes = np.bincount(holes.ravel(), minlength=count + 1)
    small = sizes <= max_hole_px
    small[0] = False
    return mask | small[holes]


def tissue_mask_for(
    slide: SlideImage, *, max_size: int = TISSUE_THUMBNAIL_SIZE, **detect_options: Any
) -> TissueMask:
    """Detect tissue on the slide's thumbnail (longest side ``max_size``, read from the smallest level
    that large); ``detect_options`` go to :func:`detect_tissue`."""
    thumbnail = slide.thumbnail(max_size)
    mask = detect_tissue(thumbnail, **detect_options)
    return TissueMask(mask=mask, downsample=_downsample(slide.dimensions, mask.shape))


def read_tissue_mask(path: str | os.PathLike[str], slide: SlideImage) -> TissueMask:
    """A user's tissue mask for ``slide`` (``--tissue MASK.png``): an image of the whole slide at any
    size with the slide's aspect ratio, non-zero (in any colour channel) on tissue.

    Raises:
        NucleisamError: an unreadable file, a mask with a different aspect ratio, or one with no tissue.
    """
    file = Path(path)
    if not file.is_file():
        raise NucleisamError(f"tissue mask {file} (--tissue) not found.")
    try:
        with Image.open(file) as img:
            img.load()
            mask = _nonzero(img)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise NucleisamError(
            f"cannot read tissue mask {file} (--tissue): {exc}. Give a PNG or TIFF image."
        ) from exc
    width, height = slide.dimensions
    mask_h, mask_w = mask.shape
    if not same_aspect_ratio((mask_w, mask_h), slide.dimensions, MASK_ASPECT_TOLERANCE):
        raise NucleisamError(
            f"tissue mask {file} is {mask_w}×{mask_h} px but slide {slide.path} is {width}×{height}: the "
            "aspect ratios differ. Give a mask of the whole slide."
        )
    if not mask.any():
        raise NucleisamError(
            f"tissue mask {file} (--tissue) marks no tissue (every pixel is 0); nothing would be analysed."
        )
    return TissueMask(mask=mask, downsample=_downsample(slide.dimensions, mask.shape))


def tissue_mask_from_option(option: str, slide: SlideImage, **detect_options: Any) -> TissueMask | None:
    """``--tissue auto|none|MASK``: a detected mask, no mask (read every tile), or the user's mask."""
    if option == "auto":
        return tissue_mask_for(slide, **detect_options)
    if option == "none":
        return None
    return read_tissue_mask(option, slide)


def tissue_fraction(mask: np.ndarray, box: Box, downsample: float | tuple[float, float]) -> float:
    """Fraction of tissue in the mask pixels that the level-0 box (x, y, width, height) touches
    (0.0 for a box outside the mask)."""
    dx, dy = (downsample, downsample) if isinstance(downsample, (int, float)) else downsample
    x, y, width, height = box
    x0, y0 = max(0, math.floor(x / dx)), max(0, math.floor(y / dy))
    x1, y1 = min(mask.shape[1], math.ceil((x + width) / dx)), min(mask.shape[0], math.ceil((y + height) / dy))
    if x1 <= x0 or y1 <= y0:
        return 0.0
    return float(mask[y0:y1, x0:x1].mean())


def tile_has_tissue(
    mask: np.ndarray, box: Box, downsample: float | tuple[float, float], min_fraction: float = 0.0
) -> bool:
    """Whether a tile, the level-0 box (x, y, width, height), is worth reading: some tissue in the mask
    pixels it touches, and at least ``min_fraction`` of them. The default reads every tile that
    touches tissue at all, so no nucleus at the tissue's edge is lost."""
    fraction = tissue_fraction(mask, box, downsample)
    return fraction > 0.0 and fraction >= min_fraction


def _nonzero(img: Image.Image) -> np.ndarray:
    """True where any colour channel is non-zero; an alpha channel is ignored."""
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    array = np.asarray(img)
    if array.ndim == 2:
        return array > 0
    colour = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
    return (colour > 0).any(axis=-1)


def _downsample(dimensions: tuple[int, int], shape: tuple[int, ...]) -> tuple[float, float]:
    width, height = dimensions
    return width / shape[1], height / shape[0]
