"""The ``postprocess`` section: parameters of the seeded watershed (:mod:`nucleisam.postprocess`).

Also recorded in every adapter's metadata, so a model predicts with the parameters tuned for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from nucleisam.config.core import require

#: Parameters in [0, 1]: thresholds and depths on probability / normalised distance maps.
_UNIT_PARAMETERS = ("foreground_threshold", "center_threshold", "boundary_threshold", "split_depth")


@dataclass(frozen=True)
class PostprocessConfig:
    """Every post-processing parameter, with defaults checked on the spleen tiles (oracle maps, and
    the same maps blurred and noisy).

    Inputs are probabilities and distances in [0, 1] (after the sigmoid), never logits.
    """

    #: A pixel is nucleus where the foreground probability is above this.
    foreground_threshold: float = 0.5
    #: Instance head: a seed pixel has centre distance below this ...
    center_threshold: float = 0.3
    #: ... and boundary distance above this (when the map exists).
    boundary_threshold: float = 0.5
    #: Instance head: two touching nuclei stay apart only where the boundary distance (else
    #: 1 - centre distance) between them dips at least this far below the lower of their peaks;
    #: shallower splits, e.g. a seed broken up by noise, are merged. In the maps' [0, 1] units.
    split_depth: float = 0.3
    #: Binary head: a distance-transform peak must rise this many pixels above its saddle.
    peak_height: float = 1.0
    #: Instances with fewer pixels are removed.
    min_area: int = 10
    #: Fill holes inside the foreground (pixels enclosed by nuclei) before splitting.
    fill_holes: bool = True

    def __post_init__(self) -> None:
        for name in _UNIT_PARAMETERS:
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"postprocess.{name}", "in [0, 1]", value)
        require(self.peak_height >= 0, "postprocess.peak_height", "≥ 0 (pixels)", self.peak_height)
        require(
            float(self.min_area).is_integer() and self.min_area >= 0,
            "postprocess.min_area",
            "a whole number ≥ 0 (pixels)",
            self.min_area,
        )
