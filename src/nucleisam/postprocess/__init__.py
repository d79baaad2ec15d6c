"""Post-processing: marker-controlled watershed instance extraction and parameter tuning.

Strictly one 2-D image at a time; see :mod:`nucleisam.postprocess.watershed` for the method and
:mod:`nucleisam.postprocess.tuning` for the validation search.
"""

from nucleisam.postprocess.tuning import (
    FOREGROUND_SEARCH_SPACE,
    MAPS_SEARCH_SPACE,
    TuningResult,
    tune_postprocess,
)
from nucleisam.postprocess.watershed import (
    fill_holes,
    finish_labels,
    instances_from_distance_maps,
    instances_from_foreground,
    instances_from_maps,
    seeded_watershed,
    split_by_distance_peaks,
)

__all__ = [
    "FOREGROUND_SEARCH_SPACE",
    "MAPS_SEARCH_SPACE",
    "TuningResult",
    "fill_holes",
    "finish_labels",
    "instances_from_distance_maps",
    "instances_from_foreground",
    "instances_from_maps",
    "seeded_watershed",
    "split_by_distance_peaks",
    "tune_postprocess",
]
