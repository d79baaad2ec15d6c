"""The resolution of a training or evaluation data set, in microns per pixel (``data.mpp``).

A model learns nuclei at the scale of its training images, and ``nucleisam predict`` reads whole
slides at the resolution recorded in the model (``train_mpp``). :func:`resolve_data_mpp` decides that
resolution once per run, before the run's ``config.yaml`` records it:

1. ``data.mpp`` when it is set (a warning if every image records a clearly different one);
2. else the resolution the images record themselves, when every image records a plausible one and
   they agree within :data:`~nucleisam.data.slides.MPP_TOLERANCE`;
3. else NuInsSeg's :data:`~nucleisam.config.NUINSSEG_MPP`, with a warning unless the data set is in
   the NuInsSeg layout and records nothing (the NuInsSeg PNGs carry no resolution).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nucleisam.config import NUINSSEG_MPP
from nucleisam.data.slides import MPP_TOLERANCE, recorded_mpp

#: ``DataResolution.source`` values.
FROM_CONFIG = "data.mpp"
FROM_IMAGES = "recorded in the images"
FROM_DEFAULT = "NuInsSeg's, by default"

_SET_IT = (
    "set the images' resolution with data.mpp (--mpp; 0.25 for a 40x scan, 0.5 for 20x): a model trained at "
    "the wrong resolution reads slides at the wrong scale"
)


@dataclass(frozen=True)
class DataResolution:
    """Microns per pixel of a data set's images, where the value came from (:data:`FROM_CONFIG`,
    :data:`FROM_IMAGES` or :data:`FROM_DEFAULT`), and a warning for the user, if any."""

    mpp: float
    source: str
    warning: str | None = None


def _agreeing(values: Sequence[float]) -> float | None:
    """The median of ``values`` when they all lie within the tolerance of each other, else None."""
    if max(values) > min(values) * (1 + MPP_TOLERANCE):
        return None
    return float(f"{float(np.median(values)):.6g}")  # 0.25, not 0.24999999999999997 from a dpi


def _span(values: Sequence[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.4g} µm/px" if high == low else f"{low:.4g}–{high:.4g} µm/px"


def resolve_data_mpp(
    mpp: float | None, images: Sequence[str | os.PathLike[str]], *, nuinsseg_layout: bool = False
) -> DataResolution:
    """The resolution of the data set whose image files are ``images`` (see the module docstring).

    Args:
        mpp: ``data.mpp``, or ``None`` to look at what the images record.
        images: the data set's image files (only their headers are read).
        nuinsseg_layout: the data set is in the NuInsSeg release layout: recording nothing, it is
            taken to be NuInsSeg at its resolution without a warning.
    """
    recorded = [recorded_mpp(path) for path in images]
    known = [value for value in recorded if value is not None]
    if mpp is not None:
        agreed = _agreeing(known) if known and len(known) == len(recorded) else None
        if agreed is not None and _agreeing([agreed, mpp]) is None:
            return DataResolution(mpp, FROM_CONFIG, (
                f"data.mpp (--mpp) is {mpp:g} µm/px but every image records {agreed:g} µm/px; using data.mpp "
                f"{mpp:g}. Check which is right: the model records it as its training resolution."
            ))
        return DataResolution(mpp, FROM_CONFIG)
    if known and len(known) == len(recorded):
        agreed = _agreeing(known)
        if agreed is not None:
            return DataResolution(agreed, FROM_IMAGES)
        problem = f"the images record different resolutions ({_span(known)})"
    elif known:
        problem = (f"{len(known)} of {len(recorded)} images record a resolution ({_span(known)}), the "
                   "others none")
    elif nuinsseg_layout:
        return DataResolution(NUINSSEG_MPP, FROM_DEFAULT)
    else:
        problem = "the images record no resolution (or only an image editor's, such as 72 dpi)"
    return DataResolution(NUINSSEG_MPP, FROM_DEFAULT, (
        f"{problem}; assuming NuInsSeg's {NUINSSEG_MPP:g} µm/px. If that is not their resolution, {_SET_IT}."
    ))
