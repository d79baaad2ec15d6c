"""Reading instance label maps and binary masks into canonical arrays.

An instance label map is ``int32`` (H, W): 0 is background, every other value one nucleus (ids need
not be contiguous). A binary mask is ``bool`` (H, W). Files may be TIFF, PNG or NPY.

A file whose values are only {0, 1} or {0, 255} and which holds more than one connected region is a
*binary* mask, not an instance map: reading it as instances would merge every nucleus into one. It is
refused unless the caller asks for ``binary_masks=True``, which splits it into connected components
(touching nuclei then stay merged; real instance labels are always better).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage as ndi

from nucleisam.data.imageio import read_tiff_array
from nucleisam.errors import NucleisamError

logger = logging.getLogger(__name__)

LABEL_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
#: `nucleisam predict` names label maps ``<stem>_labels.tif``; `evaluate` pairs them by ``<stem>``.
PREDICTED_LABELS_SUFFIX = "_labels"
#: ...and its contour overlays ``<stem>_overlay.png``, which are pictures, not label maps.
PREDICTED_OVERLAY_SUFFIX = "_overlay"
_TIFF_SUFFIXES = (".tif", ".tiff")
_INT32_MAX = np.iinfo(np.int32).max
# Above this id, counting instances with a histogram would allocate too much; fall back to np.unique.
_BINCOUNT_LIMIT = 1 << 22


def _decode(path: Path, *, what: str) -> np.ndarray:
    """Decode a TIFF/PNG/NPY file into an array; every failure names the file."""
    if not path.is_file():
        raise NucleisamError(f"{what} not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in LABEL_SUFFIXES:
        raise NucleisamError(
            f"{what} {path} has an unsupported extension {path.suffix!r}; use TIFF, PNG or NPY."
        )
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix in _TIFF_SUFFIXES:
            return read_tiff_array(path)
        with Image.open(path) as img:
            img.load()
            # A palette ("P") PNG converts to its indices, which are the stored ids.
            return np.asarray(img)
    except MemoryError:
        raise
    except Exception as exc:  # decoders (Pillow, tifffile, imagecodecs, numpy) each raise their own types
        raise NucleisamError(
            f"cannot read {what} {path}: {exc or type(exc).__name__}. Check that the file is a complete, "
            "valid TIFF, PNG or NPY."
        ) from exc


def _as_plane(array: np.ndarray, path: Path, *, what: str) -> np.ndarray:
    """Squeeze singleton axes and insist on a 2-D array."""
    plane = np.squeeze(array) if array.ndim > 2 else array
    if plane.ndim == 3 and plane.shape[-1] in (3, 4):
        channels = plane[..., :3]
        if (channels == channels[..., :1]).all():
            plane = channels[..., 0]  # a gray mask saved as RGB(A)
    if plane.ndim != 2:
        raise NucleisamError(
            f"{what} {path} has shape {array.shape}; expected a single-channel (H, W) image. "
            "Colour-coded label images are not supported: save the ids as one uint16/int32 channel."
        )
    return plane


def count_instances(labels: np.ndarray) -> int:
    """Number of distinct non-zero ids in an integer label map."""
    flat = np.asarray(labels).ravel()
    if flat.size == 0:
        return 0
    top = int(flat.max())
    if top <= 0:
        return 0
    if top < _BINCOUNT_LIMIT:
        return int(np.count_nonzero(np.bincount(flat, minlength=top + 1)[1:]))
    values = np.unique(flat)
    return int(np.count_nonzero(values))


def binary_mask_values(labels: np.ndarray) -> int | None:
    """The foreground value (1 or 255) if ``labels`` only holds {0, 1} or {0, 255}, else ``None``."""
    top = int(labels.max(initial=0))
    if top == 1:
        return 1
    if top == 255 and bool(((labels == 0) | (labels == 255)).all()):
        return 255
    return None


def split_binary_mask(mask: np.ndarray) -> np.ndarray:
    """Label the connected components (4-connectivity) of a binary mask as int32 instances 1..N."""
    labelled, _ = ndi.label(np.asarray(mask) != 0)
    return labelled.astype(np.int32, copy=False)


def label_map_from_array(
    array: np.ndarray, *, source: str = "label map", binary_masks: bool = False
) -> np.ndarray:
    """Validate a decoded (H, W) array and return it as ``int32`` instance ids.

    Args:
        array: integer or boolean array (H, W).
        source: how to name the data in error messages (usually the file path).
        binary_masks: split a binary mask into connected components instead of refusing it.
    Raises:
        NucleisamError: float values, negative ids, ids beyond int32, or a binary mask with more than
            one region when ``binary_masks`` is False.
    """
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise NucleisamError(f"{source} has shape {arr.shape}; expected (H, W).")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        # Several tools export instance maps as float32 TIFFs holding whole numbers: accept those.
        if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise NucleisamError(
                f"{source} holds fractional or non-finite floating-point values ({arr.dtype}); instance "
                "ids must be whole numbers. Save the label map as uint16 or int32 (0 = background, one id "
                "per nucleus)."
            )
        logger.info("%s stores whole-number ids as %s; read as integers", source, arr.dtype)
        if arr.size and float(arr.max()) > _INT32_MAX:
            raise NucleisamError(f"{source} has ids above {_INT32_MAX}; relabel it with smaller ids.")
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise NucleisamError(f"{source} has unsupported pixel type {arr.dtype}; expected integer ids.")
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and int(arr.min()) < 0:
        raise NucleisamError(
            f"{source} contains negative ids (minimum {int(arr.min())}); ids must be 0 (background) "
            "or positive."
        )
    if arr.size and int(arr.max()) > _INT32_MAX:
        raise NucleisamError(f"{source} has ids above {_INT32_MAX}; relabel it with smaller ids.")
    foreground_value = binary_mask_values(arr) if arr.size else None
    if foreground_value is not None:
        labelled = split_binary_mask(arr)
        if int(labelled.max(initial=0)) > 1:
            if not binary_masks:
                raise NucleisamError(
                    f"{source} looks like a binary mask (values 0/{foreground_value} in "
                    f"{int(labelled.max())} separate regions), not an instance label map. nucleisam "
                    "needs one id per nucleus. Pass binary_masks=True to split it "
                    "into connected components; touching nuclei then stay merged."
                )
            return labelled
    return arr.astype(np.int32, copy=False)


def read_label_map(path: str | os.PathLike[str], *, binary_masks: bool = False) -> np.ndarray:
    """Read an instance label map (TIFF, PNG or NPY) as ``int32`` (H, W); 0 is background.

    Raises :class:`NucleisamError` naming the file for unreadable files, more than one channel,
    float values, negative ids, or (unless ``binary_masks``) a binary mask in place of instances.
    """
    file = Path(path)
    plane = _as_plane(_decode(file, what="label map"), file, what="label map")
    return label_map_from_array(plane, source=f"label map {file}", binary_masks=binary_masks)


def read_binary_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a binary mask (TIFF, PNG or NPY; 0/1, 0/255 or bool) as ``bool`` (H, W).

    Every non-zero pixel is foreground. NaN values are refused.
    """
    file = Path(path)
    plane = _as_plane(_decode(file, what="mask"), file, what="mask")
    if np.issubdtype(plane.dtype, np.floating) and not np.isfinite(plane).all():
        raise NucleisamError(f"mask {file} contains NaN or infinite values.")
    return plane != 0


def probe_label_shape(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(H, W) of a label or mask file, read from its header only (no pixel decoding)."""
    file = Path(path)
    if not file.is_file():
        raise NucleisamError(f"label map not found: {file}")
    suffix = file.suffix.lower()
    try:
        if suffix == ".npy":
            shape = tuple(np.load(file, mmap_mode="r", allow_pickle=False).shape)
        elif suffix in _TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(file) as tif:
                shape = tuple(tif.series[0].levels[0].shape)
        else:
            with Image.open(file) as img:
                shape = (img.size[1], img.size[0])
    except (UnidentifiedImageError, OSError, ValueError, IndexError, KeyError, EOFError) as exc:
        raise NucleisamError(
            f"cannot read label map {file}: {exc}. Check that the file is a valid TIFF, PNG or NPY."
        ) from exc
    dims = [d for d in shape if d != 1] if len(shape) > 2 else list(shape)
    if len(dims) == 3 and dims[-1] in (3, 4):
        dims = dims[:2]
    if len(dims) != 2:
        raise NucleisamError(
            f"label map {file} has shape {shape}; expected a single-channel (H, W) image."
        )
    return int(dims[0]), int(dims[1])
