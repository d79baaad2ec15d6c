"""Transforms between images on disk and model inputs, and training-time augmentation.

SAM (and so MobileSAM) sees images resized so the longest side equals the model input size and
zero-padded at the bottom and right (its pixel normalisation belongs to the model:
:func:`nucleisam.model.mobilesam.normalize_for_sam`). Labels and masks are only ever resized with
nearest neighbour, so instance ids survive unchanged.

:class:`Augmenter` applies one random draw of flips, 90° rotations, mild zoom, H&E stain jitter and
blur consistently to an image, its instance labels, its vague mask and any extra float maps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from skimage.color import hed_from_rgb, rgb_from_hed

if TYPE_CHECKING:  # torch is imported where tensors are made, so reading data stays light
    import torch


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB ``uint8`` (H, W, 3) → float32 tensor (3, H, W) on the 0–255 scale."""
    import torch

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


# --------------------------------------------------------------------------------------------------
# Resizing to and from the model input
# --------------------------------------------------------------------------------------------------

Kind = Literal["image", "labels", "mask", "map"]


def longest_side_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) after scaling so that the longest side equals ``long_side`` (SAM's rounding)."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_image(
    image: np.ndarray, shape: tuple[int, int], *, method: Literal["auto", "bilinear", "area"] = "auto"
) -> np.ndarray:
    """Resize an RGB ``uint8`` (H, W, 3) image to ``shape`` = (h, w).

    ``"area"`` averages the source pixels each output pixel covers (right for shrinking);
    ``"bilinear"`` interpolates (right for enlarging); ``"auto"`` picks area when both sides shrink.
    """
    height, width = int(shape[0]), int(shape[1])
    if image.shape[:2] == (height, width):
        return image.copy()
    if method == "auto":
        method = "area" if height <= image.shape[0] and width <= image.shape[1] else "bilinear"
    resample = Image.Resampling.BOX if method == "area" else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize((width, height), resample=resample))


def resize_nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of labels or masks (H, W[, ...]); values and dtype are preserved.

    Output pixel ``i`` takes source pixel ``floor((i + 0.5) * H_in / H_out)`` (pixel centres aligned).
    """
    rows = _nearest_source(array.shape[0], int(shape[0]))
    cols = _nearest_source(array.shape[1], int(shape[1]))
    return array[rows[:, None], cols[None, :]]


def _nearest_source(size_in: int, size_out: int) -> np.ndarray:
    positions = ((np.arange(size_out) + 0.5) * (size_in / size_out)).astype(np.int64)
    return np.minimum(positions, size_in - 1)


def resize_map(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map (H, W) to ``shape``; returns ``float32``."""
    height, width = int(shape[0]), int(shape[1])
    plane = np.asarray(array, dtype=np.float32)
    if plane.shape == (height, width):
        return plane.copy()
    resized = Image.fromarray(plane, mode="F").resize((width, height), resample=Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _resize(array: np.ndarray, shape: tuple[int, int], kind: Kind) -> np.ndarray:
    if kind == "image":
        return resize_image(array, shape)
    if kind == "map":
        return resize_map(array, shape)
    return resize_nearest(array, shape)


def pad_bottom_right(array: np.ndarray, shape: tuple[int, int], *, value: float = 0) -> np.ndarray:
    """Pad (H, W[, C]) with ``value`` at the bottom and right up to ``shape`` = (h, w) ≥ (H, W)."""
    extra_rows, extra_cols = int(shape[0]) - array.shape[0], int(shape[1]) - array.shape[1]
    if extra_rows < 0 or extra_cols < 0:
        raise ValueError(f"cannot pad {array.shape[:2]} to the smaller {tuple(shape)}")
    widths = [(0, extra_rows), (0, extra_cols)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, mode="constant", constant_values=value)


def to_model_input(array: np.ndarray, long_side: int, *, kind: Kind = "image") -> np.ndarray:
    """SAM convention: resize so the longest side is ``long_side``, zero-pad to a square.

    ``kind`` chooses the interpolation: ``"image"`` (RGB uint8; area/bilinear), ``"map"`` (float,
    bilinear), ``"labels"`` / ``"mask"`` (nearest). Undo with :func:`from_model_output`.
    """
    resized = _resize(array, longest_side_shape(array.shape[0], array.shape[1], long_side), kind)
    return pad_bottom_right(resized, (long_side, long_side))


def from_model_output(
    array: np.ndarray, original_shape: tuple[int, int], long_side: int, *, kind: Kind = "map"
) -> np.ndarray:
    """Inverse of :func:`to_model_input`: crop the padding, resize back to ``original_shape`` (H, W)."""
    height, width = longest_side_shape(int(original_shape[0]), int(original_shape[1]), long_side)
    if array.shape[0] < height or array.shape[1] < width:
        raise ValueError(f"array {array.shape[:2]} is smaller than the resized extent {(height, width)}")
    return _resize(array[:height, :width], (int(original_shape[0]), int(original_shape[1])), kind)


# --------------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------------


@dataclass
class Augmented:
    """One augmented training example; every array has the input's (H, W)."""

    image: np.ndarray
    labels: np.ndarray
    vague: np.ndarray | None = None
    maps: dict[str, np.ndarray] = field(default_factory=dict)


# Optical density of each 8-bit value, -log((I + 1) / 256): white is 0 and no value is infinite.
_OPTICAL_DENSITY = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0)).astype(np.float32)


