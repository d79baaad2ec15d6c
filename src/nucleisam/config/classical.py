"""The ``classical`` section: parameters of the no-model baseline (:mod:`nucleisam.classical`)."""

from __future__ import annotations

from dataclasses import dataclass

from nucleisam.config.core import require


@dataclass(frozen=True)
class ClassicalConfig:
    """Parameters of :func:`~nucleisam.classical.classical_instances` (tunable with ``tune_postprocess``)."""

    #: Gaussian smoothing of the hematoxylin optical density, in pixels (0 = none).
    sigma: float = 1.0
    #: Fixed optical-density threshold; ``None`` = Otsu's threshold of the smoothed channel.
    threshold: float | None = None
    #: Multiplies Otsu's threshold (ignored with a fixed ``threshold``).
    otsu_scale: float = 1.0
    #: The threshold never goes below this optical density: a blank or faint tile has no nuclei.
    min_optical_density: float = 0.04
    #: Fill holes inside nuclei before splitting.
    fill_holes: bool = True
    #: A distance-transform peak must rise this many pixels above its saddle to seed a nucleus.
    peak_height: float = 1.0
    #: Objects with fewer pixels are removed.
    min_area: int = 30

    def __post_init__(self) -> None:
        require(self.sigma >= 0, "classical.sigma", "≥ 0 (pixels)", self.sigma)
        if self.threshold is not None:
            require(self.threshold >= 0, "classical.threshold", "≥ 0 (optical density)", self.threshold)
        require(self.otsu_scale > 0, "classical.otsu_scale", "> 0", self.otsu_scale)
        require(
            self.min_optical_density >= 0, "classical.min_optical_density", "≥ 0", self.min_optical_density
        )
        require(self.peak_height >= 0, "classical.peak_height", "≥ 0 (pixels)", self.peak_height)
        require(
            float(self.min_area).is_integer() and self.min_area >= 0,
            "classical.min_area",
            "a whole number ≥ 0 (pixels)",
            self.min_area,
        )
