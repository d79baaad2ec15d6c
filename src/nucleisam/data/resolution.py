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


#: ``RecordedResolution.state`` values.
AGREE, DIFFER, PARTLY, NONE = "agree", "differ", "partly", "none"


@dataclass(frozen=True)
class RecordedResolution:
    """What a data set's image files record: each one's µm/px, ``None`` where it records none."""

    values: tuple[float | None, ...]

    @property
    def known(self) -> list[float]:
        return [value for value in self.values if value is not None]

    @property
    def mpp(self) -> float | None:
        """The resolution every image records, when they all record one and agree; else None."""
        known = self.known
        return _agreeing(known) if known and len(known) == len(self.values) else None

    @property
    def state(self) -> str:
        """:data:`AGREE`, :data:`DIFFER` (all record one, not the same), :data:`PARTLY` (some record
        none) or :data:`NONE`."""
        known = self.known
        if not known:
            return NONE
        if len(known) < len(self.values):
            return PARTLY
        return AGREE if self.mpp is not None else DIFFER

    def describe(self) -> str:
        """What the images record, in words: ``"all 6 images record 0.5 µm/px"`` and the like."""
        known, state = self.known, self.state
        if state == AGREE:
            return f"all {len(known)} images record {self.mpp:g} µm/px"
        if state == DIFFER:
            return f"the images record different resolutions ({_span(known)})"
        if state == PARTLY:
            return (f"{len(known)} of {len(self.values)} images record a resolution ({_span(known)}), the "
                    "others none")
        return "the images record no resolution (or only an image editor's, such as 72 dpi)"

    def to_dict(self) -> dict[str, object]:
        known = self.known
        return {"state": self.state, "images": len(self.values), "images_recording": len(known),
                "mpp": self.mpp, "min": min(known, default=None), "max": max(known, default=None),
                "text": self.describe()}


def read_recorded(images: Sequence[str | os.PathLike[str]]) -> RecordedResolution:
    """The resolutions ``images`` record (only their headers are read)."""
    return RecordedResolution(tuple(recorded_mpp(path) for path in images))


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
    return decide_data_mpp(mpp, read_recorded(images), nuinsseg_layout=nuinsseg_layout)


def decide_data_mpp(
    mpp: float | None, recorded: RecordedResolution, *, nuinsseg_layout: bool = False
) -> DataResolution:
    """:func:`resolve_data_mpp` for images whose recorded resolutions have been read already."""
    if mpp is not None:
        agreed = recorded.mpp
        if agreed is not None and _agreeing([agreed, mpp]) is None:
            return DataResolution(mpp, FROM_CONFIG, (
                f"data.mpp (--mpp) is {mpp:g} µm/px but every image records {agreed:g} µm/px; using data.mpp "
                f"{mpp:g}. Check which is right: the model records it as its training resolution."
            ))
        return DataResolution(mpp, FROM_CONFIG)
    if recorded.mpp is not None:  # every image records one, and they agree
        return DataResolution(recorded.mpp, FROM_IMAGES)
    if recorded.state == NONE and nuinsseg_layout:
        return DataResolution(NUINSSEG_MPP, FROM_DEFAULT)
    return DataResolution(NUINSSEG_MPP, FROM_DEFAULT, (
        f"{recorded.describe()}; assuming NuInsSeg's {NUINSSEG_MPP:g} µm/px. If that is not their "
        f"resolution, {_SET_IT}."
    ))