def _stain_jitter(image: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Scale and shift the haematoxylin, eosin and DAB concentrations in optical-density space.

    Concentrations are ``density @ hed_from_rgb``; jittered ones map back through ``rgb_from_hed``.
    Both steps are linear, so they fold into one 3×3 matrix and an offset. With ``alpha = 1`` and
    ``beta = 0`` the image comes back unchanged.
    """
    matrix = (hed_from_rgb * alpha[None, :]) @ rgb_from_hed
    offset = beta @ rgb_from_hed
    density = _OPTICAL_DENSITY[image.reshape(-1, 3)]
    jittered = density @ matrix.astype(np.float32) + offset.astype(np.float32)
    back = 256.0 * np.exp(-jittered) - 1.0
    return np.clip(np.rint(back), 0, 255).astype(np.uint8).reshape(image.shape)


def _zoom(
    array: np.ndarray, factor: float, centre: tuple[float, float], *, order: int, fill: float
) -> np.ndarray:
    """Zoom (H, W) by ``factor`` about input point ``centre``, keeping the shape (crop or pad)."""
    out_centre = ((array.shape[0] - 1) / 2.0, (array.shape[1] - 1) / 2.0)
    offset = (centre[0] - out_centre[0] / factor, centre[1] - out_centre[1] / factor)
    return ndi.affine_transform(array, (1.0 / factor, 1.0 / factor), offset=offset, order=order,
                                mode="constant", cval=fill, prefilter=False)


@dataclass(frozen=True)
class Augmenter:
    """Random augmentation for H&E training tiles, applied consistently to every aligned array.

    Each ``p_*`` field is the probability that the transform is applied to a sample.

    Attributes:
        p_hflip, p_vflip: left-right / up-down flip.
        p_rot90: rotation by a random multiple of 90° (only 180° for non-square tiles).
        p_scale, scale_range: zoom by a factor drawn from ``scale_range`` about a random point; the
            output keeps its shape (zoom-in crops, zoom-out pads with ``fill_value`` in the image,
            background in the labels and 0 in the maps).
        p_stain, stain_alpha, stain_beta: H&E jitter in optical-density (HED) space: each stain's
            concentration is scaled by U(1 - alpha, 1 + alpha) and shifted by U(-beta, beta).
        p_blur, blur_sigma: Gaussian blur of the image with sigma drawn from ``blur_sigma`` (pixels).
        fill_value: image value where zoom-out uncovers the border (255 = white glass).
    """

    p_hflip: float = 0.5
    p_vflip: float = 0.5
    p_rot90: float = 0.5
    p_scale: float = 0.3
    scale_range: tuple[float, float] = (0.9, 1.1)
    p_stain: float = 0.5
    stain_alpha: float = 0.05
    stain_beta: float = 0.05
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    fill_value: int = 255

    def __call__(
        self,
        image: np.ndarray,
        labels: np.ndarray,
        vague: np.ndarray | None = None,
        maps: dict[str, np.ndarray] | None = None,
        *,
        rng: np.random.Generator | int,
    ) -> Augmented:
        """Augment one sample.

        Args:
            image: RGB ``uint8`` (H, W, 3).
            labels: instance ids (H, W), any integer dtype; resampled nearest, so ids are preserved.
            vague: optional ``bool`` (H, W).
            maps: optional float (H, W) maps (e.g. cached training targets); resampled bilinearly.
            rng: a ``np.random.Generator`` or an int seed; the same seed gives the same result.
        Returns:
            :class:`Augmented` with arrays of the input shapes and dtypes (maps as float32).
        """
        generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        height, width = labels.shape
        if image.shape != (height, width, 3) or image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 (H, W, 3) matching labels {labels.shape}, got "
                             f"{image.dtype} {image.shape}")
        for name, array in [("vague", vague), *(maps or {}).items()]:
            if array is not None and array.shape != (height, width):
                raise ValueError(f"{name} has shape {array.shape}, expected {(height, width)}")

        # Draw every random number up front in a fixed order: the same seed always gives the same
        # transform, whichever of them end up applied.
        uniforms = generator.random(6)
        rotation = int(generator.integers(1, 4)) if height == width else 2
        factor = float(generator.uniform(*self.scale_range))
        centre_frac = generator.random(2)
        alpha = generator.uniform(1.0 - self.stain_alpha, 1.0 + self.stain_alpha, size=3)
        beta = generator.uniform(-self.stain_beta, self.stain_beta, size=3)
        sigma = float(generator.uniform(*self.blur_sigma))

        arrays: dict[str, np.ndarray] = {"image": image, "labels": labels}
        if vague is not None:
            arrays["vague"] = vague
        for name, array in (maps or {}).items():
            arrays[f"map:{name}"] = np.asarray(array, dtype=np.float32)

        def geometric(op: Callable[[np.ndarray], np.ndarray]) -> None:
            for key in arrays:
                arrays[key] = op(arrays[key])

        if uniforms[0] < self.p_hflip:
            geometric(lambda a: a[:, ::-1])
        if uniforms[1] < self.p_vflip:
            geometric(lambda a: a[::-1])
        if uniforms[2] < self.p_rot90:
            geometric(lambda a: np.rot90(a, rotation))
        if uniforms[3] < self.p_scale and factor != 1.0:
            self._apply_zoom(arrays, factor, centre_frac)

        out_image = np.ascontiguousarray(arrays["image"])
        if uniforms[4] < self.p_stain:
            out_image = _stain_jitter(out_image, alpha, beta)
        if uniforms[5] < self.p_blur and sigma > 0:
            blurred = ndi.gaussian_filter(out_image.astype(np.float32), sigma=(sigma, sigma, 0))
            out_image = np.clip(np.rint(blurred), 0, 255).astype(np.uint8)
        return Augmented(
            image=out_image,
            labels=np.ascontiguousarray(arrays["labels"]),
            vague=None if vague is None else np.ascontiguousarray(arrays["vague"]),
            maps={name: np.ascontiguousarray(arrays[f"map:{name}"]) for name in (maps or {})},
        )

    def _apply_zoom(self, arrays: dict[str, np.ndarray], factor: float, centre_frac: np.ndarray) -> None:
        """Zoom every array in place about the same input point (see :func:`_zoom`)."""
        height, width = arrays["labels"].shape
        centre = []
        for size, frac in zip((height, width), centre_frac, strict=True):
            # Any centre in [low, high] keeps the zoomed window on the tile (zoom-in) or the whole tile
            # inside the output (zoom-out); both bounds meet at the middle when factor == 1.
            low = size / (2.0 * factor) - 0.5
            high = size - 1 - low
            centre.append(low + float(frac) * (high - low))
        point = (centre[0], centre[1])
        for key, array in arrays.items():
            if key == "image":
                channels = [_zoom(np.ascontiguousarray(array[..., c]).astype(np.float32), factor, point,
                                  order=1, fill=self.fill_value) for c in range(array.shape[2])]
                arrays[key] = np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)
            elif key == "labels":
                arrays[key] = _zoom(np.ascontiguousarray(array), factor, point, order=0, fill=0)
            elif key == "vague":
                zoomed = _zoom(np.ascontiguousarray(array).astype(np.uint8), factor, point, order=0, fill=0)
                arrays[key] = zoomed.astype(bool)
            else:
                arrays[key] = _zoom(np.ascontiguousarray(array), factor, point, order=1, fill=0.0)
