"""Whole-slide images and other large images, read lazily region by region at any pyramid level.

:func:`open_image` is the one entry point; it returns a :class:`SlideImage` whatever the file:

- **OpenSlide** for the vendor formats (SVS, NDPI, MRXS, SCN, …) and generic tiled TIFF whose
  pyramid OpenSlide can see (levels as successive IFDs);
- **tifffile's zarr store** for OME-TIFF and for TIFFs OpenSlide reads poorly or not at all
  (pyramids in SubIFDs, stripped or untiled large TIFFs);
- **in memory** for PNG, JPEG and small single-level TIFF, decoded by :func:`read_rgb` exactly as
  tiles always were.

Every backend answers in the same terms: locations in level-0 pixels, regions as RGB ``uint8``,
white outside the image, and microns per pixel read from the file (``openslide.mpp-x``, OME
``PhysicalSizeX``, TIFF resolution tags) or given by the caller, never guessed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from nucleisam.config.data import PLAUSIBLE_MPP
from nucleisam.data.imageio import read_rgb, to_rgb_uint8
from nucleisam.errors import NucleisamError

if TYPE_CHECKING:
    import tifffile

#: Suffixes always decoded whole by Pillow (what nucleisam read before slides existed).
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
#: A single-level, untiled TIFF up to this many pixels is decoded whole, like a PNG (48 MB of RGB).
IN_MEMORY_MAX_PIXELS = 4096 * 4096
#: Thumbnails are read in pieces of about this many pixels per side, so memory stays bounded.
THUMBNAIL_READ = 2048
#: Relative difference in resolution below which a level is read as-is, not resampled: scanners'
#: "40×" ranges from about 0.22 to 0.27 µm/px, and resampling by a few percent only blurs.
MPP_TOLERANCE = 0.1
#: Length units of OME ``PhysicalSizeX`` in micrometres.
_MICRONS_PER_UNIT = {
    "m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0,
    "nm": 1e-3, "pm": 1e-6, "Å": 1e-4,
}
_TIFF_RESOLUTION_UNIT_MICRONS = {2: 25_400.0, 3: 10_000.0}  # inch, centimetre; 1 = no unit

_OPENSLIDE_MISSING = (
    "OpenSlide is not available ({error}); install it with `pip install openslide-python openslide-bin`"
)


class SlideImage:
    """A lazily read image pyramid: levels, sizes, microns per pixel and regions at any level.

    Never holds the whole level-0 image (except the in-memory backend, used for small images). Use it
    as a context manager, or call :meth:`close`.

    Attributes:
        path: the file read.
        backend: ``"openslide"``, ``"tifffile"`` or ``"memory"``.
        level_dimensions: (width, height) of each level, level 0 (full resolution) first.
        level_downsamples: level-0 pixels per pixel of each level (1.0 for level 0).
        mpp: level-0 microns per pixel, ``None`` when the file does not record it and none was given.
        mpp_source: where ``mpp`` came from (``"override"``, ``"openslide.mpp-x"``, ``"OME
            PhysicalSizeX"``, ``"TIFF resolution"``), ``None`` when unknown.
    """

    backend = "abstract"

    def __init__(
        self,
        path: Path,
        level_dimensions: tuple[tuple[int, int], ...],
        *,
        mpp: float | None,
        mpp_source: str | None,
    ) -> None:
        self.path = path
        self.level_dimensions = tuple((int(w), int(h)) for w, h in level_dimensions)
        width, height = self.level_dimensions[0]
        # OpenSlide's convention: the mean of the two axes' ratios.
        self.level_downsamples = tuple((width / w + height / h) / 2 for w, h in self.level_dimensions)
        self.mpp = mpp
        self.mpp_source = mpp_source if mpp is not None else None

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def level_mpp(self, level: int) -> float | None:
        """Microns per pixel of ``level`` (``None`` when the slide's MPP is unknown)."""
        self._check_level(level)
        return None if self.mpp is None else self.mpp * self.level_downsamples[level]

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Pixels of ``level`` as RGB ``uint8`` (h, w, 3), like OpenSlide's ``read_region``.

        ``location`` is the top-left corner (x, y) in level-0 pixels and ``size`` the (width, height)
        read at ``level``. Pixels outside the image are white (255), in every backend. Locations
        that are multiples of the level's downsample read the same pixels in every backend
        (OpenSlide interpolates other sub-pixel offsets; the other backends round down).
        """
        self._check_level(level)
        width, height = (int(v) for v in size)
        if width < 1 or height < 1:
            raise NucleisamError(f"region size {size} read from {self.path} must be at least 1×1 pixels.")
        x, y = (int(v) for v in location)
        try:
            region = self._read_region(x, y, level, width, height)
        except NucleisamError:
            raise
        except Exception as exc:  # readers raise anything from OSError to codec errors on bad data
            raise NucleisamError(
                f"cannot read slide {self.path} (level {level}, region at {x},{y} of {width}×{height}): "
                f"{_one_line(exc)}. The file may be truncated or corrupt."
            ) from exc
        return region

    def thumbnail(self, max_size: int) -> np.ndarray:
        """The whole image as RGB ``uint8`` with its longest side ``max_size`` (or level 0's, if
        smaller), area-averaged from the smallest level at least that large, read block by block so
        memory stays bounded even for a slide without a pyramid."""
        if max_size < 1:
            raise NucleisamError(f"thumbnail size {max_size} must be at least 1 pixel.")
        width0, height0 = self.dimensions
        scale = min(1.0, max_size / max(width0, height0))
        out_w, out_h = max(1, round(width0 * scale)), max(1, round(height0 * scale))
        level = self._thumbnail_level(out_w, out_h)
        level_w, level_h = self.level_dimensions[level]
        factor = max(1, min(level_w // out_w, level_h // out_h))
        reduced = self._block_mean_level(level, factor)
        if reduced.shape[:2] == (out_h, out_w):
            return reduced
        return np.asarray(Image.fromarray(reduced).resize((out_w, out_h), Image.Resampling.BOX))

    def close(self) -> None:
        """Release the file; reading afterwards is an error."""

    def __enter__(self) -> SlideImage:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mpp = "unknown" if self.mpp is None else f"{self.mpp:.4g}"
        return (
            f"{type(self).__name__}({os.fspath(self.path)!r}, backend={self.backend}, "
            f"dimensions={self.dimensions}, levels={self.level_count}, mpp={mpp})"
        )

    def _read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """Backend read at level-0 location (x, y): RGB uint8 (height, width, 3), white outside."""
        raise NotImplementedError

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.level_count:
            raise NucleisamError(
                f"level {level} does not exist in {self.path}; it has levels 0–{self.level_count - 1}."
            )

    def _thumbnail_level(self, out_w: int, out_h: int) -> int:
        """The coarsest level still at least (out_w, out_h): the least data to read."""
        for level in range(self.level_count - 1, -1, -1):
            level_w, level_h = self.level_dimensions[level]
            if level_w >= out_w and level_h >= out_h:
                return level
        return 0

    def _block_mean_level(self, level: int, factor: int) -> np.ndarray:
        """Level ``level`` shrunk by an integer ``factor`` (mean of each factor×factor block; edge
        blocks average only the pixels that exist), read in pieces of about THUMBNAIL_READ² pixels."""
        level_w, level_h = self.level_dimensions[level]
        downsample = self.level_downsamples[level]
        out_w, out_h = math.ceil(level_w / factor), math.ceil(level_h / factor)
        result = np.empty((out_h, out_w, 3), dtype=np.uint8)
        piece_w, piece_h = self._thumbnail_piece(level, factor)
        for y0 in range(0, level_h, piece_h):
            for x0 in range(0, level_w, piece_w):
                width, height = min(piece_w, level_w - x0), min(piece_h, level_h - y0)
                location = (math.ceil(x0 * downsample), math.ceil(y0 * downsample))
                piece = self.read_region(location, level, (width, height))
                reduced = _block_mean(piece, factor)
                out_y, out_x = y0 // factor, x0 // factor
                result[out_y : out_y + reduced.shape[0], out_x : out_x + reduced.shape[1]] = reduced
        return result

    def _thumbnail_piece(self, level: int, factor: int) -> tuple[int, int]:
        """(width, height) in level pixels of the pieces a thumbnail reads: squares of about
        THUMBNAIL_READ² pixels, or, when the level is stored in strips as wide as the image, bands
        of whole rows of about as many pixels (a narrower piece would decode every strip once per
        piece across). Heights are multiples of ``factor`` (no block straddles two pieces), and
        of the strip height where that fits, so each strip is decoded once."""
        side = max(1, THUMBNAIL_READ // factor) * factor
        chunk = self._chunk_shape(level)
        level_w = self.level_dimensions[level][0]
        if chunk is None or chunk[1] < level_w:
            return side, side
        rows = THUMBNAIL_READ * THUMBNAIL_READ // level_w
        for unit in (math.lcm(factor, chunk[0]), factor):
            if rows >= unit:
                return level_w, rows // unit * unit
        return side, side  # so wide that even ``factor`` rows exceed the bound: squares after all

    def _chunk_shape(self, level: int) -> tuple[int, int] | None:
        """(height, width) of the blocks ``level`` is stored and decoded in, ``None`` when unknown."""
        return None


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each factor×factor block of an (h, w, 3) image, partial blocks at the edges included."""
    if factor == 1:
        return image
    height, width = image.shape[:2]
    pad_h, pad_w = -height % factor, -width % factor
    padded = np.pad(image.astype(np.float64), ((0, pad_h), (0, pad_w), (0, 0)))
    ones = np.pad(np.ones((height, width)), ((0, pad_h), (0, pad_w)))
    shape = (padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)
    sums = padded.reshape(*shape, 3).sum(axis=(1, 3))
    counts = ones.reshape(shape).sum(axis=(1, 3))[..., None]
    return np.rint(sums / counts).astype(np.uint8)


def _paste_in_white(
    read: Any, x: int, y: int, width: int, height: int, level_size: tuple[int, int]
) -> np.ndarray:
    """A (height, width, 3) white canvas with ``read(x0, y0, x1, y1)`` (the part of the request inside
    the level, in level pixels) pasted at its place; (x, y) is the request's corner in level pixels."""
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, level_size[0]), min(y + height, level_size[1])
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = read(x0, y0, x1, y1)
    return out


class ArraySlide(SlideImage):
    """An RGB image already in memory, as a one-level :class:`SlideImage` (PNG, JPEG, small TIFF)."""

    backend = "memory"

    def __init__(
        self,
        image: np.ndarray,
        *,
        path: str | os.PathLike[str] = "<array>",
        mpp: float | None = None,
        mpp_source: str | None = "given",
    ) -> None:
        self._image: np.ndarray | None = to_rgb_uint8(image, source=f"image {os.fspath(path)}")
        height, width = self._image.shape[:2]
        super().__init__(Path(path), ((width, height),), mpp=mpp, mpp_source=mpp_source)

    @property
    def pixels(self) -> np.ndarray:
        """The whole image, RGB ``uint8`` (h, w, 3): the slide's own array, not a copy, so that a
        caller segmenting it in memory keeps the one decoded copy (it stays valid after :meth:`close`)."""
        if self._image is None:
            raise NucleisamError(f"slide {self.path} is closed.")
        return self._image

    def _read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        if self._image is None:
            raise NucleisamError(f"slide {self.path} is closed.")
        image = self._image
        return _paste_in_white(
            lambda x0, y0, x1, y1: image[y0:y1, x0:x1], x, y, width, height, self.dimensions
        )

    def close(self) -> None:
        self._image = None


class TiffSlide(SlideImage):
    """A tiled or pyramidal TIFF (OME-TIFF included) read through tifffile's zarr store.

    Levels are the pyramid of the file's first series (SubIFDs or successive reduced IFDs).
    """

    backend = "tifffile"

    def __init__(
        self, path: Path, tif: tifffile.TiffFile, *, mpp: float | None, mpp_source: str | None
    ) -> None:
        import zarr

        series = tif.series[0]
        self._tif: tifffile.TiffFile | None = tif
        self._channels_first = _rgb_axes(series.axes, series.shape, path)
        self._levels = [
            zarr.open_array(owner.aszarr(level=index), mode="r") for owner, index in _pyramid(tif)
        ]
        dims = []
        for level in self._levels:
            height, width = level.shape[1:] if self._channels_first else level.shape[:2]
            dims.append((width, height))
        super().__init__(path, tuple(dims), mpp=mpp, mpp_source=mpp_source)

    def _chunk_shape(self, level: int) -> tuple[int, int] | None:
        chunks = self._levels[level].chunks
        height, width = chunks[1:3] if self._channels_first else chunks[:2]
        return int(height), int(width)

    def _read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        if self._tif is None:
            raise NucleisamError(f"slide {self.path} is closed.")
        array = self._levels[level]
        downsample = self.level_downsamples[level]

        def read(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            block = _read_chunkwise(array, y0, y1, x0, x1, channels_first=self._channels_first)
            return to_rgb_uint8(block, source=f"slide {self.path}")

        level_x, level_y = math.floor(x / downsample), math.floor(y / downsample)
        return _paste_in_white(read, level_x, level_y, width, height, self.level_dimensions[level])

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None
            self._levels = []


def _pyramid(tif: tifffile.TiffFile) -> list[tuple[tifffile.TiffPageSeries, int]]:
    """(series, level index) of each pyramid level: the levels of the first series, plus
    reduced-resolution images that tifffile left as series of their own (it joins levels only while
    the factor between them stays the same, so 1, 4, 8 is split after 4; OpenSlide takes them all)."""
    series = tif.series[0]
    levels = [(series, index) for index in range(len(series.levels))]
    file = Path(tif.filehandle.path)
    full = _rgb_shape(series.axes, series.shape, file)
    last = _rgb_shape(series.axes, series.levels[-1].shape, file)
    for other in tif.series[1:]:
        if not (other.keyframe.is_reduced and other.axes == series.axes and other.dtype == series.dtype):
            continue
        size = _rgb_shape(other.axes, other.shape, file)
        if size[0] < last[0] and size[1] < last[1] and same_aspect_ratio(size[::-1], full[::-1]):
            levels.extend((other, index) for index in range(len(other.levels)))
            last = _rgb_shape(other.axes, other.levels[-1].shape, file)
    return levels


def same_aspect_ratio(size: tuple[int, int], reference: tuple[int, int], tolerance: float = 0.02) -> bool:
    """Whether an image of ``size`` (width, height) could be ``reference`` scaled: its height is within
    ``tolerance`` (relative) or one pixel of the height the reference's aspect ratio gives it."""
    expected = size[0] * reference[1] / reference[0]
    return abs(size[1] - expected) <= max(1.0, tolerance * expected)


def _read_chunkwise(array: Any, y0: int, y1: int, x0: int, x1: int, *, channels_first: bool) -> np.ndarray:
    """``array[y0:y1, x0:x1]`` as (h, w, channels), one zarr chunk (TIFF tile or strip) per read.

    zarr reads a multi-chunk selection as concurrent tasks; when one tile fails to decode, the
    others are left running against a file about to be closed and print tracebacks at exit. Reading
    one chunk at a time keeps a corrupt tile to one clean exception.
    """
    chunk_h, chunk_w = array.chunks[1:] if channels_first else array.chunks[:2]
    channels = array.shape[0] if channels_first else array.shape[2]
    out = np.empty((y1 - y0, x1 - x0, channels), dtype=array.dtype)
    for cy in range(y0 - y0 % chunk_h, y1, chunk_h):
        ys = slice(max(cy, y0), min(cy + chunk_h, y1))
        for cx in range(x0 - x0 % chunk_w, x1, chunk_w):
            xs = slice(max(cx, x0), min(cx + chunk_w, x1))
            if channels_first:
                part = np.moveaxis(np.asarray(array[:, ys, xs]), 0, -1)
            else:
                part = np.asarray(array[ys, xs])
            out[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = part
    return out


class OpenSlideImage(SlideImage):
    """A slide read by OpenSlide (vendor formats and generic tiled TIFF)."""

    backend = "openslide"

    def __init__(self, path: Path, slide: Any, *, mpp: float | None, mpp_source: str | None) -> None:
        self._slide: Any = slide
        super().__init__(path, tuple(slide.level_dimensions), mpp=mpp, mpp_source=mpp_source)

    def _read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        if self._slide is None:
            raise NucleisamError(f"slide {self.path} is closed.")
        rgba = np.asarray(self._slide.read_region((x, y), level, (width, height)))
        # OpenSlide returns un-premultiplied RGBA, transparent outside the scanned area: put it on white.
        alpha = rgba[..., 3:4].astype(np.uint16)
        rgb = (rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha) + 127) // 255
        return rgb.astype(np.uint8)

    def close(self) -> None:
        if self._slide is not None:
            self._slide.close()
            self._slide = None


def open_image(path: str | os.PathLike[str], *, mpp: float | None = None) -> SlideImage:
    """Open an image or whole-slide image for lazy, region-by-region reading.

    Args:
        path: a slide (SVS, NDPI, MRXS, SCN, OME-TIFF, tiled or pyramidal TIFF, …) or a PNG, JPEG or
            TIFF tile.
        mpp: level-0 microns per pixel; overrides what the file records (``--mpp``).
    Returns:
        A :class:`SlideImage` (close it, or use it as a context manager).
    Raises:
        NucleisamError: a missing, unsupported, corrupt or truncated file, or a bad ``mpp``; the
            message names the file.
    """
    file = Path(path)
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise NucleisamError(f"--mpp {mpp} for {file} must be a positive number of microns per pixel.")
    if not file.is_file():
        hint = " (an MRXS slide is opened by its .mrxs file)" if file.is_dir() else ""
        raise NucleisamError(f"image file not found: {file}{hint}")
    override = (mpp, "override") if mpp is not None else None
    if file.suffix.lower() in RASTER_SUFFIXES:
        return _open_in_memory(file, override)
    vendor = _openslide_format(file)
    if vendor is not None and vendor != "generic-tiff":
        return _open_openslide(file, override)
    if not _is_tiff(file):
        reason = "OpenSlide does not recognise it" if vendor is None else f"format {vendor}"
        raise NucleisamError(
            f"cannot read image {file}: not a supported slide or image ({reason}). nucleisam reads "
            "SVS, NDPI, MRXS, SCN and other OpenSlide formats, OME-TIFF and TIFF, PNG and JPEG."
        )
    return _open_tiff(file, override, openslide_can_read=vendor == "generic-tiff")


def recorded_mpp(path: str | os.PathLike[str]) -> float | None:
    """The resolution an image file records (OME ``PhysicalSizeX`` or TIFF resolution tags, a PNG's
    pHYs or a JPEG's density), in µm per pixel; ``None`` when it records none, or only a value outside
    :data:`PLAUSIBLE_MPP` (an image editor's 72 dpi), or cannot be read. Only the header is read."""
    file = Path(path)
    try:
        if file.suffix.lower() in RASTER_SUFFIXES:
            return _raster_mpp(file)
        import tifffile

        with _quiet_tifffile(), tifffile.TiffFile(file) as tif:
            return _tiff_metadata_mpp(tif)[0] if tif.series else None
    except Exception:  # an unreadable file is reported where it is decoded, not here
        return None


def working_level(
    slide: SlideImage, target_mpp: float, *, tolerance: float = MPP_TOLERANCE
) -> tuple[int, float]:
    """The pyramid level to read for ``target_mpp`` microns per pixel, and the resampling factor.

    The level is the coarsest one that is not coarser than the target (beyond ``tolerance``):
    shrinking a finer level keeps detail that enlarging a coarser one cannot bring back. The factor
    multiplies that level's pixel sizes to reach the target (``level_mpp / target_mpp``: below 1
    shrinks, above 1 enlarges, which happens only when the target is finer than level 0); it is
    exactly 1.0 when the level is within ``tolerance`` (relative) of the target, so a 0.252 µm/px
    scan is read as-is for a 0.25 µm/px model.

    Raises:
        NucleisamError: the slide's MPP is unknown (give it with ``--mpp``), or a bad target.
    """
    if not (math.isfinite(target_mpp) and target_mpp > 0):
        raise NucleisamError(f"target resolution {target_mpp} µm/px must be a positive number.")
    if slide.mpp is None:
        raise NucleisamError(
            f"slide {slide.path} does not record its resolution (microns per pixel); give it with --mpp, "
            "e.g. --mpp 0.25 for a 40x scan."
        )
    level = 0
    for index in range(slide.level_count):
        if slide.mpp * slide.level_downsamples[index] <= target_mpp * (1 + tolerance):
            level = index
    factor = slide.mpp * slide.level_downsamples[level] / target_mpp
    return level, 1.0 if abs(factor - 1.0) <= tolerance else factor


def _open_in_memory(file: Path, override: tuple[float, str] | None) -> ArraySlide:
    mpp, source = override if override is not None else (_raster_mpp(file), "image resolution")
    return ArraySlide(read_rgb(file), path=file, mpp=mpp, mpp_source=source)


def _open_tiff(file: Path, override: tuple[float, str] | None, *, openslide_can_read: bool) -> SlideImage:
    """tifffile for OME-TIFF, SubIFD pyramids and TIFFs OpenSlide does not know; OpenSlide for other
    generic tiled TIFFs; in memory when the TIFF is one small untiled image."""
    with _quiet_tifffile():
        import tifffile

        try:
            tif = tifffile.TiffFile(file)
        except Exception as exc:
            raise _corrupt(file, exc) from exc
        try:
            if not tif.series:
                raise NucleisamError(f"cannot read image {file}: the TIFF holds no image.")
            _check_complete(file, tif)
            series = tif.series[0]
            page = series.levels[0].keyframe
            small = page.imagewidth * page.imagelength <= IN_MEMORY_MAX_PIXELS
            if len(series.levels) == 1 and not page.is_tiled and small:
                mpp, source = override if override is not None else _tiff_metadata_mpp(tif)
                tif.close()
                return ArraySlide(read_rgb(file), path=file, mpp=mpp, mpp_source=source)
            _rgb_shape(series.axes, series.shape, file)
            _check_dtype(series.dtype, file)
            if openslide_can_read and _openslide_suits(tif):
                tif.close()
                return _open_openslide(file, override, checked=True)
            mpp, source = override if override is not None else _tiff_metadata_mpp(tif)
            return TiffSlide(file, tif, mpp=mpp, mpp_source=source)
        except BaseException as exc:
            tif.close()
            if isinstance(exc, NucleisamError):
                raise
            raise _corrupt(file, exc) from exc


def _openslide_suits(tif: tifffile.TiffFile) -> bool:
    """Whether OpenSlide reads this generic TIFF as tifffile would: 8-bit interleaved RGB, not
    OME, and any pyramid in successive IFDs (OpenSlide ignores SubIFDs and converts other pixel
    layouts through libtiff's RGBA path, with its own rounding)."""
    series = tif.series[0]
    page = series.levels[0].keyframe
    subifd_pyramid = len(series.levels) > 1 and bool(page.subifds)
    return not tif.is_ome and not subifd_pyramid and series.dtype == np.uint8 and series.axes == "YXS"


def _open_openslide(
    file: Path, override: tuple[float, str] | None, *, checked: bool = False
) -> OpenSlideImage:
    """``checked``: the TIFF's completeness was checked already (by :func:`_open_tiff`, which parsed
    it), so it is not parsed a second time here."""
    openslide = _import_openslide(file)
    try:
        slide = openslide.OpenSlide(os.fspath(file))
    except Exception as exc:
        raise _corrupt(file, exc) from exc
    if not checked and _is_tiff(file):
        _check_tiff_complete(file)
    if override is not None:
        mpp, source = override
    else:
        mpp = _plausible_mpp(slide.properties.get("openslide.mpp-x"))
        source = "openslide.mpp-x"
    return OpenSlideImage(file, slide, mpp=mpp, mpp_source=source)


def _import_openslide(file: Path) -> Any:
    try:
        import openslide
    except (ImportError, OSError) as exc:
        raise NucleisamError(f"cannot read slide {file}: " + _OPENSLIDE_MISSING.format(error=exc)) from exc
    return openslide


def _openslide_format(file: Path) -> str | None:
    """OpenSlide's name for the file's format (``"aperio"``, ``"generic-tiff"``…), or ``None`` when
    OpenSlide does not recognise it or is not installed (then TIFFs still go to tifffile)."""
    try:
        import openslide
    except (ImportError, OSError):
        return None
    try:
        return openslide.OpenSlide.detect_format(os.fspath(file))
    except Exception:  # a file OpenSlide chokes on while sniffing is simply not its format
        return None


def _is_tiff(file: Path) -> bool:
    with open(file, "rb") as handle:
        magic = handle.read(4)
    return magic in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """tifffile logs malformed tags and truncated data to stderr and carries on; nucleisam reports
    the problem once, in its own error, so the logger is silenced while a file is opened."""
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_complete(file: Path, tif: tifffile.TiffFile) -> None:
    """Refuse a TIFF whose image data runs past the end of the file (an interrupted copy)."""
    size = file.stat().st_size
    for level in tif.series[0].levels:
        for page in level.pages:
            if page is None:
                continue
            pairs = zip(page.dataoffsets, page.databytecounts, strict=False)
            ends = [offset + count for offset, count in pairs if count]
            if ends and max(ends) > size:
                raise NucleisamError(
                    f"slide {file} is truncated: its image data needs {max(ends):,} bytes but the file has "
                    f"{size:,}. Copy or download it again."
                )


def _check_tiff_complete(file: Path) -> None:
    import tifffile

    with _quiet_tifffile():
        try:
            with tifffile.TiffFile(file) as tif:
                if tif.series:
                    _check_complete(file, tif)
        except NucleisamError:
            raise
        except Exception:  # tifffile cannot parse every vendor TIFF; OpenSlide already opened it
            return


def _corrupt(file: Path, exc: BaseException) -> NucleisamError:
    return NucleisamError(
        f"cannot read slide {file}: {_one_line(exc)}. The file may be corrupt or truncated."
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _rgb_axes(axes: str, shape: tuple[int, ...], file: Path) -> bool:
    """True when the series stores channels first (S/C, Y, X); checks that it is RGB(A)."""
    _rgb_shape(axes, shape, file)
    return axes.replace("C", "S").index("S") < axes.index("Y")


def _rgb_shape(axes: str, shape: tuple[int, ...], file: Path) -> tuple[int, int]:
    """(height, width) of an RGB(A) series with axes YXS, SYX or CYX; anything else is refused."""
    sizes = dict(zip(axes.replace("C", "S"), shape, strict=True))
    if sorted(axes.replace("C", "S")) != ["S", "X", "Y"] or sizes["S"] not in (3, 4):
        raise NucleisamError(
            f"slide {file} has image axes {axes} with shape {shape}; nucleisam needs one RGB brightfield "
            "image (axes YXS or CYX with 3 or 4 channels)."
        )
    return sizes["Y"], sizes["X"]


def _check_dtype(dtype: np.dtype, file: Path) -> None:
    if not np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        raise NucleisamError(
            f"slide {file} stores {dtype} pixels; nucleisam reads 8- or 16-bit RGB slides. Convert it first."
        )


def _plausible_mpp(value: Any) -> float | None:
    try:
        mpp = float(value)
    except (TypeError, ValueError):
        return None
    low, high = PLAUSIBLE_MPP
    return mpp if math.isfinite(mpp) and low <= mpp <= high else None


def _tiff_metadata_mpp(tif: tifffile.TiffFile) -> tuple[float | None, str | None]:
    """MPP from OME ``PhysicalSizeX`` (with its unit) or else level 0's TIFF resolution tags."""
    if tif.is_ome and tif.ome_metadata:
        mpp = _ome_mpp(tif.ome_metadata)
        if mpp is not None:
            return mpp, "OME PhysicalSizeX"
    return _resolution_tags_mpp(tif.series[0].levels[0].keyframe), "TIFF resolution"


def _ome_mpp(xml: str) -> float | None:
    import tifffile

    try:
        ome = tifffile.xml2dict(xml)["OME"]
        image = ome["Image"][0] if isinstance(ome["Image"], list) else ome["Image"]
        pixels = image["Pixels"]
        size = pixels["PhysicalSizeX"]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    # The OME schema's default unit is the micrometre.
    factor = _MICRONS_PER_UNIT.get(str(pixels.get("PhysicalSizeXUnit", "µm")))
    if factor is None:
        return None
    return _plausible_mpp(float(size) * factor)


def _resolution_tags_mpp(page: Any) -> float | None:
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    unit = _TIFF_RESOLUTION_UNIT_MICRONS.get(int(tags["ResolutionUnit"].value))
    numerator, denominator = tags["XResolution"].value
    if unit is None or not numerator or not denominator:
        return None
    return _plausible_mpp(unit * denominator / numerator)


def _raster_mpp(file: Path) -> float | None:
    """MPP from a PNG's pHYs or a JPEG's JFIF density (Pillow reports both as dots per inch)."""
    with Image.open(file) as img:
        dpi = img.info.get("dpi")
    if not dpi or not dpi[0]:
        return None
    return _plausible_mpp(25_400.0 / float(dpi[0]))
