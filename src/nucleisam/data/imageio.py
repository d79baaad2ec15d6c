"""Reading H&E images from disk into one canonical form: RGB ``uint8`` arrays of shape (H, W, 3).

PNG and JPEG go through Pillow; TIFF (plain, tiled, BigTIFF, pyramidal: level 0 is read) through
tifffile. RGBA loses its alpha channel, 16-bit images are rescaled to 8 bits, and grayscale images
are refused: the model and the stain-based methods need colour.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from nucleisam.errors import NucleisamError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")

# tifffile logs its complaints about a damaged file as warnings; with no handler configured Python
# prints them to stderr before our one-line error. A NullHandler keeps them for applications that
# configure logging and silent otherwise.
logging.getLogger("tifffile").addHandler(logging.NullHandler())


def read_tiff_array(path: Path) -> np.ndarray:
    """Level 0 of the first series of a TIFF file (plain, tiled, BigTIFF or pyramidal)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[0].asarray()


def _read_array(path: Path) -> np.ndarray:
    """Decode any supported file into a numpy array, with a clear error when it cannot be read."""
    if not path.is_file():
        raise NucleisamError(f"image file not found: {path}")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            return read_tiff_array(path)
        with Image.open(path) as img:
            img.load()
            if img.mode in ("P", "PA"):
                img = img.convert("RGBA")
            return np.asarray(img)
    except MemoryError:
        raise
    except Exception as exc:  # decoders (Pillow, tifffile, imagecodecs, zlib) each raise their own types
        raise NucleisamError(
            f"cannot read image {path}: {exc or type(exc).__name__}. Check that the file is a complete, "
            "valid PNG, JPEG or TIFF."
        ) from exc


def to_rgb_uint8(array: np.ndarray, *, source: str = "image") -> np.ndarray:
    """Convert a decoded image array to RGB ``uint8`` (H, W, 3).

    Channels-first (3, H, W) or (4, H, W) arrays are moved to channels-last; an alpha channel is
    dropped; integer images with more than 8 bits are rescaled by their dtype's range and float
    images in [0, 1] by 255. A single-channel image raises :class:`NucleisamError`.
    """
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 2)):
        raise NucleisamError(
            f"{source} is grayscale (shape {arr.shape}); nucleisam needs an RGB H&E image. "
            "Convert it to RGB, or check that you passed the image and not a mask."
        )
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise NucleisamError(
            f"{source} has shape {arr.shape}; expected an RGB(A) image of shape (H, W, 3) or (H, W, 4)."
        )
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        raise NucleisamError(f"{source} is a binary image; expected an RGB H&E image.")
    if np.issubdtype(arr.dtype, np.integer):
        top = float(np.iinfo(arr.dtype).max)
        scaled = arr.astype(np.float64) * (255.0 / top)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise NucleisamError(f"{source} contains NaN or infinite values.")
        peak = float(arr.max(initial=0.0))
        scaled = arr.astype(np.float64) * (255.0 if peak <= 1.0 else 1.0)
    else:
        raise NucleisamError(f"{source} has unsupported pixel type {arr.dtype}.")
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as RGB ``uint8`` of shape (H, W, 3); errors name the file."""
    file = Path(path)
    return to_rgb_uint8(_read_array(file), source=f"image {file}")


def probe_image(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """(H, W, channels) of an image file from its header only, without decoding the pixels.

    Used to pair and check a whole data set quickly; a file that is not a readable image raises
    :class:`NucleisamError` naming it. ``channels`` is 1 for grayscale, 3 for RGB, 4 for RGBA.
    """
    file = Path(path)
    if not file.is_file():
        raise NucleisamError(f"image file not found: {file}")
    try:
        if file.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(file) as tif:
                shape = tuple(tif.series[0].levels[0].shape)
        else:
            with Image.open(file) as img:
                bands = 3 if img.mode in ("P", "PA") else len(img.getbands())
                return img.size[1], img.size[0], bands
    except (UnidentifiedImageError, OSError, ValueError, IndexError, KeyError) as exc:
        raise NucleisamError(
            f"cannot read image {file}: {exc}. Check that the file is a valid PNG, JPEG or TIFF."
        ) from exc
    if len(shape) == 2:
        return int(shape[0]), int(shape[1]), 1
    if len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (3, 4):
        return int(shape[1]), int(shape[2]), int(shape[0])
    if len(shape) == 3:
        return int(shape[0]), int(shape[1]), int(shape[2])
    raise NucleisamError(f"image {file} has shape {shape}; expected (H, W, 3) RGB.")
