"""The classical baseline every report stands beside: hematoxylin thresholding plus watershed.

What a pathologist would otherwise use (QuPath's built-in cell detection works this way): separate
the hematoxylin stain by colour deconvolution (Ruifrok & Johnston, skimage's matrix, via
:func:`nucleisam.morphometry.hematoxylin_density`), smooth it, threshold it (Otsu by default, never
below a floor so a blank tile stays blank), fill holes, split touching nuclei at the peaks of the
distance transform with the same splitter the model's post-processing uses
(:func:`nucleisam.postprocess.split_by_distance_peaks`), and drop specks. :func:`tune_classical` picks
the parameters on validation images with the model's own search (:func:`tune_postprocess`); the
model's cross-validation and ``nucleisam baseline`` (:mod:`nucleisam.experiments.classical_method`) both
use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from nucleisam.config import NUINSSEG_MPP, ClassicalConfig
from nucleisam.data.imageio import to_rgb_uint8
from nucleisam.errors import NucleisamError
from nucleisam.morphometry import hematoxylin_density
from nucleisam.postprocess import (
    TuningResult,
    fill_holes,
    finish_labels,
    split_by_distance_peaks,
    tune_postprocess,
)

#: Resolution the baseline works at, in µm per pixel: its sizes (smoothing, minimum area, peak
#: height) are in pixels and were chosen and tuned on NuInsSeg tiles, so slides are read at that scale.
CLASSICAL_MPP = NUINSSEG_MPP

#: Values tried per parameter when tuning the baseline on a fold's validation images.
CLASSICAL_SEARCH_SPACE: dict[str, tuple[Any, ...]] = {
    "sigma": (0.5, 1.0, 2.0),
    "otsu_scale": (0.8, 0.9, 1.0, 1.1, 1.25),
    "peak_height": (0.5, 1.0, 2.0, 3.0),
    "min_area": (10, 30, 60),
}




def classical_instances(
    image: np.ndarray, config: ClassicalConfig | None = None, **params: object
) -> np.ndarray:
    """Nuclei of one H&E image without any model.

    Parameters
    ----------
    image : (H, W, 3) RGB array (uint8, or anything :func:`nucleisam.data.to_rgb_uint8` accepts)
    config : ClassicalConfig, optional
        Parameters; keyword arguments override single fields (``classical_instances(img,
        sigma=2)``).

    Returns
    -------
    (H, W) int32 labels, 0 = background, nuclei numbered 1..n.
    """
    config = dataclasses.replace(config or ClassicalConfig(), **params)  # type: ignore[arg-type]
    if np.asarray(image).ndim == 4:
        raise NucleisamError("classical_instances takes one (H, W, 3) image; a batch is a loop of images.")
    density = hematoxylin_density(to_rgb_uint8(np.asarray(image), source="image"))
    if config.sigma > 0:
        density = ndimage.gaussian_filter(density, config.sigma)
    if config.threshold is not None:
        threshold = config.threshold
    elif density.max() > density.min():
        threshold = threshold_otsu(density) * config.otsu_scale
    else:  # a uniform image: Otsu has nothing to separate
        threshold = np.inf
    mask = density > max(threshold, config.min_optical_density)
    if config.fill_holes:
        mask = fill_holes(mask)
    labels = split_by_distance_peaks(mask, peak_height=config.peak_height)
    return finish_labels(labels, min_area=config.min_area)


def tune_classical(
    items: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    *,
    config: ClassicalConfig | None = None,
    metric: str = "aji",
    search_space: Mapping[str, Sequence[Any]] = CLASSICAL_SEARCH_SPACE,
) -> TuningResult:
    """Parameters of :func:`classical_instances` with the best mean ``metric`` on validation images.

    ``items`` are ``(RGB image, GT instance labels, vague-area mask or None)``. The coordinate search
    of :func:`nucleisam.postprocess.tune_postprocess` starts from ``config`` (default
    :class:`ClassicalConfig`) and keeps it unless another setting scores strictly higher, so the
    tuned validation score (``result.score``) is never below the start's (``result.start_score``).
    """
    return tune_postprocess(
        items,
        config=config or ClassicalConfig(),
        segment=classical_instances,
        search_space=search_space,
        metric=metric,
    )
